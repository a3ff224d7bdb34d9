"""A deterministic randomness source from a secret seed, for parties that must be
replayable: the same seed gives the same bytes in the same order."""

from __future__ import annotations

import threading

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from cleanroom.errors import ProtocolError
from protocols.party import RandomSource

_NONCE = b"\x00" * 16
"""ChaCha20's 16-byte counter-and-nonce block; one key is used for one stream."""


def seeded_random(seed: bytes) -> RandomSource:
    """A ``RandomSource`` reading the ChaCha20 keystream keyed by a 32-byte seed.

    Keep the seed as secret as the randomness it stands for: anyone holding it
    can recompute every byte drawn.
    """
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise ProtocolError("a seed must be 32 bytes")
    stream = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    lock = threading.Lock()

    def draw(n: int) -> bytes:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ProtocolError("the number of random bytes must be >= 0")
        with lock:
            return stream.update(b"\x00" * n)

    return draw
