"""Scaling curves as PNGs: cost and ratio against the parameter a benchmark varies."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt

from benchmarks.registry import Measurement
from benchmarks.report import format_params
from benchmarks.stats import Stats

Series = dict[str, list[Measurement]]


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _varying(ms: Sequence[Measurement], x: str) -> list[str]:
    """Parameters besides ``x`` that differ between measurements: they split series."""
    keys = {k for m in ms for k in m.params if k != x}
    return sorted(k for k in keys if len({repr(m.params.get(k)) for m in ms}) > 1)


def _constant(ms: Sequence[Measurement], x: str, varying: list[str]) -> str:
    fixed = {k: v for k, v in ms[0].params.items() if k != x and k not in varying}
    return format_params(fixed)


def _series(ms: Sequence[Measurement], x: str, varying: list[str]) -> Series:
    """Series label -> its measurements sorted by ``x``."""
    series: Series = defaultdict(list)
    for m in ms:
        split = format_params({k: m.params[k] for k in varying if k in m.params})
        series[f"{m.case} {split}".strip()].append(m)
    for points in series.values():
        points.sort(key=lambda m: _number(m.params[x]))
    return series


def _errorbar(
    ax: Any, xs: list[float], stats: list[Stats], label: str, style: str
) -> None:
    ys = [s.median for s in stats]
    yerr = [[s.median - s.q1 for s in stats], [s.q3 - s.median for s in stats]]
    ax.errorbar(xs, ys, yerr=yerr, fmt=style, capsize=3, label=label)


def _spans_decades(values: Sequence[float]) -> bool:
    positive = [v for v in values if v > 0]
    return len(positive) > 1 and max(positive) / min(positive) >= 10


def _draw_metric(values: Any, ratios: Any, series: Series, x: str) -> None:
    goals = {}
    drawn: set[tuple[Any, ...]] = set()
    for label, points in series.items():
        xs = [_number(m.params[x]) for m in points]
        _errorbar(values, xs, [m.measured for m in points], label, "o-")
        based = [m for m in points if m.baseline is not None]
        if not based:
            continue
        bx = [_number(m.params[x]) for m in based]
        baselines = [m.baseline for m in based if m.baseline is not None]
        key = (based[0].baseline_name, *bx, *(b.median for b in baselines))
        if key not in drawn:  # series often share one baseline: draw it once
            drawn.add(key)
            name = f"baseline: {based[0].baseline_name}"
            _errorbar(values, bx, baselines, name, "s--")
        with_ratio = [m for m in based if m.ratio is not None]
        ratios.plot(
            [_number(m.params[x]) for m in with_ratio],
            [m.ratio for m in with_ratio],
            "o-",
            label=f"{label} ({based[0].ratio_kind})",
        )
        for m in based:
            if m.goal is not None:
                goals[(m.goal.op, m.goal.value)] = m.goal
    for goal in goals.values():
        ratios.axhline(goal.value, linestyle=":", color="red", label=goal.describe())


def plot_benchmark(ms: Sequence[Measurement], x: str, path: Path) -> Path:
    """One figure: a row per metric, values (left) and ratio with goal (right)."""
    by_metric: dict[str, list[Measurement]] = defaultdict(list)
    for m in ms:
        by_metric[m.metric].append(m)
    varying = _varying(ms, x)
    fixed = _constant(ms, x, varying)
    fig, axes = plt.subplots(
        len(by_metric), 2, figsize=(13, 4.5 * len(by_metric)), squeeze=False
    )
    for row, (metric, group) in enumerate(sorted(by_metric.items())):
        values, ratios = axes[row]
        _draw_metric(values, ratios, _series(group, x, varying), x)
        every = [m.measured.median for m in group] + [
            m.baseline.median for m in group if m.baseline is not None
        ]
        values.set_title(f"{metric} vs {x}", fontsize="medium")
        values.set_ylabel(group[0].measured.unit)
        if _spans_decades(every):
            values.set_yscale("log")
        if _spans_decades([m.ratio for m in group if m.ratio is not None]):
            ratios.set_yscale("log")
        ratios.set_title(f"ratio vs {x}", fontsize="medium")
        ratios.set_ylabel("ratio")
        log_x = _spans_decades([_number(m.params[x]) for m in group])
        for ax in (values, ratios):
            ax.set_xlabel(x)
            if log_x:
                ax.set_xscale("log")
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="x-small")
    fig.suptitle(f"{ms[0].benchmark}" + (f" ({fixed})" if fixed else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(measurements: Sequence[Measurement], out: Path) -> list[str]:
    """A PNG per (benchmark, scaling parameter); returns the file names written."""
    groups: dict[tuple[str, str], list[Measurement]] = defaultdict(list)
    for m in measurements:
        for x in m.x:
            if x in m.params:
                groups[(m.benchmark, x)].append(m)
    written = []
    for (name, x), ms in sorted(groups.items()):
        filename = f"{name}-vs-{x}.png"
        plot_benchmark(ms, x, out / filename)
        written.append(filename)
    return written
