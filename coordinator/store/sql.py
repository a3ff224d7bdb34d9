"""The SQL Store: SQLAlchemy Core over SQLite (default, one file) or PostgreSQL."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Double,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Row,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

from cleanroom.errors import ConfigError, NotFound, StoreError
from cleanroom.model import Decision, JobEvent, JobRecord, JobState, NodeRecord
from coordinator.store.base import Store

SCHEMA_VERSION = 2

# Seconds a SQLite writer waits for another writer's lock before failing.
SQLITE_BUSY_TIMEOUT = 30.0

METADATA = MetaData()

jobs_table = Table(
    "jobs",
    METADATA,
    Column("job_id", String(200), primary_key=True),
    Column("analyst", String(200), nullable=False),
    Column("job_type", String(100), nullable=False),
    Column("spec_yaml", Text, nullable=False),
    Column("spec_hash", String(200), nullable=False),
    Column("state", String(32), nullable=False),
    Column("reason", Text, nullable=False),
    Column("progress", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("organisation", String(200), nullable=False, server_default=""),
    # Bumped by append_event; the row lock this takes is what makes seq atomic.
    Column("last_event_seq", Integer, nullable=False, server_default="0"),
    Index("ix_jobs_analyst_created", "analyst", "created_at"),
    Index("ix_jobs_state_created", "state", "created_at"),
    Index("ix_jobs_created", "created_at"),
)

decisions_table = Table(
    "decisions",
    METADATA,
    Column("job_id", ForeignKey("jobs.job_id"), primary_key=True),
    Column("node", String(200), primary_key=True),
    Column("approved", Boolean, nullable=False),
    Column("reason", Text, nullable=False),
    Column("decided_at", Double, nullable=False),
)

results_table = Table(
    "results",
    METADATA,
    Column("job_id", ForeignKey("jobs.job_id"), primary_key=True),
    Column("result", LargeBinary, nullable=False),
)

events_table = Table(
    "events",
    METADATA,
    Column("job_id", ForeignKey("jobs.job_id"), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("at", Double, nullable=False),
    Column("kind", String(100), nullable=False),
    Column("detail", Text, nullable=False),
)

nodes_table = Table(
    "nodes",
    METADATA,
    Column("name", String(200), primary_key=True),
    Column("key_bundle", LargeBinary, nullable=False),
    Column("catalog_json", Text, nullable=False),
    Column("registered_at", Double, nullable=False),
    Column("last_seen", Double, nullable=False),
)

schema_version_table = Table(
    "schema_version",
    METADATA,
    Column("version", Integer, primary_key=True),
)

_JOB_COLUMNS = [c for c in jobs_table.c if c.name != "last_event_seq"]


class SqlStore(Store):
    """A Store in a SQL database; tables are created on open.

    ``url`` is ``sqlite:///path/to/coordinator.db`` (the file and its directory
    are created if missing) or ``postgresql://user:pass@host/db`` (driven by
    psycopg 3). ConfigError for any other URL, StoreError if the database cannot
    be opened or holds a schema of another version.
    """

    def __init__(self, url: str) -> None:
        self._url = _normalise_url(url)
        self._engine = _create_engine(self._url)
        # SQLite writers take the write lock up front (BEGIN IMMEDIATE) so that
        # they queue on the busy timeout instead of failing mid-transaction.
        self._writer = self._engine.execution_options(cleanroom_write=True)
        try:
            self._open_schema()
        except BaseException:
            self._engine.dispose()
            raise

    def __repr__(self) -> str:
        return f"SqlStore({self._url.render_as_string(hide_password=True)!r})"

    # --- jobs -------------------------------------------------------------
    def create_job(self, job: JobRecord) -> None:
        values = {c.name: getattr(job, c.name) for c in _JOB_COLUMNS}
        values["state"] = JobState(job.state).value
        try:
            with self._write("create job") as conn:
                conn.execute(insert(jobs_table).values(values))
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise StoreError(f"job {job.job_id!r} already exists") from exc
            raise

    def get_job(self, job_id: str) -> JobRecord:
        with self._read("get job") as conn:
            return _job_from_row(self._job_row(conn, job_id))

    def list_jobs(
        self, *, analyst: str | None = None, limit: int = 100
    ) -> list[JobRecord]:
        if limit <= 0:
            return []
        query = select(*_JOB_COLUMNS)
        if analyst is not None:
            query = query.where(jobs_table.c.analyst == analyst)
        query = query.order_by(
            jobs_table.c.created_at.desc(), jobs_table.c.job_id.desc()
        ).limit(limit)
        with self._read("list jobs") as conn:
            return [_job_from_row(row) for row in conn.execute(query)]

    def jobs_in_states(self, states: Collection[JobState]) -> list[JobRecord]:
        values = sorted({JobState(s).value for s in states})
        if not values:
            return []
        query = (
            select(*_JOB_COLUMNS)
            .where(jobs_table.c.state.in_(values))
            .order_by(jobs_table.c.created_at, jobs_table.c.job_id)
        )
        with self._read("list jobs by state") as conn:
            return [_job_from_row(row) for row in conn.execute(query)]

    def transition(
        self,
        job_id: str,
        *,
        expected: Collection[JobState],
        new: JobState,
        reason: str = "",
        at: float,
    ) -> JobRecord | None:
        values = sorted({JobState(s).value for s in expected})
        # One UPDATE whose WHERE holds the expected states: the database decides
        # the race, so a job moved by someone else is never moved again.
        cas = (
            update(jobs_table)
            .where(jobs_table.c.job_id == job_id, jobs_table.c.state.in_(values))
            .values(state=JobState(new).value, reason=reason, updated_at=at)
            .returning(*_JOB_COLUMNS)
        )
        with self._write("transition job") as conn:
            row = conn.execute(cas).first() if values else None
            if row is None:
                self._job_row(conn, job_id)
                return None
            return _job_from_row(row)

    def set_progress(self, job_id: str, progress: str, *, at: float) -> None:
        stmt = (
            update(jobs_table)
            .where(jobs_table.c.job_id == job_id)
            .values(progress=progress, updated_at=at)
        )
        with self._write("set progress") as conn:
            if conn.execute(stmt).rowcount == 0:
                raise NotFound(f"no job {job_id!r}")

    # --- decisions, results, events -----------------------------------------
    def record_decision(self, decision: Decision) -> None:
        values = {
            "job_id": decision.job_id,
            "node": decision.node,
            "approved": decision.approved,
            "reason": decision.reason,
            "decided_at": decision.decided_at,
        }
        with self._write("record decision") as conn:
            self._job_row(conn, decision.job_id)
            self._upsert(conn, decisions_table, values, ("job_id", "node"))

    def decisions(self, job_id: str) -> list[Decision]:
        query = (
            select(decisions_table)
            .where(decisions_table.c.job_id == job_id)
            .order_by(decisions_table.c.node)
        )
        with self._read("list decisions") as conn:
            self._job_row(conn, job_id)
            return [
                Decision(
                    job_id=row.job_id,
                    node=row.node,
                    approved=bool(row.approved),
                    reason=row.reason,
                    decided_at=float(row.decided_at),
                )
                for row in conn.execute(query)
            ]

    def put_result(self, job_id: str, result: bytes) -> None:
        values = {"job_id": job_id, "result": result}
        with self._write("store result") as conn:
            self._job_row(conn, job_id)
            self._upsert(conn, results_table, values, ("job_id",))

    def get_result(self, job_id: str) -> bytes:
        query = select(results_table.c.result).where(results_table.c.job_id == job_id)
        with self._read("get result") as conn:
            result = conn.execute(query).scalar()
        if result is None:
            raise NotFound(f"no result for job {job_id!r}")
        return bytes(result)

    def append_event(
        self, job_id: str, kind: str, detail: str, *, at: float
    ) -> JobEvent:
        bump = (
            update(jobs_table)
            .where(jobs_table.c.job_id == job_id)
            .values(last_event_seq=jobs_table.c.last_event_seq + 1)
            .returning(jobs_table.c.last_event_seq)
        )
        with self._write("append event") as conn:
            seq = conn.execute(bump).scalar()
            if seq is None:
                raise NotFound(f"no job {job_id!r}")
            event = JobEvent(job_id=job_id, seq=seq, at=at, kind=kind, detail=detail)
            conn.execute(insert(events_table).values(asdict(event)))
            return event

    def events(self, job_id: str) -> list[JobEvent]:
        query = (
            select(events_table)
            .where(events_table.c.job_id == job_id)
            .order_by(events_table.c.seq)
        )
        with self._read("list events") as conn:
            self._job_row(conn, job_id)
            return [
                JobEvent(
                    job_id=row.job_id,
                    seq=int(row.seq),
                    at=float(row.at),
                    kind=row.kind,
                    detail=row.detail,
                )
                for row in conn.execute(query)
            ]

    # --- nodes ----------------------------------------------------------------
    def upsert_node(self, node: NodeRecord) -> None:
        with self._write("register node") as conn:
            self._upsert(conn, nodes_table, asdict(node), ("name",))

    def get_node(self, name: str) -> NodeRecord:
        query = select(nodes_table).where(nodes_table.c.name == name)
        with self._read("get node") as conn:
            row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"no node {name!r}")
        return _node_from_row(row)

    def list_nodes(self) -> list[NodeRecord]:
        query = select(nodes_table).order_by(nodes_table.c.name)
        with self._read("list nodes") as conn:
            return [_node_from_row(row) for row in conn.execute(query)]

    def touch_node(self, name: str, *, at: float) -> None:
        stmt = (
            update(nodes_table).where(nodes_table.c.name == name).values(last_seen=at)
        )
        with self._write("touch node") as conn:
            if conn.execute(stmt).rowcount == 0:
                raise NotFound(f"no node {name!r}")

    def close(self) -> None:
        self._engine.dispose()

    # --- plumbing -------------------------------------------------------------
    @contextmanager
    def _read(self, action: str) -> Iterator[Connection]:
        with _store_errors(action), self._engine.begin() as conn:
            yield conn

    @contextmanager
    def _write(self, action: str) -> Iterator[Connection]:
        with _store_errors(action), self._writer.begin() as conn:
            yield conn

    def _job_row(self, conn: Connection, job_id: str) -> Row[Any]:
        query = select(*_JOB_COLUMNS).where(jobs_table.c.job_id == job_id)
        row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"no job {job_id!r}")
        return row

    def _upsert(
        self,
        conn: Connection,
        table: Table,
        values: Mapping[str, Any],
        keys: Sequence[str],
    ) -> None:
        updates = {name: value for name, value in values.items() if name not in keys}
        if conn.dialect.name == "postgresql":
            pg = postgresql.insert(table).values(values)
            conn.execute(pg.on_conflict_do_update(index_elements=keys, set_=updates))
        else:
            lite = sqlite.insert(table).values(values)
            conn.execute(lite.on_conflict_do_update(index_elements=keys, set_=updates))

    def _open_schema(self) -> None:
        with _store_errors("create schema"), self._writer.begin() as conn:
            METADATA.create_all(conn)
            found = conn.execute(select(schema_version_table.c.version)).scalars().all()
            if not found:
                conn.execute(
                    insert(schema_version_table).values(version=SCHEMA_VERSION)
                )
            elif found != [SCHEMA_VERSION]:
                raise StoreError(
                    f"database schema version {found} is not the supported "
                    f"version {SCHEMA_VERSION}"
                )


@contextmanager
def _store_errors(action: str) -> Iterator[None]:
    try:
        yield
    except SQLAlchemyError as exc:
        raise StoreError(f"{action} failed: {exc}") from exc


def _normalise_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"not a database URL: {url!r}") from exc
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        database = parsed.database or ""
        if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
            raise ConfigError(
                "an in-memory SQLite database is not shared between threads; "
                "use memory:// for a throwaway store or sqlite:///path/to/file.db"
            )
        if not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return parsed.set(drivername="sqlite+pysqlite")
    raise ConfigError(
        f"unsupported database URL scheme {parsed.drivername!r}: "
        "use sqlite:///path/to/file.db or postgresql://user@host/db"
    )


def _create_engine(url: URL) -> Engine:
    try:
        if url.get_backend_name() == "postgresql":
            return create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)
        engine = create_engine(
            url,
            connect_args={
                "check_same_thread": False,
                "timeout": SQLITE_BUSY_TIMEOUT,
            },
            pool_size=8,
            max_overflow=8,
        )
    except (ArgumentError, ImportError) as exc:
        raise ConfigError(f"cannot use database URL: {exc}") from exc
    _take_over_sqlite_transactions(engine)
    return engine


def _take_over_sqlite_transactions(engine: Engine) -> None:
    """Issue BEGIN ourselves: pysqlite's own BEGIN is deferred, and a deferred
    transaction that must later upgrade to a writer fails at once under WAL."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("cleanroom_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def _job_from_row(row: Row[Any]) -> JobRecord:
    # float(): SQLite hands back 2.0 as the integer 2 from an UPDATE ... RETURNING.
    try:
        state = JobState(row.state)
    except ValueError:
        raise StoreError(
            f"job {row.job_id!r} has unknown state {row.state!r}"
        ) from None
    return JobRecord(
        job_id=row.job_id,
        analyst=row.analyst,
        job_type=row.job_type,
        spec_yaml=row.spec_yaml,
        spec_hash=row.spec_hash,
        state=state,
        reason=row.reason,
        progress=row.progress,
        created_at=float(row.created_at),
        updated_at=float(row.updated_at),
        organisation=row.organisation,
    )


def _node_from_row(row: Row[Any]) -> NodeRecord:
    return NodeRecord(
        name=row.name,
        key_bundle=bytes(row.key_bundle),
        catalog_json=row.catalog_json,
        registered_at=float(row.registered_at),
        last_seen=float(row.last_seen),
    )
