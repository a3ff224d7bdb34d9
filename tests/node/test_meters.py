"""Tests for the node's quota meters: reservations, settlement, billing, concurrency."""

from __future__ import annotations

import csv
import io
import multiprocessing
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cleanroom.errors import NotFound, QuotaExceeded, StoreError
from node.meters import EXPORT_COLUMNS, Meters
from node.policy import JobRequest, QuotaLimit
from protocols.party import NodeUsage

DAY = 86_400.0
START = datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()
JOBS_10 = {"jobs": QuotaLimit(per_day=10)}


class Clock:
    """A settable clock for the meters."""

    def __init__(self, at: float = START) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def meters(tmp_path: Path, clock: Clock) -> Iterator[Meters]:
    m = Meters(tmp_path / "meters.db", now=clock)
    yield m
    m.close()


def request(job_id: str, **changes: Any) -> JobRequest:
    fields: dict[str, Any] = {
        "job_id": job_id,
        "analyst": "alice",
        "organisation": "uni-x",
        "job_type": "count",
        "dataset": "patients",
        "columns": frozenset({"age"}),
        "purpose": "research",
    }
    fields.update(changes)
    return JobRequest(**fields)


def charged(path: Path, meter: str, day: str | None = None) -> float:
    """What the database holds against ``meter``: reserved if open, used if closed."""
    with sqlite3.connect(path) as db:
        (total,) = db.execute(
            "SELECT COALESCE(SUM(CASE WHEN r.status = 'reserved' THEN a.reserved "
            "ELSE a.used END), 0) FROM amounts a JOIN reservations r "
            "ON r.job_id = a.job_id WHERE a.meter = ? AND (? IS NULL OR r.day = ?)",
            (meter, day, day),
        ).fetchone()
    db.close()
    return float(total)


def usage_of(meters: Meters, meter: str, **filters: str) -> Any:
    rows = [u for u in meters.usage(**filters) if u.meter == meter]
    assert len(rows) == 1
    return rows[0]


# -- reserve, settle, release ------------------------------------------------


def test_reserve_then_settle_records_the_actual_amounts(meters: Meters) -> None:
    limits = {"rows": QuotaLimit(total=1000)}
    held = meters.reserve(request("j1", rows=100), limits, epsilon_budget=None)
    assert held.amounts == {"jobs": 1, "rows": 100}
    assert held.day == "2026-03-01"
    rows = usage_of(meters, "rows")
    assert (rows.used_total, rows.reserved_total, rows.remaining()) == (0, 100, 900)
    meters.settle("j1", NodeUsage(rows_touched=60))
    rows = usage_of(meters, "rows")
    assert (rows.used_today, rows.used_total, rows.reserved_total) == (60, 60, 0)
    assert rows.remaining() == 940
    assert usage_of(meters, "jobs").used_total == 1


def test_reserve_is_idempotent_per_job(meters: Meters) -> None:
    first = meters.reserve(request("j1", rows=5), JOBS_10, epsilon_budget=None)
    again = meters.reserve(request("j1", rows=5), JOBS_10, epsilon_budget=None)
    assert again == first
    assert usage_of(meters, "jobs").reserved_today == 1
    with pytest.raises(StoreError, match="already reserved otherwise"):
        meters.reserve(request("j1", rows=6), JOBS_10, epsilon_budget=None)
    meters.settle("j1", NodeUsage(rows_touched=5))
    with pytest.raises(StoreError, match="already settled; use a new job id"):
        meters.reserve(request("j1", rows=5), JOBS_10, epsilon_budget=None)


def test_quota_exceeded_lists_every_exceeded_meter(meters: Meters) -> None:
    limits = {"jobs": QuotaLimit(per_day=1, total=1), "rows": QuotaLimit(per_day=10)}
    meters.reserve(request("j1", rows=4), limits, epsilon_budget=None)
    with pytest.raises(QuotaExceeded) as caught:
        meters.reserve(request("j2", rows=7), limits, epsilon_budget=None)
    assert caught.value.reasons == [
        "quota 'jobs' per day for analyst 'alice' on 'patients': 1 used or "
        "reserved, limit 1 (this job needs 1)",
        "quota 'jobs' total for analyst 'alice' on 'patients': 1 used or reserved, "
        "limit 1 (this job needs 1)",
        "quota 'rows' per day for analyst 'alice' on 'patients': 4 used or reserved, "
        "limit 10 (this job needs 7)",
    ]
    assert charged(meters._path, "jobs") == 1  # the refused job reserved nothing


def test_quotas_are_per_analyst_and_per_dataset(meters: Meters) -> None:
    limits = {"jobs": QuotaLimit(total=1)}
    meters.reserve(request("a"), limits, epsilon_budget=None)
    meters.reserve(request("b", analyst="bob"), limits, epsilon_budget=None)
    meters.reserve(request("c", dataset="scans"), limits, epsilon_budget=None)
    with pytest.raises(QuotaExceeded):
        meters.reserve(request("d"), limits, epsilon_budget=None)


def test_per_day_limits_reset_at_utc_midnight_but_totals_do_not(
    meters: Meters, clock: Clock
) -> None:
    limits = {"jobs": QuotaLimit(per_day=2, total=3)}
    clock.at = datetime(2026, 3, 1, 23, 59, tzinfo=UTC).timestamp()
    for job in ("j1", "j2"):
        meters.reserve(request(job), limits, epsilon_budget=None)
    with pytest.raises(QuotaExceeded, match="'jobs' per day"):
        meters.reserve(request("j3"), limits, epsilon_budget=None)
    clock.at += 120  # 00:01 UTC the next day
    meters.settle("j1", NodeUsage())  # still counts on the day it was reserved
    meters.reserve(request("j3"), limits, epsilon_budget=None)
    with pytest.raises(QuotaExceeded) as caught:
        meters.reserve(request("j4"), limits, epsilon_budget=None)
    assert [r.split(":")[0] for r in caught.value.reasons] == [
        "quota 'jobs' total for analyst 'alice' on 'patients'"
    ]
    jobs = usage_of(meters, "jobs")
    assert (jobs.used_today, jobs.reserved_today, jobs.remaining()) == (0, 1, 0)


def test_epsilon_budget_is_spent_across_jobs(meters: Meters) -> None:
    for i in range(10):
        meters.reserve(request(f"j{i}", epsilon=0.1), {}, epsilon_budget=1.0)
        meters.settle(f"j{i}", NodeUsage(epsilon=0.1))
    with pytest.raises(QuotaExceeded) as caught:
        meters.reserve(request("j10", epsilon=0.1), {}, epsilon_budget=1.0)
    assert caught.value.reasons[0].startswith(
        "privacy budget 'epsilon' total for analyst 'alice' on 'patients': "
    )
    assert "budget 1 (this job needs 0.1)" in caught.value.reasons[0]
    meters.reserve(request("free"), {}, epsilon_budget=1.0)  # non-DP jobs still run
    assert usage_of(meters, "epsilon").limit == QuotaLimit(total=1.0)


def test_analysts_of_one_organisation_share_its_privacy_budget(
    meters: Meters,
) -> None:
    shared: dict[str, Any] = {"epsilon_budget": 1.0, "organisation_budget": True}
    meters.reserve(request("a1", epsilon=0.6), {}, **shared)
    meters.settle("a1", NodeUsage(epsilon=0.6))
    with pytest.raises(QuotaExceeded) as caught:  # bob is of alice's organisation
        meters.reserve(request("b1", analyst="bob", epsilon=0.6), {}, **shared)
    assert caught.value.reasons == [
        "privacy budget 'epsilon' total for organisation 'uni-x' on 'patients': "
        "0.6 used or reserved by its analysts, budget 1 (this job needs 0.6)"
    ]
    # another organisation has its own; without sharing, each analyst has one
    meters.reserve(
        request("c1", analyst="carol", organisation="uni-y", epsilon=0.6), {}, **shared
    )
    meters.reserve(request("b2", analyst="bob", epsilon=0.6), {}, epsilon_budget=1.0)


def test_a_quota_on_epsilon_and_the_budget_both_apply(meters: Meters) -> None:
    limits = {"epsilon": QuotaLimit(per_day=0.5, total=5)}
    meters.reserve(request("j1", epsilon=0.4), limits, epsilon_budget=0.6)
    with pytest.raises(QuotaExceeded) as caught:
        meters.reserve(request("j2", epsilon=0.3), limits, epsilon_budget=0.6)
    assert len(caught.value.reasons) == 2
    assert usage_of(meters, "epsilon").limit == QuotaLimit(per_day=0.5, total=0.6)


def test_delta_is_budgeted_and_charged_when_epsilon_is_spent(meters: Meters) -> None:
    kwargs: dict[str, Any] = {"epsilon_budget": 1.0, "delta_budget": 1e-6}
    meters.reserve(request("j1", epsilon=0.1, delta=6e-7), {}, **kwargs)
    with pytest.raises(QuotaExceeded, match="'delta'"):
        meters.reserve(request("j2", epsilon=0.1, delta=6e-7), {}, **kwargs)
    meters.settle("j1", NodeUsage(epsilon=0.1))
    assert usage_of(meters, "delta").used_total == pytest.approx(6e-7)


def test_custom_units_are_metered_without_schema_changes(meters: Meters) -> None:
    limits = {"verified_records": QuotaLimit(per_day=150)}
    units = {"verified_records": 100.0}
    meters.reserve(request("j1", units=units), limits, epsilon_budget=None)
    with pytest.raises(QuotaExceeded, match="'verified_records' per day"):
        meters.reserve(request("j2", units=units), limits, epsilon_budget=None)
    meters.settle("j1", NodeUsage(units={"verified_records": 40}))
    meters.reserve(request("j2", units=units), limits, epsilon_budget=None)
    records = usage_of(meters, "verified_records")
    assert (records.used_today, records.reserved_today) == (40, 100)


def test_sandbox_cpu_is_reserved_as_a_unit_and_settled_from_the_usage(
    meters: Meters,
) -> None:
    limits = {"sandbox_cpu_seconds": QuotaLimit(per_day=100)}
    job = request("s1", job_type="sandbox", units={"sandbox_cpu_seconds": 60})
    meters.reserve(job, limits, epsilon_budget=None)
    used = NodeUsage(rows_touched=10, units={"sandbox_cpu_seconds": 12.5})
    meters.settle("s1", used)
    cpu = usage_of(meters, "sandbox_cpu_seconds")
    assert (cpu.used_total, cpu.remaining()) == (12.5, 87.5)
    meters.reserve(request("s2"), {}, epsilon_budget=None)
    with pytest.raises(StoreError, match="metered by the node"):
        meters.settle("s2", NodeUsage(units={"rows": 1}))


def test_a_failed_sandbox_run_is_billed_its_cpu(meters: Meters) -> None:
    limits = {"sandbox_cpu_seconds": QuotaLimit(per_day=100)}
    job = request("s1", job_type="sandbox", units={"sandbox_cpu_seconds": 60})
    meters.reserve(job, limits, epsilon_budget=None)
    partial = NodeUsage(units={"sandbox_cpu_seconds": 4.5})
    meters.release("s1", partial=partial, reason="timed out after 5s")
    cpu = usage_of(meters, "sandbox_cpu_seconds")
    assert (cpu.used_total, cpu.remaining()) == (4.5, 95.5)
    assert charged(meters._path, "jobs") == 1  # it ran, so it counts as a job
    meters.reserve(request("s2"), {}, epsilon_budget=None)
    with pytest.raises(StoreError, match="sandbox_cpu_seconds"):
        meters.release(
            "s2",
            partial=NodeUsage(units={"sandbox_cpu_seconds": -1.0}),
            reason="x",
        )


def test_released_reservation_frees_its_quota(meters: Meters) -> None:
    limits = {"jobs": QuotaLimit(per_day=1)}
    meters.reserve(request("j1", rows=10), limits, epsilon_budget=None)
    meters.release("j1", reason="refused by the holder")
    meters.reserve(request("j2"), limits, epsilon_budget=None)
    assert charged(meters._path, "jobs") == 1
    assert charged(meters._path, "rows") == 0


def test_partial_use_is_recorded_on_release(meters: Meters) -> None:
    job = request("j1", rows=100, units={"verified_records": 10})
    meters.reserve(job, {}, epsilon_budget=None)
    crash = NodeUsage(rows_touched=37, units={"verified_records": 3})
    meters.release("j1", partial=crash, reason="executor crashed")
    assert usage_of(meters, "rows").used_total == 37
    assert usage_of(meters, "jobs").used_total == 1
    out = io.StringIO()
    meters.export_csv(out)
    rows = {r["meter"]: r for r in csv.DictReader(io.StringIO(out.getvalue()))}
    assert rows["rows"]["amount"] == "37"
    assert rows["verified_records"]["amount"] == "3"
    assert rows["rows"]["status"] == "released"
    assert rows["rows"]["reason"] == "executor crashed"


def test_closing_rules_prevent_double_counting(meters: Meters) -> None:
    with pytest.raises(NotFound):
        meters.settle("ghost", NodeUsage())
    with pytest.raises(NotFound):
        meters.release("ghost", reason="x")
    meters.reserve(request("j1"), {}, epsilon_budget=None)
    meters.settle("j1", NodeUsage(rows_touched=1))
    with pytest.raises(StoreError, match="already settled"):
        meters.settle("j1", NodeUsage(rows_touched=1))
    with pytest.raises(StoreError, match="already settled"):
        meters.release("j1", reason="late failure")
    meters.reserve(request("j2"), {}, epsilon_budget=None)
    meters.release("j2", reason="failed")
    meters.release("j2", reason="failed again")  # a no-op
    with pytest.raises(StoreError, match="already released"):
        meters.settle("j2", NodeUsage())
    assert charged(meters._path, "jobs") == 1
    assert charged(meters._path, "rows") == 1


def test_use_beyond_the_reservation_is_billed_truthfully(meters: Meters) -> None:
    meters.reserve(request("j1", rows=10), {}, epsilon_budget=None)
    meters.settle("j1", NodeUsage(rows_touched=15))
    assert usage_of(meters, "rows").used_total == 15
    out = io.StringIO()
    meters.export_csv(out)
    assert "used more than reserved: rows 15 > reserved 10" in out.getvalue()


@pytest.mark.parametrize(
    "bad",
    [
        NodeUsage(rows_touched=-1),
        NodeUsage(epsilon=float("nan")),
        NodeUsage(units={"verified_records": -1}),
        NodeUsage(units={"rows": 5}),
    ],
)
def test_malformed_usage_reports_are_refused(meters: Meters, bad: NodeUsage) -> None:
    meters.reserve(request("j1"), {}, epsilon_budget=None)
    with pytest.raises(StoreError, match="usage report"):
        meters.settle("j1", bad)
    meters.settle("j1", NodeUsage())  # the refused report changed nothing


def test_export_csv_is_a_billing_statement(meters: Meters, clock: Clock) -> None:
    meters.reserve(request("j1", rows=5, epsilon=0.25), {}, epsilon_budget=None)
    meters.settle("j1", NodeUsage(rows_touched=5, epsilon=0.25))
    clock.at += 3600
    meters.reserve(request("j2", analyst="bob"), {}, epsilon_budget=None)
    meters.release("j2", reason="refused")
    meters.reserve(request("open"), {}, epsilon_budget=None)  # not billed yet
    out = io.StringIO()
    assert meters.export_csv(out) == 4
    lines = list(csv.reader(io.StringIO(out.getvalue())))
    assert tuple(lines[0]) == EXPORT_COLUMNS
    assert EXPORT_COLUMNS == tuple(
        "job_id analyst dataset job_type meter amount status timestamp reason".split()
    )
    assert lines[1:] == [
        ["j1", "alice", "patients", "count", "epsilon", "0.25", "settled",
         "2026-03-01T12:00:00Z", ""],
        ["j1", "alice", "patients", "count", "jobs", "1", "settled",
         "2026-03-01T12:00:00Z", ""],
        ["j1", "alice", "patients", "count", "rows", "5", "settled",
         "2026-03-01T12:00:00Z", ""],
        ["j2", "bob", "patients", "count", "jobs", "0", "released",
         "2026-03-01T13:00:00Z", "refused"],
    ]  # fmt: skip
    later = io.StringIO()
    assert meters.export_csv(later, since=START + 1) == 1


def test_usage_filters_and_reopening_the_file(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "m.db"
    first = Meters(path, now=clock)
    first.reserve(request("a"), JOBS_10, epsilon_budget=None)
    first.reserve(request("b", analyst="bob", dataset="scans"), {}, epsilon_budget=None)
    first.close()
    again = Meters(path, now=clock)
    assert {(u.analyst, u.dataset) for u in again.usage()} == {
        ("alice", "patients"),
        ("bob", "scans"),
    }
    assert [u.meter for u in again.usage(analyst="bob")] == ["jobs"]
    assert usage_of(again, "jobs", dataset="patients").remaining() == 9
    assert usage_of(again, "jobs", dataset="scans").limit is None
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()
    again.close()


# -- concurrency ---------------------------------------------------------------


def _try_reserve(meters: Meters, job_id: str) -> bool:
    try:
        meters.reserve(request(job_id), JOBS_10, epsilon_budget=None)
    except QuotaExceeded:
        return False
    return True


def test_concurrent_threads_never_overspend(meters: Meters) -> None:
    barrier = threading.Barrier(64)
    results: list[bool] = []

    def worker(i: int) -> None:
        barrier.wait()
        results.append(_try_reserve(meters, f"t{i}"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 10
    assert charged(meters._path, "jobs") == 10


def _process_worker(path: str, worker: int, start: Any, out: Any) -> None:
    meters = Meters(Path(path), now=Clock())
    start.wait()
    out.put(sum(_try_reserve(meters, f"p{worker}-{i}") for i in range(8)))
    meters.close()


def test_concurrent_processes_never_overspend(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    Meters(path).close()
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    workers = [
        ctx.Process(target=_process_worker, args=(str(path), i, start, out))
        for i in range(8)
    ]
    for w in workers:
        w.start()
    start.set()
    successes = sum(out.get(timeout=60) for _ in workers)
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert successes == 10
    assert charged(path, "jobs") == 10


# -- property ------------------------------------------------------------------

LIMITS = {
    "jobs": QuotaLimit(per_day=3, total=5),
    "rows": QuotaLimit(per_day=100, total=180),
    "verified_records": QuotaLimit(total=50),
}
RESERVE = st.tuples(
    st.just("reserve"),
    st.integers(0, 40),
    st.integers(0, 12),
    st.sampled_from(["alice", "alice", "bob"]),
)
OPS = st.lists(
    st.one_of(
        RESERVE,
        RESERVE,  # reserving more often than closing presses against the limits
        st.tuples(st.just("settle"), st.integers(0, 30), st.floats(0, 1)),
        st.tuples(st.just("release"), st.integers(0, 30), st.booleans()),
        st.tuples(st.just("tomorrow")),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_no_sequence_of_operations_exceeds_a_limit(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        clock = Clock()
        path = Path(tmp) / "m.db"
        meters = Meters(path, now=clock)
        held: dict[str, JobRequest] = {}
        for n, op in enumerate(ops):
            if op[0] == "reserve":
                job = request(
                    f"j{n}", rows=op[1], analyst=op[3],
                    units={"verified_records": float(op[2])},
                )  # fmt: skip
                try:
                    meters.reserve(job, LIMITS, epsilon_budget=None)
                    held[job.job_id] = job
                except QuotaExceeded:
                    pass
            elif op[0] in ("settle", "release") and held:
                job_id = sorted(held)[op[1] % len(held)]
                job = held.pop(job_id)
                share = op[2] if op[0] == "settle" else 0.5
                honest = NodeUsage(
                    rows_touched=int(job.rows * share),
                    units={"verified_records": job.units["verified_records"] * share},
                )
                if op[0] == "settle":
                    meters.settle(job_id, honest)
                else:
                    meters.release(job_id, partial=honest if op[2] else None, reason="")
            elif op[0] == "tomorrow":
                clock.at += DAY
            _assert_within_limits(path, clock)
        meters.close()


def _assert_within_limits(path: Path, clock: Clock) -> None:
    day = datetime.fromtimestamp(clock.at, UTC).date().isoformat()
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT r.analyst, a.meter, SUM(CASE WHEN r.status = 'reserved' "
            "THEN a.reserved ELSE a.used END), SUM(CASE WHEN r.day = ? THEN "
            "(CASE WHEN r.status = 'reserved' THEN a.reserved ELSE a.used END) "
            "ELSE 0 END) FROM amounts a JOIN reservations r ON r.job_id = a.job_id "
            "GROUP BY r.analyst, a.meter",
            (day,),
        ).fetchall()
    db.close()
    for _analyst, meter, total, today in rows:
        limit = LIMITS.get(meter)
        if limit is not None and limit.total is not None:
            assert total <= limit.total + 1e-9
        if limit is not None and limit.per_day is not None:
            assert today <= limit.per_day + 1e-9
