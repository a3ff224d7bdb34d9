"""Private set intersection: ECDH-PSI over ristretto255 (libsodium), 2 or n parties.

Construction. Each party normalises its keys (:mod:`protocols.psi.normalize`),
removes duplicates and maps each key x to H(x) = ristretto255_map(SHA-512(domain ||
config digest || x)): the RFC 9496 one-way map of 64 uniform bytes, a hash onto
the prime-order group that is indifferentiable from a random oracle. The config
digest binds session id, parties, output mode, receivers, normalisation rules and
size caps, so hashes from one job are useless in another. Each party draws a fresh
uniform scalar a per job from the injectable CSPRNG (never reused, never stored),
sends {a * H(x)} in an order drawn from the CSPRNG, and raises what it receives by
its own scalar. Equal keys meet at a*b*H(x) = b*a*H(x); those are compared as
16-byte BLAKE2b tags keyed with the digest. Every set a party sends is shuffled, so
positions say nothing about rows.

What each side learns (semi-honest). Every party learns the size of every set
that passes through it (sizes are public; pad the inputs with random dummies if
they must not be). A receiver learns, per the job's output mode:
``intersection``: which of its own rows are in the intersection; ``cardinality``:
only how many; ``aligned``: which own rows match and their rank in an order every
party shares (sorted by the tags, which are pseudorandom), so vertical training can
align rows. Nobody learns the other's non-matching keys. A non-receiver learns
only sizes. In the ring (n >= 3, :mod:`protocols.psi.ring`) a receiver's
aggregator additionally learns the sizes of intersections of sub-families of the
sets, never which keys. Duplicate and dropped-blank counts stay with the owner.
The coordinator relays only group elements and tags: no raw key, and no hash of
a key that can be recomputed without a party's scalar.

Assumptions. Decisional Diffie-Hellman in ristretto255 (prime order l ~ 2^252,
~126-bit security) with SHA-512 modelled as a random oracle; libsodium >= 1.0.18's
constant-time scalar multiplication; non-colluding parties in the ring (an
aggregator colluding with its receiver learns the receiver's intersection with each
single set). Malicious parties: the protocol is secure only against semi-honest
ones. A malicious party can use any input set it likes (no protocol can prevent
that; keep sets bound to audited dataset versions), send a wrong re-blinding so the
other side's output is wrong (e.g. empty), or in ``cardinality`` mode skip the
shuffle; it cannot learn non-matching keys of an honest party, since those only
ever appear blinded by the honest party's scalar. Received elements are checked to
be canonical, non-identity encodings, and every size against the caps, before use.

Performance. Scalar multiplications run chunk by chunk as messages arrive, and
optionally over a process pool (:class:`protocols.psi.group.ProcessRunner`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from protocols.party import SYSTEM_RANDOM, RandomSource
from protocols.psi.base import PsiOutput, PsiPartyBase
from protocols.psi.config import OutputMode, PsiConfig
from protocols.psi.group import SERIAL, BatchRunner, ProcessRunner, SerialRunner
from protocols.psi.normalize import ColumnRule
from protocols.psi.ring import RingPsi
from protocols.psi.twoparty import TwoPartyPsi

__all__ = [
    "BatchRunner",
    "ColumnRule",
    "OutputMode",
    "ProcessRunner",
    "PsiConfig",
    "PsiOutput",
    "PsiPartyBase",
    "RingPsi",
    "SerialRunner",
    "TwoPartyPsi",
    "psi_party",
]


def psi_party(
    config: PsiConfig,
    name: str,
    rows: Iterable[str | Sequence[str]],
    *,
    random: RandomSource = SYSTEM_RANDOM,
    runner: BatchRunner = SERIAL,
) -> PsiPartyBase:
    """The party ``name`` of ``config``, holding ``rows`` (one key, or key columns)."""
    kind = TwoPartyPsi if config.n == 2 else RingPsi
    return kind(config, name, rows, random=random, runner=runner)
