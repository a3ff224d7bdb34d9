"""DP-FedAvg at row level: the neighbouring relation, what clipping covers, and the
accountant that prices a whole training job before it starts.

Neighbouring relation: two federations' data differ by adding or removing one row
at one node (any node, in its training or its validation split). Every number a
DP job releases is a noisy sum of per-row terms, each bounded whatever the other
rows are:

* the model update is the sum over the node's training rows of each row's loss
  gradient at the round's global model, scaled to L2 norm at most
  ``example_clip`` (per-example clipping) and encoded row by row, so one row
  moves it by at most ``example_clip`` in L2;
* loss sums add each row's loss clipped to ``loss_clip``; accuracy counts and
  AUC histogram bins add 0 or 1 per row; the standardisation round adds each
  row's centred, clipped features and their squares, and the row counts.

Why not clip the node's update after local epochs (McMahan et al.'s per-node
clipping)? That bounds a whole node's influence (node-level DP); one row's
influence on several local SGD steps runs through every later step and no clip
of the final update bounds it below the whole node's. So with DP the local step is
one clipped gradient sum per round (DP-FedSGD) and the coordinator takes the
averaged, noised gradient step; local epochs and FedProx are refused. Per-node
clipping is still what bounds every node's update for the fixed-point encoding,
and per-example clipping implies it: a node's update is at most
``max_rows * example_clip``. The guarantee also holds whatever global model or
standardisation the (untrusted) coordinator sends, since every bound above is
enforced on the node after it applies them.

Noise: each node adds its share of the distributed discrete Gaussian
(``protocols.dp``, Kairouz-Liu-Steinke Prop. 14), calibrated for the SecAgg+
threshold's honest contributors, to every coordinate of every vector.

Accountant: the same per-node noise level ``s`` is used for every release, and
the KLS Rényi bound is linear in the normalised L2^2 sensitivity ``D`` of a
release (``vector.dims``). Rényi DP composes by addition at each order, so the
standardisation round plus ``k`` training rounds is exactly one release with
``D_std + k * D_round`` dimensions; ``protocols.dp`` converts that to (epsilon,
delta) with Canonne-Kamath-Steinke's conversion, minimised over orders 2..~10^6.
``calibrate_plan`` picks ``s`` for all planned aggregations (every training round
and the final evaluation) before the job starts, so the whole epsilon is charged
to each holder's budget up front; early stopping spends less but refunds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cleanroom.errors import ConfigError
from protocols import dp
from protocols.fl.checks import check_int, check_real

MAX_WEIGHT: Final = 16
_BISECTION_STEPS: Final = 60


@dataclass(frozen=True)
class DPConfig:
    """What a DP-required policy asks for: (epsilon, delta) over the whole job."""

    epsilon: float
    delta: float
    example_clip: float = 1.0
    """L2 bound on each row's gradient (per-example clipping)."""
    standardise_weight: int = 4
    """The standardisation round's coordinates get this many times less noise per
    unit of sensitivity than a round's (released once, used by every round), at
    weight^2 the privacy cost per coordinate."""

    def __post_init__(self) -> None:
        check_real("privacy.epsilon", self.epsilon, 0, 100, open_low=True)
        check_real("privacy.delta", self.delta, 0, 0.1, open_low=True)
        check_real("privacy.example_clip", self.example_clip, 0, 1e6, open_low=True)
        check_int("privacy.standardise_weight", self.standardise_weight, 1, MAX_WEIGHT)


@dataclass(frozen=True)
class PrivacyPlan:
    """The calibrated noise and the dimensions each release charges."""

    config: DPConfig
    noise: dp.DistributedGaussian
    standardise_dims: int
    round_dims: int
    aggregations: int
    """Training rounds plus the final evaluation round: all charged up front."""

    @property
    def epsilon_total(self) -> float:
        """Epsilon the accountant finds for every planned release, at ``delta``."""
        return self.epsilon_after(self.aggregations)

    def epsilon_after(self, aggregations: int) -> float:
        """Epsilon spent by the standardisation round and ``aggregations`` rounds."""
        check_int("aggregations", aggregations, 0, self.aggregations)
        return epsilon_spent(
            self.noise.node_std,
            delta=self.config.delta,
            dimensions=self.standardise_dims + aggregations * self.round_dims,
            parties=self.noise.parties,
        )


def calibrate_plan(
    config: DPConfig,
    *,
    standardise_dims: int,
    round_dims: int,
    aggregations: int,
    honest_parties: int,
) -> PrivacyPlan:
    """Per-node noise for the whole job: (epsilon, delta) over every release."""
    check_int("aggregations", aggregations, 1, 1 << 20)
    total = standardise_dims + aggregations * round_dims
    if total < 1:
        raise ConfigError("a DP job must release something")
    noise = dp.calibrate(
        config.epsilon, config.delta, dimensions=total, parties=honest_parties
    )
    return PrivacyPlan(config, noise, standardise_dims, round_dims, aggregations)


def epsilon_spent(
    node_std: float, *, delta: float, dimensions: int, parties: int
) -> float:
    """The smallest epsilon (to 1e-9 relative) at which ``parties`` shares of per-node
    std ``node_std`` make a release of normalised sensitivity ``dimensions`` (all
    rounds composed) (epsilon, delta)-DP, by the bound ``protocols.dp`` uses."""
    if dimensions == 0:
        return 0.0

    def enough(eps: float) -> bool:
        found = dp.distributed_delta(
            node_std, epsilon=eps, dimensions=dimensions, parties=parties
        )
        return found <= delta

    low, high = 0.0, 1.0
    while not enough(high):
        low, high = high, high * 2
        if high > 1e6:
            raise ConfigError("this noise gives no meaningful epsilon")
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        low, high = (low, middle) if enough(middle) else (middle, high)
        if high - low <= 1e-9 * high:
            break
    return high
