"""Model assets from fitted scikit-learn estimators (linear and binary logistic)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cleanroom.errors import DatasetError
from protocols.models.asset import (
    InputSchema,
    LinearParameters,
    Link,
    ModelAsset,
    ModelCard,
    ModelKind,
)


def from_sklearn(
    estimator: Any,
    *,
    feature_names: Sequence[str],
    model_id: str,
    version: str,
    card: ModelCard,
) -> ModelAsset:
    """A fitted ``LinearRegression`` or binary ``LogisticRegression``, optionally
    behind a ``StandardScaler`` in a two-step ``Pipeline``.

    The scaler's mean and scale become the input schema's standardisation, so a
    buyer sends raw features in ``feature_names`` order. Multi-class, multi-output
    and unfitted estimators are refused.
    """
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    mean = scale = None
    model = estimator
    if isinstance(estimator, Pipeline):
        steps = [step for _, step in estimator.steps]
        if len(steps) != 2 or not isinstance(steps[0], StandardScaler):
            raise DatasetError("only a Pipeline of StandardScaler then a model imports")
        scaler, model = steps
        features = len(feature_names)
        if not hasattr(scaler, "n_features_in_"):
            raise DatasetError("the StandardScaler is not fitted")
        mean = _used(scaler, "with_mean", "mean_", features, default=0.0)
        scale = _used(scaler, "with_std", "scale_", features, default=1.0)
    kind: ModelKind
    link: Link
    if isinstance(model, LogisticRegression):
        classes = getattr(model, "classes_", None)
        if classes is None or len(classes) != 2:
            raise DatasetError("only a fitted binary LogisticRegression imports")
        kind, link = "logistic_regression", "logistic"
    elif isinstance(model, LinearRegression):
        kind, link = "linear_regression", "identity"
    else:
        raise DatasetError(f"cannot import a {type(model).__name__}")
    coef = np.asarray(getattr(model, "coef_", None), dtype=np.float64)
    if coef.ndim == 2 and coef.shape[0] == 1:
        coef = coef[0]
    if coef.ndim != 1:
        raise DatasetError("only a fitted single-output linear model imports")
    intercept = np.asarray(getattr(model, "intercept_", 0.0), dtype=np.float64).ravel()
    if intercept.size != 1:
        raise DatasetError("only a fitted single-output linear model imports")
    return ModelAsset(
        kind=kind,
        model_id=model_id,
        version=version,
        schema=InputSchema(tuple(feature_names), mean, scale),
        card=card,
        parameters=LinearParameters(coef, float(intercept[0])),
        link=link,
    )


def _used(scaler: Any, flag: str, name: str, features: int, *, default: float) -> Any:
    # with_mean=False still stores mean_ (unused by transform), so go by the flag.
    if not getattr(scaler, flag):
        return np.full(features, default)
    return np.asarray(getattr(scaler, name), dtype=np.float64)
