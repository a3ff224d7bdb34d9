"""A small numpy trainer for two-layer MLPs with a polynomial activation.

scikit-learn has no polynomial activation, and CKKS evaluates polynomials exactly
where it can only approximate ReLU or tanh, so models meant for encrypted scoring
are trained with the activation they will be served with. Full-batch Adam on
standardised features; the initial weights come from numpy's generator seeded by
the caller: training randomness is public (it protects nothing), and a fixed seed
makes a model reproducible from its provenance.
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from cleanroom.errors import DatasetError
from protocols.models.asset import Array, PolyMLPParameters

Task = Literal["regression", "binary"]
SQUARE: Final = (0.0, 0.0, 1.0)
"""``z -> z^2``, the activation of CryptoNets-style networks."""
_GRADIENT_CLIP: Final = 10.0


def standardiser(x: npt.ArrayLike) -> tuple[Array, Array]:
    """Column means and standard deviations (1 for constant columns)."""
    data = np.asarray(x, dtype=np.float64)
    std = data.std(axis=0)
    return data.mean(axis=0), np.where(std > 0, std, 1.0)


def fit_poly_mlp(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    task: Task,
    hidden: int = 8,
    activation: tuple[float, ...] = SQUARE,
    epochs: int = 400,
    learning_rate: float = 0.01,
    l2: float = 1e-3,
    seed: int = 0,
) -> PolyMLPParameters:
    """Fit ``v . act(W x + b) + c`` to already standardised ``x``.

    ``task="binary"`` minimises the logistic loss on labels 0/1 (the output is a
    logit: serve it with the logistic link); ``"regression"`` minimises squared
    error. Gradients are clipped by norm because a square activation can blow up
    in the first steps.
    """
    data = np.asarray(x, dtype=np.float64)
    target = np.asarray(y, dtype=np.float64).ravel()
    if data.ndim != 2 or target.shape != (data.shape[0],) or data.shape[0] == 0:
        raise DatasetError("fit_poly_mlp needs x of shape (n, features) and n targets")
    if task == "binary" and not np.isin(target, (0.0, 1.0)).all():
        raise DatasetError("binary targets must be 0 or 1")
    a = np.zeros(3)
    a[: len(activation)] = activation
    n, features = data.shape
    rng = np.random.default_rng(seed)
    params = [
        rng.normal(0.0, 1.0 / np.sqrt(features), (hidden, features)),
        np.zeros(hidden),
        rng.normal(0.0, 1.0 / np.sqrt(hidden), hidden),
        np.zeros(1),
    ]
    moments = [np.zeros_like(p) for p in params]
    squares = [np.zeros_like(p) for p in params]
    for step in range(1, epochs + 1):
        w, b, v, c = params
        z = data @ w.T + b
        h = a[0] + a[1] * z + a[2] * z * z
        out = h @ v + c[0]
        if task == "binary":
            residual = (1.0 / (1.0 + np.exp(-np.clip(out, -500, 500))) - target) / n
        else:
            residual = 2.0 * (out - target) / n
        dz = np.outer(residual, v) * (a[1] + 2.0 * a[2] * z)
        grads = [
            dz.T @ data + 2 * l2 * w,
            dz.sum(axis=0),
            h.T @ residual + 2 * l2 * v,
            np.array([residual.sum()]),
        ]
        norm = np.sqrt(sum(float((g * g).sum()) for g in grads))
        if norm > _GRADIENT_CLIP:
            grads = [g * (_GRADIENT_CLIP / norm) for g in grads]
        for p, g, m, s in zip(params, grads, moments, squares, strict=True):
            m *= 0.9
            m += 0.1 * g
            s *= 0.999
            s += 0.001 * g * g
            p -= (
                learning_rate
                * (m / (1 - 0.9**step))
                / (np.sqrt(s / (1 - 0.999**step)) + 1e-8)
            )
    w, b, v, c = params
    return PolyMLPParameters(w, b, tuple(float(t) for t in activation), v, float(c[0]))
