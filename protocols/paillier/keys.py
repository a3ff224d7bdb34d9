"""Paillier keys: generation, validation, fingerprints and explicit serialisation."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from typing import Any, Final, NoReturn

import gmpy2
from gmpy2 import mpz
from phe import paillier

from cleanroom.errors import ConfigError, ProtocolError
from protocols.party import SYSTEM_RANDOM, RandomSource

DEFAULT_BITS: Final = 3072
"""NIST SP 800-57 Part 1: a 3072-bit factoring modulus gives 128-bit security."""
LEGACY_BITS: Final = 2048
"""About 112-bit security: only with ``allow_legacy_2048=True``, which callers log."""
MAX_BITS: Final = 8192
"""Larger moduli are refused so that a hostile key cannot make every step slow."""
SMALL_PRIME_BOUND: Final = 1 << 16
"""Public keys whose modulus has a prime factor below this bound are refused."""
PRIME_ROUNDS: Final = 40
"""Miller-Rabin rounds (after GMP's BPSW test) for generated and loaded primes."""

_PUBLIC_MAGIC: Final = b"CRPK"
_PRIVATE_MAGIC: Final = b"CRSK"
_VERSION: Final = 1
_FINGERPRINT_DOMAIN: Final = b"cleanroom/paillier/v1/public-key\x00"
MAX_PUBLIC_KEY_BYTES: Final = 7 + 3 * (MAX_BITS // 8)
MAX_PRIVATE_KEY_BYTES: Final = MAX_PUBLIC_KEY_BYTES + 9 + MAX_BITS // 8


def check_key_bits(bits: int, *, allow_legacy_2048: bool) -> bool:
    """Refuse (ConfigError) a modulus size below policy; return True if legacy."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ConfigError(f"key size must be an int, got {bits!r}")
    if bits > MAX_BITS:
        raise ConfigError(f"key size {bits} exceeds the {MAX_BITS}-bit maximum")
    if bits >= DEFAULT_BITS:
        return False
    if bits >= LEGACY_BITS and allow_legacy_2048:
        return True
    hint = " (2048 needs allow_legacy_2048=True)" if bits >= LEGACY_BITS else ""
    raise ConfigError(
        f"key size {bits} is below the {DEFAULT_BITS}-bit minimum for 128-bit "
        f"security{hint}"
    )


class PublicKey:
    """A validated Paillier public key with g = n + 1 and the DJN base h_s.

    ``phe`` is the python-paillier key object for interoperability. ``hs`` is
    h^n mod n^2 for h = -y^2 mod n (y random, chosen by the key holder): the fixed
    base of the short-exponent obfuscator (see the package docstring). ``legacy``
    is True for a modulus below 3072 bits, accepted only when asked for.
    """

    __slots__ = ("bits", "fingerprint", "hs", "legacy", "n", "nsquare", "phe")

    def __init__(self, n: int, hs: int, *, allow_legacy_2048: bool = False) -> None:
        n, hs = mpz(n), mpz(hs)
        try:
            self.legacy = check_key_bits(
                n.bit_length(), allow_legacy_2048=allow_legacy_2048
            )
        except ConfigError as exc:
            raise ProtocolError(f"public key refused: {exc}") from None
        _check_modulus(n)
        nsquare = n * n
        _check_base(hs, n, nsquare)
        self.n = n
        self.nsquare = nsquare
        self.hs = hs
        self.bits = n.bit_length()
        self.phe: Any = paillier.PaillierPublicKey(int(n))
        self.fingerprint = hashlib.sha256(
            _FINGERPRINT_DOMAIN + public_key_to_bytes(self)
        ).digest()

    @classmethod
    def from_phe(
        cls, key: Any, hs: int, *, allow_legacy_2048: bool = False
    ) -> PublicKey:
        """Wrap a ``phe.PaillierPublicKey``; refuses any g other than n + 1."""
        if not isinstance(key, paillier.PaillierPublicKey):
            raise ProtocolError("expected a phe.PaillierPublicKey")
        if key.g != key.n + 1:
            raise ProtocolError("public key refused: g must be n + 1")
        return cls(key.n, hs, allow_legacy_2048=allow_legacy_2048)

    @property
    def ciphertext_bytes(self) -> int:
        """Fixed wire width of one ciphertext (an element of Z_{n^2})."""
        return (self.nsquare.bit_length() + 7) // 8

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        legacy = ", legacy" if self.legacy else ""
        return f"PublicKey({self.bits} bits{legacy}, {self.fingerprint[:8].hex()})"


class PrivateKey:
    """The key holder's secret: p and q, with CRT constants for fast operations.

    Never pickled and never in a repr; ``private_key_to_bytes`` is the only way to
    write it out.
    """

    __slots__ = ("_crt", "phe", "public")

    def __init__(self, public: PublicKey, p: int, q: int) -> None:
        p, q = sorted((mpz(p), mpz(q)))
        if p * q != public.n or p == q:
            raise ProtocolError("private key refused: p and q do not factor n")
        if not (gmpy2.is_prime(p, PRIME_ROUNDS) and gmpy2.is_prime(q, PRIME_ROUNDS)):
            raise ProtocolError("private key refused: a factor is not prime")
        self.public = public
        self.phe: Any = paillier.PaillierPrivateKey(public.phe, int(p), int(q))
        self._crt = CrtKey.create(p, q, public.hs)

    @property
    def crt(self) -> CrtKey:
        """The CRT constants; hazardous: they are the secret key."""
        return self._crt

    def __repr__(self) -> str:
        return f"PrivateKey(for {self.public!r})"

    def __reduce__(self) -> NoReturn:
        raise ConfigError("private keys are not pickled; use private_key_to_bytes")


@dataclass(frozen=True, repr=False)
class CrtKey:
    """p, q and what CRT decryption and encryption reuse (plain data for workers)."""

    p: mpz
    q: mpz
    psquare: mpz
    qsquare: mpz
    hp: mpz
    """L_p((1+n)^(p-1) mod p^2)^-1 mod p, the decryption constant mod p."""
    hq: mpz
    q_inv_p: mpz
    """q^-1 mod p, to combine the two halves of a plaintext."""
    qsquare_inv_psquare: mpz
    """q^-2 mod p^2, to combine the two halves of a ciphertext."""
    hs_p: mpz
    hs_q: mpz

    @classmethod
    def create(cls, p: mpz, q: mpz, hs: mpz) -> CrtKey:
        n = p * q
        psquare, qsquare = p * p, q * q
        return cls(
            p=p,
            q=q,
            psquare=psquare,
            qsquare=qsquare,
            hp=_decryption_constant(n, p, psquare),
            hq=_decryption_constant(n, q, qsquare),
            q_inv_p=gmpy2.invert(q, p),
            qsquare_inv_psquare=gmpy2.invert(qsquare, psquare),
            hs_p=hs % psquare,
            hs_q=hs % qsquare,
        )

    def combine_plaintext(self, mp: mpz, mq: mpz) -> mpz:
        return mq + self.q * ((mp - mq) * self.q_inv_p % self.p)

    def combine_ciphertext(self, cp: mpz, cq: mpz) -> mpz:
        return cq + self.qsquare * ((cp - cq) * self.qsquare_inv_psquare % self.psquare)

    def __repr__(self) -> str:
        return "CrtKey(<secret>)"


def _decryption_constant(n: mpz, prime: mpz, square: mpz) -> mpz:
    u = gmpy2.powmod(n + 1, prime - 1, square)
    return gmpy2.invert((u - 1) // prime, prime)


@dataclass(frozen=True, repr=False)
class KeyPair:
    """A fresh key pair; ``legacy`` says the caller chose a sub-3072-bit modulus."""

    public: PublicKey
    private: PrivateKey

    @property
    def legacy(self) -> bool:
        return self.public.legacy

    def __repr__(self) -> str:
        return f"KeyPair({self.public!r})"


def generate_keypair(
    bits: int = DEFAULT_BITS,
    *,
    allow_legacy_2048: bool = False,
    random: RandomSource = SYSTEM_RANDOM,
) -> KeyPair:
    """A new key: n = pq with p = q = 3 mod 4, gcd(p-1, q-1) = 2, |p - q| large.

    3072 bits by default; 2048 only with ``allow_legacy_2048=True`` (the returned
    pair's ``legacy`` flag is then set and the caller must log that choice);
    anything smaller is refused with ConfigError.
    """
    check_key_bits(bits, allow_legacy_2048=allow_legacy_2048)
    if bits % 2:
        raise ConfigError(f"key size must be even, got {bits}")
    half = bits // 2
    while True:
        p, q = _random_prime(half, random), _random_prime(half, random)
        # A small |p - q| would let Fermat's method factor n.
        if (p - q).bit_length() < half - 2 or gmpy2.gcd(p - 1, q - 1) != 2:
            continue
        n = p * q
        if n.bit_length() == bits:
            break
    # h = -y^2 has Jacobi symbol 1 but is not a square (-1 is not a square mod a
    # Blum integer), as in DJN; h_s = h^n is computed by CRT since we know p, q.
    y = _random_unit(n, random)
    h = (-y * y) % n
    psquare, qsquare = p * p, q * q
    hs_p = gmpy2.powmod(h, n % (p * (p - 1)), psquare)
    hs_q = gmpy2.powmod(h, n % (q * (q - 1)), qsquare)
    hs = hs_q + qsquare * ((hs_p - hs_q) * gmpy2.invert(qsquare, psquare) % psquare)
    public = PublicKey(n, hs, allow_legacy_2048=allow_legacy_2048)
    return KeyPair(public, PrivateKey(public, p, q))


def _random_prime(bits: int, random: RandomSource) -> mpz:
    while True:
        raw = mpz.from_bytes(random((bits + 7) // 8), "big")
        # Top two bits set so that the product of two such primes has 2*bits bits.
        candidate = gmpy2.f_mod_2exp(raw, bits) | (mpz(3) << (bits - 2)) | 3
        prime = gmpy2.next_prime(candidate)
        while prime % 4 != 3:
            prime = gmpy2.next_prime(prime)
        if prime.bit_length() == bits and gmpy2.is_prime(prime, PRIME_ROUNDS):
            return prime


def _random_unit(n: mpz, random: RandomSource) -> mpz:
    """Uniform in Z*_n up to 2^-64 statistical distance."""
    width = (n.bit_length() + 64 + 7) // 8
    while True:
        y = mpz.from_bytes(random(width), "big") % n
        if y > 1 and gmpy2.gcd(y, n) == 1:
            return y


@cache
def _small_primorial() -> mpz:
    product, prime = mpz(1), mpz(2)
    while prime < SMALL_PRIME_BOUND:
        product *= prime
        prime = gmpy2.next_prime(prime)
    return product


def _check_modulus(n: mpz) -> None:
    if n % 2 == 0:
        raise ProtocolError("public key refused: the modulus is even")
    if gmpy2.is_square(n):
        raise ProtocolError("public key refused: the modulus is a perfect square")
    if gmpy2.gcd(n, _small_primorial()) != 1:
        raise ProtocolError(
            f"public key refused: the modulus has a prime factor below "
            f"{SMALL_PRIME_BOUND}"
        )
    if gmpy2.is_prime(n, 1):
        raise ProtocolError("public key refused: the modulus is prime")


def _check_base(hs: mpz, n: mpz, nsquare: mpz) -> None:
    # An n-th residue h^n of h = -y^2 has Jacobi symbol 1 mod n; a base of order
    # 1 or 2, or one in the subgroup generated by 1 + n, would not hide anything.
    if not 1 < hs < nsquare - 1 or gmpy2.gcd(hs, n) != 1:
        raise ProtocolError("public key refused: h_s is not a unit mod n^2")
    if hs % n == 1 or hs * hs % nsquare == 1 or gmpy2.jacobi(hs % n, n) != 1:
        raise ProtocolError("public key refused: h_s is not a valid DJN base")


def public_key_to_bytes(key: PublicKey) -> bytes:
    """magic | version | u16 byte length L of n | n (L bytes) | h_s (2L bytes)."""
    width = (key.bits + 7) // 8
    return b"".join(
        [
            _PUBLIC_MAGIC,
            bytes([_VERSION]),
            width.to_bytes(2, "big"),
            key.n.to_bytes(width, "big"),
            key.hs.to_bytes(2 * width, "big"),
        ]
    )


def public_key_from_bytes(data: bytes, *, allow_legacy_2048: bool = False) -> PublicKey:
    """Parse and validate a public key; sizes are checked before any parsing."""
    if not isinstance(data, bytes) or len(data) > MAX_PUBLIC_KEY_BYTES:
        raise ProtocolError("public key is not bytes or is oversized")
    if data[:4] != _PUBLIC_MAGIC or len(data) < 7 or data[4] != _VERSION:
        raise ProtocolError("not a cleanroom Paillier public key")
    width = int.from_bytes(data[5:7], "big")
    if len(data) != 7 + 3 * width:
        raise ProtocolError("public key has the wrong length")
    n = mpz.from_bytes(data[7 : 7 + width], "big")
    hs = mpz.from_bytes(data[7 + width :], "big")
    if n.bit_length() <= 8 * (width - 1):
        raise ProtocolError("public key is not minimally encoded")
    return PublicKey(n, hs, allow_legacy_2048=allow_legacy_2048)


def private_key_to_bytes(key: PrivateKey) -> bytes:
    """The secret key, written only when asked for by name: public part, p, q."""
    public = public_key_to_bytes(key.public)
    width = (key.crt.q.bit_length() + 7) // 8
    return b"".join(
        [
            _PRIVATE_MAGIC,
            bytes([_VERSION]),
            len(public).to_bytes(2, "big"),
            public,
            width.to_bytes(2, "big"),
            key.crt.p.to_bytes(width, "big"),
            key.crt.q.to_bytes(width, "big"),
        ]
    )


def private_key_from_bytes(
    data: bytes, *, allow_legacy_2048: bool = False
) -> PrivateKey:
    """Parse a private key written by ``private_key_to_bytes`` and check it."""
    if not isinstance(data, bytes) or len(data) > MAX_PRIVATE_KEY_BYTES:
        raise ProtocolError("private key is not bytes or is oversized")
    if data[:4] != _PRIVATE_MAGIC or len(data) < 7 or data[4] != _VERSION:
        raise ProtocolError("not a cleanroom Paillier private key")
    public_len = int.from_bytes(data[5:7], "big")
    end = 7 + public_len
    public = public_key_from_bytes(data[7:end], allow_legacy_2048=allow_legacy_2048)
    width = int.from_bytes(data[end : end + 2], "big")
    if len(data) != end + 2 + 2 * width:
        raise ProtocolError("private key has the wrong length")
    p = mpz.from_bytes(data[end + 2 : end + 2 + width], "big")
    q = mpz.from_bytes(data[end + 2 + width :], "big")
    return PrivateKey(public, p, q)
