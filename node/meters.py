"""Quota meters: atomic per-analyst reservations and the node's billing record."""

from __future__ import annotations

import csv
import math
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TextIO

from cleanroom.errors import NotFound, QuotaExceeded, StoreError
from cleanroom.localdb import LocalDatabase
from node.policy import RESERVED_METERS, JobRequest, QuotaLimit
from protocols.party import NodeUsage

_TOLERANCE: Final = 1e-9
"""Relative slack so float sums such as ten 0.1-epsilon jobs fit a budget of 1."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS reservations (
    job_id TEXT PRIMARY KEY, analyst TEXT NOT NULL, dataset TEXT NOT NULL,
    job_type TEXT NOT NULL, day TEXT NOT NULL, status TEXT NOT NULL,
    reserved_at REAL NOT NULL, closed_at REAL, reason TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS reservations_owner ON reservations (analyst, dataset);
CREATE TABLE IF NOT EXISTS amounts (
    job_id TEXT NOT NULL REFERENCES reservations (job_id), meter TEXT NOT NULL,
    reserved REAL NOT NULL, used REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, meter));
CREATE TABLE IF NOT EXISTS reservation_organisations (
    job_id TEXT PRIMARY KEY REFERENCES reservations (job_id),
    organisation TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS reservation_organisations_by_name
    ON reservation_organisations (organisation);
CREATE TABLE IF NOT EXISTS limits (
    dataset TEXT NOT NULL, meter TEXT NOT NULL, per_day REAL, total REAL,
    PRIMARY KEY (dataset, meter));
"""
# An open reservation counts what it reserved; a closed one what it used. A job
# counts on the day it was reserved, so settling after midnight cannot push the
# new day over a limit that its reservations were already checked against.
_CHARGED_SQL: Final = """
SELECT a.meter,
    SUM(CASE WHEN r.day = ? THEN
        CASE WHEN r.status = 'reserved' THEN a.reserved ELSE a.used END
    ELSE 0 END),
    SUM(CASE WHEN r.status = 'reserved' THEN a.reserved ELSE a.used END)
FROM amounts a JOIN reservations r ON r.job_id = a.job_id
WHERE r.analyst = ? AND r.dataset = ? GROUP BY a.meter
"""
_ORGANISATION_CHARGED_SQL: Final = """
SELECT a.meter,
    SUM(CASE WHEN r.status = 'reserved' THEN a.reserved ELSE a.used END)
FROM amounts a JOIN reservations r ON r.job_id = a.job_id
JOIN reservation_organisations o ON o.job_id = r.job_id
WHERE o.organisation = ? AND r.dataset = ? AND a.meter IN ('epsilon', 'delta')
GROUP BY a.meter
"""
_USAGE_SQL: Final = """
SELECT r.analyst, r.dataset, a.meter,
    SUM(CASE WHEN r.status != 'reserved' AND r.day = ? THEN a.used ELSE 0 END),
    SUM(CASE WHEN r.status != 'reserved' THEN a.used ELSE 0 END),
    SUM(CASE WHEN r.status = 'reserved' AND r.day = ? THEN a.reserved ELSE 0 END),
    SUM(CASE WHEN r.status = 'reserved' THEN a.reserved ELSE 0 END),
    l.per_day, l.total
FROM amounts a JOIN reservations r ON r.job_id = a.job_id
LEFT JOIN limits l ON l.dataset = r.dataset AND l.meter = a.meter
WHERE (? IS NULL OR r.analyst = ?) AND (? IS NULL OR r.dataset = ?)
GROUP BY r.analyst, r.dataset, a.meter ORDER BY 1, 2, 3
"""
_EXPORT_SQL: Final = """
SELECT r.job_id, r.analyst, r.dataset, r.job_type, a.meter, a.used, r.status,
    r.closed_at, r.reason
FROM reservations r JOIN amounts a ON a.job_id = r.job_id
WHERE r.status != 'reserved' AND (? IS NULL OR r.closed_at >= ?)
ORDER BY r.closed_at, r.job_id, a.meter
"""
_RESERVATION_SQL: Final = "SELECT * FROM reservations WHERE job_id = ?"
_AMOUNTS_SQL: Final = "SELECT meter, reserved FROM amounts WHERE job_id = ?"
EXPORT_COLUMNS: Final = tuple(
    "job_id analyst dataset job_type meter amount status timestamp reason".split()
)


class Status(StrEnum):
    """Where a reservation is: open, or closed by settling or releasing it."""

    RESERVED = "reserved"
    SETTLED = "settled"
    RELEASED = "released"


@dataclass(frozen=True)
class Reservation:
    """Amounts held for one job, charged to its analyst on its dataset on ``day``."""

    job_id: str
    analyst: str
    dataset: str
    job_type: str
    day: str
    amounts: Mapping[str, float]
    reserved_at: float


@dataclass(frozen=True)
class UsageRow:
    """One meter's use by one analyst on one dataset, and its limit if known."""

    analyst: str
    dataset: str
    meter: str
    used_today: float
    used_total: float
    reserved_today: float
    reserved_total: float
    limit: QuotaLimit | None

    def remaining(self) -> float | None:
        """What may still be reserved now; ``None`` if the meter has no limit."""
        left: list[float] = []
        if self.limit is not None and self.limit.per_day is not None:
            left.append(self.limit.per_day - self.used_today - self.reserved_today)
        if self.limit is not None and self.limit.total is not None:
            left.append(self.limit.total - self.used_total - self.reserved_total)
        return max(0.0, min(left)) if left else None


class Meters:
    """Per-analyst, per-dataset meters in the node's database.

    A job reserves what it declares before it runs; at the end its reservation is
    settled with what it actually used, or released. Each check-and-reserve is one
    ``BEGIN IMMEDIATE`` transaction (or part of the caller's, e.g. with the
    approval and its audit entry), so concurrent reservations from threads or from
    other processes sharing the file can never overspend a limit.
    """

    def __init__(
        self, db: LocalDatabase | Path, *, now: Callable[[], float] = time.time
    ) -> None:
        """``db`` is the node's database (shared) or a file of the meters' own."""
        self._owns_db = not isinstance(db, LocalDatabase)
        self._db = db if isinstance(db, LocalDatabase) else LocalDatabase(Path(db))
        self._path = self._db.path
        self._now = now
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the file if the meters opened it themselves."""
        if self._owns_db:
            self._db.close()

    def reserve(
        self,
        request: JobRequest,
        limits: Mapping[str, QuotaLimit],
        *,
        epsilon_budget: float | None,
        delta_budget: float | None = None,
        organisation_budget: bool = False,
    ) -> Reservation:
        """Reserve the request's amounts if every limit holds, else QuotaExceeded.

        The privacy budgets hold per analyst and, with ``organisation_budget``,
        also for the request's organisation (every analyst of it together).
        Idempotent per job id: reserving an open job again returns its reservation.
        """
        budgets = {"epsilon": epsilon_budget, "delta": delta_budget}
        now = self._now()
        terms = (request.job_id, request.analyst, request.dataset, request.job_type)
        amounts = MappingProxyType(request.amounts())
        held = Reservation(*terms, _iso(now)[:10], amounts, now)
        with self._transaction() as db:
            _store_limits(db, request.dataset, limits, budgets)
            existing = _find(db, request.job_id)
            if existing is not None:
                if replace(existing, day=held.day, reserved_at=now) != held:
                    raise StoreError(f"job {terms[0]!r} is already reserved otherwise")
                return existing
            charged = db.execute(_CHARGED_SQL, (held.day, *terms[1:3])).fetchall()
            reasons = _exceeded(held, charged, limits, budgets)
            if organisation_budget and request.organisation:
                spent = dict(
                    db.execute(
                        _ORGANISATION_CHARGED_SQL,
                        (request.organisation, request.dataset),
                    ).fetchall()
                )
                reasons += _organisation_exceeded(
                    request.organisation, held, spent, budgets
                )
            if not reasons:
                db.execute(
                    "INSERT INTO reservations (job_id, analyst, dataset, job_type, "
                    "day, status, reserved_at) VALUES (?, ?, ?, ?, ?, 'reserved', ?)",
                    (*terms, held.day, now),
                )
                db.executemany(
                    "INSERT INTO amounts (job_id, meter, reserved) VALUES (?, ?, ?)",
                    [(request.job_id, m, a) for m, a in amounts.items()],
                )
                if request.organisation:
                    db.execute(
                        "INSERT INTO reservation_organisations (job_id, organisation) "
                        "VALUES (?, ?)",
                        (request.job_id, request.organisation),
                    )
        if reasons:
            raise QuotaExceeded(reasons)
        return held

    def settle(self, job_id: str, actual: NodeUsage) -> None:
        """Record what the job truly used, even past its hold, and free the rest."""
        self._close(job_id, Status.SETTLED, _usage_amounts(actual), reason="")

    def release(
        self, job_id: str, *, partial: NodeUsage | None = None, reason: str
    ) -> None:
        """Free a refused or failed job's hold, recording any ``partial`` use.

        A job that ran part-way (``partial`` given) counts as one job, and every
        unit it used (e.g. the CPU seconds of a run that failed) is billed like a
        successful run's. Releasing a released job again does nothing.
        """
        used = {} if partial is None else _usage_amounts(partial)
        self._close(job_id, Status.RELEASED, used, reason=reason)

    def usage(
        self, *, analyst: str | None = None, dataset: str | None = None
    ) -> list[UsageRow]:
        """Used and reserved amounts per analyst, dataset and meter, with limits."""
        day = _iso(self._now())[:10]  # the UTC calendar day
        args = (day, day, analyst, analyst, dataset, dataset)
        with self._connection() as db:
            return [_usage_row(row) for row in db.execute(_USAGE_SQL, args)]

    def export_csv(self, out: TextIO, *, since: float | None = None) -> int:
        """Write a billing statement, one row per meter of each closed job.

        Columns are ``EXPORT_COLUMNS``; ``timestamp`` is when the job was settled
        or released (UTC ISO-8601). Returns the number of data rows written.
        """
        with self._connection() as db:
            rows = db.execute(_EXPORT_SQL, (since, since)).fetchall()
        writer = csv.writer(out)
        writer.writerow(EXPORT_COLUMNS)
        for *job, used, status, closed_at, reason in rows:
            writer.writerow([*job, _show(used), status, _iso(closed_at), reason])
        return len(rows)

    def _close(
        self, job_id: str, status: Status, used: dict[str, float], *, reason: str
    ) -> None:
        with self._transaction() as db:
            row = db.execute(_RESERVATION_SQL, (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"no reservation for job {job_id!r}")
            if row[5] == Status.RELEASED and status is Status.RELEASED:
                return
            if row[5] != Status.RESERVED:
                raise StoreError(
                    f"reservation for job {job_id!r} is already {row[5]}; "
                    f"it cannot be {status} again"
                )
            reserved = dict(db.execute(_AMOUNTS_SQL, (job_id,)))
            if used.get("epsilon", 0.0) > 0 and "delta" in reserved:
                # Usage reports carry no delta: spending epsilon spent its delta.
                used["delta"] = reserved["delta"]
            overruns = [
                f"{m} {_show(a)} > reserved {_show(reserved.get(m, 0.0))}"
                for m, a in sorted(used.items())
                if _exceeds(a, reserved.get(m, 0.0))
            ]
            if overruns:
                note = "used more than reserved: " + ", ".join(overruns)
                reason = f"{reason}; {note}" if reason else note
            db.execute("UPDATE amounts SET used = 0 WHERE job_id = ?", (job_id,))
            db.executemany(
                "INSERT INTO amounts (job_id, meter, reserved, used) "
                "VALUES (?, ?, 0, ?) ON CONFLICT (job_id, meter) "
                "DO UPDATE SET used = excluded.used",
                [(job_id, m, a) for m, a in used.items() if a or m in reserved],
            )
            db.execute(
                "UPDATE reservations SET status = ?, closed_at = ?, reason = ? "
                "WHERE job_id = ?",
                (status.value, self._now(), reason, job_id),
            )

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._db.read() as db:
            yield db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._db.transaction() as db:
            yield db


def _exceeded(
    held: Reservation,
    charged: list[tuple[str, float, float]],
    limits: Mapping[str, QuotaLimit],
    budgets: Mapping[str, float | None],
) -> list[str]:
    before = {meter: (today, total) for meter, today, total in charged}
    reasons: list[str] = []
    for meter, amount in held.amounts.items():
        today, total = before.get(meter, (0.0, 0.0))
        limit = limits.get(meter, QuotaLimit())
        for kind, period, so_far, cap in (
            ("quota", "per day", today, limit.per_day),
            ("quota", "total", total, limit.total),
            ("privacy budget", "total", total, budgets.get(meter)),
        ):
            if cap is not None and amount > 0 and _exceeds(so_far + amount, cap):
                bound = "budget" if kind == "privacy budget" else "limit"
                reasons.append(
                    f"{kind} {meter!r} {period} for analyst {held.analyst!r} on "
                    f"{held.dataset!r}: {_show(so_far)} used or reserved, {bound} "
                    f"{_show(cap)} (this job needs {_show(amount)})"
                )
    return reasons


def _organisation_exceeded(
    organisation: str,
    held: Reservation,
    spent: Mapping[str, float],
    budgets: Mapping[str, float | None],
) -> list[str]:
    reasons = []
    for meter in ("epsilon", "delta"):
        amount, cap = held.amounts.get(meter, 0.0), budgets.get(meter)
        so_far = spent.get(meter, 0.0)
        if cap is not None and amount > 0 and _exceeds(so_far + amount, cap):
            reasons.append(
                f"privacy budget {meter!r} total for organisation {organisation!r} "
                f"on {held.dataset!r}: {_show(so_far)} used or reserved by its "
                f"analysts, budget {_show(cap)} (this job needs {_show(amount)})"
            )
    return reasons


def _find(db: sqlite3.Connection, job_id: str) -> Reservation | None:
    row = db.execute(_RESERVATION_SQL, (job_id,)).fetchone()
    if row is None:
        return None
    if row[5] != Status.RESERVED:
        raise StoreError(f"job {job_id!r} was already {row[5]}; use a new job id")
    job_id, analyst, dataset, job_type, day, _, reserved_at, *_ = row
    amounts = MappingProxyType(dict(db.execute(_AMOUNTS_SQL, (job_id,))))
    return Reservation(job_id, analyst, dataset, job_type, day, amounts, reserved_at)


def _store_limits(
    db: sqlite3.Connection,
    dataset: str,
    limits: Mapping[str, QuotaLimit],
    budgets: Mapping[str, float | None],
) -> None:
    merged = dict(limits)
    for meter, budget in budgets.items():
        if budget is not None:
            limit = merged.get(meter, QuotaLimit())
            total = budget if limit.total is None else min(budget, limit.total)
            merged[meter] = QuotaLimit(limit.per_day, total)
    db.execute("DELETE FROM limits WHERE dataset = ?", (dataset,))
    db.executemany(
        "INSERT INTO limits (dataset, meter, per_day, total) VALUES (?, ?, ?, ?)",
        [(dataset, m, q.per_day, q.total) for m, q in merged.items()],
    )


def _usage_row(row: Any) -> UsageRow:
    analyst, dataset, meter, used_day, used, held_day, held, per_day, total = row
    limit = None if per_day is None and total is None else QuotaLimit(per_day, total)
    amounts = (float(used_day), float(used), float(held_day), float(held))
    return UsageRow(analyst, dataset, meter, *amounts, limit)


def _usage_amounts(usage: NodeUsage) -> dict[str, float]:
    """What a job that ran (fully or part-way) used; it counts as one job."""
    rows = usage.rows_touched
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise StoreError(f"usage report: rows_touched must be >= 0, got {rows!r}")
    amounts = {"jobs": 1.0, "rows": float(rows)}
    amounts["epsilon"] = _non_negative("epsilon", usage.epsilon)
    if usage.delta:
        amounts["delta"] = _non_negative("delta", usage.delta)
    for unit, amount in usage.units.items():
        if not unit or unit in RESERVED_METERS:
            raise StoreError(f"usage report: unit {unit!r} is metered by the node")
        amounts[unit] = _non_negative(unit, amount)
    return amounts


def _non_negative(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise StoreError(f"usage report: {name} must be >= 0, got {value!r}")
    return float(value)


def _exceeds(amount: float, cap: float) -> bool:
    return amount > cap + _TOLERANCE * max(1.0, abs(cap))


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _show(amount: float) -> str:
    return str(int(amount)) if float(amount).is_integer() else repr(float(amount))
