"""``cleanroom model export`` of fedavg models end to end: ONNX files that
onnxruntime runs as the federated model (breast_cancer, wine), and the
he_inference asset a holder registers with the other holders' consent, served
by he_inference with the federated model's scores."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_wine

from cleanroom import jobtypes
from cleanroom.errors import ConfigError, SpecError
from cleanroom.jobspec import JobSpec, parse_spec
from cleanroom.jobtypes.he_inference.service import ModelRegistry
from cleanroom.jobtypes.hooks import NodeEnvironment
from cleanroom.testing import InProcessFederation
from protocols.fl.models import Model
from protocols.fl.standardise import Standardisation
from protocols.models import load_model as load_asset
from protocols.models.reference import predict as asset_predict

NODES = ("h1", "h2", "h3")


def _frames(name: str) -> tuple[dict[str, pd.DataFrame], list[str]]:
    data = load_breast_cancer() if name == "breast_cancer" else load_wine()
    columns = [f"f{i}" for i in range(data.data.shape[1])]
    frame = pd.DataFrame(data.data, columns=columns)
    frame["y"] = data.target
    order = np.random.default_rng(1).permutation(len(frame))
    parts = np.array_split(order, len(NODES))
    return {
        n: frame.iloc[p].reset_index(drop=True)
        for n, p in zip(NODES, parts, strict=True)
    }, columns


def _spec(frames: dict[str, pd.DataFrame], columns: list[str], **extra: Any) -> str:
    pooled = pd.concat(list(frames.values()))
    lo, hi = pooled[columns].min(), pooled[columns].max()
    pad = 0.1 * (hi - lo)
    params: dict[str, Any] = {
        "features": columns,
        "label": "y",
        "algorithm": "logistic",
        "classes": [0, 1],
        "feature_bounds": {
            c: [float(lo[c] - pad[c]), float(hi[c] + pad[c])] for c in columns
        },
        "rounds": 8,
        "max_rows": 1000,
        "patience": None,
        "validation_fraction": 0.0,
        "local": {"batch_size": 16, "learning_rate": 0.5},
        **extra,
    }
    return json.dumps(
        {
            "type": "fedavg",
            "inputs": [{"node": n, "dataset": n} for n in NODES],
            "purpose": "research",
            "params": params,
        }
    )


def _outputs(model_doc: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """The federated model's own raw outputs on rows inside the bounds."""
    model = Model(model_doc["task"], len(model_doc["features"]),
                  model_doc["n_classes"], model_doc["hidden"],
                  model_doc["activation"])  # fmt: skip
    s = model_doc["standardisation"]
    std = Standardisation(tuple(s["mean"]), tuple(s["scale"]), s["train_rows"],
                          s["val_rows"])  # fmt: skip
    return model.outputs(np.array(model_doc["weights"]), std.features(x))


def _probabilities(z: np.ndarray) -> np.ndarray:
    if z.shape[1] == 1:
        p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
        return np.column_stack([1.0 - p1, p1])
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class Trained:
    def __init__(self, fed: InProcessFederation, job_id: str) -> None:
        self.fed = fed
        self.job_id = job_id
        opened = fed.client.opened(job_id)
        self.reading: dict[str, Any] = dict(opened.reading)
        self.spec: JobSpec = parse_spec(opened.spec_yaml)
        self.x = pd.concat(list(fed.datasets.values()))
        self.x = self.x.drop(columns="y").to_numpy(dtype=np.float64)


@pytest.fixture(scope="module")
def cancer() -> Iterator[Trained]:
    frames, columns = _frames("breast_cancer")
    with InProcessFederation(frames) as fed:
        view = fed.run(_spec(frames, columns), timeout=240)
        assert view.job.state.value == "succeeded", view.job.reason
        yield Trained(fed, view.job.job_id)


def test_cli_exports_onnx_that_onnxruntime_runs_as_the_federated_model(
    cancer: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from cleanroom.cli import models as model_cli
    from cleanroom.cli.main import cli

    fed = cancer.fed
    monkeypatch.setattr(
        model_cli.Client, "from_federation", classmethod(lambda cls, p: fed.client)
    )
    monkeypatch.setattr(type(fed.client), "close", lambda self: None)
    runner = CliRunner()
    out = tmp_path / "model.onnx"
    args = ["model", "export", cancer.job_id, "--out", str(out)]
    done = runner.invoke(cli, [*args, "--format", "onnx"])
    assert done.exit_code == 0, done.output
    session = ort.InferenceSession(out.read_bytes(), providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(None, {"X": cancer.x})
    expected = _probabilities(_outputs(cancer.reading["model"], cancer.x))
    assert np.max(np.abs(probabilities - expected)) <= 1e-6
    assert np.array_equal(labels, expected.argmax(axis=1))

    # json stays the default; an unknown format is refused, naming the offered.
    default = runner.invoke(cli, args)
    assert default.exit_code == 0, default.output
    assert json.loads(out.read_text())["format"] == "cleanroom-fedavg-model/v1"
    bad = runner.invoke(cli, [*args, "--format", "pickle"])
    assert bad.exit_code != 0
    assert "json, onnx, he-asset" in bad.output


def test_wine_multinomial_onnx_matches_and_has_no_he_asset() -> None:
    frames, columns = _frames("wine")
    spec = _spec(frames, columns, algorithm="multinomial", classes=[0, 1, 2])
    with InProcessFederation(frames) as fed:
        view = fed.run(spec, timeout=240)
        assert view.job.state.value == "succeeded", view.job.reason
        trained = Trained(fed, view.job.job_id)
    fedavg = jobtypes.get("fedavg")
    data = fedavg.export_model(trained.reading, "onnx", job_id=trained.job_id)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(None, {"X": trained.x})
    expected = _probabilities(_outputs(trained.reading["model"], trained.x))
    assert np.max(np.abs(probabilities - expected)) <= 1e-6
    assert np.array_equal(labels, expected.argmax(axis=1))
    with pytest.raises(SpecError, match="one score per row"):
        fedavg.export_model(
            trained.reading, "he-asset", spec=trained.spec, job_id=trained.job_id
        )


def test_a_holder_serves_the_he_asset_with_consent_and_scores_match(
    cancer: Trained, tmp_path: Path
) -> None:
    data = jobtypes.get("fedavg").export_model(
        cancer.reading, "he-asset", spec=cancer.spec, job_id=cancer.job_id
    )
    asset = load_asset(data)
    assert asset.origin is not None and asset.origin.holders == NODES
    expected = _probabilities(_outputs(cancer.reading["model"], cancer.x))[:, 1]
    assert np.max(np.abs(asset_predict(asset, cancer.x) - expected)) <= 1e-9
    path = tmp_path / "cancer.json"
    path.write_bytes(data)

    rows = cancer.x[:120]
    columns = list(cancer.spec.params["features"])
    csv = pd.DataFrame(rows, columns=columns).to_csv(index=False).encode()
    owner = {"h1": cancer.fed.datasets["h1"]}
    model = {"path": str(path), "dataset": "h1", "consent_of": ["h2", "h3"]}
    with InProcessFederation(
        owner, jobtypes={"he_inference": {"models": {"cancer": model}}}
    ) as serving:
        (catalog_asset,) = [a for n in serving.client.catalog() for a in n.assets]
        card = json.loads(catalog_asset.document_json)
        assert card["origin"]["holders"] == list(NODES)
        assert card["origin"]["consent_of"] == ["h2", "h3"]
        spec = (
            "type: he_inference\n"
            "inputs: [{node: h1, dataset: h1}]\n"
            f"params: {{model: cancer, rows: {len(rows)}}}\n"
            "purpose: triage\n"
        )
        view = serving.run(spec, timeout=240, local_inputs={"rows": csv})
        assert view.job.state.value == "succeeded", view.job.reason
        scores = np.array(serving.client.result(view.job.job_id)["result"]["scores"])
    assert np.max(np.abs(scores - expected[: len(rows)])) <= 1e-3


class _Datasets:
    def __init__(self, names: list[str]) -> None:
        self._names = names

    def names(self) -> list[str]:
        return self._names


def _registry(node: str, path: Path, **entry: Any) -> ModelRegistry:
    env = NodeEnvironment(
        node=node,
        data_dir=path.parent,
        settings={"models": {"m": {"path": str(path), "dataset": "d", **entry}}},
        audit=None,  # type: ignore[arg-type]
        datasets=_Datasets(["d"]),  # type: ignore[arg-type]
        policy=None,  # type: ignore[arg-type]
        db=None,  # type: ignore[arg-type]
    )
    return ModelRegistry(env)


def test_a_node_refuses_a_federated_asset_without_the_other_holders_consent(
    cancer: Trained, tmp_path: Path
) -> None:
    path = tmp_path / "m.json"
    path.write_bytes(
        jobtypes.get("fedavg").export_model(
            cancer.reading, "he-asset", spec=cancer.spec, job_id=cancer.job_id
        )
    )
    with pytest.raises(ConfigError, match=r"once h2, h3 agreed, name them"):
        _registry("h1", path)
    with pytest.raises(ConfigError, match=r"once h3 agreed"):
        _registry("h1", path, consent_of=["h2"])
    # A node whose data did not train the model needs every holder's consent.
    with pytest.raises(ConfigError, match=r"once h1, h3 agreed"):
        _registry("outsider", path, consent_of=["h2"])
    assert _registry("outsider", path, consent_of=["h1", "h2", "h3"]).models["m"]
    assert _registry("h2", path, consent_of=["h1", "h3"]).models["m"].consent_of == (
        "h1",
        "h3",
    )
    with pytest.raises(ConfigError, match="list of node names"):
        _registry("h1", path, consent_of="h2,h3")

    # Editing the origin out of the hashed content is caught by the file's hash.
    doc = json.loads(path.read_text())
    doc["origin"]["inputs"] = doc["origin"]["inputs"][:1]
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="content_hash"):
        _registry("h1", path)

    # Without its origin (and hash) it is a plain asset: consent_of is refused.
    doc.pop("origin")
    doc.pop("content_hash")
    path.write_text(json.dumps(doc))
    assert _registry("h1", path).models["m"].asset.origin is None
    with pytest.raises(ConfigError, match="names no origin"):
        _registry("h1", path, consent_of=["h2"])
