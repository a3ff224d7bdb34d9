"""Encryption with the DJN short-exponent obfuscator, re-randomisation, decryption.

A ciphertext of plaintext m is (1 + m*n) * h_s^a mod n^2 with ``a`` uniform in
[0, 2^L), L = bits(n)/2 rounded up to whole table windows (1536 bits at 3072):
h_s^a replaces Paillier's r^n (see the package docstring for the assumption).
h_s^a comes from a precomputed fixed-base window table, so it costs about L/w
multiplications mod n^2 instead of a full exponentiation; the key holder, who
knows p and q, computes it mod p^2 and q^2 and combines by CRT.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy.typing as npt
from gmpy2 import mpz

from cleanroom.errors import ProtocolError
from protocols.paillier import wire
from protocols.paillier.batch import CryptoPool, crt_decrypt, partial_fractions
from protocols.paillier.fixedbase import (
    Digits,
    Fraction,
    Table,
    choose_window,
    exponent_windows,
    fixed_base_powers,
    power_cost,
    random_digits,
    resolve,
    signed_digits,
    table_cost,
    table_windows,
    window_table,
)
from protocols.paillier.keys import PrivateKey, PublicKey
from protocols.paillier.packing import PackingLayout
from protocols.paillier.vectors import EncryptedVector
from protocols.party import SYSTEM_RANDOM, RandomSource


def exponent_bits(key: PublicKey) -> int:
    """L, the obfuscator's exponent length before rounding up to whole windows."""
    return key.bits // 2


class Encryptor:
    """Encrypts and re-randomises under ``key``; the key holder passes its ``private``.

    The fixed-base table built for the first batch is kept for later ones (one
    table, at most ``fixedbase.MAX_TABLE_BYTES``), so a long-lived encryptor pays
    for it once; a new encryptor (a new job, a new party) builds its own. ``pool``
    (optional) takes batches large enough to pay for it. Randomness comes from
    ``random`` (os.urandom unless a test injects a source).
    """

    def __init__(
        self,
        key: PublicKey,
        *,
        private: PrivateKey | None = None,
        pool: CryptoPool | None = None,
        random: RandomSource = SYSTEM_RANDOM,
    ) -> None:
        if private is not None and private.public != key:
            raise ProtocolError("the private key does not belong to this public key")
        self.key = key
        self._private = private
        self._pool = pool
        self._random = random
        self._tables: dict[int, list[Table]] = {}

    def encrypt_integers(
        self,
        values: npt.ArrayLike,
        layout: PackingLayout,
        *,
        path: str = "values",
        names: Sequence[str] = (),
        packed: bool = True,
    ) -> EncryptedVector:
        """Encrypt already scaled integers; every value is range-checked first."""
        ints = layout.integers(values, path=path, names=names)
        return self._encrypt(ints, layout, packed)

    def encrypt_reals(
        self,
        values: npt.ArrayLike,
        layout: PackingLayout,
        *,
        path: str = "values",
        names: Sequence[str] = (),
        packed: bool = True,
    ) -> EncryptedVector:
        """Encrypt reals at the layout's fixed-point scale, range-checked first."""
        ints = layout.reals(values, path=path, names=names)
        return self._encrypt(ints, layout, packed)

    def rerandomize(self, vector: EncryptedVector) -> EncryptedVector:
        """The same plaintexts under fresh randomness: c * h_s^a for a new ``a``."""
        self._check_key(vector)
        nsquare = self.key.nsquare
        masks = self.obfuscators(len(vector.ciphertexts))
        return EncryptedVector(
            vector.key,
            vector.layout,
            vector.length,
            vector.packed,
            tuple(
                c * r % nsquare for c, r in zip(vector.ciphertexts, masks, strict=True)
            ),
            vector.bound,
            obfuscated=True,
        )

    def to_bytes(
        self, vector: EncryptedVector, *, context: bytes, rerandomize: bool = True
    ) -> bytes:
        """Serialise ``vector`` for sending, re-randomising it unless still fresh.

        ``rerandomize=False`` is for intermediate values that stay on this node
        (e.g. written to its own spool); such bytes must never be sent, because a
        derived ciphertext's randomness can reveal the operands to whoever knows
        theirs.
        """
        self._check_key(vector)
        if rerandomize and not vector.obfuscated:
            vector = self.rerandomize(vector)
        return wire.vector_to_bytes(vector, context=context)

    def obfuscators(self, count: int) -> list[mpz]:
        """``count`` fresh values h_s^a mod n^2, ``a`` uniform of L bits."""
        if count == 0:
            return []
        crt = None if self._private is None else self._private.crt
        moduli = (
            [(self.key.hs, self.key.nsquare)]
            if crt is None
            else [(crt.hs_p, crt.psquare), (crt.hs_q, crt.qsquare)]
        )
        modulus_bits = moduli[0][1].bit_length()
        bits = exponent_bits(self.key)
        # A table this encryptor already built is reused; else the window suits
        # this batch (a table costs 2^(w-1) products per window).
        window = next(iter(self._tables), 0) or choose_window(bits, count, modulus_bits)
        width = (exponent_windows(bits, window) * window + 7) // 8
        raw = random_digits(self._random(count * width), count, bits, window)
        signed = signed_digits(raw, window)
        windows = table_windows(bits, window)
        per_batch = count * power_cost(bits, window) * len(moduli)
        table = table_cost(bits, window) * len(moduli)
        serial = per_batch + (0 if window in self._tables else table)
        pool = self._pool
        if pool is not None and pool.worth_it(serial, per_batch + table, modulus_bits):
            powers = self._pooled_powers(pool, moduli, window, windows, signed)
        else:
            tables = self._tables.get(window)
            if tables is None:
                tables = [window_table(b, m, window, 0, windows) for b, m in moduli]
                self._tables = {window: tables}
            powers = [
                fixed_base_powers(t, modulus, signed)
                for t, (_, modulus) in zip(tables, moduli, strict=True)
            ]
        if crt is None:
            return powers[0]
        return [crt.combine_ciphertext(a, b) for a, b in zip(*powers, strict=True)]

    @staticmethod
    def _pooled_powers(
        pool: CryptoPool,
        moduli: list[tuple[mpz, mpz]],
        window: int,
        windows: int,
        signed: Digits,
    ) -> list[list[mpz]]:
        # Each worker builds the table of its own windows only, so the table's
        # cost is split too; the key holder's two primes go to separate workers.
        pieces = max(1, pool.workers // len(moduli))
        cuts = [windows * k // pieces for k in range(pieces + 1)]
        tasks = [
            (base, modulus, window, lo, hi, signed[:, lo:hi])
            for base, modulus in moduli
            for lo, hi in itertools.pairwise(cuts)
        ]
        parts = pool.run(partial_fractions, tasks)
        return [
            resolve(_multiply(parts[k * pieces : (k + 1) * pieces], modulus), modulus)
            for k, (_, modulus) in enumerate(moduli)
        ]

    def _encrypt(
        self, ints: list[int], layout: PackingLayout, packed: bool
    ) -> EncryptedVector:
        if layout.modulus_bits != self.key.bits:
            raise ProtocolError("the packing layout is for another key size")
        n, nsquare = self.key.n, self.key.nsquare
        plaintexts = layout.pack(ints, int(n), packed=packed)
        masks = self.obfuscators(len(plaintexts))
        ciphertexts = tuple(
            (1 + m * n) * r % nsquare for m, r in zip(plaintexts, masks, strict=True)
        )
        # The declared bound, not the data's: the bound travels with the vector.
        return EncryptedVector(
            self.key,
            layout,
            len(ints),
            packed,
            ciphertexts,
            layout.max_value,
            obfuscated=True,
        )

    def _check_key(self, vector: EncryptedVector) -> None:
        if vector.key != self.key:
            raise ProtocolError("the vector is encrypted under another key")

    def __repr__(self) -> str:
        holder = ", key holder" if self._private is not None else ""
        return f"Encryptor({self.key!r}{holder})"


def decrypt_vector(
    private: PrivateKey, vector: EncryptedVector, *, pool: CryptoPool | None = None
) -> list[int]:
    """The exact signed integers in ``vector``; refuses any slot that overflowed."""
    if vector.key != private.public:
        raise ProtocolError("the vector is encrypted under another key")
    crt, ciphertexts = private.crt, list(vector.ciphertexts)
    # One CRT decryption is two exponentiations of bits/2 bits mod p^2 and q^2.
    mulmods = len(ciphertexts) * 2.4 * crt.p.bit_length()
    if pool is not None and pool.worth_it(mulmods, mulmods, crt.psquare.bit_length()):
        chunks = [ciphertexts[k :: pool.workers] for k in range(pool.workers)]
        parts = pool.run(crt_decrypt, [(crt, chunk) for chunk in chunks])
        plaintexts: list[mpz] = [mpz(0)] * len(ciphertexts)
        for k, part in enumerate(parts):
            plaintexts[k :: pool.workers] = part
    else:
        plaintexts = crt_decrypt(crt, ciphertexts)
    return vector.layout.unpack(
        plaintexts,
        int(vector.key.n),
        length=vector.length,
        bound=vector.bound,
        packed=vector.packed,
    )


def _multiply(parts: list[list[Fraction]], modulus: mpz) -> list[Fraction]:
    result = parts[0]
    for part in parts[1:]:
        result = [
            (a * c % modulus, b * d % modulus)
            for (a, b), (c, d) in zip(result, part, strict=True)
        ]
    return result
