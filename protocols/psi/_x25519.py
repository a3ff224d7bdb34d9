"""Hazmat: X25519 over packed u-coordinates through pyca/cryptography's OpenSSL.

PSI's multiplications run here rather than on libsodium's ``crypto_scalarmult``:
the OpenSSL that ``cryptography`` bundles has an ADX/BMI2 ladder, measurably
cheaper per point than libsodium 1.0.18's even with the Python object per point
(``--only psi_group_ops`` reports both). The results are identical: both are
RFC 7748 X25519 with the scalar clamped at every use. Nothing here hashes,
blinds or checks protocol state: use :mod:`protocols.psi.group`.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)

from cleanroom.errors import ProtocolError
from protocols.psi._sodium import POINT_BYTES, SCALAR_BYTES, check_u_coordinates


def x25519_many(scalar: bytes, points: bytes) -> bytes:
    """X25519(scalar, u) for each packed u-coordinate (the scalar is clamped).

    Raises ProtocolError if any input is a non-canonical encoding or any product is
    the all-zero u (a low-order input; OpenSSL refuses it, as libsodium does),
    without saying which: the caller's inputs come from another party. The
    encodings are checked before any multiplication.
    """
    if len(scalar) != SCALAR_BYTES or len(points) % POINT_BYTES:
        raise ValueError("a 32-byte scalar and packed 32-byte points are required")
    check_u_coordinates(points)
    exchange = X25519PrivateKey.from_private_bytes(scalar).exchange
    public = X25519PublicKey.from_public_bytes
    try:
        return b"".join(
            [
                exchange(public(points[offset : offset + POINT_BYTES]))
                for offset in range(0, len(points), POINT_BYTES)
            ]
        )
    except ValueError:
        raise ProtocolError(
            "a received group element is malformed or the identity"
        ) from None
