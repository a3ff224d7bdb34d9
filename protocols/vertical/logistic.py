"""Plain logistic-regression maths each party runs on its own columns: scaling,
batch order, loss and AUC, and a plaintext reference trainer of the same model
(the baseline for tests and benchmarks: same batches, same updates)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]


def sigmoid(z: Array) -> Array:
    out: Array = 1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0)))
    return out


def log_loss(p: Array, y: Array, weights: Array | None = None) -> float:
    eps = 1e-12
    terms = -(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))
    if weights is None:
        return float(terms.mean())
    return float((terms * weights).sum() / weights.sum())


def auc(scores: Array, labels: Array) -> float:
    """Area under the ROC curve (ties count one half); NaN without both classes."""
    truth = np.asarray(labels, dtype=bool)
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = np.asarray(scores)[order]
    i = 0
    while i < len(sorted_scores):
        j = i
        while j + 1 < len(sorted_scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float(
        (ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    )


@dataclass(frozen=True)
class Standardizer:
    """Per-column mean and scale from the party's own training rows."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def fit(cls, x: Array) -> Standardizer:
        std = x.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        return cls(tuple(map(float, x.mean(axis=0))), tuple(map(float, std)))

    def apply(self, x: Array) -> Array:
        out: Array = (x - np.array(self.mean)) / np.array(self.scale)
        return out


def batches(
    seed: bytes, epoch: int, rows: int, size: int
) -> list[npt.NDArray[np.int64]]:
    """The batches of ``epoch``: a permutation of ``rows`` drawn from ``seed``
    (SHA-256 counter stream), cut into batches of ``size`` (the last may be
    short). Every party derives the same batches from the shared seed."""
    digest = hashlib.sha256(seed + epoch.to_bytes(4, "big")).digest()
    generator = np.random.Generator(np.random.PCG64(int.from_bytes(digest, "big")))
    order = generator.permutation(rows).astype(np.int64)
    return [order[k : k + size] for k in range(0, rows, size)]


@dataclass(frozen=True)
class PlainModel:
    weights: Array
    intercept: float
    history: Sequence[float]


def train_plaintext(
    x: Array,
    y: Array,
    *,
    seed: bytes,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    l2: float,
    sample_weights: Array | None = None,
) -> PlainModel:
    """The same mini-batch gradient descent as the vertical job, on joined data
    (already standardised), without early stopping: the baseline it is measured
    against."""
    w = np.zeros(x.shape[1])
    b = 0.0
    sw = np.ones(len(y)) if sample_weights is None else sample_weights
    history = []
    for epoch in range(epochs):
        for batch in batches(seed, epoch, len(y), batch_size):
            xb = x[batch]
            d = (sigmoid(xb @ w + b) - y[batch]) * sw[batch]
            w = w - learning_rate * (xb.T @ d / len(batch) + l2 * w)
            b = b - learning_rate * float(d.mean())
        history.append(log_loss(sigmoid(x @ w + b), y))
    return PlainModel(w, b, history)
