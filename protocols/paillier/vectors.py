"""Encrypted packed vectors and their homomorphic operations (sums, scalings, dots).

Results of these operations are *not* re-randomised: their randomness is a
function of their inputs' (a party that knows an input's randomness could strip
it), so they carry ``obfuscated=False`` and ``Encryptor.to_bytes`` re-randomises
them before they are sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce

import gmpy2
import numpy as np
import numpy.typing as npt
from gmpy2 import mpz

from cleanroom.errors import ProtocolError
from protocols.paillier.fixedbase import multi_exp
from protocols.paillier.keys import PublicKey
from protocols.paillier.packing import PackingLayout


@dataclass(frozen=True, repr=False)
class EncryptedVector:
    """``length`` values under ``key``, ``layout.slots`` per ciphertext if ``packed``.

    ``bound`` is the largest magnitude any slot can have given how the vector was
    made (the headroom already used); operations refuse to exceed
    ``layout.capacity`` and decryption refuses any slot beyond ``bound``.
    ``obfuscated`` is True only while every ciphertext carries fresh randomness of
    its creator (a new encryption or a re-randomisation).
    """

    key: PublicKey
    layout: PackingLayout
    length: int
    packed: bool
    ciphertexts: tuple[mpz, ...]
    bound: int
    obfuscated: bool

    def __post_init__(self) -> None:
        if self.layout.modulus_bits != self.key.bits:
            raise ProtocolError("the packing layout is for another key size")
        if len(self.ciphertexts) != self.layout.ciphertexts_for(
            self.length, packed=self.packed
        ):
            raise ProtocolError("ciphertext count does not match the vector length")
        if not 0 <= self.bound <= self.layout.capacity:
            raise ProtocolError("the vector's bound exceeds the slot headroom")

    def derived(self, ciphertexts: Sequence[mpz], bound: int) -> EncryptedVector:
        """A result of an operation on this vector: same shape, not obfuscated."""
        return EncryptedVector(
            self.key,
            self.layout,
            self.length,
            self.packed,
            tuple(ciphertexts),
            bound,
            obfuscated=False,
        )

    def __add__(self, other: EncryptedVector) -> EncryptedVector:
        return sum_vectors([self, other])

    def __repr__(self) -> str:
        kind = "packed" if self.packed else "one per ciphertext"
        return (
            f"EncryptedVector({self.length} values {kind}, {len(self.ciphertexts)} "
            f"ciphertexts, key {self.key.fingerprint[:8].hex()})"
        )


def sum_vectors(vectors: Sequence[EncryptedVector]) -> EncryptedVector:
    """The slot-wise sum of vectors of one shape (e.g. every party's contribution)."""
    first = _check_alike(vectors)
    bound = _checked_bound(first, sum(v.bound for v in vectors), "the sum")
    nsquare = first.key.nsquare
    columns = zip(*(v.ciphertexts for v in vectors), strict=True)
    return first.derived(
        [reduce(lambda a, b: a * b % nsquare, column) for column in columns], bound
    )


def scale(vector: EncryptedVector, factor: int) -> EncryptedVector:
    """Every slot multiplied by the integer ``factor`` (any sign)."""
    factor = _integer(factor, "factor")
    bound = _checked_bound(vector, vector.bound * abs(factor), "the scaled vector")
    nsquare = vector.key.nsquare
    bases = vector.ciphertexts
    if factor < 0:
        bases = tuple(gmpy2.invert(c, nsquare) for c in bases)
    return vector.derived([gmpy2.powmod(c, abs(factor), nsquare) for c in bases], bound)


def linear_combination(
    vectors: Sequence[EncryptedVector], coefficients: Sequence[int]
) -> EncryptedVector:
    """sum_v coefficients[v] * vectors[v], slot-wise, by one multi-exponentiation
    per ciphertext position."""
    first = _check_alike(vectors)
    if len(coefficients) != len(vectors):
        raise ProtocolError("one coefficient per vector is needed")
    factors = [_integer(k, "coefficient") for k in coefficients]
    total = sum(abs(k) * v.bound for k, v in zip(factors, vectors, strict=True))
    bound = _checked_bound(first, total, "the linear combination")
    nsquare = first.key.nsquare
    columns = zip(*(v.ciphertexts for v in vectors), strict=True)
    return first.derived(
        [multi_exp(list(column), factors, nsquare) for column in columns], bound
    )


def dot(
    column: EncryptedVector, matrix: npt.ArrayLike, *, path: str = "matrix"
) -> EncryptedVector:
    """sum_i x_ij * column_i for every column j of the integer ``matrix`` (m x f).

    ``column`` holds one value per ciphertext (``packed=False``), as vertical
    logistic regression's encrypted residuals do; the f results come back packed.
    Each ciphertext is raised once to the packed integer sum_j x_ij 2^(s*j), so
    row i costs one exponentiation for up to ``slots`` features, and the rows are
    combined by a multi-exponentiation.
    """
    if column.packed:
        raise ProtocolError("dot needs a vector encrypted one value per ciphertext")
    rows = _integer_matrix(matrix, column.length, path)
    features = len(rows[0]) if rows else 0
    if features == 0:
        raise ProtocolError(f"{path}: the matrix has no columns")
    weight = max(sum(abs(row[j]) for row in rows) for j in range(features))
    bound = _checked_bound(column, column.bound * weight, f"{path}: the dot product")
    layout, shift = column.layout, column.layout.slot_bits
    nsquare = column.key.nsquare
    results = []
    for start in range(0, features, layout.slots):
        exponents = []
        for row in rows:
            packed = 0
            for value in reversed(row[start : start + layout.slots]):
                packed = (packed << shift) + value
            exponents.append(packed)
        results.append(multi_exp(list(column.ciphertexts), exponents, nsquare))
    return EncryptedVector(
        column.key, layout, features, True, tuple(results), bound, obfuscated=False
    )


def _check_alike(vectors: Sequence[EncryptedVector]) -> EncryptedVector:
    if not vectors:
        raise ProtocolError("at least one encrypted vector is needed")
    first = vectors[0]
    for other in vectors[1:]:
        if other.key != first.key:
            raise ProtocolError("encrypted vectors are under different keys")
        if (other.layout, other.length, other.packed) != (
            first.layout,
            first.length,
            first.packed,
        ):
            raise ProtocolError("encrypted vectors differ in layout or length")
    return first


def _checked_bound(vector: EncryptedVector, bound: int, what: str) -> int:
    if bound > vector.layout.capacity:
        raise ProtocolError(
            f"{what} could overflow the {vector.layout.slot_bits}-bit slots "
            f"(the layout has room for {vector.layout.additions} additions)"
        )
    return bound


def _integer(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ProtocolError(f"the {what} must be an integer")
    return int(value)


def _integer_matrix(matrix: npt.ArrayLike, rows: int, path: str) -> list[list[int]]:
    array = np.asarray(matrix)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2 or array.shape[0] != rows:
        raise ProtocolError(f"{path}: expected {rows} rows of integers")
    if array.dtype.kind not in "iuO":
        raise ProtocolError(f"{path}: the matrix must hold integers")
    values: list[list[int]] = array.tolist()
    for row in values:
        for value in row:
            _integer(value, f"{path} entry")
    return values
