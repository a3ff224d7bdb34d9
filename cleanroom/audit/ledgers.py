"""Checking a federation's exported logs together, offline, against the CA alone.

Every key comes from a key bundle the CA vouches for (the owner's, in each
export's header; the parties it witnessed, beside their heads), never from a bare
key an export claims. Each log is then held to every head of it that another
party witnessed (in that party's export, or recorded in its log at a release): a
rewritten, truncated or forked log fails. And every log must be witnessed to its
end: its last entry covered by a head another party co-signed, or the check fails
(``allow_unwitnessed`` reports the gap instead).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cleanroom.errors import AuditError, AuthError, CryptoError
from cleanroom.keys import KeyBundle, verify_key_bundle
from cleanroom.pki import principal_from_cert

from .entry import AuditEntry
from .heads import SignedTreeHead, verify_tree_head
from .verify import VerifyReport, Witnessed, _check_export

ROLES = ("node", "coordinator")
RELEASE_HEAD_KIND = "coordinator.head"
"""Entries in which a node recorded the coordinator head it co-signed at a release."""


@dataclass(frozen=True)
class LedgerReport:
    """One log's verdict."""

    path: str
    report: VerifyReport
    held_to: int
    """How many heads other parties witnessed this log was checked against."""

    @property
    def unwitnessed(self) -> tuple[int, int] | None:
        """Entries ``[first, last]`` no co-signed head covers (None: all covered)."""
        r = self.report
        if r.witnessed_size >= r.entries:
            return None
        return (r.witnessed_size, r.entries - 1)


def _header(path: str | os.PathLike[str]) -> dict[str, object]:
    with open(path, encoding="utf-8") as lines:
        first = lines.readline()
    try:
        header = json.loads(first)
    except json.JSONDecodeError:
        raise AuditError(f"{path}: line 1 is not JSON") from None
    if not isinstance(header, dict) or header.get("type") != "header":
        raise AuditError(f"{path}: the export does not start with a header")
    return header


def _pinned(raw: bytes, ca_pem: bytes, owner: str | None, what: str) -> KeyBundle:
    """A bundle the CA vouches for: a node's or the coordinator's certificate, for
    the name it claims (and ``owner``, if given)."""
    try:
        bundle = KeyBundle.from_bytes(raw)
        role = principal_from_cert(bundle.cert_pem).role
        if role not in ROLES:
            raise AuthError(f"a {role} does not keep an audit log")
        return verify_key_bundle(bundle, ca_pem, expected_name=owner, role=role)
    except (CryptoError, AuthError) as exc:
        raise AuditError(f"{what}: the key bundle is not the CA's: {exc}") from None


def _owner_bundle(path: str | os.PathLike[str], ca_pem: bytes) -> KeyBundle:
    header = _header(path)
    owner = header.get("owner")
    if not isinstance(owner, str):
        raise AuditError(f"{path}: header has no owner")
    try:
        raw = base64.b64decode(str(header["bundle"]), validate=True)
    except KeyError:
        raise AuditError(
            f"{path}: the export carries no key bundle, so its key cannot be pinned "
            "(export it again with `cleanroom audit export`)"
        ) from None
    except (ValueError, binascii.Error):
        raise AuditError(f"{path}: the header's bundle is not base64") from None
    bundle = _pinned(raw, ca_pem, owner, str(path))
    if header.get("public_key") != bundle.signing_public.hex():
        raise AuditError(f"{path}: the header's key is not the one its bundle pins")
    return bundle


def verify_ledgers(
    paths: Sequence[str | os.PathLike[str]],
    *,
    ca_pem: bytes,
    allow_unwitnessed: bool = False,
) -> list[LedgerReport]:
    """Verify exports together (see the module docstring); AuditError at the
    first problem, naming the file."""
    owners: dict[str, KeyBundle] = {}
    for path in paths:
        bundle = _owner_bundle(path, ca_pem)
        if bundle.node in owners:
            raise AuditError(f"two exports of {bundle.node!r}'s log")
        owners[bundle.node] = bundle
    keys = {name: b.signing_public for name, b in owners.items()}
    known: dict[str, list[SignedTreeHead]] = {}
    for path in paths:  # first pass: what each party witnessed of the others
        witnessed: list[Witnessed] = []
        _, recorded = _check_export(
            path, keys, (), lambda e: e.kind == RELEASE_HEAD_KIND, witnessed
        )
        for other in witnessed:
            pinned = _pinned(other.bundle, ca_pem, other.head.owner, str(path))
            mine = keys.setdefault(pinned.node, pinned.signing_public)
            if mine != pinned.signing_public:
                raise AuditError(f"{path}: another key for {pinned.node!r}")
            known.setdefault(pinned.node, []).append(other.head)
        for head in _release_heads(recorded, str(path)):
            known.setdefault(head.owner, []).append(head)
    reports = []
    for path in paths:
        header_owner = str(_header(path)["owner"])
        held = known.get(header_owner, [])
        for head in held:
            verify_tree_head(head, keys[header_owner])
        try:
            report, _ = _check_export(path, keys, held, lambda _: False)
        except AuditError as exc:
            raise AuditError(f"{path}: {exc}") from None
        checked = LedgerReport(str(Path(path)), report, len(held))
        gap = checked.unwitnessed
        if gap is not None and not allow_unwitnessed:
            raise AuditError(
                f"{path}: entries {gap[0]}..{gap[1]} of {report.owner!r}'s log are "
                "witnessed by nobody: no head another party co-signed covers them "
                "(--allow-unwitnessed accepts this)"
            )
        reports.append(checked)
    return reports


def _release_heads(entries: Sequence[AuditEntry], where: str) -> list[SignedTreeHead]:
    from cleanroom.provenance import head_from_dict  # provenance builds on audit

    heads = []
    for entry in entries:
        try:
            heads.append(head_from_dict(entry.data))
        except (CryptoError, AuditError) as exc:
            raise AuditError(f"{where}: entry {entry.index}: {exc}") from None
    return heads
