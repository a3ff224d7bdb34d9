"""What a node offers a job type's hooks and node-side service: narrow interfaces
onto the node's audit log, datasets and policy, so that job types never import the
node and the node never names a job type."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from cleanroom.catalog import DatasetInfo
from cleanroom.errors import ConfigError
from cleanroom.localdb import LocalDatabase
from protocols.party import LocalEvent


class AuditSink(Protocol):
    """The node's audit log, append only."""

    def append(
        self, kind: str, *, job_id: str | None = None, data: dict[str, Any]
    ) -> Any: ...


class DatasetAccess(Protocol):
    """The node's datasets, re-checked against their files on every use."""

    def info(self, name: str) -> DatasetInfo: ...

    def frame(self, name: str) -> pd.DataFrame: ...

    def names(self) -> list[str]: ...


class PolicyAccess(Protocol):
    """What a job type may ask of the node's policy for one dataset."""

    def permitted_columns(self, dataset: str) -> list[str]: ...

    def min_group_size(self, dataset: str) -> int: ...

    def job_type_rules(self, dataset: str, job_type: str) -> Mapping[str, Any]:
        """The dataset policy's section named after ``job_type``, as that job
        type parsed it (``JobType.policy_rules``), every default spelled out."""
        ...


@dataclass(frozen=True)
class NodeEnvironment:
    """Everything a job type's node-side service may use."""

    node: str
    data_dir: Path
    settings: Mapping[str, Any]
    """The node config's ``[jobtypes.<name>]`` table for this job type."""
    audit: AuditSink
    datasets: DatasetAccess
    policy: PolicyAccess
    db: LocalDatabase
    """The node's database, where a service may keep tables of its own (named
    after its job type) that commit with the node's decisions."""
    notify: Callable[[str, LocalEvent], None] = lambda job_id, event: None
    """Deliver a local event to the job's running party on this node."""


class Verdict(StrEnum):
    DENY = "deny"
    HOLD = "hold"


@dataclass(frozen=True)
class Admission:
    """A job type's refinement of the policy's decision: deny, or hold for the
    holder, with reasons (the policy's own decision stands otherwise)."""

    verdict: Verdict
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class AdmissionContext:
    """What a job type's admission hook sees of one job request on one node."""

    job_id: str
    node: str
    dataset: str
    analyst: str
    organisation: str
    service: Any
    audit: AuditSink
    policy_outcome: str
    """The node policy's outcome so far: allow, hold or deny."""
    max_cells: int = 1000
    """The most cells (groups, histogram bins) the holder lets one job release."""
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HolderContext:
    """What a job type's holder-side hooks and commands may use, in the holder's
    CLI process: the node's name, data directory, database and its settings."""

    node: str
    data_dir: Path
    db: LocalDatabase
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class HeldItem:
    """Something of a job waiting for the holder beyond its approval (e.g. output
    held by vetting)."""

    job_id: str
    status: str
    reason: str


class HolderOpener(ABC):
    """Opens a node's ``HolderContext`` from its config (the CLI provides it)."""

    @abstractmethod
    def open(self, config: Path, job_type: str) -> HolderContext: ...


def open_holder(config: Path, job_type: str) -> HolderContext:
    """The ``HolderContext`` for a job type's own ``cleanroom node`` command."""
    import click

    opener = click.get_current_context().find_object(HolderOpener)  # type: ignore[type-abstract]
    if opener is None:
        raise ConfigError("this command runs only under `cleanroom node`")
    return opener.open(config, job_type)
