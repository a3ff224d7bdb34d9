"""The homomorphic jobs over gRPC, driven through the CLI: a holder registers a
model in its node config, the analyst scores its own CSV with ``--input`` and
sums columns across holders with ``he_sum``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.federation import cli, make_csvs

from cleanroom import local
from protocols.models import InputSchema, LinearParameters, ModelAsset, ModelCard
from protocols.models.codec import dump_model
from protocols.models.reference import predict

pytestmark = pytest.mark.integration


def test_he_inference_and_he_sum_over_grpc(tmp_path: Path) -> None:
    paths = make_csvs(tmp_path)
    rng = np.random.default_rng(3)
    model = ModelAsset(
        kind="logistic_regression",
        model_id="m",
        version="1",
        schema=InputSchema(("x0", "x1", "x2"), np.zeros(3), np.ones(3) * 2.0),
        card=ModelCard.of("test model"),
        parameters=LinearParameters(rng.normal(0, 0.5, 3), -0.2),
        link="logistic",
    )
    model_file = tmp_path / "m.json"
    model_file.write_bytes(dump_model(model)[0])
    owner, dataset = "h1", paths["h1"].stem
    workdir = tmp_path / "fed"
    settings = {
        "he_inference": {"models": {"m": {"path": str(model_file), "dataset": dataset}}}
    }
    local.up(
        workdir=workdir, nodes=list(paths.items()), node_settings={owner: settings}
    )
    try:
        fed = str(workdir / "federation.json")
        rows = pd.DataFrame(rng.normal(0, 2, (40, 3)), columns=["x0", "x1", "x2"])
        rows.to_csv(tmp_path / "mine.csv", index=False)
        spec = tmp_path / "score.yaml"
        spec.write_text(
            f"type: he_inference\ninputs: [{{node: {owner}, dataset: {dataset}}}]\n"
            "params: {model: m, rows: 40}\npurpose: scoring\n"
        )
        args = ("job", "submit", str(spec), "--federation", fed, "--wait", "--json")
        proc = cli(*args, "--input", f"rows={tmp_path / 'mine.csv'}", check=True)
        doc = json.loads(proc.stdout)
        assert doc["state"] == "succeeded"
        scores = np.array(doc["result"]["result"]["scores"])
        assert np.max(np.abs(scores - predict(model, rows.to_numpy()))) < 1e-3

        inputs = ", ".join(
            f"{{node: {n}, dataset: {p.stem}}}" for n, p in paths.items()
        )
        sums = tmp_path / "sum.yaml"
        sums.write_text(
            f"type: he_sum\ninputs: [{inputs}]\n"
            "params: {columns: [age]}\npurpose: research\n"
        )
        doc = json.loads(cli("job", "submit", str(sums), "--federation", fed,
                             "--wait", "--json", check=True).stdout)  # fmt: skip
        (cell,) = doc["result"]["result"]["cells"]
        pool = pd.concat(pd.read_csv(p) for p in paths.values()).dropna(subset=["age"])
        assert cell["count"] == len(pool)
        assert abs(cell["sum"]["age"] - pool["age"].sum()) < 1e-3
    finally:
        local.down(workdir)
