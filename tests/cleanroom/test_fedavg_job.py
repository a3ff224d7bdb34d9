"""The ``fedavg`` job end to end in an in-process federation: accuracy against
centralised scikit-learn on breast_cancer across three hospitals, the registry
entry and the exported model, a canary search of the coordinator's store and
logs, DP charged up front, and every bad input and fault the issue names."""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from cleanroom import jobtypes
from cleanroom.errors import SpecError
from cleanroom.jobtypes.fedavg.card import load_model
from cleanroom.local import default_policy
from cleanroom.testing import InProcessFederation, wait_until
from protocols.fl.models import Model
from protocols.fl.standardise import Standardisation

NODES = ("h1", "h2", "h3")
CANARY = 13.3713371337


def _data() -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    d = load_breast_cancer()
    columns = [f"f{i}" for i in range(d.data.shape[1])]
    frame = pd.DataFrame(d.data, columns=columns)
    frame["y"] = d.target
    train, test = train_test_split(
        frame, test_size=0.25, random_state=0, stratify=frame["y"]
    )
    return train.reset_index(drop=True), test.reset_index(drop=True), columns


TRAIN, TEST, COLUMNS = _data()


def _bounds(frame: pd.DataFrame) -> dict[str, list[float]]:
    lo, hi = frame[COLUMNS].min(), frame[COLUMNS].max()
    pad = 0.1 * (hi - lo)
    return {c: [float(lo[c] - pad[c]), float(hi[c] + pad[c])] for c in COLUMNS}


def _split(frame: pd.DataFrame, parts: int, seed: int = 1) -> list[pd.DataFrame]:
    order = np.random.default_rng(seed).permutation(len(frame))
    return [frame.iloc[p].reset_index(drop=True) for p in np.array_split(order, parts)]


def _params(**extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "features": COLUMNS,
        "label": "y",
        "algorithm": "logistic",
        "classes": [0, 1],
        "feature_bounds": _bounds(TRAIN),
        "rounds": 100,
        "max_rows": 1000,
        "patience": None,
        "validation_fraction": 0.0,
        "l2": 1.0 / len(TRAIN),
        "local": {"batch_size": 16, "learning_rate": 0.5, "learning_rate_decay": 0.98},
    }
    params.update(extra)
    return params


def _spec(params: dict[str, Any], nodes: tuple[str, ...] = NODES, **extra: Any) -> str:
    return json.dumps(
        {
            "type": "fedavg",
            "inputs": [{"node": n, "dataset": n} for n in nodes],
            "purpose": "research",
            "params": params,
            **extra,
        }
    )


def _federated_predict(model_doc: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """The federated model's own prediction (clipped rows, standardised)."""
    model = Model(model_doc["task"], len(model_doc["features"]),
                  model_doc["n_classes"], model_doc["hidden"])  # fmt: skip
    s = model_doc["standardisation"]
    std = Standardisation(tuple(s["mean"]), tuple(s["scale"]), s["train_rows"],
                          s["val_rows"])  # fmt: skip
    bounds = np.array(model_doc["feature_bounds"])
    rows = np.clip(x, bounds[:, 0], bounds[:, 1])
    w = np.array(model_doc["weights"])
    return np.array(model_doc["classes"])[
        model.predict(w, std.features(rows)).astype(int)
    ]


def _central_accuracy() -> float:
    scaler = StandardScaler().fit(TRAIN[COLUMNS])
    clf = LogisticRegression(C=1.0, max_iter=10_000).fit(
        scaler.transform(TRAIN[COLUMNS]), TRAIN["y"]
    )
    return float(clf.score(scaler.transform(TEST[COLUMNS]), TEST["y"]))


def test_breast_cancer_across_three_hospitals(tmp_path: Path) -> None:
    frames = dict(zip(NODES, _split(TRAIN, 3), strict=True))
    frames["h2"].loc[0, "f0"] = CANARY  # inside the bounds
    url = f"sqlite:///{tmp_path / 'coordinator.db'}"
    with InProcessFederation(frames, store_url=url, directory=tmp_path / "fed") as fed:
        view = fed.run(_spec(_params()), timeout=240)
        assert view.job.state.value == "succeeded", view.job.reason
        job_id = view.job.job_id
        document = fed.client.result(job_id)
        result = document["result"]
        assert result["survivors"] == list(NODES)
        assert result["rounds_run"] == 101 and len(result["history"]) == 101
        model = result["model"]

        # Accuracy within one point of centralised scikit-learn on held-out rows.
        x_test = TEST[COLUMNS].to_numpy()
        federated = float(np.mean(_federated_predict(model, x_test) == TEST["y"]))
        assert abs(federated - _central_accuracy()) <= 0.01

        # The curve travels as an attachment, the card in the registry.
        attachments = fed.client._link.attachments(job_id)
        assert attachments["training-curve.png"].startswith(b"\x89PNG")
        card = json.loads(fed.client.model(job_id).card_json)
        assert [m.job_id for m in fed.client.models()] == [job_id]
        assert card["inputs"] == [{"node": n, "dataset": n} for n in NODES]
        assert card["columns"] == {"features": COLUMNS, "label": "y"}
        assert card["algorithm"] == "logistic" and card["rounds_run"] == 101
        assert set(card["row_buckets"]) == {f"{n}/{n}" for n in NODES}
        assert card["metrics"] == result["history"]
        assert card["epsilon"]["charged"] == 0.0
        signers = {r["node"] for r in card["audit"]["releases"]}
        assert signers == set(NODES) and card["audit"]["output_hash"]
        assert "weights" not in json.dumps(card["hyperparameters"])

        # The exported file (what `cleanroom model export` writes) predicts as
        # the federated model, loaded as a fitted scikit-learn estimator.
        exported = tmp_path / "model.json"
        exported.write_bytes(jobtypes.get("fedavg").export_model(result))
        estimator = load_model(exported)
        assert type(estimator).__name__ == "LogisticRegression"
        inside = np.clip(x_test, *np.array(model["feature_bounds"]).T)
        assert np.array_equal(
            estimator.predict(inside), _federated_predict(model, x_test)
        )

        # Canary: no raw feature, no weight in the coordinator's store or log.
        weights = model["weights"]
        fed.kill_coordinator()
    stored = (tmp_path / "coordinator.db").read_bytes()
    for path in (tmp_path / "fed" / "coordinator").iterdir():
        stored += path.read_bytes()
    needles = [repr(CANARY).encode(), struct.pack("<d", CANARY)]
    needles += [repr(w).encode() for w in weights[:5] if abs(w) > 1e-3]
    needles += [struct.pack("<d", w) for w in weights[:5]]
    for needle in needles:
        assert needle not in stored


def _failing(
    frames: dict[str, pd.DataFrame], spec: str, timeout: float = 120, **fed: Any
) -> str:
    with InProcessFederation(frames, **fed) as federation:
        view = federation.run(spec, timeout=timeout)
        assert view.job.state.value in ("failed", "refused"), view.job.state
        return view.job.reason


def test_differing_feature_schemas_are_refused_naming_the_input() -> None:
    frames = dict(zip(NODES, _split(TRAIN, 3), strict=True))
    frames["h3"] = frames["h3"].drop(columns=["f7"])
    with InProcessFederation(frames) as fed:
        with pytest.raises(SpecError, match=r"inputs\[2\].*'f7'"):
            fed.client.submit(_spec(_params()))


def test_a_label_missing_on_one_node_is_refused() -> None:
    frames = dict(zip(NODES, _split(TRAIN, 3), strict=True))
    frames["h1"] = frames["h1"].drop(columns=["y"])
    with InProcessFederation(frames) as fed:
        with pytest.raises(SpecError, match="no label column 'y'"):
            fed.client.submit(_spec(_params()))


def test_a_node_with_too_few_rows_ends_the_job() -> None:
    parts = _split(TRAIN, 3)
    frames = {"h1": parts[0], "h2": parts[1], "h3": parts[2].iloc[:30]}
    reason = _failing(
        frames,
        _spec(_params(rounds=2)),
        jobtypes={"fedavg": {"min_rows": 50}},
    )
    assert "fewer usable rows than its policy's minimum" in reason


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"rounds": 60}, "rounds 60 exceed this node's 50"),
        (
            {"local": {"learning_rate": 5.0}},
            "learning rate 5 exceeds this node's 1",
        ),
    ],
)
def test_rounds_and_learning_rate_outside_the_holders_bounds_are_refused(
    params: dict[str, Any], expected: str
) -> None:
    frames = dict(zip(NODES, _split(TRAIN, 3), strict=True))
    reason = _failing(
        frames,
        _spec(_params(**params)),
        jobtypes={"fedavg": {"max_rounds": 50, "max_learning_rate": 1.0}},
    )
    assert expected in reason


def test_a_holder_that_requires_dp_refuses_plain_training() -> None:
    frames = dict(zip(NODES, _split(TRAIN, 3), strict=True))
    reason = _failing(
        frames, _spec(_params(rounds=2)), jobtypes={"fedavg": {"require_dp": True}}
    )
    assert "this node trains only with dp" in reason


def test_divergence_ends_the_job_naming_the_round() -> None:
    frames = dict(zip(NODES, _split(TRAIN, 3), strict=True))
    params = _params(
        algorithm="linear",
        classes=None,
        label="f1",
        features=[c for c in COLUMNS if c != "f1"],
        feature_bounds={k: v for k, v in _bounds(TRAIN).items() if k != "f1"},
        target_bounds=[0.0, 50.0],
        rounds=10,
        l2=0.0,
        local={"batch_size": 8, "learning_rate": 500.0, "epochs": 3},
    )
    del params["classes"]
    reason = _failing(
        frames, _spec(params), jobtypes={"fedavg": {"max_learning_rate": 1000.0}}
    )
    assert "training diverged in round" in reason


def _stop_when(fed: InProcessFederation, job_id: str, node: str, round_: int) -> None:
    def at_round() -> bool:
        # The progress line names the round, its aggregated loss and metric.
        progress = fed.client.status(job_id).job.progress
        return f"round {round_}, loss " in progress

    wait_until(at_round, timeout=120)
    fed.stop_node(node)


def test_a_stalled_node_is_dropped_and_training_goes_on_above_threshold() -> None:
    nodes = ("h1", "h2", "h3", "h4")
    frames = dict(zip(nodes, _split(TRAIN, 4), strict=True))
    spec = _spec(_params(rounds=12, threshold=3), nodes, deadline_seconds=1.5)
    policy = default_policy("analyst")
    policy["default"]["min_inputs"] = 3  # type: ignore[index]
    with InProcessFederation(frames, policy=policy) as fed:
        job_id = fed.client.submit(spec).job.job_id
        stopper = threading.Thread(target=_stop_when, args=(fed, job_id, "h4", 3))
        stopper.start()
        view = fed.client.wait(job_id, timeout=240, poll=0.01)
        stopper.join()
        assert view.job.state.value == "succeeded", view.job.reason
        result = fed.client.result(job_id)["result"]
        assert result["survivors"] == ["h1", "h2", "h3"]
        assert result["dropped"] == ["h4"]
        assert result["rounds_run"] == 13


def test_a_stall_below_threshold_ends_the_job_with_the_reason() -> None:
    frames = dict(zip(NODES, _split(TRAIN, 3), strict=True))
    spec = _spec(_params(rounds=30), deadline_seconds=1.5)
    with InProcessFederation(frames) as fed:
        job_id = fed.client.submit(spec).job.job_id
        stopper = threading.Thread(target=_stop_when, args=(fed, job_id, "h3", 2))
        stopper.start()
        view = fed.client.wait(job_id, timeout=240, poll=0.01)
        stopper.join()
        assert view.job.state.value == "failed"
        assert "remain" in view.job.reason, view.job.reason


def test_dp_epsilon_is_charged_to_each_budget_before_the_job_runs() -> None:
    frames = dict(zip(NODES, _split(TRAIN, 3), strict=True))
    policy = default_policy("analyst")
    policy["default"]["dp"] = {"epsilon_budget": 2.0, "delta_budget": 1e-3}  # type: ignore[index]
    dp = {"epsilon": 1.0, "delta": 1e-5, "example_clip": 1.0}
    params = _params(rounds=8, dp=dp, server_learning_rate=2.0, loss_clip=5.0)
    params.pop("local")
    with InProcessFederation(frames, policy=policy) as fed:
        view = fed.run(_spec(params), timeout=240)
        assert view.job.state.value == "succeeded", view.job.reason
        result = fed.client.result(view.job.job_id)["result"]
        assert 0 < result["epsilon_spent"] <= 1.0
        card = json.loads(fed.client.model(view.job.job_id).card_json)
        assert 0.9 < card["epsilon"]["charged"] <= 1.0
        again = fed.run(_spec({**params, "dp": {**dp, "epsilon": 1.5}}), timeout=60)
        assert again.job.state.value == "refused"
        assert "epsilon" in again.job.reason


def _wine() -> tuple[dict[str, pd.DataFrame], list[str]]:
    from sklearn.datasets import load_wine

    d = load_wine()
    columns = [f"w{i}" for i in range(d.data.shape[1])]
    frame = pd.DataFrame(d.data, columns=columns)
    frame["y"] = d.target + 1  # labels 1, 2, 3: mapped to indices by the spec
    return dict(zip(NODES, _split(frame, 3), strict=True)), columns


def _exported_predicts_as_trained(
    frames: dict[str, pd.DataFrame], params: dict[str, Any], tmp_path: Path
) -> dict[str, Any]:
    with InProcessFederation(frames) as fed:
        view = fed.run(_spec(params), timeout=240)
        assert view.job.state.value == "succeeded", view.job.reason
        result = fed.client.result(view.job.job_id)["result"]
    path = tmp_path / "model.json"
    path.write_bytes(jobtypes.get("fedavg").export_model(result))
    model = result["model"]
    pooled = pd.concat(list(frames.values()))
    x = np.clip(
        pooled[params["features"]].to_numpy(), *np.array(model["feature_bounds"]).T
    )
    shape = Model(model["task"], len(model["features"]), model["n_classes"],
                  model["hidden"], model["activation"])  # fmt: skip
    s = model["standardisation"]
    std = Standardisation(
        tuple(s["mean"]),
        tuple(s["scale"]),
        s["train_rows"],
        s["val_rows"],
        s["target_mean"],
        s["target_scale"],
    )
    raw = shape.predict(np.array(model["weights"]), std.features(x))
    if model["task"] == "regression":
        expected = raw * std.target_scale + std.target_mean
        assert np.allclose(load_model(path).predict(x), expected, rtol=1e-9)
    else:
        expected = np.array(model["classes"])[raw.astype(int)]
        assert np.array_equal(load_model(path).predict(x), expected)
    return result


def test_multinomial_fedprox_on_wine_with_declared_labels(tmp_path: Path) -> None:
    frames, columns = _wine()
    pooled = pd.concat(list(frames.values()))
    lo, hi = pooled[columns].min(), pooled[columns].max()
    params = _params(
        features=columns,
        algorithm="multinomial",
        classes=[1, 2, 3],
        feature_bounds={c: [float(lo[c]) - 1, float(hi[c]) + 1] for c in columns},
        rounds=20,
        validation_fraction=0.2,
        patience=5,
        l2=1.0 / len(pooled),
        local={"batch_size": 16, "learning_rate": 0.5, "proximal_mu": 0.01},
    )
    result = _exported_predicts_as_trained(frames, params, tmp_path)
    assert result["history"][-1]["val_accuracy"] > 0.9


@pytest.mark.parametrize("algorithm", ["mlp", "linear"])
def test_mlp_and_linear_regression_export(algorithm: str, tmp_path: Path) -> None:
    frames = dict(zip(NODES, _split(TRAIN, 3), strict=True))
    params = _params(rounds=5, algorithm=algorithm, hidden=4)
    if algorithm == "linear":
        features = [c for c in COLUMNS if c != "f1"]
        params.update(
            label="f1",
            features=features,
            feature_bounds={k: v for k, v in _bounds(TRAIN).items() if k != "f1"},
            target_bounds=[5.0, 45.0],
            local={"batch_size": 16, "learning_rate": 0.05},
        )
        del params["classes"], params["hidden"]
    result = _exported_predicts_as_trained(frames, params, tmp_path)
    assert result["rounds_run"] == 6


def test_a_label_outside_the_declared_classes_ends_the_job() -> None:
    frames = dict(zip(NODES, _split(TRAIN, 3), strict=True))
    frames["h2"].loc[3, "y"] = 7
    reason = _failing(frames, _spec(_params(rounds=2)))
    assert "outside the declared classes" in reason


def test_a_node_killed_and_restarted_mid_training_stays_out() -> None:
    nodes = ("h1", "h2", "h3", "h4")
    frames = dict(zip(nodes, _split(TRAIN, 4), strict=True))
    spec = _spec(_params(rounds=12, threshold=3), nodes, deadline_seconds=1.5)
    policy = default_policy("analyst")
    policy["default"]["min_inputs"] = 3  # type: ignore[index]
    with InProcessFederation(frames, policy=policy) as fed:
        job_id = fed.client.submit(spec).job.job_id

        def restart() -> None:
            _stop_when(fed, job_id, "h4", 3)
            fed.start_node("h4", frames["h4"])

        restarter = threading.Thread(target=restart)
        restarter.start()
        view = fed.client.wait(job_id, timeout=240, poll=0.01)
        restarter.join()
        assert view.job.state.value == "succeeded", view.job.reason
        result = fed.client.result(job_id)["result"]
        assert result["survivors"] == ["h1", "h2", "h3"]
        assert result["rounds_run"] == 13


def test_model_cli_lists_shows_and_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from cleanroom.cli import models as model_cli
    from cleanroom.cli.main import cli

    frames = dict(zip(NODES, _split(TRAIN, 3), strict=True))
    with InProcessFederation(frames) as fed:
        view = fed.run(_spec(_params(rounds=3)), timeout=120)
        assert view.job.state.value == "succeeded", view.job.reason
        job_id = view.job.job_id
        reading = fed.client.result(job_id)["result"]
        # The CLI talks to this federation's coordinator through the memory link.
        monkeypatch.setattr(
            model_cli.Client, "from_federation", classmethod(lambda cls, p: fed.client)
        )
        monkeypatch.setattr(type(fed.client), "close", lambda self: None)
        runner = CliRunner()
        listed = runner.invoke(cli, ["model", "list", "--json"])
        assert listed.exit_code == 0, listed.output
        assert [c["job_id"] for c in json.loads(listed.output)] == [job_id]
        shown = runner.invoke(cli, ["model", "show", job_id])
        assert shown.exit_code == 0 and '"algorithm": "logistic"' in shown.output
        out = tmp_path / "m.json"
        exported = runner.invoke(cli, ["model", "export", job_id, "--out", str(out)])
        assert exported.exit_code == 0, exported.output
        missing = runner.invoke(cli, ["model", "show", "job-nope"])
        assert missing.exit_code != 0
    doc = json.loads(out.read_text())
    assert doc["weights"] == reading["model"]["weights"]
    x = np.clip(TEST[COLUMNS].to_numpy(), *np.array(doc["feature_bounds"]).T)
    assert np.array_equal(
        load_model(out).predict(x), _federated_predict(reading["model"], x)
    )


def test_early_stopping_ends_training_and_releases_the_best_round() -> None:
    frames = dict(zip(NODES, _split(TRAIN, 3), strict=True))
    params = _params(
        rounds=30, patience=2, min_improvement=1e6, validation_fraction=0.2
    )
    with InProcessFederation(frames) as fed:
        view = fed.run(_spec(params), timeout=120)
        assert view.job.state.value == "succeeded", view.job.reason
        result = fed.client.result(view.job.job_id)["result"]
    assert result["stop_reason"].startswith("early stop after round 3")
    assert result["rounds_run"] == 3 and result["best_round"] == 1


def test_params_are_checked_with_their_paths() -> None:
    from cleanroom.jobtypes.fedavg.params import parse

    base = _params()
    cases = [
        ({**base, "dp": {"epsilon": 1.0, "delta": 1e-5}}, "params.local"),
        ({**base, "algorithm": "forest"}, "params.algorithm"),
        ({**base, "classes": [0, 1, 2]}, "params.classes"),
        ({**base, "feature_bounds": {}}, "params.feature_bounds.f0"),
        ({**base, "label": "f0"}, "params.label"),
        ({**base, "learning_rate": 1}, "params.learning_rate"),
        ({**base, "local": {"learning_rate": -1.0}}, "params"),
    ]
    for raw, path in cases:
        with pytest.raises(SpecError) as caught:
            parse(raw, parties=3)
        assert caught.value.path == path, (path, caught.value)


def test_a_coordinator_restart_mid_training_resumes_and_finishes(
    tmp_path: Path,
) -> None:
    """The coordinator's party is deterministic in the messages it hears, so
    fedavg is resumable: a coordinator killed mid-training and restarted on the
    same store replays its journal and the job finishes with the nodes' model."""
    frames = dict(zip(NODES, _split(TRAIN, 3), strict=True))
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with InProcessFederation(frames, store_url=url) as fed:
        job_id = fed.client.submit(_spec(_params(rounds=40))).job.job_id
        wait_until(
            lambda: "round 5, loss " in fed.client.status(job_id).job.progress,
            timeout=120,
        )
        fed.kill_coordinator()
        fed.start_coordinator()
        view = fed.client.wait(job_id, timeout=240, poll=0.01)
        assert view.job.state.value == "succeeded", view.job.reason
        result = fed.client.result(job_id)["result"]
        assert result["survivors"] == list(NODES)
        assert result["rounds_run"] == 41
        assert [m["round"] for m in result["history"]] == list(range(1, 42))
        assert "job.resumed" in [e.kind for e in fed.client.events(job_id)]
    x_test = TEST[COLUMNS].to_numpy()
    accuracy = float(np.mean(_federated_predict(result["model"], x_test) == TEST["y"]))
    assert accuracy >= _central_accuracy() - 0.03
