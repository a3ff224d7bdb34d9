"""The shape of a released cell's invertible Bloom lookup table, and the bound on the
probability that it fails to decode a small difference.

A table has ``hashes`` sub-tables of ``width`` cells; every item lands in exactly one
cell of each sub-table. Subtracting two tables cancels the items they share, and
peeling recovers the rest unless some subset S of them is a *stopping set*: every
cell an item of S lands in holds at least one other item of S. With positions from
a pseudorandom function, each sub-table is an independent uniform map, so a fixed S
of s items is a stopping set with probability q(s, width)^hashes, where q(s, w) is
the probability that s items thrown into w bins leave no bin with exactly one. A
union bound over every subset of the x items gives

    P(decode fails) <= sum_{s=2..x} C(x, s) * q(s, width)^hashes.

Two cells whose row sets differ by d < k rows differ in at most d buckets, so in at
most x = 2(k - 1) items (a bucket's old and new summary). ``geometry_for`` picks the
smallest table (hashes x width) whose bound at that x is at most 2^FALSE_ALLOW_LOG2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import numpy as np

from cleanroom.errors import ConfigError

FALSE_ALLOW_LOG2: Final = -24
"""Target: a difference of 1..k-1 rows fails to decode in one comparison with
probability at most 2^-24 (the union bound above; 64-bit checksums add ~2^-55).
It matches the 2^-24 at which a two-row swap hides in one bucket's tag sum."""
MAX_GROUP_SIZE: Final = 64
MAX_HASHES: Final = 32
MAX_WIDTH: Final = 64
"""Positions map 32-bit words onto ``width`` cells (``table.locate``): uniform to
within a factor 1 + width / 2^32 <= 1 + 2^-26, which the bound ignores."""


@dataclass(frozen=True)
class Geometry:
    """A table of ``hashes`` sub-tables of ``width`` cells, for group size ``k``."""

    group_size: int
    hashes: int
    width: int

    @property
    def cells(self) -> int:
        return self.hashes * self.width

    @property
    def max_items(self) -> int:
        """Items in the difference of two cells whose row sets differ by < k rows."""
        return 2 * (self.group_size - 1)

    def false_allow_bound(self) -> float:
        """Upper bound on P(a difference of max_items items does not decode)."""
        return _failure_bound(self.max_items, self.hashes, self.width)


def _no_singleton(items: int, width: int) -> list[float]:
    """q(s, width) for s = 0..items: s! [x^s] (e^(x/w) - x/w)^w, the exponential
    generating function of maps whose fibres all have size 0 or >= 2, in floats.

    Every term is positive, so there is no cancellation; terms that underflow are
    below 1e-300 and only ever shrink the bound by a negligible amount.
    """
    log_w = math.log(width)
    base = np.array(
        [
            0.0 if j == 1 else math.exp(-math.lgamma(j + 1) - j * log_w)
            for j in range(items + 1)
        ]
    )
    power = np.zeros(items + 1)
    power[0] = 1.0
    exponent = width
    while exponent:
        if exponent & 1:
            power = np.convolve(power, base)[: items + 1]
        exponent >>= 1
        if exponent:
            base = np.convolve(base, base)[: items + 1]
    return [float(power[s]) * math.factorial(s) for s in range(items + 1)]


def _failure_bound(items: int, hashes: int, width: int) -> float:
    q = _no_singleton(items, width)
    return math.fsum(math.comb(items, s) * q[s] ** hashes for s in range(2, items + 1))


@lru_cache(maxsize=MAX_GROUP_SIZE)
def geometry_for(group_size: int) -> Geometry:
    """The smallest table that decodes any difference of < ``group_size`` rows with
    probability >= 1 - 2^FALSE_ALLOW_LOG2 (fewest table cells; ties: fewer hashes)."""
    if (
        isinstance(group_size, bool)
        or not isinstance(group_size, int)
        or not 2 <= group_size <= MAX_GROUP_SIZE
    ):
        raise ConfigError(
            f"the group size must be an int in 2..{MAX_GROUP_SIZE}, got {group_size!r}"
        )
    items = 2 * (group_size - 1)
    target = 2.0**FALSE_ALLOW_LOG2
    best: Geometry | None = None
    for hashes in range(2, MAX_HASHES + 1):
        high = 2
        while _failure_bound(items, hashes, high) > target:
            high *= 2
        low = high // 2
        while high - low > 1:
            middle = (low + high) // 2
            if _failure_bound(items, hashes, middle) <= target:
                high = middle
            else:
                low = middle
        if high > MAX_WIDTH:
            continue
        if best is None or hashes * high < best.cells:
            best = Geometry(group_size, hashes, high)
    assert best is not None  # 32 hashes of width <= 64 suffice for every k <= 64
    return best
