"""Segmented fixed-point vectors: round trips through the ring sum, capacity for the
number of parties, refusals, and the DP sensitivity each segment declares."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers.fl import seeded_random
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.errors import ConfigError, ProtocolError
from protocols import dp
from protocols.fl.local import row_units
from protocols.fl.vector import (
    NOISE_TAIL_SIGMAS,
    SegmentSpec,
    build_layout,
    dims,
    ring_sum,
)

SPECS = [
    SegmentSpec("weights", 6, node_bound=500.0),
    SegmentSpec("count", 1, node_bound=1000, integer=True),
    SegmentSpec("hist", 4, node_bound=1000, integer=True),
]


@settings(max_examples=60, deadline=None)
@given(
    bits=st.sampled_from([32, 64]),
    parties=st.integers(1, 12),
    data=st.data(),
)
def test_round_trip_through_the_ring_sum(
    bits: int, parties: int, data: st.DataObject
) -> None:
    layout = build_layout(SPECS, parties=parties, modulus_bits=bits, noise=None)  # type: ignore[arg-type]
    reals = st.floats(-500, 500, allow_nan=False)
    nodes = []
    for _ in range(parties):
        nodes.append(
            {
                "weights": np.array(data.draw(st.lists(reals, min_size=6, max_size=6))),
                "count": np.array([data.draw(st.integers(0, 1000))]),
                "hist": np.array(
                    data.draw(st.lists(st.integers(0, 1000), min_size=4, max_size=4))
                ),
            }
        )
    vectors = [
        layout.assemble({name: layout.segment(name).units(v[name]) for name in v})
        for v in nodes
    ]
    total = layout.decode(ring_sum(vectors), parties)
    resolution = 2.0 ** -layout.segment("weights").scale_bits
    expected = sum(v["weights"] for v in nodes)
    assert (
        np.max(np.abs(total["weights"] - expected)) <= parties * resolution / 2 + 1e-9
    )
    assert total["count"][0] == sum(int(v["count"][0]) for v in nodes)
    assert np.array_equal(total["hist"], sum(v["hist"] for v in nodes))


def test_negative_sums_survive_two_complement() -> None:
    layout = build_layout(SPECS[:1], parties=3, modulus_bits=32, noise=None)
    seg = layout.segment("weights")
    vectors = [
        layout.assemble({"weights": seg.units(np.full(6, -400.0))}) for _ in range(3)
    ]
    assert np.allclose(layout.decode(ring_sum(vectors), 3)["weights"], -1200.0)


def test_scale_shrinks_with_parties_and_capacity_is_checked() -> None:
    few = build_layout(SPECS, parties=3, modulus_bits=64, noise=None)
    many = build_layout(SPECS, parties=60_000, modulus_bits=64, noise=None)
    assert many.segment("weights").scale_bits < few.segment("weights").scale_bits
    for layout, parties in ((few, 3), (many, 60_000)):
        seg = layout.segment("weights")
        seg.codec.check_capacity(parties)  # the sum of every party's largest value fits
        assert parties * seg.codec.max_encoded < 2**53


def test_a_ring_too_small_for_the_parties_is_refused() -> None:
    with pytest.raises(ConfigError, match="cannot hold 5000 parties"):
        build_layout(
            [SegmentSpec("count", 1, node_bound=10**6, integer=True)],
            parties=5000,
            modulus_bits=32,
            noise=None,
        )
    with pytest.raises(ConfigError, match="8 fraction bits"):
        build_layout(
            [SegmentSpec("w", 1, node_bound=1e6)],
            parties=100,
            modulus_bits=32,
            noise=None,
        )


def test_values_beyond_the_declared_bound_are_refused() -> None:
    layout = build_layout(SPECS, parties=3, modulus_bits=64, noise=None)
    seg = layout.segment("weights")
    with pytest.raises(ProtocolError, match="exceeds its declared bound"):
        seg.units(np.array([0, 0, 0, 0, 0, 500.5]))
    with pytest.raises(ProtocolError, match="NaN or infinity"):
        seg.units(np.array([0, 0, 0, 0, 0, np.nan]))
    with pytest.raises(ProtocolError, match="takes 6 values"):
        seg.units(np.zeros(5))


def _units(layout, **override):  # type: ignore[no-untyped-def]
    units = {
        s.spec.name: np.zeros(s.spec.size, dtype=np.int64) for s in layout.segments
    }
    units.update(override)
    return units


def test_malformed_contributions_are_refused() -> None:
    layout = build_layout(SPECS, parties=3, modulus_bits=64, noise=None)
    with pytest.raises(ProtocolError, match="exactly the layout's segments"):
        layout.assemble({"weights": np.zeros(6, dtype=np.int64)})
    extra = _units(layout, extra=np.zeros(1, dtype=np.int64))
    with pytest.raises(ProtocolError, match="exactly the layout's segments"):
        layout.assemble(extra)
    with pytest.raises(ProtocolError, match="expected 6 int64"):
        layout.assemble(_units(layout, weights=np.zeros(6)))
    with pytest.raises(ProtocolError, match="expected 6 int64"):
        layout.assemble(_units(layout, weights=np.zeros(7, dtype=np.int64)))
    over = np.array([layout.segment("count").node_limit + 1], dtype=np.int64)
    with pytest.raises(ProtocolError, match="count exceeds its capacity"):
        layout.assemble(_units(layout, count=over))


def test_malformed_sums_are_refused() -> None:
    layout = build_layout(SPECS, parties=3, modulus_bits=64, noise=None)
    good = layout.assemble(_units(layout))
    with pytest.raises(ProtocolError, match="11 64-bit"):
        layout.decode(good[:-1], 1)
    with pytest.raises(ProtocolError, match="11 64-bit"):
        layout.decode(good.astype(np.uint32), 1)
    for contributors in (0, 4):
        with pytest.raises(ProtocolError, match="contributors"):
            layout.decode(good, contributors)


def test_duplicate_names_and_dp_without_sensitivity_are_refused() -> None:
    with pytest.raises(ConfigError, match="unique"):
        build_layout([SPECS[0], SPECS[0]], parties=3, modulus_bits=64, noise=None)
    noise = dp.calibrate(1.0, 1e-6, dimensions=10, parties=3)
    with pytest.raises(ConfigError, match="row sensitivity"):
        build_layout(SPECS, parties=3, modulus_bits=64, noise=noise)


# --------------------------------------------------------------------- DP ---
DP_SPECS = [
    SegmentSpec(
        "update",
        8,
        node_bound=100.0,
        rounded_terms=100,
        row_bound=1.0,
        row_norm="l2",
        touched=8,
    ),
    SegmentSpec(
        "sums",
        3,
        node_bound=500.0,
        rounded_terms=100,
        row_bound=(5.0, 2.0, 0.5),
        touched=3,
        weight=3,
    ),
    SegmentSpec("hist", 10, node_bound=100, integer=True, row_bound=1.0, touched=2),
]


def test_dims_add_each_segments_share() -> None:
    assert dims(DP_SPECS) == 8 + 3 * 9 + 2


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_one_row_moves_at_most_dims_in_normalised_l2(data: st.DataObject) -> None:
    """Whatever one row adds within its declared bound, sum_j (v_j / Δ_j)^2 <= dims."""
    noise = dp.calibrate(2.0, 1e-6, dimensions=dims(DP_SPECS), parties=3)
    layout = build_layout(DP_SPECS, parties=3, modulus_bits=64, noise=noise)
    update, sums, hist = (layout.segment(n) for n in ("update", "sums", "hist"))
    direction = np.array(data.draw(st.lists(st.floats(-1, 1), min_size=8, max_size=8)))
    if np.linalg.norm(direction) > 1:
        direction /= np.linalg.norm(direction)
    row_update = np.rint(direction * 2.0**update.scale_bits)
    row_sums = np.array(
        [
            row_units(np.array([data.draw(st.floats(-b, b))]), sums.scale_bits)
            for b in (5.0, 2.0, 0.5)
        ]
    )
    row_hist = np.zeros(10)
    row_hist[data.draw(st.sampled_from([0, 4]))] = 1
    row_hist[data.draw(st.sampled_from([5, 9]))] = 1
    total = 0.0
    for seg, moved in ((update, row_update), (sums, row_sums), (hist, row_hist)):
        total += float(np.sum((moved / np.array(seg.sensitivity)) ** 2))
    assert total <= dims(DP_SPECS) + 1e-9


def test_noise_shares_sum_to_the_calibrated_spread() -> None:
    noise = dp.calibrate(1.0, 1e-6, dimensions=dims(DP_SPECS), parties=3)
    layout = build_layout(DP_SPECS, parties=3, modulus_bits=64, noise=noise)
    random = seeded_random("noise-spread")
    zero = {s.spec.name: np.zeros(s.spec.size, dtype=np.int64) for s in layout.segments}
    draws = np.array(
        [layout.assemble(zero, random).view(np.int64) for _ in range(300)], dtype=float
    )
    deltas = np.array([d for s in layout.segments for d in s.sensitivity], dtype=float)
    normalised = draws / deltas
    assert np.mean(normalised) == pytest.approx(0, abs=0.05 * noise.node_std)
    assert np.std(normalised) == pytest.approx(noise.node_std, rel=0.05)
    headroom = layout.segment("update")
    tail = math.ceil(NOISE_TAIL_SIGMAS * max(headroom.sensitivity) * noise.node_std)
    assert headroom.codec.max_encoded >= headroom.node_limit + tail
