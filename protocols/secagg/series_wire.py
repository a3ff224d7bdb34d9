"""The wire format of a series round (``series``): two stages, versioned and
length-checked like the full protocol's (``messages``).

Every payload starts with a 36-byte header::

    b"SR" | version (u8) | kind (u8) | series digest (32 bytes)

``kind`` is the stage code, with the high bit set on coordinator-to-node
messages; the digest is the round's ``series_digest``, never a full session's,
so no payload of one protocol parses as the other's. Share values are
``shamir.VALUE_BYTES`` big-endian field elements; their indices and threshold
are fixed by the configuration and are not sent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from cleanroom.errors import ProtocolError
from protocols.prg import MaskVector
from protocols.secagg.config import SecAggConfig
from protocols.secagg.messages import (
    AEAD_TAG_BYTES,
    HEADER_BYTES,
    Reader,
    check_unique,
    encode_name,
    encode_vector,
)
from protocols.shamir import PRIME, VALUE_BYTES

SERIES_INPUT: Final = "secagg/series-input"
"""Node -> coordinator: the masked vector and one share bundle per other party."""
SERIES_UNMASK: Final = "secagg/series-unmask"
"""Coordinator -> node: survivors, dropped and the survivors' bundles for it;
node -> coordinator: the shares that remove the survivors' masks."""
SERIES_STAGES: Final = (SERIES_INPUT, SERIES_UNMASK)

WIRE_VERSION: Final = 1
_MAGIC: Final = b"SR"
_CODES: Final = {SERIES_INPUT: 1, SERIES_UNMASK: 2}
_FROM_COORDINATOR: Final = 0x80
_DIGEST_DOMAIN: Final = b"cleanroom/secagg/v1/series\x00"


def series_digest(config: SecAggConfig) -> bytes:
    """The digest a series round binds everything to: its configuration's digest
    under a domain of its own (a full session over the same configuration has
    other keys, masks and headers)."""
    return hashlib.sha256(_DIGEST_DOMAIN + config.digest).digest()


def bundle_bytes(parties: int) -> int:
    """A bundle's ciphertext size: the self-mask share and one pair-seed share per
    other party, each a field element, and the AEAD tag."""
    return parties * VALUE_BYTES + AEAD_TAG_BYTES


def header(stage: str, *, from_coordinator: bool, digest: bytes) -> bytes:
    """The header binding a payload to its stage, direction and round."""
    kind = _CODES[stage] | (_FROM_COORDINATOR if from_coordinator else 0)
    return _MAGIC + bytes([WIRE_VERSION, kind]) + digest


def _open(payload: bytes, stage: str, from_coordinator: bool, digest: bytes) -> Reader:
    if not isinstance(payload, bytes) or len(payload) < HEADER_BYTES:
        raise ProtocolError("not a SecAgg series message")
    if payload[:HEADER_BYTES] != header(
        stage, from_coordinator=from_coordinator, digest=digest
    ):
        raise ProtocolError(
            f"payload is not a {stage} message of this round in this direction"
        )
    return Reader(payload, HEADER_BYTES)


def encode_values(values: list[int]) -> bytes:
    """Field elements as fixed-size big-endian words."""
    return b"".join(v.to_bytes(VALUE_BYTES, "big") for v in values)


def decode_values(raw: bytes) -> list[int]:
    """The inverse of ``encode_values``; ProtocolError on a size or range error."""
    if len(raw) % VALUE_BYTES:
        raise ProtocolError("share values have the wrong size")
    values = [
        int.from_bytes(raw[i : i + VALUE_BYTES], "big")
        for i in range(0, len(raw), VALUE_BYTES)
    ]
    if any(v >= PRIME for v in values):
        raise ProtocolError("a share value is not a field element")
    return values


def _bundles(reader: Reader, size: int, what: str) -> dict[str, bytes]:
    entries = [(reader.name(), reader.take(size)) for _ in range(reader.u16())]
    check_unique((name for name, _ in entries), what)
    return dict(entries)


def _encode_bundles(bundles: dict[str, bytes]) -> bytes:
    parts = [len(bundles).to_bytes(2, "big")]
    parts += [encode_name(name) + ct for name, ct in sorted(bundles.items())]
    return b"".join(parts)


@dataclass(frozen=True)
class SeriesInput:
    """Node -> coordinator: y = x + masks, then the bundles by recipient."""

    vector: MaskVector
    bundles: dict[str, bytes]

    def encode(self, digest: bytes) -> bytes:
        start = header(SERIES_INPUT, from_coordinator=False, digest=digest)
        parts = [start, *encode_vector(self.vector), _encode_bundles(self.bundles)]
        return b"".join(parts)

    @classmethod
    def decode(
        cls, payload: bytes, digest: bytes, *, length: int, dtype: np.dtype[Any],
        bundle_size: int,
    ) -> SeriesInput:  # fmt: skip
        """Parse; refuses any length or width other than the configured ones."""
        reader = _open(payload, SERIES_INPUT, False, digest)
        vector = reader.vector(length, dtype)
        bundles = _bundles(reader, bundle_size, "share bundles")
        reader.finish()
        return cls(vector, bundles)


@dataclass(frozen=True)
class SeriesRequest:
    """Coordinator -> node: who sent an input, who did not, and the survivors'
    bundles addressed to this node."""

    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    bundles: dict[str, bytes]

    def encode(self, digest: bytes) -> bytes:
        parts = [header(SERIES_UNMASK, from_coordinator=True, digest=digest)]
        for names in (self.survivors, self.dropped):
            parts.append(len(names).to_bytes(2, "big"))
            parts += [encode_name(n) for n in sorted(names)]
        parts.append(_encode_bundles(self.bundles))
        return b"".join(parts)

    @classmethod
    def decode(
        cls, payload: bytes, digest: bytes, *, bundle_size: int
    ) -> SeriesRequest:
        reader = _open(payload, SERIES_UNMASK, True, digest)
        survivors = reader.names("the survivor set")
        dropped = reader.names("the dropped set")
        bundles = _bundles(reader, bundle_size, "forwarded bundles")
        reader.finish()
        return cls(survivors, dropped, bundles)


@dataclass(frozen=True)
class SeriesResponse:
    """Node -> coordinator: its share of each survivor's self-mask seed, and of
    each (survivor, dropped) pair's mask seed as the survivor dealt it."""

    self_mask: dict[str, int]
    pair: dict[tuple[str, str], int]

    def encode(self, digest: bytes) -> bytes:
        parts = [header(SERIES_UNMASK, from_coordinator=False, digest=digest)]
        parts.append(len(self.self_mask).to_bytes(2, "big"))
        parts += [
            encode_name(owner) + value.to_bytes(VALUE_BYTES, "big")
            for owner, value in sorted(self.self_mask.items())
        ]
        parts.append(len(self.pair).to_bytes(4, "big"))
        parts += [
            encode_name(owner) + encode_name(peer) + value.to_bytes(VALUE_BYTES, "big")
            for (owner, peer), value in sorted(self.pair.items())
        ]
        return b"".join(parts)

    @classmethod
    def decode(cls, payload: bytes, digest: bytes) -> SeriesResponse:
        """Parse; refuses a repeated owner or pair and a value outside the field."""
        reader = _open(payload, SERIES_UNMASK, False, digest)
        self_mask: dict[str, int] = {}
        for _ in range(reader.u16()):
            owner = reader.name()
            if owner in self_mask:
                raise ProtocolError(f"{owner!r} appears more than once")
            self_mask[owner] = decode_values(reader.take(VALUE_BYTES))[0]
        pair: dict[tuple[str, str], int] = {}
        for _ in range(reader.u32()):
            key = (reader.name(), reader.name())
            if key in pair:
                raise ProtocolError(f"the pair {key} appears more than once")
            pair[key] = decode_values(reader.take(VALUE_BYTES))[0]
        reader.finish()
        return cls(self_mask, pair)
