"""Encrypted vectors on the wire: bound to key, context, layout; bad bytes refused."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from gmpy2 import mpz

from cleanroom.errors import ProtocolError
from protocols.paillier import (
    EncryptedVector,
    Encryptor,
    KeyPair,
    PackingLayout,
    decrypt_vector,
    vector_from_bytes,
)

CONTEXT = b"he_sum/job-1/contribution"


@pytest.fixture(scope="module")
def layout(paillier_keys: KeyPair) -> PackingLayout:
    return PackingLayout(paillier_keys.public.bits, value_bits=32, additions=10)


@pytest.fixture(scope="module")
def vector(paillier_keys: KeyPair, layout: PackingLayout) -> EncryptedVector:
    values = list(range(-100, 100))
    return Encryptor(paillier_keys.public).encrypt_integers(values, layout)


@pytest.fixture(scope="module")
def sent(paillier_keys: KeyPair, vector: EncryptedVector) -> bytes:
    return Encryptor(paillier_keys.public).to_bytes(vector, context=CONTEXT)


def _ciphertext_offset(data: bytes) -> int:
    bound_len = int.from_bytes(data[88:90], "big")
    return 90 + bound_len + 6


def test_round_trip(paillier_keys: KeyPair, layout: PackingLayout, sent: bytes) -> None:
    received = vector_from_bytes(sent, paillier_keys.public, layout, context=CONTEXT)
    assert not received.obfuscated
    assert decrypt_vector(paillier_keys.private, received) == list(range(-100, 100))


def test_vectors_under_another_key_are_refused(
    other_paillier_keys: KeyPair, layout: PackingLayout, sent: bytes
) -> None:
    with pytest.raises(ProtocolError, match="another public key"):
        vector_from_bytes(sent, other_paillier_keys.public, layout, context=CONTEXT)


def test_another_context_or_layout_is_refused(
    paillier_keys: KeyPair, layout: PackingLayout, sent: bytes
) -> None:
    key = paillier_keys.public
    with pytest.raises(ProtocolError, match="another context"):
        vector_from_bytes(sent, key, layout, context=b"he_sum/job-2/contribution")
    other = PackingLayout(key.bits, value_bits=32, additions=11)
    with pytest.raises(ProtocolError, match="another packing layout"):
        vector_from_bytes(sent, key, other, context=CONTEXT)


def _set_ciphertext(value: Callable[[mpz, mpz], mpz]) -> Callable[..., bytes]:
    def mutate(data: bytes, keys: KeyPair) -> bytes:
        key = keys.public
        start = _ciphertext_offset(data)
        width = key.ciphertext_bytes
        c = value(key.n, key.nsquare)
        return data[:start] + c.to_bytes(width, "big") + data[start + width :]

    return mutate


@pytest.mark.parametrize(
    "mutate",
    [
        _set_ciphertext(lambda n, n2: mpz(0)),
        _set_ciphertext(lambda n, n2: n2),
        _set_ciphertext(lambda n, n2: n * 3),
        _set_ciphertext(
            lambda n, n2: (mpz(1) << (8 * ((n2.bit_length() + 7) // 8))) - 1
        ),
    ],
    ids=["zero", "n-squared", "multiple-of-n", "all-ones"],
)
def test_out_of_range_ciphertexts_are_refused(
    paillier_keys: KeyPair, layout: PackingLayout, sent: bytes, mutate
) -> None:
    with pytest.raises(ProtocolError, match="not a unit"):
        vector_from_bytes(
            mutate(sent, paillier_keys), paillier_keys.public, layout, context=CONTEXT
        )


def test_a_tampered_ciphertext_fails_to_decode(
    paillier_keys: KeyPair, layout: PackingLayout, sent: bytes
) -> None:
    start = _ciphertext_offset(sent) + 40
    tampered = sent[:start] + bytes([sent[start] ^ 1]) + sent[start + 1 :]
    received = vector_from_bytes(
        tampered, paillier_keys.public, layout, context=CONTEXT
    )
    with pytest.raises(ProtocolError, match=r"overflowed|more than its slots"):
        decrypt_vector(paillier_keys.private, received)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d[:-1],
        lambda d: d + b"\x00",
        lambda d: d[:5] + b"\x02" + d[6:],
        lambda d: b"CRPX" + d[4:],
        lambda d: d[:84] + (10**6).to_bytes(4, "big") + d[88:],
        lambda d: d[:84] + (300).to_bytes(4, "big") + d[88:],
        lambda d: d[:88] + b"\x04\x00" + d[90:],
        lambda d: d[:88] + b"\x00\x20" + b"\xff" * 32 + d[90 + d[89] :],
    ],
    ids=[
        "truncated",
        "extended",
        "flags",
        "magic",
        "length-over-limit",
        "count-mismatch",
        "bound-length",
        "bound-over-capacity",
    ],
)
def test_malformed_vectors_are_refused(
    paillier_keys: KeyPair, layout: PackingLayout, sent: bytes, mutate
) -> None:
    with pytest.raises(ProtocolError):
        vector_from_bytes(
            mutate(sent),
            paillier_keys.public,
            layout,
            context=CONTEXT,
            max_length=1000,
        )


def test_size_is_checked_before_parsing(
    paillier_keys: KeyPair, layout: PackingLayout, sent: bytes
) -> None:
    with pytest.raises(ProtocolError, match="larger than the receiver allows"):
        vector_from_bytes(
            sent + b"\x00" * 10**6,
            paillier_keys.public,
            layout,
            context=CONTEXT,
            max_length=200,
        )
    with pytest.raises(ProtocolError, match="above the limit"):
        vector_from_bytes(
            sent, paillier_keys.public, layout, context=CONTEXT, max_length=199
        )
