"""The differencing check (protocols.differencing) against the core of a ``count``
job (filter, count, sign) in one process, and the memory a node keeps per released
cell. The issue's goal is measured against the whole node-side job, on real node
processes, by ``bench_differencing_node``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.registry import Context, Measurement, benchmark
from benchmarks.stats import Stats
from cleanroom.jobtypes import predicates
from cleanroom.keys import sign_statement
from protocols.differencing import (
    DifferencingKey,
    ReleaseRecord,
    RowIndex,
    admit,
)

MIN_GROUP_SIZE: Final = 5
DIAGNOSES: Final = ("A", "B", "C", "D", "X")
QUERIES: Final[dict[str, list[dict[str, Any]]]] = {
    # The issue's own query (a string column)...
    "diagnosis != X": [{"column": "diagnosis", "op": "!=", "value": "X"}],
    # ...and the cheapest numeric filter, reported beside it.
    "age >= 40": [{"column": "age", "op": ">=", "value": 40}],
}
_CALLS: Final = 5
"""Calls per timed sample, so millisecond samples rise above timer noise."""


def make_frame(rows: int, seed: int = 7) -> pd.DataFrame:
    """Synthetic patients: a shuffled integer id, a diagnosis, an age, an income."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "pid": rng.permutation(rows).astype(np.int64),
            "diagnosis": rng.choice(DIAGNOSES, rows),
            "age": rng.integers(18, 91, rows),
            "income": rng.lognormal(10, 0.6, rows),
        }
    )


def earlier_masks(
    frame: pd.DataFrame, cells: int, *, rows: int | None = None, seed: int = 11
) -> list[npt.NDArray[np.bool_]]:
    """Row masks of earlier released cells: age bands x diagnosis subsets, or (with
    ``rows``) random subsets of exactly that many rows, which pass the row-count
    pre-filter against a cell of that size and so exercise the later filters."""
    rng = np.random.default_rng(seed)
    age = frame["age"].to_numpy()
    diagnosis = frame["diagnosis"].to_numpy(dtype=object)
    out = []
    for _ in range(cells):
        if rows is not None:
            mask = np.zeros(len(frame), dtype=np.bool_)
            mask[rng.choice(len(frame), rows, replace=False)] = True
        else:
            low = int(rng.integers(18, 80))
            high = int(rng.integers(low + 1, 92))
            chosen = rng.choice(DIAGNOSES, int(rng.integers(1, 5)), replace=False)
            mask = (age >= low) & (age < high) & np.isin(diagnosis, chosen)
        out.append(mask)
    return out


def variants(
    mask: npt.NDArray[np.bool_], count: int, seed: int = 13
) -> list[npt.NDArray[np.bool_]]:
    """``count`` new cells: ``mask`` less a random 1% of its rows each (all the same
    size, thousands of rows apart from each other): what a node admits one by one."""
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(mask)
    drop = max(MIN_GROUP_SIZE, rows.size // 100)
    out = []
    for _ in range(count):
        variant = mask.copy()
        variant[rng.choice(rows, drop, replace=False)] = False
        out.append(variant)
    return out


def _cycling(fns: list[Callable[[], object]]) -> Callable[[], None]:
    position = iter(range(len(fns)))

    def run() -> None:
        for _ in range(_CALLS):
            fns[next(position)]()

    return run


def _repeated(fn: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        for _ in range(_CALLS):
            fn()

    return run


def _per_call(samples: tuple[float, ...]) -> Stats:
    return Stats.of([s / _CALLS for s in samples], "s")


@benchmark("differencing_check", "privacy")
def differencing_check(ctx: Context) -> Iterator[Measurement]:
    """Differencing check and record (``admit``: sketch of the new cell, screen
    against every earlier cell, store it) vs the core of a count job (filter,
    count, sign), on the same frame in the same run, in one process. The whole
    node-side job, and the issue's goal, are ``differencing_node``."""
    rows = ctx.pick(quick=100_000, full=1_000_000)
    cells = ctx.pick(quick=100, full=1_000)
    repeat = max(ctx.repeat, 7)
    frame = make_frame(rows)
    key = DifferencingKey.generate()
    # Once per dataset load: hash the ids, arrange the frame by bucket.
    index = RowIndex.build(frame["pid"].to_numpy(), key)
    order = index.order()
    frame = frame.iloc[order].reset_index(drop=True)
    index = index.take(order)
    # Where the rows stay in file order (job types not row-order free), each
    # mask is reordered first: file row order[i] is arranged row i.
    in_file_order = np.empty_like(order)
    in_file_order[order] = np.arange(order.size)
    signing_key = Ed25519PrivateKey.generate()
    record_bytes: list[float] = []
    for name, where_raw in QUERIES.items():
        mask = predicates.apply(predicates.parse_where(where_raw, []), frame)
        # The warm-up call and every repeat admit fresh cells.
        new = variants(mask, (repeat + 1) * _CALLS)
        # Other fresh cells for the file-order path, as file-order masks.
        new_file = [v[in_file_order] for v in variants(mask, len(new), seed=17)]
        size = int(new[0].sum())
        for kind, masks in (
            ("varied earlier cells", earlier_masks(frame, cells)),
            ("earlier cells of the same size", earlier_masks(frame, cells, rows=size)),
        ):
            record = ReleaseRecord(
                key, "bench", group_size=MIN_GROUP_SIZE, capacity=cells + 2 * len(new)
            )
            for earlier in masks:
                admit([index.cell(earlier)], [record], min_group_size=MIN_GROUP_SIZE)
            recorded = len(record)
            record_bytes.append(len(record.to_bytes()) / recorded)

            def count_job(where_raw: list[dict[str, Any]] = where_raw) -> None:
                parsed = predicates.parse_where(where_raw, [])
                count = int(predicates.apply(parsed, frame).sum())
                statement = {"job_id": "j", "count": count, "suppressed": False}
                sign_statement(signing_key, statement)

            def admit_one(
                cell: npt.NDArray[np.bool_], record: ReleaseRecord = record
            ) -> None:
                [allowed] = admit(
                    [index.cell(cell)], [record], min_group_size=MIN_GROUP_SIZE
                )
                assert allowed

            def admit_file_order(
                cell: npt.NDArray[np.bool_], record: ReleaseRecord = record
            ) -> None:
                admit_one(cell[order], record)

            ours, base, file_order = ctx.time_interleaved(
                _cycling([partial(admit_one, cell) for cell in new]),
                _repeated(count_job),
                _cycling([partial(admit_file_order, cell) for cell in new_file]),
                repeat=repeat,
            )
            ctx.log(f"  {name}, {kind}: {recorded} earlier cells")
            for metric, mine, theirs in (
                ("cpu", ours.cpu, base.cpu),
                ("wall", ours.wall, base.wall),
            ):
                yield ctx.measurement(
                    case=f"admit vs count ({name}; {kind})",
                    params={"rows": rows, "cells": cells},
                    details={"earlier_cells": recorded, "new_cell_rows": size},
                    metric=metric,
                    measured=_per_call(mine.samples),
                    baseline=_per_call(theirs.samples),
                    baseline_name=f"count job node side: where {name}, count, sign",
                    x=("rows",),
                    note="rows kept in bucket order, as the node keeps them for "
                    "count (ReleaseGuard.arrange)",
                )
            yield ctx.measurement(
                case=f"admit in file order vs count ({name}; {kind})",
                params={"rows": rows, "cells": cells},
                details={"earlier_cells": recorded, "new_cell_rows": size},
                metric="cpu",
                measured=_per_call(file_order.cpu.samples),
                baseline=_per_call(base.cpu.samples),
                baseline_name=f"count job node side: where {name}, count, sign",
                x=("rows",),
                note="rows in file order (job types not row-order free): each "
                "mask reordered (mask[order]) first",
            )
    geometry = record.geometry
    yield ctx.measurement(
        case="record bytes per released cell",
        params={"rows": rows, "cells": cells},
        details={
            "min_group_size": MIN_GROUP_SIZE,
            "table_cells": geometry.cells,
            "per_cell_bound": ReleaseRecord.bytes_per_cell(geometry),
            "index_bytes_per_row": index.nbytes / index.rows,
        },
        metric="bytes_per_cell",
        measured=Stats.of(record_bytes, "bytes"),
        note="serialised record size / cells, header and MAC included",
    )
