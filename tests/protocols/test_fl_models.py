"""Federated models: losses against scikit-learn, gradients against finite
differences, per-example gradients, local SGD/FedProx and clipping."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss

from cleanroom.errors import ConfigError, ProtocolError
from protocols.fl.local import (
    LocalTraining,
    clip_l2,
    clipped_gradient_units,
    round_generator,
    train_locally,
)
from protocols.fl.models import (
    Model,
    linear_regression,
    logistic_regression,
    mlp,
    softmax_regression,
)

RNG = np.random.default_rng(7)
X = RNG.normal(size=(40, 5))
Y_BINARY = (X[:, 0] + RNG.normal(size=40) > 0).astype(float)
Y_CLASSES = RNG.integers(0, 3, 40).astype(float)
Y_REAL = X @ np.arange(5.0) + RNG.normal(size=40)

MODELS = {
    "logistic": (logistic_regression(5), Y_BINARY),
    "softmax": (softmax_regression(5, 3), Y_CLASSES),
    "linear": (linear_regression(5), Y_REAL),
    "mlp-tanh": (mlp("binary", 5, 4), Y_BINARY),
    "mlp-relu-multi": (
        mlp("multiclass", 5, 4, n_classes=3, activation="relu"),
        Y_CLASSES,
    ),
    "mlp-regression": (mlp("regression", 5, 3), Y_REAL),
}


def _params(model: Model) -> np.ndarray:
    return np.random.default_rng(1).normal(scale=0.5, size=model.n_params)


@pytest.mark.parametrize("name", MODELS)
def test_gradient_matches_finite_differences(name: str) -> None:
    model, y = MODELS[name]
    w = _params(model)
    grad = model.gradient(w, X, y, l2=0.3)
    numeric = np.empty_like(w)
    for i in range(len(w)):
        step = np.zeros_like(w)
        step[i] = 1e-6
        up = model.objective(w + step, X, y, 0.3)
        down = model.objective(w - step, X, y, 0.3)
        numeric[i] = (up - down) / 2e-6
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", MODELS)
def test_example_gradients_average_to_the_gradient(name: str) -> None:
    model, y = MODELS[name]
    w = _params(model)
    per_row = model.example_gradients(w, X, y)
    assert per_row.shape == (len(y), model.n_params)
    np.testing.assert_allclose(
        per_row.mean(axis=0), model.gradient(w, X, y), atol=1e-12
    )


def test_losses_match_scikit_learn() -> None:
    w = _params(logistic_regression(5))
    model = logistic_regression(5)
    p = 1 / (1 + np.exp(-model.outputs(w, X)[:, 0]))
    assert np.mean(model.row_losses(w, X, Y_BINARY)) == pytest.approx(
        log_loss(Y_BINARY, p), rel=1e-12
    )
    soft = softmax_regression(5, 3)
    w = _params(soft)
    z = soft.outputs(w, X)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    assert np.mean(soft.row_losses(w, X, Y_CLASSES)) == pytest.approx(
        log_loss(Y_CLASSES, probs), rel=1e-12
    )


def test_penalty_covers_weights_not_intercepts() -> None:
    model = mlp("multiclass", 5, 4, n_classes=3)
    mask = model.penalty_mask()
    assert model.n_params == 5 * 4 + 4 + 4 * 3 + 3
    assert mask.sum() == 5 * 4 + 4 * 3
    assert mask[20:24].sum() == 0 and mask[-3:].sum() == 0


def test_binary_log_odds_and_multiclass_one_vs_rest() -> None:
    soft = softmax_regression(5, 3)
    w = _params(soft)
    z = soft.outputs(w, X)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(
        soft.class_log_odds(w, X), np.log(p / (1 - p)), atol=1e-9
    )


def test_extreme_logits_stay_finite() -> None:
    model = logistic_regression(5)
    w = np.full(model.n_params, 1e6)
    assert np.all(np.isfinite(model.row_losses(w, X, Y_BINARY)))
    assert np.all(np.isfinite(model.gradient(w, X, Y_BINARY)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"task": "binary", "n_features": 3, "n_classes": 3},
        {"task": "multiclass", "n_features": 3, "n_classes": 2},
        {"task": "regression", "n_features": 3, "n_classes": 2},
        {"task": "ranking", "n_features": 3},
        {"task": "binary", "n_features": 0, "n_classes": 2},
        {"task": "binary", "n_features": 3, "n_classes": 2, "activation": "gelu"},
    ],
)
def test_bad_model_shapes_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Model(**kwargs)  # type: ignore[arg-type]


def test_wrong_parameter_or_feature_count_is_refused() -> None:
    model = logistic_regression(5)
    with pytest.raises(ProtocolError, match="6 parameters"):
        model.outputs(np.zeros(4), X)
    with pytest.raises(ProtocolError, match="5 features"):
        model.outputs(np.zeros(6), X[:, :4])


def test_mlp_init_is_public_and_breaks_symmetry() -> None:
    model = mlp("binary", 5, 4)
    assert np.array_equal(model.init(3), model.init(3))
    assert not np.array_equal(model.init(3), model.init(4))
    assert not np.any(logistic_regression(5).init(3))


# ------------------------------------------------------------- local training --
def test_local_sgd_is_deterministic_given_the_seed() -> None:
    model, config = logistic_regression(5), LocalTraining(epochs=2, batch_size=8)
    w0 = np.zeros(model.n_params)

    def run(seed: bytes, round_index: int) -> np.ndarray:
        rng = round_generator(seed, round_index)
        return train_locally(
            model, w0, X, Y_BINARY, config, l2=0.0, rng=rng, round_index=round_index
        )

    assert np.array_equal(run(b"a" * 32, 1), run(b"a" * 32, 1))
    assert not np.array_equal(run(b"a" * 32, 1), run(b"b" * 32, 1))
    assert not np.array_equal(run(b"a" * 32, 1), run(b"a" * 32, 2))


def test_local_sgd_lowers_the_loss_and_fedprox_stays_closer() -> None:
    model = logistic_regression(5)
    w0 = np.zeros(model.n_params)
    out = {}
    for mu in (0.0, 5.0):
        config = LocalTraining(
            epochs=5, batch_size=8, learning_rate=0.2, proximal_mu=mu
        )
        out[mu] = train_locally(
            model,
            w0,
            X,
            Y_BINARY,
            config,
            l2=0.0,
            rng=round_generator(b"s" * 32, 1),
            round_index=1,
        )
    assert model.objective(out[0.0], X, Y_BINARY, 0) < model.objective(
        w0, X, Y_BINARY, 0
    )
    assert np.linalg.norm(out[5.0]) < np.linalg.norm(out[0.0])


def test_bad_local_settings_are_refused() -> None:
    for kwargs in (
        {"epochs": 0},
        {"batch_size": 1.5},
        {"learning_rate": 0},
        {"learning_rate_decay": 1.5},
        {"proximal_mu": -1},
    ):
        with pytest.raises(ConfigError):
            LocalTraining(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="32 bytes"):
        round_generator(b"short", 1)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=20),
    st.floats(1e-3, 1e3),
)
def test_clip_l2_is_a_projection_onto_the_ball(
    values: list[float], bound: float
) -> None:
    v = np.array(values)
    clipped = clip_l2(v, bound)
    assert np.linalg.norm(clipped) <= bound * (1 + 1e-12)
    if np.linalg.norm(v) <= bound:
        assert np.array_equal(clipped, v)
    else:  # same direction
        assert float(np.dot(clipped, v)) == pytest.approx(
            np.linalg.norm(clipped) * np.linalg.norm(v), rel=1e-9
        )


@pytest.mark.parametrize("name", ["logistic", "mlp-relu-multi"])
def test_one_row_moves_the_clipped_sum_by_its_own_bounded_term(name: str) -> None:
    """The DP sensitivity argument: exact integer sums of per-row encoded terms."""
    model, y = MODELS[name]
    w, clip, bits = _params(model), 0.5, 20
    full = clipped_gradient_units(model, w, X, y, clip=clip, scale_bits=bits)
    for row in (0, 17, 39):
        keep = np.arange(len(y)) != row
        without = clipped_gradient_units(
            model, w, X[keep], y[keep], clip=clip, scale_bits=bits
        )
        alone = clipped_gradient_units(
            model, w, X[row : row + 1], y[row : row + 1], clip=clip, scale_bits=bits
        )
        assert np.array_equal(full - without, alone)
        bound = 2**bits * clip * (1 + 1e-9) + np.sqrt(model.n_params) / 2
        assert np.linalg.norm(alone.astype(float)) <= bound
