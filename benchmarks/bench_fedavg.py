"""Federated training (protocols.fl): accuracy gaps against centralised scikit-learn,
and what one node's side of a round costs against the plain computation it wraps."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import numpy as np
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from benchmarks.registry import Context, Measurement, benchmark
from benchmarks.stats import Stats
from protocols.fl.aggregator import FedAvgAggregator
from protocols.fl.local import LocalTraining, round_generator, train_locally
from protocols.fl.models import Model, logistic_regression, mlp, softmax_regression
from protocols.fl.plan import FedAvgParams, FedAvgPlan
from protocols.fl.privacy import DPConfig
from protocols.fl.simulate import predict_rows, simulate, split_by_label, split_iid
from protocols.fl.trainer import NodeTrainer

PARTIES: Final = 3
DELTA: Final = 1e-5
SPLITS: Final = {"iid": split_iid, "by_label": split_by_label}
Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _dataset(name: str) -> Data:
    d = load_breast_cancer() if name == "breast_cancer" else load_wine()
    y = d.target.astype(float)
    x_train, x_test, y_train, y_test = train_test_split(
        d.data, y, test_size=0.25, random_state=0, stratify=y
    )
    return x_train, x_test, y_train, y_test


def _bounds(x: np.ndarray) -> tuple[tuple[float, float], ...]:
    """Public bounds as a catalog would declare them: the range plus 10%."""
    lo, hi = x.min(axis=0), x.max(axis=0)
    pad = 0.1 * (hi - lo)
    return tuple(
        (float(a - m), float(b + m)) for a, b, m in zip(lo, hi, pad, strict=True)
    )


def _params(x_train: np.ndarray, classes: int, epsilon: float | None) -> FedAvgParams:
    p = x_train.shape[1]
    model = logistic_regression(p) if classes == 2 else softmax_regression(p, classes)
    common: dict[str, Any] = {
        "model": model,
        "feature_bounds": _bounds(x_train),
        "parties": PARTIES,
        "max_rows": 1000,
        "l2": 1.0 / len(x_train),  # scikit-learn's C = 1 on the pooled rows
        "patience": None,
        "validation_fraction": 0.0,
    }
    if epsilon is None:
        local = LocalTraining(
            batch_size=16, learning_rate=0.5, learning_rate_decay=0.98
        )
        return FedAvgParams(rounds=100, local=local, **common)
    return FedAvgParams(
        rounds=20,
        local=None,
        server_learning_rate=2.0,
        loss_clip=5.0,
        privacy=DPConfig(epsilon, DELTA, example_clip=1.0),
        **common,
    )


@benchmark("fedavg_accuracy", "fl")
def fedavg_accuracy(ctx: Context) -> Iterator[Measurement]:
    """Test accuracy of federated logistic regression minus centralised scikit-learn's.

    Three hospitals, IID or label-skewed (each holds one label); plain FedAvg and
    DP-FedSGD at epsilon 1 and 8 (delta 1e-5, row level). Every sample is one full
    simulated training run (exact encode/decode paths; a plain ring sum in place
    of SecAgg+), fresh node seeds and fresh noise each time; the baseline is
    LogisticRegression(C=1) on the pooled, standardised training rows, fit in the
    same run. Reported in percentage points; no timing.
    """
    cases = ctx.pick(
        quick=[(d, s, None) for d in ("breast_cancer", "wine") for s in SPLITS]
        + [("breast_cancer", "iid", 1.0), ("breast_cancer", "iid", 8.0)],
        full=[
            (d, s, e)
            for d in ("breast_cancer", "wine")
            for s in SPLITS
            for e in (None, 1.0, 8.0)
        ],
    )
    repeats = {
        None: ctx.pick(quick=1, full=3),
        1.0: ctx.pick(quick=3, full=10),
        8.0: ctx.pick(quick=3, full=10),
    }
    for name, split, epsilon in cases:
        x_train, x_test, y_train, y_test = _dataset(name)
        scaler = StandardScaler().fit(x_train)
        central = LogisticRegression(C=1.0, max_iter=10_000).fit(
            scaler.transform(x_train), y_train
        )
        central_accuracy = float(central.score(scaler.transform(x_test), y_test))
        params = _params(x_train, len(np.unique(y_train)), epsilon)
        nodes = SPLITS[split](x_train, y_train, PARTIES, seed=1)
        gaps, accuracies, spent = [], [], None
        for _ in range(repeats[epsilon]):
            result = simulate(params, nodes)
            accuracy = float(np.mean(predict_rows(params, result, x_test) == y_test))
            accuracies.append(accuracy)
            gaps.append(100 * (accuracy - central_accuracy))
            spent = result.epsilon_spent
        mode = "plain fedavg" if epsilon is None else f"dp-fedsgd eps={epsilon:g}"
        ctx.log(f"  {name} {split} {mode}: gap {np.median(gaps):+.2f} pp")
        yield ctx.measurement(
            case=f"{name} {split} {mode}",
            params={"dataset": name, "split": split, "epsilon": epsilon or 0.0},
            details={
                "rows_per_node": [len(y) for _, y in nodes],
                "test_rows": len(y_test),
                "rounds": params.rounds,
                "centralised_accuracy": central_accuracy,
                "federated_accuracy_median": float(np.median(accuracies)),
                "epsilon_spent": spent,
                "delta": DELTA if epsilon else None,
            },
            metric="accuracy_gap",
            measured=Stats.of(gaps, "pp"),
            note="federated minus centralised test accuracy, percentage points",
        )


@benchmark("fedavg_local_round", "fl")
def fedavg_local_round(ctx: Context) -> Iterator[Measurement]:
    """One node's side of a round (metrics, local step, fixed-point encoding, DP
    noise) against the bare local computation it wraps, per round.

    Plain: ``NodeTrainer.round_vector`` (one epoch of mini-batch SGD, batch 32,
    plus evaluation and encoding) vs ``train_locally`` alone on the same rows.
    DP: the round vector (per-example clipped gradients encoded row by row, plus
    the exact discrete-Gaussian share for every coordinate) vs one plain
    full-batch gradient of the same model on the same rows.
    """
    sizes = ctx.pick(
        quick=[(2_000, 30, 0)],
        full=[(10_000, 30, 0), (100_000, 50, 0), (20_000, 30, 32)],
    )
    for rows, features, hidden in sizes:
        for dp in (False, True):
            yield _local_round(ctx, rows, features, hidden, dp)


def _local_round(
    ctx: Context, rows: int, features: int, hidden: int, dp: bool
) -> Measurement:
    rng = np.random.default_rng(rows + features)
    x = rng.normal(size=(rows, features))
    y = (x[:, 0] + x[:, 1] + rng.normal(size=rows) > 0).astype(float)
    model: Model = (
        mlp("binary", features, hidden) if hidden else logistic_regression(features)
    )
    local = LocalTraining(batch_size=32, learning_rate=0.1)
    params = FedAvgParams(
        model=model,
        feature_bounds=((-6.0, 6.0),) * features,
        parties=PARTIES,
        threshold=1,  # this node's own sum stands in for the standardisation round
        max_rows=rows,
        rounds=1000,
        l2=1e-4,
        validation_fraction=0.0,
        local=None if dp else local,
        privacy=DPConfig(8.0, DELTA) if dp else None,
    )
    plan = FedAvgPlan.create(params)
    trainer = NodeTrainer(plan, x, y)
    std = FedAvgAggregator(plan).read_standardisation(
        trainer.standardisation_vector(), 1
    )
    trainer.receive_standardisation(std)
    w = model.init(0)
    x_std = std.features(np.clip(x, -6.0, 6.0))
    rounds = iter(range(1, params.aggregations))

    def node_round() -> object:
        return trainer.round_vector(next(rounds), w)

    def bare() -> object:
        if dp:
            return model.gradient(w, x_std, y)
        return train_locally(
            model,
            w,
            x_std,
            y,
            local,
            l2=params.l2,
            rng=round_generator(b"\0" * 32, 1),
            round_index=1,
        )

    measured, baseline = ctx.time_interleaved(node_round, bare)
    ctx.log(
        f"  rows={rows} features={features} hidden={hidden} dp={dp}: "
        f"{measured.cpu.median * 1e3:.1f} ms vs {baseline.cpu.median * 1e3:.1f} ms"
    )
    return ctx.measurement(
        case=f"{'dp-fedsgd' if dp else 'fedavg'} node round, "
        f"{'mlp' if hidden else 'logistic'}",
        params={"rows": rows, "features": features, "hidden": hidden, "dp": dp},
        details={"n_params": model.n_params, "vector_length": plan.round.length},
        metric="cpu",
        measured=measured.cpu,
        baseline=baseline.cpu,
        baseline_name="plain full-batch gradient" if dp else "train_locally alone",
        x=("rows",),
    )


@benchmark("fedavg_secagg_round", "fl")
def fedavg_secagg_round(ctx: Context) -> Iterator[Measurement]:
    """One whole training round at 5 nodes with SecAgg+ against the same round with
    plain (unmasked) aggregation, same local training, same in-memory transport.

    Secure: every node's ``round_vector`` (local epoch, metrics, encoding), sealed
    with the job seed (``SealedSum``: mask plus 10 checksums), one SecAgg+ session
    (fresh keys, signatures, Shamir shares, AES-CTR masks) driven message by
    message, then every node opens and checks the sum. Plain: the same vectors,
    each serialised to the coordinator, summed, the sum serialised back. Goal:
    at most 1.2x. CPU of all parties together (one process).
    """
    sizes = ctx.pick(
        quick=[(2_000, 30, 0), (20_000, 30, 0)],
        full=[(2_000, 30, 0), (20_000, 30, 0), (20_000, 30, 32)],
    )
    for rows, features, hidden in sizes:
        yield _secagg_round(ctx, rows, features, hidden)


def _secagg_round(ctx: Context, rows: int, features: int, hidden: int) -> Measurement:
    from protocols.fl.vector import ring_sum
    from protocols.sealed_sum import DEFAULT_CHECKS, SealedSum
    from protocols.secagg import SecAggConfig
    from protocols.secagg.simulate import build_session, drive

    parties = 5
    names = tuple(f"n{i}" for i in range(parties))
    rng = np.random.default_rng(rows + hidden)
    model: Model = (
        mlp("binary", features, hidden) if hidden else logistic_regression(features)
    )
    params = FedAvgParams(
        model=model,
        feature_bounds=((-6.0, 6.0),) * features,
        parties=parties,
        max_rows=rows,
        rounds=1000,
        l2=1e-4,
        validation_fraction=0.2,
        local=LocalTraining(batch_size=32, learning_rate=0.1),
    )
    plan = FedAvgPlan.create(params)
    trainers = {}
    for name in names:
        x = rng.normal(size=(rows, features))
        y = (x[:, 0] + x[:, 1] + rng.normal(size=rows) > 0).astype(float)
        trainers[name] = NodeTrainer(plan, x, y)
    std = FedAvgAggregator(plan).read_standardisation(
        ring_sum([t.standardisation_vector() for t in trainers.values()]), parties
    )
    for trainer in trainers.values():
        trainer.receive_standardisation(std)
    w = model.init(0)
    length = plan.round.length
    seed = bytes(32)
    counter = iter(range(1, 10**6))

    def vectors() -> dict[str, Any]:
        index = next(counter)
        return {n: t.round_vector(index, w) for n, t in trainers.items()}

    def plain() -> object:
        sent = [np.frombuffer(v.tobytes(), np.uint64) for v in vectors().values()]
        total = ring_sum(sent).tobytes()
        return [np.frombuffer(total, np.uint64) for _ in names]

    def secure() -> object:
        index = next(counter)
        session = f"bench/r{index}"
        seal = SealedSum(seed, session, length)
        inputs = {
            n: seal.seal(n, t.round_vector(index, w)) for n, t in trainers.items()
        }
        config = SecAggConfig.create(
            session_id=session,
            parties=names,
            vector_length=length + DEFAULT_CHECKS,
            modulus_bits=64,
        )
        server, clients = build_session(inputs, config)
        drive(server, clients)
        total = server.sum_vector()
        return [seal.open(total, names) for _ in names]

    # Each round advances every trainer: give both paths fresh rounds to the end.
    params_rounds = params.aggregations - 1
    repeat = min(ctx.repeat, params_rounds // 2 - 2)
    measured, baseline = ctx.time_interleaved(secure, plain, repeat=repeat)
    ratio = measured.cpu.median / baseline.cpu.median
    ctx.log(
        f"  rows/node={rows} features={features} hidden={hidden}: secure "
        f"{measured.cpu.median * 1e3:.1f} ms vs plain {baseline.cpu.median * 1e3:.1f}"
        f" ms ({ratio:.2f}x, goal <= 1.2x)"
    )
    return ctx.measurement(
        case=f"fedavg round, 5 nodes, {'mlp' if hidden else 'logistic'}",
        params={"rows": rows, "features": features, "hidden": hidden, "nodes": 5},
        details={"n_params": model.n_params, "vector_length": length, "goal": 1.2},
        metric="cpu",
        measured=measured.cpu,
        baseline=baseline.cpu,
        baseline_name="plain aggregation, same round",
        x=("rows",),
    )
