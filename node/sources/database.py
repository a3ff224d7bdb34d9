"""A table or query in a SQL database (an SQLAlchemy URL; PostgreSQL is the tested
one): filters and aggregates run in the database, one statement per job.

Content hash, one of two, chosen by the holder:

* ``streamed`` (default): SHA-256 over the rows in a canonical order (``ORDER BY``
  every published column), each row as canonical JSON. The node computes it when
  it loads the dataset and again inside the same REPEATABLE READ transaction as
  every job's aggregate, so the released numbers and the signed hash describe
  one snapshot. Exact and needing nothing from the database, but each job pays
  one ordered scan of the table.
* ``snapshot_query``: a holder-declared statement returning one value that
  changes whenever the data does (a version or load id, ``max(updated_at)``, a
  partition's snapshot id). The hash is SHA-256 over the source and that value;
  the check is one cheap query in the job's transaction. It relies on the
  holder's own guarantee that the value changes with the content: the node can
  no longer detect an edit that leaves it unchanged.

A database that is down or goes away mid-job fails that job with a reason naming
the dataset (never the URL, which may hold a password); the engine's pool checks
connections before use, so the next job reconnects.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

import sqlalchemy as sa

from cleanroom.errors import DatasetError
from cleanroom.jobtypes.predicates import Predicate
from cleanroom.jobtypes.tables import CellQuery, CellResult
from node.sources import sqlgen
from node.sources.summary import summarise

_HASH_BATCH: Final = 10_000


def _dialect(engine: sa.Engine) -> sqlgen.Dialect:
    if engine.dialect.name == "postgresql":
        return sqlgen.POSTGRES
    raise DatasetError(
        f"datasets in '{engine.dialect.name}' databases are not supported "
        "(supported: postgresql)"
    )


class DatabaseTable:
    """``Table`` over a SQL table or query; every call verifies the content."""

    def __init__(
        self,
        name: str,
        url: str,
        relation: str,
        declared: dict[str, str],
        *,
        snapshot_query: str = "",
    ) -> None:
        self.name = name
        self.types = dict(declared)
        self._snapshot_query = snapshot_query
        self._columns = list(declared)
        selected = ", ".join(sqlgen.quote(c) for c in self._columns)
        self._source = f"(SELECT {selected} FROM {relation} AS base)"
        try:
            self._engine = sa.create_engine(url, pool_pre_ping=True)
        except (sa.exc.ArgumentError, ImportError):
            raise DatasetError(
                f"dataset '{name}': not a usable SQLAlchemy database URL"
            ) from None
        self._dialect = _dialect(self._engine)
        self._identity = f"{self._engine.dialect.name}\0{relation}\0{selected}"
        with self._transaction() as conn:
            self.content_hash = self._hash(conn)
            counted = conn.execute(sa.text(f"SELECT COUNT(*) FROM {self._source} AS s"))
            self._rows = int(counted.scalar_one())

    @property
    def rows(self) -> int:
        return self._rows

    @contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        """One REPEATABLE READ, read-only transaction; database faults become a
        DatasetError naming the dataset and the error type, nothing else."""
        try:
            with self._engine.connect() as conn:
                conn = conn.execution_options(
                    isolation_level="REPEATABLE READ", postgresql_readonly=True
                )
                with conn.begin():
                    yield conn
        except sa.exc.DBAPIError as exc:
            kind = (
                type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__
            )
            if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
                raise DatasetError(
                    f"dataset '{self.name}': its database is unreachable ({kind}); "
                    "the next job reconnects"
                ) from None
            raise DatasetError(
                f"dataset '{self.name}': the database refused the query ({kind})"
            ) from None

    def _hash(self, conn: sa.Connection) -> str:
        if self._snapshot_query:
            value = conn.execute(sa.text(self._snapshot_query)).scalar()
            digest = hashlib.sha256(b"cleanroom/sql-snapshot/v1\n")
            digest.update(self._identity.encode() + b"\n")
            digest.update(json.dumps(value, default=str).encode())
            return digest.hexdigest()
        order = ", ".join(str(i + 1) for i in range(len(self._columns)))
        result = conn.execution_options(stream_results=True).execute(
            sa.text(f"SELECT * FROM {self._source} AS src ORDER BY {order}")
        )
        digest = hashlib.sha256(b"cleanroom/sql-rows/v1\n")
        digest.update(self._identity.encode() + b"\n")
        for batch in result.partitions(_HASH_BATCH):
            for row in batch:
                digest.update(json.dumps(list(row), default=str).encode() + b"\n")
        return digest.hexdigest()

    def _checked(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with self._transaction() as conn:
            if self._hash(conn) != self.content_hash:
                raise DatasetError(
                    f"dataset '{self.name}': its table changed after the node "
                    "loaded it; restart the node to load and publish the new version"
                )
            return [tuple(r) for r in conn.execute(sa.text(sql), params).fetchall()]

    def check(self) -> None:
        """The cheap check: only a snapshot query is re-run outside a job."""
        if self._snapshot_query:
            self._checked("SELECT 1", {})

    def count(self, where: Sequence[Predicate]) -> int:
        sql, params = sqlgen.count_sql(self._dialect, self.types, self._source, where)
        return int(self._checked(sql, params)[0][0])

    def cells(self, query: CellQuery) -> CellResult:
        sql, params, names = sqlgen.cells_sql(
            self._dialect, self.types, self._source, query
        )
        return summarise(query, names, self._checked(sql, params))

    def frame(self, columns: Sequence[str] | None = None) -> Any:
        """The whole table (or some columns) as pandas, for row-reading job types."""
        import pandas as pd

        wanted = ", ".join(sqlgen.quote(c) for c in columns) if columns else "*"
        with self._transaction() as conn:
            result = conn.execute(sa.text(f"SELECT {wanted} FROM {self._source} AS s"))
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))

    def dispose(self) -> None:
        self._engine.dispose()
