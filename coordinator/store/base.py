"""The coordinator's state-store interface; SQL and in-memory implementations share it.

One contract test suite (tests/coordinator/test_store_contract.py) runs against
every implementation: in-memory, SQLite and PostgreSQL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection

from cleanroom.model import Decision, JobEvent, JobRecord, JobState, NodeRecord


class Store(ABC):
    """Persistent coordinator state. Every method is atomic and thread-safe."""

    # --- jobs -------------------------------------------------------------
    @abstractmethod
    def create_job(self, job: JobRecord) -> None:
        """Insert a new job; StoreError if the id already exists."""

    @abstractmethod
    def get_job(self, job_id: str) -> JobRecord:
        """The job with this id; NotFound otherwise."""

    @abstractmethod
    def list_jobs(
        self, *, analyst: str | None = None, limit: int = 100
    ) -> list[JobRecord]:
        """Newest first (ties by job id, descending); only ``analyst``'s jobs when
        given; at most ``limit`` (none if ``limit`` < 1)."""

    @abstractmethod
    def jobs_in_states(self, states: Collection[JobState]) -> list[JobRecord]:
        """All jobs currently in any of ``states``, oldest first (ties by job id)."""

    @abstractmethod
    def transition(
        self,
        job_id: str,
        *,
        expected: Collection[JobState],
        new: JobState,
        reason: str = "",
        at: float,
    ) -> JobRecord | None:
        """Compare-and-set the state: move to ``new`` only if the current state is in
        ``expected``; return the updated job, or None if the state did not match.
        NotFound if the job does not exist."""

    @abstractmethod
    def set_progress(self, job_id: str, progress: str, *, at: float) -> None:
        """Record a human-readable description of the job's current step; NotFound
        if the job does not exist."""

    # --- decisions, results, events -----------------------------------------
    @abstractmethod
    def record_decision(self, decision: Decision) -> None:
        """Store a node's decision; a later decision by the same node replaces it.
        NotFound if the job does not exist."""

    @abstractmethod
    def decisions(self, job_id: str) -> list[Decision]:
        """All decisions recorded for the job, ordered by node name; NotFound if the
        job does not exist."""

    @abstractmethod
    def put_result(self, job_id: str, result: bytes) -> None:
        """Store the job's released result (any size); replaces an earlier one.
        NotFound if the job does not exist."""

    @abstractmethod
    def get_result(self, job_id: str) -> bytes:
        """The job's result; NotFound if there is none."""

    @abstractmethod
    def append_event(
        self, job_id: str, kind: str, detail: str, *, at: float
    ) -> JobEvent:
        """Append to the job's history; ``seq`` counts from 1 per job, with no gaps
        or duplicates under concurrent appends. NotFound if the job does not exist."""

    @abstractmethod
    def events(self, job_id: str) -> list[JobEvent]:
        """The job's history in order; NotFound if the job does not exist."""

    # --- nodes ----------------------------------------------------------------
    @abstractmethod
    def upsert_node(self, node: NodeRecord) -> None:
        """Insert or replace a node's registration."""

    @abstractmethod
    def get_node(self, name: str) -> NodeRecord:
        """NotFound if the node never registered."""

    @abstractmethod
    def list_nodes(self) -> list[NodeRecord]:
        """All registered nodes ordered by name."""

    @abstractmethod
    def touch_node(self, name: str, *, at: float) -> None:
        """Record that the node was seen at ``at``; NotFound if it never registered."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
