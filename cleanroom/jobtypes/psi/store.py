"""What a PSI job leaves on a receiving node: its own matched rows, kept under the
job id for a following job (e.g. vertical training) to align on.

A following job refers to a PSI job by its id (e.g. ``params.aligned_with``); its
node-side code calls :func:`aligned_rows` with the node's database, that id, the
dataset and the dataset's *current* content hash: rows of another version are
refused, so a changed dataset cannot be silently misaligned.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cleanroom.errors import DatasetError, NotFound
from cleanroom.localdb import LocalDatabase

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS psi_results (
    job_id TEXT NOT NULL, dataset TEXT NOT NULL, dataset_hash TEXT NOT NULL,
    mode TEXT NOT NULL, rows TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (job_id, dataset));
"""


@dataclass(frozen=True)
class StoredResult:
    """A receiver's PSI output: row numbers of its own dataset version.

    ``intersection``: ascending; ``aligned``: in the order every party shares
    (row ``rows[i]`` here is the same key as row ``rows[i]`` of every peer).
    """

    job_id: str
    dataset: str
    dataset_hash: str
    mode: str
    rows: tuple[int, ...]


def ensure_schema(db: LocalDatabase) -> None:
    db.executescript(_SCHEMA)


def save(db: LocalDatabase, result: StoredResult) -> None:
    with db.transaction() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO psi_results VALUES (?, ?, ?, ?, ?, ?)",
            (
                result.job_id,
                result.dataset,
                result.dataset_hash,
                result.mode,
                json.dumps(list(result.rows)),
                time.time(),
            ),
        )


def load(db: LocalDatabase, job_id: str, dataset: str) -> StoredResult:
    """The stored result; NotFound if this node kept none for that job."""
    ensure_schema(db)
    with db.read() as conn:
        row = conn.execute(
            "SELECT dataset_hash, mode, rows FROM psi_results "
            "WHERE job_id=? AND dataset=?",
            (job_id, dataset),
        ).fetchone()
    if row is None:
        raise NotFound(f"no PSI result of job {job_id} for dataset '{dataset}'")
    rows: Sequence[int] = json.loads(row[2])
    return StoredResult(job_id, dataset, str(row[0]), str(row[1]), tuple(rows))


def aligned_rows(
    db: LocalDatabase, job_id: str, dataset: str, dataset_hash: str
) -> tuple[int, ...]:
    """The aligned row order of ``job_id`` for the dataset version ``dataset_hash``;
    DatasetError if the dataset changed since, NotFound if there is none."""
    stored = load(db, job_id, dataset)
    if stored.mode != "aligned":
        raise NotFound(f"PSI job {job_id} did not produce aligned output")
    if stored.dataset_hash != dataset_hash:
        raise DatasetError(
            f"dataset '{dataset}' changed since PSI job {job_id} aligned it"
        )
    return stored.rows
