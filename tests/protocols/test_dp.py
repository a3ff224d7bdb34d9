"""The exact discrete Gaussian sampler and the calibration of distributed noise."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest

from cleanroom.errors import ConfigError, QuotaExceeded
from protocols import dp


def source(seed: int) -> dp.RandomSource:
    """A deterministic byte source, for tests only."""
    return random.Random(seed).randbytes


@pytest.mark.parametrize(
    "sigma2", [Fraction(1, 4), Fraction(3, 2), 10, Fraction(10**6, 7), 10**30]
)
def test_samples_have_mean_zero_and_the_discrete_gaussian_variance(
    sigma2: Fraction | int,
) -> None:
    n = 20_000
    draws = dp.sample_discrete_gaussians([sigma2] * n, source(1))
    assert all(isinstance(x, int) for x in draws)
    values = np.array(draws, dtype=float)
    expected = dp.discrete_gaussian_variance(float(sigma2))
    assert abs(values.mean()) < 4 * math.sqrt(expected / n)
    # relative standard error of a sample variance of n draws: sqrt(2/n) = 1%
    assert values.var() / expected == pytest.approx(1, abs=0.05)


def test_small_variance_follows_the_exact_probabilities() -> None:
    sigma2 = Fraction(3, 2)
    n = 30_000
    draws = np.array(dp.sample_discrete_gaussians([sigma2] * n, source(2)))
    support = np.arange(-4, 5)
    weights = np.exp(-(support.astype(float) ** 2) / (2 * float(sigma2)))
    everything = sum(math.exp(-(k * k) / (2 * float(sigma2))) for k in range(-60, 61))
    expected = n * weights / everything
    observed = np.array([(draws == k).sum() for k in support])
    tails = n - expected.sum()
    chi2 = ((observed - expected) ** 2 / expected).sum()
    chi2 += (len(draws) - observed.sum() - tails) ** 2 / tails
    assert chi2 < 30  # 9 degrees of freedom: p < 0.001 beyond 27.9


def test_the_same_source_gives_the_same_samples() -> None:
    first = dp.sample_discrete_gaussians([5] * 50, source(7))
    assert dp.sample_discrete_gaussians([5] * 50, source(7)) == first
    assert dp.sample_discrete_gaussians([5] * 50, source(8)) != first
    assert dp.sample_discrete_gaussian(0, source(1)) == 0


@pytest.mark.parametrize("bad", [1.5, -1, Fraction(-1, 2), "2", True])
def test_variances_must_be_exact_and_non_negative(bad: object) -> None:
    with pytest.raises(ConfigError):
        dp.sample_discrete_gaussian(bad, source(0))  # type: ignore[arg-type]


def test_uniform_integers_have_no_modulo_bias() -> None:
    rng = dp._UniformIntegers(source(3))
    counts = np.bincount([rng.below(3) for _ in range(30_000)], minlength=3)
    assert np.all(np.abs(counts - 10_000) < 400)  # ~4.9 standard deviations


def test_single_party_calibration_is_a_valid_gaussian_mechanism() -> None:
    noise = dp.calibrate(1.0, 1e-6, dimensions=1, parties=1)
    # tighter than the classic sqrt(2 ln(1.25/delta)) / epsilon, never below the
    # optimal analytic Gaussian mechanism of Balle and Wang (4.22 here)
    assert 4.22 < noise.node_std < math.sqrt(2 * math.log(1.25 / 1e-6))
    assert (
        dp.distributed_delta(noise.node_std, epsilon=1.0, dimensions=1, parties=1)
        <= 1e-6
    )
    # and it is the smallest such noise
    assert (
        dp.distributed_delta(
            noise.node_std * 0.999, epsilon=1.0, dimensions=1, parties=1
        )
        > 1e-6
    )


@pytest.mark.parametrize("parties", [1, 3, 10])
def test_calibration_is_monotone(parties: int) -> None:
    def std(epsilon: float = 1.0, delta: float = 1e-6, dims: int = 4) -> float:
        return dp.calibrate(epsilon, delta, dimensions=dims, parties=parties).node_std

    by_epsilon = [std(epsilon=e) for e in (0.1, 0.5, 1.0, 2.0, 4.0)]
    assert by_epsilon == sorted(by_epsilon, reverse=True)
    assert len(set(by_epsilon)) == len(by_epsilon)
    by_delta = [std(delta=d) for d in (1e-10, 1e-8, 1e-6, 1e-4)]
    assert by_delta == sorted(by_delta, reverse=True)
    by_dims = [std(dims=d) for d in (1, 2, 8, 32)]
    assert by_dims == sorted(by_dims)


def test_shares_shrink_with_parties_while_the_total_stays_put() -> None:
    single = dp.calibrate(0.5, 1e-6, dimensions=6, parties=1)
    previous = single.node_std
    for parties in (2, 4, 8, 16):
        noise = dp.calibrate(0.5, 1e-6, dimensions=6, parties=parties)
        assert noise.node_std < previous
        previous = noise.node_std
        # the sum of discrete Gaussians is nearly one: almost no extra noise needed
        assert noise.total_std(parties) == pytest.approx(single.total_std(1), rel=0.01)


def test_noise_per_coordinate_scales_with_its_sensitivity() -> None:
    noise = dp.calibrate(1.0, 1e-6, dimensions=2, parties=3)
    assert noise.variance_for(7) == 49 * noise.node_variance
    draws = np.array([noise.sample([1, 1000], source(s)) for s in range(2000)])
    ratio = draws[:, 1].std() / draws[:, 0].std()
    assert ratio == pytest.approx(1000, rel=0.1)
    with pytest.raises(ConfigError):
        noise.variance_for(0)


@pytest.mark.parametrize(
    ("epsilon", "delta"), [(0, 1e-6), (-1, 1e-6), (math.inf, 1e-6), (1, 0), (1, 1)]
)
def test_calibration_refuses_meaningless_privacy(epsilon: float, delta: float) -> None:
    with pytest.raises(ConfigError):
        dp.calibrate(epsilon, delta, dimensions=1, parties=3)


def test_a_noisy_count_carries_the_std_it_reports() -> None:
    cost = dp.PrivacyCost(1.0, 1e-6)
    releases = [dp.noisy_count(40, cost, source(100 + s)) for s in range(4000)]
    values = np.array([r.value for r in releases], dtype=float)
    std = releases[0].std
    assert {r.std for r in releases} == {std} and {r.cost for r in releases} == {cost}
    assert std == pytest.approx(dp.count_noise(cost).node_std, rel=1e-3)
    assert abs(values.mean() - 40) < 4 * std / math.sqrt(4000)
    # sample std of 4000 draws: relative standard error about 1.1%
    assert values.std() / std == pytest.approx(1, abs=0.05)
    assert releases[0].to_json()["noise_std"] == std


def test_small_noise_reports_the_discrete_gaussians_true_std() -> None:
    # a huge epsilon gives sigma near the sampler's floor, where the discrete
    # Gaussian's variance is visibly below sigma^2
    cost = dp.PrivacyCost(60.0, 0.1)
    noise = dp.count_noise(cost)
    released = dp.noisy_count(3, cost, source(1))
    assert released.std == pytest.approx(
        math.sqrt(dp.discrete_gaussian_variance(float(noise.node_variance)))
    )
    assert released.std <= noise.node_std


def test_suppression_looks_at_the_released_value_only() -> None:
    released = dp.NoisyCount(value=4, std=3.0, cost=dp.PrivacyCost(1.0, 1e-6))
    assert released.below(5) and not released.below(4)


@pytest.mark.parametrize(
    ("count", "cost"),
    [(-1, (1.0, 1e-6)), (True, (1.0, 1e-6)), (3, (0.0, 1e-6)), (3, (1.0, 0.0))],
)
def test_noisy_counts_refuse_bad_input(count: int, cost: tuple[float, float]) -> None:
    with pytest.raises(ConfigError):
        dp.noisy_count(count, dp.PrivacyCost(*cost), source(0))


def test_costs_compose_and_charge_against_a_budget() -> None:
    budget = dp.PrivacyCost(1.0, 1e-5)
    spent = dp.NO_COST
    for _ in range(10):  # ten 0.1-epsilon jobs fit a budget of 1 despite floats
        spent = dp.charge(spent, dp.PrivacyCost(0.1, 1e-6), budget)
    assert spent.epsilon == pytest.approx(1.0) and spent.delta == pytest.approx(1e-5)
    with pytest.raises(QuotaExceeded) as refused:
        dp.charge(spent, dp.PrivacyCost(0.01, 0.0), budget)
    assert (
        len(refused.value.reasons) == 1 and "epsilon budget" in refused.value.reasons[0]
    )
    with pytest.raises(QuotaExceeded) as refused:
        dp.charge(dp.NO_COST, dp.PrivacyCost(2.0, 1e-4), budget)
    assert len(refused.value.reasons) == 2


@pytest.mark.parametrize(
    ("epsilon", "delta"), [(-0.1, 0.0), (math.nan, 0.0), (1.0, 1.0), (1.0, -1e-9)]
)
def test_costs_must_be_meaningful(epsilon: float, delta: float) -> None:
    with pytest.raises(ConfigError):
        dp.PrivacyCost(epsilon, delta)
