"""Export a trained model as fitted scikit-learn estimators (ONNX:
:mod:`protocols.fl.onnx_export`).

The released standardisation is folded into the first layer, so the exported
model takes raw feature rows: ``w . (x - m) / s + b == (w / s) . x + (b - w . m /
s)``. The nodes also clipped every row to the public feature bounds before
training; the exported model does not, so it predicts exactly as the federated
model on rows inside the bounds. Regression targets are de-standardised in the
last layer. ``classes`` names the labels that the job mapped to indices 0..K-1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.preprocessing import LabelBinarizer

from cleanroom.errors import ConfigError
from protocols.fl.models import Matrix, Model, Vector
from protocols.fl.standardise import Standardisation

Estimator: TypeAlias = Any
"""A fitted scikit-learn estimator (scikit-learn ships no type information)."""


def raw_layers(
    model: Model, w: Vector, std: Standardisation
) -> list[tuple[Matrix, Vector]]:
    """(weights, intercepts) per layer, acting on raw (unstandardised) rows."""
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (model.n_params,):
        raise ConfigError(f"expected {model.n_params} parameters")
    layers = [
        (m.copy(), b.copy()) for m, b in (layer.unpack(w) for layer in model.layers)
    ]
    mean, scale = np.array(std.mean), np.array(std.scale)
    first, bias = layers[0]
    layers[0] = (first / scale[:, None], bias - (mean / scale) @ first)
    if model.task == "regression":
        last, bias = layers[-1]
        layers[-1] = (
            last * std.target_scale,
            bias * std.target_scale + std.target_mean,
        )
    return layers


def to_sklearn(
    model: Model,
    w: Vector,
    std: Standardisation,
    classes: Sequence[Any] | None = None,
) -> Estimator:
    """A fitted estimator whose ``predict`` matches the federated model on raw rows:
    LogisticRegression / LinearRegression for a GLM, MLPClassifier / MLPRegressor
    for the MLP."""
    labels = class_labels(model, classes)
    layers = raw_layers(model, w, std)
    if model.hidden:
        return _mlp(model, layers, labels)
    weights, bias = layers[0]
    if model.task == "regression":
        estimator = LinearRegression()
        estimator.coef_ = weights[:, 0].copy()
        estimator.intercept_ = float(bias[0])
    else:
        estimator = LogisticRegression()
        estimator.coef_ = weights.T.copy()
        estimator.intercept_ = bias.copy()
        estimator.classes_ = labels
    estimator.n_features_in_ = model.n_features
    return estimator


def class_labels(model: Model, classes: Sequence[Any] | None) -> npt.NDArray[Any]:
    """The declared labels of classes 0..K-1 (indices if none), checked sorted."""
    if model.task == "regression":
        return np.array([])
    labels = np.arange(model.n_classes) if classes is None else np.array(classes)
    if labels.shape != (model.n_classes,) or len(set(labels.tolist())) != len(labels):
        raise ConfigError(f"classes must name {model.n_classes} distinct labels")
    if not np.array_equal(np.sort(labels), labels):
        # scikit-learn keeps classes_ sorted and maps outputs by that order.
        raise ConfigError("classes must be given in sorted order")
    return labels


def _mlp(
    model: Model, layers: list[tuple[Matrix, Vector]], labels: npt.NDArray[Any]
) -> Estimator:
    if model.task == "regression":
        estimator = MLPRegressor(hidden_layer_sizes=(model.hidden,))
        estimator.out_activation_ = "identity"
    else:
        estimator = MLPClassifier(hidden_layer_sizes=(model.hidden,))
        binarizer = LabelBinarizer().fit(labels)
        estimator._label_binarizer = binarizer
        estimator.classes_ = binarizer.classes_
        estimator.out_activation_ = "logistic" if model.task == "binary" else "softmax"
    estimator.activation = model.activation
    estimator.coefs_ = [m for m, _ in layers]
    estimator.intercepts_ = [b for _, b in layers]
    estimator.n_layers_ = len(layers) + 1
    estimator.n_outputs_ = model.n_outputs
    estimator.n_features_in_ = model.n_features
    return estimator
