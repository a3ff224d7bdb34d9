"""The node's local job book (SQLite in its data dir): every job it was asked about,
its decision, and the holder's manual decisions waiting to be reported; for sandbox
jobs also the code digests the holder approved and the outputs held for review."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cleanroom.errors import ConfigError, NotFound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    analyst TEXT NOT NULL,
    job_type TEXT NOT NULL,
    dataset TEXT NOT NULL,
    purpose TEXT NOT NULL,
    spec_yaml TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    decided_by TEXT NOT NULL DEFAULT '',
    reported INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)
"""
_SANDBOX_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS sandbox_approvals (
    dataset TEXT NOT NULL, digest TEXT NOT NULL, job_id TEXT NOT NULL,
    approved_at REAL NOT NULL, PRIMARY KEY (dataset, digest))""",
    """CREATE TABLE IF NOT EXISTS sandbox_outputs (
    job_id TEXT PRIMARY KEY, status TEXT NOT NULL, reasons TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '', updated_at REAL NOT NULL)""",
)


class JobStatus(StrEnum):
    PENDING = "pending"  # held for the holder's manual decision
    APPROVED = "approved"
    DENIED = "denied"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class LocalJob:
    job_id: str
    analyst: str
    job_type: str
    dataset: str
    purpose: str
    spec_yaml: str
    status: JobStatus
    reason: str
    decided_by: str
    reported: bool
    created_at: float
    updated_at: float


class OutputStatus(StrEnum):
    HELD = "held"  # vetting held a sandbox job's output for the holder
    RELEASED = "released"  # the holder released it anyway
    REJECTED = "rejected"  # the holder rejected it; the job fails


@dataclass(frozen=True)
class OutputReview:
    """A sandbox job's output that vetting held, and the holder's decision on it."""

    job_id: str
    status: OutputStatus
    reasons: tuple[str, ...]
    reason: str
    updated_at: float


class NodeState:
    """Thread- and process-safe: the node process and the holder's CLI share it."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            path, check_same_thread=False, timeout=30, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        for statement in _SANDBOX_SCHEMA:
            self._db.execute(statement)
        self._lock = threading.Lock()
        self._clock = clock

    @classmethod
    def open_existing(cls, path: Path) -> NodeState:
        if not path.exists():
            raise ConfigError(f"no node state at {path}: has the node been started?")
        return cls(path)

    def _row(self, row: tuple[object, ...]) -> LocalJob:
        values = list(row)
        values[6] = JobStatus(str(values[6]))
        values[9] = bool(values[9])
        return LocalJob(*values)  # type: ignore[arg-type]

    def record(self, job: LocalJob) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(job_id) DO "
                "UPDATE SET status=excluded.status, reason=excluded.reason, "
                "decided_by=excluded.decided_by, reported=excluded.reported, "
                "updated_at=excluded.updated_at",
                (
                    job.job_id,
                    job.analyst,
                    job.job_type,
                    job.dataset,
                    job.purpose,
                    job.spec_yaml,
                    job.status.value,
                    job.reason,
                    job.decided_by,
                    int(job.reported),
                    job.created_at,
                    job.updated_at,
                ),
            )

    def get(self, job_id: str) -> LocalJob:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM jobs WHERE job_id=?", (job_id,)
            ).fetchone()
        if row is None:
            raise NotFound(f"this node has no job {job_id}")
        return self._row(row)

    def jobs(
        self, *, status: JobStatus | None = None, limit: int = 100
    ) -> list[LocalJob]:
        query, args = "SELECT * FROM jobs", []
        if status is not None:
            query, args = query + " WHERE status=?", [status.value]
        with self._lock:
            rows = self._db.execute(
                query + " ORDER BY created_at DESC LIMIT ?", [*args, limit]
            ).fetchall()
        return [self._row(r) for r in rows]

    def set_status(
        self,
        job_id: str,
        status: JobStatus,
        reason: str = "",
        *,
        decided_by: str | None = None,
        reported: bool | None = None,
    ) -> None:
        sets, args = (
            ["status=?", "reason=?", "updated_at=?"],
            [status.value, reason, self._clock()],
        )
        if decided_by is not None:
            sets.append("decided_by=?")
            args.append(decided_by)
        if reported is not None:
            sets.append("reported=?")
            args.append(int(reported))
        with self._lock:
            self._db.execute(
                f"UPDATE jobs SET {', '.join(sets)} WHERE job_id=?",  # noqa: S608
                [*args, job_id],
            )

    def mark_reported(self, job_id: str) -> None:
        """The coordinator has the decision; the status is left as it is now."""
        with self._lock:
            self._db.execute("UPDATE jobs SET reported=1 WHERE job_id=?", (job_id,))

    def holder_decide(
        self,
        job_id: str,
        approve: bool,
        reason: str,
        *,
        sandbox_digest: str | None = None,
    ) -> LocalJob:
        """The holder's manual decision on a held job; reported by the running node.

        Approving a sandbox job also records ``sandbox_digest`` as approved code for
        the job's dataset, in the same transaction.
        """
        now = self._clock()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    "UPDATE jobs SET status=?, reason=?, decided_by='holder', "
                    "reported=0, updated_at=? WHERE job_id=? AND status=?",
                    (
                        JobStatus.APPROVED.value if approve else JobStatus.DENIED.value,
                        reason,
                        now,
                        job_id,
                        JobStatus.PENDING.value,
                    ),
                )
                if cur.rowcount and approve and sandbox_digest:
                    self._db.execute(
                        "INSERT OR IGNORE INTO sandbox_approvals SELECT dataset, ?, "
                        "job_id, ? FROM jobs WHERE job_id=?",
                        (sandbox_digest, now, job_id),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if cur.rowcount == 0:
            job = self.get(job_id)
            raise ConfigError(
                f"job {job_id} is not waiting for a decision (it is {job.status})"
            )
        return self.get(job_id)

    def unreported(self) -> list[LocalJob]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE reported=0 AND status IN (?,?)",
                (JobStatus.APPROVED.value, JobStatus.DENIED.value),
            ).fetchall()
        return [self._row(r) for r in rows]

    # ------------------------------------------------------------ sandbox --
    def digest_approved(self, dataset: str, digest: str) -> bool:
        """Whether the holder approved this exact code bundle for ``dataset``."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM sandbox_approvals WHERE dataset=? AND digest=?",
                (dataset, digest),
            ).fetchone()
        return row is not None

    def hold_output(self, job_id: str, reasons: Sequence[str]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO sandbox_outputs VALUES (?,?,?,'',?)",
                (
                    job_id,
                    OutputStatus.HELD.value,
                    json.dumps(list(reasons)),
                    self._clock(),
                ),
            )

    def output_review(self, job_id: str) -> OutputReview | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM sandbox_outputs WHERE job_id=?", (job_id,)
            ).fetchone()
        return None if row is None else _review(row)

    def held_outputs(self) -> tuple[OutputReview, ...]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM sandbox_outputs WHERE status=? ORDER BY updated_at",
                (OutputStatus.HELD.value,),
            )
            return tuple(_review(r) for r in rows.fetchall())

    def decide_output(self, job_id: str, release: bool, reason: str) -> OutputReview:
        """The holder releases held output anyway, or rejects it (the job fails)."""
        status = OutputStatus.RELEASED if release else OutputStatus.REJECTED
        with self._lock:
            cur = self._db.execute(
                "UPDATE sandbox_outputs SET status=?, reason=?, updated_at=? "
                "WHERE job_id=? AND status=?",
                (status.value, reason, self._clock(), job_id, OutputStatus.HELD.value),
            )
        review = self.output_review(job_id)
        if cur.rowcount == 0 or review is None:
            now = "no held output" if review is None else f"output {review.status}"
            raise ConfigError(f"job {job_id} has no output waiting for you ({now})")
        return review

    def close(self) -> None:
        self._db.close()


def _review(row: tuple[object, ...]) -> OutputReview:
    job_id, status, reasons, reason, updated_at = row
    assert isinstance(updated_at, float)
    return OutputReview(
        str(job_id),
        OutputStatus(str(status)),
        tuple(json.loads(str(reasons))),
        str(reason),
        updated_at,
    )
