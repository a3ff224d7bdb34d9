"""``vertical_logreg`` then ``vertical_predict`` over gRPC, driven through the CLI:
a bank (label + 10 columns) and a telecom (20 columns) as real node processes,
the packed-Paillier gradient with its default 3072-bit key (the CKKS default
has its own gRPC test, test_vertical_federation.py), 1 epoch on breast_cancer
split by columns. The scores must match the model reassembled here from the two parts the
nodes keep on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.federation import cli
from sklearn.metrics import roc_auc_score

from cleanroom import local
from cleanroom.demo.vertical import (
    BANK,
    LABEL,
    TELECOM,
    predict_spec,
    split,
    train_spec,
)

pytestmark = pytest.mark.integration


def _part(workdir: Path, node: str, job: str) -> dict[str, Any]:
    path = workdir / "nodes" / node / "data" / "vertical" / f"{job}.json"
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def _submit(tmp_path: Path, name: str, spec: str, fed: str) -> dict[str, Any]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(spec)
    args = ("job", "submit", str(path), "--federation", fed, "--wait", "--json")
    doc: dict[str, Any] = json.loads(cli(*args, check=True).stdout)
    assert doc["state"] == "succeeded", doc.get("reason")
    return doc


@pytest.mark.timeout(240)
def test_vertical_logreg_and_predict_over_grpc(tmp_path: Path) -> None:
    data = split()
    paths = {BANK: tmp_path / f"{BANK}.csv", TELECOM: tmp_path / f"{TELECOM}.csv"}
    data.bank.to_csv(paths[BANK], index=False)
    data.telecom.to_csv(paths[TELECOM], index=False)
    workdir = tmp_path / "fed"
    local.up(
        workdir=workdir,
        nodes=list(paths.items()),
        id_columns={BANK: "customer_id", TELECOM: "customer_id"},
    )
    try:
        fed = str(workdir / "federation.json")
        spec = train_spec(data, epochs=1) + "\n  gradient: paillier"
        trained = _submit(tmp_path, "train", spec, fed)
        result = trained["result"]["result"]
        card = result["model_card"]
        assert card["gradient"] == "paillier" and card["epochs_run"] == 1
        assert card["encryption"]["key_bits"] == 3072
        assert result["metrics"]["validation_auc"] > 0.9
        job = trained["job_id"]

        ids = list(data.common)
        scored = _submit(tmp_path, "predict", predict_spec(job, ids), fed)
        scores = scored["result"]["result"]["scores"]
        assert set(scores) == set(ids)
        joined = data.joined().loc[ids]
        got = np.array([scores[i] for i in ids])
        assert roc_auc_score(joined[LABEL].to_numpy(), got) > 0.95

        guest, host = _part(workdir, BANK, job), _part(workdir, TELECOM, job)
        z = np.full(len(joined), guest["intercept"])
        for part in (guest, host):
            x = (joined[part["columns"]].to_numpy() - part["mean"]) / part["scale"]
            z += np.clip(x, -8, 8) @ np.array(part["weights"])
        assert np.abs(got - 1 / (1 + np.exp(-z))).max() <= 1e-3
    finally:
        local.down(workdir)
