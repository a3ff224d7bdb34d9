"""The secure_stats job's parties, run in one process, against numpy on pooled data:
statistics, group-by, suppression, validation, dropouts at every SecAgg+ stage and
the scale of the distributed DP noise."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cleanroom import jobtypes
from cleanroom.catalog import ColumnInfo, DatasetInfo
from cleanroom.errors import ProtocolAbort, ProtocolError, SpecError
from cleanroom.jobspec import parse_spec
from cleanroom.jobtypes.simulate import drive
from cleanroom.jobtypes.stats.cells import POLICY
from cleanroom.jobtypes.stats.encode import add_noise, contribution
from cleanroom.jobtypes.stats.layout import build_layout
from cleanroom.jobtypes.stats.params import parse_params
from cleanroom.jobtypes.stats.release import histogram_quantile
from cleanroom.keys import canonical_json
from protocols.party import Inbound
from protocols.secagg import SHARE_KEYS, STAGES, UNMASK

NODES = ("n1", "n2", "n3", "n4", "n5")
SIZES = (120, 200, 80, 150, 60)
BINS = {"age": [18, 30, 45, 60, 75, 90], "bmi": 10}
PARAMS: dict[str, Any] = {
    "columns": ["age", "bmi", "income"],
    "stats": [
        "count",
        "sum",
        "mean",
        "variance",
        "std",
        "covariance",
        "correlation",
        "histogram",
        "quantiles",
    ],
    "clip": {"age": [18, 90], "bmi": [10, 50], "income": [0, 200000]},
    "bins": BINS,
    "quantiles": [0.1, 0.5, 0.9],
    "max_rows": 10000,
}
SCHEMA = DatasetInfo(
    "d",
    (
        ColumnInfo("age", "int"),
        ColumnInfo("bmi", "float"),
        ColumnInfo("income", "float"),
        ColumnInfo("sex", "str"),
        ColumnInfo("smoker", "bool"),
    ),
    "100-1k",
)


def make_frames(seed: int = 3) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    frames = {}
    for node, rows in zip(NODES, SIZES, strict=True):
        frame = pd.DataFrame(
            {
                "age": rng.integers(18, 91, rows),
                "bmi": rng.normal(26, 4, rows).round(2),
                "income": rng.lognormal(10, 0.6, rows).clip(0, 200000),
                "sex": rng.choice(["F", "M"], rows),
                "smoker": rng.choice([True, False], rows),
            }
        )
        frame.loc[rng.choice(rows, 3, replace=False), "bmi"] = np.nan
        frames[node] = frame
    return frames


def spec_text(params: Mapping[str, Any], nodes: tuple[str, ...] = NODES) -> str:
    return yaml.safe_dump(
        {
            "type": "secure_stats",
            "inputs": [{"node": n, "dataset": "d"} for n in nodes],
            "params": dict(params),
            "purpose": "test",
        }
    )


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


KEYS = {n: Ed25519PrivateKey.generate() for n in NODES}
PUBLICS = {n: _raw(k) for n, k in KEYS.items()}


def parties(
    params: Mapping[str, Any],
    frames: Mapping[str, pd.DataFrame],
    *,
    min_group: Mapping[str, int] | None = None,
    seed: int = 0,
) -> tuple[Any, dict[str, Any], Any]:
    spec = parse_spec(spec_text(params, tuple(frames)))
    job = jobtypes.get("secure_stats")
    job.validate(spec, {i: SCHEMA for i in spec.inputs})
    publics = {n: PUBLICS[n] for n in frames}
    coordinator = job.coordinator_party(
        jobtypes.CoordinatorContext("job-1", spec, spec.nodes, publics)
    )
    nodes = {
        n: job.node_party(
            jobtypes.NodeContext(
                "job-1",
                spec,
                n,
                "d",
                frame,
                "hash",
                (min_group or {}).get(n, 5),
                KEYS[n],
                spec.nodes,
                publics,
                random=random.Random(f"{seed}-{n}").randbytes,
            )
        )
        for n, frame in frames.items()
    }
    analyst = job.analyst_party(
        jobtypes.AnalystContext(
            "job-1", spec, "alice", spec.nodes, Ed25519PrivateKey.generate(), publics
        )
    )
    return coordinator, nodes, analyst


def run(
    params: Mapping[str, Any],
    frames: Mapping[str, pd.DataFrame],
    *,
    drop_at: Mapping[str, str] | None = None,
    min_group: Mapping[str, int] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    coordinator, nodes, analyst = parties(
        params, frames, min_group=min_group, seed=seed
    )
    done = drive(coordinator, nodes, analyst, drop_at=drop_at)
    json.loads(canonical_json(dict(done.result)))  # releasable as canonical JSON
    assert done.opened is not None
    return dict(done.opened)


def pooled(frames: Mapping[str, pd.DataFrame], names: list[str]) -> pd.DataFrame:
    data = pd.concat([frames[n] for n in names], ignore_index=True)
    return data.dropna(subset=["age", "bmi", "income"])


def check_cell(
    cell: Mapping[str, Any],
    data: pd.DataFrame,
    result: Mapping[str, Any],
    n_inputs: int,
) -> None:
    """Compare one released cell with numpy on the pooled rows."""
    cols = ["age", "bmi", "income"]
    values = data[cols].to_numpy(dtype=float)
    assert cell["count"] == len(data)
    assert cell["sum"]["age"] == int(data.age.sum())  # integer sums are exact
    for j, c in enumerate(cols):
        # each input rounds its total to one encoded unit
        step = n_inputs * result["resolution"]["sum"][c]
        assert cell["sum"][c] == pytest.approx(values[:, j].sum(), abs=step, rel=1e-12)
        assert cell["mean"][c] == pytest.approx(
            values[:, j].mean(), rel=1e-12, abs=step / len(data)
        )
        assert cell["variance"][c] == pytest.approx(values[:, j].var(ddof=1), rel=1e-9)
        assert cell["std"][c] == pytest.approx(values[:, j].std(ddof=1), rel=1e-9)
    cov = np.cov(values, rowvar=False)
    corr = np.corrcoef(values, rowvar=False)
    for a, ca in enumerate(cols):
        for b, cb in enumerate(cols):
            assert cell["covariance"][ca][cb] == pytest.approx(
                cov[a, b], rel=1e-9, abs=1e-9
            )
            assert cell["correlation"][ca][cb] == pytest.approx(corr[a, b], abs=1e-9)
    k = result["min_group_size"]
    for c in ("age", "bmi"):
        hist = cell["histogram"][c]
        counts, _ = np.histogram(data[c].to_numpy(float), bins=hist["edges"])
        # every bin is a cell: below the minimum group size it is withheld
        assert hist["counts"] == [int(n) if n >= k else None for n in counts]
        released = [int(n) if n >= k else 0 for n in counts]
        width = max(np.diff(hist["edges"]))
        for p, q in cell["quantiles"][c].items():
            exact = histogram_quantile(hist["edges"], released, float(p))
            assert q == pytest.approx(exact, abs=1e-9)
            if released == counts.tolist():
                assert abs(q - np.quantile(data[c], float(p))) <= width
    assert "income" not in cell["histogram"]


def test_pooled_statistics_match_numpy() -> None:
    frames = make_frames()
    result = run(PARAMS, frames)
    assert result["survivors"] == list(NODES) and result["dropped"] == []
    assert result["group_by"] is None and result["suppressed_groups"] == []
    assert result["dp"] is None
    check_cell(result["groups"]["all"], pooled(frames, list(NODES)), result, 5)


def test_group_by_uses_declared_groups_only() -> None:
    frames = make_frames()
    params = {**PARAMS, "group_by": "sex", "groups": ["F", "M", "X"]}
    result = run(params, frames)
    data = pooled(frames, list(NODES))
    assert set(result["groups"]) == {"F", "M"}
    assert result["suppressed_groups"] == ["X"]  # nobody has it: count 0 < 5
    for sex in ("F", "M"):
        check_cell(result["groups"][sex], data[data.sex == sex], result, 5)


def test_where_filters_rows_before_pooling() -> None:
    frames = make_frames()
    params = {**PARAMS, "where": [{"column": "smoker", "op": "==", "value": True}]}
    result = run(params, frames)
    data = pooled(frames, list(NODES))
    check_cell(result["groups"]["all"], data[data.smoker], result, 5)


def test_small_cells_are_suppressed_for_the_largest_policy() -> None:
    frames = make_frames()
    data = pd.concat(frames.values(), ignore_index=True)
    data = data[data.age >= 80]
    params = {
        "columns": ["age"],
        "stats": ["count", "mean"],
        "clip": {"age": [18, 90]},
        "group_by": "smoker",
        "groups": [True, False],
        "where": [{"column": "age", "op": ">=", "value": 80}],
    }
    counts = {"true": int(data.smoker.sum()), "false": int((~data.smoker).sum())}
    small, large = sorted(counts, key=counts.__getitem__)
    assert 5 <= counts[small] < counts[large]
    # n2's policy sits between the two counts; the others' are lower
    limits = {"n1": 3, "n2": counts[small] + 1, "n3": 5}
    result = run(params, frames, min_group=limits)
    assert result["min_group_size"] == counts[small] + 1
    assert result["suppressed_groups"] == [small]
    assert list(result["groups"]) == [large]
    cell = result["groups"][large]
    assert cell["count"] == counts[large]
    ages = data[data.smoker == (large == "true")].age
    assert cell["mean"]["age"] == pytest.approx(ages.mean())
    assert counts[small] not in set(_numbers(result))


def _numbers(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return [value] if isinstance(value, int | float) else []


def test_out_of_range_values_are_always_clipped() -> None:
    frames = make_frames()
    frames["n2"].loc[0, "age"] = 130
    params = {"columns": ["age"], "stats": ["sum", "mean"], "clip": {"age": [18, 90]}}
    clipped = pd.concat(frames.values()).age.clip(18, 90)
    for asked in ({}, {"out_of_range": "clip"}):
        result = run({**params, **asked}, frames)
        assert result["groups"]["all"]["sum"]["age"] == int(clipped.sum())
    # an analyst cannot turn clipping into an oracle: the error mode is gone
    with pytest.raises(SpecError, match="only 'clip' is offered") as refused:
        parse_params({**params, "out_of_range": "error"}, parties=5, schemas=())
    assert refused.value.path == "params.out_of_range"


def test_nan_rows_are_left_out_and_the_plaintext_is_the_node_summary() -> None:
    frames = make_frames()
    params = {"columns": ["bmi"], "stats": ["count", "sum"], "clip": {"bmi": [10, 50]}}
    layout = build_layout(parse_params(params, parties=5, schemas=()))
    encoded = contribution(layout, frames["n1"])
    bmi = frames["n1"].bmi.dropna()
    _, (_, total) = layout.slots()
    assert encoded[0] == len(bmi) == SIZES[0] - 3
    centred = (bmi - 30).sum()
    assert encoded[1] == round(centred * 2**total.scale_bits)


@pytest.mark.parametrize("stage", [s for s in STAGES if s != UNMASK])
@pytest.mark.parametrize("drops", [1, 2])
def test_dropouts_in_the_counts_round_give_the_survivors_statistics(
    stage: str, drops: int
) -> None:
    frames = make_frames()
    params = {**PARAMS, "threshold": 3}
    gone = list(NODES[1 : 1 + drops])
    result = run(params, frames, drop_at=dict.fromkeys(gone, f"counts/{stage}"))
    included = [n for n in NODES if n not in gone]
    assert result["survivors"] == included
    assert result["dropped"] == gone
    check_cell(result["groups"]["all"], pooled(frames, included), result, len(included))


def test_a_node_lost_between_the_rounds_ends_the_job_with_nothing_released() -> None:
    frames = make_frames()
    params = {**PARAMS, "threshold": 3}
    with pytest.raises(ProtocolAbort, match="n2 left after sending its counts"):
        run(params, frames, drop_at={"n2": f"counts/{UNMASK}"})
    with pytest.raises(ProtocolAbort, match="inputs changed between"):
        run(params, frames, drop_at={"n2": f"values/{SHARE_KEYS}"})


def test_a_node_lost_after_its_masked_values_is_still_in_the_sum() -> None:
    frames = make_frames()
    result = run({**PARAMS, "threshold": 3}, frames, drop_at={"n4": f"values/{UNMASK}"})
    assert result["survivors"] == list(NODES) and result["dropped"] == []
    check_cell(result["groups"]["all"], pooled(frames, list(NODES)), result, 5)


@pytest.mark.parametrize("stage", [s for s in STAGES if s != UNMASK])
def test_one_dropout_beyond_n_minus_t_aborts(stage: str) -> None:
    frames = make_frames()
    with pytest.raises(ProtocolAbort, match="threshold is 3"):
        run(
            {**PARAMS, "threshold": 3},
            frames,
            drop_at=dict.fromkeys(["n1", "n2", "n3"], f"counts/{stage}"),
        )
    with pytest.raises(ProtocolAbort, match="threshold is 4"):  # the default for 5
        run(PARAMS, frames, drop_at=dict.fromkeys(["n1", "n2"], f"counts/{stage}"))


def test_coordinator_checks_the_policy_messages() -> None:
    frames = make_frames()
    coordinator, nodes, _ = parties(PARAMS, frames)
    coordinator.start()
    policy = nodes["n1"].start()[0]
    assert policy.stage == POLICY and json.loads(policy.payload) == {
        "min_group_size": 5
    }
    coordinator.receive(Inbound("n1", POLICY, policy.payload))
    with pytest.raises(ProtocolError, match="already sent"):
        coordinator.receive(Inbound("n1", POLICY, policy.payload))
    for bad in (b"{}", b'{"min_group_size": 0}', b'{"min_group_size": true}', b"x"):
        with pytest.raises(ProtocolError):
            coordinator.receive(Inbound("n2", POLICY, bad))
    with pytest.raises(ProtocolError, match="not a party"):
        coordinator.receive(Inbound("n9", POLICY, policy.payload))
    assert not coordinator.finished
    with pytest.raises(ProtocolError):
        coordinator.result()


def test_job_type_declares_columns_and_privacy() -> None:
    job = jobtypes.get("secure_stats")
    params = {
        **PARAMS,
        "group_by": "sex",
        "groups": ["F"],
        "where": [{"column": "smoker", "op": "==", "value": True}],
    }
    spec = parse_spec(spec_text(params))
    assert job.columns_used(spec) == {"age", "bmi", "income", "sex", "smoker"}
    assert job.epsilon(spec) == (0.0, 0.0)
    spec = parse_spec(spec_text({**params, "dp": {"epsilon": 0.5, "delta": 1e-6}}))
    assert job.epsilon(spec) == (0.5, 1e-6)


def _with(path: str, value: Any) -> dict[str, Any]:
    params = json.loads(json.dumps(PARAMS))
    *parents, last = path.split(".")
    target = params
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return params


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "where", "fragment"),
    [
        ("columns", ["age", "bmi", "nope"], "params.columns[2]", "no column 'nope'"),
        ("columns", ["age", "sex"], "params.columns[1]", "needs numeric columns"),
        ("columns", ["age", "age"], "params.columns[1]", "listed twice"),
        ("columns", [], "params.columns", "non-empty list"),
        ("stats", ["mean", "median"], "params.stats[1]", "unknown statistic 'median'"),
        ("clip.bmi", _DELETE, "params.clip.bmi", "missing"),
        ("clip.age", [90, 18], "params.clip.age", "lo must be below hi"),
        ("clip.age", [0, "x"], "params.clip.age[1]", "expected a number"),
        ("clip.zzz", [0, 1], "params.clip.zzz", "not one of params.columns"),
        ("bins", None, "params.bins", "need public bins"),
        ("bins.age", [18, 40, 30, 90], "params.bins.age[2]", "increase strictly"),
        ("bins.age", [20, 50, 90], "params.bins.age", "must cover the clip range"),
        ("bins.age", 0, "params.bins.age", "must be in 1..10000"),
        ("bins.sex", 3, "params.bins.sex", "not one of params.columns"),
        ("quantiles", [0.5, 1.0], "params.quantiles[1]", "strictly between 0 and 1"),
        ("quantiles", [0.0], "params.quantiles[0]", "strictly between 0 and 1"),
        ("dp", {"epsilon": 0, "delta": 1e-6}, "params.dp.epsilon", "must be positive"),
        ("dp", {"epsilon": -1, "delta": 1e-6}, "params.dp.epsilon", "must be positive"),
        ("dp", {"epsilon": 1, "delta": 1.5}, "params.dp.delta", "between 0 and 1"),
        ("dp", {"epsilon": 1, "delta": 1e-6, "x": 1}, "params.dp.x", "unknown field"),
        ("dp", {"epsilon": 1}, "params.dp.delta", "expected a number"),
        ("group_by", "sex", "params.groups", "declare the group values"),
        ("group_by", "colour", "params.group_by", "no column 'colour'"),
        ("groups", ["F"], "params.groups", "without params.group_by"),
        ("threshold", 2, "params.threshold", "must be in 3..5"),
        ("clip.income", [0, 1e15], "params.clip", "could overflow"),
        ("out_of_range", "ignore", "params.out_of_range", "only 'clip'"),
        ("colour", 1, "params.colour", "unknown parameter"),
    ],
)
def test_invalid_params_name_their_path(
    path: str, value: Any, where: str, fragment: str
) -> None:
    spec = parse_spec(spec_text(_with(path, value)))
    with pytest.raises(SpecError) as err:
        jobtypes.get("secure_stats").validate(spec, {i: SCHEMA for i in spec.inputs})
    assert err.value.path == where
    assert fragment in err.value.problem


@pytest.mark.parametrize(
    ("extra", "where", "fragment"),
    [
        ({"group_by": "sex", "groups": ["F", 3]}, "params.groups[1]", "column is str"),
        (
            {"group_by": "smoker", "groups": [True, 1]},
            "params.groups[1]",
            "listed twice",
        ),
        (
            {"dp": {"epsilon": 1, "delta": 1e-6}, "out_of_range": "error"},
            "params.out_of_range",
            "only 'clip' is offered",
        ),
        (
            {"where": [{"column": "nope", "op": "==", "value": 1}]},
            "params.where[0].column",
            "no column 'nope'",
        ),
    ],
)
def test_invalid_combinations_name_their_path(
    extra: dict[str, Any], where: str, fragment: str
) -> None:
    spec = parse_spec(spec_text({**PARAMS, **extra}))
    with pytest.raises(SpecError) as err:
        jobtypes.get("secure_stats").validate(spec, {i: SCHEMA for i in spec.inputs})
    assert err.value.path == where
    assert fragment in err.value.problem


def test_two_inputs_are_refused() -> None:
    spec = parse_spec(spec_text(PARAMS, ("n1", "n2")))
    with pytest.raises(SpecError) as err:
        jobtypes.get("secure_stats").validate(spec, {i: SCHEMA for i in spec.inputs})
    assert err.value.path == "inputs"


DP_PARAMS: dict[str, Any] = {
    "columns": ["age", "bmi"],
    "stats": ["count", "sum", "mean", "histogram"],
    "clip": {"age": [18, 90], "bmi": [10, 50]},
    "bins": {"age": 4},
    "dp": {"epsilon": 1.0, "delta": 1e-6},
    "max_rows": 10000,
}


def test_each_node_adds_its_share_of_noise_at_the_calibrated_scale() -> None:
    layout = build_layout(parse_params(DP_PARAMS, parties=5, schemas=()))
    noise = layout.noise
    assert noise is not None
    # count, 2 sums, one bin of one histogram
    assert (noise.dimensions, noise.parties) == (4, 4)
    exact = contribution(layout, make_frames()["n1"])
    source = random.Random(11).randbytes
    draws = np.array([add_noise(layout, exact, source) - exact for _ in range(3000)])
    sensitivities = np.repeat(
        [s.sensitivity for s in layout.segments], [s.size for s in layout.segments]
    )
    normalised = draws / sensitivities
    assert np.all(np.abs(normalised.mean(axis=0)) < 4 * noise.node_std / np.sqrt(3000))
    ratio = normalised.var(axis=0) / float(noise.node_variance)
    # sample variance of 3000 draws: relative standard error about 2.6%
    assert np.all(np.abs(ratio - 1) < 0.12), ratio


def test_released_noise_matches_the_reported_scale_and_meters_epsilon() -> None:
    frames = {n: f for n, f in make_frames().items() if n in NODES[:3]}
    data = pooled(frames, list(frames))
    errors = []
    for seed in range(40):
        coordinator, nodes, analyst = parties(DP_PARAMS, frames, seed=seed)
        done = drive(coordinator, nodes, analyst)
        assert done.opened is not None
        result = dict(done.opened)
        errors.append(result["groups"]["all"]["count"] - len(data))
    assert {n.usage().epsilon for n in nodes.values()} == {1.0}
    assert [n.usage().rows_touched for n in nodes.values()] == [120, 200, 80]
    dp = result["dp"]
    assert (dp["epsilon"], dp["delta"], dp["noise_shares"]) == (1.0, 1e-6, 3)
    assert dp["calibrated_for_nodes"] == 3
    std = np.std(errors)
    # 40 samples: the sample std is within +-35% of the truth with overwhelming odds
    assert 0.65 < std / dp["noise_std"]["count"] < 1.35, (std, dp["noise_std"])
    assert abs(np.mean(errors)) < 4 * dp["noise_std"]["count"] / np.sqrt(40)


def test_usage_before_the_vector_leaves_spends_no_epsilon() -> None:
    frames = {n: f for n, f in make_frames().items() if n in NODES[:3]}
    _, nodes, _ = parties(DP_PARAMS, frames)
    node = nodes["n1"]
    assert node.usage().epsilon == 0.0
    node.start()
    assert node.usage().epsilon == 0.0 and node.usage().rows_touched == 120


def test_dp_statistics_stay_close_for_a_large_epsilon() -> None:
    frames = make_frames()
    params = {**DP_PARAMS, "dp": {"epsilon": 50.0, "delta": 1e-6}}
    result = run(params, frames)
    cell = result["groups"]["all"]
    data = pooled(frames, list(NODES)).dropna(subset=["bmi"])
    assert abs(cell["count"] - len(data)) < 6 * result["dp"]["noise_std"]["count"]
    assert cell["mean"]["age"] == pytest.approx(data.age.mean(), abs=1.0)
    assert min(cell["histogram"]["age"]["counts"]) >= 0


def test_wide_ranges_use_a_coarser_scale_and_stay_accurate() -> None:
    frames = make_frames()
    params = {
        "columns": ["income"],
        "stats": ["sum", "variance"],
        "clip": {"income": [0, 200000]},
    }  # default max_rows: a million rows per input
    layout = build_layout(parse_params(params, parties=5, schemas=()))
    (square,) = [s for s in layout.segments if s.kind == "product"]
    assert square.scale_bits < 0 and square.resolution == 2.0**-square.scale_bits
    result = run(params, frames)
    income = pd.concat(frames.values()).income
    cell = result["groups"]["all"]
    assert cell["variance"]["income"] == pytest.approx(income.var(ddof=1), rel=1e-9)
    assert result["resolution"]["product"]["income"]["income"] == square.resolution
