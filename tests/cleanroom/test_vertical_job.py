"""``vertical_logreg`` and ``vertical_predict`` end to end in an in-process
federation: a bank (label + 10 features) and a telecom (20 features) hold
breast_cancer split by columns, 20% of each side's customers unknown to the other.
2048-bit keys because the nodes' settings explicitly allow them (tests only)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cleanroom.demo.vertical import (
    BANK,
    LABEL,
    TELECOM,
    VerticalSplit,
    centralised_auc,
    predict_spec,
    split,
    train_spec,
)
from cleanroom.jobtypes.vertical.curve import curve_png
from cleanroom.serde import JobView
from cleanroom.testing import InProcessFederation, wait_until

LEGACY = {"allow_legacy_2048": True}
SETTINGS = {"vertical_logreg": LEGACY, "vertical_predict": LEGACY}
BANK_CANARY, TELECOM_CANARY = 13.579135791, 1.2345678901


@pytest.fixture(scope="module")
def data() -> VerticalSplit:
    data = split()
    target = data.common[7]
    data.bank.loc[data.bank.customer_id == target, "f00"] = BANK_CANARY
    data.telecom.loc[data.telecom.customer_id == target, "f10"] = TELECOM_CANARY
    return data


@pytest.fixture(scope="module")
def progress_seen() -> list[tuple[str, str]]:
    """(the job's progress as the coordinator shows it, the analyst's own party's
    progress) at every poll while the training job ran, as ``--wait`` prints them."""
    return []


@pytest.fixture(scope="module")
def trained(
    data: VerticalSplit,
    tmp_path_factory: pytest.TempPathFactory,
    progress_seen: list[tuple[str, str]],
) -> Iterator[tuple[InProcessFederation, str, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("vertical")
    with InProcessFederation(
        {BANK: data.bank, TELECOM: data.telecom},
        id_column="customer_id",
        jobtypes=SETTINGS,
        directory=root,
        store_url=f"sqlite:///{root}/coordinator.db",
    ) as fed:
        client = fed.client
        job = client.submit(train_spec(data, key_bits=2048)).job.job_id

        def seen(view: JobView) -> None:
            if not view.job.state.terminal:
                mine = client.session(job).progress().describe()
                progress_seen.append((str(view.job.progress), mine))

        view = client.wait(job, timeout=600, poll=0.01, on_update=seen)
        assert view.job.state.value == "succeeded", view.job.reason
        result = client.result(job)["result"]
        yield fed, job, result


def _part(fed: InProcessFederation, node: str, job: str) -> dict[str, Any]:
    assert fed.directory is not None
    path = fed.directory / "nodes" / node / "data" / "vertical" / f"{job}.json"
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def test_the_analyst_gets_card_curve_and_metrics_not_weights(trained) -> None:
    _, _, result = trained
    card = result["model_card"]
    assert card["guest"] == BANK and card["hosts"] == [TELECOM]
    assert set(card["inputs"]) == {BANK, TELECOM}
    assert card["aligned_rows"] == "100-1k"  # a bucket, not the exact overlap
    assert 1 <= len(result["training_curve"]) == card["epochs_run"] <= 12
    assert result["metrics"]["validation_auc"] > 0.95
    png = base64.b64decode(result["training_curve_png"])
    assert (
        png.startswith(b"\x89PNG")
        and curve_png(result["training_curve"]) == (result["training_curve_png"])
    )
    text = json.dumps(result)
    assert "weights" not in text and "intercept" not in text


def test_the_analyst_sees_epoch_and_losses_while_training_the_relay_does_not(
    trained, progress_seen
) -> None:
    _, _, result = trained
    notes = {
        f"epoch {p['epoch']} of at most 12: training loss {p['train_loss']:.4f}, "
        f"validation loss {p['validation_loss']:.4f}"
        for p in result["training_curve"]
    }
    shown = {mine for _, mine in progress_seen if "loss" in mine}
    assert shown, progress_seen[-5:]
    assert all(any(m.endswith(n) for n in notes) for m in shown), shown
    # The coordinator's own account: the epoch and the guest's batch, no loss.
    assert any(
        "of 12" in job and "bank:" in job and "batches" in job
        for job, _ in progress_seen
    )
    assert not any("loss" in job for job, _ in progress_seen)


def test_split_model_auc_is_within_001_of_centralised_sklearn(trained, data) -> None:
    fed, job, _ = trained
    view = fed.run(predict_spec(job, data.common), timeout=120)
    assert view.job.state.value == "succeeded", view.job.reason
    scores = fed.client.result(view.job.job_id)["result"]["scores"]
    y = data.joined()[LABEL].to_numpy()
    split_auc = roc_auc_score(y, [scores[i] for i in data.common])
    assert abs(split_auc - centralised_auc(data)) <= 0.01


def test_vertical_predict_matches_the_joined_model_within_1e3(trained, data) -> None:
    fed, job, _ = trained
    guest, host = _part(fed, BANK, job), _part(fed, TELECOM, job)
    ids = [*data.common[:50], "nobody"]
    view = fed.run(predict_spec(job, ids), timeout=120)
    result = fed.client.result(view.job.job_id)["result"]
    assert result["unscored"] == 1 and "nobody" not in result["scores"]
    joined = data.joined().loc[ids[:-1]]
    z = np.full(len(joined), guest["intercept"])
    for part in (guest, host):
        x = (joined[part["columns"]].to_numpy() - part["mean"]) / part["scale"]
        z += np.clip(x, -8, 8) @ np.array(part["weights"])
    expected = 1 / (1 + np.exp(-z))
    got = np.array([result["scores"][i] for i in ids[:-1]])
    assert np.abs(got - expected).max() <= 1e-3


def _files(root: Path, skip: str = "") -> bytes:
    return b"".join(
        p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and (not skip or p.name != skip)
    )


def test_no_party_stores_another_partys_features_or_weights(trained, data) -> None:
    fed, job, _ = trained
    assert fed.directory is not None
    nodes = fed.directory / "nodes"
    bank_files = _files(nodes / BANK, skip=f"{BANK}.csv")
    telecom_files = _files(nodes / TELECOM, skip=f"{TELECOM}.csv")
    coordinator = (
        _files(fed.directory / "coordinator")
        + (fed.directory / "coordinator.db").read_bytes()
    )
    # The canaries are where they belong, so the search can find them.
    assert repr(BANK_CANARY).encode() in (nodes / BANK / f"{BANK}.csv").read_bytes()

    def needles(value: float) -> list[bytes]:
        return [repr(value).encode(), np.float64(value).tobytes()]

    for needle in needles(TELECOM_CANARY):
        assert needle not in bank_files and needle not in coordinator
    for needle in needles(BANK_CANARY):
        assert needle not in telecom_files and needle not in coordinator
    # Neither side's clear weights (the sums of its clear gradients) reach the other.
    for node, other in ((BANK, telecom_files), (TELECOM, bank_files)):
        for w in _part(fed, node, job)["weights"]:
            for needle in needles(w):
                assert needle not in other and needle not in coordinator
    # Labels: the telecom's node holds no column of labels in the aligned order.
    labels = data.joined()[LABEL].to_numpy(dtype=np.float64)
    assert labels.tobytes() not in telecom_files


def test_a_host_dropping_mid_training_ends_the_job_with_nothing_released(
    data: VerticalSplit,
) -> None:
    with InProcessFederation(
        {BANK: data.bank, TELECOM: data.telecom},
        id_column="customer_id",
        jobtypes=SETTINGS,
        node_timeout=1.0,
    ) as fed:
        spec = train_spec(data, key_bits=2048, epochs=50).replace(
            "patience: 3", "patience: 50"
        )
        job = fed.client.submit(spec).job.job_id
        wait_until(lambda: "round 2" in fed.client.status(job).job.progress, 120)
        fed.stop_node(TELECOM)
        view = fed.client.wait(job, timeout=60, poll=0.05)
        assert view.job.state.value == "failed"
        assert TELECOM in view.job.reason
        assert fed.directory is not None
        models = fed.directory / "nodes" / BANK / "data" / "vertical"
        assert not models.exists() or not list(models.glob("*.json"))
        with pytest.raises(Exception):
            fed.client.result(job)


def test_an_overlap_below_the_minimum_fails_without_saying_its_size(
    data: VerticalSplit,
) -> None:
    settings = {k: {**v, "min_overlap": 400} for k, v in SETTINGS.items()}
    with InProcessFederation(
        {BANK: data.bank, TELECOM: data.telecom},
        id_column="customer_id",
        jobtypes=settings,
    ) as fed:
        view = fed.run(train_spec(data, key_bits=2048), timeout=120)
        assert view.job.state.value == "failed"
        assert "below this node's minimum" in view.job.reason
        assert str(len(data.common)) not in view.job.reason
