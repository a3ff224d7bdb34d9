"""Exporting federated models: fitted scikit-learn estimators that predict exactly as
the federated model, ONNX models loaded back in onnxruntime, training-curve PNGs."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.fl import dataset, declared_bounds
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPClassifier, MLPRegressor

from cleanroom.errors import ConfigError
from protocols.fl.curves import training_curves_png
from protocols.fl.export import raw_layers, to_sklearn
from protocols.fl.local import LocalTraining
from protocols.fl.models import (
    Model,
    linear_regression,
    logistic_regression,
    mlp,
    softmax_regression,
)
from protocols.fl.onnx_export import to_onnx
from protocols.fl.plan import FedAvgParams
from protocols.fl.simulate import predict_rows, simulate, split_iid

SEEDS = [bytes([i]) * 32 for i in range(3)]
CASES = {
    "logistic": ("breast_cancer", logistic_regression(30), LogisticRegression),
    "softmax": ("wine", softmax_regression(13, 3), LogisticRegression),
    "linear": ("diabetes", linear_regression(10), LinearRegression),
    "mlp-binary": ("breast_cancer", mlp("binary", 30, 6), MLPClassifier),
    "mlp-multi": (
        "wine",
        mlp("multiclass", 13, 5, n_classes=3, activation="relu"),
        MLPClassifier,
    ),
    "mlp-regression": ("diabetes", mlp("regression", 10, 4), MLPRegressor),
}


def _train(model: Model, name: str):  # type: ignore[no-untyped-def]
    x_train, _, y_train, _ = dataset(name)
    params = FedAvgParams(
        model=model,
        feature_bounds=declared_bounds(x_train),
        parties=3,
        max_rows=1000,
        rounds=8,
        target_bounds=(0.0, 400.0) if model.task == "regression" else None,
        local=LocalTraining(batch_size=16, learning_rate=0.05),
    )
    result = simulate(params, split_iid(x_train, y_train, 3, seed=0), seeds=SEEDS)
    return params, result, x_train


@pytest.fixture(scope="module", params=list(CASES))
def trained(request):  # type: ignore[no-untyped-def]
    name, model, kind = CASES[request.param]
    params, result, x_train = _train(model, name)
    return params, result, x_train, kind


def test_sklearn_estimator_predicts_as_the_federated_model(trained) -> None:  # type: ignore[no-untyped-def]
    params, result, x, kind = trained
    estimator = to_sklearn(params.model, result.model, result.standardisation)
    assert type(estimator) is kind
    ours = predict_rows(params, result, x)  # x lies inside the bounds: no clipping
    theirs = estimator.predict(x)
    if params.model.task == "regression":
        np.testing.assert_allclose(theirs, ours, rtol=1e-9, atol=1e-9)
    else:
        assert np.array_equal(theirs, ours)
        assert estimator.predict_proba(x).shape == (len(x), params.model.n_classes)


def test_onnx_runs_in_onnxruntime_as_the_federated_model(trained) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    params, result, x, _ = trained
    model = params.model
    session = ort.InferenceSession(
        to_onnx(model, result.model, result.standardisation),
        providers=["CPUExecutionProvider"],
    )
    outputs = session.run(None, {"X": x.astype(np.float64)})
    # The federated model's own outputs on the same rows (inside the bounds).
    z = model.outputs(result.model, result.standardisation.features(x))
    if model.task == "regression":
        (prediction,) = outputs
        expected = z[:, 0] * result.standardisation.target_scale
        expected += result.standardisation.target_mean
        assert np.max(np.abs(prediction[:, 0] - expected)) <= 1e-6
        return
    labels, probabilities = outputs
    if model.task == "binary":
        p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
        expected = np.column_stack([1.0 - p1, p1])
    else:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        expected = e / e.sum(axis=1, keepdims=True)
    assert np.max(np.abs(probabilities - expected)) <= 1e-6
    assert labels.dtype == np.int64
    assert np.array_equal(labels, predict_rows(params, result, x).astype(np.int64))


def test_onnx_carries_declared_labels_and_metadata() -> None:
    import onnx
    import onnxruntime as ort

    params, result, x = _train(logistic_regression(30), "breast_cancer")
    data = to_onnx(
        params.model,
        result.model,
        result.standardisation,
        ["benign", "malignant"],
        metadata={"cleanroom.job_id": "job-1"},
    )
    props = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
    assert props == {"cleanroom.job_id": "job-1"}
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    labels, _ = session.run(None, {"X": x})
    expected = np.where(predict_rows(params, result, x) == 1, "malignant", "benign")
    assert np.array_equal(labels.astype(str), expected)
    with pytest.raises(ConfigError, match="sorted"):
        to_onnx(params.model, result.model, result.standardisation, ["b", "a"])


def test_folded_standardisation_is_exact() -> None:
    params, result, x = _train(logistic_regression(30), "breast_cancer")
    ((weights, bias),) = raw_layers(params.model, result.model, result.standardisation)
    raw = x @ weights + bias
    standardised = params.model.outputs(
        result.model, result.standardisation.features(x)
    )
    np.testing.assert_allclose(raw, standardised, rtol=1e-9, atol=1e-9)


def test_class_labels_are_carried_and_checked() -> None:
    params, result, x = _train(logistic_regression(30), "breast_cancer")
    named = to_sklearn(
        params.model, result.model, result.standardisation, ["benign", "malignant"]
    )
    assert set(named.predict(x)) <= {"benign", "malignant"}
    for bad in (["a"], ["b", "a"], ["a", "a"]):
        with pytest.raises(ConfigError):
            to_sklearn(params.model, result.model, result.standardisation, bad)
    with pytest.raises(ConfigError, match="31 parameters"):
        to_sklearn(params.model, result.model[:-1], result.standardisation)


def test_training_curves_are_a_png_with_the_baseline() -> None:
    _, result, _ = _train(logistic_regression(30), "breast_cancer")
    png = training_curves_png(
        result.history, baseline={"loss": 0.08, "val_accuracy": 0.96}, title="bc"
    )
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    with pytest.raises(ConfigError):
        training_curves_png([])
