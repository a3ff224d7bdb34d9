"""Tests for the node policy engine: strict parsing, every rule, decisions, versions."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from cleanroom.errors import ConfigError, PolicyRefusal, SpecError
from node.policy import (
    DatasetPolicy,
    JobRequest,
    Outcome,
    PolicySet,
    QuotaLimit,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "policy.md"
NOW = datetime(2026, 6, 1, tzinfo=UTC).timestamp()

OPEN: dict[str, Any] = {
    "analysts": ["alice", "carol"],
    "organisations": ["uni-x"],
    "job_types": ["count", "secure_stats"],
    "purposes": ["research", "credit-scoring"],
    "columns": {"allow": ["age", "income", "ssn"], "forbid": ["ssn"]},
    "approval": "auto",
    "dp": {"epsilon_budget": 1.0, "delta_budget": 1e-6},
    "quotas": {"jobs": {"per_day": 10, "total": 100}, "verified_records": {}},
    "valid": {"from": "2026-01-01T00:00:00Z", "until": "2027-01-01T00:00:00+00:00"},
}


def rules(**changes: Any) -> dict[str, Any]:
    m = copy.deepcopy(OPEN)
    for key, value in changes.items():
        if value is None:
            m.pop(key, None)
        else:
            m[key] = value
    return m


def request(**changes: Any) -> JobRequest:
    fields: dict[str, Any] = {
        "job_id": "job-1",
        "analyst": "alice",
        "organisation": "uni-x",
        "job_type": "count",
        "dataset": "patients",
        "columns": frozenset({"age"}),
        "purpose": "research",
    }
    fields.update(changes)
    return JobRequest(**fields)


def decide(m: dict[str, Any], req: JobRequest | None = None, now: float = NOW):
    return PolicySet.from_mapping({"patients": m}).evaluate(req or request(), now=now)


def config_error(m: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        PolicySet.from_mapping(m)
    return str(caught.value)


# -- parsing -----------------------------------------------------------------


def test_open_policy_parses_and_exposes_limits() -> None:
    policy = PolicySet.from_mapping({"patients": OPEN}).for_dataset("patients")
    assert policy.quota_limits() == {
        "jobs": QuotaLimit(per_day=10, total=100),
        "verified_records": QuotaLimit(),
    }
    assert policy.epsilon_budget == 1.0
    assert policy.delta_budget == 1e-6
    assert policy.min_group_size == 5


def test_wrong_type_names_the_exact_path() -> None:
    m = rules(quotas={"jobs": {"per_day": "ten"}})
    assert config_error({"patients": m}) == (
        "policy.patients.quotas.jobs.per_day: expected a non-negative integer, "
        "got 'ten'"
    )


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"colums": {}}, "policy.patients.colums: unknown key"),
        ({"columns": {"allow": "*", "deny": []}}, "policy.patients.columns.deny"),
        ({"quotas": {"rows": {"daily": 5}}}, "policy.patients.quotas.rows.daily"),
        ({"dp": {"epsilon": 1}}, "policy.patients.dp.epsilon: unknown key"),
        ({"valid": {"to": "2026-01-01T00:00:00Z"}}, "policy.patients.valid.to"),
        ({"manual_for": {"datasets": []}}, "policy.patients.manual_for.datasets"),
    ],
)
def test_unknown_keys_are_refused_with_their_path(
    change: dict[str, Any], path: str
) -> None:
    assert config_error({"patients": rules(**change)}).startswith(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"analysts": "alice"}, "policy.patients.analysts: expected a list of names"),
        ({"analysts": ["alice", 3]}, "policy.patients.analysts[1]: expected a non-em"),
        ({"job_types": None, "purposes": 5}, "policy.patients.purposes: expected"),
        ({"columns": {"forbid": "*"}}, "policy.patients.columns.forbid: expected"),
        (
            {"min_group_size": 0},
            "policy.patients.min_group_size: expected an integer >= 1",
        ),
        ({"min_group_size": True}, "policy.patients.min_group_size: expected"),
        (
            {"approval": "maybe"},
            "policy.patients.approval: expected 'auto' or 'manual'",
        ),
        ({"quotas": {"jobs": {"total": 2.5}}}, "policy.patients.quotas.jobs.total:"),
        (
            {"quotas": {"epsilon": {"total": -1}}},
            "policy.patients.quotas.epsilon.total",
        ),
        ({"quotas": {"cpu": 5}}, "policy.patients.quotas.cpu: expected a mapping"),
        ({"dp": {"epsilon_budget": "lots"}}, "policy.patients.dp.epsilon_budget: exp"),
        ({"dp": {"epsilon_budget": float("inf")}}, "policy.patients.dp.epsilon_budget"),
        ({"columns": ["age"]}, "policy.patients.columns: expected a mapping"),
    ],
)
def test_wrong_types_are_refused_with_their_path(
    change: dict[str, Any], message: str
) -> None:
    assert config_error({"patients": rules(**change)}).startswith(message)


@pytest.mark.parametrize(
    "when", ["2026-13-01T00:00:00Z", "next tuesday", "2026-01-01T00:00:00", 20260101]
)
def test_bad_or_naive_timestamps_are_refused(when: Any) -> None:
    message = config_error({"patients": rules(valid={"until": when})})
    assert message.startswith(
        "policy.patients.valid.until: expected an ISO-8601 timestamp with a timezone"
    )
    assert repr(when) in message


def test_validity_window_must_not_be_empty() -> None:
    window = {"from": "2027-01-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}
    assert "policy.patients.valid: 'from' must be before 'until'" in config_error(
        {"patients": rules(valid=window)}
    )


def test_manual_for_only_applies_to_auto_approval() -> None:
    m = rules(approval="manual", manual_for={"job_types": ["count"]})
    assert config_error({"patients": m}).startswith("policy.patients.manual_for:")


def test_a_dataset_entry_must_be_a_mapping() -> None:
    assert config_error({"patients": ["alice"]}) == (
        "policy.patients: expected a mapping, got ['alice']"
    )
    assert config_error(["patients"]).startswith("policy: expected a mapping")


def test_load_reads_yaml_and_keeps_timestamps_strict(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"patients": OPEN}))
    assert (
        PolicySet.load(path).version
        == PolicySet.from_mapping({"patients": OPEN}).version
    )
    path.write_text("patients:\n  valid:\n    until: 2026-01-01\n")
    with pytest.raises(ConfigError, match=r"valid\.until: .*got '2026-01-01'"):
        PolicySet.load(path)
    path.write_text("patients: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        PolicySet.load(path)
    path.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        PolicySet.load(path)
    with pytest.raises(ConfigError, match="cannot read policy file"):
        PolicySet.load(tmp_path / "missing.yaml")


def test_yaml_datetimes_from_safe_load_are_accepted() -> None:
    # Other loaders (yaml.safe_load) turn unquoted timestamps into datetimes.
    m = yaml.safe_load("patients:\n  valid:\n    until: 2026-01-01T00:00:00Z\n")
    policy = PolicySet.from_mapping(m).for_dataset("patients")
    assert policy.valid_until == datetime(2026, 1, 1, tzinfo=UTC)


def test_the_documented_example_parses() -> None:
    text = DOCS.read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert block is not None
    path_free = yaml.safe_load(block.group(1))
    policies = PolicySet.from_mapping(path_free)
    patients = policies.for_dataset("patients")
    assert patients.min_group_size == 10
    assert set(patients.quota_limits()) == {
        "jobs",
        "rows",
        "sandbox_cpu_seconds",
        "verified_records",
    }
    assert policies.for_dataset("anything-else").analysts.names == ("alice",)


# -- rules -------------------------------------------------------------------


def test_a_request_passing_every_rule_is_approved() -> None:
    decision = decide(OPEN)
    assert decision.outcome is Outcome.APPROVE
    assert decision.reasons == (
        "every rule of its own policy for dataset 'patients' passes",
    )


@pytest.mark.parametrize(
    ("req", "reason"),
    [
        (request(analyst="bob"), "analyst 'bob' is not allowed on dataset 'patients'"),
        (
            request(organisation="acme"),
            "organisation 'acme' is not allowed on dataset 'patients'",
        ),
        (
            request(job_type="sandbox"),
            "job type 'sandbox' is not allowed on dataset 'patients' "
            "(allowed: count, secure_stats)",
        ),
        (
            request(purpose="marketing"),
            "purpose 'marketing' is not allowed (allowed: research, credit-scoring)",
        ),
        (
            request(columns=frozenset({"age", "ssn"})),
            "column 'ssn' is on the dataset's forbidden list",
        ),
        (
            request(columns=frozenset({"notes"})),
            "column 'notes' is not on the dataset's allowed list",
        ),
        (
            request(epsilon=1.5),
            "epsilon 1.5 exceeds the dataset's whole per-analyst epsilon budget 1",
        ),
        (
            request(delta=1e-5),
            "delta 1e-05 exceeds the dataset's whole per-analyst delta budget 1e-06",
        ),
    ],
)
def test_each_rule_denies_with_a_reason_naming_it(req: JobRequest, reason: str) -> None:
    decision = decide(OPEN, req)
    assert decision.outcome is Outcome.DENY
    assert decision.reasons == (reason,)


def test_forbidden_columns_win_over_allow_star() -> None:
    m = rules(columns={"allow": "*", "forbid": ["ssn"]})
    assert decide(m, request(columns=frozenset({"zip"}))).outcome is Outcome.APPROVE
    assert decide(m, request(columns=frozenset({"ssn"}))).reasons == (
        "column 'ssn' is on the dataset's forbidden list",
    )


def test_validity_window() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    end = datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert decide(OPEN, now=start).outcome is Outcome.APPROVE
    assert decide(OPEN, now=start - 1).reasons == (
        "policy is not valid before 2026-01-01T00:00:00Z",
    )
    assert decide(OPEN, now=end).reasons == ("policy expired at 2027-01-01T00:00:00Z",)


def test_deny_collects_every_failing_reason() -> None:
    req = request(
        analyst="bob",
        organisation="acme",
        job_type="sandbox",
        purpose="marketing",
        columns=frozenset({"ssn", "notes"}),
        epsilon=2.0,
    )
    decision = decide(rules(approval="manual", manual_for=None), req, now=2e9)
    assert decision.outcome is Outcome.DENY
    assert decision.reasons == (
        "policy expired at 2027-01-01T00:00:00Z",
        "analyst 'bob' is not allowed on dataset 'patients'",
        "organisation 'acme' is not allowed on dataset 'patients'",
        "job type 'sandbox' is not allowed on dataset 'patients' "
        "(allowed: count, secure_stats)",
        "purpose 'marketing' is not allowed (allowed: research, credit-scoring)",
        "column 'notes' is not on the dataset's allowed list",
        "column 'ssn' is on the dataset's forbidden list",
        "epsilon 2 exceeds the dataset's whole per-analyst epsilon budget 1",
    )


def test_manual_approval_holds_every_job() -> None:
    decision = decide(rules(approval="manual"))
    assert decision.outcome is Outcome.HOLD
    assert decision.reasons == (
        "dataset 'patients' needs the holder's manual approval for every job",
    )


def test_manual_for_holds_only_the_listed_job_types_and_analysts() -> None:
    m = rules(manual_for={"job_types": ["secure_stats"], "analysts": ["carol"]})
    assert decide(m).outcome is Outcome.APPROVE
    both = decide(m, request(job_type="secure_stats", analyst="carol"))
    assert both.outcome is Outcome.HOLD
    assert both.reasons == (
        "job type 'secure_stats' on dataset 'patients' needs the holder's manual "
        "approval",
        "jobs by analyst 'carol' on dataset 'patients' need the holder's manual "
        "approval",
    )


def test_deny_beats_hold() -> None:
    m = rules(manual_for={"analysts": ["alice"]})
    decision = decide(m, request(purpose="marketing"))
    assert decision.outcome is Outcome.DENY
    assert len(decision.reasons) == 1


def test_secure_defaults_allow_nobody_and_hold_for_the_holder() -> None:
    empty = decide({}, request(columns=frozenset({"age"})))
    assert empty.outcome is Outcome.DENY
    assert empty.reasons == (
        "analyst 'alice' is not allowed on dataset 'patients'",
        "organisation 'uni-x' is not allowed on dataset 'patients'",
        "job type 'count' is not allowed on dataset 'patients' (allowed: none)",
        "purpose 'research' is not allowed (allowed: none)",
        "column 'age' is not on the dataset's allowed list",
    )
    granted = {
        "analysts": "*",
        "organisations": "*",
        "job_types": "*",
        "purposes": "*",
    }
    no_columns = decide(granted, request(columns=frozenset()))
    assert no_columns.outcome is Outcome.HOLD  # approval defaults to manual
    policy = DatasetPolicy.from_mapping({}, where="p")
    assert policy.min_group_size == 5
    assert policy.epsilon_budget is None
    assert policy.quota_limits() == {}


def test_default_entry_is_a_fallback_and_missing_datasets_are_refused() -> None:
    policies = PolicySet.from_mapping({"patients": OPEN, "default": {}})
    assert policies.for_dataset("other") == DatasetPolicy()
    assert policies.evaluate(request(dataset="other"), now=NOW).outcome is Outcome.DENY
    alone = PolicySet.from_mapping({"patients": OPEN})
    with pytest.raises(PolicyRefusal) as caught:
        alone.for_dataset("other")
    assert caught.value.reasons == [
        "dataset 'other' has no policy and there is no default policy"
    ]
    decision = alone.evaluate(request(dataset="other"), now=NOW)
    assert decision.outcome is Outcome.DENY
    assert decision.reasons == tuple(caught.value.reasons)


def test_default_fallback_approval_says_so() -> None:
    policies = PolicySet.from_mapping({"default": OPEN})
    decision = policies.evaluate(request(dataset="scans"), now=NOW)
    assert decision.outcome is Outcome.APPROVE
    assert decision.reasons == (
        "every rule of the default policy for dataset 'scans' passes",
    )


# -- versions ----------------------------------------------------------------


def test_version_follows_the_meaning_of_the_policy() -> None:
    base = PolicySet.from_mapping({"patients": OPEN})
    assert re.fullmatch(r"[0-9a-f]{64}", base.version)
    reordered = dict(reversed(list(copy.deepcopy(OPEN).items())))
    assert PolicySet.from_mapping({"patients": reordered}).version == base.version
    explicit = rules(min_group_size=5)
    assert PolicySet.from_mapping({"patients": explicit}).version == base.version
    for changed in (
        rules(analysts=["alice"]),
        rules(quotas={"jobs": {"per_day": 11, "total": 100}}),
        rules(valid=None),
        rules(approval="manual", manual_for=None),
    ):
        assert PolicySet.from_mapping({"patients": changed}).version != base.version
    with_default = PolicySet.from_mapping({"patients": OPEN, "default": {}})
    assert with_default.version != base.version
    assert decide(OPEN).policy_version == base.version


# -- requests ----------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"rows": -1},
        {"epsilon": -0.1},
        {"delta": float("nan")},
        {"units": {"verified_records": -5}},
        {"units": {"jobs": 1}},
        {"analyst": ""},
    ],
)
def test_malformed_requests_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(SpecError):
        request(**change)


def test_request_amounts_and_immutability() -> None:
    units = {"verified_records": 100.0}
    req = request(rows=50, epsilon=0.5, units=units)
    units["verified_records"] = 1e9
    assert req.amounts() == {
        "jobs": 1.0,
        "rows": 50.0,
        "epsilon": 0.5,
        "verified_records": 100.0,
    }
    assert hash(req) == hash(request(rows=50, epsilon=0.5))


# -- issue 13: required DP, limits, differencing, sandbox rules -----------------


def test_new_keys_have_documented_defaults() -> None:
    policy = PolicySet.from_mapping({"patients": OPEN}).for_dataset("patients")
    assert (policy.dp_required, policy.epsilon_per_job) == (False, (None, None))
    assert policy.budget_shared_by_organisation is True
    assert (policy.max_cells, policy.max_concurrent_jobs) == (1000, 8)
    assert policy.max_job_memory == 1 << 30
    assert (policy.differencing, policy.differencing_capacity) == (True, 10_000)
    assert policy.rules_for("sandbox") == {
        "approval": "per_digest",
        "max_runs_per_digest": None,
        "review_outputs": "flagged",
        "max_released_values": None,
    }
    given = rules(sandbox={"approval": "per_run", "max_runs_per_digest": 3})
    parsed = PolicySet.from_mapping({"patients": given}).for_dataset("patients")
    assert parsed.rules_for("sandbox")["approval"] == "per_run"
    assert parsed.rules_for("count") == {}


def test_required_dp_refuses_exact_jobs_and_epsilon_outside_the_bounds() -> None:
    dp = {
        "required": True,
        "epsilon_per_job": {"min": 0.1, "max": 0.5},
        "epsilon_budget": 1.0,
    }
    m = rules(dp=dp)
    exact = decide(m)
    assert exact.outcome is Outcome.DENY
    assert "releases only differentially private results" in exact.reasons[0]
    assert "[0.1, 0.5]" in exact.reasons[0]
    for epsilon in (0.05, 0.6):
        denied = decide(m, request(epsilon=epsilon, delta=1e-7))
        assert denied.outcome is Outcome.DENY
        assert "outside this dataset's per-job bounds" in denied.reasons[0]
    assert decide(m, request(epsilon=0.3, delta=1e-7)).outcome is Outcome.APPROVE
    # bounds hold without the requirement too, for jobs that ask for DP
    loose = rules(dp={"epsilon_per_job": {"max": 0.5}})
    assert decide(loose).outcome is Outcome.APPROVE
    assert decide(loose, request(epsilon=0.6)).outcome is Outcome.DENY


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"dp": {"required": "yes"}}, "patients.dp.required"),
        ({"dp": {"required": True}}, "patients.dp.required"),
        ({"dp": {"epsilon_per_job": {"min": 2, "max": 1}}}, "dp.epsilon_per_job"),
        ({"dp": {"epsilon_per_job": {"mean": 1}}}, "dp.epsilon_per_job.mean"),
        ({"max_cells": 0}, "patients.max_cells"),
        ({"max_concurrent_jobs": 0}, "patients.max_concurrent_jobs"),
        ({"max_job_memory": "1G"}, "patients.max_job_memory"),
        ({"differencing": {"capacity": 10**7}}, "differencing.capacity"),
        ({"differencing": {"on": True}}, "differencing.on"),
        ({"sandbox": {"approval": "once"}}, "patients.sandbox.approval"),
        ({"sandbox": {"review_outputs": "never"}}, "sandbox.review_outputs"),
        ({"sandbox": {"max_runs_per_digest": 0}}, "sandbox.max_runs_per_digest"),
        ({"sandbox": {"reviews": 1}}, "patients.sandbox.reviews"),
        ({"count": {"x": 1}}, "patients.count: job type 'count' takes no"),
    ],
)
def test_new_keys_are_checked_with_their_path(
    change: dict[str, Any], path: str
) -> None:
    assert path in config_error({"patients": rules(**change)})
