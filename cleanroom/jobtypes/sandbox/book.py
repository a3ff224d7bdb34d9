"""The sandbox's records in the node's database: the code digests the holder
approved per dataset, and outputs held for the holder's review. The node process
and the holder's CLI both use them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from cleanroom.errors import ConfigError
from cleanroom.localdb import LocalDatabase

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sandbox_approvals (
    dataset TEXT NOT NULL, digest TEXT NOT NULL, job_id TEXT NOT NULL,
    approved_at REAL NOT NULL, PRIMARY KEY (dataset, digest));
CREATE TABLE IF NOT EXISTS sandbox_runs (
    job_id TEXT PRIMARY KEY, dataset TEXT NOT NULL, digest TEXT NOT NULL,
    analyst TEXT NOT NULL, day TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sandbox_outputs (
    job_id TEXT PRIMARY KEY, status TEXT NOT NULL, reasons TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '', updated_at REAL NOT NULL);
"""


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


class SandboxBook:
    """Approved digests and held outputs; every write is one transaction (or
    joins the caller's, e.g. the holder's approval of the job itself)."""

    def __init__(
        self, db: LocalDatabase, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._db = db
        self._clock = clock
        db.executescript(_SCHEMA)

    def approve_digest(self, dataset: str, digest: str, job_id: str) -> None:
        with self._db.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO sandbox_approvals VALUES (?,?,?,?)",
                (dataset, digest, job_id, self._clock()),
            )

    def digest_approved(self, dataset: str, digest: str) -> bool:
        """Whether the holder approved this exact code bundle for ``dataset``."""
        with self._db.read() as db:
            row = db.execute(
                "SELECT 1 FROM sandbox_approvals WHERE dataset=? AND digest=?",
                (dataset, digest),
            ).fetchone()
        return row is not None

    def runs_today(self, dataset: str, digest: str, analyst: str) -> int:
        """Runs of this code by this analyst on ``dataset`` this UTC day."""
        with self._db.read() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM sandbox_runs WHERE dataset=? AND digest=? "
                "AND analyst=? AND day=?",
                (dataset, digest, analyst, self._day()),
            ).fetchone()
        return int(row[0])

    def record_run(
        self, job_id: str, dataset: str, digest: str, analyst: str, limit: int | None
    ) -> None:
        """Count a run, refusing it (ConfigError) beyond ``limit`` runs today."""
        with self._db.transaction() as db:
            if limit is not None and self.runs_today(dataset, digest, analyst) >= limit:
                raise ConfigError(
                    f"this code already ran {limit} times today on dataset "
                    f"'{dataset}' (sandbox.max_runs_per_digest)"
                )
            db.execute(
                "INSERT OR IGNORE INTO sandbox_runs VALUES (?,?,?,?,?)",
                (job_id, dataset, digest, analyst, self._day()),
            )

    def _day(self) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(self._clock()))

    def hold_output(self, job_id: str, reasons: Sequence[str]) -> None:
        with self._db.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO sandbox_outputs VALUES (?,?,?,'',?)",
                (
                    job_id,
                    OutputStatus.HELD.value,
                    json.dumps(list(reasons)),
                    self._clock(),
                ),
            )

    def output_review(self, job_id: str) -> OutputReview | None:
        with self._db.read() as db:
            row = db.execute(
                "SELECT * FROM sandbox_outputs WHERE job_id=?", (job_id,)
            ).fetchone()
        return None if row is None else _review(row)

    def held_outputs(self) -> tuple[OutputReview, ...]:
        with self._db.read() as db:
            rows = db.execute(
                "SELECT * FROM sandbox_outputs WHERE status=? ORDER BY updated_at",
                (OutputStatus.HELD.value,),
            ).fetchall()
        return tuple(_review(r) for r in rows)

    def decide_output(self, job_id: str, release: bool, reason: str) -> OutputReview:
        """The holder releases held output anyway, or rejects it (the job fails)."""
        status = OutputStatus.RELEASED if release else OutputStatus.REJECTED
        with self._db.transaction() as db:
            cur = db.execute(
                "UPDATE sandbox_outputs SET status=?, reason=?, updated_at=? "
                "WHERE job_id=? AND status=?",
                (status.value, reason, self._clock(), job_id, OutputStatus.HELD.value),
            )
        review = self.output_review(job_id)
        if cur.rowcount == 0 or review is None:
            now = "no held output" if review is None else f"output {review.status}"
            raise ConfigError(f"job {job_id} has no output waiting for you ({now})")
        return review


def _review(row: tuple[object, ...]) -> OutputReview:
    job_id, status, reasons, reason, updated_at = row
    return OutputReview(
        str(job_id),
        OutputStatus(str(status)),
        tuple(json.loads(str(reasons))),
        str(reason),
        float(updated_at),  # type: ignore[arg-type]
    )
