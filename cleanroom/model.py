"""Domain records shared by the coordinator, its store, the client and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobState(StrEnum):
    """Where a job is in its life; the last four are final."""

    SUBMITTED = "submitted"
    AWAITING_APPROVAL = "awaiting_approval"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REFUSED = "refused"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.REFUSED, JobState.CANCELLED}
)
ACTIVE_STATES = frozenset(
    {JobState.SUBMITTED, JobState.AWAITING_APPROVAL, JobState.RUNNING}
)


@dataclass(frozen=True)
class JobRecord:
    """A job as the coordinator stores it. ``reason`` explains every final state."""

    job_id: str
    analyst: str
    job_type: str
    spec_yaml: str
    spec_hash: str
    state: JobState
    reason: str
    progress: str
    created_at: float
    updated_at: float
    organisation: str = ""
    """The analyst's organisation, from its certificate ("" if it names none)."""
    progress_json: str = ""
    """The job's parties' structured progress (``protocols.party.Progress``)."""
    signed_request: bytes = b""
    """The analyst's signed submission, which every node verifies itself."""
    analyst_bundle: bytes = b""
    """The analyst's CA-anchored protocol key bundle."""


@dataclass(frozen=True)
class NodeRecord:
    """A registered node: its verified key bundle and its datasets' public metadata."""

    name: str
    key_bundle: bytes
    catalog_json: str
    registered_at: float
    last_seen: float
    assets_json: str = "[]"
    """What the node's job types offer beside datasets (``AssetInfo``s)."""


@dataclass(frozen=True)
class Decision:
    """A node's approval or refusal of a job, with the node's own reason."""

    job_id: str
    node: str
    approved: bool
    reason: str
    decided_at: float


@dataclass(frozen=True)
class JobEvent:
    """One step in a job's history as the coordinator saw it."""

    job_id: str
    seq: int
    at: float
    kind: str
    detail: str


@dataclass(frozen=True)
class ModelEntry:
    """A trained model in the coordinator's registry: its card (JSON), never its
    weights, which stay in the analyst-sealed result of ``job_id``."""

    job_id: str
    analyst: str
    job_type: str
    created_at: float
    card_json: str
