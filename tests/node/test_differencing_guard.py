"""The node's differencing guard: records per analyst and per organisation in the
node's database, appended cell by cell, reloaded after a restart, bounded, MACed."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cleanroom.errors import ConfigError, CryptoError, QuotaExceeded
from cleanroom.localdb import LocalDatabase
from node.differencing import ReleaseGuard, ReleaseScope

ROWS = 200


def frame() -> pd.DataFrame:
    return pd.DataFrame({"pid": [f"p{i}" for i in range(ROWS)], "age": range(ROWS)})


def cell(upto: int) -> tuple[np.ndarray, int]:
    """The rows with age < upto, as a one-cell partition."""
    return (np.where(np.arange(ROWS) < upto, 0, -1).astype(np.int64), 1)


def check(guard: ReleaseGuard, upto: int, analyst: str = "alice", org: str = "lab",
          capacity: int = 100) -> bool:  # fmt: skip
    (allowed,) = guard.check(
        job_id="j", dataset="d", dataset_hash="h", frame=frame(), id_column="pid",
        scope=ReleaseScope(analyst, org), min_group_size=5, capacity=capacity,
        partitions=[cell(upto)],
    )  # fmt: skip
    return allowed


def test_records_survive_a_restart_and_cover_the_organisation(tmp_path: Path) -> None:
    db = LocalDatabase(tmp_path / "node.db")
    assert check(ReleaseGuard(db), 100)
    db.close()
    reopened = ReleaseGuard(LocalDatabase(tmp_path / "node.db"))
    assert not check(reopened, 99)  # one row from the recorded cell
    assert not check(reopened, 98, analyst="bob")  # bob: same organisation
    assert check(reopened, 98, analyst="carol", org="other")  # not compared
    assert check(reopened, 100)  # identical: allowed, not stored twice
    assert check(reopened, 120)  # 20 rows apart


def test_a_full_record_refuses_instead_of_evicting(tmp_path: Path) -> None:
    guard = ReleaseGuard(LocalDatabase(tmp_path / "node.db"))
    assert check(guard, 50, capacity=2) and check(guard, 100, capacity=2)
    with pytest.raises(QuotaExceeded, match="is full"):
        check(guard, 150, capacity=2)
    assert not check(guard, 99, capacity=2)  # nothing was evicted


def test_a_tampered_stored_cell_is_refused(tmp_path: Path) -> None:
    db = LocalDatabase(tmp_path / "node.db")
    check(ReleaseGuard(db), 100)
    with db.transaction() as conn:
        conn.execute("UPDATE differencing_cells SET cell = zeroblob(length(cell))")
    with pytest.raises(CryptoError):
        check(ReleaseGuard(db), 150)


def test_concurrent_checks_are_serialised(tmp_path: Path) -> None:
    guard = ReleaseGuard(LocalDatabase(tmp_path / "node.db"))
    results: dict[int, bool] = {}
    threads = [
        threading.Thread(target=lambda u=u: results.__setitem__(u, check(guard, u)))
        for u in (100, 99, 98, 97)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results.values()) == 1  # whichever came first; the rest are near it


def test_narrow_labels_decide_as_wide_ones_and_bad_labels_are_refused(
    tmp_path: Path,
) -> None:
    guard = ReleaseGuard(LocalDatabase(tmp_path / "node.db"))
    assert check(guard, 100)
    labels, count = cell(99)
    narrow = [(labels.astype(np.int8), count)]  # what count passes: 0 / -1 int8

    def run(partitions: list[tuple[np.ndarray, int]]) -> list[bool]:
        return guard.check(
            job_id="j", dataset="d", dataset_hash="h", frame=frame(),
            id_column="pid", scope=ReleaseScope("alice", "lab"), min_group_size=5,
            capacity=100, partitions=partitions,
        )  # fmt: skip

    assert run(narrow) == [False]  # one row from the recorded cell
    for bad in (labels[:-1], labels.astype(np.float64)):
        with pytest.raises(ConfigError, match="cell labels"):
            run([(bad, 1)])


def test_an_arranged_dataset_decides_as_its_file_order(tmp_path: Path) -> None:
    """Checks on rows kept in bucket order (``arrange``) give the decisions the
    file-order path gives for the same cells, for one cell and for many."""
    rows = frame()
    filed = ReleaseGuard(LocalDatabase(tmp_path / "filed.db"))
    kept = ReleaseGuard(LocalDatabase(tmp_path / "kept.db"))
    arrangement = kept.arrange(
        dataset="d", dataset_hash="h", frame=rows, id_column="pid"
    )
    order = arrangement.order
    assert sorted(order.tolist()) == list(range(ROWS))
    assert order.tolist() != list(range(ROWS))  # really another order
    assert arrangement.frame["pid"].tolist() == rows["pid"].iloc[order].tolist()

    def run(guard: ReleaseGuard, labels: np.ndarray, count: int, arranged: bool,
            table: pd.DataFrame) -> list[bool]:  # fmt: skip
        return guard.check(
            job_id="j", dataset="d", dataset_hash="h", frame=table, id_column="pid",
            scope=ReleaseScope("alice", "lab"), min_group_size=5, capacity=100,
            partitions=[(labels, count)], arranged=arranged,
        )  # fmt: skip

    decisions = []
    for upto in (100, 99, 120, 118, 60):
        labels = cell(upto)[0]
        decisions.append(
            (
                run(filed, labels, 1, False, rows),
                run(kept, labels[order], 1, True, arrangement.frame),
            )
        )
    assert [a for a, _ in decisions] == [b for _, b in decisions]
    assert [a for a, _ in decisions] == [[True], [False], [True], [False], [True]]
    # Several cells at once (a histogram's bins), labels in the kept order.
    bins = (np.arange(ROWS) // 40).astype(np.int64)  # 5 cells of 40 rows
    near = bins.copy()
    near[0] = -1  # the first cell one row short
    assert run(filed, bins, 5, False, rows) == run(kept, bins[order], 5, True,
                                                   arrangement.frame)  # fmt: skip
    assert run(filed, near, 5, False, rows) == [False, True, True, True, True]
    assert run(kept, near[order], 5, True, arrangement.frame) == [
        False, True, True, True, True,
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="not arranged"):
        kept.check(
            job_id="j", dataset="d", dataset_hash="other", frame=rows,
            id_column="pid", scope=ReleaseScope("alice", "lab"), min_group_size=5,
            capacity=100, partitions=[cell(10)], arranged=True,
        )  # fmt: skip
