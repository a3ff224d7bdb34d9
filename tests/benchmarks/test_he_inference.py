"""The CKKS inference benchmark's workload and single run (not the timings)."""

from __future__ import annotations

import numpy as np

from benchmarks.bench_he_inference import BYTES_GOAL, FEATURES, run_once, workload
from benchmarks.runner import SUITE_MODULES
from protocols.ckks import plan_inference
from protocols.models import predict


def test_one_run_scores_correctly_and_counts_every_payload_byte() -> None:
    model, x = workload(50)
    assert x.shape == (50, FEATURES)
    assert np.abs(model.schema.standardise(x)).max() <= 6.0 + 1e-9
    config = plan_inference(model, session_id="t", buyer="b", owner="o", row_count=50)
    assert config.params.name == "ckks-8192-d1"
    walls, cpu, total, sizes, scores = run_once(config, model, x)
    assert np.abs(scores - predict(model, x)).max() <= 1e-3
    assert len(walls) == 4 and walls[3] >= max(walls[:3]) and cpu > 0
    assert total == sum(sizes.values())
    assert set(sizes) == {"ckks/context", "ckks/features", "ckks/scores"}


def test_the_bytes_goal_is_three_kilobytes_per_row_and_registered() -> None:
    assert BYTES_GOAL.value * FEATURES * 8 == 3072
    assert BYTES_GOAL.met(3072 / (FEATURES * 8)) and not BYTES_GOAL.met(13.0)
    assert "benchmarks.bench_he_inference" in SUITE_MODULES
