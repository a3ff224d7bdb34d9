"""Shamir t-of-n secret sharing of short byte strings over the prime field 2^521 - 1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cleanroom.errors import ProtocolAbort, ProtocolError
from protocols.party import SYSTEM_RANDOM, RandomSource

PRIME: Final = 2**521 - 1
"""A Mersenne prime: every 64-byte (512-bit) secret fits below it, with room."""

MAX_SECRET_BYTES: Final = 64
MAX_SHARES: Final = 2**16 - 1
VALUE_BYTES: Final = (PRIME.bit_length() + 7) // 8
SHARE_BYTES: Final = 2 + 2 + VALUE_BYTES
"""Wire size of one share: index (u16), threshold (u16), value (big-endian)."""

# A secret is read as the integer of 0x01 || secret so that leading zero bytes survive
# the round trip and a badly combined value is (very probably) noticed.
_SENTINEL: Final = b"\x01"
_PRIME_BITS: Final = PRIME.bit_length()


@dataclass(frozen=True)
class Share:
    """One point (index, value) of a degree threshold-1 polynomial hiding a secret."""

    index: int
    threshold: int
    value: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= MAX_SHARES:
            raise ProtocolError(f"share index {self.index} is outside 1..{MAX_SHARES}")
        if not 2 <= self.threshold <= MAX_SHARES:
            raise ProtocolError(f"share threshold {self.threshold} is out of range")
        if not 0 <= self.value < PRIME:
            raise ProtocolError("share value is not a field element")

    def to_bytes(self) -> bytes:
        """Fixed-size wire form (``SHARE_BYTES`` long)."""
        return (
            self.index.to_bytes(2, "big")
            + self.threshold.to_bytes(2, "big")
            + self.value.to_bytes(VALUE_BYTES, "big")
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        """Parse the wire form; raises ProtocolError on a wrong size or range."""
        if len(data) != SHARE_BYTES:
            raise ProtocolError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
        return cls(
            index=int.from_bytes(data[0:2], "big"),
            threshold=int.from_bytes(data[2:4], "big"),
            value=int.from_bytes(data[4:], "big"),
        )


def split(
    secret: bytes, t: int, n: int, random: RandomSource = SYSTEM_RANDOM
) -> list[Share]:
    """Split ``secret`` into ``n`` shares, any ``t`` of which recover it.

    Share ``i`` (1-based) is the random polynomial evaluated at ``x = i``. ``t`` must
    be at least 2: with ``t = 1`` every share *is* the secret.
    """
    values = split_values([secret], t, n, random)
    return [Share(index=x, threshold=t, value=v[0]) for x, v in enumerate(values, 1)]


def split_values(
    secrets: Sequence[bytes], t: int, n: int, random: RandomSource = SYSTEM_RANDOM
) -> list[list[int]]:
    """Split each of ``secrets`` on its own random polynomial of degree ``t - 1``
    (constant term ``0x01 || secret``) and return the bare values: ``out[x - 1][k]``
    is the share of ``secrets[k]`` at ``x`` (``split`` wraps them in ``Share``).

    One draw of randomness and no per-share objects: what a party sharing many
    short secrets at once (one per neighbour) pays per secret is the arithmetic.
    """
    for secret in secrets:
        if not isinstance(secret, bytes | bytearray) or len(secret) > MAX_SECRET_BYTES:
            raise ProtocolError(
                f"secrets are byte strings of at most {MAX_SECRET_BYTES}"
            )
    _check_int("t", t)
    _check_int("n", n)
    if not 2 <= t <= n <= MAX_SHARES:
        raise ProtocolError(f"need 2 <= t <= n <= {MAX_SHARES}, got t={t}, n={n}")
    randoms = _random_field_elements((t - 1) * len(secrets), random)
    out: list[list[int]] = [[] for _ in range(n)]
    xs = range(1, n + 1)
    for k, secret in enumerate(secrets):
        constant = int.from_bytes(_SENTINEL + bytes(secret), "big")
        top = reversed(randoms[k * (t - 1) : (k + 1) * (t - 1)])
        # Horner at every x at once; small x, so one reduction per share suffices
        # for the thresholds a session uses (every 32 steps otherwise, as split).
        ys = [next(top)] * n
        for step, c in enumerate(top, start=1):
            ys = [y * x + c for y, x in zip(ys, xs, strict=True)]
            if step % 32 == 0:
                ys = [y % PRIME for y in ys]
        for row, y, x in zip(out, ys, xs, strict=True):
            row.append((y * x + constant) % PRIME)
    return out


def combine(shares: Sequence[Share]) -> bytes:
    """Recover the secret from at least ``threshold`` shares with distinct indices.

    Raises ProtocolAbort below the threshold and ProtocolError when the shares
    disagree on the threshold, repeat an index, or do not decode to a secret.
    """
    if not shares:
        raise ProtocolAbort("no shares to combine")
    t = shares[0].threshold
    if any(s.threshold != t for s in shares):
        raise ProtocolError("shares disagree on the threshold")
    indices = [s.index for s in shares]
    if len(set(indices)) != len(indices):
        raise ProtocolError("shares repeat an index")
    if len(shares) < t:
        raise ProtocolAbort(f"only {len(shares)} shares; threshold is {t}")
    points = shares[:t]
    weights = _lagrange_at_zero([s.index for s in points])
    return _decode(sum(p.value * w for p, w in zip(points, weights, strict=True)))


def combine_values(
    indices: Sequence[int], t: int, secrets: Sequence[Sequence[int]]
) -> list[bytes]:
    """Recover many secrets shared at the same points: ``secrets[k][m]`` is the
    value of secret ``k`` at ``indices[m]``, all with threshold ``t``. The
    Lagrange weights are computed once for all of them (what a coordinator
    recombining every party's seeds from the same answering holders needs).

    Raises as ``combine`` does.
    """
    _check_int("t", t)
    if len(set(indices)) != len(indices):
        raise ProtocolError("shares repeat an index")
    if any(not 1 <= x <= MAX_SHARES for x in indices):
        raise ProtocolError(f"share indices are in 1..{MAX_SHARES}")
    if len(indices) < t:
        raise ProtocolAbort(f"only {len(indices)} shares; threshold is {t}")
    weights = _lagrange_at_zero(list(indices[:t]))
    out = []
    for values in secrets:
        if len(values) != len(indices) or any(not 0 <= v < PRIME for v in values):
            raise ProtocolError("share values do not match their points")
        out.append(_decode(sum(v * w for v, w in zip(values, weights, strict=False))))
    return out


def _lagrange_at_zero(xs: list[int]) -> list[int]:
    """lambda_i = prod(x_j) / prod(x_j - x_i) over j != i, mod PRIME. One modular
    inversion of the product of all denominators serves every point
    (Montgomery's trick) instead of one inversion per point."""
    numerators, denominators = [], []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        numerators.append(numerator)
        denominators.append(denominator)
    prefix = [1]
    for d in denominators:
        prefix.append(prefix[-1] * d % PRIME)
    inverse = pow(prefix[-1], -1, PRIME)
    weights = [0] * len(xs)
    for i in range(len(xs) - 1, -1, -1):
        # Here inverse = 1 / (d_0 ... d_i), so 1 / d_i = inverse * (d_0 ... d_(i-1)).
        weights[i] = numerators[i] * inverse * prefix[i] % PRIME
        inverse = inverse * denominators[i] % PRIME
    return weights


def _decode(value: int) -> bytes:
    value %= PRIME
    encoded = value.to_bytes((value.bit_length() + 7) // 8, "big")
    if not encoded.startswith(_SENTINEL):
        raise ProtocolError("shares are inconsistent: they do not encode a secret")
    return encoded[1:]


def _random_field_elements(count: int, random: RandomSource) -> list[int]:
    # Uniform on [0, PRIME): take 521 random bits and reject the single value PRIME.
    out: list[int] = []
    mask = (1 << _PRIME_BITS) - 1
    while len(out) < count:
        needed = count - len(out)
        data = random(needed * VALUE_BYTES)
        if len(data) != needed * VALUE_BYTES:
            raise ProtocolError("the random source returned the wrong number of bytes")
        for k in range(needed):
            chunk = data[k * VALUE_BYTES : (k + 1) * VALUE_BYTES]
            candidate = int.from_bytes(chunk, "big") & mask
            if candidate < PRIME:
                out.append(candidate)
    return out


def _check_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{name} must be an int, got {value!r}")
