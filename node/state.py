"""The node's local job book, in the node's database: every job it was asked about,
its decision, the holder's manual decisions waiting to be reported, and the signed
requests' nonces it has seen (so a replayed request is refused)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cleanroom.errors import AuthError, ConfigError, NotFound, PolicyRefusal
from cleanroom.localdb import LocalDatabase

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
    updated_at REAL NOT NULL,
    organisation TEXT NOT NULL DEFAULT '',
    signed_request BLOB NOT NULL DEFAULT x'',
    analyst_bundle BLOB NOT NULL DEFAULT x''
);
CREATE TABLE IF NOT EXISTS released_inputs (
    query TEXT NOT NULL, dataset_hash TEXT NOT NULL, survivors TEXT NOT NULL,
    job_id TEXT NOT NULL, PRIMARY KEY (query, dataset_hash)
);
CREATE TABLE IF NOT EXISTS request_nonces (
    nonce TEXT PRIMARY KEY, job_id TEXT NOT NULL, seen_at REAL NOT NULL
);
"""
_COLUMNS = (
    "job_id, analyst, job_type, dataset, purpose, spec_yaml, status, reason, "
    "decided_by, reported, created_at, updated_at, organisation, signed_request, "
    "analyst_bundle"
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
    organisation: str = ""
    signed_request: bytes = b""
    analyst_bundle: bytes = b""


def node_database(data_dir: Path) -> Path:
    """The one SQLite file of a node's state, meters and audit log."""
    return data_dir / "node.db"


class NodeState:
    """Thread- and process-safe: the node process and the holder's CLI share it."""

    def __init__(
        self, db: LocalDatabase | Path, *, clock: Callable[[], float] = time.time
    ) -> None:
        """``db`` is the node's database (shared) or a file of the book's own."""
        self._db = db if isinstance(db, LocalDatabase) else LocalDatabase(Path(db))
        self._clock = clock
        self._db.executescript(_SCHEMA)

    @property
    def db(self) -> LocalDatabase:
        return self._db

    @classmethod
    def open_existing(cls, path: Path) -> NodeState:
        if not path.exists():
            raise ConfigError(f"no node state at {path}: has the node been started?")
        return cls(LocalDatabase(path))

    def _row(self, row: tuple[object, ...]) -> LocalJob:
        values = list(row)
        values[6] = JobStatus(str(values[6]))
        values[9] = bool(values[9])
        for i in (13, 14):
            raw = values[i]
            values[i] = bytes(raw) if isinstance(raw, bytes | memoryview) else b""
        return LocalJob(*values)  # type: ignore[arg-type]

    def record(self, job: LocalJob) -> None:
        with self._db.transaction() as db:
            db.execute(
                f"INSERT INTO jobs ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "  # noqa: S608
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
                    job.organisation,
                    job.signed_request,
                    job.analyst_bundle,
                ),
            )

    def get(self, job_id: str) -> LocalJob:
        with self._db.read() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE job_id=?",  # noqa: S608
                (job_id,),
            ).fetchone()
        if row is None:
            raise NotFound(f"this node has no job {job_id}")
        return self._row(row)

    def jobs(
        self, *, status: JobStatus | None = None, limit: int = 100
    ) -> list[LocalJob]:
        query, args = f"SELECT {_COLUMNS} FROM jobs", []  # noqa: S608
        if status is not None:
            query, args = query + " WHERE status=?", [status.value]
        with self._db.read() as db:
            rows = db.execute(
                query + " ORDER BY created_at DESC LIMIT ?", [*args, limit]
            ).fetchall()
        return [self._row(r) for r in rows]

    def active(self, analyst: str, dataset: str) -> int:
        """How many of the analyst's jobs on ``dataset`` are approved or running."""
        with self._db.read() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM jobs WHERE analyst=? AND dataset=? "
                "AND status IN (?, ?)",
                (analyst, dataset, JobStatus.APPROVED.value, JobStatus.RUNNING.value),
            ).fetchone()
        return int(row[0])

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
        with self._db.transaction() as db:
            db.execute(
                f"UPDATE jobs SET {', '.join(sets)} WHERE job_id=?",  # noqa: S608
                [*args, job_id],
            )

    def mark_reported(self, job_id: str) -> None:
        """The coordinator has the decision; the status is left as it is now."""
        with self._db.transaction() as db:
            db.execute("UPDATE jobs SET reported=1 WHERE job_id=?", (job_id,))

    def holder_decide(self, job_id: str, approve: bool, reason: str) -> LocalJob:
        """The holder's manual decision on a held job; reported by the running node.

        Call it inside ``db.transaction()`` to commit what the approval covers
        (a job type's ``holder_approved``) together with it.
        """
        now = self._clock()
        with self._db.transaction() as db:
            cur = db.execute(
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
            if cur.rowcount == 0:
                job = self.get(job_id)
                raise ConfigError(
                    f"job {job_id} is not waiting for a decision (it is {job.status})"
                )
        return self.get(job_id)

    def unreported(self) -> list[LocalJob]:
        with self._db.read() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE reported=0 AND status IN (?,?)",  # noqa: S608
                (JobStatus.APPROVED.value, JobStatus.DENIED.value),
            ).fetchall()
        return [self._row(r) for r in rows]

    def claim_nonce(self, nonce: str, job_id: str) -> None:
        """Record a signed request's nonce; AuthError if another job used it."""
        with self._db.transaction() as db:
            row = db.execute(
                "SELECT job_id FROM request_nonces WHERE nonce=?", (nonce,)
            ).fetchone()
            if row is not None and row[0] != job_id:
                raise AuthError("this signed request was used before (a replay)")
            if row is None:
                db.execute(
                    "INSERT INTO request_nonces VALUES (?,?,?)",
                    (nonce, job_id, self._clock()),
                )

    def check_inputs(
        self,
        query: str,
        dataset_hash: str,
        survivors: frozenset[str],
        job_id: str,
        *,
        allow_change: bool,
    ) -> None:
        """The first release of ``query`` on this dataset version records whom it
        was aggregated with; another set later is refused unless ``allow_change``
        (the difference of the two would isolate the inputs in one but not the
        other)."""
        names = json.dumps(sorted(survivors))
        with self._db.transaction() as db:
            row = db.execute(
                "SELECT survivors, job_id FROM released_inputs "
                "WHERE query=? AND dataset_hash=?",
                (query, dataset_hash),
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO released_inputs VALUES (?,?,?,?)",
                    (query, dataset_hash, names, job_id),
                )
            elif row[0] != names and not allow_change:
                raise PolicyRefusal(
                    [
                        "this query was released before over other inputs; "
                        "releasing it over these would single out the difference"
                    ]
                )

    def close(self) -> None:
        self._db.close()
