"""OPRF lookup wire format: a batch of blinded elements and its evaluation.

Payload: b"OL" | version (u8) | stage code (u8) | config digest (32) | table
content hash (32) | table key id (32) | count (u32) | count x 32-byte elements.
The count must equal the job's declared evaluation count, which is checked
before the elements are read.
"""

from __future__ import annotations

from typing import Final

from cleanroom.errors import ProtocolError
from protocols.psi._sodium import POINT_BYTES

QUERY: Final = "oprf/query"
"""Buyer -> holder: the blinded batch."""
EVALUATE: Final = "oprf/evaluate"
"""Holder -> buyer: k * B for each blinded element, in order."""
_CODES: Final = {QUERY: 1, EVALUATE: 2}
_MAGIC: Final = b"OL"
WIRE_VERSION: Final = 1
HEADER_BYTES: Final = 4 + 32 + 32 + 32 + 4


def encode(
    stage: str, digest: bytes, content_hash: bytes, key_id: bytes, elements: bytes
) -> bytes:
    """One QUERY or EVALUATE payload."""
    count = len(elements) // POINT_BYTES
    return b"".join(
        [
            _MAGIC,
            bytes([WIRE_VERSION, _CODES[stage]]),
            digest,
            content_hash,
            key_id,
            count.to_bytes(4, "big"),
            elements,
        ]
    )


def decode(
    payload: bytes,
    stage: str,
    digest: bytes,
    content_hash: bytes,
    key_id: bytes,
    count: int,
) -> bytes:
    """The packed elements; refuses another stage, session, table version or size."""
    if not isinstance(payload, bytes) or len(payload) < HEADER_BYTES:
        raise ProtocolError(f"{stage}: not an OPRF lookup message")
    if payload[:2] != _MAGIC or payload[2] != WIRE_VERSION:
        raise ProtocolError(f"{stage}: not an OPRF lookup v{WIRE_VERSION} message")
    if payload[3] != _CODES[stage]:
        raise ProtocolError(f"{stage}: the payload belongs to another stage")
    if payload[4:36] != digest:
        raise ProtocolError(f"{stage}: payload belongs to another session or config")
    if payload[36:68] != content_hash or payload[68:100] != key_id:
        raise ProtocolError(f"{stage}: bound to another table version")
    declared = int.from_bytes(payload[100:104], "big")
    if declared != count:
        raise ProtocolError(f"{stage}: {declared} elements, the job declared {count}")
    if len(payload) != HEADER_BYTES + count * POINT_BYTES:
        raise ProtocolError(f"{stage}: wrong length for {count} elements")
    return payload[HEADER_BYTES:]
