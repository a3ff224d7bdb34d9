"""Model assets: format round trips, sklearn import, the poly-MLP trainer, reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cleanroom.errors import DatasetError
from protocols.models import (
    InputSchema,
    LinearParameters,
    ModelAsset,
    ModelCard,
    PolyMLPParameters,
    content_hash,
    decision_function,
    dump_model,
    fit_poly_mlp,
    from_sklearn,
    load_model,
    predict,
    standardiser,
)

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@st.composite
def assets(draw: st.DrawFn) -> ModelAsset:
    features = draw(st.integers(1, 5))
    names = tuple(f"f{i}" for i in range(features))
    vector = st.lists(finite, min_size=features, max_size=features)
    standardised = draw(st.booleans())
    schema = InputSchema(
        names,
        np.array(draw(vector)) if standardised else None,
        np.array(
            draw(st.lists(st.floats(0.01, 100), min_size=features, max_size=features))
        )
        if standardised
        else None,
    )
    card = ModelCard.of(
        draw(st.text(min_size=1, max_size=20)),
        description=draw(st.text(max_size=50)),
        metrics=draw(st.dictionaries(st.text(max_size=8), finite, max_size=3)),
    )
    if draw(st.booleans()):
        kind = draw(st.sampled_from(["linear_regression", "logistic_regression"]))
        return ModelAsset(
            kind=kind,
            model_id="m",
            version=draw(st.text(min_size=1, max_size=10)),
            schema=schema,
            card=card,
            parameters=LinearParameters(np.array(draw(vector)), draw(finite)),
            link="logistic" if kind == "logistic_regression" else "identity",
        )
    hidden = draw(st.integers(1, 3))
    rows = st.lists(vector, min_size=hidden, max_size=hidden)
    h = st.lists(finite, min_size=hidden, max_size=hidden)
    return ModelAsset(
        kind="poly_mlp",
        model_id="m",
        version="1",
        schema=schema,
        card=card,
        parameters=PolyMLPParameters(
            np.array(draw(rows)),
            np.array(draw(h)),
            tuple(draw(st.lists(finite, min_size=1, max_size=3))),
            np.array(draw(h)),
            draw(finite),
        ),
        link=draw(st.sampled_from(["identity", "logistic"])),
    )


def same(a: ModelAsset, b: ModelAsset) -> bool:
    probe = np.linspace(-2, 2, 3 * a.feature_count).reshape(3, -1)
    return (
        content_hash(a) == content_hash(b)
        and (a.kind, a.link, a.model_id, a.version)
        == (b.kind, b.link, b.model_id, b.version)
        and a.card == b.card
        and np.array_equal(decision_function(a, probe), decision_function(b, probe))
    )


@settings(max_examples=60, deadline=None)
@given(assets(), st.sampled_from([None, 1, 4]))
def test_round_trip_inline_and_npz_keep_content_and_hash(
    asset: ModelAsset, npz_min: int | None
) -> None:
    document, arrays = dump_model(asset, npz_min_elements=npz_min)
    if npz_min is None:
        assert arrays is None
    if npz_min == 1:
        assert arrays is not None and b'"npz"' in document
    loaded = load_model(document, arrays)
    assert same(asset, loaded)
    assert json.loads(document)["content_hash"] == content_hash(asset)


def test_content_hash_changes_with_any_weight() -> None:
    schema = InputSchema(("a", "b"))
    base = ModelAsset(
        kind="linear_regression",
        model_id="m",
        version="1",
        schema=schema,
        card=ModelCard.of("m"),
        parameters=LinearParameters(np.array([1.0, 2.0]), 0.5),
    )
    nudged = ModelAsset(
        kind="linear_regression",
        model_id="m",
        version="1",
        schema=schema,
        card=ModelCard.of("m"),
        parameters=LinearParameters(np.array([1.0, np.nextafter(2.0, 3.0)]), 0.5),
    )
    assert content_hash(base) != content_hash(nudged)
    assert content_hash(base).startswith("sha256:") and len(content_hash(base)) == 71


def test_arrays_are_read_only() -> None:
    asset = load_model(dump_model(breast_cancer_asset())[0])
    assert isinstance(asset.parameters, LinearParameters)
    with pytest.raises(ValueError):
        asset.parameters.coef[0] = 1.0


def breast_cancer_asset() -> ModelAsset:
    data = load_breast_cancer()
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    pipe.fit(data.data, data.target)
    return from_sklearn(
        pipe,
        feature_names=list(data.feature_names),
        model_id="bc",
        version="1",
        card=ModelCard.of("breast cancer", metrics={"accuracy": 0.98}),
    )


def test_sklearn_logistic_pipeline_matches_predict_proba() -> None:
    data = load_breast_cancer()
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    pipe.fit(data.data, data.target)
    asset = from_sklearn(
        pipe,
        feature_names=list(data.feature_names),
        model_id="bc",
        version="1",
        card=ModelCard.of("bc"),
    )
    assert asset.kind == "logistic_regression" and asset.link == "logistic"
    np.testing.assert_allclose(
        predict(asset, data.data), pipe.predict_proba(data.data)[:, 1], atol=1e-12
    )
    np.testing.assert_allclose(
        decision_function(asset, data.data),
        pipe.decision_function(data.data),
        atol=1e-9,
    )


def test_sklearn_linear_regression_and_unscaled_estimator() -> None:
    data = load_diabetes()
    names = [f"x{i}" for i in range(data.data.shape[1])]
    plain = LinearRegression().fit(data.data, data.target)
    asset = from_sklearn(
        plain, feature_names=names, model_id="d", version="1", card=ModelCard.of("d")
    )
    assert asset.schema.mean is None and asset.link == "identity"
    np.testing.assert_allclose(
        predict(asset, data.data), plain.predict(data.data), atol=1e-9
    )
    scaled = make_pipeline(StandardScaler(with_mean=False), LinearRegression())
    scaled.fit(data.data, data.target)
    asset = from_sklearn(
        scaled, feature_names=names, model_id="d", version="2", card=ModelCard.of("d")
    )
    assert asset.schema.mean is not None and not asset.schema.mean.any()
    np.testing.assert_allclose(
        predict(asset, data.data), scaled.predict(data.data), atol=1e-9
    )


def test_sklearn_refuses_what_it_cannot_represent() -> None:
    iris = load_iris()
    names = list(iris.feature_names)
    multiclass = LogisticRegression(max_iter=500).fit(iris.data, iris.target)
    with pytest.raises(DatasetError, match="binary"):
        from_sklearn(
            multiclass,
            feature_names=names,
            model_id="i",
            version="1",
            card=ModelCard.of("i"),
        )
    with pytest.raises(DatasetError, match="binary"):
        from_sklearn(
            LogisticRegression(),
            feature_names=names,
            model_id="i",
            version="1",
            card=ModelCard.of("i"),
        )
    multi = LinearRegression().fit(iris.data, np.c_[iris.target, iris.target])
    with pytest.raises(DatasetError, match="single-output"):
        from_sklearn(
            multi,
            feature_names=names,
            model_id="i",
            version="1",
            card=ModelCard.of("i"),
        )
    with pytest.raises(DatasetError, match="cannot import"):
        from_sklearn(
            StandardScaler(),
            feature_names=names,
            model_id="i",
            version="1",
            card=ModelCard.of("i"),
        )
    binary = LogisticRegression().fit(iris.data, iris.target == 0)
    with pytest.raises(DatasetError, match=r"model field parameters\.coef"):
        from_sklearn(
            binary,
            feature_names=names[:3],
            model_id="i",
            version="1",
            card=ModelCard.of("i"),
        )


def test_trainer_fits_a_square_activation_mlp() -> None:
    data = load_breast_cancer()
    mean, scale = standardiser(data.data)
    params = fit_poly_mlp(
        (data.data - mean) / scale, data.target, task="binary", hidden=4, seed=3
    )
    asset = ModelAsset(
        kind="poly_mlp",
        model_id="mlp",
        version="1",
        schema=InputSchema(tuple(data.feature_names), mean, scale),
        card=ModelCard.of("mlp", provenance="fit_poly_mlp seed=3"),
        parameters=params,
        link="logistic",
    )
    accuracy = ((predict(asset, data.data) > 0.5) == data.target).mean()
    assert accuracy > 0.95
    assert asset.depth == 2
    again = fit_poly_mlp(
        (data.data - mean) / scale, data.target, task="binary", hidden=4, seed=3
    )
    assert np.array_equal(again.hidden_weights, params.hidden_weights)


def test_trainer_regression_reduces_error_and_refuses_bad_targets() -> None:
    data = load_diabetes()
    x = (data.data - data.data.mean(0)) / data.data.std(0)
    y = (data.target - data.target.mean()) / data.target.std()
    params = fit_poly_mlp(
        x, y, task="regression", hidden=4, activation=(0.0, 1.0, 0.1), epochs=300
    )
    z = x @ params.hidden_weights.T + params.hidden_bias
    out = (z + 0.1 * z * z) @ params.output_weights + params.output_bias
    assert np.mean((out - y) ** 2) < 0.6
    with pytest.raises(DatasetError, match="0 or 1"):
        fit_poly_mlp(x, y, task="binary")


def test_reference_evaluates_the_mlp_formula() -> None:
    schema = InputSchema(("a", "b"), np.array([1.0, -1.0]), np.array([2.0, 0.5]))
    params = PolyMLPParameters(
        np.array([[1.0, 0.0], [0.5, -1.0]]),
        np.array([0.1, -0.2]),
        (0.5, 0.25, 0.125),
        np.array([2.0, -3.0]),
        0.75,
    )
    asset = ModelAsset(
        kind="poly_mlp",
        model_id="m",
        version="1",
        schema=schema,
        card=ModelCard.of("m"),
        parameters=params,
    )
    row = np.array([[3.0, 0.0]])
    x = (row[0] - [1.0, -1.0]) / [2.0, 0.5]  # = (1, 2)
    z = np.array([1.0 + 0.1, 0.5 - 2.0 - 0.2])
    h = 0.5 + 0.25 * z + 0.125 * z * z
    assert decision_function(asset, row)[0] == pytest.approx(
        2.0 * h[0] - 3.0 * h[1] + 0.75
    )
    assert x.tolist() == [1.0, 2.0]
