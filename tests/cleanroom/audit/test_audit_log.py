"""AuditLog: appends, durability, concurrency, proofs and cosigned tree heads."""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cleanroom.audit import (
    GENESIS_PREV_HASH,
    AuditLog,
    cosign,
    leaf_hash,
    public_key_bytes,
    sign_tree_head,
    verify_consistency,
    verify_cosignature,
    verify_inclusion,
    verify_tree_head,
)
from cleanroom.errors import AuditError


def test_append_builds_a_hash_chain(coord_log: AuditLog) -> None:
    entries = coord_log.entries()
    assert coord_log.size == len(entries) == 20
    assert entries[0].prev_hash == GENESIS_PREV_HASH
    for prev, entry in itertools.pairwise(entries):
        assert entry.prev_hash == prev.entry_hash
        assert entry.entry_hash == hashlib.sha256(entry.canonical()).digest()
        assert entry.timestamp > prev.timestamp
    assert entries[3].actor == "coordinator"
    assert entries[3].data == {"step": 2, "rows": [2, 4]}
    assert coord_log.entries(5, 7) == entries[5:7]
    assert coord_log.entry(19) == entries[19]
    coord_log.verify()


def test_canonical_encoding_is_sorted_compact_utf8(tmp_path: Path) -> None:
    log = AuditLog(
        tmp_path / "a.db", owner="n", signing_key=Ed25519PrivateKey.generate(),
        now=lambda: 5.0,
    )  # fmt: skip
    entry = log.append("job.step", job_id="j", data={"b": "é", "a": (1, 2)})
    assert entry.data == {"a": [1, 2], "b": "é"}
    assert (
        entry.canonical()
        == (
            '{"actor":"n","data":{"a":[1,2],"b":"é"},"index":0,"job_id":"j",'
            '"kind":"job.step","prev_hash":"' + "00" * 32 + '","timestamp":5.0}'
        ).encode()
    )


def test_clock_going_backwards_keeps_timestamps_monotonic(
    coord_log: AuditLog, clock: Any
) -> None:
    clock.t -= 1000
    entry = coord_log.append("job.step", data={})
    assert entry.timestamp == coord_log.entry(19).timestamp
    coord_log.verify()


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("Job Approved", {}),
        ("job.", {}),
        ("job.step", ["not", "a", "dict"]),
        ("job.step", {"x": float("nan")}),
        ("job.step", {"x": object()}),
    ],
)
def test_bad_entries_are_refused(coord_log: AuditLog, kind: str, data: object) -> None:
    with pytest.raises(AuditError):
        coord_log.append(kind, data=data)  # type: ignore[arg-type]
    assert coord_log.size == 20


def test_reopen_continues_the_chain(
    tmp_path: Path, coord_log: AuditLog, coord_key: Ed25519PrivateKey, clock: Any
) -> None:
    root_before = coord_log.root_hash()
    last = coord_log.entry(19)
    coord_log.close()
    with AuditLog(
        tmp_path / "coord.db", owner="coordinator", signing_key=coord_key, now=clock
    ) as log:
        assert log.size == 20
        assert log.root_hash() == root_before
        entry = log.append("job.refused", job_id="j9", data={"reason": "min group"})
        assert entry.index == 20
        assert entry.prev_hash == last.entry_hash
        log.verify()


def test_reopen_with_another_owner_or_key_is_refused(
    tmp_path: Path,
    coord_log: AuditLog,
    coord_key: Ed25519PrivateKey,
    other_key: Ed25519PrivateKey,
) -> None:
    coord_log.close()
    with pytest.raises(AuditError, match="belongs to"):
        AuditLog(tmp_path / "coord.db", owner="coordinator", signing_key=other_key)
    with pytest.raises(AuditError, match="belongs to"):
        AuditLog(tmp_path / "coord.db", owner="node-a", signing_key=coord_key)


def test_database_refuses_updates_and_deletes(
    tmp_path: Path, coord_log: AuditLog
) -> None:
    db = sqlite3.connect(tmp_path / "coord.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE entries SET data = '{}' WHERE idx = 3")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM entries WHERE idx = 19")
    db.close()


def test_tampered_database_is_detected(
    tmp_path: Path,
    coord_log: AuditLog,
    coord_key: Ed25519PrivateKey,
    node_key: Ed25519PrivateKey,
) -> None:
    head = coord_log.tree_head()
    coord_log.add_cosignature(head, "bank-a", cosign(head, "bank-a", node_key))
    coord_log.close()
    db = sqlite3.connect(tmp_path / "coord.db")
    db.execute("DROP TRIGGER entries_no_update")
    db.execute("UPDATE entries SET data = '{\"step\":99}' WHERE idx = 4")
    db.commit()
    db.close()
    reopened = AuditLog(
        tmp_path / "coord.db", owner="coordinator", signing_key=coord_key
    )
    with pytest.raises(AuditError, match="entry 4: entry_hash"):
        reopened.verify()
    reopened.close()


def test_consistently_rewritten_database_fails_on_open(
    tmp_path: Path,
    coord_log: AuditLog,
    coord_key: Ed25519PrivateKey,
    node_key: Ed25519PrivateKey,
) -> None:
    head = coord_log.tree_head()
    coord_log.add_cosignature(head, "bank-a", cosign(head, "bank-a", node_key))
    forged = coord_log.entry(19)
    coord_log.close()
    content = forged.content(
        index=19, timestamp=forged.timestamp, actor=forged.actor, kind=forged.kind,
        job_id=forged.job_id, data={"step": 0}, prev_hash=forged.prev_hash,
    )  # fmt: skip
    db = sqlite3.connect(tmp_path / "coord.db")
    db.execute("DROP TRIGGER entries_no_update")
    db.execute(
        "UPDATE entries SET data = ?, entry_hash = ?, leaf_hash = ? WHERE idx = 19",
        ('{"step":0}', hashlib.sha256(content).digest(), leaf_hash(content)),
    )
    db.commit()
    db.close()
    with pytest.raises(AuditError, match="no longer matches its tree head at size 20"):
        AuditLog(tmp_path / "coord.db", owner="coordinator", signing_key=coord_key)


def test_concurrent_appends_keep_a_valid_chain(
    tmp_path: Path, node_key: Ed25519PrivateKey
) -> None:
    log = AuditLog(tmp_path / "node.db", owner="bank-a", signing_key=node_key)
    barrier = threading.Barrier(8)

    def worker(w: int) -> None:
        barrier.wait()
        for i in range(200):
            log.append("quota.reserved", job_id=f"w{w}", data={"i": i})

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.size == 1600
    log.verify()
    assert [len(log.entries_for_job(f"w{w}")) for w in range(8)] == [200] * 8
    assert [e.index for e in log.entries()] == list(range(1600))
    log.close()


def test_entries_for_job(coord_log: AuditLog) -> None:
    j2 = coord_log.entries_for_job("j2")
    assert [e.data["step"] for e in j2] == [1, 5, 9, 13, 17]
    assert coord_log.entries_for_job("nope") == []


def test_proofs_verify_against_signed_heads(coord_log: AuditLog) -> None:
    old = coord_log.tree_head()
    verify_tree_head(old, coord_log.public_key)
    for i in range(5):
        coord_log.append("job.step", job_id="j5", data={"i": i})
    new = coord_log.tree_head()
    assert (old.size, new.size) == (20, 25)
    for index in (0, 7, 19):
        leaf = coord_log.entry(index).leaf_hash
        verify_inclusion(
            leaf, index, 20, coord_log.inclusion_proof(index, 20), old.root_hash
        )
        verify_inclusion(
            leaf, index, 25, coord_log.inclusion_proof(index), new.root_hash
        )
    proof = coord_log.consistency_proof(old.size, new.size)
    verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)


def test_a_head_signed_by_another_key_fails(
    coord_log: AuditLog, other_key: Ed25519PrivateKey
) -> None:
    head = coord_log.tree_head()
    with pytest.raises(AuditError, match="bad owner signature"):
        verify_tree_head(head, public_key_bytes(other_key))


def test_cosignatures_are_stored_with_their_head(
    coord_log: AuditLog, node_key: Ed25519PrivateKey, other_key: Ed25519PrivateKey
) -> None:
    head = coord_log.tree_head()
    node_pub = public_key_bytes(node_key)
    stored = coord_log.add_cosignature(
        head, "bank-a", cosign(head, "bank-a", node_key), public_key=node_pub
    )
    stored = coord_log.add_cosignature(
        head, "bank-b", cosign(head, "bank-b", other_key)
    )
    assert set(stored.cosignatures) == {"bank-a", "bank-b"}
    verify_cosignature(stored, "bank-a", node_pub)
    [listed] = coord_log.tree_heads()
    assert listed == stored
    with pytest.raises(AuditError, match="bad cosignature"):
        coord_log.add_cosignature(
            head, "bank-c", cosign(head, "bank-c", other_key), public_key=node_pub
        )
    with pytest.raises(AuditError, match="not cosigned"):
        verify_cosignature(head, "bank-a", node_pub)


def test_cosigning_a_foreign_or_false_head_is_refused(
    coord_log: AuditLog,
    coord_key: Ed25519PrivateKey,
    node_key: Ed25519PrivateKey,
    tmp_path: Path,
) -> None:
    other = AuditLog(tmp_path / "x.db", owner="coordinator", signing_key=node_key)
    other.append("registration", data={})
    foreign = other.tree_head()
    with pytest.raises(AuditError, match="bad owner signature"):
        coord_log.add_cosignature(
            foreign, "bank-a", cosign(foreign, "bank-a", node_key)
        )
    other.close()
    false_root = sign_tree_head("coordinator", 20, bytes(32), 1e10, coord_key)
    with pytest.raises(AuditError, match="does not match this log"):
        coord_log.add_cosignature(
            false_root, "bank-a", cosign(false_root, "bank-a", node_key)
        )
    too_big = sign_tree_head("coordinator", 21, coord_log.root_hash(), 1e10, coord_key)
    with pytest.raises(AuditError, match="does not match this log"):
        coord_log.add_cosignature(
            too_big, "bank-a", cosign(too_big, "bank-a", node_key)
        )


def test_proof_requests_beyond_the_log_raise(coord_log: AuditLog) -> None:
    with pytest.raises(AuditError):
        coord_log.consistency_proof(10, 21)
    with pytest.raises(AuditError):
        coord_log.entry(20)
