"""Sound SecAgg+ degree and threshold: exact tails, published figures, monotonicity."""

from __future__ import annotations

import math

import pytest

from cleanroom.errors import ConfigError
from protocols.secagg import SecAggConfig
from protocols.secagg.bounds import bad_counts, failure_bounds, sound_parameters

PRIVACY, PER_EVENT, CORRECTNESS = 2.0**-40, 2.0**-41, 2.0**-20

# The degrees published with the paper authors' Harary-graph parameter finder
# (Google federated-compute, graph_parameter_finder_test, security 40, correctness
# 20, semi-malicious server): (n, corruption, dropout) -> degree. Our parties keep a
# share of their own, which the coordinator can ask for on one side of a split, so
# our both-secrets condition is one stricter (2t > k + 1 + c, not 2t > k + c) and
# our degrees are never below these, and at most a few percent above.
PUBLISHED = {
    (1_000, 0.05, 0.05): 52,
    (10_000, 0.05, 0.05): 62,
    (100_000, 0.05, 0.05): 68,
    (1_000_000, 0.05, 0.05): 74,
    (100, 0.33, 0.05): 42,
    (1_000, 0.33, 0.05): 132,
    (10_000, 0.33, 0.05): 178,
    (100_000, 0.33, 0.05): 196,
    (1_000, 0.05, 0.33): 398,
    (10_000, 0.05, 0.33): 746,
    (100, 0.33, 0.0): 26,
    (1_000, 0.33, 0.0): 38,
    (10_000, 0.33, 0.0): 42,
    (100_000, 0.33, 0.0): 46,
    (1_000, 0.0, 0.33): 228,
    (10_000, 0.0, 0.33): 326,
}


@pytest.mark.parametrize(
    ("n", "expected"),
    [(100, (18, 13)), (1_000, (52, 37)), (10_000, (62, 44)), (100_000, (72, 51))],
)
def test_defaults_at_five_percent_corrupt_and_dropped(
    n: int, expected: tuple[int, int]
) -> None:
    assert sound_parameters(n) == sound_parameters(n, 0.05, 0.05, 40, 20) == expected


@pytest.mark.parametrize(("case", "published"), sorted(PUBLISHED.items()))
def test_degrees_track_the_published_harary_figures(
    case: tuple[int, float, float], published: int
) -> None:
    n, corruption, dropout = case
    degree, _ = sound_parameters(n, corruption, dropout)
    assert published <= degree <= math.ceil(1.06 * published)


@pytest.mark.parametrize("n", [50, 100, 1_000, 10_000, 100_000])
@pytest.mark.parametrize("rates", [(0.05, 0.05), (0.1, 0.02), (0.02, 0.15)])
def test_bounds_hold_at_the_answer_and_fail_one_step_below(
    n: int, rates: tuple[float, float]
) -> None:
    corruption, dropout = rates
    k, t = sound_parameters(n, corruption, dropout)
    if k == n - 1:
        pytest.skip("the complete graph is the answer here; tested separately")
    at = failure_bounds(n, k, t, corruption=corruption, dropout=dropout)
    assert at.both_secrets <= PER_EVENT and at.disconnected <= PER_EVENT
    assert at.privacy <= PRIVACY and at.correctness <= CORRECTNESS
    lower_t = failure_bounds(n, k, t - 1, corruption=corruption, dropout=dropout)
    assert lower_t.both_secrets > PER_EVENT or t - 1 <= (k + 1) // 2
    for smaller_t in range((k - 1) // 2 + 1, k - 1):
        below = failure_bounds(
            n, k - 2, smaller_t, corruption=corruption, dropout=dropout
        )
        assert (
            below.both_secrets > PER_EVENT
            or below.disconnected > PER_EVENT
            or below.correctness > CORRECTNESS
        ), (k - 2, smaller_t)


def test_tails_are_exact_hypergeometric_sums() -> None:
    # 100 parties, 5 corrupt and 5 dropped, degree 16: fewer than 12 live holders
    # means all 5 dropped parties sit among one party's 16 neighbours (of 99).
    bounds = failure_bounds(100, 16, 12, corruption=0.05, dropout=0.05)
    exact = 100 * math.comb(94, 11) / math.comb(99, 16)
    assert bounds.too_few_holders == pytest.approx(exact, rel=1e-9)
    # Both secrets of one party need 2t - k - 1 = 7 corrupt neighbours: only 5 exist.
    assert bounds.both_secrets == 0.0
    # 1,000 parties, 100 bad, degree 52: two runs of 26 bad positions.
    far = failure_bounds(1_000, 52, 37, corruption=0.05, dropout=0.05)
    runs = 1_000 * (1_000 - 52 - 1) / 2 * math.comb(100, 52) / math.comb(1_000, 52)
    assert far.disconnected == pytest.approx(runs, rel=1e-9)
    both = 1_000 * sum(
        math.comb(50, c) * math.comb(949, 52 - c) for c in range(2 * 37 - 52 - 1, 51)
    )
    assert far.both_secrets == pytest.approx(both / math.comb(999, 52), rel=1e-9)


def test_more_parties_or_risk_never_lowers_the_degree() -> None:
    sizes = [30, 60, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000]
    for corruption, dropout in [(0.05, 0.05), (0.1, 0.1), (0.2, 0.05)]:
        degrees = [sound_parameters(n, corruption, dropout)[0] for n in sizes]
        assert degrees == sorted(degrees)
    for n in (1_000, 10_000):
        by_corruption = [sound_parameters(n, g, 0.05)[0] for g in (0, 0.02, 0.05, 0.1)]
        by_dropout = [sound_parameters(n, 0.05, d)[0] for d in (0, 0.02, 0.05, 0.1)]
        by_sigma = [sound_parameters(n, sigma=s)[0] for s in (20, 40, 80, 128)]
        by_eta = [sound_parameters(n, eta=e)[0] for e in (10, 20, 40)]
        for series in (by_corruption, by_dropout, by_sigma, by_eta):
            assert series == sorted(series)
    assert sound_parameters(10_000, sigma=128)[0] > sound_parameters(10_000)[0]


@pytest.mark.parametrize(
    ("n", "rates", "expected"),
    [
        (5, (0.05, 0.05), (4, 4)),  # 1 corrupt, 1 dropped: 2t >= 5 + 1 + 1, t <= 4
        (100, (0.05, 0.33), (99, 53)),  # sparse needs 72+: not worth it
        (100, (0.3, 0.3), (99, 66)),
    ],
)
def test_the_complete_graph_where_sparse_saves_too_little(
    n: int, rates: tuple[float, float], expected: tuple[int, int]
) -> None:
    k, t = sound_parameters(n, *rates)
    assert (k, t) == expected
    corrupt, dropped = bad_counts(n, *rates)
    assert 2 * t >= n + 1 + corrupt and t <= n - dropped
    assert 2 * (t - 1) < n + 1 + corrupt  # the smallest such threshold


@pytest.mark.parametrize(
    ("n", "rates"), [(3, (0.05, 0.05)), (10, (0.45, 0.45)), (1_000, (0.5, 0.3))]
)
def test_infeasible_rates_are_refused(n: int, rates: tuple[float, float]) -> None:
    with pytest.raises(ConfigError, match="no threshold protects"):
        sound_parameters(n, *rates)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 2},
        {"n": True},
        {"corruption": 1.0},
        {"corruption": -0.01},
        {"dropout": "5%"},
        {"dropout": True},
        {"sigma": 0},
        {"eta": 2.5},
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object]) -> None:
    params: dict[str, object] = {"n": 100}
    params.update(kwargs)
    with pytest.raises(ConfigError):
        sound_parameters(**params)


def test_rates_are_rounded_up_to_whole_parties() -> None:
    assert bad_counts(100, 0.05, 0.05) == (5, 5)  # not 6 from 0.05 * 100 = 5.000...1
    assert bad_counts(10, 0.05, 0.0) == (1, 0)
    assert bad_counts(1_000, 0.0331, 0.1) == (34, 100)


def test_the_k_regular_config_defaults_to_the_sound_parameters() -> None:
    names = [f"n{i:04d}" for i in range(1_000)]
    base = {"session_id": "s", "parties": names, "vector_length": 1}
    cfg = SecAggConfig.create(**base, graph="k-regular", graph_seed=bytes(32))  # type: ignore[arg-type]
    assert (cfg.degree, cfg.threshold) == (52, 37)
    wary = SecAggConfig.create(
        **base,  # type: ignore[arg-type]
        graph="k-regular",
        graph_seed=bytes(32),
        corruption=0.1,
        dropout=0.1,
    )
    assert (wary.degree, wary.threshold) == sound_parameters(1_000, 0.1, 0.1)
    assert wary.degree > cfg.degree
    complete = SecAggConfig.create(**base)  # type: ignore[arg-type]
    assert (complete.degree, complete.threshold) == (999, 667)
