"""Sound SecAgg+ degree and threshold for a stated corruption and dropout rate.

The sparse graph is the randomly relabelled Harary graph of ``graph.py`` (each
party linked to the ``k/2`` nearest positions on either side of a ring whose
order nobody chose). Following Bell et al., "Secure Single-Server Aggregation
with (Poly)Logarithmic Overhead" (CCS 2020), and the Harary-graph instantiation
its authors published with Google's federated-compute parameter finder, a pair
``(k, t)`` is sound for ``n`` parties, at most ``gamma*n`` corrupt and at most
``delta*n`` dropped (both rounded up), when three union bounds hold:

* **both secrets** (privacy, ``<= 2^-(sigma+1)``): no honest party has ``c``
  corrupt neighbours with ``2t <= k + 1 + c``. Its closed neighbourhood holds
  ``k + 1`` shares; the party itself never hands over its mask-key share, so a
  coordinator splitting the honest holders between "it survived" and "it
  dropped" collects ``t`` of each only if ``2t <= k + 1 + c``. The count ``c``
  is hypergeometric: ``k`` of the ``n - 1`` others, ``ceil(gamma*n)`` corrupt.
  This is one more than the paper's ``2t > k + c`` because our parties keep a
  share of their own.
* **connectivity** (privacy, ``<= 2^-(sigma+1)``): removing the corrupt and
  dropped parties leaves the honest survivors connected, so the released sum
  is all of theirs or nothing. Disconnecting a Harary graph needs two disjoint
  runs of ``k/2`` consecutive removed positions: ``n(n-k-1)/2`` pairs, each
  all bad with probability ``C(B, k) / C(n, k)`` for ``B`` bad parties.
* **enough holders** (correctness, ``<= 2^-eta``): every party keeps ``t`` live
  share holders besides itself: fewer than ``t`` of its ``k`` neighbours are
  left only if more than ``k - t`` dropped (hypergeometric, ``ceil(delta*n)``).

:func:`sound_parameters` returns the smallest even ``k`` for which some ``t``
passes all three, with the smallest such ``t`` (the most dropouts tolerated),
or the complete graph when no sparse degree is at most two thirds of ``n - 1``
(below that saving, the complete graph's deterministic guarantees win).

Assumptions, named: corruption is static and independent of the graph order
(the graph seed is fixed after corruption and chosen by nobody, see graph.py);
honest dropouts are independent of the order; the union bounds are evaluated
exactly in floating point (log-gamma), not by Chernoff approximations. What the
bounds do not cover: the coordinator can still tell different honest holders
different survivor sets (there is no consistency round), which can expose the
sum of a subset of the honest survivors (of the order of ``k`` of them on the
ring) rather than only of all of them; see the module docstring of graph.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import numpy as np
import numpy.typing as npt

from cleanroom.errors import ConfigError

DEFAULT_CORRUPTION: Final = 0.05
DEFAULT_DROPOUT: Final = 0.05
DEFAULT_SIGMA: Final = 40
"""Privacy: the two privacy events together fail with probability <= 2^-sigma."""
DEFAULT_ETA: Final = 20
"""Correctness: some party has fewer than ``t`` live holders w.p. <= 2^-eta."""
SPARSE_SAVING: Final = 2 / 3
"""A sparse degree above this fraction of ``n - 1`` is not worth its randomness."""
_ROUNDING: Final = 1e-9
"""Keeps 0.05 * 100 at 5 parties despite binary floating point."""


@dataclass(frozen=True)
class FailureBounds:
    """Union bounds on the three failure events of one ``(n, k, t)`` choice."""

    both_secrets: float
    disconnected: float
    too_few_holders: float

    @property
    def privacy(self) -> float:
        """Probability that the coordinator learns more than the survivors' sum."""
        return self.both_secrets + self.disconnected

    @property
    def correctness(self) -> float:
        """Probability that benign dropouts make the round abort."""
        return self.too_few_holders


def bad_counts(n: int, corruption: float, dropout: float) -> tuple[int, int]:
    """The planned numbers of corrupt and dropped parties: each rate times n,
    rounded up (a 5% rate among 10 parties plans for one)."""
    _check_rates(n, corruption, dropout)
    return (
        math.ceil(corruption * n - _ROUNDING),
        math.ceil(dropout * n - _ROUNDING),
    )


def failure_bounds(
    n: int, k: int, t: int, *, corruption: float, dropout: float
) -> FailureBounds:
    """The three bounds for ``n`` parties, degree ``k``, threshold ``t``.

    For ``k = n - 1`` (complete graph) the counts are exact: every corrupt party
    is a neighbour and the graph cannot disconnect.
    """
    if not 2 <= k <= n - 1 or not 1 <= t <= k + 1:
        raise ConfigError(f"no bound for degree {k} and threshold {t} of {n}")
    corrupt, dropped = bad_counts(n, corruption, dropout)
    if k == n - 1:
        return FailureBounds(
            both_secrets=float(2 * t <= k + 1 + corrupt),
            disconnected=0.0,
            too_few_holders=float(k - dropped < t),
        )
    return FailureBounds(
        both_secrets=min(1.0, n * _tail(n - 1, corrupt, k, 2 * t - k - 1)),
        disconnected=_disconnection(n, k, corrupt + dropped),
        too_few_holders=min(1.0, n * _tail(n - 1, dropped, k, k - t + 1)),
    )


@lru_cache(maxsize=256)
def sound_parameters(
    n: int,
    corruption: float = DEFAULT_CORRUPTION,
    dropout: float = DEFAULT_DROPOUT,
    sigma: int = DEFAULT_SIGMA,
    eta: int = DEFAULT_ETA,
) -> tuple[int, int]:
    """``(degree, threshold)`` meeting the bounds above; ``degree == n - 1`` is the
    complete graph. ConfigError if even the complete graph cannot meet them."""
    for name, value in (("sigma", sigma), ("eta", eta)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive int, got {value!r}")
    corrupt, dropped = bad_counts(n, corruption, dropout)
    privacy, correctness = 2.0 ** -(sigma + 1), 2.0**-eta
    for k in range(2, math.floor(SPARSE_SAVING * (n - 1)) + 1, 2):
        if _disconnection(n, k, corrupt + dropped) > privacy:
            continue
        # Both bounds are monotone in t: the first t past the corrupt-neighbour
        # quantile is the smallest private one, and it must leave enough holders.
        most_corrupt = _quantile(n, corrupt, k, privacy / n)
        t = max((k + 1) // 2 + 1, (k + 3 + most_corrupt) // 2)
        if k - _quantile(n, dropped, k, correctness / n) >= t:
            return k, t
    k = n - 1
    t = max(n // 2 + 1, (n + 2 + corrupt) // 2)
    if t > n - dropped:
        raise ConfigError(
            f"no threshold protects {n} parties against {corruption:.0%} corrupt "
            f"and {dropout:.0%} dropped; lower the rates or add parties"
        )
    return k, t


def _quantile(n: int, marked: int, draws: int, bound: float) -> int:
    """The smallest c with P[X > c] <= bound, X hypergeometric: ``draws`` of the
    ``n - 1`` others, ``marked`` of them marked."""
    support, tails = _upper_tails(n - 1, marked, draws)
    above = support[1:][tails[1:] <= bound]
    return int(above[0]) - 1 if above.size else int(support[-1])


def _tail(population: int, marked: int, draws: int, at_least: int) -> float:
    """P[X >= at_least] for X hypergeometric: ``draws`` of ``population`` items,
    ``marked`` of them marked."""
    support, tails = _upper_tails(population, marked, draws)
    if at_least > support[-1]:
        return 0.0
    return float(tails[max(at_least - int(support[0]), 0)])


def _upper_tails(
    population: int, marked: int, draws: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """The support of X and P[X >= x] for each x in it, summed from the top so
    that tails far below 2^-40 keep their precision."""
    low, high = max(0, draws - (population - marked)), min(draws, marked)
    x = np.arange(low, high + 1, dtype=np.int64)
    lf = _log_factorials(population)
    log_pmf = (
        lf[marked]
        - lf[x]
        - lf[marked - x]
        + lf[population - marked]
        - lf[draws - x]
        - lf[population - marked - draws + x]
        - (lf[population] - lf[draws] - lf[population - draws])
    )
    tails = np.cumsum(np.exp(log_pmf)[::-1])[::-1]
    return x, tails


@lru_cache(maxsize=4)
def _log_factorials(n: int) -> npt.NDArray[np.float64]:
    """log(i!) for i = 0..n."""
    table = np.zeros(n + 1)
    np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)), out=table[1:])
    return table


def _disconnection(n: int, k: int, bad: int) -> float:
    if k > bad:
        return 0.0
    pairs = n * (n - k - 1) / 2
    lf = _log_factorials(n)
    log_all_bad = (lf[bad] - lf[bad - k]) - (lf[n] - lf[n - k])
    return min(1.0, pairs * math.exp(log_all_bad))


def _check_rates(n: int, corruption: float, dropout: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 3:
        raise ConfigError(f"the party count must be an int >= 3, got {n!r}")
    for name, rate in (("corruption", corruption), ("dropout", dropout)):
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise ConfigError(f"{name} must be a number, got {rate!r}")
        if not 0 <= rate < 1:
            raise ConfigError(f"{name} must be in [0, 1), got {rate}")
