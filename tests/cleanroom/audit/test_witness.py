"""Two logs witnessing each other: a head is kept only if it extends the kept one;
a rewritten, truncated or forked log is refused, and nothing is appended while
witnessing."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cleanroom.audit import AuditLog, public_key_bytes
from cleanroom.audit.witness import accept_head, head_and_proof
from cleanroom.errors import AuditError

BUNDLE = b"bundle-bytes"  # accept_head keeps it; the caller verified it


def _log(path: Path, owner: str, key: Ed25519PrivateKey, entries: int) -> AuditLog:
    log = AuditLog(path, owner=owner, signing_key=key)
    for i in range(entries):
        log.append("job.step", job_id=f"j{i}", data={"i": i})
    return log


@pytest.fixture
def keys() -> dict[str, Ed25519PrivateKey]:
    return {
        "coordinator": Ed25519PrivateKey.generate(),
        "h1": Ed25519PrivateKey.generate(),
    }


def _witness(node: AuditLog, coord: AuditLog, key: Ed25519PrivateKey) -> None:
    kept = node.witnessed("coordinator")
    head, proof = head_and_proof(coord, kept.size if kept else 0)
    accept_head(
        node, head, proof, owner="coordinator", key=public_key_bytes(key), bundle=BUNDLE
    )


def test_heads_that_extend_the_kept_one_are_kept(
    tmp_path: Path, keys: dict[str, Ed25519PrivateKey]
) -> None:
    coord = _log(tmp_path / "c.db", "coordinator", keys["coordinator"], 5)
    node = _log(tmp_path / "n.db", "h1", keys["h1"], 2)
    _witness(node, coord, keys["coordinator"])
    for i in range(7):
        coord.append("job.step", data={"more": i})
    _witness(node, coord, keys["coordinator"])
    kept = node.witnessed("coordinator")
    assert kept is not None and kept.size == 12 == coord.size
    assert node.size == 2  # witnessing appended nothing
    assert node.witnessed_heads()[0][1] == BUNDLE


def test_a_rewritten_log_is_refused(
    tmp_path: Path, keys: dict[str, Ed25519PrivateKey]
) -> None:
    coord = _log(tmp_path / "c.db", "coordinator", keys["coordinator"], 5)
    node = _log(tmp_path / "n.db", "h1", keys["h1"], 2)
    _witness(node, coord, keys["coordinator"])
    # the operator rebuilds its log without job j2, re-signed with its own key
    forged = AuditLog(
        tmp_path / "forged.db", owner="coordinator", signing_key=keys["coordinator"]
    )
    for i in (0, 1, 3, 4, 5, 6):
        forged.append("job.step", job_id=f"j{i}", data={"i": i})
    with pytest.raises(AuditError, match="fork in coordinator's log"):
        _witness(node, forged, keys["coordinator"])
    kept = node.witnessed("coordinator")
    assert kept is not None and kept.root_hash == coord.root_hash(5)  # unchanged


def test_a_truncated_log_is_refused(
    tmp_path: Path, keys: dict[str, Ed25519PrivateKey]
) -> None:
    coord = _log(tmp_path / "c.db", "coordinator", keys["coordinator"], 6)
    node = _log(tmp_path / "n.db", "h1", keys["h1"], 1)
    _witness(node, coord, keys["coordinator"])
    shorter = _log(tmp_path / "s.db", "coordinator", keys["coordinator"], 0)
    for entry in coord.entries(0, 3):
        shorter.append(entry.kind, job_id=entry.job_id, data=entry.data)
    with pytest.raises(AuditError, match="truncated or rolled back"):
        _witness(node, shorter, keys["coordinator"])
    # shown a head of the short log directly: it shrank
    head, _ = head_and_proof(shorter, 0)
    with pytest.raises(AuditError, match="shrank from 6 to 3"):
        accept_head(
            node,
            head,
            [],
            owner="coordinator",
            key=public_key_bytes(keys["coordinator"]),
            bundle=BUNDLE,
        )


def test_heads_by_another_key_or_owner_are_refused(
    tmp_path: Path, keys: dict[str, Ed25519PrivateKey]
) -> None:
    coord = _log(tmp_path / "c.db", "coordinator", keys["coordinator"], 3)
    node = _log(tmp_path / "n.db", "h1", keys["h1"], 1)
    head, proof = head_and_proof(coord, 0)
    with pytest.raises(AuditError, match="bad owner signature"):
        accept_head(
            node,
            head,
            proof,
            owner="coordinator",
            key=public_key_bytes(keys["h1"]),
            bundle=BUNDLE,
        )
    with pytest.raises(AuditError, match="presented as 'h2'"):
        accept_head(
            node,
            head,
            proof,
            owner="h2",
            key=public_key_bytes(keys["coordinator"]),
            bundle=BUNDLE,
        )
    assert node.witnessed("coordinator") is None


def test_a_log_does_not_witness_or_cosign_itself(
    tmp_path: Path, keys: dict[str, Ed25519PrivateKey]
) -> None:
    node = _log(tmp_path / "n.db", "h1", keys["h1"], 1)
    head = node.tree_head()
    with pytest.raises(AuditError):
        node.cosign(head)
    with pytest.raises(AuditError):
        node.record_witnessed(head, BUNDLE)
