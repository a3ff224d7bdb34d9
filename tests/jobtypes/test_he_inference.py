"""he_inference: the parties in one process and end to end in an in-process
federation (scores against the plaintext model, quotas, logs), plus refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cleanroom import jobtypes
from cleanroom.errors import ProtocolError
from cleanroom.jobspec import parse_spec
from cleanroom.jobtypes.he_inference.service import RegisteredModel
from cleanroom.jobtypes.simulate import drive
from cleanroom.local import default_policy
from cleanroom.testing import ANALYST_NAME, InProcessFederation
from protocols.models import ModelAsset
from protocols.models.reference import predict
from protocols.party import ANALYST
from tests.jobtypes.conftest import features


def spec_text(rows: int, dataset: str = "owner", model: str = "cancer") -> str:
    return (
        "type: he_inference\n"
        f"inputs: [{{node: owner, dataset: {dataset}}}]\n"
        f"params: {{model: {model}, rows: {rows}}}\n"
        "purpose: triage\n"
    )


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class _Registry:
    """The registry's interface for party tests (the node service has its own)."""

    def __init__(self, model: ModelAsset) -> None:
        self.model = RegisteredModel("cancer", "owner", model, "sha256:x")
        self.logged: list[dict[str, Any]] = []

    def get(self, name: str, dataset: str) -> RegisteredModel | None:
        return self.model if (name, dataset) == ("cancer", "owner") else None

    def record_scoring(self, job_id: str, **data: Any) -> None:
        self.logged.append(data)


def _parties(model: ModelAsset, rows: Any, count: int) -> tuple[Any, ...]:
    spec = parse_spec(spec_text(count))
    job = jobtypes.get("he_inference")
    owner_key, analyst_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    publics = {"owner": _raw(owner_key), ANALYST: _raw(analyst_key)}
    coordinator = job.coordinator_party(
        jobtypes.CoordinatorContext("j1", spec, spec.nodes, publics)
    )
    registry = _Registry(model)
    owner = job.node_party(
        jobtypes.NodeContext(
            "j1", spec, "owner", "owner", pd.DataFrame(), "h", 5, owner_key,
            spec.nodes, publics, analyst="alice", service=registry,
        )
    )  # fmt: skip
    buyer = job.analyst_party(
        jobtypes.AnalystContext(
            "j1", spec, "alice", spec.nodes, analyst_key, publics,
            local_inputs={"rows": rows},
        )
    )  # fmt: skip
    return coordinator, owner, buyer, registry


def test_parties_score_like_the_plaintext_model(
    cancer: pd.DataFrame, cancer_model: ModelAsset
) -> None:
    rows = cancer.drop(columns="target").head(100)
    coordinator, owner, buyer, registry = _parties(cancer_model, rows, 100)
    run = drive(coordinator, {"owner": owner}, buyer)
    assert run.opened is not None
    expected = predict(cancer_model, rows.to_numpy())
    assert np.max(np.abs(np.array(run.opened["scores"]) - expected)) < 1e-3
    assert run.result["summary"]["rows"] == 100
    assert (
        run.result["summary"]["ckks"]["parameters"]["name"]
        == run.opened["parameter_set"]
    )
    assert registry.logged == [
        {
            "model": registry.model,
            "buyer": "alice",
            "purpose": "triage",
            "rows": 100,
            "parameter_set": run.opened["parameter_set"],
        }
    ]
    assert "scores" not in json.dumps(run.result)


def test_a_feature_count_mismatch_is_refused_before_encryption(
    cancer: pd.DataFrame, cancer_model: ModelAsset
) -> None:
    rows = cancer.drop(columns=["target", "worst symmetry"]).head(10)
    coordinator, owner, buyer, _ = _parties(cancer_model, rows, 10)
    with pytest.raises(ProtocolError, match="takes 30 features; the rows lack 1"):
        drive(coordinator, {"owner": owner}, buyer)
    assert owner.usage().units["scored_rows"] == 0


def test_another_row_count_than_the_spec_is_refused(
    cancer: pd.DataFrame, cancer_model: ModelAsset
) -> None:
    rows = cancer.drop(columns="target").head(12)
    coordinator, owner, buyer, _ = _parties(
        cancer_model, rows.to_csv(index=False).encode(), 10
    )
    with pytest.raises(ProtocolError, match="scores 10 rows; the table has 12"):
        drive(coordinator, {"owner": owner}, buyer)


def _federation(
    cancer: pd.DataFrame, model_file: Path, directory: Path, quota: int | None = None
) -> InProcessFederation:
    policy: dict[str, Any] = dict(default_policy(ANALYST_NAME))
    if quota is not None:
        policy = {
            "default": {
                **policy["default"],
                "quotas": {"scored_rows": {"total": quota}},
            }
        }
    return InProcessFederation(
        {"owner": cancer.head(50)},
        policy=policy,
        directory=directory,
        store_url=f"sqlite:///{directory / 'coordinator.db'}",
        jobtypes={
            "he_inference": {
                "models": {"cancer": {"path": str(model_file), "dataset": "owner"}}
            }
        },
    )


def _bytes_under(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_end_to_end_scores_match_and_the_coordinator_sees_no_score(
    cancer: pd.DataFrame,
    cancer_model: ModelAsset,
    cancer_model_file: Path,
    tmp_path: Path,
) -> None:
    rows = cancer.drop(columns="target")
    csv = rows.to_csv(index=False).encode()
    with _federation(cancer, cancer_model_file, tmp_path) as fed:
        catalog = fed.client.catalog()
        (asset,) = [a for n in catalog for a in n.assets]
        card = json.loads(asset.document_json)
        assert card["features"] == list(rows.columns)
        assert "coef" not in asset.document_json
        view = fed.run(spec_text(len(rows)), timeout=240, local_inputs={"rows": csv})
        assert view.job.state.value == "succeeded", view.job.reason
        result = fed.client.result(view.job.job_id)["result"]
        scores = np.array(result["scores"])
        expected = predict(cancer_model, features(cancer))
        assert np.max(np.abs(scores - expected)) < 1e-3
        assert (
            result["summary"]["ckks"]["parameters"]["name"] == result["parameter_set"]
        )
        stored = (
            _bytes_under(tmp_path / "coordinator")
            + (tmp_path / "coordinator.db").read_bytes()
        )
        owner_log = _bytes_under(tmp_path / "nodes" / "owner" / "data")
        middling = [f"{v:.6f}" for v in scores if 0.05 < v < 0.95][:20]
        assert middling
        for canary in (*middling, 'mean radius": 1'):
            assert canary.encode() not in stored
            assert canary.encode() not in owner_log
        values = [f"{v:.4f}" for v in rows.iloc[:5, :3].to_numpy().ravel()]
        assert not any(v.encode() in stored for v in values if len(v) > 6)
        entries = [
            e
            for e in fed.agents["owner"].audit.entries()
            if e.kind == "he_inference.scored"
        ]
        (entry,) = entries
        assert entry.data["rows"] == len(rows)
        assert entry.data["buyer"] == ANALYST_NAME and entry.data["purpose"] == "triage"


def _scored(fed: InProcessFederation) -> tuple[float, float]:
    for row in fed.agents["owner"].meters.usage(analyst=ANALYST_NAME):
        if row.meter == "scored_rows":
            return row.used_total, row.reserved_total
    return 0.0, 0.0


def test_a_batch_beyond_the_buyers_quota_is_refused_before_evaluation(
    cancer: pd.DataFrame, cancer_model_file: Path, tmp_path: Path
) -> None:
    rows = cancer.drop(columns="target").head(300)
    csv = rows.to_csv(index=False).encode()
    with _federation(cancer, cancer_model_file, tmp_path, quota=500) as fed:
        first = fed.run(spec_text(300), timeout=240, local_inputs={"rows": csv})
        assert first.job.state.value == "succeeded", first.job.reason
        assert _scored(fed) == (300.0, 0.0)
        exposed = [
            r.used_total
            for r in fed.agents["owner"].meters.usage(analyst=ANALYST_NAME)
            if r.meter == "evaluations_exposed"
        ]
        assert exposed == [8192.0]  # one block of ckks-8192-d1, every slot usable
        second = fed.run(spec_text(300), timeout=60, local_inputs={"rows": csv})
        assert second.job.state.value == "refused"
        assert "scored_rows" in second.job.reason
        assert _scored(fed) == (300.0, 0.0)
        entries = fed.agents["owner"].audit.entries()
        assert [e.kind for e in entries].count("he_inference.scored") == 1


def test_a_model_the_node_does_not_offer_on_the_dataset_is_refused(
    cancer: pd.DataFrame, cancer_model_file: Path, tmp_path: Path
) -> None:
    with _federation(cancer, cancer_model_file, tmp_path) as fed:
        view = fed.run(spec_text(5, model="other"), timeout=60)
        assert view.job.state.value == "refused"
        assert "offers no model 'other'" in view.job.reason


def test_a_model_file_not_in_the_documented_format_stops_the_node(
    cancer: pd.DataFrame, tmp_path: Path
) -> None:
    from cleanroom.errors import ConfigError
    from cleanroom.jobtypes.he_inference.service import ModelRegistry
    from cleanroom.jobtypes.hooks import NodeEnvironment

    class Datasets:
        def names(self) -> list[str]:
            return ["owner"]

    bad = tmp_path / "model.json"
    bad.write_text(json.dumps({"format": "pickle", "weights": [1, 2]}))
    env = NodeEnvironment(
        node="owner",
        data_dir=tmp_path,
        settings={"models": {"cancer": {"path": str(bad), "dataset": "owner"}}},
        audit=None,  # type: ignore[arg-type]
        datasets=Datasets(),  # type: ignore[arg-type]
        policy=None,  # type: ignore[arg-type]
        db=None,  # type: ignore[arg-type]
    )
    with pytest.raises(ConfigError, match=r"models.cancer\]: not a model"):
        ModelRegistry(env)


def test_a_two_layer_mlp_with_a_square_activation_scores_within_1e_2(
    cancer: pd.DataFrame,
) -> None:
    from protocols.models import InputSchema, ModelCard
    from protocols.models.train import fit_poly_mlp, standardiser

    x = features(cancer)
    mean, scale = standardiser(x)
    params = fit_poly_mlp(
        (x - mean) / scale, cancer["target"].to_numpy(), task="binary", hidden=4, seed=1
    )
    names = tuple(c for c in cancer.columns if c != "target")
    mlp = ModelAsset(
        kind="poly_mlp",
        model_id="bc-mlp",
        version="1",
        schema=InputSchema(names, mean, scale),
        card=ModelCard.of("breast cancer MLP"),
        parameters=params,
        link="logistic",
    )
    rows = cancer.drop(columns="target").head(200)
    coordinator, owner, buyer, _ = _parties(mlp, rows, 200)
    run = drive(coordinator, {"owner": owner}, buyer)
    assert run.opened is not None
    assert run.opened["parameter_set"].endswith("-d2")
    error = np.abs(np.array(run.opened["scores"]) - predict(mlp, rows.to_numpy()))
    assert error.max() < 1e-2


def test_rows_without_the_models_features_cancel_the_job_before_encryption(
    cancer: pd.DataFrame, cancer_model_file: Path, tmp_path: Path
) -> None:
    rows = cancer.drop(columns=["target", "worst symmetry"]).head(20)
    with _federation(cancer, cancer_model_file, tmp_path) as fed:
        with pytest.raises(ProtocolError, match="the rows lack 1"):
            fed.run(spec_text(20), timeout=60, local_inputs={"rows": rows})
        (view,) = fed.client.list_jobs()
        assert view.job.state.value == "cancelled"
        assert "the model takes 30 features" in view.job.reason
        assert _scored(fed)[0] == 0.0


class _Watched:
    """A party whose progress line is written down after every step it takes,
    as ``job submit --wait`` would show it between polls."""

    def __init__(self, party: Any) -> None:
        self._party = party
        self.seen: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._party, name)

    def _note(self, out: Any) -> Any:
        self.seen.append(self._party.progress().describe())
        return out

    def start(self) -> Any:
        return self._note(self._party.start())

    def receive(self, message: Any) -> Any:
        return self._note(self._party.receive(message))


def test_progress_shows_rows_encrypted_evaluated_and_decrypted(
    cancer: pd.DataFrame, cancer_model: ModelAsset
) -> None:
    rows = cancer.drop(columns="target").head(60)
    coordinator, owner, buyer, _ = _parties(cancer_model, rows, 60)
    watched_owner, watched_buyer = _Watched(owner), _Watched(buyer)
    drive(coordinator, {"owner": watched_owner}, watched_buyer)
    assert "60 of 60 rows encrypted" in " | ".join(watched_buyer.seen)
    assert watched_owner.seen[-1].endswith("60 of 60 rows evaluated")
    assert watched_buyer.seen[-1].endswith("60 of 60 rows decrypted")
    assert any("0 of 60 rows evaluated" in s for s in watched_owner.seen[:-1])
