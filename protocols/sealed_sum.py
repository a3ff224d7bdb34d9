"""A second mask layer and linear checksums for SecAgg+ sums, so the coordinator
that unmasks the sum learns nothing of it and cannot alter it undetected.

Every party that knows ``seed`` (the nodes, and whoever else the job gives it
to — never the coordinator) derives, for a session:

* a mask per contributor, ``M_i = PRG(seed, session, "mask", i)`` over the whole
  sealed vector (values and checksums), which the contributor adds to its input
  before SecAgg+; the unmasked SecAgg+ sum is then ``S + sum_{i in survivors}
  M_i``, uniformly random to anyone without the seed;
* ``checks`` tensor checksums in ``checks / 2`` groups. The ``length`` values
  are laid out as a ``rows x WIDTH`` matrix ``X`` (the last row padded with
  zeros). Group ``g`` has a column vector ``v_g`` (``WIDTH`` entries) and two
  row vectors ``u_g1, u_g2`` (``rows`` entries each), all uniform in Z_2^64 and
  drawn from one short AES-256-CTR keystream ``PRG(seed, session, "check")``;
  its checksums are ``C_gr(x) = u_gr^T X v_g`` (mod 2^64). Each contributor
  appends every ``C_gr(x_i)`` to its input; the maps are linear in Z_2^64, so
  the sum carries ``C_gr(S)``. All of them cost one pass over the values,
  ``X @ [v_1 .. v_G]`` (``G = checks / 2`` multiply-adds per value, the only
  full-length work), then products with the short ``u_gr``.

``open`` removes the survivors' masks, refuses any value beyond the public decode
bound ``|value| <= 2^BOUND_BITS`` (``BOUND_BITS = 53``: what fixed-point
decoding keeps exact, and what every caller's encoding already stays within),
and checks every ``C_gr``.

Soundness (exact bound). A coordinator that changes the sum by ``Delta != 0``
and the checksums by ``delta`` sees only uniformly masked vectors, so it picks
both independently of the coefficients. Let ``2^t`` be the largest power of two
dividing every entry of ``Delta`` and ``L = 64 - t``. An altered value that
passes the decode bound differs from the true one by at most ``2^(BOUND_BITS+1)``
in absolute value, so ``t <= BOUND_BITS + 1`` and ``L >= 63 - BOUND_BITS = 10``.
For one group: take an entry ``Delta[a, b]`` of valuation ``t``; with the other
coefficients fixed, ``w_a = (Delta v_g)_a`` is ``2^t`` times a uniform element
of Z_(2^L), so it has valuation ``t + j`` with probability ``2^-(j+1)`` (``j <
L``) and is 0 mod 2^64 with probability ``2^-L``; given ``w`` whose smallest
valuation is at most ``t + j``, each of the two independent ``u_gr^T w =
delta_gr`` holds with probability at most ``2^-(L-j)``. One group passes with
probability at most ``P(L) = sum_{j<L} 2^-(j+1) 2^-2(L-j) + 2^-L``, decreasing
in ``L``: ``P(10) = 2^-10 + (2^10 - 1) 2^-21 < 2^-9.41``. The ``checks / 2``
groups are independent, so all pass with probability at most ``P(10)^(checks/2)``:
with the default 10 checksums (5 groups), below ``2^-47`` per release
(``soundness_bits``). A wrong survivor list gives ``Delta = +-M_j``,
pseudorandom and independent of the checks: the same bound. The randomness is
AES-256-CTR keyed from the seed (``protocols.prg``), as the SecAgg+ masks are;
the argument treats it as uniform (the standard PRF assumption on AES).

What this does not do: hide which parties survived, or bind the sum to inputs a
contributor did not really hold (no protocol can check a party's own data).
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Iterable
from typing import Final

import numpy as np

from cleanroom.errors import ProtocolError
from protocols.prg import MaskVector, add_masks, expand_mask, expand_mask_into

DEFAULT_CHECKS: Final = 10
PER_GROUP: Final = 2
"""Checksums per column vector ``v_g``: ``checks`` must be a multiple of it."""
BOUND_BITS: Final = 53
"""``open`` refuses any value whose signed magnitude exceeds ``2^BOUND_BITS``."""
WIDTH: Final = 256
"""Columns of the checksum matrix layout (``v_g`` has this many entries)."""
_DOMAIN: Final = b"cleanroom/sealed-sum/v3\x00"  # v3: masks from counter block 2
_MAX_LENGTH: Final = 1 << 28
_BOUND: Final = 1 << BOUND_BITS
_NOT_VERIFIED: Final = (
    "the aggregate does not verify: it is not the sum the inputs sealed "
    "(altered, or over other survivors)"
)


def _key(seed: bytes, *parts: str) -> bytes:
    label = "\x00".join(parts).encode()
    return hmac.digest(seed, _DOMAIN + label, "sha256")


def soundness_bits(checks: int = DEFAULT_CHECKS) -> float:
    """``-log2`` of the module docstring's bound ``P(L)^(checks / PER_GROUP)``
    on a forged sum passing ``checks`` checksums, at the worst ``L``."""
    level = 63 - BOUND_BITS
    single = 2.0**-level + sum(
        2.0 ** -(j + 1) * 2.0 ** -(PER_GROUP * (level - j)) for j in range(level)
    )
    return -(checks // PER_GROUP) * math.log2(single)


class SealedSum:
    """The mask and checksum layer of one SecAgg+ session over ``length`` values."""

    def __init__(
        self, seed: bytes, session: str, length: int, *, checks: int = DEFAULT_CHECKS
    ) -> None:
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise ProtocolError("a sealed-sum seed must be 32 bytes")
        if not isinstance(session, str):
            raise ProtocolError("the session must be a string")
        if isinstance(length, bool) or not isinstance(length, int):
            raise ProtocolError("the vector length must be an integer")
        if not 1 <= length <= _MAX_LENGTH:
            raise ProtocolError(f"the vector length must be in [1, {_MAX_LENGTH}]")
        if isinstance(checks, bool) or not isinstance(checks, int):
            raise ProtocolError("the number of checksums must be an integer")
        if not PER_GROUP <= checks <= 64 or checks % PER_GROUP:
            raise ProtocolError(
                f"between {PER_GROUP} and 64 checksums, a multiple of {PER_GROUP}"
            )
        self._seed = seed
        self._session = session
        self.length = length
        self.checks = checks
        self._groups = checks // PER_GROUP
        self._rows = -(-length // WIDTH)
        self._coefficients: tuple[MaskVector, MaskVector] | None = None

    @property
    def sealed_length(self) -> int:
        """The length of what goes into SecAgg+: the values, then the checksums."""
        return self.length + self.checks

    def _vu(self) -> tuple[MaskVector, MaskVector]:
        """``(V, U)``: the ``WIDTH x groups`` column coefficients and the ``rows x
        groups x PER_GROUP`` row coefficients, from one short keystream."""
        if self._coefficients is None:
            g = self._groups
            columns = WIDTH * g
            stream = expand_mask(
                _key(self._seed, self._session, "check"),
                columns + self._rows * self.checks,
                64,
            )
            v = stream[:columns].reshape(WIDTH, g)
            u = stream[columns:].reshape(self._rows, g, PER_GROUP)
            self._coefficients = (v, u)
        return self._coefficients

    def checksums(self, values: MaskVector) -> MaskVector:
        """Every ``C_gr(values)`` (mod 2^64), group-major, in one pass over the
        values."""
        v, u = self._vu()
        full = self.length // WIDTH
        # Every product and sum below wraps mod 2^64, as the ring does.
        y = values[: full * WIDTH].reshape(full, WIDTH) @ v  # rows x groups
        out: MaskVector = np.einsum("agr,ag->gr", u[:full], y, dtype=np.uint64)
        rest = self.length - full * WIDTH
        if rest:
            out += u[full] * (values[full * WIDTH :] @ v[:rest])[:, None]
        return out.reshape(self.checks)

    def mask(self, party: str) -> MaskVector:
        """``party``'s mask over the sealed vector."""
        return expand_mask(self._mask_key(party), self.sealed_length, 64)

    def _mask_key(self, party: str) -> bytes:
        if not isinstance(party, str):
            raise ProtocolError("a contributor is named by a string")
        return _key(self._seed, self._session, "mask", party)

    def seal(self, party: str, values: MaskVector) -> MaskVector:
        """``party``'s input for SecAgg+: its values and checksums, masked."""
        values = np.asarray(values)
        if values.dtype != np.uint64 or values.shape != (self.length,):
            raise ProtocolError(
                f"expected {self.length} values in the 2^64 ring to seal"
            )
        # The mask is expanded straight into the result, so the plaintext is never
        # copied on its own: the vector holds masked values from its first write.
        out = np.empty(self.sealed_length, dtype=np.uint64)
        expand_mask_into(self._mask_key(party), out)
        head, tail = out[: self.length], out[self.length :]
        np.add(head, values, out=head)
        np.add(tail, self.checksums(values), out=tail)
        return out

    def open(self, total: MaskVector, survivors: Iterable[str]) -> MaskVector:
        """The true sum, once the survivors' masks are removed, every value is
        within the decode bound and every checksum holds; ProtocolError (naming
        no value) if not."""
        total = np.asarray(total)
        if total.dtype != np.uint64 or total.shape != (self.sealed_length,):
            raise ProtocolError("the sealed sum has the wrong shape")
        keys = [self._mask_key(p) for p in sorted(set(survivors))]
        plain = total.copy()
        add_masks(plain, subtract=keys)  # a chunk at a time, in cache
        values = plain[: self.length]
        signed = values.view(np.int64)
        if int(signed.max()) > _BOUND or int(signed.min()) < -_BOUND:
            raise ProtocolError(_NOT_VERIFIED)
        if not np.array_equal(self.checksums(values), plain[self.length :]):
            raise ProtocolError(_NOT_VERIFIED)
        return values
