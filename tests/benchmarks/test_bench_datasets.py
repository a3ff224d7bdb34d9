"""The dataset benchmark compares like with like: the node's query-seam answers
are DuckDB's hand-written aggregate's, on a small file."""

from __future__ import annotations

from pathlib import Path

from benchmarks.bench_datasets import direct, node_side, write_parquet
from benchmarks.registry import REGISTRY


def test_node_side_and_direct_compute_the_same_aggregates(tmp_path: Path) -> None:
    path = tmp_path / "people.parquet"
    write_parquet(path, 30_000)
    assert node_side(path, "count")() == direct(path, "count")()[0][0]
    vector = node_side(path, "secure_stats")()
    rows = sorted(direct(path, "secure_stats")())
    # Each group's count is the first slot of its cell; F then M, as declared.
    cell = len(vector) // 2
    assert [int(vector[0]), int(vector[cell])] == [r[1] for r in rows]


def test_the_benchmark_is_in_the_quick_preset() -> None:
    assert [b.name for b in REGISTRY.select("quick", ["dataset_pushdown"])] == [
        "dataset_pushdown"
    ]
