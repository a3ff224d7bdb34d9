"""The benchmark-only plain-transport job types, driven in process."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks import plain_jobs
from cleanroom.catalog import ColumnInfo, DatasetInfo
from cleanroom.errors import SpecError
from cleanroom.jobspec import parse_spec
from cleanroom.jobtypes import get, load_plugins, names
from cleanroom.jobtypes.base import CoordinatorContext, NodeContext
from protocols.party import COORDINATOR, Inbound

NODES = ("n1", "n2", "n3")
PLUGINS = ("bench_plain_sum", "bench_plain_vector", "bench_secure_vector")


@pytest.fixture(autouse=True)
def _plugins() -> None:
    load_plugins(PLUGINS)


def _spec(job_type: str, params: dict[str, object]) -> str:
    inputs = "".join(f"  - {{node: {n}, dataset: d}}\n" for n in NODES)
    return (
        f"type: {job_type}\ninputs:\n{inputs}params: {json.dumps(params)}\n"
        "purpose: test\n"
    )


def _frames() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(7)
    return {
        n: pd.DataFrame({"a": rng.integers(0, 100, 20), "b": rng.random(20)})
        for n in NODES
    }


def _run(spec_text: str, frames: dict[str, pd.DataFrame], min_group: int = 5) -> dict:
    spec = parse_spec(spec_text)
    job = get(spec.type)
    coordinator = job.coordinator_party(
        CoordinatorContext(job_id="j", spec=spec, parties=NODES, signing_keys={})
    )
    coordinator.start()
    for node in NODES:
        party = job.node_party(
            NodeContext(
                job_id="j", spec=spec, node=node, dataset="d", data=frames[node],
                dataset_hash="h", min_group_size=min_group,
                signing_key=Ed25519PrivateKey.generate(), parties=NODES,
                peer_signing_keys={},
            )
        )  # fmt: skip
        [message] = party.start()
        assert message.recipient == COORDINATOR and party.finished
        coordinator.receive(Inbound(node, message.stage, message.payload))
    assert coordinator.finished
    return dict(coordinator.result())


def test_loaded_only_as_named_entry_point_plugins() -> None:
    assert set(PLUGINS) <= set(names())
    assert get("bench_plain_sum").summary.startswith("BENCHMARK ONLY")
    assert get("bench_plain_vector").summary.startswith("BENCHMARK ONLY")


def test_plain_sum_adds_every_node_column_sum() -> None:
    frames = _frames()
    result = _run(_spec("bench_plain_sum", {"columns": ["a", "b"]}), frames)
    assert result["rows"] == 60 and result["suppressed"] is False
    for column in ("a", "b"):
        expected = sum(float(f[column].sum()) for f in frames.values())
        assert result["sums"][column] == pytest.approx(expected)


def test_plain_sum_suppresses_small_groups() -> None:
    result = _run(_spec("bench_plain_sum", {"columns": ["a"]}), _frames(), min_group=50)
    assert result["suppressed"] is True and result["sums"] is None


def test_plain_vector_sums_mod_2_64() -> None:
    frames = _frames()
    result = _run(_spec("bench_plain_vector", {"column": "b", "length": 50}), frames)
    total = np.zeros(50, dtype=np.uint64)
    for frame in frames.values():
        total += plain_jobs.plain_vector(frame["b"].to_numpy(), 50)
    assert result["length"] == 50 and result["head"] == total[:8].tolist()


def test_validation_names_the_bad_parameter() -> None:
    info = DatasetInfo("d", (ColumnInfo("a", "int"), ColumnInfo("s", "str")), "<100")
    spec = parse_spec(_spec("bench_plain_sum", {"columns": ["s"]}))
    catalog = {i: info for i in spec.inputs}
    with pytest.raises(SpecError, match="not a numeric column"):
        get("bench_plain_sum").validate(spec, catalog)
    spec = parse_spec(_spec("bench_plain_vector", {"column": "a", "length": 0}))
    with pytest.raises(SpecError) as err:
        get("bench_plain_vector").validate(spec, catalog)
    assert err.value.path == "params.length"
