"""The demo's federated-training step: logistic regression trained with ``fedavg``
across the three hospitals (hospital-c's patients mostly malignant: a non-IID
split), printed beside a centralised scikit-learn model on the pooled rows."""

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
    skew = ", ".join(
        f"{n}: {100 * float((f[_LABEL] == 0).mean()):.0f}% malignant"
        for n, f in frames.items()
    )
    return [
        (f"accuracy on the pooled rows ({skew})", f"{fed_accuracy:.4f}",
         f"{central_accuracy:.4f} (scikit-learn, pooled)",
         abs(fed_accuracy - central_accuracy) <= 0.01),
        (f"rounds ({result['stop_reason']})", str(result["rounds_run"]),
         "every update summed by SecAgg+", True),
        ("final training loss (aggregated)", f"{final['train_loss']:.4f}",
         "model sealed to the analyst; card in `cleanroom model list`", True),
    ]  # fmt: skip


STEP = register_step(
    DemoStep("joint modeling — fedavg across three hospitals", _spec, _compare)
)
