"""A node's exact ``secure_stats`` vector from a ``Table`` query: the engine holding
the dataset (database, DuckDB, or pandas in memory) computes every cell's count,
centred sums, product sums and histograms; this module only fixed-point encodes
them in layout order. Same rows rules and refusals as ``encode.contribution``,
which stays the row-level reference (their equality is tested); the coordinator
learns nothing here (nothing leaves the node)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cleanroom.errors import ProtocolError
from cleanroom.jobtypes.stats.encode import check_rows
from cleanroom.jobtypes.stats.layout import Layout
from cleanroom.jobtypes.tables import CellQuery, Table


def cell_query(layout: Layout) -> CellQuery:
    """The one query a node runs for ``layout``."""
    params = layout.params
    sums: list[str] = []
    products: list[tuple[str, str]] = []
    for _, segment in layout.slots():
        if segment.kind == "sum":
            sums.append(segment.columns[0])
        elif segment.kind == "product":
            products.append((segment.columns[0], segment.columns[1]))
    return CellQuery(
        where=params.where,
        columns=params.columns,
        clip=params.clip,
        group_by=params.group_by,
        groups=params.groups,
        sums=tuple(sums),
        products=tuple(products),
        histograms=dict(params.edges),
        need_outside=params.out_of_range != "clip",
    )


def contribution(layout: Layout, table: Table) -> npt.NDArray[np.int64]:
    """The node's exact encoded vector (signed integers), without noise."""
    params = layout.params
    check_rows(table.rows, params.max_rows)
    result = table.cells(cell_query(layout))
    if params.out_of_range != "clip":
        for column in params.columns:
            if column in result.outside:
                lo, hi = params.clip[column]
                raise ProtocolError(
                    f"column {column!r} has values outside its clip range "
                    f"[{lo:g}, {hi:g}] (params.clip.{column}); widen it or set "
                    "params.out_of_range: clip"
                )
    out = np.empty(layout.vector_length, dtype=np.int64)
    for g, cell in enumerate(result.cells):
        base = g * layout.cell_length
        for offset, segment in layout.slots():
            if segment.kind == "count":
                slot = np.array([float(cell.count)])
            elif segment.kind == "sum":
                slot = np.array([cell.sums[segment.columns[0]]])
            elif segment.kind == "product":
                a, b = segment.columns
                slot = np.array([cell.products[(a, b)]])
            else:
                counts = cell.histograms[segment.columns[0]]
                slot = np.array(counts, dtype=np.float64)
            start = base + offset
            out[start : start + segment.size] = segment.encode(slot).view(np.int64)
    return out
