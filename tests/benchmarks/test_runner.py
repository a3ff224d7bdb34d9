"""The benchmark runner: registry, statistics, ratios, presets and result files.

No timing assertions: these check the machinery with tiny fake benchmarks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks.bench_masks import flower_style_mask
from benchmarks.registry import (
    BenchmarkGap,
    Context,
    Goal,
    Measurement,
    Registry,
)
from benchmarks.report import SuiteResult, summary_markdown
from benchmarks.runner import run_suite
from benchmarks.stats import Stats, measure, measure_interleaved
from cleanroom.cli.bench import bench


def _m(
    measured: list[float], baseline: list[float] | None, **kw: object
) -> Measurement:
    return Measurement(
        benchmark="fake",
        case="case",
        params={"d": 10},
        metric="cpu",
        measured=Stats.of(measured, "s"),
        baseline=None if baseline is None else Stats.of(baseline, "s"),
        baseline_name="base",
        **kw,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------ statistics --
def test_stats_median_quartiles_and_range() -> None:
    s = Stats.of([5.0, 1.0, 3.0, 2.0, 4.0], "s")
    assert (s.median, s.min, s.max, s.n) == (3.0, 1.0, 5.0, 5)
    assert (s.q1, s.q3, s.iqr) == (2.0, 4.0, 2.0)
    assert s.to_json()["samples"] == [5.0, 1.0, 3.0, 2.0, 4.0]


def test_stats_single_sample_and_empty() -> None:
    one = Stats.of([7.0], "bytes")
    assert (one.median, one.q1, one.q3, one.iqr) == (7.0, 7.0, 7.0, 0.0)
    with pytest.raises(ValueError):
        Stats.of([], "s")


def test_measure_runs_setup_per_repeat_and_times_cpu_and_wall() -> None:
    seen: list[int] = []
    counter = iter(range(100))
    timing = measure(seen.append, repeat=4, warmup=2, setup=lambda: next(counter))
    assert seen == [0, 1, 2, 3, 4, 5]  # two warm-ups, then four timed runs
    assert timing.cpu.n == timing.wall.n == 4
    assert all(v >= 0 for v in timing.cpu.samples + timing.wall.samples)


def test_measure_interleaved_alternates() -> None:
    order: list[str] = []
    a, b = measure_interleaved(
        [lambda: order.append("a"), lambda: order.append("b")], repeat=3, warmup=1
    )
    assert order == ["a", "b"] * 4
    assert a.cpu.n == b.wall.n == 3


# ---------------------------------------------------------- ratios and goals --
def test_overhead_ratio_is_measured_over_baseline_medians() -> None:
    m = _m([10.0, 20.0, 30.0], [1.0, 2.0, 3.0], goal=Goal("<=", 5.0, "issue"))
    assert m.ratio == pytest.approx(10.0)
    assert m.met is False


def test_speedup_ratio_is_baseline_over_measured() -> None:
    m = _m([1.0], [6.0], ratio_kind="speedup", goal=Goal(">=", 5.0, "issue"))
    assert m.ratio == pytest.approx(6.0)
    assert m.met is True


def test_no_baseline_means_no_ratio_and_no_verdict() -> None:
    m = _m([1.0], None, goal=Goal(">=", 5.0, "issue"))
    assert m.ratio is None and m.met is None
    assert m.to_json()["ratio"] is None


def test_goal_at_other_sizes_is_indicative() -> None:
    m = _m([1.0], [1.0], goal=Goal("<=", 2.0, "issue", at="N=100"), goal_applies=False)
    result_doc = summary_markdown(_suite([m]))
    assert "yes (indicative)" in result_doc
    assert "<= 2x at N=100" in result_doc


def _suite(ms: list[Measurement]) -> SuiteResult:
    return SuiteResult(preset="quick", repeat=1, machine={}, measurements=ms)


# ------------------------------------------------------------------ registry --
def _registry() -> Registry:
    registry = Registry()

    @registry.benchmark("alpha_fast", "grp1", presets=("quick", "full"))
    def alpha(ctx: Context) -> Iterator[Measurement]:
        """A fake benchmark with a scaling curve."""
        for d in ctx.pick(quick=(10, 100), full=(10, 100, 1000)):
            timing = ctx.time(lambda _: sum(range(d)), repeat=2, warmup=0)
            yield ctx.measurement(
                case="sum vs constant",
                params={"d": d},
                metric="cpu",
                measured=Stats.of([2.0 * d, 2.0 * d], "s"),
                baseline=Stats.of([float(d)], "s"),
                baseline_name="constant",
                goal=Goal("<=", 3.0, "fake issue"),
                x=("d",),
                note=f"{timing.cpu.n} samples",
            )

    @registry.benchmark("beta_full_only", "grp2", presets=("full",))
    def beta(ctx: Context) -> Iterator[Measurement]:
        """Only in the full preset."""
        yield from ()

    @registry.benchmark("gamma_gap", "grp2", presets=("quick",))
    def gamma(ctx: Context) -> Iterator[Measurement]:
        """Not written yet."""
        raise BenchmarkGap("protocol missing")
        yield  # pragma: no cover

    @registry.benchmark("delta_broken", "grp2", presets=("quick",))
    def delta(ctx: Context) -> Iterator[Measurement]:
        """Raises."""
        raise RuntimeError("boom")
        yield  # pragma: no cover

    return registry


def test_registry_refuses_duplicates_and_unknown_presets() -> None:
    registry = _registry()
    with pytest.raises(ValueError, match="already registered"):
        registry.benchmark("alpha_fast", "x")(lambda ctx: [])
    with pytest.raises(ValueError, match="unknown preset"):
        registry.benchmark("new", "x", presets=("nightly",))(lambda ctx: [])


def test_select_filters_by_preset_name_group_and_glob() -> None:
    registry = _registry()
    names = lambda bs: [b.name for b in bs]  # noqa: E731
    assert names(registry.select("quick")) == [
        "alpha_fast",
        "gamma_gap",
        "delta_broken",
    ]
    assert names(registry.select("full")) == ["alpha_fast", "beta_full_only"]
    assert names(registry.select("quick", ["grp2"])) == ["gamma_gap", "delta_broken"]
    assert names(registry.select("full", ["*only"])) == ["beta_full_only"]
    assert names(registry.select("quick", ["alpha_fast", "gamma*"])) == [
        "alpha_fast",
        "gamma_gap",
    ]
    with pytest.raises(ValueError):
        registry.select("nightly")


# ------------------------------------------------------------------- runner --
def test_run_suite_writes_json_summary_and_plots(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_suite(
        preset="quick", out=tmp_path, registry=_registry(), repeat=2, log=lines.append
    )
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["preset"] == "quick" and doc["repeat"] == 2
    assert {"cpu_model", "cores_usable", "python", "packages", "timestamp"} <= set(
        doc["machine"]
    )
    assert "numpy" in doc["machine"]["packages"]
    rows = doc["measurements"]
    assert [r["params"]["d"] for r in rows] == [10, 100]
    for row in rows:
        assert row["ratio"] == pytest.approx(
            row["measured"]["median"] / row["baseline"]["median"]
        )
        assert row["goal"]["value"] == 3.0 and row["met"] is True
    assert doc["gaps"] == [
        {
            "benchmark": "gamma_gap",
            "what": "whole benchmark",
            "reason": "protocol missing",
        }
    ]
    assert list(doc["failures"]) == ["delta_broken"] == list(result.failures)
    assert "boom" in doc["failures"]["delta_broken"]

    summary = (tmp_path / "summary.md").read_text()
    assert (
        "| benchmark | parameters | measured | baseline | ratio | goal | met? |"
        in summary
    )
    assert "alpha_fast / sum vs constant [cpu] | d=100 |" in summary
    assert "2.000x of baseline" in summary
    assert "protocol missing" in summary and "boom" in summary

    assert doc["plots"] == ["alpha_fast-vs-d.png"]
    assert (tmp_path / "alpha_fast-vs-d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("d=100" in line and "goal <= 3x" in line for line in lines)


def test_run_suite_refuses_an_empty_selection(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no benchmark"):
        run_suite(preset="full", out=tmp_path, only=["nothing*"], registry=_registry())


# ---------------------------------------------------------------------- CLI --
def test_cli_lists_the_real_suite() -> None:
    result = CliRunner().invoke(bench, ["--list", "--preset", "quick"])
    assert result.exit_code == 0, result.output
    for name in ("mask_expansion", "secagg_round", "secagg_bytes", "e2e_jobs"):
        assert name in result.output


def test_cli_unknown_filter_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        bench, ["--only", "no-such-bench", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2


# ------------------------------------------------------------- peer baseline --
def test_flower_style_mask_is_mt19937_seeded_with_the_folded_secret() -> None:
    seed = bytes(range(32))
    folded = 0
    for i in range(0, 32, 4):
        folded ^= int.from_bytes(seed[i : i + 4], "little")
    expected = np.random.RandomState(folded).randint(0, 2**32 - 1, (1000,))
    assert np.array_equal(flower_style_mask(seed, 1000), expected)
    # Two secrets with the same 32-bit fold give the same mask: the weakness.
    other = (int.from_bytes(seed[:4], "little") ^ 1).to_bytes(4, "little")
    twin = (
        other
        + seed[4:28]
        + (int.from_bytes(seed[28:], "little") ^ 1).to_bytes(4, "little")
    )
    assert twin != seed
    assert np.array_equal(flower_style_mask(twin, 1000), expected)
