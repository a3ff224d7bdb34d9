"""Wire form of encrypted vectors, bound to the public key and the caller's context.

Layout (integers big-endian)::

    b"CRPV" | version u8 | flags u8 (1 = packed) | key fingerprint (32 bytes)
    | SHA-256 of the context (32 bytes)
    | modulus_bits u16 | value_bits u16 | additions u64 | scale_bits u16
    | length u32 | bound: u16 byte count, bytes | ciphertext width u16 | count u32
    | count ciphertexts of exactly ``width`` bytes each

A receiver names the key, layout and context it expects: bytes made under another
key, for another context (stage, session, configuration) or with another layout
are refused before any ciphertext is parsed, as is any size other than the exact
one the header implies. Every ciphertext must then be a unit of Z_{n^2}.
"""

from __future__ import annotations

import hashlib
from typing import Final

import gmpy2
from gmpy2 import mpz

from cleanroom.errors import ProtocolError
from protocols.paillier.keys import PublicKey
from protocols.paillier.packing import PackingLayout
from protocols.paillier.vectors import EncryptedVector

MAGIC: Final = b"CRPV"
VERSION: Final = 1
MAX_LENGTH: Final = 1 << 24
"""No vector on the wire holds more values than this, whatever the caller allows."""
_CONTEXT_DOMAIN: Final = b"cleanroom/paillier/v1/vector\x00"
_FIXED: Final = 4 + 1 + 1 + 32 + 32 + 2 + 2 + 8 + 2 + 4 + 2
_PACKED: Final = 1
_MAX_BOUND_BYTES: Final = 1024


def context_digest(context: bytes) -> bytes:
    """What a serialised vector is bound to besides the key (stage, session...)."""
    if not isinstance(context, bytes):
        raise ProtocolError("the context must be bytes")
    return hashlib.sha256(_CONTEXT_DOMAIN + context).digest()


def vector_to_bytes(vector: EncryptedVector, *, context: bytes) -> bytes:
    """Raw serialisation; senders use ``Encryptor.to_bytes``, which re-randomises."""
    layout, key = vector.layout, vector.key
    bound = vector.bound.to_bytes((vector.bound.bit_length() + 7) // 8, "big")
    width = key.ciphertext_bytes
    return b"".join(
        [
            MAGIC,
            bytes([VERSION, _PACKED if vector.packed else 0]),
            key.fingerprint,
            context_digest(context),
            layout.modulus_bits.to_bytes(2, "big"),
            layout.value_bits.to_bytes(2, "big"),
            layout.additions.to_bytes(8, "big"),
            layout.scale_bits.to_bytes(2, "big"),
            vector.length.to_bytes(4, "big"),
            len(bound).to_bytes(2, "big"),
            bound,
            width.to_bytes(2, "big"),
            len(vector.ciphertexts).to_bytes(4, "big"),
            *(c.to_bytes(width, "big") for c in vector.ciphertexts),
        ]
    )


def vector_from_bytes(
    data: bytes,
    key: PublicKey,
    layout: PackingLayout,
    *,
    context: bytes,
    max_length: int = MAX_LENGTH,
) -> EncryptedVector:
    """Parse and check a vector sent under ``key`` with ``layout`` for ``context``.

    The result is not obfuscated from the receiver's point of view: forwarding
    it goes through ``Encryptor.to_bytes`` and so through re-randomisation.
    """
    if not isinstance(data, bytes):
        raise ProtocolError("an encrypted vector must be bytes")
    width = key.ciphertext_bytes
    limit = _FIXED + _MAX_BOUND_BYTES + 6 + min(max_length, MAX_LENGTH) * width
    if len(data) > limit:
        raise ProtocolError("encrypted vector is larger than the receiver allows")
    if len(data) < _FIXED or data[:4] != MAGIC or data[4] != VERSION:
        raise ProtocolError("not a cleanroom encrypted vector")
    if data[5] not in (0, _PACKED):
        raise ProtocolError("encrypted vector has unknown flags")
    if data[6:38] != key.fingerprint:
        raise ProtocolError("encrypted vector is under another public key")
    if data[38:70] != context_digest(context):
        raise ProtocolError("encrypted vector belongs to another context")
    fields = (
        int.from_bytes(data[70:72], "big"),
        int.from_bytes(data[72:74], "big"),
        int.from_bytes(data[74:82], "big"),
        int.from_bytes(data[82:84], "big"),
    )
    expected = (layout.modulus_bits, layout.value_bits, layout.additions)
    if fields != (*expected, layout.scale_bits):
        raise ProtocolError("encrypted vector uses another packing layout")
    length = int.from_bytes(data[84:88], "big")
    if length > min(max_length, MAX_LENGTH):
        raise ProtocolError(f"encrypted vector holds {length} values, above the limit")
    bound_bytes = int.from_bytes(data[88:90], "big")
    if bound_bytes > _MAX_BOUND_BYTES or len(data) < _FIXED + bound_bytes + 6:
        raise ProtocolError("encrypted vector header is malformed")
    offset = 90 + bound_bytes
    bound = int.from_bytes(data[90:offset], "big")
    packed = data[5] == _PACKED
    count = int.from_bytes(data[offset + 2 : offset + 6], "big")
    if int.from_bytes(data[offset : offset + 2], "big") != width:
        raise ProtocolError("encrypted vector has the wrong ciphertext width")
    if count != layout.ciphertexts_for(length, packed=packed):
        raise ProtocolError("encrypted vector has the wrong ciphertext count")
    offset += 6
    if len(data) != offset + count * width:
        raise ProtocolError("encrypted vector has the wrong length")
    n, nsquare = key.n, key.nsquare
    ciphertexts: list[mpz] = []
    for start in range(offset, len(data), width):
        c = mpz.from_bytes(data[start : start + width], "big")
        if not 0 < c < nsquare or gmpy2.gcd(c, n) != 1:
            raise ProtocolError(
                f"ciphertext {len(ciphertexts)} is not a unit modulo n^2"
            )
        ciphertexts.append(c)
    return EncryptedVector(
        key, layout, length, packed, tuple(ciphertexts), bound, obfuscated=False
    )
