"""One dataset's policy: strict parsing of its YAML mapping into typed rules."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, NoReturn

from cleanroom import jobtypes
from cleanroom.errors import ConfigError

ANY: Final = "*"
INTEGER_METERS: Final = frozenset({"jobs", "rows"})
"""Meters counted in whole units; their quota limits must be integers."""

_DATASET_KEYS: Final = (
    "analysts",
    "organisations",
    "job_types",
    "columns",
    "purposes",
    "min_group_size",
    "approval",
    "manual_for",
    "dp",
    "quotas",
    "valid",
    "max_deadline_seconds",
    "min_inputs",
    "allow_survivor_change",
    "max_cells",
    "max_concurrent_jobs",
    "max_job_memory",
    "differencing",
)
_DP_KEYS: Final = (
    "required",
    "epsilon_per_job",
    "epsilon_budget",
    "delta_budget",
    "shared_by_organisation",
)
DEFAULT_MAX_DEADLINE_S: Final = 3600.0
DEFAULT_MAX_CELLS: Final = 1000
DEFAULT_MAX_CONCURRENT_JOBS: Final = 8
DEFAULT_MAX_JOB_MEMORY: Final = 1 << 30
DEFAULT_DIFFERENCING_CAPACITY: Final = 10_000
MAX_DIFFERENCING_CAPACITY: Final = 1_000_000


class Approval(StrEnum):
    """Whether jobs that pass every rule run at once or wait for the holder."""

    AUTO = "auto"
    MANUAL = "manual"


@dataclass(frozen=True)
class NameList:
    """An allow-list: the names it holds, or every name when written as ``"*"``."""

    names: tuple[str, ...] = ()
    everyone: bool = False

    def permits(self, name: str) -> bool:
        return self.everyone or name in self.names

    def describe(self) -> str:
        if self.everyone:
            return "any"
        return ", ".join(self.names) or "none"

    def to_json(self) -> str | list[str]:
        return ANY if self.everyone else list(self.names)


@dataclass(frozen=True)
class QuotaLimit:
    """Per-analyst limits on one meter; ``None`` means that period is unlimited."""

    per_day: float | None = None
    total: float | None = None


@dataclass(frozen=True)
class DatasetPolicy:
    """The rules a node applies to every job on one dataset.

    Every allow-list defaults to empty: what the holder has not granted is refused.
    """

    analysts: NameList = NameList()
    organisations: NameList = NameList()
    job_types: NameList = NameList()
    purposes: NameList = NameList()
    columns_allowed: NameList = NameList()
    columns_forbidden: frozenset[str] = frozenset()
    min_group_size: int = 5
    approval: Approval = Approval.MANUAL
    manual_job_types: frozenset[str] = frozenset()
    manual_analysts: frozenset[str] = frozenset()
    epsilon_budget: float | None = None
    delta_budget: float | None = None
    quotas: Mapping[str, QuotaLimit] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    max_deadline_seconds: float = DEFAULT_MAX_DEADLINE_S
    """The longest stage deadline (``deadline_seconds`` in a spec) accepted."""
    min_inputs: int | None = None
    """The fewest inputs this dataset's contribution may be aggregated with
    (None: every input of the spec, so no dropout is tolerated)."""
    allow_survivor_change: bool = False
    """Whether the same query may be released again over another set of inputs
    (refused by default: comparing the two would isolate the missing inputs)."""
    dp_required: bool = False
    """Every job must release under differential privacy (epsilon > 0)."""
    epsilon_per_job: tuple[float | None, float | None] = (None, None)
    """(min, max) epsilon one job may ask for; None: no bound."""
    budget_shared_by_organisation: bool = True
    """The privacy budgets hold per analyst and also per organisation (all of
    its analysts together); False: per analyst only."""
    max_cells: int = DEFAULT_MAX_CELLS
    """Cells (groups, histogram bins) one job may release."""
    max_concurrent_jobs: int = DEFAULT_MAX_CONCURRENT_JOBS
    """Jobs one analyst may have approved or running here at once."""
    max_job_memory: int = DEFAULT_MAX_JOB_MEMORY
    """Bytes a job's node-side work may need, as its job type estimates them."""
    differencing: bool = True
    """Keep a record of released cells and refuse one 1..k-1 rows from an earlier
    one (jobs without DP only)."""
    differencing_capacity: int = DEFAULT_DIFFERENCING_CAPACITY
    """Released cells one record (one analyst, one organisation) may hold."""
    job_type_rules: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    """Sections named after a job type (a key that is a job type's name), as it
    parsed them (``JobType.policy_rules``)."""

    def rules_for(self, job_type: str) -> Mapping[str, Any]:
        """A job type's own rules for this dataset, every default spelled out."""
        if job_type in self.job_type_rules:
            return self.job_type_rules[job_type]
        return jobtypes.get(job_type).policy_rules({}, where=job_type)

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any], *, where: str) -> DatasetPolicy:
        """Validate ``m``; every error names its path below ``where``."""
        m = _mapping(m, where)
        owned = [k for k in m if k not in _DATASET_KEYS and k in jobtypes.names()]
        _check_keys(m, (*_DATASET_KEYS, *owned), where)
        columns = _mapping(m.get("columns", {}), f"{where}.columns")
        _check_keys(columns, ("allow", "forbid"), f"{where}.columns")
        forbid = columns.get("forbid", [])
        if forbid == ANY:
            _fail(f"{where}.columns.forbid", "a list of column names", forbid)
        approval = m.get("approval", Approval.MANUAL.value)
        if approval not in {a.value for a in Approval}:
            _fail(f"{where}.approval", "'auto' or 'manual'", approval)
        manual = _mapping(m.get("manual_for", {}), f"{where}.manual_for")
        _check_keys(manual, ("job_types", "analysts"), f"{where}.manual_for")
        if manual and approval == Approval.MANUAL:
            raise ConfigError(
                f"{where}.manual_for: only applies with 'approval: auto' "
                "(with 'approval: manual' every job is held)"
            )
        dp = _mapping(m.get("dp", {}), f"{where}.dp")
        _check_keys(dp, _DP_KEYS, f"{where}.dp")
        per_job = _mapping(dp.get("epsilon_per_job", {}), f"{where}.dp.epsilon_per_job")
        _check_keys(per_job, ("min", "max"), f"{where}.dp.epsilon_per_job")
        bounds = (
            _optional_number(per_job, "min", f"{where}.dp.epsilon_per_job"),
            _optional_number(per_job, "max", f"{where}.dp.epsilon_per_job"),
        )
        if bounds[0] is not None and bounds[1] is not None and bounds[0] > bounds[1]:
            raise ConfigError(
                f"{where}.dp.epsilon_per_job: 'min' must not exceed 'max'"
            )
        required = _flag(dp.get("required", False), f"{where}.dp.required")
        if required and bounds[1] is None and dp.get("epsilon_budget") is None:
            raise ConfigError(
                f"{where}.dp.required: give epsilon_per_job.max or epsilon_budget "
                "(required DP without any bound on epsilon protects nothing)"
            )
        differencing = _mapping(m.get("differencing", {}), f"{where}.differencing")
        _check_keys(differencing, ("enabled", "capacity"), f"{where}.differencing")
        capacity = _integer(
            differencing.get("capacity", DEFAULT_DIFFERENCING_CAPACITY),
            f"{where}.differencing.capacity",
            minimum=1,
        )
        if capacity > MAX_DIFFERENCING_CAPACITY:
            _fail(
                f"{where}.differencing.capacity",
                f"at most {MAX_DIFFERENCING_CAPACITY}",
                capacity,
            )
        valid = _mapping(m.get("valid", {}), f"{where}.valid")
        _check_keys(valid, ("from", "until"), f"{where}.valid")
        policy = cls(
            analysts=_names(m.get("analysts", []), f"{where}.analysts"),
            organisations=_names(m.get("organisations", []), f"{where}.organisations"),
            job_types=_names(m.get("job_types", []), f"{where}.job_types"),
            purposes=_names(m.get("purposes", []), f"{where}.purposes"),
            columns_allowed=_names(columns.get("allow", []), f"{where}.columns.allow"),
            columns_forbidden=frozenset(
                _names(forbid, f"{where}.columns.forbid").names
            ),
            min_group_size=_integer(
                m.get("min_group_size", 5), f"{where}.min_group_size", minimum=1
            ),
            approval=Approval(approval),
            manual_job_types=_name_set(manual, "job_types", f"{where}.manual_for"),
            manual_analysts=_name_set(manual, "analysts", f"{where}.manual_for"),
            epsilon_budget=_optional_number(dp, "epsilon_budget", f"{where}.dp"),
            delta_budget=_optional_number(dp, "delta_budget", f"{where}.dp"),
            quotas=_quotas(m.get("quotas", {}), f"{where}.quotas"),
            valid_from=_optional_time(valid, "from", f"{where}.valid"),
            valid_until=_optional_time(valid, "until", f"{where}.valid"),
            max_deadline_seconds=_positive(
                m.get("max_deadline_seconds", DEFAULT_MAX_DEADLINE_S),
                f"{where}.max_deadline_seconds",
            ),
            min_inputs=None
            if m.get("min_inputs") is None
            else _integer(m["min_inputs"], f"{where}.min_inputs", minimum=2),
            allow_survivor_change=_flag(
                m.get("allow_survivor_change", False), f"{where}.allow_survivor_change"
            ),
            dp_required=required,
            epsilon_per_job=bounds,
            budget_shared_by_organisation=_flag(
                dp.get("shared_by_organisation", True),
                f"{where}.dp.shared_by_organisation",
            ),
            max_cells=_integer(
                m.get("max_cells", DEFAULT_MAX_CELLS), f"{where}.max_cells", minimum=1
            ),
            max_concurrent_jobs=_integer(
                m.get("max_concurrent_jobs", DEFAULT_MAX_CONCURRENT_JOBS),
                f"{where}.max_concurrent_jobs",
                minimum=1,
            ),
            max_job_memory=_integer(
                m.get("max_job_memory", DEFAULT_MAX_JOB_MEMORY),
                f"{where}.max_job_memory",
                minimum=1,
            ),
            differencing=_flag(
                differencing.get("enabled", True), f"{where}.differencing.enabled"
            ),
            differencing_capacity=capacity,
            job_type_rules=MappingProxyType(
                {
                    name: MappingProxyType(
                        dict(
                            jobtypes.get(name).policy_rules(
                                _mapping(m[name], f"{where}.{name}"),
                                where=f"{where}.{name}",
                            )
                        )
                    )
                    for name in sorted(owned)
                }
            ),
        )
        if (
            policy.valid_from is not None
            and policy.valid_until is not None
            and policy.valid_from >= policy.valid_until
        ):
            raise ConfigError(f"{where}.valid: 'from' must be before 'until'")
        return policy

    def quota_limits(self) -> Mapping[str, QuotaLimit]:
        """Per-analyst limits by meter name, for the node's meters to enforce."""
        return self.quotas

    def to_mapping(self) -> dict[str, Any]:
        """The policy in canonical form, every default spelled out (for versioning)."""
        return {
            "analysts": self.analysts.to_json(),
            "organisations": self.organisations.to_json(),
            "job_types": self.job_types.to_json(),
            "purposes": self.purposes.to_json(),
            "columns": {
                "allow": self.columns_allowed.to_json(),
                "forbid": sorted(self.columns_forbidden),
            },
            "min_group_size": self.min_group_size,
            "approval": self.approval.value,
            "manual_for": {
                "job_types": sorted(self.manual_job_types),
                "analysts": sorted(self.manual_analysts),
            },
            "dp": {
                "required": self.dp_required,
                "epsilon_per_job": {
                    "min": self.epsilon_per_job[0],
                    "max": self.epsilon_per_job[1],
                },
                "epsilon_budget": self.epsilon_budget,
                "delta_budget": self.delta_budget,
                "shared_by_organisation": self.budget_shared_by_organisation,
            },
            "quotas": {
                meter: {"per_day": limit.per_day, "total": limit.total}
                for meter, limit in sorted(self.quotas.items())
            },
            "valid": {
                "from": format_time(self.valid_from),
                "until": format_time(self.valid_until),
            },
            "max_deadline_seconds": self.max_deadline_seconds,
            "min_inputs": self.min_inputs,
            "allow_survivor_change": self.allow_survivor_change,
            "max_cells": self.max_cells,
            "max_concurrent_jobs": self.max_concurrent_jobs,
            "max_job_memory": self.max_job_memory,
            "differencing": {
                "enabled": self.differencing,
                "capacity": self.differencing_capacity,
            },
            **{name: dict(r) for name, r in sorted(self.job_type_rules.items())},
        }


def format_time(moment: datetime | None) -> str | None:
    """ISO-8601 in UTC with a ``Z`` suffix, as policy reasons and exports show it."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _fail(path: str, expected: str, got: Any) -> NoReturn:
    raise ConfigError(f"{path}: expected {expected}, got {got!r}")


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _fail(path, "a mapping", value)
    for key in value:
        if not isinstance(key, str):
            _fail(path, "string keys", key)
    return value


def _check_keys(m: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for key in m:
        if key not in allowed:
            raise ConfigError(
                f"{path}.{key}: unknown key (allowed: {', '.join(allowed)})"
            )


def _names(value: Any, path: str) -> NameList:
    if value == ANY:
        return NameList(everyone=True)
    if not isinstance(value, list):
        _fail(path, f"a list of names or {ANY!r}", value)
    names: list[str] = []
    for i, name in enumerate(value):
        if not isinstance(name, str) or not name or name == ANY:
            _fail(f"{path}[{i}]", "a non-empty name", name)
        if name not in names:
            names.append(name)
    return NameList(tuple(names))


def _name_set(m: Mapping[str, Any], key: str, path: str) -> frozenset[str]:
    names = _names(m.get(key, []), f"{path}.{key}")
    if names.everyone:
        _fail(f"{path}.{key}", "a list of names", ANY)
    return frozenset(names.names)


def _integer(value: Any, path: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = (
            "a non-negative integer" if minimum == 0 else f"an integer >= {minimum}"
        )
        _fail(path, expected, value)
    return value


def _number(value: Any, path: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        _fail(path, "a non-negative number", value)
    return float(value)


def _flag(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        _fail(path, "true or false", value)
    return value


def _positive(value: Any, path: str) -> float:
    number = _number(value, path)
    if number <= 0:
        _fail(path, "a number of seconds > 0", value)
    return number


def _optional_number(m: Mapping[str, Any], key: str, path: str) -> float | None:
    return None if m.get(key) is None else _number(m[key], f"{path}.{key}")


def _quotas(value: Any, path: str) -> Mapping[str, QuotaLimit]:
    quotas: dict[str, QuotaLimit] = {}
    for meter, spec in _mapping(value, path).items():
        if not meter or meter == ANY:
            _fail(path, "meter names", meter)
        where = f"{path}.{meter}"
        spec = _mapping(spec, where)
        _check_keys(spec, ("per_day", "total"), where)
        limits: dict[str, float | None] = {}
        for period in ("per_day", "total"):
            raw = spec.get(period)
            if raw is None:
                limits[period] = None
            elif meter in INTEGER_METERS:
                limits[period] = float(_integer(raw, f"{where}.{period}"))
            else:
                limits[period] = _number(raw, f"{where}.{period}")
        quotas[meter] = QuotaLimit(per_day=limits["per_day"], total=limits["total"])
    return MappingProxyType(quotas)


def _optional_time(m: Mapping[str, Any], key: str, path: str) -> datetime | None:
    raw = m.get(key)
    if raw is None:
        return None
    expected = "an ISO-8601 timestamp with a timezone (e.g. 2026-01-01T00:00:00Z)"
    value = raw
    if isinstance(raw, str):
        try:
            value = datetime.fromisoformat(raw)
        except ValueError:
            _fail(f"{path}.{key}", expected, raw)
    if not isinstance(value, datetime) or value.tzinfo is None:
        # A bare date or a naive time would silently mean the node's local zone.
        _fail(
            f"{path}.{key}", expected, raw.isoformat() if isinstance(raw, date) else raw
        )
    return value
