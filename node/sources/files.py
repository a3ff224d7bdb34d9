"""Parquet and CSV files (or a directory of Parquet files) queried in place by
DuckDB: filters and aggregates run in DuckDB's streaming engine, so a table far
larger than memory is summarised without being loaded.

Content hash: SHA-256 over the file's bytes; for a directory, over every
``*.parquet`` file's relative path and SHA-256, sorted. It is computed once, when
the node loads the dataset (one sequential read). Before and after every query
the node compares each file's (size, mtime) with what it hashed; if any moved,
it hashes again and refuses the query when the content differs — a file replaced
under a running job is refused, not summarised.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import duckdb

from cleanroom.errors import DatasetError
from cleanroom.jobtypes.predicates import Predicate
from cleanroom.jobtypes.tables import CellQuery, CellResult
from node.sources import sqlgen
from node.sources.summary import summarise

MEMORY_LIMIT: Final = "512MB"
"""DuckDB's working-memory cap per query: it spills to disk past it."""
_TYPES: Final = {
    "BOOLEAN": "bool",
    "TINYINT": "int",
    "SMALLINT": "int",
    "INTEGER": "int",
    "BIGINT": "int",
    "HUGEINT": "int",
    "UTINYINT": "int",
    "USMALLINT": "int",
    "UINTEGER": "int",
    "UBIGINT": "int",
    "FLOAT": "float",
    "DOUBLE": "float",
    "REAL": "float",
}
_CASTS: Final = {
    "int": "BIGINT",
    "float": "DOUBLE",
    "bool": "BOOLEAN",
    "str": "VARCHAR",
}

Stamp = tuple[tuple[str, int, int], ...]


def members(path: Path) -> list[Path]:
    """The files a dataset path stands for."""
    if path.is_dir():
        found = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not found:
            raise DatasetError(f"{path}: a directory with no .parquet files")
        return found
    if not path.is_file():
        raise FileNotFoundError(path)
    return [path]


def stamp(path: Path) -> Stamp:
    out = []
    for member in members(path):
        stat = member.stat()
        out.append((str(member.relative_to(path) if path.is_dir() else member.name),
                    stat.st_mtime_ns, stat.st_size))  # fmt: skip
    return tuple(out)


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_hash(path: Path) -> str:
    """A file's SHA-256; a directory's over (relative path, SHA-256) of each part."""
    if not path.is_dir():
        return file_hash(path)
    digest = hashlib.sha256(b"cleanroom/parquet-directory/v1\n")
    for member in members(path):
        digest.update(f"{member.relative_to(path)}\0{file_hash(member)}\n".encode())
    return digest.hexdigest()


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class FileTable:
    """``Table`` over files, each query a fresh DuckDB connection (thread-safe)."""

    def __init__(
        self,
        name: str,
        path: Path,
        fmt: str,
        declared: dict[str, str],
        *,
        memory_limit: str = MEMORY_LIMIT,
    ) -> None:
        self.name = name
        self._path = path
        self._memory_limit = memory_limit
        if path.is_dir():
            reader = f"read_parquet({_literal(str(path / '**' / '*.parquet'))})"
        elif fmt == "parquet":
            reader = f"read_parquet({_literal(str(path))})"
        else:
            reader = f"read_csv({_literal(str(path))}, header = true)"
        self._reader = reader
        self._stamp = stamp(path)
        self.content_hash = content_hash(path)
        with self._connect() as con:
            described = con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()
        engine_types = {str(r[0]): _TYPES.get(str(r[1]).split("(")[0], "str")
                        for r in described}  # fmt: skip
        for column in declared:
            if column not in engine_types:
                raise DatasetError(
                    f"dataset '{name}' ({path}): declared column '{column}' is not "
                    "in the file"
                )
        self.types = {c: declared.get(c, t) for c, t in engine_types.items()}
        selected = ", ".join(
            f"CAST({sqlgen.quote(c)} AS {_CASTS[declared[c]]}) AS {sqlgen.quote(c)}"
            if c in declared and declared[c] != engine_types[c]
            else sqlgen.quote(c)
            for c in engine_types
        )
        self._source = f"(SELECT {selected} FROM {reader})"
        self._rows = int(self._query(f"SELECT COUNT(*) FROM {self._source}", {})[0][0])

    @property
    def rows(self) -> int:
        return self._rows

    def _connect(self) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(":memory:", config={"memory_limit": self._memory_limit})
        # No progress bar: DuckDB draws one on stdout for queries over 2 s.
        con.execute("PRAGMA disable_progress_bar")
        return con

    def check(self) -> None:
        """Refuse if the files are no longer the content that was hashed."""
        where = f"dataset '{self.name}'"
        try:
            now = stamp(self._path)
        except (FileNotFoundError, DatasetError):
            raise DatasetError(
                f"{where}: its file {self._path} has disappeared"
            ) from None
        if now != self._stamp and content_hash(self._path) != self.content_hash:
            raise DatasetError(
                f"{where}: its file changed on disk after the node loaded it; "
                "restart the node to load and publish the new version"
            )

    def _query(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        try:
            with self._connect() as con:
                return con.execute(sql, params).fetchall()
        except duckdb.Error as exc:
            raise DatasetError(
                f"dataset '{self.name}': the query engine failed ({type(exc).__name__})"
            ) from None

    def _checked(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        self.check()
        found = self._query(sql, params)
        self.check()
        return found

    def count(self, where: Sequence[Predicate]) -> int:
        sql, params = sqlgen.count_sql(sqlgen.DUCKDB, self.types, self._source, where)
        return int(self._checked(sql, params)[0][0])

    def cells(self, query: CellQuery) -> CellResult:
        sql, params, names = sqlgen.cells_sql(
            sqlgen.DUCKDB, self.types, self._source, query
        )
        return summarise(query, names, self._checked(sql, params))

    def frame(self, columns: Sequence[str] | None = None) -> Any:
        """The whole table (or some columns) as pandas: for job types that read
        rows rather than query, and only on datasets that fit in memory."""
        wanted = ", ".join(sqlgen.quote(c) for c in columns) if columns else "*"
        self.check()
        try:
            with self._connect() as con:
                return con.execute(f"SELECT {wanted} FROM {self._source}").df()
        except duckdb.Error as exc:
            raise DatasetError(
                f"dataset '{self.name}': the query engine failed ({type(exc).__name__})"
            ) from None
