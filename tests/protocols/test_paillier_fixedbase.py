"""Fixed-base tables, signed digits and multi-exponentiation against plain powmod.

Test-only small modulus (a 512-bit odd number): the arithmetic does not depend on
the size, and the 3072-bit path is checked in test_paillier_vectors.
"""

from __future__ import annotations

import gmpy2
import numpy as np
from gmpy2 import mpz
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.paillier.fixedbase import (
    choose_window,
    exponent_windows,
    fixed_base_powers,
    multi_exp,
    random_digits,
    signed_digits,
    table_windows,
    window_table,
)


def digits_to_exponent(digits: list[int], window: int) -> int:
    """The integer whose base-2^w digits (least significant first) are ``digits``."""
    return sum(digit << (window * i) for i, digit in enumerate(digits))


MODULUS = gmpy2.next_prime(mpz(1) << 511) * gmpy2.next_prime(mpz(3) << 254)


@settings(max_examples=50, deadline=None)
@given(
    raw=st.binary(min_size=64, max_size=64),
    window=st.integers(1, 9),
)
def test_signed_digits_keep_the_exponent(raw: bytes, window: int) -> None:
    bits = 120
    width = (exponent_windows(bits, window) * window + 7) // 8
    count = len(raw) // width
    digits = random_digits(raw[: count * width], count, bits, window)
    signed = signed_digits(digits, window)
    assert np.abs(signed).max() <= 1 << (window - 1)
    for row, signed_row in zip(digits.tolist(), signed.tolist(), strict=True):
        value = sum(d << (window * i) for i, d in enumerate(signed_row))
        assert value == digits_to_exponent(row, window)
        assert 0 <= value < 1 << (exponent_windows(bits, window) * window)


@settings(max_examples=20, deadline=None)
@given(raw=st.binary(min_size=90, max_size=90), window=st.integers(1, 7))
def test_table_powers_equal_powmod(raw: bytes, window: int) -> None:
    bits, count = 200, 3
    width = (exponent_windows(bits, window) * window + 7) // 8
    digits = random_digits((raw * 3)[: count * width], count, bits, window)
    base = mpz(0xC0FFEE)
    table = window_table(base, MODULUS, window, 0, table_windows(bits, window))
    powers = fixed_base_powers(table, MODULUS, signed_digits(digits, window))
    expected = [
        gmpy2.powmod(base, digits_to_exponent(row, window), MODULUS)
        for row in digits.tolist()
    ]
    assert powers == expected


def test_window_grows_with_the_batch() -> None:
    windows = [choose_window(1536, count, 6144) for count in (1, 10, 223, 5000)]
    assert windows == sorted(windows) and windows[0] < windows[-1]


@settings(max_examples=25, deadline=None)
@given(exponents=st.lists(st.integers(-(2**300), 2**300), min_size=1, max_size=40))
def test_multi_exp_matches_separate_powmods(exponents: list[int]) -> None:
    bases = [mpz(7 + 2 * k) for k in range(len(exponents))]
    expected = mpz(1)
    for base, exponent in zip(bases, exponents, strict=True):
        expected = expected * gmpy2.powmod(base, exponent, MODULUS) % MODULUS
    assert multi_exp(bases, exponents, MODULUS) == expected
