"""The coordinator's state-store interface; SQL and in-memory implementations share it.

One contract test suite (tests/coordinator/test_store_contract.py) runs against
every implementation: in-memory, SQLite and PostgreSQL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from cleanroom.model import (
    Decision,
    JobEvent,
    JobRecord,
    JobState,
    ModelEntry,
    NodeRecord,
)


@dataclass(frozen=True)
class Mail:
    """A work item waiting for its recipient (a node, or one job's analyst party).

    ``seq`` grows with every item put (gaps allowed); a recipient acknowledges
    every item up to a seq once it has processed them, and only then are they
    deleted, so nothing queued is lost when the coordinator or a connection dies.
    """

    seq: int
    recipient: str
    job_id: str
    kind: str
    body: bytes


@dataclass(frozen=True)
class Step:
    """What one step of a job's coordinator party changes, committed atomically:
    journal entries (for replay after a restart), mail to queue, the inbound items
    it consumed, and progress."""

    job_id: str
    journal: Sequence[bytes] = ()
    mail: Sequence[tuple[str, str, bytes]] = ()
    """(recipient, kind, body) triples."""
    consumed: tuple[str, tuple[int, ...]] | None = None
    """(mailbox, seqs): the party's inbox items it is done with."""
    progress: str | None = None
    progress_json: str = ""
    at: float = 0.0


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
    def set_progress(
        self, job_id: str, progress: str, *, at: float, progress_json: str = ""
    ) -> None:
        """Record a human-readable description of the job's current step (and the
        party's structured progress as JSON); NotFound if the job does not exist."""

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

    # --- model registry ---------------------------------------------------------
    @abstractmethod
    def put_model(self, entry: ModelEntry) -> None:
        """Register a trained model (one per job; a later entry replaces it).
        NotFound if the job does not exist."""

    @abstractmethod
    def get_model(self, job_id: str) -> ModelEntry:
        """The registry entry of the job's model; NotFound if there is none."""

    @abstractmethod
    def list_models(
        self, *, analyst: str | None = None, limit: int = 100
    ) -> list[ModelEntry]:
        """Newest first (ties by job id, descending); only ``analyst``'s models when
        given; at most ``limit`` (none if ``limit`` < 1)."""

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

    # --- mailboxes -------------------------------------------------------------
    @abstractmethod
    def mail_put(self, items: Sequence[tuple[str, str, str, bytes]]) -> list[int]:
        """Queue (recipient, job_id, kind, body) items atomically; their seqs."""

    @abstractmethod
    def mail_after(self, recipient: str, after: int, *, limit: int) -> list[Mail]:
        """Up to ``limit`` of the recipient's items with seq > ``after``, in order."""

    @abstractmethod
    def mail_ack(self, recipient: str, upto: int) -> None:
        """Delete the recipient's items with seq <= ``upto``."""

    @abstractmethod
    def mail_discard(
        self, job_id: str, kinds: Collection[str], *, keep: Collection[str] = ()
    ) -> None:
        """Delete the job's queued items of the given kinds, for every recipient
        but those in ``keep``."""

    @abstractmethod
    def mail_clear(self, recipient: str, kinds: Collection[str]) -> None:
        """Delete the recipient's queued items of the given kinds (it restarted)."""

    @abstractmethod
    def mail_count(self, recipient: str) -> int:
        """How many items wait for the recipient."""

    # --- protocol journals ----------------------------------------------------
    @abstractmethod
    def commit_step(self, step: Step) -> list[int]:
        """Append the step's journal entries, queue its mail (the seqs returned)
        and set its progress, all in one transaction; NotFound if no such job."""

    @abstractmethod
    def journal(self, job_id: str) -> list[bytes]:
        """The job's journal entries in order (empty if none)."""

    @abstractmethod
    def journal_drop(self, job_id: str) -> None:
        """Forget the job's journal (it ended)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
