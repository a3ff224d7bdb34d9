"""The benchmark registry, the context a benchmark runs with, and what it returns."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from benchmarks.stats import Stats, T, Timing, measure, measure_interleaved

PRESETS: Final = ("quick", "full")
"""``quick`` runs in CI in under two minutes; ``full`` covers every protocol."""
DEFAULT_REPEAT: Final = {"quick": 3, "full": 7}

RatioKind = Literal["overhead", "speedup"]
"""``overhead`` = measured / baseline (lower is better); ``speedup`` = baseline /
measured (higher is better). Either way the ratio is computed from the medians."""

V = TypeVar("V")


class BenchmarkGap(Exception):
    """The benchmark cannot run yet (e.g. the protocol it measures is not written)."""


@dataclass(frozen=True)
class Goal:
    """A target ratio from an issue: ``>= 5`` (speedup) or ``<= 100`` (overhead)."""

    op: Literal[">=", "<="]
    value: float
    source: str
    at: str = ""
    """The parameters the issue states the goal for (empty: any size)."""

    def met(self, ratio: float) -> bool:
        return ratio >= self.value if self.op == ">=" else ratio <= self.value

    def describe(self) -> str:
        text = f"{self.op} {self.value:g}x"
        return f"{text} at {self.at}" if self.at else text

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "value": self.value,
            "source": self.source,
            "at": self.at,
        }


@dataclass(frozen=True)
class Measurement:
    """One measured quantity at one set of parameters, with its same-run baseline."""

    benchmark: str
    case: str
    params: Mapping[str, Any]
    metric: str
    measured: Stats
    details: Mapping[str, Any] = field(default_factory=dict)
    """Facts that follow from ``params`` (degree, threshold...): shown, not plotted."""
    baseline: Stats | None = None
    baseline_name: str = ""
    ratio_kind: RatioKind = "overhead"
    goal: Goal | None = None
    goal_applies: bool = True
    """False when ``params`` are not those the goal is stated for (e.g. quick sizes):
    the verdict is then indicative only."""
    x: tuple[str, ...] = ()
    """The parameters this measurement is plotted against: a scaling curve each."""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """Computed from the two medians measured in this run, never stored apart."""
        if self.baseline is None:
            return None
        measured, baseline = self.measured.median, self.baseline.median
        numerator, denominator = (
            (measured, baseline)
            if self.ratio_kind == "overhead"
            else (baseline, measured)
        )
        if denominator == 0:
            return float("inf") if numerator > 0 else None
        return numerator / denominator

    @property
    def met(self) -> bool | None:
        ratio = self.ratio
        if self.goal is None or ratio is None:
            return None
        return self.goal.met(ratio)

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "case": self.case,
            "params": dict(self.params),
            "details": dict(self.details),
            "metric": self.metric,
            "measured": self.measured.to_json(),
            "baseline": None if self.baseline is None else self.baseline.to_json(),
            "baseline_name": self.baseline_name,
            "ratio_kind": self.ratio_kind,
            "ratio": self.ratio,
            "goal": None if self.goal is None else self.goal.to_json(),
            "goal_applies": self.goal_applies,
            "met": self.met,
            "x": list(self.x),
            "note": self.note,
        }


@dataclass(frozen=True)
class Gap:
    """Something the suite should measure but cannot yet, and why."""

    benchmark: str
    what: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"benchmark": self.benchmark, "what": self.what, "reason": self.reason}


@dataclass
class Context:
    """What a benchmark function receives: the preset, repeats, a timer, a workdir."""

    benchmark: str
    preset: str
    repeat: int
    workdir: Path
    log: Callable[[str], None] = print
    gaps: list[Gap] = field(default_factory=list)

    def pick(self, *, quick: V, full: V) -> V:
        """The preset's value of a parameter (sizes, party counts...)."""
        return quick if self.preset == "quick" else full

    def time(
        self,
        fn: Callable[[T], object],
        *,
        repeat: int | None = None,
        warmup: int = 1,
        setup: Callable[[], T] | None = None,
    ) -> Timing:
        """CPU and wall time of ``fn`` over ``repeat`` (default: the run's) repeats."""
        return measure(fn, repeat=repeat or self.repeat, warmup=warmup, setup=setup)

    def time_interleaved(
        self,
        *fns: Callable[[], object],
        repeat: int | None = None,
        warmup: int = 1,
    ) -> list[Timing]:
        """Time ``fns`` round-robin (A B A B...) so machine drift hits each alike."""
        return measure_interleaved(fns, repeat=repeat or self.repeat, warmup=warmup)

    def gap(self, what: str, reason: str) -> None:
        """Record a part of this benchmark that cannot be measured yet."""
        self.gaps.append(Gap(self.benchmark, what, reason))
        self.log(f"  GAP {what}: {reason}")

    def measurement(self, **kwargs: Any) -> Measurement:
        """A Measurement of this benchmark (its name filled in)."""
        return Measurement(benchmark=self.benchmark, **kwargs)


BenchmarkFn = Callable[[Context], Iterable[Measurement]]


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark function and the presets it belongs to."""

    name: str
    group: str
    presets: frozenset[str]
    fn: BenchmarkFn

    @property
    def doc(self) -> str:
        return (
            (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""
        )


class Registry:
    """Benchmarks by name; the module-level ``REGISTRY`` is the suite's."""

    def __init__(self) -> None:
        self._items: dict[str, Benchmark] = {}

    def add(self, item: Benchmark) -> None:
        if item.name in self._items:
            raise ValueError(f"benchmark '{item.name}' is already registered")
        unknown = sorted(item.presets - set(PRESETS))
        if unknown:
            raise ValueError(f"benchmark '{item.name}': unknown preset {unknown[0]!r}")
        self._items[item.name] = item

    def all(self) -> list[Benchmark]:
        return list(self._items.values())

    def select(self, preset: str, only: Sequence[str] = ()) -> list[Benchmark]:
        """Benchmarks of ``preset`` whose name or group matches any ``only`` pattern."""
        if preset not in PRESETS:
            raise ValueError(
                f"preset must be one of {', '.join(PRESETS)}, not {preset!r}"
            )
        chosen = [b for b in self._items.values() if preset in b.presets]
        if only:
            chosen = [
                b
                for b in chosen
                if any(
                    fnmatch.fnmatchcase(b.name, p) or fnmatch.fnmatchcase(b.group, p)
                    for p in only
                )
            ]
        return chosen

    def benchmark(
        self, name: str, group: str, *, presets: Iterable[str] = PRESETS
    ) -> Callable[[BenchmarkFn], BenchmarkFn]:
        """Decorator: register ``fn`` as benchmark ``name`` in ``group``."""

        def register(fn: BenchmarkFn) -> BenchmarkFn:
            self.add(Benchmark(name, group, frozenset(presets), fn))
            return fn

        return register


REGISTRY: Final = Registry()
benchmark: Final = REGISTRY.benchmark
