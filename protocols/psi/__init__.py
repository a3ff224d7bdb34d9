"""Private set intersection: ECDH-PSI on Curve25519 (X25519, OpenSSL), 2..n parties.

Construction. Each party normalises its keys (:mod:`protocols.psi.normalize`),
removes duplicates and maps each key x to H(x): 48 bytes of SHA-512(domain ||
config digest || x) read as a field element mod p, through RFC 9380's Elligator 2
map onto Curve25519 (the map of the ``curve25519_XMD:SHA-512_ELL2_NU_`` suite,
checked against its test vectors), written as the point's u-coordinate. The
config digest binds session id, parties, output mode, receivers, normalisation
rules and size caps, so hashes from one job are useless in another. Each party
draws a fresh 32-byte X25519 secret a per job from the injectable CSPRNG (never
reused, never stored), sends {X25519(a, H(x))} in an order drawn from the
CSPRNG, and applies X25519 with its own secret to what it receives. Equal keys
meet at
u(clamp(a) * clamp(b) * H(x)), the same whichever key came first; those are
compared as 16-byte BLAKE2b tags keyed with the digest. Every set a party sends is
shuffled, so positions say nothing about rows. (This is SecretFlow's default
ECDH-PSI curve; wire version 2. Version 1 used ristretto255 and is refused.)

Why u-coordinates and X25519 are sound here. (1) Commutativity: X25519(a, u)
is the u-coordinate of clamp(a) * P for either point P with that u; clamp(a) =
8 * a' is an integer, and integer multiples commute, so X25519(a, X25519(b, u)) =
X25519(b, X25519(a, u)). Dropping the sign (v) loses only the pair {P, -P}, which
no step needs to tell apart. (2) Cofactor: Curve25519 has order 8 * l. Clamped
scalars are multiples of 8, so the first X25519 clears H(x)'s cofactor (the tags are
those of RFC 9380's encode_to_curve output 8 * H(x), scalars a'), and a small-order
component a malicious peer adds to a point is annihilated;
a low-order input gives the all-zero u, which OpenSSL (like libsodium) refuses
and we abort on.
(3) Twist: a peer may send a u that lies on the quadratic twist; X25519 is
defined there too, and Curve25519's twist has order 4 * l' with l' a 253-bit prime,
so k * T for points T of the peer's choice reveals no more of k than on the curve
(Bernstein's twist security, ~2^125). (4) Encoding: every received u must be
canonical (bit 255 clear, u < p) and every result non-zero; then each point of
either the curve or the twist has one encoding. (5) Secrets: a party's effective
scalar is 8 * a' with a' uniform in [2^251, 2^252) ~ 251 bits, used only in
X25519's constant-time ladder.

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
The coordinator (alone, or with the analyst) relays only u-coordinates blinded by
at least one party's secret and keyed tags: no raw key, and no hash of a key that
can be recomputed without a party's secret. The operator colluding with one holder
learns what that holder learns (it sees nothing more than the holder's own view:
the other side's set only ever appears under the other side's secret).

Assumptions. Decisional Diffie-Hellman in the prime-order subgroup of Curve25519
(order l ~ 2^252, ~126-bit security; for twist inputs, the same on the twist) with
SHA-512 modelled as a random oracle and Elligator 2 as RFC 9380's nonuniform
encoding (the map reaches about half the points: a known, benign bias, the same
as any ``_NU_`` suite; ECDH-PSI needs only that nobody knows a discrete log of
H(x)); the constant-time X25519 of the OpenSSL that ``cryptography`` bundles
(checked equal to libsodium's in the tests). The map runs on gmpy2
integers (not constant-time) over the party's own hashed keys in its own process.
Non-colluding parties in the ring (an aggregator colluding with its receiver learns
the receiver's intersection with each single set). Malicious parties: the protocol
is secure only against semi-honest ones. A malicious party can use any input set it
likes (no protocol can prevent that; keep sets bound to audited dataset versions),
send a wrong re-blinding so the other side's output is wrong (e.g. empty), or in
``cardinality`` mode skip the shuffle; it cannot learn non-matching keys of an
honest party, since those only ever appear blinded by the honest party's secret.
Received elements are checked to be canonical, non-zero encodings, and every size
against the caps, before use.

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
