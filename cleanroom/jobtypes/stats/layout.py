"""The public layout of the vector every ``secure_stats`` node contributes.

One *cell* per declared group (or a single ``all`` cell). Each cell holds, in order:

* ``count``      rows in the cell;
* ``sum``        per column, the sum of the centred values ``x - c`` where ``c`` is
  the midpoint of the column's clip range ``[lo, hi]`` (so |x - c| <= (hi - lo)/2);
* ``product``    per pair of columns (a, b), a <= b in ``columns`` order, the sum
  of ``(x_a - c_a) * (x_b - c_b)``: the diagonal for variance/std, every pair for
  covariance/correlation;
* ``histogram``  per binned column, the count of rows in each bin.

Every segment has its own fixed-point scale 2^f over the 2^64 ring. ``f`` is the
largest (at most 32) for which the sum over all inputs of the largest possible
contribution — ``max_rows`` rows at the clip bound, plus the noise tail when DP is
on — stays below 2^53, where decoding is exact; ``check_capacity`` enforces it.
Sums of products over wide ranges may need ``f < 0``: the node's total is then
divided by 2^-f (exactly, a power of two) before scale-0 encoding, so one encoded
unit is worth 2^-f; ``resolution`` in the result says what each unit is worth.
Centring is what keeps the products' magnitude, and so the noise a record's
sensitivity calls for, small. Variance and covariance do not change with
the shift; sums and means add it back.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from cleanroom.errors import ConfigError, ProtocolError, SpecError
from cleanroom.jobtypes.stats.params import (
    NEEDS_PRODUCTS,
    NEEDS_SQUARES,
    NEEDS_SUMS,
    StatsParams,
)
from protocols import dp
from protocols.fixedpoint import FixedPoint
from protocols.prg import MaskVector

MAX_SCALE_BITS: Final = 32
MIN_SCALE_BITS: Final = -32
NOISE_TAIL_SIGMAS: Final = 40
"""A node refuses a noise draw beyond this many standard deviations (probability
below 10^-300); the ring's headroom is sized for it, so the sum can never wrap."""
MAX_VECTOR_LENGTH: Final = 1 << 22
_ROUNDING_SLACK: Final = 2
"""Encoded units a record may move a fixed-point total beyond its exact bound: one
for rounding the node's total, one for float error in summing it."""

SegmentKind = Literal["count", "sum", "product", "histogram"]


@dataclass(frozen=True)
class Segment:
    """One statistic's slots in a cell, with its codec and per-record sensitivity."""

    kind: SegmentKind
    columns: tuple[str, ...]
    size: int
    scale_bits: int
    """Encoded = round(value * 2^scale_bits); negative for coarse, huge totals."""
    codec: FixedPoint
    sensitivity: int
    """How far one record can move any one slot, in encoded integer units."""

    @property
    def resolution(self) -> float:
        """The value of one encoded unit: 2^-scale_bits."""
        return 2.0**-self.scale_bits

    def encode(self, values: npt.NDArray[np.float64]) -> MaskVector:
        """Fixed-point encode one node's totals into the ring."""
        return self.codec.encode(np.ldexp(values, min(self.scale_bits, 0)))

    def decode(self, total: MaskVector, contributors: int) -> npt.NDArray[np.float64]:
        """Decode the ring sum of ``contributors`` nodes' totals."""
        return np.ldexp(
            self.codec.decode(total, contributors), max(-self.scale_bits, 0)
        )


@dataclass(frozen=True)
class Layout:
    """Cells, segments and the (optional) calibrated DP noise: all public."""

    params: StatsParams
    segments: tuple[Segment, ...]
    noise: dp.DistributedGaussian | None

    @property
    def cell_length(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def vector_length(self) -> int:
        return self.cell_length * len(self.params.group_keys)

    def centre(self, column: str) -> float:
        lo, hi = self.params.clip[column]
        return (lo + hi) / 2

    def slots(self) -> Iterator[tuple[int, Segment]]:
        """(offset within a cell, segment) in layout order."""
        offset = 0
        for segment in self.segments:
            yield offset, segment
            offset += segment.size


def build_layout(params: StatsParams) -> Layout:
    """Derive the layout; SpecError if the ring cannot hold the worst-case sum."""
    plans = _segment_plans(params)
    noise = None
    if params.privacy is not None:
        # One record moves the count, every sum and product and one bin per
        # histogram of the one cell it belongs to.
        touched = sum(1 if kind == "histogram" else size for kind, _, size, _ in plans)
        noise = dp.calibrate(
            params.privacy.epsilon,
            params.privacy.delta,
            dimensions=touched,
            parties=params.threshold,
        )
    segments = tuple(
        _segment(kind, columns, size, bound, params, noise)
        for kind, columns, size, bound in plans
    )
    layout = Layout(params, segments, noise)
    if layout.vector_length > MAX_VECTOR_LENGTH:
        raise SpecError(
            "params",
            f"{layout.vector_length} values per node; at most {MAX_VECTOR_LENGTH} "
            "(fewer groups, columns or bins)",
        )
    return layout


_Plan = tuple[SegmentKind, tuple[str, ...], int, Fraction]


def _segment_plans(params: StatsParams) -> list[_Plan]:
    """(kind, columns, size, largest magnitude one record adds) per segment."""
    half = {c: (Fraction(hi) - Fraction(lo)) / 2 for c, (lo, hi) in params.clip.items()}
    plans: list[_Plan] = [("count", (), 1, Fraction(1))]
    if params.stats & NEEDS_SUMS:
        plans += [("sum", (c,), 1, half[c]) for c in params.columns]
    columns = params.columns
    if params.stats & NEEDS_PRODUCTS:
        pairs = [(a, b) for i, a in enumerate(columns) for b in columns[i:]]
    elif params.stats & NEEDS_SQUARES:
        pairs = [(c, c) for c in columns]
    else:
        pairs = []
    plans += [("product", (a, b), 1, half[a] * half[b]) for a, b in pairs]
    plans += [
        ("histogram", (c,), len(edges) - 1, Fraction(1))
        for c, edges in params.edges.items()
    ]
    return plans


def _segment(
    kind: SegmentKind,
    columns: tuple[str, ...],
    size: int,
    per_record: Fraction,
    params: StatsParams,
    noise: dp.DistributedGaussian | None,
) -> Segment:
    exact = kind in ("count", "histogram")
    top, bottom = (0, 0) if exact else (MAX_SCALE_BITS, MIN_SCALE_BITS)
    for bits in range(top, bottom - 1, -1):
        scale = Fraction(2) ** bits
        sensitivity = 1 if exact else math.ceil(per_record * scale) + _ROUNDING_SLACK
        largest = math.ceil(params.max_rows * per_record * scale) + _ROUNDING_SLACK
        if noise is not None:
            largest += math.ceil(NOISE_TAIL_SIGMAS * sensitivity * noise.node_std) + 1
        codec_bits = max(bits, 0)
        try:
            codec = FixedPoint(codec_bits, largest / 2**codec_bits, 64)
            codec.check_capacity(params.parties)
        except (ConfigError, ProtocolError):
            continue
        return Segment(kind, columns, size, bits, codec, sensitivity)
    raise SpecError(
        "params.clip",
        f"the {kind} of {', '.join(columns) or 'rows'} could overflow: "
        f"{params.parties} inputs of up to {params.max_rows} rows within these clip "
        "bounds do not fit 53 bits; narrow params.clip or lower params.max_rows",
    )
