"""The public layout of a vector the nodes sum through SecAgg+: named segments, each
with its own fixed-point scale, capacity check and, under DP, noise sensitivity.

Every segment is encoded as round(value * 2^f) in a two's-complement ring of
2^32 or 2^64. ``f`` is the largest (at most 32, at least 8 for real values, 0 for
counts) for which the sum over all ``parties`` of the largest value a node can
send — its declared bound, rounding slack, and with DP the 40-sigma tail of its
noise share — stays inside the ring's signed range and below 2^53, so the sum can
neither wrap nor lose an integer (``FixedPoint.check_capacity``).

Under DP each segment states how far one row can move it: an L2 bound over the
segment (the model update, after per-example clipping) or a bound per coordinate
(sums, counts, histogram bins), and how many coordinates one row touches. The
layout turns that into integer per-coordinate sensitivities Δ_j such that one
row moves the whole vector by at most ``dims`` in the normalised L2^2 norm
sum_j (v_j / Δ_j)^2; each node then adds N_Z(0, Δ_j^2 s^2) per coordinate, which
is the form ``protocols.dp`` calibrates (KLS Prop. 14 in normalised units). A
``weight`` w > 1 gives a segment w times less noise per unit of sensitivity and
costs w^2 per touched coordinate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from cleanroom.errors import ConfigError, ProtocolError
from protocols import dp
from protocols.fixedpoint import FixedPoint
from protocols.party import SYSTEM_RANDOM, RandomSource
from protocols.prg import MaskVector, mask_dtype

NOISE_TAIL_SIGMAS: Final = 40
"""A node refuses a noise draw beyond this many standard deviations (probability
below 10^-300); the ring's headroom is sized for it, so the sum cannot wrap."""
MAX_SCALE_BITS: Final = 32
MIN_FRACTION_BITS: Final = 8
_FLOAT_MARGIN: Final = 1 + 1e-9
"""Covers the rounding of a clipped norm, computed in floats, a few ulps above it."""

RowNorm = Literal["l2", "linf"]
Units = npt.NDArray[np.int64]


@dataclass(frozen=True)
class SegmentSpec:
    """What a segment holds and how large it can get, all public."""

    name: str
    size: int
    node_bound: float
    """Largest magnitude of one node's value in any coordinate (real units)."""
    integer: bool = False
    """Counts and histogram bins: exact at scale 2^0."""
    rounded_terms: int = 1
    """How many separately rounded terms a node's value sums (one per row for the
    exact per-row encodings DP needs): each adds up to half a unit."""
    row_bound: float | tuple[float, ...] = 0.0
    """DP: how far one row moves the segment, in L2 over the segment (``l2``) or per
    coordinate (``linf``, one value or one per coordinate)."""
    row_norm: RowNorm = "linf"
    touched: int = 0
    """DP: the most coordinates of this segment one row moves."""
    weight: int = 1

    @property
    def dims(self) -> int:
        """This segment's share of one row's normalised L2^2 sensitivity."""
        return self.touched * self.weight * self.weight


@dataclass(frozen=True)
class Segment:
    """A segment placed in the vector, with its codec and noise sensitivities."""

    spec: SegmentSpec
    offset: int
    scale_bits: int
    codec: FixedPoint
    node_limit: int
    """Largest encoded magnitude a node may send before noise."""
    sensitivity: tuple[int, ...]
    """Per coordinate Δ_j (integer units) under DP; empty without DP."""

    @property
    def stop(self) -> int:
        return self.offset + self.spec.size

    def units(self, values: npt.ArrayLike) -> Units:
        """round(values * 2^f), refusing NaN, infinities and values beyond the bound."""
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.shape != (self.spec.size,):
            raise ProtocolError(
                f"segment {self.spec.name} takes {self.spec.size} values"
            )
        if not np.all(np.isfinite(v)):
            raise ProtocolError(f"segment {self.spec.name} holds NaN or infinity")
        if np.any(np.abs(v) > self.spec.node_bound):
            raise ProtocolError(f"segment {self.spec.name} exceeds its declared bound")
        return np.rint(v * float(2**self.scale_bits)).astype(np.int64)


@dataclass(frozen=True)
class VectorLayout:
    """Segments in order; ``noise`` is the calibrated DP noise, or None."""

    segments: tuple[Segment, ...]
    modulus_bits: Literal[32, 64]
    parties: int
    noise: dp.DistributedGaussian | None

    @property
    def length(self) -> int:
        return self.segments[-1].stop if self.segments else 0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.spec.name for s in self.segments)

    def segment(self, name: str) -> Segment:
        for s in self.segments:
            if s.spec.name == name:
                return s
        raise ConfigError(f"the layout has no segment {name!r}")

    def assemble(
        self, units: Mapping[str, Units], random: RandomSource = SYSTEM_RANDOM
    ) -> MaskVector:
        """One node's ring vector: its encoded segments plus, under DP, its noise share.

        The plain ``units`` are the node's private contribution; only the returned
        vector (masked by SecAgg+ before it leaves) is ever sent.
        """
        if set(units) != set(self.names):
            raise ProtocolError(
                "a contribution must fill exactly the layout's segments"
            )
        signed = np.empty(self.length, dtype=np.int64)
        for s in self.segments:
            part = np.asarray(units[s.spec.name])
            if part.dtype != np.int64 or part.shape != (s.spec.size,):
                raise ProtocolError(
                    f"segment {s.spec.name}: expected {s.spec.size} int64"
                )
            if np.any(np.abs(part) > s.node_limit):
                raise ProtocolError(f"segment {s.spec.name} exceeds its capacity")
            signed[s.offset : s.stop] = part
        if self.noise is not None:
            signed += self._noise_share(self.noise, random)
        return _to_ring(signed, self.modulus_bits)

    def decode(
        self, total: MaskVector, contributors: int
    ) -> dict[str, npt.NDArray[np.float64]]:
        """Each segment of the ring sum of ``contributors`` nodes' vectors, in reals."""
        ring = np.asarray(total)
        if ring.shape != (self.length,) or ring.dtype != mask_dtype(self.modulus_bits):
            raise ProtocolError(
                f"expected a sum of {self.length} {self.modulus_bits}-bit elements"
            )
        if not 1 <= contributors <= self.parties:
            raise ProtocolError(f"contributors must be in 1..{self.parties}")
        return {
            s.spec.name: s.codec.decode(ring[s.offset : s.stop], contributors)
            for s in self.segments
        }

    def _noise_share(
        self, noise: dp.DistributedGaussian, random: RandomSource
    ) -> Units:
        deltas = [d for s in self.segments for d in s.sensitivity]
        draws = np.array(noise.sample(deltas, random), dtype=np.int64)
        limits = np.ceil(NOISE_TAIL_SIGMAS * np.array(deltas) * noise.node_std)
        if np.any(np.abs(draws) > limits):
            # Probability below 10^-300; refusing keeps the ring's headroom exact.
            raise ProtocolError("a noise draw fell beyond its tail bound; retry")
        return draws


def dims(specs: Sequence[SegmentSpec]) -> int:
    """One row's normalised L2^2 sensitivity over a vector of these segments."""
    return sum(spec.dims for spec in specs)


def build_layout(
    specs: Sequence[SegmentSpec],
    *,
    parties: int,
    modulus_bits: Literal[32, 64],
    noise: dp.DistributedGaussian | None,
) -> VectorLayout:
    """Place the segments and pick each one's scale; ConfigError if one cannot fit."""
    if len({s.name for s in specs}) != len(specs):
        raise ConfigError("segment names must be unique")
    segments, offset = [], 0
    for spec in specs:
        segment = _place(spec, offset, parties, modulus_bits, noise)
        segments.append(segment)
        offset = segment.stop
    return VectorLayout(tuple(segments), modulus_bits, parties, noise)


def _place(
    spec: SegmentSpec,
    offset: int,
    parties: int,
    modulus_bits: Literal[32, 64],
    noise: dp.DistributedGaussian | None,
) -> Segment:
    if spec.size < 1 or not (math.isfinite(spec.node_bound) and spec.node_bound >= 0):
        raise ConfigError(f"segment {spec.name}: bad size or bound")
    if noise is not None and spec.touched < 1:
        raise ConfigError(f"segment {spec.name}: DP needs its row sensitivity")
    top, bottom = (0, 0) if spec.integer else (MAX_SCALE_BITS, MIN_FRACTION_BITS)
    for bits in range(top, bottom - 1, -1):
        slack = 0 if spec.integer else (spec.rounded_terms + 1) // 2
        limit = math.ceil(spec.node_bound * 2**bits) + slack
        deltas = _sensitivity(spec, bits) if noise is not None else ()
        tail = (
            math.ceil(NOISE_TAIL_SIGMAS * max(deltas) * noise.node_std) + 1
            if noise is not None
            else 0
        )
        try:
            codec = FixedPoint(bits, max(limit + tail, 1) / 2**bits, modulus_bits)
            codec.check_capacity(parties)
        except (ConfigError, ProtocolError):
            continue
        return Segment(spec, offset, bits, codec, limit, deltas)
    raise ConfigError(
        f"segment {spec.name} cannot hold {parties} parties' values of up to "
        f"{spec.node_bound:g} in a {modulus_bits}-bit ring at {bottom} fraction bits; "
        "lower max_rows or the bounds, or use the 64-bit ring"
    )


def _sensitivity(spec: SegmentSpec, bits: int) -> tuple[int, ...]:
    """Integer Δ_j per coordinate so one row's normalised L2^2 is at most spec.dims."""
    scale = float(2**bits)
    rounding = 0.0 if spec.integer else 0.5
    if spec.row_norm == "l2":
        if not isinstance(spec.row_bound, int | float):
            raise ConfigError(f"segment {spec.name}: an l2 bound is one number")
        root = math.sqrt(spec.touched)
        moved = spec.row_bound * scale * _FLOAT_MARGIN + rounding * root
        delta = math.ceil(moved / (root * spec.weight))
        return (max(delta, 1),) * spec.size
    bounds = (
        (float(spec.row_bound),) * spec.size
        if isinstance(spec.row_bound, int | float)
        else tuple(float(b) for b in spec.row_bound)
    )
    if len(bounds) != spec.size:
        raise ConfigError(f"segment {spec.name}: one row bound per coordinate")
    return tuple(
        max(math.ceil((b * scale * _FLOAT_MARGIN + rounding) / spec.weight), 1)
        for b in bounds
    )


def _to_ring(signed: Units, modulus_bits: int) -> MaskVector:
    if modulus_bits == 64:
        return signed.view(np.uint64)
    narrowed: npt.NDArray[Any] = signed.astype(np.int32)
    return narrowed.view(np.uint32)


def ring_sum(vectors: Sequence[MaskVector]) -> MaskVector:
    """The plain modular sum SecAgg+ reveals: what the simulation uses in its place."""
    if not vectors:
        raise ProtocolError("nothing to sum")
    total = np.zeros_like(vectors[0])
    for v in vectors:
        total += v
    return total
