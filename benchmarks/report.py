"""Writing a run's results: results.json (everything) and summary.md (one table)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.registry import Gap, Measurement
from benchmarks.stats import format_stats, format_value

RESULTS_FILE = "results.json"
SUMMARY_FILE = "summary.md"


@dataclass
class SuiteResult:
    """Everything one run produced: machine facts, measurements, gaps and failures."""

    preset: str
    repeat: int
    machine: Mapping[str, Any]
    measurements: list[Measurement] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "repeat": self.repeat,
            "machine": dict(self.machine),
            "durations_s": dict(self.durations),
            "total_s": sum(self.durations.values()),
            "measurements": [m.to_json() for m in self.measurements],
            "gaps": [g.to_json() for g in self.gaps],
            "failures": dict(self.failures),
            "plots": list(self.plots),
        }


def _finite(value: Any) -> Any:
    """JSON has no infinities or NaN: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_json(result: SuiteResult, out: Path) -> Path:
    path = out / RESULTS_FILE
    doc = _finite(result.to_json())
    path.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    return path


def format_params(params: Mapping[str, Any]) -> str:
    """``N=100, d=100,000``: integers get thousands separators so sizes read easily."""
    parts = []
    for key, value in params.items():
        is_int = isinstance(value, int) and not isinstance(value, bool)
        shown = f"{value:,}" if is_int and abs(value) >= 10_000 else value
        parts.append(f"{key}={shown}")
    return ", ".join(parts)


def parameters(m: Measurement) -> str:
    """The parameters, then the facts derived from them after a semicolon."""
    text = format_params(m.params)
    return f"{text}; {format_params(m.details)}" if m.details else text


def verdict(m: Measurement) -> str:
    met = m.met
    if met is None:
        return "n/a"
    word = "yes" if met else "NO"
    return word if m.goal_applies else f"{word} (indicative)"


def format_ratio(m: Measurement) -> str:
    ratio = m.ratio
    if ratio is None:
        return "—"
    shown = f"{ratio:.3f}" if ratio < 10 else f"{ratio:.1f}"
    return f"{shown}x {'faster' if m.ratio_kind == 'speedup' else 'of baseline'}"


def describe(m: Measurement) -> str:
    """One console line: sizes, measured, baseline, ratio and goal verdict."""
    sizes = parameters(m)
    line = f"  {m.case} [{m.metric}] ({sizes}): {format_stats(m.measured)}"
    if m.baseline is not None:
        line += f" vs {m.baseline_name} {format_stats(m.baseline)} -> {format_ratio(m)}"
    if m.goal is not None:
        line += f"; goal {m.goal.describe()}: {verdict(m)}"
    return line


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def summary_markdown(result: SuiteResult) -> str:
    """The Markdown summary: machine line, one table row per measurement, gaps."""
    mach = result.machine
    memory = mach.get("memory_bytes")
    lines = [
        f"# cleanroom benchmarks — preset `{result.preset}`",
        "",
        f"{mach.get('timestamp')} · {mach.get('cpu_model')} · "
        f"{mach.get('cores_usable')} usable cores · "
        f"{format_value(memory, 'bytes') if memory else '? memory'} · "
        f"Python {mach.get('python')} · commit {str(mach.get('git_commit'))[:12]}"
        f"{' (dirty)' if mach.get('git_dirty') else ''} · "
        f"load {mach.get('load_average_1m')} · {result.repeat} repeats · "
        f"{sum(result.durations.values()):.1f} s",
        "",
        "Measured and baseline are medians (IQR) over repeats in this run; the ratio "
        'is computed from those medians. "indicative" marks sizes other than the '
        "ones the goal is stated for.",
        "",
        "| benchmark | parameters | measured | baseline | ratio | goal | met? |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in result.measurements:
        baseline = (
            "—"
            if m.baseline is None
            else f"{m.baseline_name}: {format_stats(m.baseline)}"
        )
        row = [
            f"{m.benchmark} / {m.case} [{m.metric}]",
            parameters(m),
            format_stats(m.measured),
            baseline,
            format_ratio(m),
            "—" if m.goal is None else m.goal.describe(),
            verdict(m),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    if result.gaps:
        lines += ["", "## Gaps", ""]
        lines += [f"- **{g.benchmark}** — {g.what}: {g.reason}" for g in result.gaps]
    if result.failures:
        lines += ["", "## Failures", ""]
        for name, error in result.failures.items():
            last = error.strip().splitlines()[-1] if error.strip() else "?"
            lines.append(f"- **{name}**: {_cell(last)}")
    if result.plots:
        lines += ["", "## Plots", ""]
        lines += [f"- [{p}]({p})" for p in result.plots]
    return "\n".join(lines) + "\n"


def write_summary(result: SuiteResult, out: Path) -> Path:
    path = out / SUMMARY_FILE
    path.write_text(summary_markdown(result))
    return path


def goals_missed(measurements: Sequence[Measurement]) -> list[Measurement]:
    """Measurements at their goal's own parameters that miss the goal."""
    return [m for m in measurements if m.goal_applies and m.met is False]
