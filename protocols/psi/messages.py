"""PSI wire format: stage names and chunked vectors of fixed-width elements.

Every payload is one chunk of a vector (a party's blinded set, its re-blinded tags,
a result column) and starts with a 36-byte header then a 15-byte chunk header::

    b"PI" | version (u8) | stage code (u8) | config digest (32 bytes)
    origin (u8) | hop (u8) | chunk index (u32) | chunk count (u32) | items (u32)
    | element width (u8)

``origin`` is the ring index of the party whose set this is and ``hop`` how many
parties' keys it carries. A vector of ``items`` elements is sent as
``ceil(items / chunk_items)`` chunks (one empty chunk for an empty vector), so no
message exceeds ``chunk_items`` elements. Sizes are checked against the
configuration's caps before any element is looked at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cleanroom.errors import ProtocolError

BLIND: Final = "psi/blind"
"""A party's own set, hashed, blinded with its key and shuffled (32-byte points)."""
RELAY: Final = "psi/relay"
"""Ring: a set on its way round, carrying ``hop`` keys (32-byte points)."""
REBLIND: Final = "psi/reblind"
"""Two parties: the receiver's set under both keys, as 16-byte tags."""
FINAL: Final = "psi/final"
"""Ring: a set under every key, as 16-byte tags, to a receiver's aggregator."""
RESULT: Final = "psi/result"
"""Ring: aggregator -> receiver, one u32 per receiver position, or one count."""
STAGES: Final = (BLIND, RELAY, REBLIND, FINAL, RESULT)
WIDTH: Final = {BLIND: 32, RELAY: 32, REBLIND: 16, FINAL: 16, RESULT: 4}

WIRE_VERSION: Final = 2
"""2: X25519 u-coordinates (1 was ristretto255); a v1 peer is refused."""
HEADER_BYTES: Final = 36
CHUNK_HEADER_BYTES: Final = 15
_MAGIC: Final = b"PI"
_CODES: Final = {stage: code for code, stage in enumerate(STAGES, start=1)}


@dataclass(frozen=True)
class Chunk:
    """One decoded chunk; ``data`` holds exactly its elements."""

    stage: str
    origin: int
    hop: int
    index: int
    count: int
    items: int
    data: bytes


def chunk_count(items: int, chunk_items: int) -> int:
    """Chunks a vector of ``items`` elements travels in (at least one)."""
    return max(1, -(-items // chunk_items))


def encode_chunks(
    stage: str, *, origin: int, hop: int, data: bytes, digest: bytes, chunk_items: int
) -> list[bytes]:
    """Split a packed vector into payloads of at most ``chunk_items`` elements."""
    items = len(data) // WIDTH[stage]
    step = chunk_items * WIDTH[stage]
    return [
        encode_chunk(
            stage,
            origin=origin,
            hop=hop,
            index=index,
            items=items,
            data=data[index * step : (index + 1) * step],
            digest=digest,
            chunk_items=chunk_items,
        )
        for index in range(chunk_count(items, chunk_items))
    ]


def encode_chunk(
    stage: str,
    *,
    origin: int,
    hop: int,
    index: int,
    items: int,
    data: bytes,
    digest: bytes,
    chunk_items: int,
) -> bytes:
    """Chunk ``index`` of a vector of ``items`` elements; ``data`` is its share."""
    return b"".join(
        [
            _MAGIC,
            bytes([WIRE_VERSION, _CODES[stage]]),
            digest,
            bytes([origin, hop]),
            index.to_bytes(4, "big"),
            chunk_count(items, chunk_items).to_bytes(4, "big"),
            items.to_bytes(4, "big"),
            bytes([WIDTH[stage]]),
            data,
        ]
    )


def decode_chunk(
    payload: bytes, stage: str, digest: bytes, *, max_items: int, chunk_items: int
) -> Chunk:
    """Parse one chunk; refuse another stage or session, oversize or bad lengths."""
    if not isinstance(payload, bytes) or len(payload) < HEADER_BYTES + 15:
        raise ProtocolError(f"{stage}: not a PSI message")
    if payload[:2] != _MAGIC or payload[2] != WIRE_VERSION:
        raise ProtocolError(f"{stage}: not a PSI v{WIRE_VERSION} message")
    if payload[3] != _CODES[stage]:
        raise ProtocolError(f"{stage}: the payload belongs to another stage")
    if payload[4:HEADER_BYTES] != digest:
        raise ProtocolError(f"{stage}: payload belongs to another session or config")
    body = HEADER_BYTES
    origin, hop = payload[body], payload[body + 1]
    index = int.from_bytes(payload[body + 2 : body + 6], "big")
    count = int.from_bytes(payload[body + 6 : body + 10], "big")
    items = int.from_bytes(payload[body + 10 : body + 14], "big")
    width = payload[body + 14]
    if width != WIDTH[stage]:
        raise ProtocolError(f"{stage}: elements must be {WIDTH[stage]} bytes")
    if items > max_items:
        raise ProtocolError(f"{stage}: {items} items exceed the cap of {max_items}")
    if count != chunk_count(items, chunk_items) or index >= count:
        raise ProtocolError(f"{stage}: chunk {index} of {count} is inconsistent")
    expected = min(chunk_items, items - index * chunk_items) * width
    data = payload[body + CHUNK_HEADER_BYTES :]
    if len(data) != expected:
        raise ProtocolError(f"{stage}: chunk {index} has the wrong length")
    return Chunk(stage, origin, hop, index, count, items, data)


class ChunkStream:
    """Reassembles one vector: chunks in order, one total, nothing after the end."""

    def __init__(self, stage: str, sender: str) -> None:
        self._what = f"{stage} from {sender}"
        self._next = 0
        self._count: int | None = None
        self._items = 0
        self._meta: tuple[int, int] | None = None
        self._parts: list[bytes] = []

    @property
    def complete(self) -> bool:
        """True once the last chunk arrived."""
        return self._count is not None and self._next == self._count

    @property
    def items(self) -> int:
        """The vector's declared element count (0 before the first chunk)."""
        return self._items

    def accept(self, chunk: Chunk) -> bytes:
        """Check ``chunk`` continues this vector and keep it; returns its data."""
        if self.complete:
            raise ProtocolError(f"{self._what}: more chunks after the last")
        if self._count is None:
            self._count, self._items = chunk.count, chunk.items
            self._meta = (chunk.origin, chunk.hop)
        elif (chunk.count, chunk.items) != (self._count, self._items) or (
            chunk.origin,
            chunk.hop,
        ) != self._meta:
            raise ProtocolError(f"{self._what}: chunk {chunk.index} changes the vector")
        if chunk.index != self._next:
            raise ProtocolError(
                f"{self._what}: expected chunk {self._next}, got {chunk.index}"
            )
        self._next += 1
        self._parts.append(chunk.data)
        return chunk.data

    def data(self) -> bytes:
        """The whole vector (only once complete)."""
        if not self.complete:
            raise ProtocolError(f"{self._what}: the vector is incomplete")
        return b"".join(self._parts)
