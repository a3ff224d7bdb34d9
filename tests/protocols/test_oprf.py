"""2HashDH OPRF: RFC 9497 known answers, consistency, and refused malformed elements."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.errors import ConfigError, ProtocolError
from protocols.oprf import core
from protocols.psi import _sodium

SEED = bytes([0xA3]) * 32
INFO = b"test key"
BLIND = bytes.fromhex(
    "64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706"
)
# RFC 9497, Appendix A.1.1: OPRF(ristretto255, SHA-512), mode 0x00
VECTORS = [
    (
        "00",
        "609a0ae68c15a3cf6903766461307e5c8bb2f95e7e6550e1ffa2dc99e412803c",
        "7ec6578ae5120958eb2db1745758ff379e77cb64fe77b0b2d8cc917ea0869c7e",
        "527759c3d9366f277d8c6020418d96bb393ba2afb20ff90df23fb7708264e2f3"
        "ab9135e3bd69955851de4b1f9fe8a0973396719b7912ba9ee8aa7d0b5e24bcf6",
    ),
    (
        "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
        "da27ef466870f5f15296299850aa088629945a17d1f5b7f5ff043f76b3c06418",
        "b4cbf5a4f1eeda5a63ce7b77c7d23f461db3fcab0dd28e4e17cecb5c90d02c25",
        "f4a74c9c592497375e796aa837e907b1a045d34306a749db9f34221f7e750cb4"
        "f2a6413a6bf6fa5e19ba6348eb673934a722a7ede2e7621306d18951e7cf2c73",
    ),
]


def test_derive_key_pair_known_answer() -> None:
    key = core.OprfKey.derive(SEED, INFO)
    assert (
        key.scalar.hex()
        == "5ebcea5ee37023ccb9fc2d2019f9d7737be85591ae8652ffa9ef0f4d37063b0e"
    )
    assert key.scalar.hex() not in repr(key)


@pytest.mark.parametrize(("hex_input", "blinded", "evaluated", "output"), VECTORS)
def test_rfc9497_vectors(
    hex_input: str, blinded: str, evaluated: str, output: str
) -> None:
    key = core.OprfKey.derive(SEED, INFO)
    item = bytes.fromhex(hex_input)
    b = core.blind_with([item], BLIND)
    assert b.elements.hex() == blinded
    e = core.evaluate(key, b.elements)
    assert e.hex() == evaluated
    assert core.finalize([item], b, e)[0].hex() == output
    assert core.evaluate_direct(key, [item])[0].hex() == output


def test_expand_message_xmd_known_answer() -> None:
    # RFC 9380 K.3, expand_message_xmd(SHA-512), msg "", len 0x20
    dst = b"QUUX-V01-CS02-with-expander-SHA512-256"
    out = core.expand_message_xmd(b"", dst, 0x20)
    assert (
        out.hex() == "6b9a7312411d92f921c6f68ca0b6380730a1a4d982c507211a90964c394179ba"
    )


@settings(max_examples=20, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=8, unique=True))
def test_blind_evaluate_finalize_equals_direct(inputs: list[bytes]) -> None:
    key = core.OprfKey.generate(os.urandom)
    blinded = core.blind(inputs, os.urandom)
    outputs = core.finalize(inputs, blinded, core.evaluate(key, blinded.elements))
    assert outputs == core.evaluate_direct(key, inputs)
    other = core.OprfKey.generate(os.urandom)
    assert outputs != core.evaluate_direct(other, inputs)


def test_repeated_inputs_in_a_batch_refused() -> None:
    with pytest.raises(ProtocolError, match="must not repeat"):
        core.blind([b"x", b"x"], os.urandom)


NOT_CANONICAL = [
    bytes(32),  # the identity
    b"\xff" * 32,  # above p
    (2**255 - 19).to_bytes(32, "little"),  # p itself: non-canonical zero
    (1).to_bytes(32, "little"),  # odd field element: ristretto refuses negative s
    b"\x00" * 31 + b"\x80",  # high bit set
]


@pytest.mark.parametrize("element", NOT_CANONICAL)
def test_malformed_elements_refused(element: bytes) -> None:
    key = core.OprfKey.generate(os.urandom)
    assert not _sodium.is_valid_point(element)
    with pytest.raises(ProtocolError, match="malformed or the identity"):
        core.evaluate(key, element)
    blinded = core.blind([b"x"], os.urandom)
    with pytest.raises(ProtocolError, match="malformed or the identity"):
        core.finalize([b"x"], blinded, element)


def test_evaluation_of_the_wrong_size_refused() -> None:
    blinded = core.blind([b"x", b"y"], os.urandom)
    with pytest.raises(ProtocolError, match="batch size"):
        core.finalize([b"x", b"y"], blinded, blinded.elements[:32])
    with pytest.raises(ProtocolError, match="packed"):
        core.evaluate(core.OprfKey.generate(os.urandom), b"\x01" * 33)


def test_key_must_be_non_zero() -> None:
    with pytest.raises(ConfigError):
        core.OprfKey(bytes(32))
