"""The public parameters of a ``fedavg`` job and the plan every party derives from them:
the two vector layouts (standardisation, training round) and the DP noise.

Round vector, in order (every value a sum over the node's rows, with the global
model the round started from):

* ``update``      without DP ``n_i * clip_l2(w_i - w, update_clip)``, the node's
  local change weighted by its training rows; with DP the sum of per-example
  clipped gradients at ``w``;
* ``train_count``, ``val_count`` (without DP; with DP the counts come from the
  standardisation round, released once);
* ``train_loss``, ``val_loss``  sums of per-row losses of ``w``, each clipped to
  ``loss_clip``;
* ``val_correct``, ``auc``      (classification) correct predictions, and per
  scored class a histogram of validation rows' log-odds in ``auc_bins`` fixed
  bins over [-AUC_RANGE, AUC_RANGE], positives then negatives;
* ``diverged``    (without DP) 1 if the node's local training went non-finite.

The coordinator learns these sums and nothing per node (SecAgg+); with DP, noisy
sums. Everything here is public: each node checks its data against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from cleanroom.errors import ConfigError
from protocols.fl.checks import check_int, check_real
from protocols.fl.local import LocalTraining
from protocols.fl.models import Model
from protocols.fl.privacy import DPConfig, PrivacyPlan, calibrate_plan
from protocols.fl.vector import SegmentSpec, VectorLayout, build_layout, dims

AUC_RANGE: Final = 12.0
MAX_ROWS: Final = 1 << 30
MAX_ROUNDS: Final = 10_000
MAX_PARTIES: Final = 2**16 - 1


@dataclass(frozen=True)
class FedAvgParams:
    """Validated job parameters (the analyst's, checked by every node)."""

    model: Model
    feature_bounds: tuple[tuple[float, float], ...]
    """Public [low, high] per feature; each node clips its rows to them."""
    parties: int
    max_rows: int
    """No node may hold more rows; bounds every encoded sum."""
    rounds: int = 50
    threshold: int | None = None
    """Fewest nodes whose sum is ever released (the SecAgg+ threshold); DP noise is
    calibrated for this many honest nodes. Default: every party."""
    local: LocalTraining | None = field(default_factory=LocalTraining)
    """Local SGD settings; None with DP (one clipped gradient sum per round)."""
    l2: float = 0.0
    """Penalty ``l2 / 2 * ||weights||^2`` on the mean loss (1 / N is sklearn's C=1)."""
    server_learning_rate: float = 1.0
    """Multiplies the averaged update (without DP) or the noisy gradient (with)."""
    target_bounds: tuple[float, float] | None = None
    """Public [low, high] of a regression target; nodes clip targets to it."""
    validation_fraction: float = 0.2
    update_clip: float = 100.0
    """L2 bound on a node's local change per round (per-node clipping, no DP)."""
    loss_clip: float = 100.0
    """Bound on each row's reported loss (keeps every loss sum bounded)."""
    auc_bins: int = 50
    patience: int | None = 5
    """Early-stopping patience in rounds; None trains every round, keeps the last."""
    min_improvement: float = 0.0
    divergence_factor: float = 10.0
    modulus_bits: Literal[32, 64] = 64
    """The SecAgg+ ring: every segment's scale is chosen to fit it."""
    privacy: DPConfig | None = None
    model_seed: int = 0
    """Public seed of the MLP's initial weights (GLMs start at zero)."""

    def __post_init__(self) -> None:
        if not isinstance(self.model, Model):
            raise ConfigError("model must be a protocols.fl.models.Model")
        check_int("parties", self.parties, 1, MAX_PARTIES)
        check_int("max_rows", self.max_rows, 1, MAX_ROWS)
        check_int("rounds", self.rounds, 1, MAX_ROUNDS)
        check_int("threshold", self.honest_parties, 1, self.parties)
        check_real("l2", self.l2, 0, 1e6)
        check_real(
            "server_learning_rate", self.server_learning_rate, 0, 1e3, open_low=True
        )
        check_real("validation_fraction", self.validation_fraction, 0, 0.9)
        check_real("update_clip", self.update_clip, 0, 1e9, open_low=True)
        check_real("loss_clip", self.loss_clip, 0, 1e9, open_low=True)
        check_int("auc_bins", self.auc_bins, 2, 4096)
        if self.patience is not None:
            check_int("patience", self.patience, 1, MAX_ROUNDS)
        check_real("min_improvement", self.min_improvement, 0, 1e9)
        check_real("divergence_factor", self.divergence_factor, 1, 1e12, open_low=True)
        check_int("model_seed", self.model_seed, 0, 2**63 - 1)
        if self.modulus_bits not in (32, 64) or isinstance(self.modulus_bits, bool):
            raise ConfigError("modulus_bits must be 32 or 64")
        _check_bounds("feature_bounds", self.feature_bounds, self.model.n_features)
        regression = self.model.task == "regression"
        if regression != (self.target_bounds is not None):
            raise ConfigError("target_bounds are required for regression, only there")
        if self.target_bounds is not None:
            _check_bounds("target_bounds", (self.target_bounds,), 1)
        if self.privacy is not None and self.local is not None:
            raise ConfigError(
                "with DP each round is one per-example clipped gradient sum "
                "(local must be None): over several local steps one row steers "
                "every later step, and no clip of the update bounds that"
            )
        if self.privacy is None and self.local is None:
            raise ConfigError("local training settings are required without DP")

    @property
    def honest_parties(self) -> int:
        return self.parties if self.threshold is None else self.threshold

    @property
    def aggregations(self) -> int:
        """Training rounds plus the final evaluation round."""
        return self.rounds + 1

    @property
    def scored_classes(self) -> int:
        """Columns of class log-odds the AUC histograms cover."""
        return {"binary": 1, "multiclass": self.model.n_classes}.get(self.model.task, 0)


@dataclass(frozen=True)
class FedAvgPlan:
    """Everything derived from the params, identically on every party."""

    params: FedAvgParams
    standardisation: VectorLayout
    round: VectorLayout
    privacy: PrivacyPlan | None

    @classmethod
    def create(cls, params: FedAvgParams) -> FedAvgPlan:
        std_specs = standardisation_specs(params)
        round_specs = round_specs_for(params)
        privacy = None
        if params.privacy is not None:
            privacy = calibrate_plan(
                params.privacy,
                standardise_dims=dims(std_specs),
                round_dims=dims(round_specs),
                aggregations=params.aggregations,
                honest_parties=params.honest_parties,
            )
        noise = None if privacy is None else privacy.noise

        def layout(specs: list[SegmentSpec]) -> VectorLayout:
            return build_layout(
                specs,
                parties=params.parties,
                modulus_bits=params.modulus_bits,
                noise=noise,
            )

        return cls(params, layout(std_specs), layout(round_specs), privacy)

    @property
    def dp(self) -> bool:
        return self.privacy is not None


def standardisation_specs(params: FedAvgParams) -> list[SegmentSpec]:
    """Row counts, and per feature the sums of ``u = (x - c) / h`` and of ``u^2``,
    ``c`` and ``h`` the midpoint and half range of the public bounds: every term is
    in [-1, 1] whatever the feature's units, so one scale serves all features."""
    rows = params.max_rows
    weight = 1 if params.privacy is None else params.privacy.standardise_weight
    p = params.model.n_features
    specs = [
        _count("train_count", rows, weight),
        _count("val_count", rows, weight),
        _row_sums("feature_sum", (1.0,) * p, rows, weight),
        _row_sums("feature_square", (1.0,) * p, rows, weight),
    ]
    if params.target_bounds is not None:
        # Training rows' sum and sum of squares, then the validation rows'.
        specs.append(_row_sums("target", (1.0,) * 4, rows, weight))
    return specs


def round_specs_for(params: FedAvgParams) -> list[SegmentSpec]:
    """The training round's segments (see the module docstring)."""
    rows, model = params.max_rows, params.model
    if params.privacy is not None:
        clip = params.privacy.example_clip
        specs = [
            SegmentSpec(
                "update",
                model.n_params,
                node_bound=rows * clip,
                rounded_terms=rows,
                row_bound=clip,
                row_norm="l2",
                touched=model.n_params,
            ),
            _row_sums("train_loss", (params.loss_clip,), rows),
            _row_sums("val_loss", (params.loss_clip,), rows),
        ]
    else:
        loss_bound = rows * params.loss_clip
        specs = [
            SegmentSpec("update", model.n_params, node_bound=rows * params.update_clip),
            _count("train_count", rows),
            SegmentSpec("train_loss", 1, node_bound=loss_bound),
            _count("val_count", rows),
            SegmentSpec("val_loss", 1, node_bound=loss_bound),
        ]
    scored = params.scored_classes
    if scored:
        bins = 2 * scored * params.auc_bins
        specs += [
            _count("val_correct", rows),
            _count("auc", rows, size=bins, touched=scored),
        ]
    if params.privacy is None:
        specs.append(_count("diverged", 1))
    return specs


def _count(
    name: str, rows: int, weight: int = 1, *, size: int = 1, touched: int = 1
) -> SegmentSpec:
    """Integers to which one row adds 0 or 1, in at most ``touched`` coordinates."""
    return SegmentSpec(
        name,
        size,
        node_bound=rows,
        integer=True,
        row_bound=1.0,
        touched=touched,
        weight=weight,
    )


def _row_sums(
    name: str, per_row: tuple[float, ...], rows: int, weight: int = 1
) -> SegmentSpec:
    """Sums of per-row terms encoded row by row, ``|term j| <= per_row[j]``."""
    return SegmentSpec(
        name,
        len(per_row),
        node_bound=rows * max(per_row),
        rounded_terms=rows,
        row_bound=per_row,
        touched=len(per_row),
        weight=weight,
    )


def _check_bounds(
    name: str, bounds: tuple[tuple[float, float], ...], expected: int
) -> None:
    if not isinstance(bounds, tuple) or len(bounds) != expected:
        raise ConfigError(f"{name} needs {expected} (low, high) pairs")
    for i, pair in enumerate(bounds):
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise ConfigError(f"{name}[{i}] must be a (low, high) pair")
        lo = check_real(f"{name}[{i}].low", pair[0], -1e12, 1e12)
        hi = check_real(f"{name}[{i}].high", pair[1], -1e12, 1e12)
        if not lo < hi:
            raise ConfigError(f"{name}[{i}]: low must be below high")
