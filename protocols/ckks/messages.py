"""CKKS inference wire format: stage names and length-checked binary messages.

Every payload starts with a 36-byte header::

    b"CK" | version (u8) | kind (u8) | config digest (32 bytes)

``kind`` is the stage code, its high bit set on owner-to-buyer messages, so a
payload replayed in another stage, direction or run is refused before it is parsed.
Feature and score messages then carry the SHA-256 of the public context they were
made under and their block index. Integers are big-endian. Every length is checked
against the configuration's caps before any byte is handed to the CKKS library.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from cleanroom.errors import ProtocolError

CONTEXT: Final = "ckks/context"
"""Buyer -> owner: the public context (parameters, public key, relin key)."""
FEATURES: Final = "ckks/features"
"""Buyer -> owner: one block's ciphertexts, one per feature."""
SCORES: Final = "ckks/scores"
"""Owner -> buyer: one block's encrypted, flooded scores."""
STAGES: Final = (CONTEXT, FEATURES, SCORES)

WIRE_VERSION: Final = 1
HEADER_BYTES: Final = 36
DIGEST_BYTES: Final = 32
_MAGIC: Final = b"CK"
_CODES: Final = {stage: code for code, stage in enumerate(STAGES, start=1)}
_FROM_OWNER: Final = 0x80


def header(stage: str, *, from_owner: bool, digest: bytes) -> bytes:
    """The header binding a payload to its stage, direction and configuration."""
    return _MAGIC + bytes([WIRE_VERSION, _kind(stage, from_owner)]) + digest


def _kind(stage: str, from_owner: bool) -> int:
    return _CODES[stage] | (_FROM_OWNER if from_owner else 0)


def _body(
    payload: bytes, stage: str, from_owner: bool, digest: bytes, cap: int
) -> memoryview:
    if not isinstance(payload, bytes):
        raise ProtocolError("payload must be bytes")
    if len(payload) > HEADER_BYTES + cap:
        raise ProtocolError(
            f"a {stage} payload is larger than {HEADER_BYTES + cap} bytes"
        )
    if payload[:2] != _MAGIC or len(payload) < HEADER_BYTES:
        raise ProtocolError("not a CKKS inference message")
    if payload[2] != WIRE_VERSION:
        raise ProtocolError(f"unsupported CKKS wire version {payload[2]}")
    if payload[3] != _kind(stage, from_owner):
        raise ProtocolError(f"payload is not a {stage} message in this direction")
    if payload[4:HEADER_BYTES] != digest:
        raise ProtocolError("payload belongs to another run or configuration")
    return memoryview(payload)[HEADER_BYTES:]  # no copy of megabytes of ciphertext


def encode_context(context: bytes, digest: bytes) -> bytes:
    """Buyer -> owner CONTEXT payload."""
    return header(CONTEXT, from_owner=False, digest=digest) + context


def decode_context(payload: bytes, digest: bytes, cap: int) -> bytes:
    """The public context bytes (at most ``cap``), not yet validated as a context."""
    return bytes(_body(payload, CONTEXT, False, digest, cap))


@dataclass(frozen=True)
class FeatureBatch:
    """Buyer -> owner: ciphertext ``j`` holds feature ``j`` of block ``block``."""

    context_digest: bytes
    block: int
    ciphertexts: tuple[bytes, ...]

    def encode(self, digest: bytes) -> bytes:
        parts = [
            header(FEATURES, from_owner=False, digest=digest),
            self.context_digest,
            struct.pack(">IH", self.block, len(self.ciphertexts)),
        ]
        for ct in self.ciphertexts:
            parts += [struct.pack(">I", len(ct)), ct]
        return b"".join(parts)

    @classmethod
    def decode(
        cls, payload: bytes, digest: bytes, *, features: int, ciphertext_cap: int
    ) -> FeatureBatch:
        """Parse; refuses any count but ``features`` and any oversized ciphertext."""
        cap = DIGEST_BYTES + 6 + features * (4 + ciphertext_cap)
        body = _body(payload, FEATURES, False, digest, cap)
        if len(body) < DIGEST_BYTES + 6:
            raise ProtocolError("a feature batch is truncated")
        block, count = struct.unpack_from(">IH", body, DIGEST_BYTES)
        if count != features:
            raise ProtocolError(
                f"a feature batch holds {count} ciphertexts, not {features}"
            )
        offset = DIGEST_BYTES + 6
        cts = []
        for _ in range(count):
            if offset + 4 > len(body):
                raise ProtocolError("a feature batch is truncated")
            (length,) = struct.unpack_from(">I", body, offset)
            offset += 4
            if length > ciphertext_cap or offset + length > len(body):
                raise ProtocolError("a feature ciphertext is oversized or truncated")
            cts.append(bytes(body[offset : offset + length]))
            offset += length
        if offset != len(body):
            raise ProtocolError("a feature batch has trailing bytes")
        return cls(bytes(body[:DIGEST_BYTES]), block, tuple(cts))


@dataclass(frozen=True)
class ScoreBlock:
    """Owner -> buyer: the encrypted scores of block ``block``."""

    context_digest: bytes
    block: int
    ciphertext: bytes

    def encode(self, digest: bytes) -> bytes:
        return b"".join(
            [
                header(SCORES, from_owner=True, digest=digest),
                self.context_digest,
                struct.pack(">I", self.block),
                self.ciphertext,
            ]
        )

    @classmethod
    def decode(
        cls, payload: bytes, digest: bytes, *, ciphertext_cap: int
    ) -> ScoreBlock:
        """Parse; the ciphertext is at most ``ciphertext_cap`` bytes."""
        body = _body(payload, SCORES, True, digest, DIGEST_BYTES + 4 + ciphertext_cap)
        if len(body) <= DIGEST_BYTES + 4:
            raise ProtocolError("a score block is truncated")
        (block,) = struct.unpack_from(">I", body, DIGEST_BYTES)
        return cls(bytes(body[:DIGEST_BYTES]), block, bytes(body[DIGEST_BYTES + 4 :]))
