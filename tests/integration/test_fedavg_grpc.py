"""``fedavg`` over gRPC between real processes, driven through the CLI: three
hospitals on breast_cancer, the released model's held-out accuracy against
scikit-learn on the pooled training rows, and ``cleanroom model show`` on the
registry entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.federation import cli
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from cleanroom import local
from cleanroom.jobtypes.fedavg.card import estimator_from_document

pytestmark = pytest.mark.integration

NODES = ("h1", "h2", "h3")


def test_fedavg_over_grpc_matches_sklearn_and_registers_the_model(
    tmp_path: Path,
) -> None:
    data = load_breast_cancer(as_frame=True).frame
    features = [f"f{i}" for i in range(data.shape[1] - 1)]
    data.columns = [*features, "y"]
    train, test = train_test_split(data, test_size=0.25, random_state=0,
                                   stratify=data["y"])  # fmt: skip
    order = np.random.default_rng(1).permutation(len(train))
    paths = {}
    for node, rows in zip(NODES, np.array_split(order, 3), strict=True):
        paths[node] = tmp_path / f"{node}.csv"
        train.iloc[rows].to_csv(paths[node], index=False)
    lo, hi = train[features].min(), train[features].max()
    pad = 0.1 * (hi - lo)
    spec = {
        "type": "fedavg",
        "inputs": [{"node": n, "dataset": n} for n in NODES],
        "purpose": "research",
        "params": {
            "features": features,
            "label": "y",
            "classes": [0, 1],
            "feature_bounds": {
                c: [float(lo[c] - pad[c]), float(hi[c] + pad[c])] for c in features
            },
            "rounds": 60,
            "max_rows": 1000,
            "patience": None,
            "validation_fraction": 0.0,
            "l2": 1.0 / len(train),
            "local": {
                "batch_size": 16,
                "learning_rate": 0.5,
                "learning_rate_decay": 0.98,
            },
        },
    }
    spec_file = tmp_path / "fedavg.json"
    spec_file.write_text(json.dumps(spec))
    workdir = tmp_path / "fed"
    local.up(workdir=workdir, nodes=list(paths.items()))
    try:
        fed = str(workdir / "federation.json")
        proc = cli("job", "submit", str(spec_file), "--federation", fed, "--wait",
                   "--json", check=True)  # fmt: skip
        doc = json.loads(proc.stdout)
        assert doc["state"] == "succeeded", doc
        result = doc["result"]["result"]
        assert result["survivors"] == list(NODES) and result["rounds_run"] == 61
        job_id = doc["job_id"] if "job_id" in doc else doc["job"]["job_id"]
        shown = cli("model", "show", job_id, "--federation", fed, check=True)
        card = json.loads(shown.stdout)
        assert card["job_id"] == job_id and card["algorithm"] == "logistic"
        assert card["rounds_run"] == 61 and card["metrics"] == result["history"]
        # The card in the coordinator's registry carries no weight.
        assert all(repr(w) not in shown.stdout for w in result["model"]["weights"])
    finally:
        local.down(workdir)
    model = result["model"]
    x_test = np.clip(test[features].to_numpy(), *np.array(model["feature_bounds"]).T)
    federated = float(np.mean(estimator_from_document(model).predict(x_test)
                              == test["y"].to_numpy()))  # fmt: skip
    scaler = StandardScaler().fit(train[features])
    central = LogisticRegression(C=1.0, max_iter=10_000).fit(
        scaler.transform(train[features]), train["y"]
    )
    central_accuracy = float(central.score(scaler.transform(test[features]),
                                           test["y"]))  # fmt: skip
    assert abs(federated - central_accuracy) <= 0.02
