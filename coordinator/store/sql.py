"""The SQL Store: SQLAlchemy Core over SQLite (default, one file) or PostgreSQL."""

from __future__ import annotations

import threading
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
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

from cleanroom.errors import ConfigError, NotFound, StoreError
from cleanroom.model import (
    Decision,
    JobEvent,
    JobRecord,
    JobState,
    ModelEntry,
    NodeRecord,
)
from coordinator.store.base import Mail, Step, Store

SCHEMA_VERSION = 3

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
    Column("progress_json", Text, nullable=False, server_default=""),
    Column("signed_request", LargeBinary, nullable=False, default=b""),
    Column("analyst_bundle", LargeBinary, nullable=False, default=b""),
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

models_table = Table(
    "models",
    METADATA,
    Column("job_id", ForeignKey("jobs.job_id"), primary_key=True),
    Column("analyst", String(200), nullable=False),
    Column("job_type", String(100), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("card_json", Text, nullable=False),
    Index("ix_models_analyst_created", "analyst", "created_at"),
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
    Column("assets_json", Text, nullable=False, server_default="[]"),
    Column("registered_at", Double, nullable=False),
    Column("last_seen", Double, nullable=False),
)

mail_table = Table(
    "mail",
    METADATA,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("recipient", String(300), nullable=False),
    Column("job_id", String(200), nullable=False),
    Column("kind", String(40), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Index("ix_mail_recipient_seq", "recipient", "seq"),
    Index("ix_mail_job", "job_id"),
    sqlite_autoincrement=True,
)

journal_table = Table(
    "journal",
    METADATA,
    Column("idx", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(200), nullable=False),
    Column("entry", LargeBinary, nullable=False),
    Index("ix_journal_job_idx", "job_id", "idx"),
    sqlite_autoincrement=True,
)

schema_version_table = Table(
    "schema_version",
    METADATA,
    Column("version", Integer, primary_key=True),
)

_JOB_COLUMNS = [c for c in jobs_table.c if c.name != "last_event_seq"]

# Hot statements, built once: SQLAlchemy then reuses their compiled form.
_SELECT_JOB = select(*_JOB_COLUMNS).where(jobs_table.c.job_id == bindparam("job_id"))
_SET_PROGRESS = (
    update(jobs_table)
    .where(jobs_table.c.job_id == bindparam("b_job_id"))
    .values(
        progress=bindparam("b_progress"),
        progress_json=bindparam("b_doc"),
        updated_at=bindparam("b_at"),
    )
)
_PUT_MAIL = insert(mail_table).returning(mail_table.c.seq)
_MAIL_AFTER = (
    select(mail_table)
    .where(
        mail_table.c.recipient == bindparam("recipient"),
        mail_table.c.seq > bindparam("after"),
    )
    .order_by(mail_table.c.seq)
    .limit(bindparam("limit"))
)
_ACK_MAIL = delete(mail_table).where(
    mail_table.c.recipient == bindparam("b_recipient"),
    mail_table.c.seq <= bindparam("b_upto"),
)
_ADD_JOURNAL = insert(journal_table)


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
        # SQLite has one writer at a time; writers of this process queue on a lock
        # here rather than in SQLite's busy handler, which sleeps up to 100 ms.
        self._serial = (
            threading.Lock() if self._url.get_backend_name() == "sqlite" else None
        )
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

    def set_progress(
        self, job_id: str, progress: str, *, at: float, progress_json: str = ""
    ) -> None:
        with self._write("set progress") as conn:
            self._set_progress(conn, job_id, progress, at, progress_json)

    def _set_progress(
        self, conn: Connection, job_id: str, progress: str, at: float, doc: str
    ) -> None:
        values = {"b_job_id": job_id, "b_progress": progress, "b_doc": doc, "b_at": at}
        if conn.execute(_SET_PROGRESS, values).rowcount == 0:
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

    def put_model(self, entry: ModelEntry) -> None:
        values = asdict(entry)
        with self._write("register model") as conn:
            self._job_row(conn, entry.job_id)
            self._upsert(conn, models_table, values, ("job_id",))

    def get_model(self, job_id: str) -> ModelEntry:
        query = select(models_table).where(models_table.c.job_id == job_id)
        with self._read("get model") as conn:
            row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"no model for job {job_id!r}")
        return _model_from_row(row)

    def list_models(
        self, *, analyst: str | None = None, limit: int = 100
    ) -> list[ModelEntry]:
        if limit <= 0:
            return []
        query = select(models_table)
        if analyst is not None:
            query = query.where(models_table.c.analyst == analyst)
        query = query.order_by(
            models_table.c.created_at.desc(), models_table.c.job_id.desc()
        ).limit(limit)
        with self._read("list models") as conn:
            return [_model_from_row(row) for row in conn.execute(query)]

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

    # --- mailboxes -------------------------------------------------------------
    def mail_put(self, items: Sequence[tuple[str, str, str, bytes]]) -> list[int]:
        with self._write("queue mail") as conn:
            return self._put(conn, items)

    def _put(
        self, conn: Connection, items: Sequence[tuple[str, str, str, bytes]]
    ) -> list[int]:
        seqs = []
        for recipient, job_id, kind, body in items:
            row = {"recipient": recipient, "job_id": job_id, "kind": kind, "body": body}
            seqs.append(int(conn.execute(_PUT_MAIL, row).scalar_one()))
        return seqs

    def mail_after(self, recipient: str, after: int, *, limit: int) -> list[Mail]:
        if limit <= 0:
            return []
        args = {"recipient": recipient, "after": after, "limit": limit}
        with self._read("read mail") as conn:
            return [
                Mail(int(r.seq), r.recipient, r.job_id, r.kind, bytes(r.body))
                for r in conn.execute(_MAIL_AFTER, args)
            ]

    def mail_ack(self, recipient: str, upto: int) -> None:
        with self._write("acknowledge mail") as conn:
            conn.execute(_ACK_MAIL, {"b_recipient": recipient, "b_upto": upto})

    def mail_discard(
        self, job_id: str, kinds: Collection[str], *, keep: Collection[str] = ()
    ) -> None:
        wanted = sorted(set(kinds))
        if not wanted:
            return
        stmt = delete(mail_table).where(
            mail_table.c.job_id == job_id, mail_table.c.kind.in_(wanted)
        )
        if keep:
            stmt = stmt.where(mail_table.c.recipient.not_in(sorted(set(keep))))
        with self._write("discard mail") as conn:
            conn.execute(stmt)

    def mail_clear(self, recipient: str, kinds: Collection[str]) -> None:
        wanted = sorted(set(kinds))
        if not wanted:
            return
        stmt = delete(mail_table).where(
            mail_table.c.recipient == recipient, mail_table.c.kind.in_(wanted)
        )
        with self._write("clear mail") as conn:
            conn.execute(stmt)

    def mail_count(self, recipient: str) -> int:
        query = select(func.count()).where(mail_table.c.recipient == recipient)
        with self._read("count mail") as conn:
            return int(conn.execute(query).scalar_one())

    # --- protocol journals ----------------------------------------------------
    def commit_step(self, step: Step) -> list[int]:
        with self._write("commit a protocol step") as conn:
            self._job_row(conn, step.job_id)
            if step.journal:
                conn.execute(
                    _ADD_JOURNAL,
                    [{"job_id": step.job_id, "entry": e} for e in step.journal],
                )
            seqs = self._put(conn, [(r, step.job_id, k, b) for r, k, b in step.mail])
            if step.consumed is not None:
                box, done = step.consumed
                conn.execute(
                    delete(mail_table).where(
                        mail_table.c.recipient == box,
                        mail_table.c.seq.in_(sorted(done)),
                    )
                )
            if step.progress is not None:
                self._set_progress(
                    conn, step.job_id, step.progress, step.at, step.progress_json
                )
            return seqs

    def journal(self, job_id: str) -> list[bytes]:
        query = (
            select(journal_table.c.entry)
            .where(journal_table.c.job_id == job_id)
            .order_by(journal_table.c.idx)
        )
        with self._read("read journal") as conn:
            return [bytes(e) for e in conn.execute(query).scalars()]

    def journal_drop(self, job_id: str) -> None:
        stmt = delete(journal_table).where(journal_table.c.job_id == job_id)
        with self._write("drop journal") as conn:
            conn.execute(stmt)

    def close(self) -> None:
        self._engine.dispose()

    # --- plumbing -------------------------------------------------------------
    @contextmanager
    def _read(self, action: str) -> Iterator[Connection]:
        with _store_errors(action), self._engine.begin() as conn:
            yield conn

    @contextmanager
    def _write(self, action: str) -> Iterator[Connection]:
        if self._serial is None:
            with _store_errors(action), self._writer.begin() as conn:
                yield conn
            return
        with self._serial, _store_errors(action), self._writer.begin() as conn:
            yield conn

    def _job_row(self, conn: Connection, job_id: str) -> Row[Any]:
        row = conn.execute(_SELECT_JOB, {"job_id": job_id}).first()
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
        progress_json=row.progress_json,
        signed_request=bytes(row.signed_request or b""),
        analyst_bundle=bytes(row.analyst_bundle or b""),
    )


def _node_from_row(row: Row[Any]) -> NodeRecord:
    return NodeRecord(
        name=row.name,
        key_bundle=bytes(row.key_bundle),
        catalog_json=row.catalog_json,
        assets_json=row.assets_json,
        registered_at=float(row.registered_at),
        last_seen=float(row.last_seen),
    )


def _model_from_row(row: Row[Any]) -> ModelEntry:
    return ModelEntry(
        job_id=row.job_id,
        analyst=row.analyst,
        job_type=row.job_type,
        created_at=float(row.created_at),
        card_json=row.card_json,
    )
