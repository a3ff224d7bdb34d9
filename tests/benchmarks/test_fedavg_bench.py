"""The federated-training benchmark's set-up: its plans, and a tiny local round."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.bench_fedavg import _bounds, _dataset, _local_round, _params
from benchmarks.registry import Context
from protocols.fl.plan import FedAvgPlan


def test_plans_match_the_table() -> None:
    x_train, _, y_train, _ = _dataset("wine")
    plain = FedAvgPlan.create(_params(x_train, 3, None))
    assert plain.privacy is None and plain.params.rounds == 100
    assert plain.params.l2 == pytest.approx(1 / len(y_train))
    private = FedAvgPlan.create(_params(x_train, 3, 1.0))
    assert private.privacy is not None
    assert private.privacy.epsilon_total <= 1.0
    assert private.privacy.aggregations == 21


def test_bounds_contain_every_training_row_with_margin() -> None:
    x_train, _, _, _ = _dataset("breast_cancer")
    bounds = np.array(_bounds(x_train))
    assert np.all(x_train > bounds[:, 0]) and np.all(x_train < bounds[:, 1])


@pytest.mark.parametrize("dp", [False, True])
def test_local_round_measures_against_its_baseline(dp: bool, tmp_path: Path) -> None:
    ctx = Context("fedavg_local_round", "quick", 1, tmp_path, log=lambda _: None)
    m = _local_round(ctx, 300, 5, 0, dp)
    assert m.baseline is not None and m.measured.n == 1 and m.params["dp"] is dp
    assert m.details["n_params"] == 6


def test_secagg_round_measures_against_plain_aggregation(tmp_path: Path) -> None:
    from benchmarks.bench_fedavg import _secagg_round

    ctx = Context("fedavg_secagg_round", "quick", 1, tmp_path, log=lambda _: None)
    m = _secagg_round(ctx, 200, 4, 0)
    assert m.baseline is not None and m.measured.n == 1
    assert m.baseline_name == "plain aggregation, same round"
    assert m.details["vector_length"] > m.details["n_params"]


def test_scale_drives_the_real_job_and_counts_per_node(tmp_path: Path) -> None:
    from benchmarks.bench_fedavg import _scale

    ctx = Context("fedavg_scale", "quick", 1, tmp_path, log=lambda _: None)
    cpu, traffic = list(_scale(ctx, 6, 4, 1))
    assert cpu.metric == "cpu" and cpu.measured.n == 6
    assert min(cpu.measured.samples) > 0
    assert cpu.details["d"] == 99 * 4 + 5 and cpu.details["aggregations"] == 3
    # Masked, base64 and framed: more than the raw update up and raw sum down.
    assert traffic.baseline is not None
    assert traffic.measured.median > traffic.baseline.median
