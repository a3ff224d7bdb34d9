"""The sealed-sum layer: masks that hide the SecAgg+ sum from the coordinator, and
tensor checksums that catch any alteration of it (``protocols.sealed_sum``)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from cleanroom.errors import ProtocolError
from protocols.sealed_sum import (
    BOUND_BITS,
    DEFAULT_CHECKS,
    PER_GROUP,
    WIDTH,
    SealedSum,
    soundness_bits,
)

SEED = hashlib.sha256(b"test_sealed_sum").digest()
PARTIES = ("h1", "h2", "h3", "h4", "h5")


def _inputs(length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        p: rng.integers(-(2**40), 2**40, length).astype(np.int64).view(np.uint64)
        for p in PARTIES
    }


def _sealed_total(sealer: SealedSum, inputs: dict[str, np.ndarray]) -> np.ndarray:
    total = np.zeros(sealer.sealed_length, dtype=np.uint64)
    for party, values in inputs.items():
        np.add(
            total, SealedSum(SEED, "s", sealer.length).seal(party, values), out=total
        )
    return total


@pytest.mark.parametrize("length", [1, 7, WIDTH, WIDTH + 1, 3 * WIDTH + 5])
def test_the_checksums_are_the_tensor_forms_of_the_docstring(length: int) -> None:
    sealer = SealedSum(SEED, "s", length)
    x = np.random.default_rng(length).integers(0, 2**64, length, dtype=np.uint64)
    v, u = sealer._vu()
    expected = []
    for g in range(DEFAULT_CHECKS // PER_GROUP):
        for r in range(PER_GROUP):
            acc = sum(
                int(u[j // WIDTH, g, r]) * int(v[j % WIDTH, g]) * int(x[j])
                for j in range(length)
            )
            expected.append(acc % 2**64)
    assert [int(c) for c in sealer.checksums(x)] == expected


@pytest.mark.parametrize("length", [1, 300, 5000])
def test_open_returns_the_sum_of_what_was_sealed(length: int) -> None:
    inputs = _inputs(length)
    sealer = SealedSum(SEED, "s", length)
    opened = sealer.open(_sealed_total(sealer, inputs), PARTIES)
    assert np.array_equal(opened, sum(inputs.values()))


def test_open_over_the_survivors_only() -> None:
    inputs = _inputs(1000, seed=1)
    survivors = PARTIES[:3]
    sealer = SealedSum(SEED, "s", 1000)
    total = _sealed_total(sealer, {p: inputs[p] for p in survivors})
    assert np.array_equal(
        sealer.open(total, survivors), sum(inputs[p] for p in survivors)
    )
    with pytest.raises(ProtocolError, match="does not verify"):
        sealer.open(total, PARTIES[:4])  # one more survivor than summed


def test_the_unmasked_sum_does_not_show_the_values() -> None:
    inputs = {p: np.zeros(4096, dtype=np.uint64) for p in PARTIES}
    total = _sealed_total(SealedSum(SEED, "s", 4096), inputs)
    # All-zero inputs: what the coordinator unmasks is the masks' sum, which
    # looks uniform (each bit set about half the time), not zeros.
    bits = np.unpackbits(total.view(np.uint8)).mean()
    assert 0.45 < bits < 0.55


@pytest.mark.parametrize(
    "delta",
    [
        1,
        2**63,  # beyond the decode bound at once
        2 ** (BOUND_BITS + 1),  # the largest valuation a bounded value allows
        2**BOUND_BITS,
        -(2**20),
    ],
)
@pytest.mark.parametrize("index", [0, WIDTH - 1, 999])
def test_any_altered_value_is_refused(delta: int, index: int) -> None:
    inputs = _inputs(1000, seed=2)
    sealer = SealedSum(SEED, "s", 1000)
    total = _sealed_total(sealer, inputs)
    total[index : index + 1] += np.uint64(delta % 2**64)
    with pytest.raises(ProtocolError) as caught:
        sealer.open(total, PARTIES)
    assert "does not verify" in str(caught.value)
    assert str(int(sum(inputs.values())[index])) not in str(caught.value)


def test_an_altered_checksum_is_refused() -> None:
    sealer = SealedSum(SEED, "s", 1000)
    for slot in range(sealer.checks):
        total = _sealed_total(sealer, _inputs(1000, seed=3))
        total[1000 + slot : 1001 + slot] += np.uint64(2**63)
        with pytest.raises(ProtocolError, match="does not verify"):
            sealer.open(total, PARTIES)


def test_a_consistent_forgery_needs_the_coefficients() -> None:
    """Altering a value and every checksum by what it would change them by
    verifies only with the true coefficients, which need the seed."""
    inputs = _inputs(1000, seed=4)
    true = SealedSum(SEED, "s", 1000)
    total = _sealed_total(true, inputs)
    delta = np.zeros(1000, dtype=np.uint64)
    delta[17] = np.uint64(2 ** (BOUND_BITS - 1))  # high valuation, in bounds
    guessed = SealedSum(hashlib.sha256(b"another seed").digest(), "s", 1000)
    forged = total.copy()
    forged[:1000] += delta
    forged[1000:] += guessed.checksums(delta)
    with pytest.raises(ProtocolError, match="does not verify"):
        true.open(forged, PARTIES)
    forged[1000:] += true.checksums(delta) - guessed.checksums(delta)
    assert np.array_equal(true.open(forged, PARTIES), sum(inputs.values()) + delta)


def test_a_value_beyond_the_decode_bound_is_refused_even_if_sealed() -> None:
    sealer = SealedSum(SEED, "s", 10)
    big = np.full(10, 2**BOUND_BITS + 1, dtype=np.uint64)
    zeros = np.zeros(10, dtype=np.uint64)
    inputs = {p: (big if p == "h1" else zeros) for p in PARTIES}
    with pytest.raises(ProtocolError, match="does not verify"):
        sealer.open(_sealed_total(sealer, inputs), PARTIES)


def test_sessions_and_seeds_give_unrelated_masks_and_checks() -> None:
    a = SealedSum(SEED, "job/values", 500)
    b = SealedSum(SEED, "job/counts", 500)
    x = np.arange(500, dtype=np.uint64)
    assert not np.array_equal(a.mask("h1"), b.mask("h1"))
    assert not np.array_equal(a.mask("h1"), a.mask("h2"))
    assert not np.array_equal(a.checksums(x), b.checksums(x))


def test_the_default_meets_the_soundness_goal() -> None:
    assert soundness_bits() >= 40
    assert soundness_bits(DEFAULT_CHECKS - PER_GROUP) < soundness_bits()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seed": b"short"},
        {"length": 0},
        {"length": True},
        {"checks": 3},
        {"checks": 0},
        {"checks": 66},
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"seed": SEED, "session": "s", "length": 10}
    args.update(kwargs)
    with pytest.raises(ProtocolError):
        SealedSum(**args)  # type: ignore[arg-type]


def test_wrong_shapes_are_refused() -> None:
    sealer = SealedSum(SEED, "s", 10)
    with pytest.raises(ProtocolError):
        sealer.seal("h1", np.zeros(11, dtype=np.uint64))
    with pytest.raises(ProtocolError):
        sealer.seal("h1", np.zeros(10, dtype=np.int64))
    with pytest.raises(ProtocolError):
        sealer.open(np.zeros(10, dtype=np.uint64), PARTIES)
