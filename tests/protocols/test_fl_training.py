"""Federated training end to end in the in-process harness: accuracy against
centralised scikit-learn (IID and label-skewed hospitals, with and without DP),
pooled standardisation, divergence, early stopping and the node's refusals."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.fl import dataset, declared_bounds, seeded_random
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.preprocessing import StandardScaler

from cleanroom.errors import ConfigError, DatasetError, ProtocolAbort, ProtocolError
from protocols.fl.aggregator import FedAvgAggregator
from protocols.fl.local import LocalTraining
from protocols.fl.models import (
    Model,
    linear_regression,
    logistic_regression,
    mlp,
    softmax_regression,
)
from protocols.fl.plan import FedAvgParams, FedAvgPlan
from protocols.fl.privacy import DPConfig
from protocols.fl.simulate import predict_rows, simulate, split_by_label, split_iid
from protocols.fl.standardise import Standardisation
from protocols.fl.trainer import NodeTrainer, validation_rows
from protocols.fl.vector import ring_sum

SEEDS = [bytes([i]) * 32 for i in range(3)]
SPLITTERS = {"iid": split_iid, "by_label": split_by_label}


def _model(name: str, classes: int, features: int) -> Model:
    if name == "regression":
        return linear_regression(features)
    if classes == 2:
        return logistic_regression(features)
    return softmax_regression(features, classes)


def _central_accuracy(x_train, x_test, y_train, y_test) -> float:  # type: ignore[no-untyped-def]
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(C=1.0, max_iter=10_000).fit(
        scaler.transform(x_train), y_train
    )
    return float(clf.score(scaler.transform(x_test), y_test))


def _params(model: Model, x_train: np.ndarray, **kwargs: object) -> FedAvgParams:
    # l2 = 1 / N: the same objective as scikit-learn's C = 1.
    base: dict[str, object] = {
        "model": model,
        "feature_bounds": declared_bounds(x_train),
        "parties": 3,
        "max_rows": 1000,
        "l2": 1.0 / len(x_train),
        "rounds": 100,
        "patience": None,
        "validation_fraction": 0.0,
        "local": LocalTraining(
            batch_size=16, learning_rate=0.5, learning_rate_decay=0.98
        ),
    }
    base.update(kwargs)
    return FedAvgParams(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["breast_cancer", "wine"])
@pytest.mark.parametrize("split", ["iid", "by_label"])
def test_accuracy_within_one_point_of_centralised(name: str, split: str) -> None:
    x_train, x_test, y_train, y_test = dataset(name)
    classes = len(np.unique(y_train))
    params = _params(_model(name, classes, x_train.shape[1]), x_train)
    nodes = SPLITTERS[split](x_train, y_train, 3, seed=1)
    if split == "by_label":  # each hospital holds one label (or a share of one)
        assert all(len(np.unique(y)) == 1 for _, y in nodes)
    result = simulate(params, nodes, seeds=SEEDS)
    federated = float(np.mean(predict_rows(params, result, x_test) == y_test))
    central = _central_accuracy(x_train, x_test, y_train, y_test)
    print(f"{name} {split}: federated {federated:.4f} central {central:.4f}")
    assert abs(federated - central) <= 0.01


@pytest.mark.parametrize(("epsilon", "allowed_gap"), [(1.0, 0.15), (8.0, 0.05)])
def test_dp_accuracy_gap(epsilon: float, allowed_gap: float) -> None:
    x_train, x_test, y_train, y_test = dataset("breast_cancer")
    params = _params(
        logistic_regression(x_train.shape[1]),
        x_train,
        rounds=20,
        local=None,
        server_learning_rate=2.0,
        loss_clip=5.0,
        privacy=DPConfig(epsilon, 1e-5, example_clip=1.0),
    )
    nodes = split_iid(x_train, y_train, 3, seed=1)
    result = simulate(params, nodes, seeds=SEEDS, random=seeded_random(f"dp-{epsilon}"))
    federated = float(np.mean(predict_rows(params, result, x_test) == y_test))
    gap = federated - _central_accuracy(x_train, x_test, y_train, y_test)
    print(
        f"DP epsilon {epsilon}: gap {100 * gap:+.1f} points, "
        f"spent {result.epsilon_spent:.4f}"
    )
    assert gap >= -allowed_gap
    assert result.epsilon_spent is not None and result.epsilon_spent <= epsilon


def test_standardisation_equals_the_pooled_statistics() -> None:
    x_train, _, y_train, _ = dataset("wine")
    params = _params(
        softmax_regression(x_train.shape[1], 3), x_train, validation_fraction=0.3
    )
    plan = FedAvgPlan.create(params)
    nodes = split_by_label(x_train, y_train, 3, seed=2)
    trainers = [NodeTrainer(plan, x, y, seed=s) for (x, y), s in zip(nodes, SEEDS)]
    vectors = [t.standardisation_vector() for t in trainers]
    std = FedAvgAggregator(plan).read_standardisation(ring_sum(vectors), 3)
    # The pooled training rows are exactly those no node drew into validation.
    held_out = [validation_rows(s, len(y), 0.3) for (_, y), s in zip(nodes, SEEDS)]
    pooled = np.vstack([x[~v] for (x, _), v in zip(nodes, held_out)])
    val_rows = sum(int(v.sum()) for v in held_out)
    assert std.train_rows == len(pooled) and std.val_rows == val_rows
    assert 0 < val_rows < len(x_train)
    np.testing.assert_allclose(std.mean, pooled.mean(axis=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(std.scale, pooled.std(axis=0), rtol=1e-7)
    scaler = StandardScaler().fit(pooled)
    np.testing.assert_allclose(std.scale, scaler.scale_, rtol=1e-7)


def test_regression_matches_centralised_least_squares() -> None:
    x_train, x_test, y_train, y_test = dataset("diabetes")
    params = _params(
        linear_regression(x_train.shape[1]),
        x_train,
        l2=0.0,
        target_bounds=(0.0, 400.0),
        validation_fraction=0.2,
        local=LocalTraining(epochs=2, batch_size=16, learning_rate=0.05),
    )
    result = simulate(params, split_iid(x_train, y_train, 3, seed=3), seeds=SEEDS)
    predicted = predict_rows(params, result, x_test)
    ours = 1 - np.sum((predicted - y_test) ** 2) / np.sum((y_test - y_test.mean()) ** 2)
    central = LinearRegression().fit(x_train, y_train).score(x_test, y_test)
    assert ours == pytest.approx(central, abs=0.02)
    last = result.history[-1]
    assert last.val_r2 is not None and 0.3 < last.val_r2 < 0.7
    assert last.val_mse is not None and last.val_mse > 0


def test_mlp_learns_and_reports_auc() -> None:
    x_train, x_test, y_train, y_test = dataset("breast_cancer")
    params = _params(
        mlp("binary", x_train.shape[1], 8),
        x_train,
        rounds=30,
        l2=1e-3,
        validation_fraction=0.2,
        local=LocalTraining(batch_size=16, learning_rate=0.1),
    )
    result = simulate(params, split_by_label(x_train, y_train, 3, seed=1), seeds=SEEDS)
    assert np.mean(predict_rows(params, result, x_test) == y_test) > 0.93
    final = result.history[-1]
    assert final.val_auc is not None and final.val_auc > 0.95
    assert final.val_accuracy is not None and final.val_accuracy > 0.9


def test_histogram_auc_matches_the_exact_auc() -> None:
    from sklearn.metrics import roc_auc_score

    x_train, _, y_train, _ = dataset("breast_cancer")
    params = _params(
        logistic_regression(x_train.shape[1]),
        x_train,
        rounds=3,
        validation_fraction=0.5,
        auc_bins=200,
    )
    nodes = split_iid(x_train, y_train, 3, seed=4)
    result = simulate(params, nodes, seeds=SEEDS)
    held_out = [validation_rows(s, len(y), 0.5) for (_, y), s in zip(nodes, SEEDS)]
    std = result.standardisation
    x_val = np.vstack([std.features(x[v]) for (x, _), v in zip(nodes, held_out)])
    y_val = np.concatenate([y[v] for (_, y), v in zip(nodes, held_out)])
    scores = params.model.outputs(result.model, x_val)[:, 0]
    assert result.history[-1].val_auc == pytest.approx(
        roc_auc_score(y_val, scores), abs=0.01
    )


def test_divergence_ends_the_job_naming_the_round() -> None:
    x_train, _, y_train, _ = dataset("breast_cancer")
    params = _params(
        logistic_regression(x_train.shape[1]),
        x_train,
        rounds=20,
        local=LocalTraining(batch_size=4, learning_rate=500.0),
        divergence_factor=5.0,
    )
    with pytest.raises(
        ProtocolAbort,
        match=r"diverged in round 2: the aggregated training loss [\d.]+ is over 5x",
    ):
        simulate(params, split_iid(x_train, y_train, 3, seed=1), seeds=SEEDS)


def test_non_finite_local_training_is_reported_with_its_round() -> None:
    x_train, _, y_train, _ = dataset("diabetes")
    params = _params(
        linear_regression(x_train.shape[1]),
        x_train,
        target_bounds=(0.0, 400.0),
        local=LocalTraining(epochs=3, batch_size=2, learning_rate=900.0),
    )
    with pytest.raises(
        ProtocolAbort,
        match=r"diverged in round 1: local training produced non-finite parameters "
        r"at 3 node",
    ):
        simulate(params, split_iid(x_train, y_train, 3, seed=1), seeds=SEEDS)


def test_early_stopping_releases_the_best_model() -> None:
    x_train, _, y_train, _ = dataset("breast_cancer")
    params = _params(
        logistic_regression(x_train.shape[1]),
        x_train,
        rounds=200,
        l2=0.0,
        patience=3,
        min_improvement=1e-3,
        validation_fraction=0.3,
    )
    result = simulate(params, split_iid(x_train, y_train, 3, seed=1), seeds=SEEDS)
    assert result.rounds_run < 200
    assert "early stop" in result.stop_reason and "for 3 rounds" in result.stop_reason
    assert result.best_round == result.rounds_run - 3
    released = result.history[result.best_round - 1]
    # The best by a margin of min_improvement: later rounds only crept lower.
    lowest = min(m.val_loss for m in result.history)
    assert lowest <= released.val_loss <= lowest + 1e-3
    assert result.epsilon_spent is None


def test_dropouts_are_left_out_of_sums_and_counts() -> None:
    x_train, x_test, y_train, y_test = dataset("breast_cancer")
    params = _params(
        logistic_regression(x_train.shape[1]), x_train, rounds=40, threshold=2
    )
    nodes = split_iid(x_train, y_train, 3, seed=1)
    gone = {r: frozenset({r % 3}) for r in range(2, 40, 3)}
    result = simulate(params, nodes, seeds=SEEDS, dropouts=gone)
    rows = [len(y) for _, y in nodes]
    assert result.history[1].train_rows == sum(rows) - rows[2]
    assert np.mean(predict_rows(params, result, x_test) == y_test) > 0.94


def test_a_round_below_the_threshold_is_refused() -> None:
    x_train, _, y_train, _ = dataset("breast_cancer")
    params = _params(
        logistic_regression(x_train.shape[1]), x_train, rounds=5, threshold=3
    )
    nodes = split_iid(x_train, y_train, 3, seed=1)
    with pytest.raises(
        ProtocolAbort, match="round 4: 2 nodes contributed, the plan needs 3"
    ):
        simulate(params, nodes, seeds=SEEDS, dropouts={4: frozenset({0})})


def test_the_32_bit_ring_trains_as_well() -> None:
    x_train, x_test, y_train, y_test = dataset("breast_cancer")
    params = _params(
        logistic_regression(x_train.shape[1]),
        x_train,
        modulus_bits=32,
        max_rows=200,
        update_clip=20.0,
        loss_clip=20.0,
    )
    plan = FedAvgPlan.create(params)
    assert (
        plan.round.modulus_bits == 32 and plan.round.segment("update").scale_bits >= 8
    )
    result = simulate(params, split_iid(x_train, y_train, 3, seed=1), seeds=SEEDS)
    federated = float(np.mean(predict_rows(params, result, x_test) == y_test))
    assert abs(federated - _central_accuracy(x_train, x_test, y_train, y_test)) <= 0.01


@pytest.mark.parametrize("task", ["multiclass-mlp", "regression"])
def test_dp_runs_for_every_model_kind(task: str) -> None:
    name = "wine" if task == "multiclass-mlp" else "diabetes"
    x_train, _, y_train, _ = dataset(name)
    if task == "regression":
        model, extra = (
            linear_regression(x_train.shape[1]),
            {"target_bounds": (0.0, 400.0)},
        )
    else:
        model, extra = mlp("multiclass", x_train.shape[1], 4, n_classes=3), {}
    params = _params(
        model,
        x_train,
        rounds=4,
        local=None,
        validation_fraction=0.3,
        loss_clip=5.0,
        privacy=DPConfig(4.0, 1e-6),
        **extra,
    )
    result = simulate(
        params,
        split_iid(x_train, y_train, 3, seed=1),
        seeds=SEEDS,
        random=seeded_random(f"dp-{task}"),
    )
    assert result.rounds_run == 5 and len(result.history) == 5
    assert all(
        np.isfinite(m.train_loss) and m.train_loss_noise > 0 for m in result.history
    )
    assert np.all(np.isfinite(result.model))
    assert result.epsilon_spent == pytest.approx(4.0, rel=1e-3)


# ----------------------------------------------------------- node refusals --
@pytest.fixture(scope="module")
def small() -> tuple[FedAvgPlan, np.ndarray, np.ndarray]:
    x_train, _, y_train, _ = dataset("breast_cancer")
    params = _params(
        logistic_regression(x_train.shape[1]), x_train, rounds=2, parties=1
    )
    return FedAvgPlan.create(params), x_train[:100], y_train[:100]


def _standardised(small) -> tuple[NodeTrainer, Standardisation]:  # type: ignore[no-untyped-def]
    plan, x, y = small
    trainer = NodeTrainer(plan, x, y, seed=SEEDS[0])
    total = trainer.standardisation_vector()
    std = FedAvgAggregator(plan).read_standardisation(total, 1)
    return trainer, std


def test_node_enforces_the_order_of_aggregations(small) -> None:  # type: ignore[no-untyped-def]
    plan = small[0]
    trainer, std = _standardised(small)
    w = np.zeros(plan.params.model.n_params)
    with pytest.raises(ProtocolError, match="round 1 is not the one"):
        trainer.round_vector(1, w)  # before the standardisation arrives
    with pytest.raises(ProtocolError, match="already sent"):
        trainer.standardisation_vector()
    trainer.receive_standardisation(std)
    with pytest.raises(ProtocolError, match="once"):
        trainer.receive_standardisation(std)
    with pytest.raises(ProtocolError, match="round 2 is not the one"):
        trainer.round_vector(2, w)
    for r in (1, 2, 3):
        trainer.round_vector(r, w)
    with pytest.raises(ProtocolError):
        trainer.round_vector(4, w)  # beyond the plan (2 rounds + evaluation)
    with pytest.raises(ProtocolError, match="round 3 is not"):
        trainer.round_vector(3, w)  # no repeats


def test_node_refuses_a_malformed_global_model(small) -> None:  # type: ignore[no-untyped-def]
    trainer, std = _standardised(small)
    trainer.receive_standardisation(std)
    n = small[0].params.model.n_params
    for bad in (np.zeros(n - 1), np.full(n, np.nan), np.full(n, np.inf)):
        with pytest.raises(ProtocolError, match="global model"):
            trainer.round_vector(1, bad)


def test_node_refuses_rows_the_plan_excludes(small) -> None:  # type: ignore[no-untyped-def]
    plan, x, y = small
    with pytest.raises(DatasetError, match="max_rows"):
        NodeTrainer(plan, np.vstack([x] * 11), np.concatenate([y] * 11))
    with pytest.raises(DatasetError, match="missing or infinite"):
        NodeTrainer(plan, np.where(np.eye(100, x.shape[1]) > 0, np.nan, x), y)
    with pytest.raises(DatasetError, match="class labels"):
        NodeTrainer(plan, x, y + 0.5)
    with pytest.raises(DatasetError, match="30"):
        NodeTrainer(plan, x[:, :5], y)


def test_standardisation_from_the_wire_is_checked(small) -> None:  # type: ignore[no-untyped-def]
    plan = small[0]
    _, std = _standardised(small)
    good = std.to_json()
    assert Standardisation.from_json(plan, good) == std
    for change in (
        {"mean": good["mean"][:-1]},
        {"scale": [0.0] * 30},
        {"train_rows": float("nan")},
        {"mean": "x"},
        {"target_scale": -1.0},
    ):
        with pytest.raises(ProtocolError):
            Standardisation.from_json(plan, {**good, **change})
    with pytest.raises(ProtocolError):
        Standardisation.from_json(plan, {"mean": good["mean"]})


def test_params_refuse_inconsistent_settings() -> None:
    model = logistic_regression(2)
    base = {
        "model": model,
        "feature_bounds": ((0.0, 1.0),) * 2,
        "parties": 3,
        "max_rows": 10,
    }
    bad = [
        {"privacy": DPConfig(1.0, 1e-6)},  # DP with local epochs
        {"local": None},  # neither
        {"feature_bounds": ((0.0, 1.0),)},
        {"feature_bounds": ((1.0, 0.0), (0.0, 1.0))},
        {"target_bounds": (0.0, 1.0)},  # not a regression
        {"threshold": 4},
        {"modulus_bits": 16},
        {"rounds": 0},
        {"patience": 0},
    ]
    for change in bad:
        with pytest.raises(ConfigError):
            FedAvgParams(**{**base, **change})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="target_bounds"):
        FedAvgParams(
            model=linear_regression(2),
            feature_bounds=((0.0, 1.0),) * 2,
            parties=3,
            max_rows=10,
        )


def test_usage_reports_rows_and_the_planned_epsilon() -> None:
    x_train, _, y_train, _ = dataset("breast_cancer")
    params = _params(
        logistic_regression(x_train.shape[1]),
        x_train,
        rounds=5,
        local=None,
        privacy=DPConfig(2.0, 1e-6),
    )
    plan = FedAvgPlan.create(params)
    usage = NodeTrainer(plan, x_train[:50], y_train[:50], seed=SEEDS[0]).usage()
    assert usage.rows_touched == 50
    assert usage.epsilon == pytest.approx(2.0, rel=1e-3) and usage.epsilon <= 2.0
