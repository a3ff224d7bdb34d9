"""Audit entries: their canonical encoding, hash chain link and JSON form."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from cleanroom.errors import AuditError

from .merkle import MerkleTree, leaf_hash

GENESIS_PREV_HASH = bytes(32)
"""The ``prev_hash`` of entry 0: there is no previous entry."""

_KIND = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")

JOB_APPROVED = "job.approved"
JOB_REFUSED = "job.refused"
JOB_STEP = "job.step"
JOB_RELEASED = "job.released"
QUOTA_RESERVED = "quota.reserved"
POLICY_CHANGED = "policy.changed"
REGISTRATION = "registration"


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys, no spaces, UTF-8, no NaN/Infinity: one encoding per value.

    Floats use Python's shortest round-trip repr, so a value read back from the
    encoding re-encodes to the same bytes.
    """
    try:
        text = json.dumps(
            value,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise AuditError(f"value is not canonical JSON: {exc}") from exc
    return text.encode("utf-8")


def normalise_data(data: Any) -> dict[str, Any]:
    """``data`` as it reads back from its canonical encoding (tuples become lists)."""
    if not isinstance(data, dict):
        raise AuditError("audit entry data must be a JSON object (a dict)")
    parsed = json.loads(canonical_json(data))
    assert isinstance(parsed, dict)
    return parsed


def check_kind(kind: str) -> None:
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise AuditError(f"audit entry kind {kind!r} is not dotted lower-case words")


@dataclass(frozen=True)
class AuditEntry:
    """One record of an audit log; ``entry_hash`` = SHA-256(:meth:`canonical`)."""

    index: int
    timestamp: float
    actor: str
    kind: str
    job_id: str | None
    data: dict[str, Any]
    prev_hash: bytes
    entry_hash: bytes

    @staticmethod
    def content(
        *,
        index: int,
        timestamp: float,
        actor: str,
        kind: str,
        job_id: str | None,
        data: dict[str, Any],
        prev_hash: bytes,
    ) -> bytes:
        """The canonical bytes that are hashed into the chain and the Merkle tree."""
        if not math.isfinite(timestamp):
            raise AuditError("audit entry timestamp must be finite")
        return canonical_json(
            {
                "actor": actor,
                "data": data,
                "index": index,
                "job_id": job_id,
                "kind": kind,
                "prev_hash": prev_hash.hex(),
                "timestamp": timestamp,
            }
        )

    def canonical(self) -> bytes:
        """The hashed content of this entry (everything except ``entry_hash``)."""
        return self.content(
            index=self.index,
            timestamp=self.timestamp,
            actor=self.actor,
            kind=self.kind,
            job_id=self.job_id,
            data=self.data,
            prev_hash=self.prev_hash,
        )

    @property
    def leaf_hash(self) -> bytes:
        """This entry's RFC 6962 leaf hash in the log's Merkle tree."""
        return leaf_hash(self.canonical())

    def check_hash(self) -> None:
        """Raise AuditError unless ``entry_hash`` matches the content."""
        if hashlib.sha256(self.canonical()).digest() != self.entry_hash:
            raise AuditError(
                f"entry {self.index}: entry_hash does not match its content"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "timestamp": self.timestamp,
            "actor": self.actor,
            "kind": self.kind,
            "job_id": self.job_id,
            "data": self.data,
            "prev_hash": self.prev_hash.hex(),
            "entry_hash": self.entry_hash.hex(),
        }

    @classmethod
    def from_json(cls, obj: Any) -> AuditEntry:
        """Parse the JSON form; raise AuditError if a field is missing or mistyped."""
        if not isinstance(obj, dict):
            raise AuditError("entry is not a JSON object")
        try:
            index, ts = obj["index"], obj["timestamp"]
            actor, kind, job_id, data = (
                obj["actor"],
                obj["kind"],
                obj["job_id"],
                obj["data"],
            )
            prev_hash = _hash_from_hex(obj["prev_hash"])
            entry_hash = _hash_from_hex(obj["entry_hash"])
        except (KeyError, TypeError, ValueError) as exc:
            raise AuditError(f"entry has a missing or malformed field: {exc}") from exc
        where = f"entry {index}" if isinstance(index, int) else "entry"
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise AuditError(f"{where}: index is not a non-negative integer")
        if not isinstance(ts, int | float) or isinstance(ts, bool):
            raise AuditError(f"{where}: timestamp is not a number")
        if not isinstance(actor, str) or not isinstance(kind, str):
            raise AuditError(f"{where}: actor and kind must be strings")
        if job_id is not None and not isinstance(job_id, str):
            raise AuditError(f"{where}: job_id must be a string or null")
        if not isinstance(data, dict):
            raise AuditError(f"{where}: data is not a JSON object")
        return cls(index, ts, actor, kind, job_id, data, prev_hash, entry_hash)


def _hash_from_hex(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError("hash is not a hex string")
    raw = bytes.fromhex(value)
    if len(raw) != 32:
        raise ValueError("hash is not 32 bytes")
    return raw


class ChainVerifier:
    """Checks entries fed in log order and builds their Merkle tree as it goes.

    Each :meth:`add` checks the entry's position, its hash, its link to the
    previous entry and that time does not run backwards; the first failure
    raises AuditError naming the entry.
    """

    def __init__(self) -> None:
        self.tree = MerkleTree()
        self.last: AuditEntry | None = None

    def add(self, entry: AuditEntry) -> None:
        i = self.tree.size
        if entry.index != i:
            raise AuditError(
                f"entry {i}: found index {entry.index} "
                "(an entry is missing, inserted or out of order)"
            )
        content = entry.canonical()
        if hashlib.sha256(content).digest() != entry.entry_hash:
            raise AuditError(f"entry {i}: entry_hash does not match its content")
        last = self.last
        if last is None:
            if entry.prev_hash != GENESIS_PREV_HASH:
                raise AuditError("entry 0: prev_hash is not the genesis value")
        else:
            if entry.prev_hash != last.entry_hash:
                raise AuditError(f"entry {i}: prev_hash does not match entry {i - 1}")
            if entry.timestamp < last.timestamp:
                raise AuditError(
                    f"entry {i}: timestamp {entry.timestamp!r} is earlier than "
                    f"entry {i - 1}'s {last.timestamp!r}"
                )
        self.tree.append_hash(leaf_hash(content))
        self.last = entry
