"""Runs the chosen benchmarks of a preset; writes JSON, Markdown and PNG results."""

from __future__ import annotations

import importlib
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from benchmarks.machine import machine_facts
from benchmarks.plots import write_plots
from benchmarks.registry import (
    DEFAULT_REPEAT,
    REGISTRY,
    BenchmarkGap,
    Context,
    Registry,
)
from benchmarks.report import SuiteResult, describe, write_json, write_summary

SUITE_MODULES: Final = (
    "benchmarks.bench_masks",
    "benchmarks.bench_secagg",
    "benchmarks.bench_sealed",
    "benchmarks.bench_flower",
    "benchmarks.bench_paillier",
    "benchmarks.bench_he_sum",
    "benchmarks.bench_e2e",
    "benchmarks.bench_governance",
    "benchmarks.bench_sandbox",
    "benchmarks.bench_fedavg",
    "benchmarks.bench_he_inference",
    "benchmarks.bench_psi",
    "benchmarks.bench_pir",
    "benchmarks.bench_differencing",
    "benchmarks.bench_differencing_node",
    "benchmarks.bench_vertical",
    "benchmarks.bench_vertical_peers",
    "benchmarks.bench_datasets",
    "benchmarks.bench_netns",
)
"""Importing these registers the suite's benchmarks."""
DEFAULT_OUT: Final = Path("bench-results")


def load_suite(modules: Sequence[str] = SUITE_MODULES) -> Registry:
    for module in modules:
        importlib.import_module(module)
    return REGISTRY


def run_suite(
    *,
    preset: str,
    out: Path = DEFAULT_OUT,
    only: Sequence[str] = (),
    repeat: int | None = None,
    registry: Registry | None = None,
    log: Callable[[str], None] = print,
) -> SuiteResult:
    """Run every benchmark of ``preset`` matching ``only``; write results into ``out``.

    A benchmark that raises is recorded as a failure and the others still run; one
    that raises BenchmarkGap is recorded as a gap. Nothing here decides a number:
    every ratio comes from the measurements of this run.
    """
    registry = registry if registry is not None else load_suite()
    chosen = registry.select(preset, only)
    if not chosen:
        raise ValueError(f"no benchmark of preset '{preset}' matches {list(only)}")
    repeats = repeat or DEFAULT_REPEAT[preset]
    result = SuiteResult(preset=preset, repeat=repeats, machine=machine_facts())
    out.mkdir(parents=True, exist_ok=True)
    log(
        f"cleanroom benchmarks: preset {preset}, {repeats} repeats, "
        f"{len(chosen)} benchmark(s) -> {out}"
    )
    for item in chosen:
        log(f"== {item.name} ({item.group}): {item.doc}")
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"bench-{item.name}-") as tmp:
            ctx = Context(
                benchmark=item.name,
                preset=preset,
                repeat=repeats,
                workdir=Path(tmp),
                log=log,
            )
            try:
                for measurement in item.fn(ctx):
                    result.measurements.append(measurement)
                    log(describe(measurement))
            except BenchmarkGap as gap:
                ctx.gap("whole benchmark", str(gap))
            except Exception:  # one broken benchmark must not stop the rest
                result.failures[item.name] = traceback.format_exc()
                log(f"  FAILED: {result.failures[item.name].strip().splitlines()[-1]}")
            result.gaps.extend(ctx.gaps)
        result.durations[item.name] = time.perf_counter() - started
        log(f"  ({result.durations[item.name]:.1f} s)")
    result.plots = write_plots(result.measurements, out)
    write_json(result, out)
    write_summary(result, out)
    log(
        f"wrote {out / 'results.json'}, {out / 'summary.md'} and "
        f"{len(result.plots)} plot(s) in {sum(result.durations.values()):.1f} s"
    )
    return result
