"""PSI's group (X25519 u-coordinates), secret scalars, shuffles and the process pool.

``random_scalar`` (ristretto255, mod l) also serves the OPRF; ``psi_scalar``,
``hash_to_group``, ``blind_keys`` and ``multiply_all`` are PSI's X25519 group.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Final, Protocol, TypeVar

import numpy as np

from protocols.party import RandomSource
from protocols.psi import _sodium, _x25519
from protocols.psi._sodium import POINT_BYTES

A = TypeVar("A")
R = TypeVar("R")

_SCALAR_DOMAIN: Final = b"cleanroom/psi/v1/scalar\x00"
_FIELD_BYTES: Final = 48
_P: Final = _sodium.FIELD_PRIME


class BatchRunner(Protocol):
    """Runs a picklable function over work items, possibly in parallel."""

    @property
    def workers(self) -> int:
        """How many items are worth running at once."""
        ...

    def map(self, fn: Callable[[A], R], items: Sequence[A]) -> list[R]:
        """``[fn(item) for item in items]``, in order."""
        ...


class SerialRunner:
    """The default: everything in the calling process."""

    workers: Final = 1

    def map(self, fn: Callable[[A], R], items: Sequence[A]) -> list[R]:
        return [fn(item) for item in items]


class ProcessRunner:
    """A process pool for the scalar multiplications (X25519 calls hold the GIL).

    Secret scalars travel to the workers over the pool's pipes: they are the same
    party's processes on the same host. ``spawn`` is the default start method so a
    node process that runs threads is never forked.
    """

    def __init__(self, workers: int = 2, *, start_method: str = "spawn") -> None:
        if workers < 1:
            raise ValueError("a pool needs at least one worker")
        self.workers = workers
        self._pool = ProcessPoolExecutor(workers, mp_context=get_context(start_method))

    def map(self, fn: Callable[[A], R], items: Sequence[A]) -> list[R]:
        if len(items) <= 1:
            return [fn(item) for item in items]
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        """Stop the workers."""
        self._pool.shutdown()


SERIAL: Final[BatchRunner] = SerialRunner()


def random_scalar(random: RandomSource) -> bytes:
    """A uniform non-zero scalar mod l from 64 bytes of the CSPRNG (bias < 2^-250)."""
    while True:
        scalar = _sodium.reduce_scalar(
            hashlib.sha512(_SCALAR_DOMAIN + random(64)).digest()
        )
        if any(scalar):
            return scalar


def psi_scalar(random: RandomSource) -> bytes:
    """A fresh X25519 secret: 32 CSPRNG bytes, clamped by X25519 at every use.

    Clamping (clear bits 0-2 and 255, set bit 254) makes it 8 * k' with k' of 251
    uniform bits: a multiple of the cofactor, so any small-order component of a
    received point is killed, and every clamped scalar commutes with every other.
    """
    return random(_sodium.SCALAR_BYTES)


def hash_to_group(prefix: bytes, encoded: Sequence[bytes]) -> bytes:
    """Packed Curve25519 u-coordinates of H(prefix || x): SHA-512, then Elligator 2.

    The first 48 bytes of SHA-512(prefix || x), read big-endian mod p (RFC 9380's
    hash_to_field length for this field: bias < 2^-128), go through RFC 9380's
    Elligator 2 map onto Curve25519 (:func:`protocols.psi._sodium.elligator2_u`).
    ``prefix`` carries the domain and the job's configuration digest, so the same
    key hashes to unrelated elements in different jobs.
    """
    base = hashlib.sha512(prefix)
    field = []
    for item in encoded:
        h = base.copy()
        h.update(item)
        field.append(int.from_bytes(h.digest()[:_FIELD_BYTES], "big") % _P)
    return _sodium.elligator2_u(field)


def _hash_and_multiply(job: tuple[bytes, bytes, Sequence[bytes]]) -> bytes:
    scalar, prefix, encoded = job
    return _x25519.x25519_many(scalar, hash_to_group(prefix, encoded))


def _multiply(job: tuple[bytes, bytes]) -> bytes:
    scalar, points = job
    return _x25519.x25519_many(scalar, points)


def split(count: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous (start, stop) ranges covering ``range(count)``."""
    parts = max(1, min(parts, count))
    bounds = [count * i // parts for i in range(parts + 1)]
    return list(itertools.pairwise(bounds))


def blind_keys(
    runner: BatchRunner, scalar: bytes, prefix: bytes, encoded: Sequence[bytes]
) -> bytes:
    """Packed X25519(k, H(x)) for every encoded key, over the runner's workers."""
    jobs = [
        (scalar, prefix, encoded[a:b]) for a, b in split(len(encoded), runner.workers)
    ]
    return b"".join(runner.map(_hash_and_multiply, jobs))


def multiply_all(runner: BatchRunner, scalar: bytes, points: bytes) -> bytes:
    """Packed X25519(k, u) for another party's points (ProtocolError if invalid)."""
    count = len(points) // POINT_BYTES
    jobs = [
        (scalar, points[a * POINT_BYTES : b * POINT_BYTES])
        for a, b in split(count, runner.workers)
    ]
    return b"".join(runner.map(_multiply, jobs))


def random_permutation(count: int, random: RandomSource) -> np.ndarray:
    """A uniformly random permutation: argsort of CSPRNG words.

    Sorting 64-bit words from the CSPRNG (ties, probability < count^2 / 2^65, fall
    back to index order) costs one urandom call instead of ``count`` of them and
    never touches a non-cryptographic generator.
    """
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    words = np.frombuffer(random(8 * count), dtype=np.uint64)
    return np.argsort(words, kind="stable")
