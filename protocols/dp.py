"""Differential privacy: an exact discrete Gaussian sampler, and the calibration of
noise that several parties add in shares before their inputs are securely summed.

Sampling follows Canonne, Kamath and Steinke, "The Discrete Gaussian for
Differential Privacy" (NeurIPS 2020), Algorithms 1-3: only integer and rational
arithmetic, randomness from an injectable source (``os.urandom`` by default), no
floating point anywhere in the sampling loop, so the output distribution is exactly
N_Z(0, sigma^2) rather than a rounded continuous Gaussian whose low-order bits leak.

Distributed noise: each of ``n`` parties adds an independent N_Z(0, s^2) per
coordinate and only the sum of all contributions is ever seen. The sum of discrete
Gaussians is not itself a discrete Gaussian, but Kairouz, Liu and Steinke ("The
Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
Aggregation", ICML 2021, Proposition 14) bound its Rényi divergence; ``calibrate``
uses that bound and the Rényi-to-(epsilon, delta) conversion of Canonne et al.
(Proposition 12 / Corollary 13) to choose ``s``. The guarantee assumes the parties
are honest: a party that withholds or later subtracts its own share weakens it.

Local release: ``noisy_count`` is one node releasing its own count with all the
noise that count needs (a single-party discrete Gaussian, sensitivity 1), reporting
the exact standard deviation of what it released. ``PrivacyCost`` and ``charge``
are what a node meters per job: basic composition (epsilon and delta add), checked
against its budget before any row is read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Final

from cleanroom.errors import ConfigError, QuotaExceeded
from protocols.party import SYSTEM_RANDOM, RandomSource

MIN_NODE_STD: Final = 0.5
"""The smallest per-party standard deviation the distributed bound (KLS Prop. 14)
covers, in units of the coordinate's sensitivity."""

_ORDERS: Final = tuple(range(2, 257)) + tuple(
    round(256 * 1.25**i) for i in range(1, 38)
)
"""Rényi orders searched (integers only; the largest is about 10^6)."""
_MAX_NODE_STD: Final = 1e12
_CHUNK_BYTES: Final = 512
_BUDGET_SLACK: Final = 1e-9
"""Relative slack so float sums such as ten 0.1-epsilon jobs fit a budget of 1."""


class _UniformIntegers:
    """Uniform integers in [0, m) from a byte source, by rejection: no modulo bias."""

    def __init__(self, random: RandomSource) -> None:
        self._random = random
        self._buffer = b""
        self._offset = 0

    def _bytes(self, n: int) -> bytes:
        if self._offset + n > len(self._buffer):
            self._buffer = self._buffer[self._offset :] + self._random(
                max(n, _CHUNK_BYTES)
            )
            self._offset = 0
        out = self._buffer[self._offset : self._offset + n]
        self._offset += n
        return out

    def below(self, m: int) -> int:
        if m <= 1:
            return 0
        bits = (m - 1).bit_length()
        mask = (1 << bits) - 1
        while True:
            value = int.from_bytes(self._bytes((bits + 7) // 8), "little") & mask
            if value < m:
                return value


def _bernoulli(num: int, den: int, rng: _UniformIntegers) -> bool:
    """True with probability num/den, 0 <= num <= den."""
    return rng.below(den) < num


def _bernoulli_exp_at_most_one(num: int, den: int, rng: _UniformIntegers) -> bool:
    """True with probability exp(-num/den), num/den in [0, 1] (CKS Algorithm 1)."""
    k = 1
    while _bernoulli(num, den * k, rng):
        k += 1
    return k % 2 == 1


def _bernoulli_exp(num: int, den: int, rng: _UniformIntegers) -> bool:
    """True with probability exp(-num/den) for any num/den >= 0."""
    while num > den:
        if not _bernoulli_exp_at_most_one(1, 1, rng):
            return False
        num -= den
    return _bernoulli_exp_at_most_one(num, den, rng)


def _discrete_laplace(t: int, rng: _UniformIntegers) -> int:
    """P(x) proportional to exp(-|x| / t) on the integers (CKS Algorithm 2, s = 1)."""
    while True:
        u = rng.below(t)
        if not _bernoulli_exp(u, t, rng):
            continue
        v = 0
        while _bernoulli_exp_at_most_one(1, 1, rng):
            v += 1
        magnitude = u + t * v
        negative = rng.below(2) == 1
        if negative and magnitude == 0:
            continue
        return -magnitude if negative else magnitude


def _discrete_gaussian(sigma2: Fraction, rng: _UniformIntegers) -> int:
    """N_Z(0, sigma2) by rejection from a discrete Laplace (CKS Algorithm 3)."""
    p, q = sigma2.numerator, sigma2.denominator
    if p == 0:
        return 0
    # floor(sqrt(p/q)) == isqrt(p*q) // q, exactly.
    t = math.isqrt(p * q) // q + 1
    while True:
        candidate = _discrete_laplace(t, rng)
        # bias = (|candidate| - sigma2/t)^2 / (2 sigma2), kept as an exact ratio:
        # ((|c| t q - p)^2 / (t q)^2) / (2 p / q) = (|c| t q - p)^2 / (2 p q t^2)
        gap = abs(candidate) * t * q - p
        if _bernoulli_exp(gap * gap, 2 * p * q * t * t, rng):
            return candidate


def _exact_variance(sigma2: Fraction | int) -> Fraction:
    if isinstance(sigma2, bool) or not isinstance(sigma2, Fraction | int):
        raise ConfigError(
            f"the variance must be an int or a Fraction (exact), got {sigma2!r}"
        )
    if sigma2 < 0:
        raise ConfigError(f"the variance must be non-negative, got {sigma2}")
    return Fraction(sigma2)


def sample_discrete_gaussian(
    sigma2: Fraction | int, random: RandomSource = SYSTEM_RANDOM
) -> int:
    """One exact sample of the discrete Gaussian N_Z(0, sigma2).

    ``sigma2`` is exact (int or Fraction), never a float: the point of this sampler
    is that no rounding of the variance or of the sampling steps can bias it.
    """
    return _discrete_gaussian(_exact_variance(sigma2), _UniformIntegers(random))


def sample_discrete_gaussians(
    variances: Sequence[Fraction | int], random: RandomSource = SYSTEM_RANDOM
) -> list[int]:
    """Independent exact samples, the i-th from N_Z(0, variances[i])."""
    exact = [_exact_variance(v) for v in variances]
    rng = _UniformIntegers(random)
    return [_discrete_gaussian(v, rng) for v in exact]


def discrete_gaussian_variance(sigma2: float) -> float:
    """The true variance of N_Z(0, sigma2): slightly below sigma2 for small sigma2."""
    if sigma2 <= 0:
        return 0.0
    if sigma2 > 100:
        return float(sigma2)  # the deficit is below exp(-2 pi^2 sigma2): nothing
    limit = int(40 * math.sqrt(sigma2)) + 2
    weights = [math.exp(-(k * k) / (2 * sigma2)) for k in range(1, limit)]
    norm = 1 + 2 * math.fsum(weights)
    return 2 * math.fsum(k * k * w for k, w in enumerate(weights, start=1)) / norm


def _tau(node_std: float, parties: int) -> float:
    # How far a sum of ``parties`` discrete Gaussians is from one (KLS Theorem 1).
    s2 = node_std * node_std
    return 10 * math.fsum(
        math.exp(-2 * math.pi**2 * s2 * k / (k + 1)) for k in range(1, parties)
    )


def _rdp(order: int, node_std: float, dimensions: int, parties: int) -> float:
    """Rényi DP of order ``order`` of the summed noise, every touched coordinate
    normalised to sensitivity 1 and per-party standard deviation ``node_std``."""
    scale = 1.0 / (math.sqrt(parties) * node_std)
    tau = _tau(node_std, parties)
    per_coordinate = min(
        order / 2 * scale * scale + tau, order / 2 * (scale + tau) ** 2
    )
    return dimensions * per_coordinate


def _check_epsilon(epsilon: float, dimensions: int, parties: int) -> None:
    if not (
        isinstance(epsilon, int | float) and math.isfinite(epsilon) and epsilon > 0
    ):
        raise ConfigError(f"epsilon must be a positive finite number, got {epsilon!r}")
    for name, value in (("dimensions", dimensions), ("parties", parties)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive int, got {value!r}")


def distributed_delta(
    node_std: float, *, epsilon: float, dimensions: int, parties: int
) -> float:
    """The delta at which the summed noise is (epsilon, delta)-DP.

    Each of at least ``parties`` parties adds N_Z(0, (Δ_j * node_std)^2) to every
    coordinate j, where Δ_j bounds how much one record moves coordinate j, and one
    record moves at most ``dimensions`` coordinates.
    """
    _check_epsilon(epsilon, dimensions, parties)
    if not node_std >= MIN_NODE_STD:
        raise ConfigError(f"node_std must be at least {MIN_NODE_STD}")
    best = 0.0
    for order in _ORDERS:
        rdp = _rdp(order, node_std, dimensions, parties)
        log_delta = (order - 1) * (rdp - epsilon + math.log1p(-1 / order)) - math.log(
            order
        )
        best = min(best, log_delta)
    return math.exp(best)


@dataclass(frozen=True)
class DistributedGaussian:
    """Noise calibrated for (epsilon, delta): each party adds, to a coordinate of
    sensitivity Δ (in integer units), N_Z(0, Δ^2 * node_variance).

    The guarantee holds once the contributions of at least ``parties`` honest
    parties are summed; more contributions only add noise.
    """

    epsilon: float
    delta: float
    dimensions: int
    parties: int
    node_variance: Fraction

    @property
    def node_std(self) -> float:
        """Per-party standard deviation per unit of sensitivity."""
        return math.sqrt(self.node_variance)

    def total_std(self, contributors: int) -> float:
        """Standard deviation of the summed noise per unit of sensitivity."""
        return math.sqrt(contributors * self.node_variance)

    def variance_for(self, sensitivity: int) -> Fraction:
        """One party's exact noise variance for a coordinate of this sensitivity."""
        if isinstance(sensitivity, bool) or not isinstance(sensitivity, int):
            raise ConfigError(f"sensitivity must be an int, got {sensitivity!r}")
        if sensitivity < 1:
            raise ConfigError(f"sensitivity must be at least 1, got {sensitivity}")
        return sensitivity * sensitivity * self.node_variance

    def sample(
        self, sensitivities: Sequence[int], random: RandomSource = SYSTEM_RANDOM
    ) -> list[int]:
        """This party's noise share, one integer per coordinate."""
        variances = [self.variance_for(s) for s in sensitivities]
        return sample_discrete_gaussians(variances, random)


def calibrate(
    epsilon: float, delta: float, *, dimensions: int, parties: int
) -> DistributedGaussian:
    """The smallest per-party noise (to 1e-6 relative) that makes the sum of at
    least ``parties`` shares (epsilon, delta)-DP when one record moves at most
    ``dimensions`` coordinates, each by at most its sensitivity."""
    _check_epsilon(epsilon, dimensions, parties)
    if not (isinstance(delta, int | float) and 0 < delta < 1):
        raise ConfigError(f"delta must be in (0, 1), got {delta!r}")
    return _calibrate(float(epsilon), float(delta), dimensions, parties)


@lru_cache(maxsize=256)
def _calibrate(
    epsilon: float, delta: float, dimensions: int, parties: int
) -> DistributedGaussian:
    def enough(std: float) -> bool:
        found = distributed_delta(
            std, epsilon=epsilon, dimensions=dimensions, parties=parties
        )
        return found <= delta

    low, high = MIN_NODE_STD, MIN_NODE_STD
    if not enough(high):
        while not enough(high):
            low, high = high, high * 2
            if high > _MAX_NODE_STD:
                raise ConfigError(
                    f"epsilon {epsilon} and delta {delta} need impractically much noise"
                )
        while high - low > 1e-6 * high:
            middle = (low + high) / 2
            low, high = (low, middle) if enough(middle) else (middle, high)
    # Fraction(float) is exact, so the variance the parties use is exactly high^2,
    # the value just shown to be enough.
    return DistributedGaussian(
        epsilon=epsilon,
        delta=delta,
        dimensions=dimensions,
        parties=parties,
        node_variance=Fraction(high) ** 2,
    )


@dataclass(frozen=True)
class PrivacyCost:
    """An (epsilon, delta) spent by one job, or a budget, or a running total."""

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        if not (
            isinstance(self.epsilon, int | float)
            and not isinstance(self.epsilon, bool)
            and math.isfinite(self.epsilon)
            and self.epsilon >= 0
        ):
            raise ConfigError(f"epsilon must be finite and >= 0, got {self.epsilon!r}")
        if not (
            isinstance(self.delta, int | float)
            and not isinstance(self.delta, bool)
            and 0 <= self.delta < 1
        ):
            raise ConfigError(f"delta must lie in [0, 1), got {self.delta!r}")

    def __add__(self, other: PrivacyCost) -> PrivacyCost:
        """Basic composition: running both mechanisms costs the sum."""
        return PrivacyCost(self.epsilon + other.epsilon, self.delta + other.delta)


NO_COST: Final = PrivacyCost(0.0, 0.0)


def charge(spent: PrivacyCost, cost: PrivacyCost, budget: PrivacyCost) -> PrivacyCost:
    """The total after a job costing ``cost``: QuotaExceeded, naming each part of
    the budget it would overrun, if ``spent + cost`` exceeds ``budget``."""
    total = spent + cost
    over = [
        f"{name} budget: {used:g} spent + {more:g} asked > {limit:g}"
        for name, used, more, limit in (
            ("epsilon", spent.epsilon, cost.epsilon, budget.epsilon),
            ("delta", spent.delta, cost.delta, budget.delta),
        )
        if used + more > limit * (1 + _BUDGET_SLACK)
    ]
    if over:
        raise QuotaExceeded(over)
    return total


@dataclass(frozen=True)
class NoisyCount:
    """A count released under DP: ``value`` is the true count plus N_Z(0, sigma^2)
    noise; ``std`` is the exact standard deviation of that noise (the discrete
    Gaussian's, slightly below sigma for small sigma). Unclamped, so unbiased."""

    value: int
    std: float
    cost: PrivacyCost

    def below(self, threshold: int) -> bool:
        """Suppression decided on the released value only (post-processing): a
        decision on the true count would itself leak it without noise."""
        return self.value < threshold

    def to_json(self) -> dict[str, object]:
        return {
            "value": self.value,
            "noise_std": self.std,
            "epsilon": self.cost.epsilon,
            "delta": self.cost.delta,
            "mechanism": "discrete Gaussian, added by the releasing node",
        }


def count_noise(cost: PrivacyCost) -> DistributedGaussian:
    """The noise one node adds to one count (sensitivity 1) to meet ``cost``."""
    if cost.epsilon <= 0 or cost.delta <= 0:
        raise ConfigError("a noisy count needs epsilon > 0 and delta > 0")
    return calibrate(cost.epsilon, cost.delta, dimensions=1, parties=1)


def noisy_count(
    count: int, cost: PrivacyCost, random: RandomSource = SYSTEM_RANDOM
) -> NoisyCount:
    """``count`` released by one node with all the noise it needs for ``cost``.

    Adding or removing one row moves a count by 1, so this is the Gaussian mechanism
    with sensitivity 1 on the integers (exact sampler, no floating point)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError(f"a count is a non-negative int, got {count!r}")
    noise = count_noise(cost)
    draw = sample_discrete_gaussian(noise.node_variance, random)
    std = math.sqrt(discrete_gaussian_variance(float(noise.node_variance)))
    return NoisyCount(count + draw, std, cost)
