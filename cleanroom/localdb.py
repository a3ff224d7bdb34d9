"""One local SQLite file shared by a party's stores (a node's job book, meters and
audit log), so that one decision — an approval, its reservation and its audit
entry — commits in one transaction or not at all.

Transactions nest per thread: only the outermost one issues ``BEGIN IMMEDIATE``
and ``COMMIT`` (or ``ROLLBACK``). Stores that cache state in memory register a
rollback hook to reload it when an enclosing transaction rolls back. Every
commit is synced to disk (``synchronous=FULL``); other processes (the holder's
CLI) share the file through SQLite's own locking.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cleanroom.errors import StoreError

BUSY_TIMEOUT_S = 30.0


class LocalDatabase:
    """A SQLite file with one connection per process, serialised by a lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT
                check_same_thread=False,
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        self._lock = threading.RLock()
        self._local = threading.local()

    @property
    def lock(self) -> threading.RLock:
        """The lock every user of this file takes; stores that keep their own
        in-memory state guard it with this same lock, so they cannot deadlock."""
        return self._lock

    def _depth(self) -> int:
        return getattr(self._local, "depth", 0)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; nested ones join the outermost."""
        with self._lock:
            depth = self._depth()
            if depth:
                self._local.depth = depth + 1
                try:
                    yield self._conn
                finally:
                    self._local.depth = depth
                return
            self._local.depth, self._local.hooks = 1, []
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                hooks: list[Callable[[], None]] = self._local.hooks
                self._local.hooks = []
                for hook in hooks:
                    hook()
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"{self.path}: {exc}") from exc
                raise
            finally:
                self._local.depth = 0

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The connection for reads (inside a transaction it sees its writes)."""
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: {exc}") from exc

    def on_rollback(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` if the enclosing transaction rolls back (no-op outside)."""
        if self._depth():
            self._local.hooks.append(hook)

    def executescript(self, script: str) -> None:
        """Run a schema script as part of the current (or its own) transaction;
        unlike ``sqlite3.executescript`` it never commits someone else's work."""
        with self.transaction() as db:
            for statement in _statements(script):
                db.execute(statement)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _statements(script: str) -> list[str]:
    """Split a script into complete statements (triggers hold inner semicolons)."""
    statements, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n\t;"):
                statements.append(pending.strip())
            pending = ""
    return statements
