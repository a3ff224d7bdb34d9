"""Cryptographic mask expansion: AES-256-CTR keystreams as uint32/uint64 vectors."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, Final, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import (
    Cipher,
    CipherContext,
    algorithms,
    modes,
)

from cleanroom.errors import ProtocolError

SEED_BYTES: Final = 32
"""Masks are keyed with the whole 32-byte seed (AES-256), never a folded 32-bit one."""

ModulusBits: TypeAlias = Literal[32, 64]
MaskVector: TypeAlias = npt.NDArray[np.unsignedinteger[Any]]

_DTYPES: Final[dict[int, np.dtype[np.unsignedinteger[Any]]]] = {
    32: np.dtype(np.uint32),
    64: np.dtype(np.uint64),
}
# Each seed keys exactly one keystream (seeds are fresh random values or HKDF outputs
# bound to a session and a pair), so a fixed all-zero initial counter block is safe.
_INITIAL_COUNTER: Final = bytes(16)
# Keystream = AES-CTR encryption of zeros; one shared read-only block of zeros is
# reused chunk by chunk so a long mask never allocates a second buffer of its size.
_CHUNK_BYTES: Final = 1 << 18  # 256 KiB: stays in L2 while it is written
_ZEROS: Final = memoryview(bytes(_CHUNK_BYTES))
_BIG_ENDIAN_HOST: Final = sys.byteorder == "big"


def mask_dtype(modulus_bits: int) -> np.dtype[np.unsignedinteger[Any]]:
    """The numpy dtype whose wrap-around arithmetic is addition mod 2^modulus_bits."""
    try:
        return _DTYPES[modulus_bits]
    except KeyError:
        raise ProtocolError(
            f"modulus_bits must be 32 or 64, got {modulus_bits!r}"
        ) from None


def expand_mask(seed: bytes, length: int, modulus_bits: int) -> MaskVector:
    """Expand ``seed`` into ``length`` uniform elements of Z_(2^modulus_bits).

    The elements are consecutive little-endian words of the AES-256-CTR keystream
    keyed with the full seed, so the mask is as unpredictable as the seed itself.
    """
    dtype = mask_dtype(modulus_bits)
    _check_length(length)
    out = np.empty(length, dtype=dtype)
    _fill_keystream(_keystream(seed), out)
    return out


def add_masks(
    acc: MaskVector,
    *,
    add: Iterable[bytes] = (),
    subtract: Iterable[bytes] = (),
) -> None:
    """In place: ``acc += sum(PRG(s) for s in add) - sum(PRG(s) for s in subtract)``.

    Arithmetic is mod 2^bits (the dtype of ``acc``). One scratch buffer is reused for
    every seed, which keeps the working set in cache and avoids per-mask allocation.
    """
    if acc.dtype not in _DTYPES.values() or acc.ndim != 1:
        raise ProtocolError("masks are added to a 1-D uint32 or uint64 vector")
    if not acc.flags.c_contiguous or not acc.flags.writeable:
        raise ProtocolError("masks are added to a contiguous, writeable vector")
    scratch = np.empty_like(acc)
    for seed in add:
        _fill_keystream(_keystream(seed), scratch)
        np.add(acc, scratch, out=acc)
    for seed in subtract:
        _fill_keystream(_keystream(seed), scratch)
        np.subtract(acc, scratch, out=acc)


def _check_length(length: int) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ProtocolError(f"mask length must be a non-negative int, got {length!r}")


def _keystream(seed: bytes) -> CipherContext:
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        raise ProtocolError(f"mask seeds must be exactly {SEED_BYTES} bytes")
    cipher = Cipher(algorithms.AES(bytes(seed)), modes.CTR(_INITIAL_COUNTER))
    return cipher.encryptor()


def _fill_keystream(stream: CipherContext, out: MaskVector) -> None:
    raw = out.view(np.uint8).data
    for start in range(0, len(raw), _CHUNK_BYTES):
        part = raw[start : start + _CHUNK_BYTES]
        stream.update_into(_ZEROS[: len(part)], part)
    if _BIG_ENDIAN_HOST:
        # The wire and the mask definition are little-endian on every host.
        out.byteswap(inplace=True)
