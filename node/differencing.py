"""The node's differencing defence (``protocols.differencing``) for releases without
DP: per dataset, one record of released cells per analyst and one per organisation,
kept in the node's database so that they survive a restart.

Every check of one dataset runs under one lock, from screening to the stored
record, so two jobs released at once are checked as if one came after the other.
A record is bounded by the policy's ``differencing.capacity``: when full, the job is
refused (never evicted: evicting a cell re-opens differencing against it).

The row set of a cell is the set of the dataset's identifier values (its
``id_column``), or of row positions when it has none (then a changed file moves
the identities, and the holder should name an id column).

``arrange`` gives the node its in-memory rows sorted by differencing bucket, once
per load, in place of the file order: a cell's sketch is then one packed pass over
its mask, with no reordering (docs/policy.md, "Cost"). The node hands rows in that
order only to job types that declare themselves ``row_order_free``: an output that
followed the order would show which rows share a bucket."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from cleanroom.errors import ConfigError, PolicyRefusal
from cleanroom.jobtypes.base import CellPartition
from cleanroom.localdb import LocalDatabase
from protocols.differencing import (
    CellSketch,
    DifferencingKey,
    ReleaseRecord,
    RowIndex,
    admit,
)
from protocols.differencing.geometry import MAX_GROUP_SIZE
from protocols.party import SYSTEM_RANDOM, RandomSource

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS differencing_keys (
    dataset TEXT PRIMARY KEY, secret BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS differencing_records (
    dataset TEXT NOT NULL, scope TEXT NOT NULL, group_size INTEGER NOT NULL,
    capacity INTEGER NOT NULL, PRIMARY KEY (dataset, scope));
CREATE TABLE IF NOT EXISTS differencing_cells (
    dataset TEXT NOT NULL, scope TEXT NOT NULL, seq INTEGER NOT NULL,
    cell BLOB NOT NULL, PRIMARY KEY (dataset, scope, seq));
"""
MIN_RECORD_GROUP_SIZE: Final = 10
"""Records are sized for group sizes up to at least this, so that a holder may
raise ``min_group_size`` later without starting new records."""


@dataclass(frozen=True)
class ReleaseScope:
    """Whose releases one check compares against: the analyst's and, when it has
    one, the organisation's."""

    analyst: str
    organisation: str

    def names(self) -> list[str]:
        out = [f"analyst:{self.analyst}"]
        if self.organisation:
            out.append(f"organisation:{self.organisation}")
        return out


@dataclass(frozen=True)
class _Index:
    """A dataset version's row index, in file order and arranged by bucket."""

    dataset_hash: str
    rows: RowIndex
    arranged: RowIndex
    order: npt.NDArray[np.intp]

    def sketch(
        self,
        labels: npt.NDArray[np.signedinteger[Any]],
        count: int,
        *,
        arranged: bool,
    ) -> list[CellSketch]:
        """Sketches of the cells ``labels`` (file order, or bucket order when
        ``arranged``) mark."""
        if labels.shape != (self.rows.rows,) or labels.dtype.kind not in "iu":
            raise ConfigError(f"the cell labels must be {self.rows.rows} integers")
        if arranged:
            if count == 1:  # one cell (a count): one packed pass over its mask
                return [self.arranged.cell(labels == 0)]
            return self.arranged.cells(labels, count)
        if count == 1:
            # File order: the mask is reordered to the index's bucket order first.
            return [self.arranged.cell((labels == 0)[self.order])]
        return self.rows.cells(labels, count)


@dataclass(frozen=True)
class Arrangement:
    """A dataset's rows in bucket order: arranged row i is file row ``order[i]``."""

    frame: pd.DataFrame
    order: npt.NDArray[np.intp]


class ReleaseGuard:
    """Differencing records of every dataset of one node."""

    def __init__(
        self,
        db: LocalDatabase,
        *,
        audit: Callable[[str, dict[str, object]], object] = lambda job, data: None,
        random: RandomSource = SYSTEM_RANDOM,
    ) -> None:
        self._db = db
        self._audit = audit
        self._random = random
        self._lock = threading.Lock()
        self._indexes: dict[str, _Index] = {}
        self._records: dict[tuple[str, str], ReleaseRecord] = {}
        self._keys: dict[str, DifferencingKey] = {}
        db.executescript(_SCHEMA)

    def check(
        self,
        *,
        job_id: str,
        dataset: str,
        dataset_hash: str,
        frame: pd.DataFrame,
        id_column: str,
        scope: ReleaseScope,
        min_group_size: int,
        capacity: int,
        partitions: Sequence[CellPartition],
        arranged: bool = False,
    ) -> list[bool]:
        """Which cells may be released; records the allowed ones, all or nothing.
        QuotaExceeded when a record is full.

        ``arranged``: ``frame`` and the labels are in the order ``arrange`` gave
        for this ``dataset_hash`` (else they are in file order)."""
        with self._lock:
            key = self._key(dataset)
            if arranged:
                index = self._indexes.get(dataset)
                if index is None or index.dataset_hash != dataset_hash:
                    raise ConfigError(
                        f"dataset {dataset!r} was not arranged for this version"
                    )
            else:
                index = self._index(dataset, dataset_hash, frame, id_column, key)
            sketches = [
                sketch
                for labels, count in partitions
                for sketch in index.sketch(np.asarray(labels), count, arranged=arranged)
            ]
            records = [
                self._record(dataset, name, key, min_group_size, capacity)
                for name in scope.names()
            ]
            before = [len(r) for r in records]
            try:
                allowed = admit(sketches, records, min_group_size=min_group_size)
                grown = [
                    (record, size)
                    for record, size in zip(records, before, strict=True)
                    if len(record) > size
                ]
                if grown:  # nothing new recorded: nothing to write
                    self._store(dataset, grown)
            except BaseException:
                for record in records:  # reload from the database next time
                    self._records.pop((dataset, record.scope), None)
                raise
        refused = allowed.count(False)
        if refused:
            self._audit(
                job_id,
                {"dataset": dataset, "cells": len(allowed), "refused": refused},
            )
        return allowed

    def _store(self, dataset: str, grown: Sequence[tuple[ReleaseRecord, int]]) -> None:
        """Append the cells each record gained since it held ``size``, in one
        synced transaction: a release costs its own cells' bytes, however long
        the record is."""
        with self._db.transaction() as db:
            for record, size in grown:
                if size == 0:  # a new record: its row, once
                    db.execute(
                        "INSERT OR IGNORE INTO differencing_records VALUES "
                        "(?, ?, ?, ?)",
                        (dataset, record.scope, record.group_size, record.capacity),
                    )
                db.executemany(
                    "INSERT INTO differencing_cells VALUES (?, ?, ?, ?)",
                    [
                        (dataset, record.scope, size + i, blob)
                        for i, blob in enumerate(record.cell_bytes(size))
                    ],
                )

    def arrange(
        self, *, dataset: str, dataset_hash: str, frame: pd.DataFrame, id_column: str
    ) -> Arrangement:
        """``frame`` (file order) sorted by differencing bucket, for ``check`` with
        ``arranged=True``; the index of this version is built here, once."""
        with self._lock:
            key = self._key(dataset)
            index = self._index(dataset, dataset_hash, frame, id_column, key)
        return Arrangement(frame.iloc[index.order].reset_index(drop=True), index.order)

    def _key(self, dataset: str) -> DifferencingKey:
        cached = self._keys.get(dataset)
        if cached is not None:
            return cached
        with self._db.transaction() as db:
            row = db.execute(
                "SELECT secret FROM differencing_keys WHERE dataset = ?", (dataset,)
            ).fetchone()
            if row is not None:
                key = DifferencingKey(bytes(row[0]))
            else:
                key = DifferencingKey.generate(self._random)
                db.execute(
                    "INSERT INTO differencing_keys (dataset, secret) VALUES (?, ?)",
                    (dataset, key.secret),
                )
        self._keys[dataset] = key
        return key

    def _index(
        self,
        dataset: str,
        dataset_hash: str,
        frame: pd.DataFrame,
        id_column: str,
        key: DifferencingKey,
    ) -> _Index:
        cached = self._indexes.get(dataset)
        if cached is not None and cached.dataset_hash == dataset_hash:
            return cached
        if id_column:
            if id_column not in frame.columns:
                raise ConfigError(f"dataset {dataset!r} has no column {id_column!r}")
            ids = frame[id_column].to_numpy()
        else:
            ids = np.arange(len(frame), dtype=np.int64)
        built = RowIndex.build(ids, key)
        order = built.order()
        index = _Index(dataset_hash, built, built.take(order), order)
        self._indexes[dataset] = index
        return index

    def _record(
        self,
        dataset: str,
        scope: str,
        key: DifferencingKey,
        min_group_size: int,
        capacity: int,
    ) -> ReleaseRecord:
        cached = self._records.get((dataset, scope))
        if cached is None:
            with self._db.read() as db:
                row = db.execute(
                    "SELECT group_size, capacity FROM differencing_records "
                    "WHERE dataset = ? AND scope = ?",
                    (dataset, scope),
                ).fetchone()
                blobs = [
                    bytes(cell)
                    for (cell,) in db.execute(
                        "SELECT cell FROM differencing_cells WHERE dataset = ? "
                        "AND scope = ? ORDER BY seq",
                        (dataset, scope),
                    )
                ]
            if row is None:
                size = min(MAX_GROUP_SIZE, max(min_group_size, MIN_RECORD_GROUP_SIZE))
                row = (size, capacity)
            cached = ReleaseRecord(
                key, scope, group_size=int(row[0]), capacity=int(row[1])
            )
            cached.append_cell_bytes(blobs)
            self._records[dataset, scope] = cached
        if min_group_size > cached.group_size:
            raise PolicyRefusal(
                [
                    f"the differencing record of dataset {dataset!r} was sized for "
                    f"groups up to {cached.group_size}; the holder must reset it to "
                    f"use min_group_size {min_group_size}"
                ]
            )
        return cached
