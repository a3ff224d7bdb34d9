"""SecAgg+ wire format: stage names and versioned, length-checked binary messages.

Every payload starts with a 36-byte header::

    b"SA" | version (u8) | kind (u8) | config digest (32 bytes)

``kind`` is the stage code, with the high bit set on coordinator-to-node
messages, so a payload replayed in another stage, in the other direction or
in another session (or under another configuration) is refused before it is
parsed. Integers are big-endian; names are a u8 length and UTF-8; vectors are
raw little-endian words. Decoders check every length, count and name before
any cryptography looks at the content.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import numpy as np

from cleanroom.errors import ProtocolError
from protocols.prg import MaskVector
from protocols.shamir import SHARE_BYTES, Share

ADVERTISE_KEYS: Final = "secagg/advertise-keys"
"""Node -> coordinator: signed public keys (c_pk for shares, s_pk for masks)."""
SHARE_KEYS: Final = "secagg/share-keys"
"""Coordinator -> node: the neighbours' key set; node -> coordinator: share bundles."""
MASKED_INPUT: Final = "secagg/masked-input"
"""Coordinator -> node: bundles addressed to it; node -> coordinator: masked vector."""
UNMASK: Final = "secagg/unmask"
"""Coordinator -> node: survivors and dropped; node -> coordinator: their shares."""
STAGES: Final = (ADVERTISE_KEYS, SHARE_KEYS, MASKED_INPUT, UNMASK)

WIRE_VERSION: Final = 2
"""2: masks are AES-256-CTR from counter block 2 (``protocols.prg``), so a node
of version 1 fails at the first message instead of at the opened sum."""
PUBLIC_KEY_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64
AEAD_TAG_BYTES: Final = 16
SHARE_CIPHERTEXT_BYTES: Final = 2 * SHARE_BYTES + AEAD_TAG_BYTES
HEADER_BYTES: Final = 36
_ADVERT_KEY_BYTES: Final = 2 * PUBLIC_KEY_BYTES + SIGNATURE_BYTES

_MAGIC: Final = b"SA"
_STAGE_CODES: Final = {stage: code for code, stage in enumerate(STAGES, start=1)}
_FROM_COORDINATOR: Final = 0x80
_ADVERTISE_DOMAIN: Final = b"cleanroom/secagg/v1/advertise\x00"


def header(stage: str, *, from_coordinator: bool, digest: bytes) -> bytes:
    """The header that binds a payload to its stage, direction and configuration."""
    return _MAGIC + bytes([WIRE_VERSION, _kind(stage, from_coordinator)]) + digest


def _kind(stage: str, from_coordinator: bool) -> int:
    return _STAGE_CODES[stage] | (_FROM_COORDINATOR if from_coordinator else 0)


@lru_cache(maxsize=4096)
def encode_name(name: str) -> bytes:
    """u8 length then UTF-8; also used inside signatures and KDF contexts.

    Cached: a session encodes the same few hundred names tens of thousands of times.
    """
    raw = name.encode()
    if not 0 < len(raw) <= 255:
        raise ProtocolError(f"party name {name!r} must be 1..255 bytes of UTF-8")
    return bytes([len(raw)]) + raw


@dataclass(frozen=True)
class KeyAdvertisement:
    """A party's two X25519 public keys, signed with its Ed25519 identity key."""

    party: str
    c_pk: bytes
    s_pk: bytes
    signature: bytes

    @staticmethod
    def signed_bytes(digest: bytes, party: str, c_pk: bytes, s_pk: bytes) -> bytes:
        """What the signature covers: domain, configuration, party and both keys."""
        return _ADVERTISE_DOMAIN + digest + encode_name(party) + c_pk + s_pk

    def encode_body(self) -> bytes:
        """The advertisement without a header (it is embedded in key sets)."""
        return encode_name(self.party) + self.c_pk + self.s_pk + self.signature

    def encode(self, digest: bytes) -> bytes:
        """Node -> coordinator payload of stage ADVERTISE_KEYS."""
        start = header(ADVERTISE_KEYS, from_coordinator=False, digest=digest)
        return start + self.encode_body()

    @classmethod
    def decode(cls, payload: bytes, digest: bytes) -> KeyAdvertisement:
        """Parse and size-check an ADVERTISE_KEYS payload (signature unchecked)."""
        reader = Reader.open(payload, ADVERTISE_KEYS, False, digest)
        advert = reader.advertisement()
        reader.finish()
        return advert


@dataclass(frozen=True)
class KeySet:
    """Coordinator -> node (SHARE_KEYS): the advertisements of the node's neighbours."""

    adverts: tuple[KeyAdvertisement, ...]

    def encode(self, digest: bytes) -> bytes:
        """Serialise with the coordinator-direction SHARE_KEYS header."""
        parts = [header(SHARE_KEYS, from_coordinator=True, digest=digest)]
        parts.append(_u16(len(self.adverts)))
        parts += [a.encode_body() for a in sorted(self.adverts, key=lambda a: a.party)]
        return b"".join(parts)

    @classmethod
    def decode(cls, payload: bytes, digest: bytes) -> KeySet:
        """Parse; refuses a party that appears twice."""
        reader = Reader.open(payload, SHARE_KEYS, True, digest)
        adverts = tuple(reader.advertisement() for _ in range(reader.u16()))
        reader.finish()
        check_unique((a.party for a in adverts), "the key set")
        return cls(adverts)


@dataclass(frozen=True)
class ShareBundles:
    """Node -> coordinator (SHARE_KEYS): one encrypted share bundle per recipient."""

    by_recipient: tuple[tuple[str, bytes], ...]

    def encode(self, digest: bytes) -> bytes:
        """Serialise with the node-direction SHARE_KEYS header."""
        start = header(SHARE_KEYS, from_coordinator=False, digest=digest)
        return start + _encode_ciphertexts(self.by_recipient)

    @classmethod
    def decode(cls, payload: bytes, digest: bytes) -> ShareBundles:
        """Parse; every ciphertext must have the exact bundle size."""
        reader = Reader.open(payload, SHARE_KEYS, False, digest)
        return cls(reader.ciphertexts("share bundles"))


@dataclass(frozen=True)
class ForwardedShares:
    """Coordinator -> node (MASKED_INPUT): the bundles addressed to it, by sender."""

    by_sender: tuple[tuple[str, bytes], ...]

    def encode(self, digest: bytes) -> bytes:
        """Serialise with the coordinator-direction MASKED_INPUT header."""
        start = header(MASKED_INPUT, from_coordinator=True, digest=digest)
        return start + _encode_ciphertexts(self.by_sender)

    @classmethod
    def decode(cls, payload: bytes, digest: bytes) -> ForwardedShares:
        """Parse; every ciphertext must have the exact bundle size."""
        reader = Reader.open(payload, MASKED_INPUT, True, digest)
        return cls(reader.ciphertexts("forwarded shares"))


@dataclass(frozen=True)
class MaskedInput:
    """Node -> coordinator (MASKED_INPUT): y = x + masks, raw little-endian words."""

    vector: MaskVector

    def encode(self, digest: bytes) -> bytes:
        """Header, then the vector (``encode_vector``)."""
        start = header(MASKED_INPUT, from_coordinator=False, digest=digest)
        return b"".join([start, *encode_vector(self.vector)])

    @classmethod
    def decode(
        cls, payload: bytes, digest: bytes, *, length: int, dtype: np.dtype[Any]
    ) -> MaskedInput:
        """Parse; refuses any length or width other than the configured ones."""
        reader = Reader.open(payload, MASKED_INPUT, False, digest)
        vector = reader.vector(length, dtype)
        reader.finish()
        return cls(vector)


def encode_vector(vector: MaskVector) -> list[bytes | memoryview]:
    """u32 element count, u8 element width, then the raw little-endian words: as
    parts for ``bytes.join``, so a long vector is copied once, into the payload."""
    words = vector.astype(vector.dtype.newbyteorder("<"), copy=False)
    meta = _u32(vector.size) + bytes([vector.dtype.itemsize])
    return [meta, np.ascontiguousarray(words).data]


@dataclass(frozen=True)
class UnmaskRequest:
    """Coordinator -> node (UNMASK): who sent a masked input and who did not."""

    survivors: tuple[str, ...]
    dropped: tuple[str, ...]

    def encode(self, digest: bytes) -> bytes:
        """Header then two name lists (survivors, dropped), each a u16 count."""
        parts = [header(UNMASK, from_coordinator=True, digest=digest)]
        for names in (self.survivors, self.dropped):
            parts.append(_u16(len(names)))
            parts += [encode_name(n) for n in sorted(names)]
        return b"".join(parts)

    @classmethod
    def decode(cls, payload: bytes, digest: bytes) -> UnmaskRequest:
        """Parse; refuses a name repeated within either list."""
        reader = Reader.open(payload, UNMASK, True, digest)
        survivors = reader.names("the survivor set")
        dropped = reader.names("the dropped set")
        reader.finish()
        return cls(survivors, dropped)


@dataclass(frozen=True)
class UnmaskResponse:
    """Node -> coordinator (UNMASK): self-mask shares of survivors, key shares of
    dropped parties; never both for the same party."""

    self_mask_shares: tuple[tuple[str, Share], ...]
    mask_key_shares: tuple[tuple[str, Share], ...]

    def encode(self, digest: bytes) -> bytes:
        """Header then two lists of (owner name, share)."""
        parts = [header(UNMASK, from_coordinator=False, digest=digest)]
        for entries in (self.self_mask_shares, self.mask_key_shares):
            parts.append(_u16(len(entries)))
            parts += [encode_name(o) + s.to_bytes() for o, s in sorted(entries)]
        return b"".join(parts)

    @classmethod
    def decode(cls, payload: bytes, digest: bytes) -> UnmaskResponse:
        """Parse; refuses an owner repeated within either list."""
        reader = Reader.open(payload, UNMASK, False, digest)
        lists = []
        for what in ("self-mask shares", "mask-key shares"):
            entries = tuple(
                (reader.name(), Share.from_bytes(reader.take(SHARE_BYTES)))
                for _ in range(reader.u16())
            )
            check_unique((owner for owner, _ in entries), what)
            lists.append(entries)
        reader.finish()
        return cls(lists[0], lists[1])


def _encode_ciphertexts(entries: tuple[tuple[str, bytes], ...]) -> bytes:
    parts = [_u16(len(entries))]
    parts += [encode_name(name) + ct for name, ct in sorted(entries)]
    return b"".join(parts)


def _u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def check_unique(names: Iterable[str], what: str) -> None:
    """ProtocolError naming the first name that repeats in ``names``."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ProtocolError(f"{name!r} appears more than once in {what}")
        seen.add(name)


class Reader:
    """Bounds-checked sequential parser; every failure is a ProtocolError."""

    def __init__(self, data: bytes, offset: int) -> None:
        self._data = data
        self._offset = offset

    @classmethod
    def open(
        cls, payload: bytes, stage: str, from_coordinator: bool, digest: bytes
    ) -> Reader:
        if not isinstance(payload, bytes):
            raise ProtocolError("payload must be bytes")
        if payload[:2] != _MAGIC or len(payload) < HEADER_BYTES:
            raise ProtocolError("not a SecAgg message")
        if payload[2] != WIRE_VERSION:
            raise ProtocolError(f"unsupported SecAgg wire version {payload[2]}")
        if payload[3] != _kind(stage, from_coordinator):
            raise ProtocolError(f"payload is not a {stage} message in this direction")
        if payload[4:HEADER_BYTES] != digest:
            raise ProtocolError("payload belongs to another session or configuration")
        return cls(payload, HEADER_BYTES)

    def take(self, n: int) -> bytes:
        start = self._offset
        end = start + n
        if end > len(self._data):
            raise ProtocolError("message is truncated")
        self._offset = end
        return self._data[start:end]

    def u8(self) -> int:
        offset = self._offset
        if offset >= len(self._data):
            raise ProtocolError("message is truncated")
        self._offset = offset + 1
        return self._data[offset]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def name(self) -> str:
        raw = self.take(self.u8())
        try:
            name = raw.decode()
        except UnicodeDecodeError:
            raise ProtocolError("a party name is not UTF-8") from None
        if not name:
            raise ProtocolError("a party name is empty")
        return name

    def names(self, what: str) -> tuple[str, ...]:
        names = tuple(self.name() for _ in range(self.u16()))
        check_unique(names, what)
        return names

    def vector(self, length: int, dtype: np.dtype[Any]) -> MaskVector:
        """An ``encode_vector`` vector; refuses any length or width other than
        the configured ones."""
        count, width = self.u32(), self.u8()
        if count != length or width != dtype.itemsize:
            raise ProtocolError(
                f"masked vector has {count} x {width}-byte elements; "
                f"expected {length} x {dtype.itemsize}"
            )
        words = np.frombuffer(self.take(count * width), dtype=dtype.newbyteorder("<"))
        return words.astype(dtype, copy=False)

    def advertisement(self) -> KeyAdvertisement:
        party = self.name()
        keys = self.take(_ADVERT_KEY_BYTES)
        return KeyAdvertisement(
            party=party,
            c_pk=keys[:PUBLIC_KEY_BYTES],
            s_pk=keys[PUBLIC_KEY_BYTES : 2 * PUBLIC_KEY_BYTES],
            signature=keys[2 * PUBLIC_KEY_BYTES :],
        )

    def ciphertexts(self, what: str) -> tuple[tuple[str, bytes], ...]:
        entries = tuple(
            (self.name(), self.take(SHARE_CIPHERTEXT_BYTES)) for _ in range(self.u16())
        )
        self.finish()
        check_unique((name for name, _ in entries), what)
        return entries

    def finish(self) -> None:
        if self._offset != len(self._data):
            raise ProtocolError("message has trailing bytes")
