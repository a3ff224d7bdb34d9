"""Hazmat: libsodium's ristretto255 and X25519 primitives over packed 32-byte elements.

PyNaCl does not expose ristretto255, so this binds the system libsodium (>= 1.0.18;
Debian's ``libsodium23``) through cffi's ABI mode. Nothing here hashes inputs,
blinds, validates protocol state or hides timing beyond what libsodium does: use
:mod:`protocols.psi.group` and :mod:`protocols.oprf` instead.

ristretto255 serves the OPRF (RFC 9497). ECDH-PSI works on X25519 (u-coordinates
on Curve25519, clamped scalars), ~1.5x cheaper per multiplication; its
multiplications run on OpenSSL's ladder (:mod:`protocols.psi._x25519`, cheaper
still), and :func:`x25519_many` here is libsodium's, kept as the cross-check and
benchmark baseline.
libsodium 1.0.18 has no Elligator 2 onto Curve25519's u-line (its
``ed25519_from_uniform`` costs ~30 us, half an X25519, and then needs an
Edwards-to-Montgomery conversion), so RFC 9380's map is computed here with gmpy2
integers (~5 us per key with one batched inversion). gmpy2 arithmetic is not
constant time; what it handles is H(x) of the party's own keys in its own process.
"""

from __future__ import annotations

import ctypes.util
from collections.abc import Sequence
from functools import cache
from typing import Any, Final

import cffi
import gmpy2

from cleanroom.errors import ConfigError, ProtocolError

POINT_BYTES: Final = 32
SCALAR_BYTES: Final = 32
HASH_BYTES: Final = 64
UNIFORM_BYTES: Final = 32
FIELD_PRIME: Final = 2**255 - 19
_P: Final = gmpy2.mpz(FIELD_PRIME)
_A: Final = gmpy2.mpz(486662)
_ONE: Final = gmpy2.mpz(1)
_LIBRARY_NAMES: Final = ("libsodium.so.23", "libsodium.so.26", "libsodium.so")

_ffi = cffi.FFI()
_ffi.cdef(
    """
    int sodium_init(void);
    int crypto_core_ristretto255_from_hash(unsigned char *p, const unsigned char *r);
    int crypto_core_ristretto255_is_valid_point(const unsigned char *p);
    int crypto_scalarmult_ristretto255(unsigned char *q, const unsigned char *n,
                                       const unsigned char *p);
    int crypto_scalarmult_ristretto255_base(unsigned char *q, const unsigned char *n);
    void crypto_core_ristretto255_scalar_reduce(unsigned char *r,
                                                const unsigned char *s);
    int crypto_core_ristretto255_scalar_invert(unsigned char *recip,
                                               const unsigned char *s);
    void crypto_core_ristretto255_scalar_mul(unsigned char *z, const unsigned char *x,
                                             const unsigned char *y);
    int crypto_scalarmult(unsigned char *q, const unsigned char *n,
                          const unsigned char *p);
    """
)


@cache
def _lib() -> Any:
    names = list(_LIBRARY_NAMES)
    found = ctypes.util.find_library("sodium")
    if found:
        names.insert(0, found)
    for name in names:
        try:
            lib = _ffi.dlopen(name)
            lib.crypto_core_ristretto255_from_hash  # noqa: B018 - probe the symbol
        except (OSError, AttributeError):
            continue
        if lib.sodium_init() < 0:
            raise ConfigError("libsodium failed to initialise")
        return lib
    raise ConfigError(
        "PSI/OPRF need libsodium >= 1.0.18 with ristretto255 "
        "(Debian/Ubuntu: apt-get install libsodium23)"
    )


def check_available() -> None:
    """Raise ConfigError now, rather than mid-protocol, if libsodium is missing."""
    _lib()


def reduce_scalar(wide: bytes) -> bytes:
    """64 uniform bytes -> a uniform scalar mod l (little-endian, 32 bytes)."""
    if len(wide) != HASH_BYTES:
        raise ValueError("scalar reduction takes 64 bytes")
    out = _ffi.new("unsigned char[32]")
    _lib().crypto_core_ristretto255_scalar_reduce(out, wide)
    return bytes(_ffi.buffer(out))


def invert_scalar(scalar: bytes) -> bytes:
    """1/scalar mod l; the scalar must be non-zero."""
    out = _ffi.new("unsigned char[32]")
    if _lib().crypto_core_ristretto255_scalar_invert(out, scalar) != 0:
        raise ValueError("zero has no inverse")
    return bytes(_ffi.buffer(out))


def multiply_scalars(a: bytes, b: bytes) -> bytes:
    """a * b mod l."""
    out = _ffi.new("unsigned char[32]")
    _lib().crypto_core_ristretto255_scalar_mul(out, a, b)
    return bytes(_ffi.buffer(out))


def base_multiply(scalar: bytes) -> bytes:
    """scalar * G; refuses a zero scalar."""
    out = _ffi.new("unsigned char[32]")
    if _lib().crypto_scalarmult_ristretto255_base(out, scalar) != 0:
        raise ValueError("the scalar is zero")
    return bytes(_ffi.buffer(out))


def is_valid_point(point: bytes) -> bool:
    """True for a canonical encoding of a non-identity ristretto255 element."""
    return (
        len(point) == POINT_BYTES
        and any(point)
        and not _high_bit_set(point)
        and _lib().crypto_core_ristretto255_is_valid_point(point) == 1
    )


def _high_bit_set(points: bytes) -> bool:
    """libsodium 1.0.18 decodes s with bit 255 set as if it were clear; refuse it.

    (Later releases reject it themselves; an encoding has one canonical form.)
    """
    return max(points[POINT_BYTES - 1 :: POINT_BYTES], default=0) >= 0x80


def from_hashes(digests: bytes) -> bytes:
    """Map each 64-byte digest to a group element (RFC 9496 one-way map), packed."""
    if len(digests) % HASH_BYTES:
        raise ValueError("digests must be packed 64-byte blocks")
    count = len(digests) // HASH_BYTES
    out = _ffi.new("unsigned char[]", count * POINT_BYTES)
    src = _ffi.from_buffer(digests)
    fn = _lib().crypto_core_ristretto255_from_hash
    for i in range(count):
        fn(out + i * POINT_BYTES, src + i * HASH_BYTES)
    return bytes(_ffi.buffer(out))


def multiply_points(scalar: bytes, points: bytes) -> bytes:
    """scalar * P for each packed point P.

    Raises ProtocolError if any input is not a canonical ristretto255 encoding or a
    product is the identity (libsodium refuses both), without saying which: the
    caller's inputs come from another party.
    """
    if len(scalar) != SCALAR_BYTES or len(points) % POINT_BYTES:
        raise ValueError("a 32-byte scalar and packed 32-byte points are required")
    if _high_bit_set(points):
        raise ProtocolError("a received group element is malformed or the identity")
    return _scalarmult_many(_lib().crypto_scalarmult_ristretto255, scalar, points)


def _scalarmult_many(fn: Any, scalar: bytes, points: bytes) -> bytes:
    """``fn(out, scalar, point)`` for each packed point, in one buffer; a failure
    of any (libsodium's non-zero return) refuses the batch without saying which."""
    size = len(points)
    out = _ffi.new("unsigned char[]", size)
    src = _ffi.from_buffer(points)
    key = _ffi.from_buffer(scalar)
    failed = 0
    for offset in range(0, size, POINT_BYTES):
        failed |= fn(out + offset, key, src + offset)
    if failed:
        raise ProtocolError("a received group element is malformed or the identity")
    return bytes(_ffi.buffer(out))


def check_u_coordinates(points: bytes) -> None:
    """Refuse any non-canonical u (bit 255 set, or u >= p): one encoding per point.

    X25519 itself ignores bit 255 and reduces u mod p, so without this check one
    point would have several encodings. Raises ProtocolError without saying which.
    """
    if _high_bit_set(points):
        raise ProtocolError("a received group element is malformed or the identity")
    high = points[POINT_BYTES - 1 :: POINT_BYTES]
    if b"\x7f" in high:
        for index, top in enumerate(high):
            start = index * POINT_BYTES
            if top == 0x7F and (
                int.from_bytes(points[start : start + POINT_BYTES], "little")
                >= FIELD_PRIME
            ):
                raise ProtocolError(
                    "a received group element is malformed or the identity"
                )


def x25519_many(scalar: bytes, points: bytes) -> bytes:
    """X25519(scalar, u) for each packed u-coordinate (libsodium clamps the scalar).

    Raises ProtocolError if any input is a non-canonical encoding or any product is
    the all-zero u (a low-order input; libsodium refuses it), without saying which:
    the caller's inputs come from another party.
    """
    if len(scalar) != SCALAR_BYTES or len(points) % POINT_BYTES:
        raise ValueError("a 32-byte scalar and packed 32-byte points are required")
    check_u_coordinates(points)
    return _scalarmult_many(_lib().crypto_scalarmult, scalar, points)


def elligator2_u(field_elements: Sequence[int]) -> bytes:
    """Packed u-coordinates of RFC 9380's Elligator 2 map onto Curve25519 (Z = 2).

    ``map_to_curve_elligator2`` (RFC 9380 section 6.7.1) for each field element r
    (an integer in [0, p)): x1 = -A / (1 + 2 r^2) (-A if the denominator is 0),
    u = x1 if x1^3 + A x1^2 + x1 is a square, else -x1 - A. The output is a point
    of the curve, not of the twist; its cofactor is cleared by the clamped scalar
    of every later X25519 (so the tags are those of RFC 9380's ``encode_to_curve``
    output 8 * P). One field inversion serves the whole batch (Montgomery's trick).
    """
    p = _P
    count = len(field_elements)
    if count == 0:
        return b""
    dens = []
    prefix = []
    acc = _ONE
    for r in field_elements:
        den = (2 * gmpy2.mpz(r) * r + 1) % p
        if den == 0:  # r^2 = -1/2: x1 = -A by RFC 9380's inv0 convention
            den = _ONE
        dens.append(den)
        acc = acc * den % p
        prefix.append(acc)
    inverse = gmpy2.invert(acc, p)
    out = bytearray(count * POINT_BYTES)
    for i in range(count - 1, -1, -1):
        den = dens[i]
        before = prefix[i - 1] if i else _ONE
        x1 = -_A * inverse * before % p
        inverse = inverse * den % p
        if 2 * field_elements[i] * field_elements[i] % p == p - 1:
            x1 = (-_A) % p
        gx1 = x1 * (x1 * (x1 + _A) + 1) % p
        u = x1 if gmpy2.legendre(gx1, p) >= 0 else (-x1 - _A) % p
        out[i * POINT_BYTES : (i + 1) * POINT_BYTES] = int(u).to_bytes(
            POINT_BYTES, "little"
        )
    return bytes(out)
