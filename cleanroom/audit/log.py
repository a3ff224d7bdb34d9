"""AuditLog: an append-only, hash-chained, signed, Merkle-provable log in SQLite."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cleanroom.errors import AuditError, StoreError
from cleanroom.localdb import LocalDatabase

from .entry import (
    GENESIS_PREV_HASH,
    AuditEntry,
    ChainVerifier,
    canonical_json,
    check_kind,
    normalise_data,
)
from .heads import (
    PublicKeyLike,
    SignedTreeHead,
    cosign,
    public_key_bytes,
    sign_tree_head,
    verify_cosignature,
    verify_tree_head,
)
from .merkle import MerkleTree, leaf_hash

EXPORT_FORMAT = "cleanroom-audit-log"
EXPORT_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY, timestamp REAL NOT NULL, actor TEXT NOT NULL,
    kind TEXT NOT NULL, job_id TEXT, data TEXT NOT NULL, prev_hash BLOB NOT NULL,
    entry_hash BLOB NOT NULL, leaf_hash BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS entries_by_job ON entries (job_id) WHERE job_id IS NOT NULL;
CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE IF NOT EXISTS tree_heads (
    size INTEGER NOT NULL, timestamp REAL NOT NULL, root BLOB NOT NULL,
    signature BLOB NOT NULL, PRIMARY KEY (size, timestamp));
CREATE TABLE IF NOT EXISTS cosignatures (
    size INTEGER NOT NULL, timestamp REAL NOT NULL, name TEXT NOT NULL,
    signature BLOB NOT NULL, PRIMARY KEY (size, timestamp, name));
CREATE TABLE IF NOT EXISTS witnessed (
    owner TEXT PRIMARY KEY, head TEXT NOT NULL, bundle BLOB NOT NULL);
"""
_ENTRY_COLUMNS = "idx, timestamp, actor, kind, job_id, data, prev_hash, entry_hash"


def _entry_from_row(row: tuple[Any, ...]) -> AuditEntry:
    idx, ts, actor, kind, job_id, data, prev_hash, entry_hash = row
    return AuditEntry(
        idx, ts, actor, kind, job_id, json.loads(data), prev_hash, entry_hash
    )


class AuditLog:
    """One party's audit log in its own SQLite file; every append is fsynced.

    Entries are chained (each carries the previous entry's hash) and are the
    leaves of an RFC 6962 Merkle tree whose heads the owner signs with
    ``signing_key``. Thread-safe; one writer process per file. The log stores
    only what callers append: never put secrets in ``data``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | LocalDatabase,
        *,
        owner: str,
        signing_key: Ed25519PrivateKey,
        now: Callable[[], float] = time.time,
    ) -> None:
        """``path`` is the log's own SQLite file, or a ``LocalDatabase`` the log
        shares with other stores (its entries then commit with theirs)."""
        self._owns_db = not isinstance(path, LocalDatabase)
        self._ldb = (
            path if isinstance(path, LocalDatabase) else LocalDatabase(Path(path))
        )
        self._path = self._ldb.path
        self._owner = owner
        self._key = signing_key
        self._public_key = public_key_bytes(signing_key)
        self._now = now
        self._lock = self._ldb.lock
        try:
            self._ldb.executescript(_SCHEMA)
            with self._ldb.transaction():
                self._claim_owner()
            self._reload()
        except StoreError as exc:
            raise StoreError(f"cannot open audit log {self._path}: {exc}") from exc

    def _q(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._ldb.read() as db:
            return db.execute(sql, params).fetchall()

    def _reload(self) -> None:
        """(Re)build the in-memory tree from the file, e.g. after a rollback."""
        with self._lock:
            self._tree = MerkleTree()
            self._last_hash = GENESIS_PREV_HASH
            self._last_ts = -math.inf
            self._load()

    def _claim_owner(self) -> None:
        stored = dict(self._q("SELECT key, value FROM meta"))
        mine = {"owner": self._owner, "public_key": self._public_key.hex()}
        if not stored:
            with self._ldb.transaction() as db:
                db.executemany("INSERT INTO meta VALUES (?, ?)", mine.items())
        elif stored != mine:
            raise AuditError(
                f"audit log {self._path} belongs to {stored.get('owner')!r} with "
                "another key; open it with the owner and key that created it"
            )

    def _load(self) -> None:
        rows = self._q("SELECT leaf_hash FROM entries ORDER BY idx")
        self._tree.extend_hashes(h for (h,) in rows)
        size = self._tree.size
        if size == 0:
            return
        ((max_idx,),) = self._q("SELECT max(idx) FROM entries")
        if max_idx != size - 1:
            raise AuditError(f"audit log {self._path}: entry indices have gaps")
        last = self._read(size - 1, size)[0]
        last.check_hash()
        if last.leaf_hash != self._tree.leaf(size - 1):
            raise AuditError(f"entry {size - 1}: stored leaf hash does not match")
        self._last_hash, self._last_ts = last.entry_hash, last.timestamp
        for head in self._heads():
            if head.size > size or head.root_hash != self._tree.root(head.size):
                raise AuditError(
                    f"audit log {self._path} no longer matches its tree head "
                    f"at size {head.size}"
                )

    @property
    def owner(self) -> str:
        return self._owner

    @property
    def public_key(self) -> bytes:
        """The owner's raw Ed25519 public key, which verifies this log's heads."""
        return self._public_key

    @property
    def size(self) -> int:
        with self._lock:
            return self._tree.size

    def append(
        self,
        kind: str,
        *,
        job_id: str | None = None,
        data: dict[str, Any],
        actor: str | None = None,
    ) -> AuditEntry:
        """Record one event durably and return it; ``actor`` defaults to the owner."""
        check_kind(kind)
        if job_id is not None and not isinstance(job_id, str):
            raise AuditError("job_id must be a string or None")
        data = normalise_data(data)
        actor = self._owner if actor is None else actor
        with self._lock:
            ts = max(float(self._now()), self._last_ts)
            entry_fields: dict[str, Any] = {
                "index": self._tree.size,
                "timestamp": ts,
                "actor": actor,
                "kind": kind,
                "job_id": job_id,
                "data": data,
                "prev_hash": self._last_hash,
            }
            content = AuditEntry.content(**entry_fields)
            entry = AuditEntry(
                **entry_fields, entry_hash=hashlib.sha256(content).digest()
            )
            leaf = leaf_hash(content)
            row = (entry.index, ts, actor, kind, job_id, canonical_json(data).decode())
            self._write(
                (
                    "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*row, entry.prev_hash, entry.entry_hash, leaf),
                )
            )
            self._tree.append_hash(leaf)
            self._last_hash, self._last_ts = entry.entry_hash, ts
            return entry

    def _write(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        """Run statements in one immediate transaction (or the enclosing one);
        commit syncs to disk. A rollback reloads the in-memory tree."""
        try:
            with self._ldb.transaction() as db:
                self._ldb.on_rollback(self._reload)
                for sql, params in statements:
                    db.execute(sql, params)
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise AuditError(
                    f"audit log {self._path} changed under us: {exc}"
                ) from exc
            raise

    def _read(self, start: int, stop: int) -> list[AuditEntry]:
        rows = self._q(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE idx >= ? AND idx < ? "  # noqa: S608
            "ORDER BY idx",
            (start, stop),
        )
        return [_entry_from_row(r) for r in rows]

    def entries(self, start: int = 0, stop: int | None = None) -> list[AuditEntry]:
        """Entries ``start <= index < stop`` in order."""
        with self._lock:
            return self._read(start, self._tree.size if stop is None else stop)

    def entry(self, index: int) -> AuditEntry:
        found = self.entries(index, index + 1)
        if not found:
            raise AuditError(f"the log has no entry {index}")
        return found[0]

    def entries_for_job(self, job_id: str) -> list[AuditEntry]:
        """Every entry recorded for ``job_id``, in log order."""
        with self._lock:
            rows = self._q(
                f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE job_id = ? "  # noqa: S608
                "ORDER BY idx",
                (job_id,),
            )
            return [_entry_from_row(r) for r in rows]

    def root_hash(self, size: int | None = None) -> bytes:
        with self._lock:
            return self._tree.root(size)

    def _sign_head(self) -> SignedTreeHead:
        ts = max(float(self._now()), self._last_ts)
        return sign_tree_head(
            self._owner, self._tree.size, self._tree.root(), ts, self._key
        )

    def tree_head(self) -> SignedTreeHead:
        """A freshly signed head over the whole log."""
        with self._lock:
            return self._sign_head()

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        with self._lock:
            return self._tree.inclusion_proof(index, size)

    def consistency_proof(
        self, old_size: int, new_size: int | None = None
    ) -> list[bytes]:
        with self._lock:
            return self._tree.consistency_proof(old_size, new_size)

    def add_cosignature(
        self,
        head: SignedTreeHead,
        name: str,
        signature: bytes,
        *,
        public_key: PublicKeyLike | None = None,
    ) -> SignedTreeHead:
        """Store ``name``'s cosignature of one of this log's heads; return the head.

        The head must be signed by this log's key and match the log at its size.
        The cosignature is checked when the cosigner's ``public_key`` is given
        (otherwise it is checked whenever an export is verified with trusted keys).
        """
        if head.owner != self._owner:
            raise AuditError(
                f"tree head belongs to {head.owner!r}, not {self._owner!r}"
            )
        verify_tree_head(head, self._public_key)
        head = head.with_cosignature(name, signature)
        if public_key is not None:
            verify_cosignature(head, name, public_key)
        with self._lock:
            if head.size > self._tree.size or head.root_hash != self._tree.root(
                head.size
            ):
                raise AuditError(
                    f"tree head at size {head.size} does not match this log"
                )
            h = head
            self._write(
                (
                    "INSERT OR IGNORE INTO tree_heads VALUES (?, ?, ?, ?)",
                    (h.size, h.timestamp, h.root_hash, h.signature),
                ),
                (
                    "INSERT OR REPLACE INTO cosignatures VALUES (?, ?, ?, ?)",
                    (h.size, h.timestamp, name, signature),
                ),
            )
            return next(s for s in self._heads() if s.same_head(head))

    def cosign(self, head: SignedTreeHead) -> bytes:
        """This log's owner co-signs another party's ``head`` with the log's key
        (after checking it, e.g. with ``audit.witness.accept_head``)."""
        if head.owner == self._owner:
            raise AuditError("a log's owner does not co-sign its own head")
        return cosign(head, self._owner, self._key)

    def last_cosigned_size(self, name: str) -> int:
        """The size of the largest head of this log that ``name`` co-signed (0 if
        none): where a consistency proof for ``name`` must start."""
        with self._lock:
            sizes = [h.size for h in self._heads() if name in h.cosignatures]
            return max(sizes, default=0)

    # ------------------------------------------------ other parties' heads --
    def record_witnessed(self, head: SignedTreeHead, bundle: bytes) -> None:
        """Keep the latest head of another party's log that this party checked
        and co-signed, with the key bundle that verifies it; exports carry it, so
        that a verifier can hold the other log to it. The caller checks ``head``
        (signature, consistency with ``witnessed(head.owner)``) first."""
        if head.owner == self._owner:
            raise AuditError("a log does not witness itself")
        self._write(
            (
                "INSERT OR REPLACE INTO witnessed VALUES (?, ?, ?)",
                (head.owner, canonical_json(head.to_json()).decode(), bundle),
            )
        )

    def witnessed(self, owner: str) -> SignedTreeHead | None:
        """The latest head of ``owner``'s log this party witnessed, if any."""
        rows = self._q("SELECT head FROM witnessed WHERE owner = ?", (owner,))
        return SignedTreeHead.from_json(json.loads(rows[0][0])) if rows else None

    def witnessed_heads(self) -> list[tuple[SignedTreeHead, bytes]]:
        """Every witnessed head with its owner's key bundle, by owner."""
        rows = self._q("SELECT head, bundle FROM witnessed ORDER BY owner")
        return [(SignedTreeHead.from_json(json.loads(h)), bytes(b)) for h, b in rows]

    def tree_heads(self) -> list[SignedTreeHead]:
        """Every cosigned head, oldest first, with all its cosignatures."""
        with self._lock:
            return self._heads()

    def _heads(self) -> list[SignedTreeHead]:
        cosigs: dict[tuple[int, float], dict[str, bytes]] = {}
        for size, ts, name, sig in self._q("SELECT * FROM cosignatures"):
            cosigs.setdefault((size, ts), {})[name] = sig
        rows = self._q("SELECT * FROM tree_heads ORDER BY size, timestamp")
        return [
            SignedTreeHead(self._owner, size, root, ts, sig, cosigs.get((size, ts), {}))
            for size, ts, root, sig in rows
        ]

    def verify(self) -> None:
        """Re-check every stored entry, the Merkle tree and the stored heads."""
        with self._lock:
            checker = ChainVerifier()
            for entry in self._iter_entries():
                checker.add(entry)
            if checker.tree.root() != self._tree.root():
                raise AuditError(f"audit log {self._path}: Merkle tree does not match")
            for head in self._heads():
                verify_tree_head(head, self._public_key)

    def _iter_entries(self) -> Iterator[AuditEntry]:
        rows = self._q(f"SELECT {_ENTRY_COLUMNS} FROM entries ORDER BY idx")  # noqa: S608
        return (_entry_from_row(r) for r in rows)

    def export(
        self, path: str | os.PathLike[str], *, bundle: bytes | None = None
    ) -> SignedTreeHead:
        """Write a self-contained JSON-lines copy for offline checking; return its head.

        Lines: a header (owner, public key, and ``bundle``: the owner's CA-signed
        key bundle, which pins that key for a verifier), every entry, every
        cosigned head, a freshly signed head over all entries, and last the heads
        of other parties' logs this party witnessed, each with its owner's bundle.
        Written atomically.
        """
        target = Path(path)
        tmp = target.with_name(target.name + ".partial")
        with self._lock:
            head = self._sign_head()
            header = {
                "type": "header",
                "format": EXPORT_FORMAT,
                "version": EXPORT_VERSION,
                "owner": self._owner,
                "public_key": self._public_key.hex(),
            }
            if bundle is not None:
                header["bundle"] = base64.b64encode(bundle).decode()
            with open(tmp, "w", encoding="utf-8") as out:
                out.write(_line(header))
                for entry in self._iter_entries():
                    out.write(_line({"type": "entry", **entry.to_json()}))
                for h in [*self._heads(), head]:
                    out.write(_line({"type": "tree_head", **h.to_json()}))
                for other, other_bundle in self.witnessed_heads():
                    out.write(
                        _line(
                            {
                                "type": "witnessed",
                                "head": other.to_json(),
                                "bundle": base64.b64encode(other_bundle).decode(),
                            }
                        )
                    )
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, target)
        return head

    def close(self) -> None:
        if self._owns_db:
            self._ldb.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _line(obj: dict[str, Any]) -> str:
    # ASCII-only lines: no U+2028 or NEL inside a record for a line reader to split.
    return json.dumps(obj, allow_nan=False, separators=(",", ":")) + "\n"
