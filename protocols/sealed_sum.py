"""A second mask layer and linear checksums for SecAgg+ sums, so the coordinator
that unmasks the sum learns nothing of it and cannot alter it undetected.

Every party that knows ``seed`` (the nodes, and whoever else the job gives it
to — never the coordinator) derives, for a session:

* a mask per contributor, ``M_i = PRG(seed, session, "mask", i)`` over the whole
  vector, which the contributor adds to its input before SecAgg+; the unmasked
  SecAgg+ sum is then ``S + sum_{i in survivors} M_i``, uniformly random to
  anyone without the seed;
* ``checks`` random vectors ``r_k``, consecutive ``length``-long pieces of one
  keystream ``PRG(seed, session, "checks")`` (one AES context, not one per
  check: the pieces are as independent as separate streams); each
  contributor appends ``c_ik = <r_k, x_i>`` (mod 2^64) to its input, so the sum
  carries ``C_k = <r_k, S>`` (the map is linear in Z_2^64).

``open`` removes the survivors' masks and checks every ``C_k``. A coordinator
that changes the sum by ``Delta`` (and the checksums by ``delta``) passes check
``k`` only if ``<r_k, Delta> = delta_k`` (mod 2^64); with ``r_k`` uniform and
unknown to it that happens with probability at most ``2^-(64 - t)``, where ``2^t``
is the largest power of two dividing every entry of ``Delta``. The callers decode
values with a public bound ``|value| <= 2^b`` and refuse anything beyond it, so
``|Delta_j| <= 2^(b+1)``, ``t <= b + 1``, and all ``checks`` pass with probability
at most ``2^-(63 - b) * checks``: with ``b = 53`` (exact float decoding) and 14
checks, 2^-140. The randomness is AES-256-CTR keyed from the seed
(``protocols.prg``), as the SecAgg+ masks are.

What this does not do: hide which parties survived, or bind the sum to inputs a
contributor did not really hold (no protocol can check a party's own data).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Final

import numpy as np

from cleanroom.errors import ProtocolError
from protocols.prg import MaskVector, expand_mask

DEFAULT_CHECKS: Final = 14
_DOMAIN: Final = b"cleanroom/sealed-sum/v1\x00"
_MAX_LENGTH: Final = 1 << 28


def _key(seed: bytes, *parts: str) -> bytes:
    label = "\x00".join(parts).encode()
    return hmac.new(seed, _DOMAIN + label, hashlib.sha256).digest()


class SealedSum:
    """The mask and checksum layer of one SecAgg+ session over ``length`` values."""

    def __init__(
        self, seed: bytes, session: str, length: int, *, checks: int = DEFAULT_CHECKS
    ) -> None:
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise ProtocolError("a sealed-sum seed must be 32 bytes")
        if isinstance(length, bool) or not isinstance(length, int):
            raise ProtocolError("the vector length must be an integer")
        if not 1 <= length <= _MAX_LENGTH:
            raise ProtocolError(f"the vector length must be in [1, {_MAX_LENGTH}]")
        if not 1 <= checks <= 64:
            raise ProtocolError("between 1 and 64 checksums")
        self._seed = seed
        self._session = session
        self.length = length
        self.checks = checks
        self._checkers: MaskVector | None = None

    @property
    def sealed_length(self) -> int:
        """The length of what goes into SecAgg+: the values, then the checksums."""
        return self.length + self.checks

    def _r(self) -> MaskVector:
        """The ``checks`` x ``length`` check matrix, expanded once per session."""
        if self._checkers is None:
            key = _key(self._seed, self._session, "checks", str(self.checks))
            stream = expand_mask(key, self.checks * self.length, 64)
            self._checkers = stream.reshape(self.checks, self.length)
        return self._checkers

    def mask(self, party: str) -> MaskVector:
        return expand_mask(
            _key(self._seed, self._session, "mask", party), self.sealed_length, 64
        )

    def seal(self, party: str, values: MaskVector) -> MaskVector:
        """``party``'s input for SecAgg+: its values and checksums, masked."""
        values = np.asarray(values)
        if values.dtype != np.uint64 or values.shape != (self.length,):
            raise ProtocolError(
                f"expected {self.length} values in the 2^64 ring to seal"
            )
        out = np.empty(self.sealed_length, dtype=np.uint64)
        out[: self.length] = values
        out[self.length :] = self._r() @ values  # wraps mod 2^64, as it must
        np.add(out, self.mask(party), out=out)
        return out

    def open(self, total: MaskVector, survivors: Iterable[str]) -> MaskVector:
        """The true sum, once the survivors' masks are removed and every checksum
        holds; ProtocolError (naming no value) if any does not."""
        total = np.asarray(total)
        if total.dtype != np.uint64 or total.shape != (self.sealed_length,):
            raise ProtocolError("the sealed sum has the wrong shape")
        plain = total.copy()
        for party in sorted(set(survivors)):
            np.subtract(plain, self.mask(party), out=plain)
        values = plain[: self.length]
        if not np.array_equal(self._r() @ values, plain[self.length :]):
            raise ProtocolError(
                "the aggregate does not verify: it is not the sum the inputs "
                "sealed (altered, or over other survivors)"
            )
        return values.copy()
