"""``vertical_logreg`` with the CKKS gradient over gRPC: guest, host and coordinator
as separate processes, the CKKS context, ciphertexts and flooded values relayed in
sealed envelopes; the released model card names the CKKS parameter set."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_vertical import (
    _declare_ids,
    _train_spec,
    _wait_for_ids,
    _write_split,
)
from benchmarks.federation import LocalFederation, write_policy
from cleanroom import local
from cleanroom.client import Client

pytestmark = pytest.mark.integration


def test_vertical_training_with_ckks_over_grpc(tmp_path: Path) -> None:
    datasets = _write_split(tmp_path / "data", 1_500)
    policy = write_policy(tmp_path / "policy.yaml", ["vertical_logreg"])
    fed_dir = tmp_path / "federation"
    fed = local.up(workdir=fed_dir, nodes=datasets, policy=policy)
    try:
        _declare_ids(fed, fed_dir, [n for n, _ in datasets])
        with Client.from_federation(fed_dir / "federation.json") as client:
            _wait_for_ids(client)
            run = LocalFederation(fed, client, [n for n, _ in datasets])
            result = run.run(_train_spec(2, "ckks"), timeout=300).result
    finally:
        local.down(fed_dir)
    card = result["model_card"]
    assert card["gradient"] == "ckks"
    assert card["encryption"]["name"] == "ckks-16384-d1"
    assert card["epochs_run"] == 2
    # The synthetic labels follow a logistic model of all 30 features.
    assert result["metrics"]["train_auc"] > 0.8
