"""Engine rows of a ``cells_sql`` statement back into a ``tables.CellResult``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cleanroom.jobtypes.tables import CellQuery, CellResult, CellSummary


def summarise(
    query: CellQuery, names: Sequence[str], rows: Sequence[Sequence[Any]]
) -> CellResult:
    """One summary per declared group (empty groups are zeros); the flags of the
    out-of-range columns come from every kept row, grouped or not."""
    by_cell: dict[int | None, dict[str, Any]] = {}
    for row in rows:
        cell = None if row[0] is None else int(row[0])
        by_cell[cell] = dict(zip(names, row[1:], strict=True))
    outside = {
        column
        for j, column in enumerate(query.columns)
        if any(int(found.get(f"o{j}") or 0) for found in by_cell.values())
    }
    cells = []
    for k in range(len(query.groups) if query.group_by is not None else 1):
        found = by_cell.get(k, {})
        cells.append(
            CellSummary(
                count=int(found.get("n") or 0),
                sums={
                    c: float(found.get(f"s{i}") or 0.0)
                    for i, c in enumerate(query.sums)
                },
                products={
                    pair: float(found.get(f"q{i}") or 0.0)
                    for i, pair in enumerate(query.products)
                },
                histograms={
                    c: tuple(
                        int(found.get(f"h{i}_{b}") or 0) for b in range(len(edges) - 1)
                    )
                    for i, (c, edges) in enumerate(query.histograms.items())
                },
            )
        )
    return CellResult(tuple(cells), frozenset(outside))
