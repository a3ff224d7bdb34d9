"""The demo's federated-training step: logistic regression trained with ``fedavg``
across the three hospitals, printed beside a centralised scikit-learn model on the
pooled rows; then the same training on a label-skewed (non-IID) split, each
hospital holding mostly one class, run through ``protocols.fl.simulate`` (the
nodes' and aggregator's exact code, a plain ring sum standing in for SecAgg+)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from cleanroom.demo.runner import DemoStep, register_step

_LABEL = "target"
_EXCLUDED = ("patient_id", _LABEL)


def _features(frames: Mapping[str, pd.DataFrame]) -> list[str]:
    first = next(iter(frames.values()))
    return [c for c in first.columns if c not in _EXCLUDED]


def _public_bounds() -> dict[str, list[float]]:
    """The features' published ranges, widened by 10% (bundled data, no rows)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True).frame
    data.columns = [str(c).replace(" ", "_") for c in data.columns]
    out = {}
    for column in data.columns:
        if column == _LABEL:
            continue
        lo, hi = float(data[column].min()), float(data[column].max())
        pad = 0.1 * (hi - lo)
        out[column] = [round(lo - pad, 6), round(hi + pad, 6)]
    return out


def _spec(datasets: Mapping[str, str]) -> str:
    bounds = _public_bounds()
    doc = {
        "type": "fedavg",
        "inputs": [{"node": n, "dataset": d} for n, d in datasets.items()],
        "purpose": "diagnostic model",
        "params": {
            "features": list(bounds),
            "label": _LABEL,
            "algorithm": "logistic",
            "classes": [0, 1],
            "feature_bounds": bounds,
            "rounds": 60,
            "max_rows": 10_000,
            "patience": None,
            "validation_fraction": 0.0,
            "l2": 1.0 / 569,
            "local": {
                "batch_size": 16,
                "learning_rate": 0.5,
                "learning_rate_decay": 0.98,
            },
        },
    }
    return json.dumps(doc)


def _compare(
    result: Mapping[str, Any], frames: Mapping[str, pd.DataFrame]
) -> list[tuple[str, str, str, bool]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from cleanroom.jobtypes.fedavg.card import estimator_from_document

    pooled = pd.concat(list(frames.values()), ignore_index=True)
    columns = _features(frames)
    x, y = pooled[columns].to_numpy(dtype=float), pooled[_LABEL].to_numpy()
    model = result["model"]
    bounds = np.array(model["feature_bounds"])
    federated = estimator_from_document(model)
    fed_accuracy = float(np.mean(federated.predict(np.clip(x, *bounds.T)) == y))
    scaler = StandardScaler().fit(x)
    central = LogisticRegression(C=1.0, max_iter=10_000).fit(scaler.transform(x), y)
    central_accuracy = float(central.score(scaler.transform(x), y))
    final = result["history"][-1]
    skewed = _non_iid_accuracy(model, x, y)
    return [
        ("accuracy on the pooled rows", f"{fed_accuracy:.4f}",
         f"{central_accuracy:.4f} (scikit-learn, pooled)",
         abs(fed_accuracy - central_accuracy) <= 0.01),
        ("same training, non-IID: hospitals holding 80% one class (simulated)",
         f"{skewed:.4f}", f"{central_accuracy:.4f} (scikit-learn, pooled)",
         abs(skewed - central_accuracy) <= 0.01),
        (f"rounds ({result['stop_reason']})", str(result["rounds_run"]),
         "every update summed by SecAgg+", True),
        ("final training loss (aggregated)", f"{final['train_loss']:.4f}",
         "model sealed to the analyst; card in `cleanroom model list`", True),
    ]  # fmt: skip


def _non_iid_accuracy(model: Mapping[str, Any], x: np.ndarray, y: np.ndarray) -> float:
    """The step's spec trained on a label-skewed split of the pooled rows: two
    hospitals 80% benign, one 80% malignant (``protocols.fl.simulate``)."""
    from cleanroom.jobtypes.fedavg.params import parse
    from protocols.fl.simulate import predict_rows, simulate

    spec = parse(json.loads(_spec({"a": "a", "b": "b", "c": "c"}))["params"], 3)
    rng = np.random.default_rng(11)
    benign, malignant = (
        rng.permutation(np.flatnonzero(y == 1)),
        rng.permutation(np.flatnonzero(y == 0)),
    )
    shares: list[list[int]] = [[], [], []]
    for rows, major in ((benign, (0, 1)), (malignant, (2,))):
        for i, row in enumerate(rows):
            # 80% of each class to its hospitals, the rest spread over the others
            owners = major if rng.random() < 0.8 else tuple({0, 1, 2} - set(major))
            shares[owners[i % len(owners)]].append(int(row))
    nodes = [(x[s], y[s]) for s in shares]
    result = simulate(spec.params, nodes)
    return float(np.mean(predict_rows(spec.params, result, x) == y))


STEP = register_step(
    DemoStep("joint modeling — fedavg across three hospitals", _spec, _compare)
)
