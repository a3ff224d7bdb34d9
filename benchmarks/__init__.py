"""cleanroom's benchmark suite: each figure next to a baseline measured in the same run.

Run ``python -m benchmarks --preset quick`` (or ``cleanroom bench``). A benchmark is
a function decorated with :func:`benchmark` that takes a :class:`Context` and yields
:class:`Measurement` objects; see benchmarks/README.md.
"""

from benchmarks.registry import (
    REGISTRY,
    BenchmarkGap,
    Context,
    Gap,
    Goal,
    Measurement,
    benchmark,
)
from benchmarks.stats import Stats, Timing

__all__ = [
    "REGISTRY",
    "BenchmarkGap",
    "Context",
    "Gap",
    "Goal",
    "Measurement",
    "Stats",
    "Timing",
    "benchmark",
]
