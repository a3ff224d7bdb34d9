"""Hazmat: libsodium's ristretto255 primitives, batched over packed 32-byte elements.

PyNaCl does not expose ristretto255, so this binds the system libsodium (>= 1.0.18;
Debian's ``libsodium23``) through cffi's ABI mode. Nothing here hashes inputs,
blinds, validates protocol state or hides timing beyond what libsodium does: use
:mod:`protocols.psi.group` and :mod:`protocols.oprf` instead.
"""

from __future__ import annotations

import ctypes.util
from functools import cache
from typing import Any, Final

import cffi

from cleanroom.errors import ConfigError, ProtocolError

POINT_BYTES: Final = 32
SCALAR_BYTES: Final = 32
HASH_BYTES: Final = 64
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
    size = len(points)
    out = _ffi.new("unsigned char[]", size)
    src = _ffi.from_buffer(points)
    key = _ffi.from_buffer(scalar)
    fn = _lib().crypto_scalarmult_ristretto255
    failed = 0
    for offset in range(0, size, POINT_BYTES):
        failed |= fn(out + offset, key, src + offset)
    if failed:
        raise ProtocolError("a received group element is malformed or the identity")
    return bytes(_ffi.buffer(out))
