"""Offline verification of exported audit logs, and a job's history across logs."""

from __future__ import annotations

import base64
import binascii
import json
import os
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cleanroom.errors import AuditError

from .entry import AuditEntry, ChainVerifier
from .heads import (
    PublicKeyLike,
    SignedTreeHead,
    load_public_key,
    public_key_bytes,
    verify_cosignature,
    verify_tree_head,
)
from .log import EXPORT_FORMAT, EXPORT_VERSION, AuditLog

TrustedKeys = Mapping[str, PublicKeyLike]


@dataclass(frozen=True)
class VerifyReport:
    """What a successful :func:`verify_export` established."""

    owner: str
    public_key: str
    """The owner's key (hex) that signed the heads."""
    entries: int
    size: int
    """Tree size of the latest signed head (always equal to ``entries``)."""
    root: str
    """Merkle root (hex) recomputed from the entries and signed by the owner."""
    heads: int
    """How many signed tree heads in the export were checked."""
    cosigners: tuple[str, ...]
    """Parties whose cosignatures verified under a trusted key."""
    unverified_cosigners: tuple[str, ...]
    """Parties whose cosignatures are present but who have no trusted key here."""
    witnessed_size: int = 0
    """Entries covered by a head that another party (with a trusted key) co-signed."""


@dataclass(frozen=True)
class JobEvent:
    """One entry about a job, with the owner of the log that recorded it."""

    log: str
    entry: AuditEntry

    @property
    def timestamp(self) -> float:
        return self.entry.timestamp

    @property
    def actor(self) -> str:
        return self.entry.actor

    @property
    def kind(self) -> str:
        return self.entry.kind


def _records(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AuditError(f"line {number}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise AuditError(f"line {number}: not a JSON object")
            yield number, record


def _owner_key(header: dict[str, Any], trusted_keys: TrustedKeys | None) -> bytes:
    if header.get("format") != EXPORT_FORMAT or header.get("version") != EXPORT_VERSION:
        raise AuditError(f"not a {EXPORT_FORMAT} v{EXPORT_VERSION} export")
    owner = header.get("owner")
    if not isinstance(owner, str):
        raise AuditError("header: owner is missing")
    try:
        embedded = bytes.fromhex(header["public_key"])
    except (KeyError, TypeError, ValueError):
        raise AuditError("header: public_key is missing or not hex") from None
    embedded = public_key_bytes(load_public_key(embedded))
    if trusted_keys is not None:
        if owner not in trusted_keys:
            raise AuditError(f"no trusted key for the log owner {owner!r}")
        if public_key_bytes(load_public_key(trusted_keys[owner])) != embedded:
            raise AuditError(f"the export's key for {owner!r} is not the trusted key")
    return embedded


@dataclass(frozen=True)
class Witnessed:
    """A head of another party's log that an export's owner witnessed, with the
    key bundle (bytes) its owner's key comes from."""

    head: SignedTreeHead
    bundle: bytes


def _check_export(
    path: str | os.PathLike[str],
    trusted_keys: TrustedKeys | None,
    known_heads: Sequence[SignedTreeHead],
    keep: Callable[[AuditEntry], bool],
    witnessed: list[Witnessed] | None = None,
) -> tuple[VerifyReport, list[AuditEntry]]:
    records = _records(path)
    first = next(records, None)
    if first is None or first[1].get("type") != "header":
        raise AuditError("line 1: the export does not start with a header")
    header = first[1]
    key = _owner_key(header, trusted_keys)
    owner: str = header["owner"]
    chain = ChainVerifier()
    timestamps = array("d")
    kept: list[AuditEntry] = []
    heads: list[SignedTreeHead] = []
    verified: set[str] = set()
    unverified: set[str] = set()
    witnessed_size = 0
    others: list[Witnessed] = []
    for number, record in records:
        kind = record.pop("type", None)
        if kind == "witnessed":
            others.append(_witnessed_record(number, record))
            continue
        if others:
            raise AuditError(f"line {number}: {kind} after the witnessed heads")
        if kind == "entry":
            if heads:
                raise AuditError(f"line {number}: entry after the tree heads")
            entry = AuditEntry.from_json(record)
            chain.add(entry)
            timestamps.append(entry.timestamp)
            if keep(entry):
                kept.append(entry)
        elif kind == "tree_head":
            head = SignedTreeHead.from_json(record)
            _check_head(head, owner, key, chain, timestamps, "tree head")
            for name in head.cosignatures:
                if trusted_keys is not None and name in trusted_keys:
                    verify_cosignature(head, name, trusted_keys[name])
                    verified.add(name)
                    if name != owner:
                        witnessed_size = max(witnessed_size, head.size)
                else:
                    unverified.add(name)
            heads.append(head)
        else:
            raise AuditError(f"line {number}: unknown record type {kind!r}")
    size = chain.tree.size
    if not heads:
        raise AuditError("the export has no signed tree head")
    covered = max(h.size for h in heads)
    if covered != size:
        raise AuditError(
            f"entries {covered}..{size - 1} are not covered by a signed tree head"
        )
    for known in known_heads:
        if known.size > size:
            verify_tree_head(known, key)
            raise AuditError(
                f"the export has {size} entries but {owner!r} signed a head for "
                f"size {known.size}: the log was truncated or rolled back"
            )
        _check_head(known, owner, key, chain, timestamps, "known tree head")
    report = VerifyReport(
        owner=owner,
        public_key=key.hex(),
        entries=size,
        size=size,
        root=chain.tree.root().hex(),
        heads=len(heads),
        cosigners=tuple(sorted(verified)),
        unverified_cosigners=tuple(sorted(unverified - verified)),
        witnessed_size=witnessed_size,
    )
    if witnessed is not None:
        witnessed.extend(others)
    return report, kept


def _witnessed_record(number: int, record: dict[str, Any]) -> Witnessed:
    try:
        head = SignedTreeHead.from_json(record["head"])
        bundle = base64.b64decode(record["bundle"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise AuditError(f"line {number}: malformed witnessed head") from None
    return Witnessed(head, bundle)


def _check_head(
    head: SignedTreeHead,
    owner: str,
    key: bytes,
    chain: ChainVerifier,
    timestamps: array[float],
    what: str,
) -> None:
    if head.owner != owner:
        raise AuditError(f"{what} is for {head.owner!r}, not the log owner {owner!r}")
    verify_tree_head(head, key)
    if head.size > chain.tree.size:
        raise AuditError(
            f"{what} at size {head.size} covers entries the export lacks "
            f"(it has {chain.tree.size})"
        )
    if head.root_hash != chain.tree.root(head.size):
        raise AuditError(
            f"{what} at size {head.size}: signed root does not match the entries"
        )
    if head.size and head.timestamp < timestamps[head.size - 1]:
        raise AuditError(
            f"{what} at size {head.size} is dated before entry {head.size - 1}"
        )


def verify_export(
    path: str | os.PathLike[str],
    *,
    trusted_keys: TrustedKeys | None = None,
    known_heads: Sequence[SignedTreeHead] = (),
) -> VerifyReport:
    """Check an exported log offline; raise AuditError at the first problem.

    Checks every entry's position, hash, chain link and timestamp order; the
    Merkle root of every signed head against the entries; the owner's
    signatures (with ``trusted_keys[owner]`` if given, which must equal the
    embedded key, else with the embedded key); and cosignatures by parties in
    ``trusted_keys``. Each of ``known_heads`` (heads of this log received
    earlier, e.g. ones this party cosigned) must be signed by the owner and
    match the export: a known head larger than the export means truncation, a
    different root means a fork.
    """
    return _check_export(path, trusted_keys, known_heads, keep=lambda _: False)[0]


def job_history(
    logs: Sequence[str | os.PathLike[str] | AuditLog],
    job_id: str,
    *,
    trusted_keys: TrustedKeys | None = None,
) -> list[JobEvent]:
    """Every entry about ``job_id`` in these logs, oldest first.

    Exported logs are fully verified first (with ``trusted_keys`` if given); a
    live :class:`AuditLog` is read as it is.
    """
    events: list[JobEvent] = []
    for log in logs:
        if isinstance(log, AuditLog):
            events.extend(JobEvent(log.owner, e) for e in log.entries_for_job(job_id))
        else:
            report, kept = _check_export(
                log, trusted_keys, (), keep=lambda e: e.job_id == job_id
            )
            events.extend(JobEvent(report.owner, e) for e in kept)
    events.sort(key=lambda ev: (ev.timestamp, ev.log, ev.entry.index))
    return events
