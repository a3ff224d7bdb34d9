"""Known answers and statistical sanity for the AES-256-CTR mask expander."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cleanroom.errors import ProtocolError
from protocols.prg import (
    SHORT_BYTES,
    add_masks,
    expand_mask,
    expand_mask_into,
    masked_copy,
)

SEED = bytes(range(32))


def test_known_answer_64() -> None:
    # Pinned output: AES-256 keyed with 00..1f, counter blocks 2, 3, ... (the
    # blocks AES-GCM with the all-zero nonce encrypts with).
    assert expand_mask(SEED, 4, 64).tolist() == [
        13655807654754630670,
        11065674241917167624,
        3413870527743673298,
        6223411483879120512,
    ]


def test_known_answer_32() -> None:
    assert expand_mask(SEED, 4, 32).tolist() == [
        3736452110,
        3179490485,
        900311048,
        2576428056,
    ]


def test_matches_aes_of_counter_blocks() -> None:
    # Independent derivation: AES-ECB of the big-endian counter blocks 2..n+1.
    blocks = b"".join(i.to_bytes(16, "big") for i in range(2, 66))
    ecb = Cipher(algorithms.AES(SEED), modes.ECB()).encryptor().update(blocks)
    expected = np.frombuffer(ecb, dtype="<u8")
    assert np.array_equal(expand_mask(SEED, 128, 64), expected)


@pytest.mark.parametrize("bits", [32, 64])
def test_short_and_streamed_masks_are_one_keystream(bits: int) -> None:
    # Up to SHORT_BYTES a mask is one AES-GCM call, above it a streamed CTR
    # context: a vector just above must start with the words of one just below.
    width = bits // 8
    below = SHORT_BYTES // width
    streamed = expand_mask(SEED, below + 1, bits)
    assert np.array_equal(streamed[:below], expand_mask(SEED, below, bits))
    acc = np.zeros(below + 1, dtype=streamed.dtype)
    add_masks(acc, add=[SEED])
    short = np.zeros(below, dtype=streamed.dtype)
    add_masks(short, add=[SEED])
    assert np.array_equal(acc[:below], short)
    with pytest.raises(ProtocolError, match="exactly 32 bytes"):
        add_masks(short, add=[SEED[:16]])  # AES-GCM would take a 16-byte key


def test_long_masks_cross_chunk_boundaries_consistently() -> None:
    # 1 MiB chunks: a 3 MiB mask must be one continuous keystream.
    long = expand_mask(SEED, 3 * (1 << 20) // 8 + 5, 64)
    assert np.array_equal(long[:1000], expand_mask(SEED, 1000, 64))
    assert long.dtype == np.uint64


@pytest.mark.parametrize(("bits", "dtype"), [(32, np.uint32), (64, np.uint64)])
def test_dtype_and_length(bits: int, dtype: type) -> None:
    mask = expand_mask(SEED, 1001, bits)
    assert mask.dtype == dtype
    assert mask.shape == (1001,)
    assert mask.flags.writeable
    assert expand_mask(SEED, 0, bits).shape == (0,)


def test_deterministic_and_seed_sensitive() -> None:
    assert np.array_equal(expand_mask(SEED, 500, 64), expand_mask(SEED, 500, 64))
    other = bytes([1]) + SEED[1:]
    assert not np.array_equal(expand_mask(SEED, 500, 64), expand_mask(other, 500, 64))
    # A 32-bit mask is the 64-bit keystream read in 32-bit words.
    assert expand_mask(SEED, 8, 32).tobytes() == expand_mask(SEED, 4, 64).tobytes()


def test_uniform_ish() -> None:
    words = expand_mask(bytes(32), 1 << 16, 32)
    bits = np.unpackbits(words.view(np.uint8)).reshape(-1, 32).mean(axis=0)
    # Each bit has mean 1/2 with standard deviation 1/(2*sqrt(2^16)) ~ 0.002.
    assert np.all(np.abs(bits - 0.5) < 0.01)
    counts = np.bincount((words >> 24).astype(np.int64), minlength=256)
    expected = words.size / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert 150 < chi2 < 380  # 255 degrees of freedom; bounds are > 5 sigma wide


@pytest.mark.parametrize("seed", [b"", bytes(16), bytes(31), bytes(33), "x" * 32])
def test_seed_must_be_32_bytes(seed: object) -> None:
    with pytest.raises(ProtocolError):
        expand_mask(seed, 4, 64)  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", [0, 8, 16, 128, True])
def test_modulus_bits_validated(bits: int) -> None:
    with pytest.raises(ProtocolError):
        expand_mask(SEED, 4, bits)


@pytest.mark.parametrize("length", [-1, 2.5, True])
def test_length_validated(length: object) -> None:
    with pytest.raises(ProtocolError):
        expand_mask(SEED, length, 64)  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", [32, 64])
def test_add_masks_is_modular_add_and_subtract(bits: int) -> None:
    a, b = bytes([7]) * 32, bytes([9]) * 32
    base = expand_mask(bytes([3]) * 32, 257, bits)
    acc = base.copy()
    add_masks(acc, add=[a, b], subtract=[a])
    assert np.array_equal(acc, base + expand_mask(b, 257, bits))
    add_masks(acc, subtract=[b])
    assert np.array_equal(acc, base)


def test_add_masks_refuses_wrong_vectors() -> None:
    with pytest.raises(ProtocolError):
        add_masks(np.zeros(4, dtype=np.int64), add=[SEED])
    with pytest.raises(ProtocolError):
        add_masks(np.zeros((2, 2), dtype=np.uint64), add=[SEED])
    frozen = np.zeros(4, dtype=np.uint64)
    frozen.flags.writeable = False
    with pytest.raises(ProtocolError):
        add_masks(frozen, add=[SEED])


@pytest.mark.parametrize("bits", [32, 64])
def test_add_masks_across_chunk_boundaries(bits: int) -> None:
    # Masks are applied a 256 KiB chunk at a time: cover several chunks and a tail.
    length = 3 * (1 << 18) // (bits // 8) + 77
    a, b = bytes([5]) * 32, bytes([6]) * 32
    acc = np.arange(length, dtype=np.uint32 if bits == 32 else np.uint64)
    expected = acc + expand_mask(a, length, bits) - expand_mask(b, length, bits)
    add_masks(acc, add=[a], subtract=[b])
    assert np.array_equal(acc, expected)


@pytest.mark.parametrize("bits", [32, 64])
def test_masked_copy_masks_without_touching_the_input(bits: int) -> None:
    values = np.arange(1, 1001, dtype=np.uint64)
    before = values.copy()
    a, b, c = (bytes([i]) * 32 for i in (1, 2, 3))
    masked = masked_copy(values, bits, add=[a, b], subtract=[c])
    ring = values.astype(np.uint32 if bits == 32 else np.uint64)
    expected = ring + expand_mask(a, 1000, bits) + expand_mask(b, 1000, bits)
    assert np.array_equal(masked, expected - expand_mask(c, 1000, bits))
    assert np.array_equal(values, before)
    only_subtract = masked_copy(values, bits, subtract=[c])
    assert np.array_equal(only_subtract, ring - expand_mask(c, 1000, bits))
    with pytest.raises(ProtocolError):
        masked_copy(np.zeros(4, dtype=np.int64), bits, add=[a])  # type: ignore[arg-type]


def test_expand_mask_into_matches_expand_mask() -> None:
    out = np.full(300, 7, dtype=np.uint64)
    expand_mask_into(SEED, out)
    assert np.array_equal(out, expand_mask(SEED, 300, 64))
    with pytest.raises(ProtocolError):
        expand_mask_into(SEED, np.zeros(3, dtype=np.float64))  # type: ignore[arg-type]
