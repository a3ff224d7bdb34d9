"""A data holder's side of ``fedavg``: it prepares its rows once, then turns each
aggregation (standardisation, every round, the final evaluation) into one ring
vector for SecAgg+ to mask. Its rows and plain contributions never leave it.

Order is enforced (fail closed): the standardisation vector first, then the
coordinator's standardisation, then rounds 1, 2, ... in turn, the last planned
one (``plan.params.aggregations``) evaluation-only, none repeated or skipped. A
node therefore never contributes to more releases than its budget was charged
for, whatever the coordinator asks.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt

from cleanroom.errors import DatasetError, ProtocolError
from protocols.fl.local import (
    SEED_BYTES,
    clip_l2,
    clipped_gradient_units,
    round_generator,
    row_units,
    train_locally,
)
from protocols.fl.metrics import auc_histogram
from protocols.fl.models import Matrix, Vector
from protocols.fl.plan import FedAvgPlan
from protocols.fl.standardise import Standardisation, standardisation_units
from protocols.fl.vector import Units
from protocols.party import SYSTEM_RANDOM, NodeUsage, RandomSource
from protocols.prg import MaskVector

_SPLIT_ROUND: Final = 0
"""The generator stream of the validation split; rounds use 1, 2, ..."""


class NodeTrainer:
    """Holds one node's rows (clipped to the public bounds, split train/validation)."""

    def __init__(
        self,
        plan: FedAvgPlan,
        features: npt.ArrayLike,
        labels: npt.ArrayLike,
        *,
        seed: bytes | None = None,
        random: RandomSource = SYSTEM_RANDOM,
    ) -> None:
        self._plan = plan
        self._random = random
        self._seed = random(SEED_BYTES) if seed is None else seed
        x, y = _checked_rows(plan, features, labels)
        n = len(y)
        val = validation_rows(self._seed, n, plan.params.validation_fraction)
        self._raw = (x[~val], y[~val], x[val], y[val])
        self._data: tuple[Matrix, Vector, Matrix, Vector] | None = None
        self._next = -1
        self.rows = n

    def standardisation_vector(self) -> MaskVector:
        """The first-round contribution: counts, sums and sums of squares."""
        if self._next != -1:
            raise ProtocolError("the standardisation vector was already sent")
        self._next = 0
        x_train, y_train, x_val, y_val = self._raw
        units = standardisation_units(self._plan, x_train, x_val, y_train, y_val)
        return self._plan.standardisation.assemble(units, self._random)

    def receive_standardisation(self, std: Standardisation) -> None:
        """Apply the released global statistics to this node's rows."""
        if self._next != 0:
            raise ProtocolError(
                "a standardisation is expected once, after sending ours"
            )
        self._next = 1
        x_train, y_train, x_val, y_val = self._raw
        if self._plan.params.model.task == "regression":
            y_train, y_val = std.target(y_train), std.target(y_val)
        self._data = (std.features(x_train), y_train, std.features(x_val), y_val)

    def round_vector(self, round_index: int, model: npt.ArrayLike) -> MaskVector:
        """This node's vector for ``round_index``, from the global ``model``."""
        params = self._plan.params
        if self._data is None or round_index != self._next:
            raise ProtocolError(f"round {round_index} is not the one this node expects")
        if round_index > params.aggregations:
            raise ProtocolError(f"the plan has only {params.aggregations} aggregations")
        w = np.asarray(model, dtype=np.float64)
        if w.shape != (params.model.n_params,) or not np.all(np.isfinite(w)):
            raise ProtocolError(
                f"the global model must be {params.model.n_params} reals"
            )
        self._next += 1
        units = self._metrics(w, self._data)
        if round_index == params.aggregations:
            units["update"] = np.zeros(params.model.n_params, dtype=np.int64)
        else:
            units.update(self._update(w, round_index, self._data[0], self._data[1]))
        return self._plan.round.assemble(units, self._random)

    def usage(self) -> NodeUsage:
        """Rows touched and the epsilon the whole plan charges (spent up front)."""
        privacy = self._plan.privacy
        epsilon = 0.0 if privacy is None else privacy.epsilon_total
        return NodeUsage(rows_touched=self.rows, epsilon=epsilon)

    def _metrics(
        self, w: Vector, data: tuple[Matrix, Vector, Matrix, Vector]
    ) -> dict[str, Units]:
        plan = self._plan
        params, layout = plan.params, plan.round
        x_train, y_train, x_val, y_val = data
        units: dict[str, Units] = {}
        for name, x, y in (("train", x_train, y_train), ("val", x_val, y_val)):
            losses = self._losses(w, x, y)
            segment = layout.segment(f"{name}_loss")
            if plan.dp:
                units[f"{name}_loss"] = np.array(
                    [row_units(losses, segment.scale_bits)], dtype=np.int64
                )
            else:
                units[f"{name}_loss"] = segment.units([math.fsum(losses.tolist())])
                units[f"{name}_count"] = np.array([len(y)], dtype=np.int64)
        if params.scored_classes:
            model = params.model
            correct = int(np.sum(model.predict(w, x_val) == y_val))
            units["val_correct"] = np.array([correct], dtype=np.int64)
            units["auc"] = auc_histogram(
                model.class_log_odds(w, x_val),
                y_val,
                params.auc_bins,
                model.task == "multiclass",
            )
        if not plan.dp:
            units["diverged"] = np.zeros(1, dtype=np.int64)
        return units

    def _losses(self, w: Vector, x: Matrix, y: Vector) -> Vector:
        clip = self._plan.params.loss_clip
        with np.errstate(over="ignore", invalid="ignore"):
            raw = self._plan.params.model.row_losses(w, x, y)
        return np.clip(np.nan_to_num(raw, nan=clip, posinf=clip), 0.0, clip)

    def _update(
        self, w: Vector, round_index: int, x: Matrix, y: Vector
    ) -> dict[str, Units]:
        plan = self._plan
        params = plan.params
        segment = plan.round.segment("update")
        if plan.privacy is not None:
            summed = clipped_gradient_units(
                params.model,
                w,
                x,
                y,
                clip=plan.privacy.config.example_clip,
                scale_bits=segment.scale_bits,
            )
            return {"update": summed}
        if params.local is None:
            raise ProtocolError("the plan has no local training settings")
        trained = train_locally(
            params.model,
            w,
            x,
            y,
            params.local,
            l2=params.l2,
            rng=round_generator(self._seed, round_index),
            round_index=round_index,
        )
        with np.errstate(over="ignore", invalid="ignore"):
            # Finite but huge parameters overflow the norm: as diverged as NaN.
            change = float(np.linalg.norm(trained - w))
        if not (np.all(np.isfinite(trained)) and np.isfinite(change)):
            return {
                "update": np.zeros(params.model.n_params, dtype=np.int64),
                "diverged": np.ones(1, dtype=np.int64),
            }
        delta = clip_l2(trained - w, params.update_clip)
        return {"update": segment.units(len(y) * delta)}


def validation_rows(seed: bytes, rows: int, fraction: float) -> npt.NDArray[np.bool_]:
    """Which rows a node holds out: one independent coin per row (so where one row
    lands does not depend on the others), from the node's seed."""
    coins = round_generator(seed, _SPLIT_ROUND).random(rows)
    return np.asarray(coins < fraction)


def _checked_rows(
    plan: FedAvgPlan, features: npt.ArrayLike, labels: npt.ArrayLike
) -> tuple[Matrix, Vector]:
    """Rows as floats, clipped to the public bounds; refuses what the plan excludes."""
    params = plan.params
    try:
        x = np.array(features, dtype=np.float64, ndmin=2)
        y = np.array(labels, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DatasetError("features and labels must be numeric") from exc
    p = params.model.n_features
    if x.ndim != 2 or x.shape[1] != p or len(x) != len(y):
        raise DatasetError(f"expected an (n, {p}) feature matrix and n labels")
    if len(y) > params.max_rows:
        raise DatasetError(
            f"the node holds more than max_rows ({params.max_rows}) rows"
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise DatasetError("features or labels hold missing or infinite values")
    lows = np.array([lo for lo, _ in params.feature_bounds])
    highs = np.array([hi for _, hi in params.feature_bounds])
    x = np.clip(x, lows, highs)
    if params.target_bounds is not None:
        y = np.clip(y, *params.target_bounds)
    elif not np.all((y == np.rint(y)) & (y >= 0) & (y < params.model.n_classes)):
        raise DatasetError(
            f"class labels must be indices 0..{params.model.n_classes - 1}"
        )
    return x, y
