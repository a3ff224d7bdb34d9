"""Fixed-point encoding: refusals, clipping, exact integers and the capacity bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.errors import ConfigError, ProtocolError
from protocols.fixedpoint import FixedPoint


def ring_sum(vectors: list[np.ndarray]) -> np.ndarray:
    total = np.zeros_like(vectors[0])
    for v in vectors:
        total += v  # wraps mod 2^bits, exactly like the masked aggregate
    return total


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused(bad: float) -> None:
    with pytest.raises(ProtocolError, match="NaN or infinity"):
        FixedPoint(16, 100.0).encode(np.array([1.0, bad]))


def test_nan_is_refused_even_when_clipping() -> None:
    with pytest.raises(ProtocolError):
        FixedPoint(16, 100.0, clip_mode="clip").encode(np.array([np.nan]))


def test_out_of_range_is_refused_by_default() -> None:
    with pytest.raises(ProtocolError, match="exceeds clip"):
        FixedPoint(16, 10.0).encode(np.array([10.5]))


def test_clip_mode_saturates_explicitly() -> None:
    fp = FixedPoint(16, 10.0, clip_mode="clip")
    decoded = fp.decode(fp.encode(np.array([25.0, -25.0, 3.5])), 1)
    assert decoded.tolist() == [10.0, -10.0, 3.5]


@pytest.mark.parametrize("bits", [32, 64])
def test_counts_come_out_exact(bits: int) -> None:
    fp = FixedPoint(0 if bits == 32 else 20, 1000.0, bits)
    rng = np.random.default_rng(1)
    counts = [rng.integers(-1000, 1001, size=50).astype(float) for _ in range(30)]
    total = fp.decode(ring_sum([fp.encode(c) for c in counts]), 30)
    assert np.array_equal(total, np.sum(counts, axis=0))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(-1e3, 1e3), min_size=4, max_size=4), min_size=1, max_size=8
    )
)
def test_signed_sum_round_trip(rows: list[list[float]]) -> None:
    fp = FixedPoint(24, 1e3)
    encoded = [fp.encode(np.array(r)) for r in rows]
    decoded = fp.decode(ring_sum(encoded), len(rows))
    # Each value is rounded to the nearest 2^-24, and the sum adds no further error.
    expected = np.sum([np.rint(np.array(r) * 2**24) for r in rows], axis=0) / 2**24
    assert np.array_equal(decoded, expected)
    assert np.all(np.abs(decoded - np.sum(rows, axis=0)) <= len(rows) * 2**-25)


def test_capacity_check_refuses_possible_wraparound() -> None:
    fp = FixedPoint(16, 1000.0, 32)  # max encoded 65,536,000; 2^31 / that = 32.8
    fp.check_capacity(32)
    with pytest.raises(ProtocolError, match="overflow"):
        fp.check_capacity(33)
    with pytest.raises(ProtocolError):
        fp.decode(np.zeros(3, dtype=np.uint32), 33)


def test_capacity_keeps_sums_float_exact_in_64_bit_rings() -> None:
    fp = FixedPoint(20, 1.0, 64)
    assert fp.max_parties() == (2**53 - 1) // 2**20


def test_decode_checks_dtype() -> None:
    with pytest.raises(ProtocolError):
        FixedPoint(8, 1.0, 64).decode(np.zeros(3, dtype=np.uint32), 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scale_bits": -1, "clip": 1.0},
        {"scale_bits": 53, "clip": 1.0},
        {"scale_bits": 8, "clip": 0.0},
        {"scale_bits": 8, "clip": float("nan")},
        {"scale_bits": 8, "clip": 1.0, "modulus_bits": 16},
        {"scale_bits": 30, "clip": 4.0, "modulus_bits": 32},
        {"scale_bits": 8, "clip": 1.0, "clip_mode": "wrap"},
    ],
)
def test_bad_parameters_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        FixedPoint(**kwargs)  # type: ignore[arg-type]


def test_input_shape_and_type_checked() -> None:
    fp = FixedPoint(8, 1.0)
    with pytest.raises(ProtocolError):
        fp.encode(np.zeros((2, 2)))
    with pytest.raises(ProtocolError):
        fp.encode(["a", "b"])
