"""Evaluation that sums: per-round metrics from summed losses, counts and fixed-bin
score histograms, including AUC.

AUC from histograms: each validation row adds 1 to one bin of its scored class's
positive or negative histogram (per class for multiclass, one-vs-rest; log-odds
binned over [-AUC_RANGE, AUC_RANGE], the outermost bins open-ended). Histograms
from every node add up, and AUC = P(score of a positive > score of a negative),
counting pairs in the same bin as half, is computed from the summed bins alone;
its error against the exact AUC is at most the share of positive-negative pairs
that fall in one bin. Multiclass AUC is the unweighted mean over classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from protocols.fl.models import Matrix, Vector
from protocols.fl.plan import AUC_RANGE, FedAvgPlan


@dataclass(frozen=True)
class RoundMetrics:
    """The aggregated metrics of the global model one round started from.

    ``*_noise`` are the standard deviations of the DP noise in the matching value
    (0 without DP), so the monitor can tell an exploding loss from a noisy one.
    """

    round: int
    train_rows: float
    train_loss: float
    val_rows: float
    val_loss: float
    val_accuracy: float | None = None
    val_auc: float | None = None
    val_mse: float | None = None
    val_r2: float | None = None
    diverged_nodes: float = 0.0
    train_loss_noise: float = 0.0
    val_loss_noise: float = 0.0

    def to_json(self) -> dict[str, float | int | None]:
        return dict(self.__dict__)


def auc_histogram(
    log_odds: Matrix, labels: Vector, bins: int, multiclass: bool
) -> npt.NDArray[np.int64]:
    """Counts per scored class: positives' bins then negatives' bins."""
    scored = log_odds.shape[1]
    position = np.floor((log_odds + AUC_RANGE) / (2 * AUC_RANGE) * bins)
    index = np.clip(position, 0, bins - 1).astype(np.intp)
    out = np.zeros(2 * scored * bins, dtype=np.int64)
    for c in range(scored):
        positive = labels == (c if multiclass else 1)
        base = 2 * c * bins
        out[base : base + bins] += np.bincount(index[positive, c], minlength=bins)
        out[base + bins : base + 2 * bins] += np.bincount(
            index[~positive, c], minlength=bins
        )
    return out


def auc_from_histogram(counts: npt.NDArray[np.float64], bins: int) -> float | None:
    """Macro AUC from summed histograms; noisy (DP) counts are clamped at zero."""
    values = []
    for base in range(0, len(counts), 2 * bins):
        pos = np.maximum(counts[base : base + bins], 0.0)
        neg = np.maximum(counts[base + bins : base + 2 * bins], 0.0)
        pairs = float(pos.sum()) * float(neg.sum())
        if pairs <= 0:
            return None
        below = np.cumsum(neg) - neg
        values.append(float(np.sum(pos * (below + neg / 2))) / pairs)
    return float(np.mean(values))


def read_metrics(
    plan: FedAvgPlan,
    sums: Mapping[str, npt.NDArray[np.float64]],
    *,
    round_index: int,
    contributors: int,
    train_rows: float,
    val_rows: float,
    target_scale: float,
    val_target_sst: float,
) -> RoundMetrics:
    """Means and rates from one round's decoded sums.

    Without DP the counts are the round's own (nodes that dropped out are in
    neither the sums nor the counts); with DP they are the standardisation
    round's, passed in.
    """
    params = plan.params
    if "train_count" in sums:
        train_rows = float(sums["train_count"][0])
        val_rows = float(sums["val_count"][0])
    train_loss = float(sums["train_loss"][0]) / train_rows if train_rows else math.nan
    val_loss = float(sums["val_loss"][0]) / val_rows if val_rows else math.nan
    accuracy = auc = mse = r2 = None
    if params.scored_classes and val_rows:
        accuracy = min(max(float(sums["val_correct"][0]) / val_rows, 0.0), 1.0)
        auc = auc_from_histogram(sums["auc"], params.auc_bins)
    if params.model.task == "regression" and val_rows:
        sse = 2 * float(sums["val_loss"][0]) * target_scale**2
        mse = sse / val_rows
        r2 = 1 - sse / val_target_sst if val_target_sst > 0 else None
    train_noise = val_noise = 0.0
    if plan.privacy is not None:
        total = plan.privacy.noise.total_std(contributors)
        for name in ("train_loss", "val_loss"):
            segment = plan.round.segment(name)
            spread = segment.sensitivity[0] * total / 2**segment.scale_bits
            if name == "train_loss":
                train_noise = spread / train_rows
            else:
                val_noise = spread / val_rows
    return RoundMetrics(
        round=round_index,
        train_rows=train_rows,
        train_loss=train_loss,
        val_rows=val_rows,
        val_loss=val_loss,
        val_accuracy=accuracy,
        val_auc=auc,
        val_mse=mse,
        val_r2=r2,
        diverged_nodes=float(sums["diverged"][0]) if "diverged" in sums else 0.0,
        train_loss_noise=train_noise,
        val_loss_noise=val_noise,
    )
