"""The count job's parties, run in one process: suppression, signatures, checks."""

import json
import random

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
from protocols.party import ANALYST, COORDINATOR, Inbound

SPEC = """
type: count
inputs: [{node: a, dataset: d}, {node: b, dataset: d}]
params: {where: [{column: age, op: ">=", value: 50}]}
purpose: test
"""


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _parties(frames: dict[str, pd.DataFrame], min_group: int = 5) -> tuple:
    spec = parse_spec(SPEC)
    keys = {n: Ed25519PrivateKey.generate() for n in frames}
    publics = {n: _raw(k) for n, k in keys.items()}
    job = jobtypes.get("count")
    coord = job.coordinator_party(
        jobtypes.CoordinatorContext("j1", spec, spec.nodes, publics)
    )
    analyst = job.analyst_party(
        jobtypes.AnalystContext(
            "j1", spec, "alice", spec.nodes, Ed25519PrivateKey.generate(), publics
        )
    )
    nodes = {
        node: job.node_party(
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
        for node, frame in frames.items()
    }
    return spec, keys, publics, coord, analyst, nodes


def _run(frames: dict[str, pd.DataFrame], min_group: int = 5) -> tuple[dict, dict]:
    _, _, publics, coord, analyst, nodes = _parties(frames, min_group)
    coord.start()
    for node, party in nodes.items():
        sealed, commitment = party.start()
        assert sealed.recipient == ANALYST and commitment.recipient == COORDINATOR
        assert party.usage().rows_touched == len(frames[node])
        coord.receive(Inbound(node, commitment.stage, commitment.payload))
        analyst.receive(Inbound(node, sealed.stage, sealed.payload))
    assert coord.finished and analyst.finished
    released = dict(coord.result())
    for node, party in nodes.items():
        assert party.attest(released) == {
            f"/commitments/{node}": released["commitments"][node]
        }
    return dict(analyst.finalize(released)), publics


def test_counts_match_pandas_are_signed_and_never_reach_the_coordinator() -> None:
    rng = np.random.default_rng(1)
    frames = {n: pd.DataFrame({"age": rng.integers(0, 100, 200)}) for n in "ab"}
    _, _, _, coord, _, nodes = _parties(frames)
    for node, party in nodes.items():
        _, commitment = party.start()
        coord.receive(Inbound(node, commitment.stage, commitment.payload))
        count = int((frames[node].age >= 50).sum())
        assert str(count).encode() not in commitment.payload
    assert set(coord.result()) == {"commitments"}
    result, publics = _run(frames)
    for entry in result["counts"]:
        assert entry["count"] == int((frames[entry["node"]].age >= 50).sum())
    assert result["total"] == sum(int((f.age >= 50).sum()) for f in frames.values())
    for report in result["reports"]:
        verify_statement(
            publics[report["node"]], report["statement"], report["signature"]
        )


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


def test_forged_altered_or_repeated_reports_are_refused() -> None:
    frame = pd.DataFrame({"age": list(range(100))})
    spec, keys, publics, coord, analyst, nodes = _parties({"a": frame, "b": frame})
    # node b signs a report claiming to be node a
    impostor = jobtypes.get("count").node_party(
        jobtypes.NodeContext(
            "j1", spec, "a", "d", frame, "h", 5, keys["b"], spec.nodes, publics
        )
    )
    forged, _ = impostor.start()
    with pytest.raises(ProtocolError, match="not signed"):
        analyst.receive(Inbound("a", forged.stage, forged.payload))
    good, commitment = nodes["a"].start()
    analyst.receive(Inbound("a", good.stage, good.payload))
    with pytest.raises(ProtocolError, match="already reported"):
        analyst.receive(Inbound("a", good.stage, good.payload))
    tampered = json.loads(good.payload)
    tampered["statement"]["count"] += 1
    with pytest.raises(ProtocolError):
        analyst.receive(Inbound("b", good.stage, json.dumps(tampered).encode()))
    for statement, signature in (([1, 2], "x"), ({"node": "b"}, 7)):
        odd = {"statement": statement, "signature": signature, "salt": "00"}
        with pytest.raises(ProtocolError):
            analyst.receive(Inbound("b", good.stage, json.dumps(odd).encode()))
    coord.receive(Inbound("a", commitment.stage, commitment.payload))
    with pytest.raises(ProtocolError, match="already committed"):
        coord.receive(Inbound("a", commitment.stage, commitment.payload))
    with pytest.raises(ProtocolError, match="malformed commitment"):
        coord.receive(Inbound("b", commitment.stage, b"999999"))


def test_a_release_with_another_commitment_is_refused_by_node_and_analyst() -> None:
    frame = pd.DataFrame({"age": list(range(100))})
    _, _, _, coord, analyst, nodes = _parties({"a": frame, "b": frame})
    for node, party in nodes.items():
        sealed, commitment = party.start()
        coord.receive(Inbound(node, commitment.stage, commitment.payload))
        analyst.receive(Inbound(node, sealed.stage, sealed.payload))
    forged = dict(coord.result())
    forged["commitments"] = {**forged["commitments"], "a": "0" * 64}
    with pytest.raises(ProtocolError, match="does not hold this node's commitment"):
        nodes["a"].attest(forged)
    with pytest.raises(ProtocolError, match="commitment of 'a' is wrong"):
        analyst.finalize(forged)


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


DP_SPEC = """
type: count
inputs: [{node: a, dataset: d}, {node: b, dataset: d}]
params:
  where: [{column: age, op: ">=", value: 50}]
  dp: {epsilon: 0.5, delta: 1.0e-6}
purpose: test
"""


def test_dp_counts_carry_exactly_the_noise_they_report() -> None:
    """Repeated runs at a fixed epsilon: the released counts scatter around the
    true count with the std each report states; the usage charges epsilon."""
    spec = parse_spec(DP_SPEC)
    job = jobtypes.get("count")
    assert job.epsilon(spec) == (0.5, 1e-6)
    frame = pd.DataFrame({"age": list(range(100))})  # 50 rows match
    keys = {n: Ed25519PrivateKey.generate() for n in spec.nodes}
    publics = {n: _raw(k) for n, k in keys.items()}
    values, stds = [], set()
    for seed in range(400):
        coord = job.coordinator_party(
            jobtypes.CoordinatorContext("j1", spec, spec.nodes, publics)
        )
        analyst = job.analyst_party(
            jobtypes.AnalystContext(
                "j1", spec, "alice", spec.nodes, Ed25519PrivateKey.generate(), publics
            )
        )
        for node in spec.nodes:
            party = job.node_party(
                jobtypes.NodeContext(
                    "j1", spec, node, "d", frame, "hash", 5, keys[node], spec.nodes,
                    publics, random=random.Random(f"{seed}-{node}").randbytes,
                )
            )
            sealed, commitment = party.start()
            assert party.usage().epsilon == 0.5
            coord.receive(Inbound(node, commitment.stage, commitment.payload))
            analyst.receive(Inbound(node, sealed.stage, sealed.payload))
        opened = analyst.finalize(coord.result())
        for row in opened["counts"]:
            values.append(row["count"])
            stds.add(row["noise_std"])
        assert opened["dp"]["total_noise_std"] == pytest.approx(
            np.sqrt(2) * row["noise_std"]
        )
    (std,) = stds
    assert std > 5  # epsilon 0.5, delta 1e-6: sigma about 9
    sample = np.array(values, dtype=float)
    assert sample.mean() == pytest.approx(50, abs=4 * std / np.sqrt(len(sample)))
    # 800 counts: the sample std is within 2.5% (one standard error) of the truth
    assert sample.std(ddof=1) / std == pytest.approx(1, abs=0.1)
    assert len(set(values)) > 20  # never the exact count every time


def test_dp_params_name_their_path() -> None:
    job = jobtypes.get("count")
    for dp, path in (
        ({"epsilon": 0}, "params.dp.epsilon"),
        ({"epsilon": 1, "delta": 1}, "params.dp.delta"),
        ({"epsilon": 1, "delta": 1e-6, "x": 1}, "params.dp.x"),
    ):
        text = SPEC.replace(
            'params: {where: [{column: age, op: ">=", value: 50}]}',
            f"params: {{dp: {json.dumps(dp).replace('1e-06', '1.0e-06')}}}",
        )
        with pytest.raises(SpecError) as err:
            job.params(parse_spec(text))
        assert err.value.path == path
