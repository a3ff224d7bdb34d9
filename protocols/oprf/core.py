"""2HashDH OPRF over ristretto255 with SHA-512: RFC 9497 mode 0x00, batched.

F_k(x) = SHA-512(len(x) || x || len(Z) || Z || "Finalize") with Z = k * H1(x), where
H1 is RFC 9380's hash_to_ristretto255 (expand_message_xmd with SHA-512, then the
RFC 9496 one-way map). The client blinds a whole batch of distinct inputs with one
fresh scalar r (as an ECDH-PSI party blinds its set): the server sees r * H1(x_i),
which under DDH says nothing of the inputs beyond the batch size, and the client
removes r with one scalar inversion for the batch. Inputs of a batch must be
distinct (equal inputs would show as equal elements): :func:`blind` refuses
repeats. Every element received is checked to be a canonical, non-identity
ristretto255 encoding before use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cleanroom.errors import ConfigError, ProtocolError
from protocols.party import RandomSource
from protocols.psi import _sodium
from protocols.psi._sodium import POINT_BYTES
from protocols.psi.group import SERIAL, BatchRunner, random_scalar, split

CONTEXT: Final = b"OPRFV1-\x00-ristretto255-SHA512"
_GROUP_DST: Final = b"HashToGroup-" + CONTEXT
_SCALAR_DST: Final = b"HashToScalar-" + CONTEXT
_DERIVE_DST: Final = b"DeriveKeyPair" + CONTEXT
_KEY_ID_DOMAIN: Final = b"cleanroom/oprf/v1/key-id\x00"
OUTPUT_BYTES: Final = 64
MAX_INPUT_BYTES: Final = 2**16 - 1


def expand_message_xmd(message: bytes, dst: bytes, length: int = 64) -> bytes:
    """RFC 9380 expand_message_xmd with SHA-512 (b = 64, block size 128 bytes)."""
    if len(dst) > 255 or length > 255 * 64:
        raise ValueError("DST or output length out of range")
    dst_prime = dst + bytes([len(dst)])
    b0 = hashlib.sha512(
        bytes(128) + message + length.to_bytes(2, "big") + b"\x00" + dst_prime
    ).digest()
    blocks = [hashlib.sha512(b0 + b"\x01" + dst_prime).digest()]
    while len(blocks) * 64 < length:
        mixed = bytes(x ^ y for x, y in zip(b0, blocks[-1], strict=True))
        blocks.append(
            hashlib.sha512(mixed + bytes([len(blocks) + 1]) + dst_prime).digest()
        )
    return b"".join(blocks)[:length]


@dataclass(frozen=True, repr=False)
class OprfKey:
    """The server's secret scalar; ``key_id`` (public) names it in tables, replies."""

    scalar: bytes

    def __post_init__(self) -> None:
        if len(self.scalar) != 32 or not any(self.scalar):
            raise ConfigError("an OPRF key is a non-zero 32-byte scalar")

    def __repr__(self) -> str:
        return f"OprfKey(key_id={self.key_id.hex()[:16]}...)"

    @property
    def public(self) -> bytes:
        """k * G: public, so anyone can name the key without learning it."""
        return _sodium.base_multiply(self.scalar)

    @property
    def key_id(self) -> bytes:
        """SHA-256 of the public key: what tables, queries and replies are bound to."""
        return hashlib.sha256(_KEY_ID_DOMAIN + self.public).digest()

    @classmethod
    def generate(cls, random: RandomSource) -> OprfKey:
        """A fresh key from the CSPRNG (one per table version)."""
        return cls(random_scalar(random))

    @classmethod
    def derive(cls, seed: bytes, info: bytes) -> OprfKey:
        """RFC 9497 DeriveKeyPair (for known-answer tests and reproducible keys)."""
        base = seed + len(info).to_bytes(2, "big") + info
        for counter in range(256):
            wide = expand_message_xmd(base + bytes([counter]), _DERIVE_DST)
            scalar = _sodium.reduce_scalar(wide)
            if any(scalar):
                return cls(scalar)
        raise ConfigError("DeriveKeyPair found no key")  # probability ~2^-2000


def hash_to_group(inputs: Sequence[bytes]) -> bytes:
    """Packed H1(x) for each input."""
    for item in inputs:
        if len(item) > MAX_INPUT_BYTES:
            raise ProtocolError(f"an OPRF input is over {MAX_INPUT_BYTES} bytes")
    return _sodium.from_hashes(
        b"".join(expand_message_xmd(x, _GROUP_DST) for x in inputs)
    )


@dataclass(frozen=True, repr=False)
class Blinded:
    """A client's blinded batch: ``elements`` go to the server, ``blind`` stays."""

    blind: bytes
    elements: bytes

    def __repr__(self) -> str:
        return f"Blinded(count={len(self.elements) // POINT_BYTES})"


def blind(
    inputs: Sequence[bytes], random: RandomSource, runner: BatchRunner = SERIAL
) -> Blinded:
    """Blind distinct inputs with one fresh scalar."""
    return blind_with(inputs, random_scalar(random), runner)


def _blind_part(job: tuple[bytes, Sequence[bytes]]) -> bytes:
    scalar, inputs = job
    return _sodium.multiply_points(scalar, hash_to_group(inputs))


def blind_with(
    inputs: Sequence[bytes], scalar: bytes, runner: BatchRunner = SERIAL
) -> Blinded:
    """Blind with a given scalar (known-answer tests); inputs must be distinct."""
    if len(set(inputs)) != len(inputs):
        raise ProtocolError("an OPRF batch must not repeat an input")
    jobs = [(scalar, inputs[a:b]) for a, b in split(len(inputs), runner.workers)]
    return Blinded(scalar, b"".join(runner.map(_blind_part, jobs)))


def _evaluate_part(job: tuple[bytes, bytes]) -> bytes:
    scalar, elements = job
    return _sodium.multiply_points(scalar, elements)


def evaluate(key: OprfKey, elements: bytes, runner: BatchRunner = SERIAL) -> bytes:
    """Server: k * B for each blinded element (ProtocolError if any is invalid)."""
    if len(elements) % POINT_BYTES:
        raise ProtocolError("blinded elements must be packed 32-byte encodings")
    count = len(elements) // POINT_BYTES
    jobs = [
        (key.scalar, elements[a * POINT_BYTES : b * POINT_BYTES])
        for a, b in split(count, runner.workers)
    ]
    return b"".join(runner.map(_evaluate_part, jobs))


def _finalize_hash(item: bytes, unblinded: bytes) -> bytes:
    return hashlib.sha512(
        len(item).to_bytes(2, "big")
        + item
        + POINT_BYTES.to_bytes(2, "big")
        + unblinded
        + b"Finalize"
    ).digest()


def _finalize_part(job: tuple[bytes, Sequence[bytes], bytes]) -> list[bytes]:
    inverse, inputs, evaluated = job
    unblinded = _sodium.multiply_points(inverse, evaluated)
    return [
        _finalize_hash(x, unblinded[i * POINT_BYTES : (i + 1) * POINT_BYTES])
        for i, x in enumerate(inputs)
    ]


def finalize(
    inputs: Sequence[bytes],
    blinded: Blinded,
    evaluated: bytes,
    runner: BatchRunner = SERIAL,
) -> list[bytes]:
    """Client: unblind the server's reply and hash it with each input: F_k(x_i)."""
    if len(evaluated) != len(inputs) * POINT_BYTES:
        raise ProtocolError("the evaluation does not match the batch size")
    inverse = _sodium.invert_scalar(blinded.blind)
    jobs = [
        (inverse, inputs[a:b], evaluated[a * POINT_BYTES : b * POINT_BYTES])
        for a, b in split(len(inputs), runner.workers)
    ]
    return [y for part in runner.map(_finalize_part, jobs) for y in part]


def _direct_part(job: tuple[bytes, Sequence[bytes]]) -> list[bytes]:
    scalar, inputs = job
    points = _sodium.multiply_points(scalar, hash_to_group(inputs))
    return [
        _finalize_hash(x, points[i * POINT_BYTES : (i + 1) * POINT_BYTES])
        for i, x in enumerate(inputs)
    ]


def evaluate_direct(
    key: OprfKey, inputs: Sequence[bytes], runner: BatchRunner = SERIAL
) -> list[bytes]:
    """Server-side F_k(x) without blinding: how the holder builds its table."""
    jobs = [
        (key.scalar, inputs[a:b]) for a, b in split(len(inputs), runner.workers * 4)
    ]
    return [y for part in runner.map(_direct_part, jobs) for y in part]
