"""Byte formats around TenSEAL: protobuf fields, and SEAL ciphertexts written by hand.

Two needs. The owner must inspect a buyer's TenSEAL context (which protobuf fields
it carries, whether a secret key is among them) before handing it to TenSEAL's
deserialiser. And TenSEAL's low-level ``sealapi`` objects, with which the owner
evaluates, can be saved only to file paths; :func:`ckks_vector_bytes` writes the
owner's result in the format ``ts.ckks_vector_from`` reads instead (a
``CKKSVectorProto`` holding one uncompressed SEAL 4 ciphertext), so the buyer's
TenSEAL, not this module, parses and validates it (SEAL checks every coefficient
against its modulus on load).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, Final

import numpy as np

from cleanroom.errors import ProtocolError

VARINT: Final = 0
FIXED64: Final = 1
BYTES: Final = 2
SEAL_MAGIC: Final = 0xA15E
SEAL_HEADER_BYTES: Final = 16
_COMPRESSION_NONE: Final = 0
_MAX_VARINT_BYTES: Final = 10


def fields(data: bytes, what: str) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message, in order.

    Only the wire types TenSEAL uses are accepted: varint (an int), 64-bit (raw
    8 bytes) and length-delimited (a memoryview, no copy).
    """
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        key, offset = _varint(view, offset, what)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtocolError(f"{what} has a field numbered 0")
        if wire == VARINT:
            value, offset = _varint(view, offset, what)
            yield number, wire, value
        elif wire == FIXED64:
            if offset + 8 > len(view):
                raise ProtocolError(f"{what} is truncated")
            yield number, wire, bytes(view[offset : offset + 8])
            offset += 8
        elif wire == BYTES:
            length, offset = _varint(view, offset, what)
            if offset + length > len(view):
                raise ProtocolError(f"{what} is truncated")
            yield number, wire, view[offset : offset + length]
            offset += length
        else:
            raise ProtocolError(f"{what} uses protobuf wire type {wire}")


def _varint(view: memoryview, offset: int, what: str) -> tuple[int, int]:
    value = shift = 0
    for i in range(_MAX_VARINT_BYTES):
        if offset + i >= len(view):
            raise ProtocolError(f"{what} is truncated")
        byte = view[offset + i]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, offset + i + 1
    raise ProtocolError(f"{what} has an over-long varint")


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def seal_version(blob: bytes | memoryview) -> tuple[int, int]:
    """The (major, minor) SEAL version in a serialised SEAL object's header."""
    if len(blob) < SEAL_HEADER_BYTES:
        raise ProtocolError("a SEAL object is shorter than its header")
    magic, size, major, minor = struct.unpack_from("<HBBB", blob)
    if magic != SEAL_MAGIC or size != SEAL_HEADER_BYTES:
        raise ProtocolError("not a serialised SEAL object")
    return major, minor


def _seal_object(version: tuple[int, int], body: bytes) -> bytes:
    total = SEAL_HEADER_BYTES + len(body)
    header = struct.pack(
        "<HBBBBHQ", SEAL_MAGIC, SEAL_HEADER_BYTES, *version, _COMPRESSION_NONE, 0, total
    )
    return header + body


def seal_ciphertext(
    version: tuple[int, int],
    parms_id: list[int],
    size: int,
    degree: int,
    limbs: int,
    scale: float,
    data: np.ndarray[Any, np.dtype[np.uint64]],
) -> bytes:
    """A SEAL 4 ``Ciphertext`` (NTT form, uncompressed) with ``data`` as its words.

    Layout: parms_id (4 u64), is_ntt_form (u8), size, degree, limb count (u64
    each), scale (f64), correction factor (u64, 1 outside BGV), then the word
    array as its own SEAL object (u64 count, then the words).
    """
    if data.size != size * degree * limbs or len(parms_id) != 4:
        raise ProtocolError("ciphertext data does not match its dimensions")
    words = np.ascontiguousarray(data, dtype="<u8")
    array = _seal_object(version, struct.pack("<Q", words.size) + words.tobytes())
    members = struct.pack("<4QB", *parms_id, 1)
    members += struct.pack("<QQQdQ", size, degree, limbs, scale, 1)
    return _seal_object(version, members + array)


def ckks_vector_bytes(ciphertext: bytes, count: int, scale: float) -> bytes:
    """TenSEAL's ``CKKSVectorProto``: sizes = [count], one ciphertext, the scale."""
    sizes = encode_varint(count)
    return b"".join(
        [
            b"\x0a" + encode_varint(len(sizes)) + sizes,
            b"\x12" + encode_varint(len(ciphertext)) + ciphertext,
            b"\x19" + struct.pack("<d", scale),
        ]
    )
