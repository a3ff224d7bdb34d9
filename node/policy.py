"""The node's policy engine: decides whether a job may touch one of its datasets."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import yaml

from cleanroom.errors import ConfigError, PolicyRefusal, SpecError
from node.policy_schema import (
    Approval,
    DatasetPolicy,
    NameList,
    QuotaLimit,
    format_time,
)

__all__ = [
    "Approval",
    "DatasetPolicy",
    "JobRequest",
    "NameList",
    "Outcome",
    "PolicyDecision",
    "PolicySet",
    "QuotaLimit",
]

DEFAULT_ENTRY: Final = "default"
RESERVED_METERS: Final = frozenset({"jobs", "rows", "epsilon", "delta"})
"""Meters the node counts itself; a job type's own units may not reuse these names."""


@dataclass(frozen=True)
class JobRequest:
    """What a job asks of one dataset on this node, as the policy and meters see it.

    ``rows`` is how many rows the job will touch and ``units`` the job type's
    declared units it will consume (e.g. ``{"verified_records": 100}``).
    """

    job_id: str
    analyst: str
    organisation: str
    job_type: str
    dataset: str
    columns: frozenset[str]
    purpose: str
    epsilon: float = 0.0
    delta: float = 0.0
    rows: int = 0
    units: Mapping[str, float] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name in ("job_id", "analyst", "dataset", "job_type"):
            if not getattr(self, name):
                raise SpecError(name, "must not be empty")
        for name in ("epsilon", "delta"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise SpecError(name, f"must be a non-negative number, got {value!r}")
        if (
            isinstance(self.rows, bool)
            or not isinstance(self.rows, int)
            or self.rows < 0
        ):
            raise SpecError(
                "rows", f"must be a non-negative integer, got {self.rows!r}"
            )
        for unit, amount in self.units.items():
            if not unit or unit in RESERVED_METERS:
                raise SpecError(f"units.{unit}", "is a name the node meters itself")
            if not math.isfinite(amount) or amount < 0:
                raise SpecError(
                    f"units.{unit}", f"must be a non-negative number, got {amount!r}"
                )
        # A caller's dict must not change the request after the policy approved it.
        object.__setattr__(self, "units", MappingProxyType(dict(self.units)))
        object.__setattr__(self, "columns", frozenset(self.columns))

    def amounts(self) -> dict[str, float]:
        """What the job will consume by meter: one job, rows, privacy, its units."""
        amounts = {"jobs": 1, "rows": self.rows, "epsilon": self.epsilon}
        amounts.update({"delta": self.delta, **self.units})
        return {m: float(a) for m, a in amounts.items() if a or m == "jobs"}


class Outcome(StrEnum):
    """The policy's verdict; HOLD waits for the data holder's manual decision."""

    APPROVE = "approve"
    DENY = "deny"
    HOLD = "hold"


@dataclass(frozen=True)
class PolicyDecision:
    """A verdict, every rule that led to it, and the policy version that decided."""

    outcome: Outcome
    reasons: tuple[str, ...]
    policy_version: str


class PolicySet:
    """Every dataset's policy on this node, plus an optional ``default`` entry."""

    def __init__(
        self,
        datasets: Mapping[str, DatasetPolicy],
        default: DatasetPolicy | None = None,
    ) -> None:
        if DEFAULT_ENTRY in datasets:
            raise ConfigError(
                f"{DEFAULT_ENTRY!r} names the default entry, not a dataset"
            )
        self._datasets = MappingProxyType(dict(datasets))
        self._default = default
        canonical = {
            DEFAULT_ENTRY: None if default is None else default.to_mapping(),
            "datasets": {name: p.to_mapping() for name, p in self._datasets.items()},
        }
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        self._version = hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any], *, where: str = "policy") -> PolicySet:
        """Parse ``{dataset: rules, ..., "default": rules}``; errors name the path."""
        if not isinstance(m, Mapping):
            raise ConfigError(f"{where}: expected a mapping of datasets, got {m!r}")
        datasets: dict[str, DatasetPolicy] = {}
        default: DatasetPolicy | None = None
        for name, rules in m.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{where}: expected dataset names, got {name!r}")
            policy = DatasetPolicy.from_mapping(rules, where=f"{where}.{name}")
            if name == DEFAULT_ENTRY:
                default = policy
            else:
                datasets[name] = policy
        return cls(datasets, default)

    @classmethod
    def load(cls, path: Path) -> PolicySet:
        """Read a policy YAML file (timestamps stay text so they parse strictly)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read policy file {path}: {e.strerror}") from e
        try:
            data = yaml.load(text, Loader=_PolicyLoader)  # noqa: S506 - safe loader
        except yaml.YAMLError as e:
            raise ConfigError(f"policy file {path} is not valid YAML: {e}") from e
        if data is None:
            raise ConfigError(f"policy file {path} is empty")
        return cls.from_mapping(data)

    @property
    def version(self) -> str:
        """SHA-256 (hex) of the canonical JSON of the whole set."""
        return self._version

    @property
    def datasets(self) -> Mapping[str, DatasetPolicy]:
        return self._datasets

    def for_dataset(self, name: str) -> DatasetPolicy:
        """The dataset's own policy, else the default; PolicyRefusal if neither."""
        policy = self._datasets.get(name, self._default)
        if policy is None:
            raise PolicyRefusal(
                [f"dataset {name!r} has no policy and there is no default policy"]
            )
        return policy

    def evaluate(self, request: JobRequest, *, now: float) -> PolicyDecision:
        """Check every rule; DENY with all failures, else HOLD or APPROVE.

        Quotas are not checked here: the meters check and reserve them atomically.
        """
        try:
            policy = self.for_dataset(request.dataset)
        except PolicyRefusal as refusal:
            return PolicyDecision(Outcome.DENY, tuple(refusal.reasons), self.version)
        denials = _denials(policy, request, now)
        if denials:
            return PolicyDecision(Outcome.DENY, tuple(denials), self.version)
        holds = _holds(policy, request)
        if holds:
            return PolicyDecision(Outcome.HOLD, tuple(holds), self.version)
        source = "its own" if request.dataset in self._datasets else "the default"
        reason = f"every rule of {source} policy for dataset {request.dataset!r} passes"
        return PolicyDecision(Outcome.APPROVE, (reason,), self.version)


def _denials(policy: DatasetPolicy, request: JobRequest, now: float) -> list[str]:
    dataset = request.dataset
    reasons: list[str] = []
    if policy.valid_from is not None and now < policy.valid_from.timestamp():
        reasons.append(f"policy is not valid before {format_time(policy.valid_from)}")
    if policy.valid_until is not None and now >= policy.valid_until.timestamp():
        reasons.append(f"policy expired at {format_time(policy.valid_until)}")
    if not policy.analysts.permits(request.analyst):
        reasons.append(
            f"analyst {request.analyst!r} is not allowed on dataset {dataset!r}"
        )
    if not policy.organisations.permits(request.organisation):
        reasons.append(
            f"organisation {request.organisation!r} is not allowed on dataset "
            f"{dataset!r}"
        )
    if not policy.job_types.permits(request.job_type):
        reasons.append(
            f"job type {request.job_type!r} is not allowed on dataset {dataset!r} "
            f"(allowed: {policy.job_types.describe()})"
        )
    if not policy.purposes.permits(request.purpose):
        reasons.append(
            f"purpose {request.purpose!r} is not allowed "
            f"(allowed: {policy.purposes.describe()})"
        )
    for column in sorted(request.columns):
        if column in policy.columns_forbidden:
            reasons.append(f"column {column!r} is on the dataset's forbidden list")
        elif not policy.columns_allowed.permits(column):
            reasons.append(f"column {column!r} is not on the dataset's allowed list")
    reasons += _privacy_denials(policy, request)
    for name, asked, budget in (
        ("epsilon", request.epsilon, policy.epsilon_budget),
        ("delta", request.delta, policy.delta_budget),
    ):
        if budget is not None and asked > budget:
            reasons.append(
                f"{name} {asked:g} exceeds the dataset's whole per-analyst "
                f"{name} budget {budget:g}"
            )
    return reasons


def _privacy_denials(policy: DatasetPolicy, request: JobRequest) -> list[str]:
    """DP the holder requires: a job without it, or outside the per-job bounds."""
    low, high = policy.epsilon_per_job
    bounds = f"[{'0' if low is None else f'{low:g}'}, "
    bounds += f"{'any' if high is None else f'{high:g}'}]"
    if request.epsilon == 0:
        if policy.dp_required:
            return [
                f"dataset {request.dataset!r} releases only differentially private "
                f"results: the job must ask for dp with epsilon in {bounds}"
            ]
        return []
    if (low is not None and request.epsilon < low) or (
        high is not None and request.epsilon > high
    ):
        return [
            f"epsilon {request.epsilon:g} is outside this dataset's per-job bounds "
            f"{bounds}"
        ]
    return []


def _holds(policy: DatasetPolicy, request: JobRequest) -> list[str]:
    dataset = request.dataset
    if policy.approval is Approval.MANUAL:
        return [f"dataset {dataset!r} needs the holder's manual approval for every job"]
    reasons: list[str] = []
    if request.job_type in policy.manual_job_types:
        reasons.append(
            f"job type {request.job_type!r} on dataset {dataset!r} needs the "
            "holder's manual approval"
        )
    if request.analyst in policy.manual_analysts:
        reasons.append(
            f"jobs by analyst {request.analyst!r} on dataset {dataset!r} need the "
            "holder's manual approval"
        )
    return reasons


class _PolicyLoader(yaml.SafeLoader):
    """SafeLoader that leaves timestamps as text for the policy's strict parser."""


_PolicyLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
