"""Hazardous arithmetic: fixed-base window tables and multi-exponentiation mod m.

Nothing here is encryption by itself: these are the exponentiations that the
obfuscator (h_s^a) and the homomorphic dot products are built from. Use
``protocols.paillier.Encryptor`` and ``protocols.paillier.vectors`` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import gmpy2
import numpy as np
import numpy.typing as npt
from gmpy2 import mpz

from cleanroom.errors import ConfigError, ProtocolError

MAX_WINDOW_BITS: Final = 12
MAX_TABLE_BYTES: Final = 64 << 20
"""A fixed-base table never takes more memory than this (per process)."""

Table = tuple[tuple[mpz, ...], ...]
"""``table[i][d] = base^(d * 2^(w*(first + i)))`` for d in 0..2^(w-1)."""
Digits = npt.NDArray[np.int64]
"""Exponents as rows of base-2^w digits, least significant window first."""
Fraction = tuple[mpz, mpz]
"""A power as numerator and denominator: negative digits go below the line."""


def exponent_windows(exponent_bits: int, window: int) -> int:
    """How many w-bit windows cover an exponent (its length rounds up to whole ones)."""
    return -(-exponent_bits // window)


def table_windows(exponent_bits: int, window: int) -> int:
    """Windows of a table for signed digits: one more, for the final carry."""
    return exponent_windows(exponent_bits, window) + 1


def table_cost(exponent_bits: int, window: int) -> int:
    """Multiplications to build a table: 2^(w-1) per window."""
    return table_windows(exponent_bits, window) << (window - 1)


def power_cost(exponent_bits: int, window: int) -> int:
    """Multiplications per power: one per window, plus ~4 for the batch inversion."""
    return table_windows(exponent_bits, window) + 4


def choose_window(exponent_bits: int, count: int, modulus_bits: int) -> int:
    """The window minimising table building plus ``count`` exponentiations.

    With signed digits a table costs 2^(w-1) multiplications per window and each
    exponentiation one per window; tables above MAX_TABLE_BYTES are not considered.
    """
    entry_bytes = (modulus_bits + 7) // 8
    best, best_cost = 1, float("inf")
    for window in range(1, MAX_WINDOW_BITS + 1):
        entries = table_windows(exponent_bits, window) * ((1 << (window - 1)) + 1)
        if entries * entry_bytes > MAX_TABLE_BYTES:
            break
        cost = table_cost(exponent_bits, window) + count * power_cost(
            exponent_bits, window
        )
        if cost < best_cost:
            best, best_cost = window, cost
    return best


def random_digits(raw: bytes, count: int, exponent_bits: int, window: int) -> Digits:
    """Split ``count`` uniformly random exponents of whole windows into digits.

    ``raw`` holds ``count * ceil(windows * w / 8)`` random bytes; exponent k is the
    little-endian integer of its bytes, cut to windows * w bits, so it is uniform
    in [0, 2^(windows * w)).
    """
    windows = exponent_windows(exponent_bits, window)
    total_bits = windows * window
    width = (total_bits + 7) // 8
    if len(raw) != count * width:
        raise ConfigError(
            f"the random source gave {len(raw)} bytes, not {count * width}"
        )
    octets = np.frombuffer(raw, dtype=np.uint8).reshape(count, width)
    bits = np.unpackbits(octets, axis=1, bitorder="little")[:, :total_bits]
    weights = np.left_shift(np.int64(1), np.arange(window, dtype=np.int64))
    digits: Digits = bits.reshape(count, windows, window).astype(np.int64) @ weights
    return digits


def signed_digits(digits: Digits, window: int) -> Digits:
    """The same exponents in digits of [-2^(w-1), 2^(w-1)], one window longer.

    A digit of 2^(w-1) or more becomes digit - 2^w and carries one into the next
    window, so a table needs only the powers 0..2^(w-1) of each window's base.
    """
    count, windows = digits.shape
    signed = np.zeros((count, windows + 1), dtype=np.int64)
    carry = np.zeros(count, dtype=np.int64)
    for i in range(windows):
        value = digits[:, i] + carry
        carry = (value >= 1 << (window - 1)).astype(np.int64)
        signed[:, i] = value - (carry << window)
    signed[:, windows] = carry
    return signed


def window_table(base: mpz, modulus: mpz, window: int, first: int, last: int) -> Table:
    """The fixed-base table for windows [first, last): 2^(w-1) products each."""
    step = gmpy2.powmod(base, mpz(1) << (window * first), modulus)
    rows = []
    for _ in range(first, last):
        row = [mpz(1), step]
        for _ in range(2, (1 << (window - 1)) + 1):
            row.append(row[-1] * step % modulus)
        rows.append(tuple(row))
        step = row[-1] * row[-1] % modulus
    return tuple(rows)


def fixed_base_fractions(table: Table, modulus: mpz, signed: Digits) -> list[Fraction]:
    """base^e mod m as (numerator, denominator) for exponents in signed digits."""
    results = []
    for row in signed.tolist():
        above, below = mpz(1), mpz(1)
        for entries, digit in zip(table, row, strict=True):
            if digit > 0:
                above = above * entries[digit] % modulus
            elif digit < 0:
                below = below * entries[-digit] % modulus
        results.append((above, below))
    return results


def resolve(fractions: Sequence[Fraction], modulus: mpz) -> list[mpz]:
    """numerator / denominator for each fraction, with a single modular inversion.

    Montgomery's trick: invert the product of all denominators once, then peel
    each inverse off with two multiplications.
    """
    prefix, running = [], mpz(1)
    for _, below in fractions:
        prefix.append(running)
        running = running * below % modulus
    inverse = gmpy2.invert(running, modulus)
    results = [mpz(0)] * len(fractions)
    for k in range(len(fractions) - 1, -1, -1):
        above, below = fractions[k]
        results[k] = above * inverse % modulus * prefix[k] % modulus
        inverse = inverse * below % modulus
    return results


def fixed_base_powers(table: Table, modulus: mpz, signed: Digits) -> list[mpz]:
    """base^e mod m for each exponent in signed digits over the table."""
    return resolve(fixed_base_fractions(table, modulus, signed), modulus)


def multi_exp(bases: Sequence[mpz], exponents: Sequence[int], modulus: mpz) -> mpz:
    """prod_i bases[i]^exponents[i] mod m (exponents of any sign; bases units).

    Negative exponents are gathered into one denominator inverted once; each part
    uses Pippenger's bucket method when it beats one powmod per base.
    """
    if len(bases) != len(exponents):
        raise ProtocolError("multi_exp: as many exponents as bases are needed")
    positive = [(b, e) for b, e in zip(bases, exponents, strict=True) if e > 0]
    negative = [(b, -e) for b, e in zip(bases, exponents, strict=True) if e < 0]
    result = _multi_exp_positive(positive, modulus)
    if negative:
        result = result * gmpy2.invert(_multi_exp_positive(negative, modulus), modulus)
    return result % modulus


def _multi_exp_positive(pairs: Sequence[tuple[mpz, int]], modulus: mpz) -> mpz:
    if not pairs:
        return mpz(1)
    bits = max(e.bit_length() for _, e in pairs)
    window = _bucket_window(len(pairs), bits)
    if window == 0:
        acc = mpz(1)
        for base, exponent in pairs:
            acc = acc * gmpy2.powmod(base, exponent, modulus) % modulus
        return acc
    mask = (1 << window) - 1
    acc = mpz(1)
    for shift in range(exponent_windows(bits, window) * window - window, -1, -window):
        for _ in range(window):
            acc = acc * acc % modulus
        buckets: dict[int, mpz] = {}
        for base, exponent in pairs:
            digit = (exponent >> shift) & mask
            if digit:
                held = buckets.get(digit)
                buckets[digit] = base if held is None else held * base % modulus
        # sum_d d * bucket[d] as a running product from the top digit down.
        running, total = mpz(1), mpz(1)
        for digit in range(mask, 0, -1):
            held = buckets.get(digit)
            if held is not None:
                running = running * held % modulus
            if running != 1:
                total = total * running % modulus
        acc = acc * total % modulus
    return acc


def _bucket_window(count: int, bits: int) -> int:
    """Pippenger's window for ``count`` bases, or 0 when separate powmods are cheaper.

    A powmod costs about 1.2 * bits multiplications (its squarings are not
    shared); the bucket method about bits/c * (count + 2^(c+1)) + bits.
    """
    separate = 1.2 * bits * count
    best, best_cost = 0, separate
    for window in range(1, 17):
        cost = exponent_windows(bits, window) * (count + (2 << window)) + bits
        if cost < best_cost:
            best, best_cost = window, cost
    return best
