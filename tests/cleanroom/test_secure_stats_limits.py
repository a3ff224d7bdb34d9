"""secure_stats against a curious analyst: bins are cells (suppressed below k, capped
by the holder's max_cells), no filter/group/bin on the id column, max_rows decided on
public row buckets, local cell partitions for the differencing record, and the true
noise of every released value (the reported std matches repeated noisy runs)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cleanroom.catalog import ColumnInfo, DatasetInfo, row_bucket
from cleanroom.errors import ProtocolError, SpecError
from cleanroom.jobtypes.stats.encode import (
    add_noise,
    cell_partitions,
    check_rows,
    contribution,
    to_ring,
)
from cleanroom.jobtypes.stats.layout import Layout, build_layout
from cleanroom.jobtypes.stats.limits import bucket_bound, rows_bound
from cleanroom.jobtypes.stats.params import parse_params
from cleanroom.jobtypes.stats.release import release
from protocols.differencing import DifferencingKey, ReleaseRecord, RowIndex, admit

NODES = ("n1", "n2", "n3")


def schema(rows_label: str = "100-1k", id_column: str = "pid") -> DatasetInfo:
    columns = (("pid", "int"), ("age", "int"), ("income", "float"), ("sex", "str"))
    return DatasetInfo(
        "d", tuple(ColumnInfo(n, t) for n, t in columns), rows_label, id_column
    )


def frames(rows: int = 200, seed: int = 1) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    return {
        node: pd.DataFrame(
            {
                "pid": np.arange(rows) + 1000 * i,
                "age": rng.integers(18, 91, rows),
                "income": rng.lognormal(10, 0.5, rows).clip(0, 200_000),
                "sex": rng.choice(["F", "M"], rows),
            }
        )
        for i, node in enumerate(NODES)
    }


def layout_of(params: Mapping[str, Any], **extra: Any) -> Layout:
    return build_layout(parse_params(params, parties=len(NODES), schemas=(), **extra))


def pooled_release(
    layout: Layout, data: Mapping[str, pd.DataFrame], *, seed: int = 0, k: int = 5
) -> dict[str, Any]:
    """What SecAgg+ unmasks (the exact sum of every node's noised vector), released."""
    total = np.zeros(layout.vector_length, dtype=np.uint64)
    for node, frame in data.items():
        source = random.Random(f"{seed}-{node}").randbytes
        total += to_ring(layout, add_noise(layout, contribution(layout, frame), source))
    return release(layout, total, survivors=list(data), dropped=[], min_group_size=k)


def test_histogram_bins_below_k_are_withheld_and_quantiles_use_released_bins() -> None:
    """The issue's attack: a fine histogram in a small cell gave every income."""
    data = frames(rows=3)  # nine rows pooled
    params = {
        "columns": ["income"],
        "stats": ["count", "histogram", "quantiles"],
        "clip": {"income": [0, 200_000]},
        "bins": 100,
        "quantiles": [0.5],
    }
    cell = pooled_release(layout_of(params), data)["groups"]["all"]
    assert cell["count"] == 9
    assert all(c is None for c in cell["histogram"]["income"]["counts"])
    assert cell["quantiles"]["income"] == {"0.5": None}
    # coarse bins pass, and the quantile comes from released bins only
    coarse = {**params, "bins": {"income": [0, 20_000, 200_000]}}
    cell = pooled_release(layout_of(coarse), data)["groups"]["all"]
    counts = cell["histogram"]["income"]["counts"]
    pooled = pd.concat(data.values()).income
    exact = [int((pooled < 20_000).sum()), int((pooled >= 20_000).sum())]
    assert counts == [c if c >= 5 else None for c in exact]


def test_the_holder_caps_cells() -> None:
    params = {
        "columns": ["age"],
        "stats": ["histogram"],
        "clip": {"age": [18, 90]},
        "bins": 99,
        "group_by": "sex",
        "groups": ["F", "M"],
    }
    assert layout_of(params, max_cells=200).params.edges  # 2 x (1 + 99) = 200
    with pytest.raises(SpecError, match="200 cells") as refused:
        layout_of(params, max_cells=199)
    assert refused.value.path == "params.bins"
    many = {"columns": ["age"], "stats": ["count"], "clip": {"age": [18, 90]}}
    many |= {"group_by": "age", "groups": list(range(18, 91))}
    with pytest.raises(SpecError) as refused:
        layout_of(many, max_cells=50)
    assert refused.value.path == "params.groups"
    with pytest.raises(SpecError, match="at most 1000"):  # the default
        layout_of({**params, "bins": 500})


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        (
            {"where": [{"column": "pid", "op": "!=", "value": 7}]},
            "params.where[0].column",
        ),
        ({"group_by": "pid", "groups": [1, 2]}, "params.group_by"),
        (
            {"columns": ["pid"], "clip": {"pid": [0, 10**6]}, "bins": 10_000},
            "params.bins.pid",
        ),
    ],
)
def test_the_id_column_is_never_a_filter_group_or_bin(
    extra: dict[str, Any], where: str
) -> None:
    params = {
        "columns": ["age"],
        "stats": ["count", "histogram"],
        "clip": {"age": [18, 90]},
        "bins": 4,
        **extra,
    }
    with pytest.raises(SpecError, match="identifier column") as refused:
        parse_params(params, parties=3, schemas=[schema()], max_cells=10**6)
    assert refused.value.path == where
    # the same spec is fine on a dataset without an id column
    parse_params(params, parties=3, schemas=[schema(id_column="")], max_cells=10**6)


def test_max_rows_is_decided_on_row_buckets_only() -> None:
    assert [rows_bound(n) for n in (0, 99, 100, 999, 5000, 10**6, 3 * 10**6)] == [
        100,
        100,
        1000,
        1000,
        10_000,
        10**7,
        10**7,
    ]
    assert bucket_bound("100-1k") == 1000 and bucket_bound(">=1M") is None
    for rows in (0, 99, 150, 99_999, 999_999):  # the catalog bound is the decade
        assert bucket_bound(row_bucket(rows)) == rows_bound(rows)
    params = {"columns": ["age"], "stats": ["count"], "clip": {"age": [18, 90]}}
    with pytest.raises(SpecError, match="at least 1000") as refused:
        parse_params({**params, "max_rows": 999}, parties=3, schemas=[schema()])
    assert refused.value.path == "params.max_rows"
    parse_params({**params, "max_rows": 1000}, parties=3, schemas=[schema()])
    # the node's answer names the bucket, never the count, whatever max_rows is
    answers = set()
    for rows in (120, 480, 999):
        for max_rows in (100, 500, 998):
            with pytest.raises(ProtocolError) as refused:
                check_rows(rows, max_rows)
            answers.add(str(refused.value))
    assert answers == {
        "the dataset has 100-1k rows (its catalog bucket): "
        "params.max_rows must be at least 1000"
    }
    check_rows(999, 1000)


def test_cell_partitions_are_the_rows_behind_every_cell() -> None:
    data = frames()["n1"]
    data["age"] = data["age"].astype(float)
    data.loc[:4, "age"] = [17, 95, 40, np.nan, 60]  # clipped twice, one missing
    params = {
        "columns": ["age", "income"],
        "stats": ["count", "histogram"],
        "clip": {"age": [18, 90], "income": [0, 200_000]},
        "bins": {"age": [18, 40, 60, 90]},
        "group_by": "sex",
        "groups": ["F", "M", "X"],
        "where": [{"column": "income", "op": ">", "value": 10_000}],
        "max_rows": 1000,
    }
    layout = layout_of(params)
    (groups, labels), (bins, binned) = cell_partitions(layout, data)
    assert groups == ("F", "M", "X") and len(bins) == 9 and bins[0] == "F/age/0"
    encoded = contribution(layout, data)
    length = layout.cell_length
    for g in range(3):
        cell = encoded[g * length : (g + 1) * length]
        assert cell[0] == int((labels == g).sum())  # the count slot
        histogram = cell[-3:]  # the age histogram closes the cell
        for b in range(3):
            assert histogram[b] == int((binned == g * 3 + b).sum())
    assert labels[3] == -1  # the missing age is in no cell


DP_PARAMS: dict[str, Any] = {
    "columns": ["age", "income"],
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
    "clip": {"age": [18, 90], "income": [0, 80_000]},
    "bins": {"age": 4},
    "quantiles": [0.3],
    "dp": {"epsilon": 4.0, "delta": 1e-6},
    "max_rows": 1000,
}


def _scalars(cell: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """(released value, reported std) of every scalar in a released cell."""
    stds = cell["noise"]["std"]
    out = {"count": (cell["count"], stds["count"])}
    for stat in ("sum", "mean", "variance", "std"):
        for c, value in cell[stat].items():
            out[f"{stat}.{c}"] = (value, stds[stat][c])
    for stat in ("covariance", "correlation"):
        out[f"{stat}"] = (cell[stat]["age"]["income"], stds[stat]["age"]["income"])
    for i, value in enumerate(cell["histogram"]["age"]["counts"]):
        out[f"bin.{i}"] = (value, stds["histogram"]["age"])
    out["quantile"] = (cell["quantiles"]["age"]["0.3"], stds["quantiles"]["age"]["0.3"])
    return out


def test_every_reported_noise_std_matches_repeated_noisy_runs() -> None:
    data = frames(rows=300)
    layout = layout_of(DP_PARAMS)
    runs = 800
    seen: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for seed in range(runs):
        cell = pooled_release(layout, data, seed=seed)["groups"]["all"]
        for name, pair in _scalars(cell).items():
            seen[name].append(pair)
    assert len(seen) == 16
    for name, pairs in seen.items():
        values, stds = np.array(pairs, dtype=float).T
        empirical, reported = values.std(ddof=1), stds.mean()
        # 800 runs: the sample std is within 2.5% (one standard error) of the truth;
        # the delta method adds a little for the non-linear statistics.
        assert empirical / reported == pytest.approx(1, abs=0.1), (name, empirical)
    # the fix: a sum carries its centred sum's noise plus centre x the count's
    values, stds = np.array(seen["sum.age"], dtype=float).T
    centred = next(s for s in layout.segments if s.columns == ("age",))
    noise = layout.noise
    assert noise is not None
    centred_std = noise.total_std(3) * centred.sensitivity * centred.resolution
    # (the old report): sqrt(36^2 + 54^2) / 36 = 1.8 times too small for age
    assert values.std() > 1.5 * centred_std


def test_the_top_level_noise_summary_is_exact_and_value_independent() -> None:
    layout = layout_of(DP_PARAMS)
    result = pooled_release(layout, frames())
    summary = result["dp"]["noise_std"]
    cell = result["groups"]["all"]["noise"]["std"]
    assert summary["count"] == cell["count"]
    assert summary["sum"] == cell["sum"]
    assert summary["histogram"] == cell["histogram"]["age"]
    assert "delta method" in result["dp"]["noise_std_method"]
    plain = {k: v for k, v in DP_PARAMS.items() if k != "dp"}
    released = pooled_release(layout_of(plain), frames())
    assert released["dp"] is None and "noise" not in released["groups"]["all"]


def test_a_nodes_cells_feed_its_differencing_record() -> None:
    """The node-side wiring: each cell's local rows, sketched and admitted; a bin
    1..k-1 rows away from its group's cell is refused, the coarse bins pass."""
    data = frames(rows=40)["n1"]
    secret = DifferencingKey(bytes(range(32)))
    index = RowIndex.build(data["pid"].to_numpy(), secret)
    record = ReleaseRecord(secret, "d/analyst:a", group_size=5, capacity=100)
    params = {
        "columns": ["age"],
        "stats": ["count", "histogram"],
        "clip": {"age": [18, 90]},
        "bins": {"age": [18, 19, 90]},  # one bin nearly the whole cell
        "max_rows": 1000,
    }
    data.loc[0, "age"] = 18  # exactly one row in the first bin
    sketches = []
    for names, labels in cell_partitions(layout_of(params), data):
        sketches += index.cells(labels, len(names))
    allowed = admit(sketches, [record], min_group_size=5)
    assert allowed == [True, True, False]  # all; bin 0 (1 row); bin 1 (all but 1)
