"""PSI's X25519 group: RFC 9380 Elligator 2 vectors, commutativity of clamped
scalars, points on the curve, refusal of non-canonical or low-order inputs, and
the same products from OpenSSL (what PSI uses) as from libsodium."""

from __future__ import annotations

import os
from collections.abc import Callable

import gmpy2
import pytest

from cleanroom.errors import ProtocolError
from protocols.psi import _sodium, _x25519
from protocols.psi.group import hash_to_group, psi_scalar

Multiply = Callable[[bytes, bytes], bytes]
IMPLEMENTATIONS = pytest.mark.parametrize(
    "multiply", [_x25519.x25519_many, _sodium.x25519_many], ids=["openssl", "sodium"]
)

P = 2**255 - 19
# RFC 9380 appendix J.7.2 (curve25519_XMD:SHA-512_ELL2_NU_): field element u, Q.x
VECTORS = [
    (
        "608d892b641f0328523802a6603427c26e55e6f27e71a91a478148d45b5093cd",
        "51125222da5e763d97f3c10fcc92ea6860b9ccbbd2eb1285728f566721c1e65b",
    ),
    (
        "46f5b22494bfeaa7f232cc8d054be68561af50230234d7d1d63d1d9abeca8da5",
        "7d56d1e08cb0ccb92baf069c18c49bb5a0dcd927eff8dcf75ca921ef7f3e6eeb",
    ),
]


ORDER_8 = 325606250916557431795983626356110631294008115727848805560023387167927233504
ORDER_8_OTHER = (
    39382357235489614581723060781553021112529911719440698176882885853963445705823
)


def _u(value: int) -> bytes:
    return value.to_bytes(32, "little")


def test_elligator2_matches_rfc_9380_vectors() -> None:
    out = _sodium.elligator2_u([int(u, 16) for u, _ in VECTORS])
    assert [out[:32], out[32:]] == [_u(int(q, 16)) for _, q in VECTORS]


def test_hashes_land_on_the_curve_not_the_twist() -> None:
    points = hash_to_group(b"t", [os.urandom(20) for _ in range(64)])
    for i in range(0, len(points), 32):
        u = int.from_bytes(points[i : i + 32], "little")
        assert u < P
        assert gmpy2.legendre((u * u * u + 486662 * u * u + u) % P, P) == 1


@IMPLEMENTATIONS
def test_clamped_scalars_commute(multiply: Multiply) -> None:
    points = hash_to_group(b"t", [f"k{i}".encode() for i in range(16)])
    a, b = psi_scalar(os.urandom), psi_scalar(os.urandom)
    ab = multiply(a, multiply(b, points))
    ba = multiply(b, multiply(a, points))
    assert ab == ba
    assert ab != multiply(a, points)


def test_openssl_and_libsodium_agree() -> None:
    # points of the curve (hashes) and of the twist (random u below p)
    points = hash_to_group(b"t", [f"k{i}".encode() for i in range(32)])
    twist = (int.from_bytes(os.urandom(32), "little") % P for _ in range(32))
    points += b"".join(_u(u) for u in twist)
    for _ in range(4):
        scalar = psi_scalar(os.urandom)
        assert _x25519.x25519_many(scalar, points) == _sodium.x25519_many(
            scalar, points
        )


def test_rfc_7748_vector() -> None:
    scalar = bytes.fromhex(
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"
    )
    u = bytes.fromhex(
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c"
    )
    expected = "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"
    assert _x25519.x25519_many(scalar, u).hex() == expected
    assert _sodium.x25519_many(scalar, u).hex() == expected


@pytest.mark.parametrize(
    "bad",
    [
        _u(P),  # non-canonical encoding of 0
        _u(P + 9),  # non-canonical encoding of 9
        _u(9 | 1 << 255),  # bit 255 set
        _u(0),  # low order
        _u(1),  # low order (twist)
        _u(P - 1),  # low order
        _u(ORDER_8),  # low order
        _u(ORDER_8_OTHER),  # low order
    ],
)
@IMPLEMENTATIONS
def test_non_canonical_and_low_order_inputs_refused(
    bad: bytes, multiply: Multiply
) -> None:
    good = hash_to_group(b"t", [b"x"])
    with pytest.raises(ProtocolError, match="malformed or the identity"):
        multiply(psi_scalar(os.urandom), good + bad)
