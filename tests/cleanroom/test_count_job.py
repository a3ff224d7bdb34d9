"""The count job's parties, run in one process: suppression, signatures, checks."""

import json

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cleanroom import jobtypes
from cleanroom.catalog import ColumnInfo, DatasetInfo
from cleanroom.errors import ProtocolError, SpecError
from cleanroom.jobspec import parse_spec
from cleanroom.keys import verify_statement
from protocols.party import COORDINATOR, Inbound

SPEC = """
type: count
inputs: [{node: a, dataset: d}, {node: b, dataset: d}]
params: {where: [{column: age, op: ">=", value: 50}]}
purpose: test
"""


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _run(frames: dict[str, pd.DataFrame], min_group: int = 5) -> tuple[dict, dict]:
    spec = parse_spec(SPEC)
    keys = {n: Ed25519PrivateKey.generate() for n in frames}
    publics = {n: _raw(k) for n, k in keys.items()}
    job = jobtypes.get("count")
    coord = job.coordinator_party(
        jobtypes.CoordinatorContext("j1", spec, spec.nodes, publics)
    )
    coord.start()
    messages = {}
    for node, frame in frames.items():
        party = job.node_party(
            jobtypes.NodeContext(
                "j1",
                spec,
                node,
                "d",
                frame,
                "hash",
                min_group,
                keys[node],
                spec.nodes,
                publics,
            )
        )
        (out,) = party.start()
        assert out.recipient == COORDINATOR
        messages[node] = out
        assert party.usage().rows_touched == len(frame)
    for node, out in messages.items():
        coord.receive(Inbound(node, out.stage, out.payload))
    assert coord.finished
    return dict(coord.result()), publics


def test_counts_match_pandas_and_are_signed() -> None:
    rng = np.random.default_rng(1)
    frames = {n: pd.DataFrame({"age": rng.integers(0, 100, 200)}) for n in "ab"}
    result, publics = _run(frames)
    for entry in result["counts"]:
        assert entry["count"] == int((frames[entry["node"]].age >= 50).sum())
    assert result["total"] == sum(int((f.age >= 50).sum()) for f in frames.values())
    for att in result["attestations"]:
        verify_statement(publics[att["node"]], att["statement"], att["signature"])


def test_small_counts_are_suppressed() -> None:
    frames = {
        "a": pd.DataFrame({"age": [60, 61, 10]}),
        "b": pd.DataFrame({"age": list(range(40, 100))}),
    }
    result, _ = _run(frames, min_group=5)
    by_node = {c["node"]: c for c in result["counts"]}
    assert by_node["a"] == {
        "node": "a",
        "dataset": "d",
        "count": None,
        "suppressed": True,
    }
    assert by_node["b"]["count"] == 50
    assert result["total"] is None


def test_forged_or_repeated_reports_are_refused() -> None:
    spec = parse_spec(SPEC)
    keys = {n: Ed25519PrivateKey.generate() for n in "ab"}
    publics = {n: _raw(k) for n, k in keys.items()}
    job = jobtypes.get("count")
    frame = pd.DataFrame({"age": list(range(100))})
    coord = job.coordinator_party(
        jobtypes.CoordinatorContext("j1", spec, spec.nodes, publics)
    )
    # node b signs a report claiming to be node a
    party_b = job.node_party(
        jobtypes.NodeContext(
            "j1", spec, "a", "d", frame, "h", 5, keys["b"], spec.nodes, publics
        )
    )
    (out,) = party_b.start()
    with pytest.raises(ProtocolError, match="not signed"):
        coord.receive(Inbound("a", out.stage, out.payload))
    party_a = job.node_party(
        jobtypes.NodeContext(
            "j1", spec, "a", "d", frame, "h", 5, keys["a"], spec.nodes, publics
        )
    )
    (good,) = party_a.start()
    coord.receive(Inbound("a", good.stage, good.payload))
    with pytest.raises(ProtocolError, match="already reported"):
        coord.receive(Inbound("a", good.stage, good.payload))
    tampered = json.loads(good.payload)
    tampered["statement"]["count"] += 1
    with pytest.raises(ProtocolError):
        coord.receive(Inbound("b", good.stage, json.dumps(tampered).encode()))
    # A statement or signature of the wrong JSON type is refused, not a crash.
    for statement, signature in (([1, 2], "x"), ({"node": "b"}, 7)):
        odd = {"statement": statement, "signature": signature}
        with pytest.raises(ProtocolError):
            coord.receive(Inbound("b", good.stage, json.dumps(odd).encode()))


def test_where_clause_is_checked_against_the_schema() -> None:
    job = jobtypes.get("count")
    info = DatasetInfo(
        "d", (ColumnInfo("age", "int"), ColumnInfo("city", "str")), "<100"
    )
    spec = parse_spec(SPEC.replace("age", "agee"))
    with pytest.raises(SpecError) as err:
        job.validate(spec, {i: info for i in spec.inputs})
    assert err.value.path == "params.where[0].column"
    spec = parse_spec(SPEC.replace("50", "'fifty'"))
    with pytest.raises(SpecError) as err:
        job.validate(spec, {i: info for i in spec.inputs})
    assert err.value.path == "params.where[0].value"
    assert "expected a number" in err.value.problem
