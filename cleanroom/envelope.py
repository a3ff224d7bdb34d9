"""Envelopes: node-to-node messages the relay can neither read nor alter.

Wire format, version 1 (integers big-endian)::

    "CREV" | version u8 = 1 | kind u8 (1 sealed, 2 signed-only)
    | header length u16 | header
    | sealed:      ephemeral X25519 public (32) | ciphertext length u32 | ciphertext
    | signed-only: payload length u32 | payload
    | Ed25519 signature (64) by the sender over SIGN_LABEL || every byte before it

    header = job_id | sender | recipient | stage   (each: u16 length | UTF-8)
             | seq u64

Sealing: an ephemeral X25519 key agrees with the recipient's exchange key;
HKDF-SHA256(shared, info = SEAL_LABEL || ephemeral public || recipient public
|| header) gives a 32-byte ChaCha20-Poly1305 key and a 12-byte nonce, both
single-use because the ephemeral key is fresh; the header is the AEAD's
associated data. The outer signature lets anyone holding the sender's public
key reject a forged or altered envelope before any decryption.

    SIGN_LABEL = b"cleanroom/envelope/v1/signature\x00"
    SEAL_LABEL = b"cleanroom/envelope/v1/seal\x00"
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature as _CryptographyInvalidSignature
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cleanroom.errors import CleanroomError, EnvelopeError, ProtocolError

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "EnvelopeHeader",
    "ReplayGuard",
    "open_envelope",
    "seal",
    "sign_message",
    "verify_message",
]

MAX_PAYLOAD_BYTES = 1024 * 1024 * 1024  # streamed in chunks; 1 GiB bounds memory
MAX_FIELD_BYTES = 255
_MAGIC = b"CREV"
_VERSION = 1
_SEALED, _SIGNED = 1, 2
_SIGN_LABEL = b"cleanroom/envelope/v1/signature\x00"
_SEAL_LABEL = b"cleanroom/envelope/v1/seal\x00"
_KEY_LEN, _NONCE_LEN, _TAG_LEN, _SIG_LEN, _PUB_LEN = 32, 12, 16, 64, 32
_PREFIX = struct.Struct(">4sBBH")
_U16, _U32, _U64 = struct.Struct(">H"), struct.Struct(">I"), struct.Struct(">Q")
_REJECTED = "envelope rejected"

SigningKeyLookup = Callable[[str], bytes] | bytes


@dataclass(frozen=True)
class EnvelopeHeader:
    """Who sent an envelope to whom, for which job, stage and sequence number."""

    job_id: str
    sender: str
    recipient: str
    stage: str
    seq: int

    def encode(self) -> bytes:
        """The canonical bytes of this header (validated first)."""
        _check_header(self)
        fields = (self.job_id, self.sender, self.recipient, self.stage)
        out = b"".join(_U16.pack(len(b)) + b for b in (f.encode() for f in fields))
        return out + _U64.pack(self.seq)


def seal(
    header: EnvelopeHeader,
    payload: bytes,
    *,
    sender_signing: Ed25519PrivateKey,
    recipient_exchange_public: bytes,
    random: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Encrypt ``payload`` to the recipient and sign it as the sender."""
    encoded = _check_inputs(header, payload, sender_signing)
    _check_public(recipient_exchange_public, "recipient exchange key")
    seed = random(_KEY_LEN)
    if not isinstance(seed, bytes) or len(seed) != _KEY_LEN:
        raise ProtocolError("the random source did not return 32 bytes")
    ephemeral = X25519PrivateKey.from_private_bytes(seed)
    ephemeral_public = _raw_public(ephemeral.public_key())
    try:
        shared = ephemeral.exchange(
            X25519PublicKey.from_public_bytes(recipient_exchange_public)
        )
    except ValueError:
        raise ProtocolError("the recipient exchange key is invalid") from None
    key, nonce = _derive(shared, ephemeral_public, recipient_exchange_public, encoded)
    ciphertext = ChaCha20Poly1305(key).encrypt(nonce, payload, encoded)
    body = (
        _frame_prefix(_SEALED, encoded)
        + ephemeral_public
        + _U32.pack(len(ciphertext))
        + ciphertext
    )
    return body + sender_signing.sign(_SIGN_LABEL + body)


def open_envelope(
    data: bytes,
    *,
    recipient: str,
    recipient_exchange: X25519PrivateKey,
    sender_signing_public: SigningKeyLookup,
) -> tuple[EnvelopeHeader, bytes]:
    """Verify, check the addressee, then decrypt; any failure is an EnvelopeError.

    ``sender_signing_public`` is the sender's Ed25519 public key, or a function
    from the header's sender name to it. Replays are refused by ``ReplayGuard``.
    """
    header, encoded, rest = _parse_and_verify(
        data, _SEALED, recipient, sender_signing_public
    )
    ephemeral_public, rest = rest[:_PUB_LEN], rest[_PUB_LEN:]
    try:
        shared = recipient_exchange.exchange(
            X25519PublicKey.from_public_bytes(ephemeral_public)
        )
        own_public = _raw_public(recipient_exchange.public_key())
        key, nonce = _derive(shared, ephemeral_public, own_public, encoded)
        ciphertext = _take_sized(rest, _TAG_LEN, MAX_PAYLOAD_BYTES + _TAG_LEN)
        payload = ChaCha20Poly1305(key).decrypt(nonce, ciphertext, encoded)
    except (ValueError, TypeError, AttributeError, InvalidTag):
        raise EnvelopeError(_REJECTED) from None
    return header, payload


def sign_message(
    header: EnvelopeHeader, payload: bytes, *, signing: Ed25519PrivateKey
) -> bytes:
    """Sign ``payload`` without encrypting it (for messages to the coordinator)."""
    encoded = _check_inputs(header, payload, signing)
    body = _frame_prefix(_SIGNED, encoded) + _U32.pack(len(payload)) + payload
    return body + signing.sign(_SIGN_LABEL + body)


def verify_message(
    data: bytes, *, signing_public: SigningKeyLookup, recipient: str
) -> tuple[EnvelopeHeader, bytes]:
    """Verify a ``sign_message`` output addressed to ``recipient``."""
    header, _, rest = _parse_and_verify(data, _SIGNED, recipient, signing_public)
    try:
        payload = _take_sized(rest, 0, MAX_PAYLOAD_BYTES)
    except ValueError:
        raise EnvelopeError(_REJECTED) from None
    return header, payload


class ReplayGuard:
    """Refuses an envelope unless its seq beats the last one accepted on its channel.

    A channel is (job_id, sender, recipient). Call ``check`` only after the
    envelope verified, so a forgery cannot advance the counter.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, dict[tuple[str, str], int]] = {}

    def check(self, header: EnvelopeHeader) -> None:
        """Accept ``header``'s seq or raise EnvelopeError for a replay or reorder."""
        _check_header(header)
        channel = (header.sender, header.recipient)
        with self._lock:
            per_job = self._last.setdefault(header.job_id, {})
            last = per_job.get(channel)
            if last is not None and header.seq <= last:
                raise EnvelopeError("envelope replayed or out of order")
            per_job[channel] = header.seq

    def seen(self, header: EnvelopeHeader) -> bool:
        """Whether an envelope at or beyond ``header``'s seq was accepted already
        on its channel (a sender resending after a lost acknowledgement)."""
        with self._lock:
            last = self._last.get(header.job_id, {}).get(
                (header.sender, header.recipient)
            )
        return last is not None and header.seq <= last

    def forget(self, job_id: str) -> None:
        """Drop the counters of a finished job."""
        with self._lock:
            self._last.pop(job_id, None)


def _check_header(header: EnvelopeHeader) -> None:
    if not isinstance(header, EnvelopeHeader):
        raise ProtocolError("header must be an EnvelopeHeader")
    for name in ("job_id", "sender", "recipient", "stage"):
        value = getattr(header, name)
        if not isinstance(value, str) or not value:
            raise ProtocolError(f"header.{name} must be a non-empty string")
        if len(value.encode("utf-8", "surrogatepass")) > MAX_FIELD_BYTES:
            raise ProtocolError(f"header.{name} is longer than {MAX_FIELD_BYTES} bytes")
        if not value.isprintable():
            raise ProtocolError(f"header.{name} must be printable text")
    seq = header.seq
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**63:
        raise ProtocolError("header.seq must be an integer in [0, 2**63)")


def _check_inputs(
    header: EnvelopeHeader, payload: bytes, signing: Ed25519PrivateKey
) -> bytes:
    if not isinstance(header, EnvelopeHeader):
        raise ProtocolError("header must be an EnvelopeHeader")
    encoded = header.encode()
    if not isinstance(payload, bytes):
        raise ProtocolError("payload must be bytes")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"payload is larger than {MAX_PAYLOAD_BYTES} bytes")
    if not isinstance(signing, Ed25519PrivateKey):
        raise ProtocolError("the signing key must be an Ed25519 private key")
    return encoded


def _check_public(key: bytes, what: str) -> None:
    if not isinstance(key, bytes) or len(key) != _PUB_LEN:
        raise ProtocolError(f"the {what} must be {_PUB_LEN} raw bytes")


def _frame_prefix(kind: int, encoded_header: bytes) -> bytes:
    return _PREFIX.pack(_MAGIC, _VERSION, kind, len(encoded_header)) + encoded_header


def _parse_and_verify(
    data: bytes, kind: int, recipient: str, signing_public: SigningKeyLookup
) -> tuple[EnvelopeHeader, bytes, bytes]:
    """Split a frame, verify its signature, check the addressee.

    Returns the header, its encoding, and the kind-specific remainder between
    header and signature.
    """
    try:
        if not isinstance(data, bytes) or len(data) < _PREFIX.size + _SIG_LEN:
            raise ValueError
        magic, version, got_kind, header_len = _PREFIX.unpack_from(data)
        if (magic, version, got_kind) != (_MAGIC, _VERSION, kind):
            raise ValueError
        body, signature = data[:-_SIG_LEN], data[-_SIG_LEN:]
        encoded = body[_PREFIX.size : _PREFIX.size + header_len]
        header = _decode_header(encoded)
        public = signing_public
        if callable(public):
            public = public(header.sender)
        if not isinstance(public, bytes) or len(public) != _PUB_LEN:
            raise ValueError
        Ed25519PublicKey.from_public_bytes(public).verify(signature, _SIGN_LABEL + body)
    except (
        ValueError,
        TypeError,
        struct.error,
        LookupError,
        CleanroomError,
        _CryptographyInvalidSignature,
    ):
        raise EnvelopeError(_REJECTED) from None
    if header.recipient != recipient:
        raise EnvelopeError(_REJECTED)
    return header, encoded, body[_PREFIX.size + header_len :]


def _decode_header(encoded: bytes) -> EnvelopeHeader:
    """Parse a header strictly: exact length, valid UTF-8, valid fields."""
    fields: list[str] = []
    offset = 0
    for _ in range(4):
        (n,) = _U16.unpack_from(encoded, offset)
        raw = encoded[offset + 2 : offset + 2 + n]
        if len(raw) != n:
            raise ValueError
        fields.append(raw.decode("utf-8"))
        offset += 2 + n
    (seq,) = _U64.unpack_from(encoded, offset)
    if offset + _U64.size != len(encoded):
        raise ValueError
    header = EnvelopeHeader(fields[0], fields[1], fields[2], fields[3], seq)
    if header.encode() != encoded:
        raise ValueError
    return header


def _take_sized(rest: bytes, minimum: int, maximum: int) -> bytes:
    """Read a u32-length-prefixed field that must fill ``rest`` exactly."""
    if len(rest) < _U32.size:
        raise ValueError
    (n,) = _U32.unpack_from(rest)
    if not minimum <= n <= maximum or len(rest) != _U32.size + n:
        raise ValueError
    return rest[_U32.size :]


def _derive(
    shared: bytes, ephemeral_public: bytes, recipient_public: bytes, header: bytes
) -> tuple[bytes, bytes]:
    info = _SEAL_LABEL + ephemeral_public + recipient_public + header
    okm = HKDF(
        algorithm=hashes.SHA256(), length=_KEY_LEN + _NONCE_LEN, salt=None, info=info
    ).derive(shared)
    return okm[:_KEY_LEN], okm[_KEY_LEN:]


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
