"""The differencing record: the issue's attacks refused, near-misses allowed, the
table bound checked against simulation, sketches order- and version-independent,
records bounded and round-tripped through bytes."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.errors import ConfigError, CryptoError, ProtocolError, QuotaExceeded
from protocols.differencing import (
    FALSE_ALLOW_LOG2,
    DifferencingKey,
    Geometry,
    ReleaseRecord,
    RowIndex,
    admit,
    geometry_for,
    screen,
)
from protocols.differencing.geometry import _failure_bound, _no_singleton
from protocols.differencing.rows import BUCKETS
from protocols.differencing.table import TableCodec, Tables

K = 5
ROWS = 120  # three nodes of 40 rows each in the issue; one node's worth x 3 here


def key(seed: int = 0) -> DifferencingKey:
    """A deterministic key: tests only."""
    return DifferencingKey(random.Random(seed).randbytes(32))


@pytest.fixture(scope="module")
def patients() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    pid = rng.permutation(ROWS) + 1
    return {
        "pid": pid,
        "diagnosis": rng.choice(np.array(["A", "B", "X"]), ROWS),
        "income": rng.integers(10_000, 90_000, ROWS),
    }


def arranged(ids: np.ndarray, secret: DifferencingKey) -> tuple[RowIndex, np.ndarray]:
    """The index arranged by bucket, and the permutation applied to the frame."""
    index = RowIndex.build(ids, secret)
    order = index.order()
    return index.take(order), order


def record(secret: DifferencingKey, capacity: int = 100) -> ReleaseRecord:
    return ReleaseRecord(secret, "d/analyst:a", group_size=K, capacity=capacity)


def test_the_issues_count_attack_is_refused(patients: dict[str, np.ndarray]) -> None:
    secret = key()
    index, order = arranged(patients["pid"], secret)
    diagnosis, pid = patients["diagnosis"][order], patients["pid"][order]
    mine = record(secret)
    not_x = diagnosis != "X"
    assert admit([index.cell(not_x)], [mine], min_group_size=K) == [True]
    target = pid[np.flatnonzero(not_x)[0]]  # patient 7 of the issue
    assert screen([index.cell(not_x & (pid != target))], [mine], min_group_size=K) == [
        False
    ]
    # pid of a patient with diagnosis X: the row set is identical, which is allowed
    other = pid[np.flatnonzero(~not_x)[0]]
    assert screen([index.cell(not_x & (pid != other))], [mine], min_group_size=K) == [
        True
    ]


def test_the_sum_attack_and_differences_up_to_k(
    patients: dict[str, np.ndarray],
) -> None:
    secret = key(1)
    index, _ = arranged(patients["pid"], secret)
    mine = record(secret)
    everyone = np.ones(ROWS, dtype=bool)
    admit([index.cell(everyone)], [mine], min_group_size=K)
    for apart in range(1, 2 * K):
        fewer = everyone.copy()
        fewer[:apart] = False
        [allowed] = screen([index.cell(fewer)], [mine], min_group_size=K)
        assert allowed == (apart >= K), apart


def test_identical_cells_are_allowed_and_stored_once(
    patients: dict[str, np.ndarray],
) -> None:
    secret = key(2)
    index, order = arranged(patients["pid"], secret)
    mine = record(secret)
    cell = patients["diagnosis"][order] == "A"
    for _ in range(3):
        assert admit([index.cell(cell.copy())], [mine], min_group_size=K) == [True]
    assert len(mine) == 1


def test_a_swap_of_two_rows_is_refused(patients: dict[str, np.ndarray]) -> None:
    secret = key(3)
    index, _ = arranged(patients["pid"], secret)
    mine = record(secret)
    rng = np.random.default_rng(0)
    base = rng.random(ROWS) < 0.5
    admit([index.cell(base)], [mine], min_group_size=K)
    inside, outside = np.flatnonzero(base), np.flatnonzero(~base)
    for i in range(20):  # same count, different rows: only the tags can tell
        swapped = base.copy()
        swapped[inside[i]], swapped[outside[i]] = False, True
        assert screen([index.cell(swapped)], [mine], min_group_size=K) == [False]


def test_cells_of_one_job_are_checked_against_each_other(
    patients: dict[str, np.ndarray],
) -> None:
    """The histogram attack: a cell of 5 rows and a bin holding 4 of them."""
    secret = key(4)
    index, _ = arranged(patients["pid"], secret)
    mine = record(secret)
    cell = np.zeros(ROWS, dtype=bool)
    cell[10:15] = True
    one_bin = cell.copy()
    one_bin[10] = False
    sketches = [index.cell(cell), index.cell(one_bin)]
    assert admit(sketches, [mine], min_group_size=K) == [True, False]
    assert len(mine) == 1  # the refused bin is not recorded


def test_a_new_dataset_version_cannot_be_differenced(
    patients: dict[str, np.ndarray],
) -> None:
    """Ids, not positions: a row added between two releases is caught."""
    secret = key(5)
    index, order = arranged(patients["pid"], secret)
    mine = record(secret)
    x = patients["diagnosis"][order] == "X"
    admit([index.cell(x)], [mine], min_group_size=K)
    pid = np.append(patients["pid"], [1000, 1001])
    diagnosis = np.append(patients["diagnosis"], ["X", "A"])
    later, later_order = arranged(pid, secret)
    same_query = diagnosis[later_order] == "X"
    assert screen([later.cell(same_query)], [mine], min_group_size=K) == [False]
    # the unrelated new row (diagnosis A) leaves the other cells unchanged
    unchanged = (diagnosis[later_order] == "X") & (pid[later_order] != 1000)
    assert screen([later.cell(unchanged)], [mine], min_group_size=K) == [True]
    assert len(mine) == 1


def test_sketches_depend_on_the_row_set_only() -> None:
    secret = key(6)
    rng = np.random.default_rng(1)
    ids = rng.permutation(5000) * 7
    chosen = rng.random(5000) < 0.4
    plain = RowIndex.build(ids, secret)
    assert not plain.arranged
    fast, order = arranged(ids, secret)
    assert fast.arranged
    shuffle = rng.permutation(5000)
    shuffled = RowIndex.build(ids[shuffle], secret)
    sketches = [
        plain.cell(chosen),
        fast.cell(chosen[order]),
        shuffled.cell(chosen[shuffle]),
        fast.cells(np.where(chosen[order], 0, -1), 1)[0],
    ]
    for other in sketches[1:]:
        assert np.array_equal(other.items, sketches[0].items)
        assert np.array_equal(other.groups, sketches[0].groups)
        assert other.rows == sketches[0].rows == int(chosen.sum())
    assert sketches[0].items.size <= BUCKETS


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(0, 300),
    cells=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_partition_sketches_match_mask_sketches(
    rows: int, cells: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    ids = np.array([f"id-{i}" for i in rng.permutation(rows)], dtype=object)
    index, _ = arranged(ids, key(7))
    labels = rng.integers(-1, cells, rows)
    for cell, sketch in enumerate(index.cells(labels, cells)):
        direct = index.cell(labels == cell)
        assert np.array_equal(sketch.items, direct.items)
        assert sketch.rows == direct.rows == int((labels == cell).sum())


def test_large_differences_are_allowed_whatever_their_size() -> None:
    secret = key(8)
    index, _ = arranged(np.arange(20_000), secret)
    mine = record(secret)
    rng = np.random.default_rng(2)
    base = rng.random(20_000) < 0.5
    admit([index.cell(base)], [mine], min_group_size=K)
    for apart in (K, K + 1, 2 * K, 50, 400, 5000):
        # same row count as the recorded cell: only the tables can decide
        changed = base.copy()
        changed[rng.choice(np.flatnonzero(base), apart, replace=False)] = False
        changed[rng.choice(np.flatnonzero(~base), apart, replace=False)] = True
        assert screen([index.cell(changed)], [mine], min_group_size=K) == [True]


def test_records_round_trip_through_bytes(patients: dict[str, np.ndarray]) -> None:
    secret = key(9)
    index, order = arranged(patients["pid"], secret)
    mine = record(secret)
    for value in ("A", "B", "X"):
        admit(
            [index.cell(patients["diagnosis"][order] == value)],
            [mine],
            min_group_size=K,
        )
    data = mine.to_bytes()
    again = ReleaseRecord.from_bytes(data, secret, mine.scope)
    assert len(again) == 3 and again.capacity == mine.capacity
    assert again.to_bytes() == data
    nearly = (patients["diagnosis"][order] == "A") & (patients["pid"][order] != 0)
    nearly[np.flatnonzero(nearly)[0]] = False
    assert screen([index.cell(nearly)], [again], min_group_size=K) == [False]


def test_stored_records_refuse_tampering_and_mismatches() -> None:
    secret = key(10)
    index, _ = arranged(np.arange(50), secret)
    mine = record(secret)
    admit([index.cell(np.arange(50) < 30)], [mine], min_group_size=K)
    data = mine.to_bytes()
    flipped = bytearray(data)
    flipped[-40] ^= 1
    with pytest.raises(CryptoError):
        ReleaseRecord.from_bytes(bytes(flipped), secret, mine.scope)
    with pytest.raises(ConfigError, match="another key"):
        ReleaseRecord.from_bytes(data, key(11), mine.scope)
    with pytest.raises(ConfigError, match="another scope"):
        ReleaseRecord.from_bytes(data, secret, "d/analyst:b")
    with pytest.raises(ProtocolError, match="bytes, got"):
        ReleaseRecord.from_bytes(data[:-1], secret, mine.scope)
    with pytest.raises(ProtocolError, match="too short"):
        ReleaseRecord.from_bytes(data[:20], secret, mine.scope)
    with pytest.raises(ProtocolError, match="not a differencing record"):
        ReleaseRecord.from_bytes(b"X" + data[1:], secret, mine.scope)


def test_a_full_record_refuses_new_cells_and_keeps_the_old() -> None:
    secret = key(12)
    index, _ = arranged(np.arange(400), secret)
    mine = record(secret, capacity=3)
    starts = (0, 100, 200, 300)
    for start in starts[:3]:
        mask = np.zeros(400, dtype=bool)
        mask[start : start + 50] = True
        admit([index.cell(mask)], [mine], min_group_size=K)
    assert len(mine) == 3 and len(mine.to_bytes()) <= mine.max_bytes()
    assert mine.max_bytes() == len(mine.to_bytes())
    last = np.zeros(400, dtype=bool)
    last[300:350] = True
    with pytest.raises(QuotaExceeded, match="is full"):
        admit([index.cell(last)], [mine], min_group_size=K)
    assert len(mine) == 3
    # a cell it already holds needs no room
    first = np.zeros(400, dtype=bool)
    first[:50] = True
    assert admit([index.cell(first)], [mine], min_group_size=K) == [True]


def test_every_record_must_allow_and_every_record_remembers() -> None:
    secret = key(13)
    index, _ = arranged(np.arange(100), secret)
    analyst = ReleaseRecord(secret, "d/analyst:a", group_size=K, capacity=10)
    organisation = ReleaseRecord(secret, "d/org:o", group_size=K, capacity=10)
    cell = np.arange(100) < 60
    admit([index.cell(cell)], [organisation], min_group_size=K)  # a colleague's
    near = np.arange(100) < 59
    assert admit([index.cell(near)], [analyst, organisation], min_group_size=K) == [
        False
    ]
    far = np.arange(100) < 30
    assert admit([index.cell(far)], [analyst, organisation], min_group_size=K) == [True]
    assert (len(analyst), len(organisation)) == (1, 2)


def test_bad_inputs_are_refused() -> None:
    secret = key(14)
    index, _ = arranged(np.arange(10), secret)
    mine = record(secret)
    with pytest.raises(ConfigError, match="10 booleans"):
        index.cell(np.ones(9, dtype=bool))
    with pytest.raises(ConfigError, match="10 booleans"):
        index.cell(np.ones(10, dtype=int))
    with pytest.raises(ConfigError, match="labels must lie"):
        index.cells(np.full(10, 3), 2)
    with pytest.raises(ConfigError, match="sized for groups up to 5"):
        screen([index.cell(np.ones(10, dtype=bool))], [mine], min_group_size=6)
    foreign = RowIndex.build(np.arange(10), key(15)).cell(np.ones(10, dtype=bool))
    with pytest.raises(ConfigError, match="another dataset key"):
        screen([foreign], [mine], min_group_size=K)
    with pytest.raises(ConfigError):
        DifferencingKey(b"short")
    with pytest.raises(ConfigError, match="capacity"):
        ReleaseRecord(secret, "s", group_size=K, capacity=0)
    with pytest.raises(ConfigError, match="group size"):
        geometry_for(1)
    with pytest.raises(ConfigError, match="one-dimensional"):
        RowIndex.build(np.zeros((2, 2)), secret)
    assert secret.secret.hex() not in repr(secret)
    assert "rows" not in repr(index.cell(np.ones(10, dtype=bool)))


def test_no_singleton_probabilities_match_inclusion_exclusion() -> None:
    def exact(s: int, w: int) -> float:
        maps = sum(
            (-1) ** j * math.comb(s, j) * math.perm(w, j) * (w - j) ** (s - j)
            for j in range(min(s, w) + 1)
        )
        return maps / w**s

    for items, width in ((2, 4), (8, 4), (12, 7), (30, 9)):
        q = _no_singleton(items, width)
        for s in range(items + 1):
            assert q[s] == pytest.approx(exact(s, width), rel=1e-9, abs=1e-300)
    # two items collide in every one of h sub-tables with probability w^-h
    assert _failure_bound(2, 6, 5) == pytest.approx(5.0**-6)


@pytest.mark.parametrize("k", [2, 3, 5, 10, 20])
def test_tables_meet_the_stated_bound(k: int) -> None:
    geometry = geometry_for(k)
    assert geometry.false_allow_bound() <= 2.0**FALSE_ALLOW_LOG2
    smaller = Geometry(k, geometry.hashes, geometry.width - 1)
    assert smaller.false_allow_bound() > 2.0**FALSE_ALLOW_LOG2


def test_the_bound_holds_against_simulated_decoding() -> None:
    """A deliberately small table (test-only size), so failures are frequent enough
    to count: the peeler fails no more often than the union bound says."""
    geometry = Geometry(4, 3, 6)  # 6 items into 3 sub-tables of 6 cells
    codec = TableCodec(key(16), geometry)
    rng = np.random.default_rng(3)
    trials = 3000
    new = [rng.integers(0, 2**63, 3, dtype=np.uint64) for _ in range(trials)]
    old = [rng.integers(0, 2**63, 3, dtype=np.uint64) for _ in range(trials)]
    new_tables, old_tables = codec.build(new), codec.build(old)
    failures = 0
    for i in range(trials):
        one = codec.rows_apart(new_tables, i, _row(old_tables, i))
        failures += int(not one.complete[0])
    bound = geometry.false_allow_bound()
    assert 0 < failures / trials <= bound + 4 * math.sqrt(bound / trials)


def _row(tables: Tables, i: int) -> Tables:
    return Tables(
        tables.count[i : i + 1], tables.words[i : i + 1], tables.checks[i : i + 1]
    )


def test_cells_stored_one_by_one_load_into_the_same_record() -> None:
    rng = np.random.default_rng(4)
    ids = np.arange(2000)
    key = DifferencingKey(bytes(range(32)))
    index = RowIndex.build(ids, key)
    masks = [rng.random(2000) < p for p in (0.2, 0.4, 0.6, 0.8)]
    record = ReleaseRecord(key, "analyst:a", group_size=5, capacity=10)
    admit([index.cell(m) for m in masks[:2]], [record], min_group_size=5)
    first = record.cell_bytes()
    admit([index.cell(m) for m in masks[2:]], [record], min_group_size=5)
    rest = record.cell_bytes(len(first))
    loaded = ReleaseRecord(key, "analyst:a", group_size=5, capacity=10)
    loaded.append_cell_bytes(first)
    loaded.append_cell_bytes(rest)
    assert loaded.to_bytes() == record.to_bytes()
    other = ReleaseRecord(key, "analyst:b", group_size=5, capacity=10)
    with pytest.raises(CryptoError):  # bound to its scope
        other.append_cell_bytes(first)
    with pytest.raises(CryptoError):  # and to its position
        ReleaseRecord(key, "analyst:a", group_size=5, capacity=10).append_cell_bytes(
            rest
        )


@pytest.mark.parametrize("rows", [1, 63, 64, 65, 129, 4097])
def test_packed_counts_are_exact_at_word_edges(rows: int) -> None:
    """The fast path counts rows per bucket from packed words; segments that start
    or end inside a word, share one, or end the frame at any n % 64 are exact."""
    rng = np.random.default_rng(rows)
    index, _ = arranged(rng.permutation(rows).astype(np.int64), key(3))
    for share in (0.0, 0.01, 0.5, 1.0):
        mask = rng.random(rows) < share
        direct = index.cell(mask)
        (slow,) = index.cells(mask.astype(np.int8) - 1, 1)
        assert np.array_equal(direct.items, slow.items)
        assert direct.rows == slow.rows == int(mask.sum())
        assert np.array_equal(direct.groups, slow.groups)
