"""Repeated measurements and their summary: median and spread (IQR, min, max)."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Stats:
    """The samples of one quantity over repeats, with its unit (``s``, ``bytes``...)."""

    samples: tuple[float, ...]
    unit: str

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("a statistic needs at least one sample")

    @classmethod
    def of(cls, samples: Sequence[float], unit: str) -> Stats:
        return cls(tuple(float(s) for s in samples), unit)

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples))

    @property
    def q1(self) -> float:
        return self._quartiles()[0]

    @property
    def q3(self) -> float:
        return self._quartiles()[2]

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    def _quartiles(self) -> tuple[float, float, float]:
        if len(self.samples) == 1:
            only = self.samples[0]
            return only, only, only
        q1, q2, q3 = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q1, q2, q3

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "n": self.n,
            "median": self.median,
            "q1": self.q1,
            "q3": self.q3,
            "iqr": self.iqr,
            "min": self.min,
            "max": self.max,
            "samples": list(self.samples),
        }


@dataclass(frozen=True)
class Timing:
    """CPU time (``time.process_time``: this process, all threads) and wall time."""

    cpu: Stats
    wall: Stats


def measure(
    fn: Callable[[T], object],
    *,
    repeat: int,
    warmup: int = 1,
    setup: Callable[[], T] | None = None,
) -> Timing:
    """Time ``fn(setup())`` ``repeat`` times after ``warmup`` untimed runs.

    ``setup`` runs outside the timed region, so inputs can be fresh for every
    repeat (a protocol run consumes its parties). A collection runs before each
    sample so one repeat's garbage is not charged to the next.
    """
    if repeat < 1:
        raise ValueError("repeat must be at least 1")

    def arg() -> T:
        return setup() if setup is not None else None  # type: ignore[return-value]

    for _ in range(warmup):
        fn(arg())
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(repeat):
        value = arg()
        gc.collect()
        c0, w0 = time.process_time(), time.perf_counter()
        fn(value)
        w1, c1 = time.perf_counter(), time.process_time()
        cpu.append(c1 - c0)
        wall.append(w1 - w0)
    return Timing(cpu=Stats.of(cpu, "s"), wall=Stats.of(wall, "s"))


def measure_interleaved(
    fns: Sequence[Callable[[], object]], *, repeat: int, warmup: int = 1
) -> list[Timing]:
    """Time several functions round-robin (A B C A B C...), one Timing each.

    On a shared machine, load drifts; interleaving spreads the drift over every
    function alike instead of charging it to whichever ran last, so the ratio of
    two medians compares like with like.
    """
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    for _ in range(warmup):
        for fn in fns:
            fn()
    cpu: list[list[float]] = [[] for _ in fns]
    wall: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            gc.collect()
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            w1, c1 = time.perf_counter(), time.process_time()
            cpu[i].append(c1 - c0)
            wall[i].append(w1 - w0)
    return [
        Timing(cpu=Stats.of(c, "s"), wall=Stats.of(w, "s"))
        for c, w in zip(cpu, wall, strict=True)
    ]


def format_value(value: float, unit: str) -> str:
    """Human units: seconds as s/ms/µs, bytes as B/KiB/MiB, ratios as ``x``."""
    if unit == "s":
        for scale, suffix in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
            if abs(value) >= scale:
                return f"{value / scale:.3g} {suffix}"
        return f"{value * 1e9:.3g} ns"
    if unit == "bytes":
        for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(value) >= scale:
                return f"{value / scale:.3g} {suffix}"
        return f"{value:.0f} B"
    return f"{value:.4g} {unit}".rstrip()


def format_stats(stats: Stats) -> str:
    """``median (IQR q1–q3, n=...)`` in human units."""
    if stats.n == 1:
        return format_value(stats.median, stats.unit)
    return (
        f"{format_value(stats.median, stats.unit)} "
        f"(IQR {format_value(stats.q1, stats.unit)}–"
        f"{format_value(stats.q3, stats.unit)}, n={stats.n})"
    )
