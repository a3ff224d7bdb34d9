"""The DP-FedAvg accountant: known Gaussian values, composition over rounds, the
plan's charged epsilon and what one row's sensitivity covers."""

from __future__ import annotations

import itertools
import math

import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from cleanroom.errors import ConfigError
from protocols.fl.models import logistic_regression, softmax_regression
from protocols.fl.plan import FedAvgParams, FedAvgPlan
from protocols.fl.privacy import DPConfig, calibrate_plan, epsilon_spent


def analytic_gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon of a Gaussian mechanism with sensitivity/sigma = mu (Balle and
    Wang 2018, Theorem 8), independent of the RDP machinery."""

    def gap(eps: float) -> float:
        return (
            norm.cdf(-eps / mu + mu / 2)
            - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)
            - delta
        )

    return brentq(gap, 0, 200)


def test_known_value_of_one_gaussian_release() -> None:
    # sigma = 1, sensitivity 1, delta = 1e-5: exactly epsilon = 4.377 (analytic).
    exact = analytic_gaussian_epsilon(1.0, 1e-5)
    assert exact == pytest.approx(4.3772, abs=1e-3)
    ours = epsilon_spent(1.0, delta=1e-5, dimensions=1, parties=1)
    # RDP then conversion is an upper bound, and close to the exact value.
    assert exact <= ours <= 1.12 * exact


@pytest.mark.parametrize(
    ("node_std", "dimensions", "delta"),
    [(5.0, 10, 1e-5), (20.0, 100, 1e-8), (3.0, 1, 1e-6), (40.0, 1171, 1e-5)],
)
def test_composition_matches_the_gaussian_it_is(
    node_std: float, dimensions: int, delta: float
) -> None:
    """k releases of normalised sensitivity D at std s are one Gaussian of
    sensitivity/sigma = sqrt(D) / s: the accountant must bound it, tightly, and sit
    below the classic zCDP conversion rho + 2 sqrt(rho log(1/delta))."""
    exact = analytic_gaussian_epsilon(math.sqrt(dimensions) / node_std, delta)
    ours = epsilon_spent(node_std, delta=delta, dimensions=dimensions, parties=1)
    rho = dimensions / (2 * node_std**2)
    assert exact <= ours <= 1.12 * exact
    assert ours <= rho + 2 * math.sqrt(rho * math.log(1 / delta))


def test_shares_of_many_parties_add_up_to_one_gaussian() -> None:
    # With enough noise per share, KLS's correction term vanishes: three shares of
    # std s are one Gaussian of std s * sqrt(3).
    split = epsilon_spent(4.0, delta=1e-6, dimensions=50, parties=3)
    whole = epsilon_spent(4.0 * math.sqrt(3), delta=1e-6, dimensions=50, parties=1)
    assert split == pytest.approx(whole, rel=1e-6)


def _params(epsilon: float = 1.0, rounds: int = 20, weight: int = 4) -> FedAvgParams:
    return FedAvgParams(
        model=logistic_regression(4),
        feature_bounds=((0.0, 1.0),) * 4,
        parties=3,
        max_rows=10_000,
        rounds=rounds,
        local=None,
        privacy=DPConfig(epsilon, 1e-6, example_clip=1.0, standardise_weight=weight),
    )


def test_epsilon_is_monotone_in_rounds_and_charged_in_full() -> None:
    plan = FedAvgPlan.create(_params(rounds=20))
    privacy = plan.privacy
    assert privacy is not None
    spent = [privacy.epsilon_after(k) for k in range(privacy.aggregations + 1)]
    assert all(a < b for a, b in itertools.pairwise(spent))
    assert spent[0] > 0  # the standardisation round alone costs something
    assert privacy.epsilon_total == spent[-1]
    assert 0.999 <= privacy.epsilon_total <= 1.0  # calibrated to the target, not over
    with pytest.raises(ConfigError):
        privacy.epsilon_after(privacy.aggregations + 1)


def test_more_rounds_at_the_same_epsilon_need_more_noise() -> None:
    stds = [
        FedAvgPlan.create(_params(rounds=r)).privacy.noise.node_std for r in (5, 20, 80)
    ]
    assert stds[0] < stds[1] < stds[2]
    loose = FedAvgPlan.create(_params(epsilon=8.0)).privacy.noise.node_std
    assert loose < stds[1]


def test_what_one_row_is_charged_for() -> None:
    """Union over the splits a row might be in: the update (n_params coordinates,
    L2 <= example_clip), its training loss, and as a validation row its loss, its
    correctness and one AUC bin per scored class. Standardisation: two counts and
    two sums per feature, at weight^2 each."""
    binary = FedAvgPlan.create(_params(weight=3)).privacy
    assert binary is not None
    assert binary.round_dims == 5 + 2 + 1 + 1
    assert binary.standardise_dims == 9 * (2 + 2 * 4)
    assert binary.aggregations == 21  # 20 rounds + the final evaluation
    multi = FedAvgPlan.create(
        FedAvgParams(
            model=softmax_regression(4, 3),
            feature_bounds=((0.0, 1.0),) * 4,
            parties=3,
            max_rows=1000,
            local=None,
            privacy=DPConfig(1.0, 1e-6),
        )
    ).privacy
    assert multi is not None
    assert multi.round_dims == 15 + 2 + 1 + 3


def test_noise_is_calibrated_for_the_honest_threshold() -> None:
    params = _params()
    low = FedAvgParams(**{**params.__dict__, "parties": 10, "threshold": 4})
    high = FedAvgParams(**{**params.__dict__, "parties": 10, "threshold": 8})
    low_noise = FedAvgPlan.create(low).privacy.noise
    high_noise = FedAvgPlan.create(high).privacy.noise
    assert low_noise.parties == 4 and high_noise.parties == 8
    # Fewer guaranteed contributors: each must add more.
    assert low_noise.node_std > high_noise.node_std


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epsilon": 0},
        {"epsilon": math.inf},
        {"delta": 0},
        {"delta": 0.5},
        {"example_clip": -1},
        {"standardise_weight": 0},
        {"standardise_weight": 2.5},
    ],
)
def test_bad_dp_settings_are_refused(kwargs: dict[str, float]) -> None:
    base = {"epsilon": 1.0, "delta": 1e-6}
    with pytest.raises(ConfigError):
        DPConfig(**{**base, **kwargs})  # type: ignore[arg-type]


def test_calibration_refuses_an_empty_plan() -> None:
    with pytest.raises(ConfigError):
        calibrate_plan(
            DPConfig(1.0, 1e-6),
            standardise_dims=0,
            round_dims=0,
            aggregations=3,
            honest_parties=3,
        )
