"""The differencing check as a share of a whole ``count`` job's node-side work,
measured on two real node processes over mTLS gRPC in the same jobs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Final

import numpy as np
import yaml

from benchmarks.bench_differencing import MIN_GROUP_SIZE, make_frame
from benchmarks.federation import LocalFederation, process_cpu_seconds
from benchmarks.registry import Context, Goal, Measurement, benchmark
from benchmarks.stats import Stats
from cleanroom import local
from cleanroom.client import Client
from cleanroom.errors import CleanroomError

GOAL: Final = Goal(
    "<=",
    0.05,
    "differencing issue: the check costs at most 5% of a count job's node-side work",
    at="1,000,000 rows, 1,000 earlier released cells",
)
GUARDED: Final = "guarded"
"""The node (and dataset) with the differencing record, as every node by default."""
OPEN: Final = "open"
"""The same rows under ``differencing: {enabled: false}``: the baseline."""
_IDLE_S: Final = 5.0


def _policy() -> dict[str, Any]:
    doc = local.default_policy()
    rules = dict(doc["default"])  # type: ignore[call-overload]
    rules["min_group_size"] = MIN_GROUP_SIZE
    return {GUARDED: rules, OPEN: {**rules, "differencing": {"enabled": False}}}


def _spec(where: list[dict[str, Any]]) -> str:
    return yaml.safe_dump(
        {
            "type": "count",
            "inputs": [{"node": n, "dataset": n} for n in (GUARDED, OPEN)],
            "params": {"where": where},
            "purpose": "benchmark",
        },
        sort_keys=False,
    )


@benchmark("differencing_node", "privacy")
def differencing_node(ctx: Context) -> Iterator[Measurement]:
    """Two node processes hold the same rows (a shuffled integer ``pid`` as the id
    column, diagnosis, age, income) and answer the same count jobs; one keeps the
    differencing record (the default policy), the other has it switched off. Each
    batch of jobs admits fresh cells (``diagnosis != X and income >= t``, each
    t hundreds of rows from the last, so every cell is checked against every
    earlier one and recorded) after ``cells`` earlier released cells
    (``income < t``), all through real jobs. The check's cost is the CPU the
    guarded node spent beyond the open one, per job; the count job's node-side
    work is the open node's CPU per job: admission, the filter and count, the
    sealed and signed report, the release signature, meters and audit log, gRPC.
    The baseline has the CPU an idle node spends polling in the same wall time
    taken off (measured before the batches; both nodes poll alike, so the
    difference needs no correction), so only the job's work is counted.
    """
    rows = ctx.pick(quick=20_000, full=1_000_000)
    cells = ctx.pick(quick=20, full=1_000)
    batches = ctx.pick(quick=2, full=max(ctx.repeat, 7))
    per_batch = ctx.pick(quick=4, full=25)
    frame = make_frame(rows)
    workdir = ctx.workdir / "differencing-node"
    nodes = []
    for name in (GUARDED, OPEN):
        path = workdir / "data" / name / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        nodes.append((name, path))
    policy = workdir / "policy.yaml"
    policy.write_text(yaml.safe_dump(_policy(), sort_keys=False))
    fed_dir = workdir / "federation"
    fed = local.up(
        workdir=fed_dir,
        nodes=nodes,
        policy=policy,
        id_columns={GUARDED: "pid", OPEN: "pid"},
    )
    try:
        with Client.from_federation(fed_dir / "federation.json") as client:
            running = LocalFederation(fed, client, [GUARDED, OPEN])
            yield from _measure(ctx, running, frame, cells, batches, per_batch)
    finally:
        local.down(fed_dir)


def _measure(
    ctx: Context,
    fed: LocalFederation,
    frame: Any,
    cells: int,
    batches: int,
    per_batch: int,
) -> Iterator[Measurement]:
    rows = len(frame)
    incomes = np.sort(frame["income"].to_numpy())
    started = time.perf_counter()
    for i in range(cells):
        limit = float(incomes[(i + 1) * rows // (cells + 2)])
        fed.run(_spec([{"column": "income", "op": "<", "value": limit}]))
    ctx.log(
        f"  {cells} earlier cells released in {time.perf_counter() - started:.0f} s"
    )
    pids = {name: fed.fed.processes[f"node:{name}"] for name in (GUARDED, OPEN)}
    cpu0 = {n: process_cpu_seconds([p]) for n, p in pids.items()}
    time.sleep(_IDLE_S)
    idle = {n: (process_cpu_seconds([p]) - cpu0[n]) / _IDLE_S for n, p in pids.items()}
    # Both nodes poll alike; their mean rate is the finer estimate (10 ms ticks).
    polling = (idle[GUARDED] + idle[OPEN]) / 2
    step = max(rows // 2_000, 4 * MIN_GROUP_SIZE)
    check: list[float] = []
    work: list[float] = []
    raw: list[float] = []
    job = 0
    for _ in range(batches):
        before = {n: process_cpu_seconds([p]) for n, p in pids.items()}
        wall = time.perf_counter()
        for _ in range(per_batch):
            job += 1
            limit = float(incomes[rows // 1_000 + job * step])
            where: list[dict[str, Any]] = [
                {"column": "diagnosis", "op": "!=", "value": "X"},
                {"column": "income", "op": ">=", "value": limit},
            ]
            result = fed.run(_spec(where)).result
            if any(c["suppressed"] for c in result["counts"]):
                raise CleanroomError("a fresh cell was refused: it measured no record")
        wall = time.perf_counter() - wall
        spent = {n: process_cpu_seconds([p]) - before[n] for n, p in pids.items()}
        check.append((spent[GUARDED] - spent[OPEN]) / per_batch)
        work.append((spent[OPEN] - polling * wall) / per_batch)
        raw.append(spent[OPEN] / per_batch)
    ctx.log(
        f"  idle CPU {polling * 1e3:.1f} ms/s per node; open node "
        f"{np.median(raw) * 1e3:.1f} ms/job before the idle share"
    )
    yield ctx.measurement(
        case="differencing check vs count job, node side (2 node processes, gRPC)",
        params={"rows": rows, "cells": cells},
        details={
            "jobs": batches * per_batch,
            "jobs_per_sample": per_batch,
            "idle_cpu_ms_per_s": round(polling * 1e3, 2),
            "open_node_ms_per_job_with_idle": round(float(np.median(raw)) * 1e3, 2),
        },
        metric="cpu",
        measured=Stats.of(check, "s"),
        baseline=Stats.of(work, "s"),
        baseline_name="count job, node-side CPU of the node without the record",
        goal=GOAL,
        goal_applies=rows == 1_000_000 and cells == 1_000,
        x=("rows",),
        note="per job; /proc CPU of each node process (10 ms ticks) over a batch"
        + (
            ""
            if rows == 1_000_000
            else "; at this size the check is below the ticks' resolution: a smoke "
            "run, not a measurement"
        ),
    )
