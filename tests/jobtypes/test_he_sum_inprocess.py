"""he_sum end to end in an in-process federation: real nodes, coordinator and
analyst client; the coordinator's store and logs hold no plaintext value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cleanroom.local import default_policy
from cleanroom.testing import ANALYST_NAME, InProcessFederation, wait_until
from tests.jobtypes.test_he_sum import spec_text

CANARY = 7777.125
"""A value no ciphertext, digest or id would spell out by chance."""


def _frames() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(11)
    out = {}
    for i, node in enumerate(("a", "b", "c")):
        rows = 30 + 10 * i
        out[node] = pd.DataFrame(
            {
                "age": rng.integers(18, 90, rows),
                "spend": rng.normal(100.0, 30.0, rows).round(3),
            }
        )
    out["a"].loc[0, "spend"] = CANARY
    return out


def _bytes_under(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_he_sum_end_to_end_matches_numpy_and_leaves_no_plaintext(
    tmp_path: Path,
) -> None:
    frames = _frames()
    url = f"sqlite:///{tmp_path / 'coordinator.db'}"
    with InProcessFederation(frames, store_url=url, directory=tmp_path / "f") as fed:
        view = fed.run(
            spec_text({"columns": ["age", "spend"]}, named=True), timeout=120
        )
        assert view.job.state.value == "succeeded", view.job.reason
        result = fed.client.result(view.job.job_id)["result"]
        pool = pd.concat(frames.values())
        (cell,) = result["cells"]
        assert cell["count"] == len(pool)
        step = result["fixed_point_step"]
        for column in ("age", "spend"):
            assert abs(cell["sum"][column] - pool[column].sum()) <= 3 * step
        total = f"{pool['spend'].sum():.3f}".encode()
        stored = (
            _bytes_under(tmp_path / "f" / "coordinator")
            + (tmp_path / "coordinator.db").read_bytes()
        )
        for canary in (b"7777.125", total, f'"count": {len(pool)}'.encode()):
            assert canary not in stored


def test_a_node_stopping_mid_job_is_left_out_when_every_policy_allows(
    tmp_path: Path,
) -> None:
    frames = _frames()
    rules = {**default_policy(ANALYST_NAME)["default"], "min_inputs": 2}  # type: ignore[dict-item]
    with InProcessFederation(
        frames, policy={"default": rules}, directory=tmp_path / "f", node_timeout=1.0
    ) as fed:
        spec = spec_text({"columns": ["age"], "min_inputs": 2}, named=True)
        job = fed.client.submit(spec).job.job_id
        wait_until(lambda: fed.client.status(job).job.state.value == "running")
        fed.stop_node("c")  # before the analyst's 3072-bit key is ready
        view = fed.client.wait(job, timeout=120, poll=0.01)
        assert view.job.state.value == "succeeded", view.job.reason
        result = fed.client.result(job)["result"]
        assert result["contributors"] == ["a", "b"]
        assert result["dropped"] == ["c"]
        assert result["cells"][0]["count"] == len(frames["a"]) + len(frames["b"])


def test_a_dataset_that_requires_dp_accepts_he_sum_only_with_dp(
    tmp_path: Path,
) -> None:
    rules = {
        **default_policy(ANALYST_NAME)["default"],  # type: ignore[dict-item]
        "dp": {"required": True, "epsilon_budget": 5.0},
    }
    with InProcessFederation(
        _frames(), policy={"default": rules}, directory=tmp_path / "f"
    ) as fed:
        exact = fed.run(spec_text({"columns": ["age"]}, named=True), timeout=60)
        assert exact.job.state.value == "refused"
        assert "differentially private" in exact.job.reason
        noisy = spec_text(
            {
                "columns": ["age"],
                "clip": {"age": [0, 100]},
                "dp": {"epsilon": 1.0, "delta": 1e-6},
            },
            named=True,
        )
        view = fed.run(noisy, timeout=120)
        assert view.job.state.value == "succeeded", view.job.reason
        (cell,) = fed.client.result(view.job.job_id)["result"]["cells"]
        assert cell["noise_std"]["count"] > 0
