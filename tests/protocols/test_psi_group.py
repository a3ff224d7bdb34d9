"""PSI's X25519 group: RFC 9380 Elligator 2 vectors, commutativity of clamped
scalars, points on the curve, and refusal of non-canonical or low-order inputs."""

from __future__ import annotations

import os

import gmpy2
import pytest

from cleanroom.errors import ProtocolError
from protocols.psi import _sodium
from protocols.psi.group import hash_to_group, psi_scalar

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


def test_clamped_scalars_commute() -> None:
    points = hash_to_group(b"t", [f"k{i}".encode() for i in range(16)])
    a, b = psi_scalar(os.urandom), psi_scalar(os.urandom)
    ab = _sodium.x25519_many(a, _sodium.x25519_many(b, points))
    ba = _sodium.x25519_many(b, _sodium.x25519_many(a, points))
    assert ab == ba
    assert ab != _sodium.x25519_many(a, points)


@pytest.mark.parametrize(
    "bad",
    [
        _u(P),  # non-canonical encoding of 0
        _u(P + 9),  # non-canonical encoding of 9
        _u(9 | 1 << 255),  # bit 255 set
        _u(0),  # low order
        _u(1),  # low order (twist)
        _u(P - 1),  # low order
    ],
)
def test_non_canonical_and_low_order_inputs_refused(bad: bytes) -> None:
    good = hash_to_group(b"t", [b"x"])
    with pytest.raises(ProtocolError, match="malformed or the identity"):
        _sodium.x25519_many(psi_scalar(os.urandom), good + bad)
