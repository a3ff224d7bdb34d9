"""Cryptographic mask expansion: AES-256-CTR keystreams as uint32/uint64 vectors.

The keystream of a seed is AES-256-CTR keyed with the whole seed, counter blocks
``0^96 || 2``, ``0^96 || 3``, ...: the blocks AES-GCM with the all-zero 96-bit
nonce encrypts with (its first block, ``0^96 || 1``, only masks the tag). So a
short mask (up to ``SHORT_BYTES``) is one AES-GCM encryption of zeros, whose
ciphertext is that keystream — one C call, half the set-up cost of a CTR
context, which dominates at that size — and a long one streams from a CTR
context in cache-sized chunks. Both give the same words (a test checks it); the
counter's low 32 bits cannot wrap below 64 GiB, far above any mask.
"""

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
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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
# bound to a session and a pair), so a fixed initial counter block is safe.
_GCM_NONCE: Final = bytes(12)
_CTR_MODE: Final = modes.CTR(_GCM_NONCE + (2).to_bytes(4, "big"))
SHORT_BYTES: Final = 1 << 16
"""Masks up to this size are drawn with one AES-GCM call (module docstring)."""
_SHORT_ZEROS: Final = bytes(SHORT_BYTES)
# Keystream = AES-CTR encryption of zeros; one shared read-only block of zeros is
# reused chunk by chunk so a long mask never allocates a second buffer of its size.
_CHUNK_BYTES: Final = 1 << 18  # 256 KiB: stays in L2 while it is written
_ZEROS: Final = memoryview(bytes(_CHUNK_BYTES))
_BIG_ENDIAN_HOST: Final = sys.byteorder == "big"
_WIRE: Final[dict[int, np.dtype[np.unsignedinteger[Any]]]] = {
    4: np.dtype("<u4"),
    8: np.dtype("<u8"),
}


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
    expand_mask_into(seed, out)
    return out


def expand_mask_into(seed: bytes, out: MaskVector) -> None:
    """Overwrite ``out`` with the mask ``expand_mask`` returns for its length and
    dtype (uint32: ring 2^32, uint64: ring 2^64), without allocating.

    This is how the protocol expands masks: into buffers it already holds.
    """
    _check_vector(out)
    if out.nbytes <= SHORT_BYTES:
        out[:] = _short_mask(seed, out)
        return
    _fill_keystream(_keystream(seed), out)


def masked_copy(
    values: npt.NDArray[np.unsignedinteger[Any]],
    modulus_bits: int,
    *,
    add: Iterable[bytes] = (),
    subtract: Iterable[bytes] = (),
) -> MaskVector:
    """A fresh vector ``values + sum(PRG(s) for s in add) - sum(PRG(s) for s in
    subtract)`` mod 2^modulus_bits.

    ``values`` must already lie in the ring (wider words are reduced mod 2^bits).
    The first mask is expanded straight into the result, so the plaintext is never
    copied on its own: the new vector holds a masked value from its first write.
    """
    dtype = mask_dtype(modulus_bits)
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.unsignedinteger):
        raise ProtocolError("masks are added to a 1-D unsigned integer vector")
    out = np.empty(values.shape[0], dtype=dtype)
    adds = list(add)
    if adds:
        expand_mask_into(adds.pop(0), out)
        # Forcing the ring's loop casts wider words down (mod 2^bits) as they are
        # read, instead of widening the whole result and narrowing it back.
        np.add(out, values, out=out, dtype=dtype, casting="unsafe")
    else:
        np.copyto(out, values, casting="unsafe")
    add_masks(out, add=adds, subtract=subtract)
    return out


def add_masks(
    acc: MaskVector,
    *,
    add: Iterable[bytes] = (),
    subtract: Iterable[bytes] = (),
) -> None:
    """In place: ``acc += sum(PRG(s) for s in add) - sum(PRG(s) for s in subtract)``.

    Arithmetic is mod 2^bits (the dtype of ``acc``). Each keystream is produced a
    chunk at a time into one small scratch buffer that stays in cache and is added
    at once, so no mask ever exists as a whole vector and nothing large is allocated.
    """
    _check_vector(acc)
    if acc.nbytes <= SHORT_BYTES:
        for seeds, op in ((add, np.add), (subtract, np.subtract)):
            for seed in seeds:
                op(acc, _short_mask(seed, acc), out=acc)
        return
    step = _CHUNK_BYTES // acc.dtype.itemsize
    scratch = np.empty(min(step, acc.shape[0]), dtype=acc.dtype)
    raw = scratch.view(np.uint8).data
    for seeds, op in ((add, np.add), (subtract, np.subtract)):
        for seed in seeds:
            stream = _keystream(seed)
            for start in range(0, acc.shape[0], step):
                part = acc[start : start + step]
                n = part.shape[0]
                stream.update_into(_ZEROS[: n * acc.dtype.itemsize], raw)
                if _BIG_ENDIAN_HOST:
                    scratch.byteswap(inplace=True)
                op(part, scratch[:n], out=part)


def _check_vector(vector: MaskVector) -> None:
    if vector.dtype not in _DTYPES.values() or vector.ndim != 1:
        raise ProtocolError("a mask vector must be a 1-D uint32 or uint64 array")
    if not vector.flags.c_contiguous or not vector.flags.writeable:
        raise ProtocolError("a mask vector must be contiguous and writeable")


def _check_length(length: int) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ProtocolError(f"mask length must be a non-negative int, got {length!r}")


def _check_seed(seed: bytes) -> None:
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        raise ProtocolError(f"mask seeds must be exactly {SEED_BYTES} bytes")


def _keystream(seed: bytes) -> CipherContext:
    _check_seed(seed)
    cipher = Cipher(algorithms.AES(bytes(seed)), _CTR_MODE)
    return cipher.encryptor()


def _short_mask(seed: bytes, like: MaskVector) -> MaskVector:
    """The mask for a vector of ``like``'s length and dtype, from one AES-GCM
    encryption of zeros (its ciphertext, without the tag, is the keystream)."""
    if type(seed) is not bytes:  # exact type: the fast path
        _check_seed(seed)
        seed = bytes(seed)
    elif len(seed) != SEED_BYTES:
        _check_seed(seed)
    n = like.nbytes
    stream = AESGCM(seed).encrypt(_GCM_NONCE, _SHORT_ZEROS[:n], None)
    # Little-endian words on every host; numpy converts on a big-endian one.
    return np.frombuffer(stream, _WIRE[like.dtype.itemsize], like.shape[0])


def _fill_keystream(stream: CipherContext, out: MaskVector) -> None:
    raw = out.view(np.uint8).data
    for start in range(0, len(raw), _CHUNK_BYTES):
        part = raw[start : start + _CHUNK_BYTES]
        stream.update_into(_ZEROS[: len(part)], part)
    if _BIG_ENDIAN_HOST:
        # The wire and the mask definition are little-endian on every host.
        out.byteswap(inplace=True)
