"""Plaintext evaluation of model assets in numpy: what HE scores must match."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from protocols.models.asset import Array, LinearParameters, Link, ModelAsset


def decision_function(asset: ModelAsset, rows: npt.ArrayLike) -> Array:
    """The raw output before the link (the logit of a logistic model), per row."""
    x = asset.schema.standardise(rows)
    p = asset.parameters
    if isinstance(p, LinearParameters):
        return np.asarray(x @ p.coef + p.intercept, dtype=np.float64)
    z = x @ p.hidden_weights.T + p.hidden_bias
    hidden = p.coefficient(0) + p.coefficient(1) * z + p.coefficient(2) * z * z
    return np.asarray(hidden @ p.output_weights + p.output_bias, dtype=np.float64)


def predict(asset: ModelAsset, rows: npt.ArrayLike) -> Array:
    """The model's score per row: the link applied to :func:`decision_function`."""
    return apply_link(asset.link, decision_function(asset, rows))


def apply_link(link: Link, raw: npt.ArrayLike) -> Array:
    """``identity`` or the logistic sigmoid, computed without overflow."""
    values = np.asarray(raw, dtype=np.float64)
    if link == "identity":
        return values
    # exp of a non-positive number never overflows; both branches agree at 0.
    e = np.exp(-np.abs(values))
    return np.where(values >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
