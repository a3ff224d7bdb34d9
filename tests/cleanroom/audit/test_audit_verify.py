"""verify_export catches every kind of tampering; forks and job histories."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.audit import (
    AuditEntry,
    AuditLog,
    SignedTreeHead,
    cosign,
    detect_fork,
    job_history,
    public_key_bytes,
    sign_tree_head,
    verify_export,
)
from cleanroom.errors import AuditError

Record = dict[str, Any]


def load(path: Path) -> list[Record]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def save(path: Path, records: list[Record]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def rehash(records: list[Record], start: int, stop: int | None = None) -> None:
    """What a forger without the key can do: recompute entry hashes and links."""
    entries = [r for r in records if r["type"] == "entry"]
    for i in range(start, len(entries) if stop is None else stop):
        rec = entries[i]
        if i > 0:
            rec["prev_hash"] = entries[i - 1]["entry_hash"]
        entry = AuditEntry.from_json({**rec, "entry_hash": "00" * 32})
        rec["entry_hash"] = hashlib.sha256(entry.canonical()).hexdigest()


@pytest.fixture
def exported(coord_log: AuditLog, tmp_path: Path, node_key: Ed25519PrivateKey) -> Path:
    head = coord_log.tree_head()
    coord_log.add_cosignature(head, "bank-a", cosign(head, "bank-a", node_key))
    for i in range(3):
        coord_log.append("job.step", job_id="j1", data={"late": i})
    path = tmp_path / "coord.jsonl"
    coord_log.export(path)
    return path


@pytest.fixture
def trusted(
    coord_key: Ed25519PrivateKey, node_key: Ed25519PrivateKey
) -> dict[str, bytes]:
    return {
        "coordinator": public_key_bytes(coord_key),
        "bank-a": public_key_bytes(node_key),
    }


def test_an_untouched_export_verifies(
    exported: Path, trusted: dict[str, bytes]
) -> None:
    report = verify_export(exported, trusted_keys=trusted)
    assert (report.owner, report.entries, report.size, report.heads) == (
        "coordinator",
        23,
        23,
        2,
    )
    assert report.cosigners == ("bank-a",)
    assert report.unverified_cosigners == ()
    assert report.public_key == trusted["coordinator"].hex()
    plain = verify_export(exported)
    assert plain.root == report.root
    assert plain.unverified_cosigners == ("bank-a",)


def edit(records: list[Record], index: int, **changes: Any) -> None:
    records[index + 1].update(changes)


TAMPERING = [
    ("data edited", lambda r: edit(r, 5, data={"step": 99}), "entry 5: entry_hash"),
    ("kind edited", lambda r: edit(r, 5, kind="job.refused"), "entry 5: entry_hash"),
    ("time edited", lambda r: edit(r, 5, timestamp=1.0), "entry 5: entry_hash"),
    ("actor edited", lambda r: edit(r, 0, actor="bank-b"), "entry 0: entry_hash"),
    (
        "data edited, its hash recomputed",
        lambda r: (edit(r, 5, data={}), rehash(r, 5, 6)),
        "entry 6: prev_hash does not match entry 5",
    ),
    (
        "data edited, whole chain recomputed",
        lambda r: (edit(r, 5, data={}), rehash(r, 5)),
        "tree head at size 20: signed root does not match the entries",
    ),
    (
        "time moved backwards, whole chain recomputed",
        lambda r: (edit(r, 5, timestamp=r[5]["timestamp"] - 10), rehash(r, 5)),
        "entry 5: timestamp .* is earlier than entry 4",
    ),
    ("entry deleted", lambda r: r.pop(8), "entry 7: found index 8"),
    (
        "entry deleted, chain renumbered and recomputed",
        lambda r: (
            r.pop(8),
            [e.update(index=i) for i, e in enumerate(r[1:23])],
            rehash(r, 7),
        ),
        "tree head at size 20: signed root",
    ),
    ("entries reordered", lambda r: r.insert(4, r.pop(5)), "entry 3: found index 4"),
    (
        "entry inserted",
        lambda r: (r.insert(12, {**r[11], "index": 11}), rehash(r, 11, 12)),
        "entry 12: found index 11",
    ),
    (
        "entry appended after the signed head",
        lambda r: (r.insert(24, {**r[23], "index": 23}), rehash(r, 23)),
        "entries 23..23 are not covered by a signed tree head",
    ),
    (
        "entries truncated",
        lambda r: r.pop(23),
        "size 23 covers entries the export lacks",
    ),
    ("heads removed", lambda r: r.pop() and r.pop(), "no signed tree head"),
    ("latest head removed", lambda r: r.pop(), "entries 20..22 are not covered"),
    (
        "root of head edited",
        lambda r: r[-1].update(root="00" * 32),
        "bad owner signature",
    ),
    ("size of head edited", lambda r: r[-1].update(size=20), "bad owner signature"),
    ("header missing", lambda r: r.pop(0), "does not start with a header"),
    (
        "unknown record",
        lambda r: r.insert(3, {"type": "note"}),
        "line 4: unknown record",
    ),
    ("entry after heads", lambda r: r.append(r[1]), "entry after the tree heads"),
    ("malformed entry", lambda r: r[3].pop("prev_hash"), "missing or malformed"),
]


@pytest.mark.parametrize(
    ("what", "tamper", "error"), TAMPERING, ids=[t[0] for t in TAMPERING]
)
def test_tampering_is_detected(
    exported: Path, trusted: dict[str, bytes], what: str, tamper: Any, error: str
) -> None:
    records = load(exported)
    tamper(records)
    save(exported, records)
    with pytest.raises(AuditError, match=error):
        verify_export(exported, trusted_keys=trusted)


def test_a_line_that_is_not_json_is_reported(exported: Path) -> None:
    exported.write_text(exported.read_text() + "{oops\n")
    with pytest.raises(AuditError, match="line 27: not JSON"):
        verify_export(exported)


def test_truncated_log_with_its_old_head_needs_a_newer_known_head(
    coord_log: AuditLog, tmp_path: Path, trusted: dict[str, bytes]
) -> None:
    old_export = tmp_path / "old.jsonl"
    old_head = coord_log.export(old_export)
    coord_log.append("job.released", job_id="j3", data={"to": "analyst"})
    new_head = coord_log.tree_head()
    # Self-consistent on its own: an old export with its own old signed head.
    assert verify_export(old_export, trusted_keys=trusted).size == 20
    with pytest.raises(AuditError, match="truncated or rolled back"):
        verify_export(old_export, trusted_keys=trusted, known_heads=[new_head])
    new_export = tmp_path / "new.jsonl"
    coord_log.export(new_export)
    verify_export(new_export, trusted_keys=trusted, known_heads=[old_head, new_head])


def test_head_signed_by_the_wrong_key(
    exported: Path, trusted: dict[str, bytes], other_key: Ed25519PrivateKey
) -> None:
    records = load(exported)
    head = SignedTreeHead.from_json(records[-1])
    forged = sign_tree_head(
        head.owner, head.size, head.root_hash, head.timestamp, other_key
    )
    records[-1] = {"type": "tree_head", **forged.to_json()}
    save(exported, records)
    with pytest.raises(AuditError, match="bad owner signature"):
        verify_export(exported)
    # Swapping the embedded key too fools only a verifier with no trusted key.
    records[0]["public_key"] = public_key_bytes(other_key).hex()
    records = [records[0], *records[1:-2], records[-1]]
    save(exported, records)
    assert verify_export(exported).size == 23
    with pytest.raises(AuditError, match="not the trusted key"):
        verify_export(exported, trusted_keys=trusted)
    with pytest.raises(AuditError, match="no trusted key for the log owner"):
        verify_export(exported, trusted_keys={"bank-a": trusted["bank-a"]})


def test_cosignature_by_the_wrong_key(
    coord_log: AuditLog,
    tmp_path: Path,
    trusted: dict[str, bytes],
    other_key: Ed25519PrivateKey,
) -> None:
    head = coord_log.tree_head()
    coord_log.add_cosignature(head, "bank-a", cosign(head, "bank-a", other_key))
    coord_log.export(tmp_path / "e.jsonl")
    assert verify_export(tmp_path / "e.jsonl").unverified_cosigners == ("bank-a",)
    with pytest.raises(AuditError, match="bad cosignature by 'bank-a'"):
        verify_export(tmp_path / "e.jsonl", trusted_keys=trusted)


def forked_logs(
    tmp_path: Path, key: Ed25519PrivateKey, make_clock: Any
) -> tuple[AuditLog, AuditLog]:
    """One owner keeping two histories that agree on their first 10 entries."""
    logs = []
    for name in ("a", "b"):
        log = AuditLog(tmp_path / f"{name}.db", owner="coordinator", signing_key=key,
                       now=make_clock())  # fmt: skip
        for i in range(10):
            log.append("job.step", job_id="j1", data={"i": i})
        logs.append(log)
    return logs[0], logs[1]


def test_a_fork_shown_to_two_parties_is_detected(
    tmp_path: Path,
    coord_key: Ed25519PrivateKey,
    node_key: Ed25519PrivateKey,
    make_clock: Any,
) -> None:
    log_a, log_b = forked_logs(tmp_path, coord_key, make_clock)
    owner_key = public_key_bytes(coord_key)
    log_a.append("job.released", job_id="j1", data={"to": "analyst-1"})
    log_b.append("job.refused", job_id="j1", data={"why": "hidden"})
    shown_to_a = log_a.tree_head()
    log_a.add_cosignature(shown_to_a, "bank-a", cosign(shown_to_a, "bank-a", node_key))
    for i in range(4):
        log_b.append("job.step", job_id="j2", data={"i": i})
    shown_to_b = log_b.tree_head()
    with pytest.raises(AuditError, match="fork in the log of 'coordinator'"):
        detect_fork(shown_to_a, shown_to_b, log_b.consistency_proof(11, 15),
                    owner_key=owner_key)  # fmt: skip
    with pytest.raises(AuditError, match="two different roots at size 11"):
        other_11 = sign_tree_head(
            "coordinator", 11, log_b.root_hash(11), 0.0, coord_key
        )
        detect_fork(shown_to_a, other_11, [], owner_key=owner_key)
    # Bank A's cosigned head also exposes log B's export.
    log_b.export(tmp_path / "b.jsonl")
    with pytest.raises(AuditError, match="known tree head at size 11: signed root"):
        verify_export(tmp_path / "b.jsonl", known_heads=[shown_to_a])
    # An honest history passes, and a head with a forged signature proves nothing.
    for i in range(4):
        log_a.append("job.step", job_id="j2", data={"i": i})
    later = log_a.tree_head()
    detect_fork(later, shown_to_a, log_a.consistency_proof(11, 15), owner_key=owner_key)
    with pytest.raises(AuditError, match="bad owner signature"):
        detect_fork(shown_to_a, later, [], owner_key=public_key_bytes(node_key))
    log_a.close()
    log_b.close()


def test_job_history_merges_logs_by_time(
    exported: Path,
    tmp_path: Path,
    node_key: Ed25519PrivateKey,
    trusted: dict[str, bytes],
    clock: Any,
) -> None:
    clock.t -= 30.5  # the node's entries interleave with the coordinator's
    node = AuditLog(
        tmp_path / "node.db", owner="bank-a", signing_key=node_key, now=clock
    )
    node.append("job.approved", job_id="j1", data={"policy": "p1"})
    node.append("job.step", job_id="j2", data={})
    node.append("job.released", job_id="j1", data={"rows": 40})
    events = job_history([exported, node], "j1", trusted_keys=trusted)
    assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)
    assert {e.log for e in events} == {"coordinator", "bank-a"}
    assert [e.kind for e in events if e.log == "bank-a"] == [
        "job.approved",
        "job.released",
    ]
    assert sum(e.log == "coordinator" for e in events) == 8
    assert all(e.entry.job_id == "j1" and e.actor == e.log for e in events)
    node.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
    allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=25, deadline=None)
@given(
    records=st.lists(
        st.tuples(
            st.sampled_from(["job.approved", "policy.changed", "registration"]),
            st.none() | st.text(min_size=1, max_size=6),
            st.dictionaries(st.text(max_size=8), json_values, max_size=5),
        ),
        max_size=12,
    )
)
def test_any_json_data_round_trips_through_an_export(
    records: list[tuple[str, str | None, dict[str, Any]]],
) -> None:
    key = Ed25519PrivateKey.generate()
    with tempfile.TemporaryDirectory() as tmp:
        with AuditLog(Path(tmp) / "l.db", owner="n", signing_key=key) as log:
            for kind, job_id, data in records:
                log.append(kind, job_id=job_id, data=data)
            log.export(Path(tmp) / "l.jsonl")
            stored = log.entries()
        report = verify_export(
            Path(tmp) / "l.jsonl", trusted_keys={"n": public_key_bytes(key)}
        )
        assert report.entries == len(records)
        exported = [AuditEntry.from_json(r) for r in load(Path(tmp) / "l.jsonl")[1:-1]]
        assert exported == stored
