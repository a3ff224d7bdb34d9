"""A curious analyst with a valid certificate, re-running issue 13's attacks on a
local federation (three nodes of 40, 55 and 70 rows, ``pid`` the id column,
minimum group size 5): each ends in a refusal or a DP-noised answer."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
from helpers.malicious import NODES, STATS, frames, policy, spec

from cleanroom.errors import QuotaExceeded, SpecError
from cleanroom.model import JobState
from cleanroom.testing import InProcessFederation
from node.state import JobStatus, LocalJob

TARGET = "h1-7"
"""The row the analyst wants: its age is made unique (200) on node h1."""
EVERYONE: list[dict[str, Any]] = [{"column": "age", "op": "<", "value": 1000}]
ALL_BUT_TARGET: list[dict[str, Any]] = [{"column": "age", "op": "<", "value": 150}]


def target_frames() -> dict[str, pd.DataFrame]:
    data = frames()
    data["h1"].loc[data["h1"].pid == TARGET, "age"] = 200
    return data


def federation(**rules: Any) -> InProcessFederation:
    return InProcessFederation(target_frames(), policy=policy(**rules), id_column="pid")


@pytest.fixture
def fed() -> Iterator[InProcessFederation]:
    with federation() as f:
        yield f


def result(fed: InProcessFederation, spec_yaml: str) -> dict[str, Any]:
    view = fed.run(spec_yaml)
    assert view.job.state == JobState.SUCCEEDED, view.job.reason
    found: dict[str, Any] = fed.client.result(view.job.job_id)["result"]
    return {**found, "job": view.job.job_id}


def counts(found: dict[str, Any]) -> dict[str, int | None]:
    return {c["node"]: c["count"] for c in found["counts"]}


def yaml_safe(text: str) -> str:
    """JSON writes 1e-06, which YAML 1.1 reads as a string; 1.0e-06 is a float."""
    return text.replace("1e-06", "1.0e-06")


def count_spec(where: list[dict[str, Any]], **params: Any) -> str:
    return yaml_safe(spec("count", {"where": where, **params}))


def refused(fed: InProcessFederation, spec_yaml: str) -> str:
    view = fed.run(spec_yaml)
    assert view.job.state == JobState.REFUSED, view.job.state
    return view.job.reason


# ------------------------------------------------------------- differencing --
def test_count_differencing_is_refused_on_the_node_that_holds_the_row(
    fed: InProcessFederation,
) -> None:
    first = counts(result(fed, count_spec(EVERYONE)))
    assert first == {"h1": 40, "h2": 55, "h3": 70}
    second = result(fed, count_spec(ALL_BUT_TARGET))
    # h1's two row sets are one row apart: its second count is withheld, shown
    # exactly as a small count is; the other nodes' identical sets pass.
    assert counts(second) == {"h1": None, "h2": 55, "h3": 70}
    assert second["total"] is None
    kinds = [e.kind for e in fed.agents["h1"].audit.entries_for_job(second["job"])]
    assert "differencing.refused" in kinds
    assert not any(
        e.kind == "differencing.refused"
        for e in fed.agents["h2"].audit.entries_for_job(second["job"])
    )


def test_a_binary_search_on_age_stops_at_the_first_small_step(
    fed: InProcessFederation,
) -> None:
    released = []
    for bound in (150, 100, 60, 59):
        where = [{"column": "age", "op": "<", "value": bound}]
        released.append(counts(result(fed, count_spec(where)))["h1"])
    # every consecutive pair that differs by 1..4 rows of h1 was refused
    values = [v for v in released if v is not None]
    assert all(abs(a - b) == 0 or abs(a - b) >= 5 for a in values for b in values)


def test_concurrent_differencing_pairs_are_checked_like_sequential_ones(
    fed: InProcessFederation,
) -> None:
    views = [fed.client.submit(count_spec(w)) for w in (EVERYONE, ALL_BUT_TARGET)]
    done = [fed.client.wait(v.job.job_id, timeout=30, poll=0.01) for v in views]
    assert all(v.job.state == JobState.SUCCEEDED for v in done)
    h1 = [counts(fed.client.result(v.job.job_id)["result"])["h1"] for v in done]
    assert sorted(h1, key=lambda v: v is None) in ([40, None], [39, None])


def test_the_differencing_record_survives_a_node_restart(
    fed: InProcessFederation,
) -> None:
    assert counts(result(fed, count_spec(EVERYONE)))["h1"] == 40
    fed.stop_node("h1")
    fed.start_node("h1", target_frames()["h1"])
    fed.wait_connected()
    assert counts(result(fed, count_spec(ALL_BUT_TARGET)))["h1"] is None


def test_secure_stats_sum_differencing_is_refused(fed: InProcessFederation) -> None:
    params = {**STATS, "max_rows": 1000}
    first = result(fed, spec("secure_stats", {**params, "where": EVERYONE}))
    assert "all" in first["groups"]
    second = result(fed, spec("secure_stats", {**params, "where": ALL_BUT_TARGET}))
    # h1 refuses the cell whose rows differ from the first by pid 7 alone
    assert second["groups"] == {} and second["suppressed_groups"] == ["all"]


def test_histogram_bins_that_isolate_a_row_are_withheld(
    fed: InProcessFederation,
) -> None:
    params = {
        **STATS,
        "stats": ["count", "histogram"],
        "bins": {"age": [0, 30, 60, 90, 150, 250]},  # the last bin: pid 7 alone
        "max_rows": 1000,
    }
    found = result(fed, spec("secure_stats", params))
    assert found["groups"]["all"]["histogram"]["age"]["counts"][-1] is None


# --------------------------------------------------------------- required DP --
DP_RULES: dict[str, Any] = {
    "dp": {
        "required": True,
        "epsilon_per_job": {"min": 0.1, "max": 1.0},
        "epsilon_budget": 1.0,
        "delta_budget": 1e-4,
    }
}


def test_a_dp_required_dataset_refuses_exact_and_out_of_bounds_jobs() -> None:
    with federation(**DP_RULES) as fed:
        reason = refused(fed, count_spec(EVERYONE))
        assert "releases only differentially private results" in reason
        reason = refused(fed, count_spec(EVERYONE, dp={"epsilon": 5.0, "delta": 1e-6}))
        assert "outside this dataset's per-job bounds [0.1, 1]" in reason
        reason = refused(fed, spec("secure_stats", {**STATS, "max_rows": 1000}))
        assert "differentially private" in reason
        noisy = result(fed, count_spec(EVERYONE, dp={"epsilon": 0.5, "delta": 1e-6}))
        for row in noisy["counts"]:
            assert row["noise_std"] > 1
        assert noisy["dp"]["total_noise_std"] == pytest.approx(
            sum(r["noise_std"] ** 2 for r in noisy["counts"]) ** 0.5
        )
        result(fed, count_spec(EVERYONE, dp={"epsilon": 0.5, "delta": 1e-6}))
        # the budget is spent: the next DP job is refused, and exact ones still are
        reason = refused(fed, count_spec(EVERYONE, dp={"epsilon": 0.5, "delta": 1e-6}))
        assert "privacy budget 'epsilon'" in reason


def test_switching_dp_on_keeps_the_budget_spent_before() -> None:
    with federation(dp={"epsilon_budget": 1.0}) as fed:
        result(fed, count_spec(EVERYONE, dp={"epsilon": 0.6, "delta": 1e-6}))
        assert result(fed, count_spec(EVERYONE))["total"] == 165  # exact allowed
        fed.policy = policy(**DP_RULES)
        for name in NODES:
            fed.stop_node(name)
            fed.start_node(name, target_frames()[name])
        fed.wait_connected()
        assert "differentially private" in refused(fed, count_spec(EVERYONE))
        reason = refused(fed, count_spec(EVERYONE, dp={"epsilon": 0.6, "delta": 1e-6}))
        assert "0.6 used or reserved" in reason


def test_dp_secure_stats_on_a_dp_required_dataset_reports_its_noise() -> None:
    with federation(**DP_RULES) as fed:
        params = {**STATS, "max_rows": 1000, "dp": {"epsilon": 1.0, "delta": 1e-6}}
        found = result(fed, yaml_safe(spec("secure_stats", params)))
        cell = found["groups"]["all"]
        assert cell["noise"]["std"]["sum"]["income"] > 0
        assert found["dp"]["epsilon"] == 1.0


# ------------------------------------------------------- oracle-free errors --
def test_out_of_range_error_is_gone_and_no_reason_names_a_node(
    fed: InProcessFederation,
) -> None:
    params = {**STATS, "out_of_range": "error", "max_rows": 1000}
    with pytest.raises(SpecError) as err:
        fed.client.submit(spec("secure_stats", params))
    assert err.value.path == "params.out_of_range"
    assert not any(node in str(err.value) for node in NODES)
    # clipped instead: the cell of one row is suppressed, nothing fails
    where = [{"column": "age", "op": ">", "value": 150}]
    found = result(fed, spec("secure_stats", {**STATS, "where": where}))
    assert found["suppressed_groups"] == ["all"]


def test_max_rows_is_answered_with_the_bucket_only(fed: InProcessFederation) -> None:
    with pytest.raises(SpecError) as err:
        fed.client.submit(spec("secure_stats", {**STATS, "max_rows": 50}))
    assert err.value.path == "params.max_rows"
    assert "<100" in str(err.value) or "100" in str(err.value)
    assert not any(str(n) in str(err.value) for n in (40, 55, 70))


# ---------------------------------------------------------- resource limits --
def test_a_node_refuses_more_concurrent_jobs_than_its_policy_allows() -> None:
    with federation(max_concurrent_jobs=1) as fed:
        now = time.time()
        stuck = LocalJob(
            "j-stuck", "analyst", "count", "h2", "research", "", JobStatus.RUNNING,
            "", "policy", True, now, now, "lab",
        )  # fmt: skip
        fed.agents["h2"].state.record(stuck)
        reason = refused(fed, count_spec(EVERYONE))
        assert "already has 1 jobs approved or running on 'h2'" in reason


def test_a_node_refuses_a_job_beyond_its_memory_limit() -> None:
    with federation(max_job_memory=64 * 2**20, max_cells=10**6) as fed:
        params = {
            **STATS,
            "stats": ["count", "histogram"],
            "bins": 10_000,
            "group_by": "age",
            "groups": list(range(18, 90)),  # 72 groups x 20,001 cells
            "max_rows": 1000,
        }
        assert "MiB per job" in refused(fed, spec("secure_stats", params))


def test_max_cells_comes_from_the_holders_policy() -> None:
    with federation(max_cells=10) as fed:
        params = {**STATS, "stats": ["histogram"], "bins": 20, "max_rows": 1000}
        assert "allows at most 10" in refused(fed, spec("secure_stats", params))


def test_the_coordinator_caps_an_analysts_unfinished_jobs() -> None:
    with federation(approval="manual") as fed:
        fed.state.max_jobs_per_analyst = 2
        for bound in (10, 20):
            fed.client.submit(
                count_spec([{"column": "age", "op": "<", "value": bound}])
            )
        with pytest.raises(QuotaExceeded, match="at most 2 per analyst"):
            fed.client.submit(count_spec(EVERYONE))


def test_duplicate_and_deep_yaml_is_refused_with_a_path(
    fed: InProcessFederation,
) -> None:
    text = json.dumps(json.loads(count_spec(EVERYONE)))
    duplicated = text.replace('"op": "<"', '"op": "<", "op": ">"')
    with pytest.raises(SpecError) as err:
        fed.client.submit(duplicated)
    assert err.value.path == "params.where[0].op"
    deep = text[:-1] + ', "description": ' + "[" * 3000 + "]" * 3000 + "}"
    with pytest.raises(SpecError, match="nested deeper"):
        fed.client.submit(deep)


def test_ten_thousand_bins_over_a_small_cell_are_refused_by_the_holders_cap(
    fed: InProcessFederation,
) -> None:
    """The issue's attack: a histogram of 10,000 bins gave every income in a cell."""
    where = [{"column": "age", "op": "<", "value": 25}]
    params = {**STATS, "stats": ["histogram"], "bins": {"income": 10_000}}
    reason = refused(fed, spec("secure_stats", {**params, "where": where}))
    assert "10001 cells" in reason and "allows at most 1000" in reason
