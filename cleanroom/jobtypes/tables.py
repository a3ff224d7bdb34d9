"""The narrow query seam a node-side party reads its dataset through: row count,
filtered count and per-cell summaries, so a dataset served by an engine (a
database, DuckDB over Parquet or CSV) is aggregated where it lives and the node
never loads the whole table.

``FrameTable`` is the reference implementation over an in-memory pandas frame;
the node's engine tables (``node/sources/``) must give the same answers (their
tests pin it). Every call on an engine table first re-checks that the dataset is
still the content the node loaded and published, so a release can never be
signed over a hash the rows no longer have.

Row rules (the same for every implementation):

1. ``where`` selects rows (``predicates``; a missing value fails ``==``, ``in``
   and the orderings, and passes ``!=`` and ``not_in``).
2. ``CellQuery`` keeps complete cases only: a row missing (NULL/NaN) any of
   ``columns`` or ``group_by`` is in no cell.
3. Values are saturated to their clip range (infinities included) before they
   are summed or binned; ``outside`` names the columns that had a kept value
   beyond it.
4. A row whose ``group_by`` value is no declared group is in no cell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd

from cleanroom.errors import ProtocolError
from cleanroom.jobtypes import predicates

if TYPE_CHECKING:
    from cleanroom.jobtypes.base import NodeContext


@dataclass(frozen=True)
class CellQuery:
    """Per-cell aggregates of bounded numeric columns, grouped by declared values."""

    where: tuple[predicates.Predicate, ...]
    columns: tuple[str, ...]
    clip: Mapping[str, tuple[float, float]]
    group_by: str | None = None
    groups: tuple[Any, ...] = ()
    sums: tuple[str, ...] = ()
    """Columns whose centred sum ``sum(clip(x) - centre)`` is wanted."""
    products: tuple[tuple[str, str], ...] = ()
    """Pairs whose centred product sum ``sum((a - ca) * (b - cb))`` is wanted."""
    histograms: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    """Column -> bin edges: counts per bin as ``np.histogram`` (last bin closed)."""
    need_outside: bool = True
    """Whether ``CellResult.outside`` must be computed (an engine then aggregates
    rows in no group too); False leaves it empty."""

    def centre(self, column: str) -> float:
        lo, hi = self.clip[column]
        return (lo + hi) / 2


@dataclass(frozen=True)
class CellSummary:
    """One cell's aggregates."""

    count: int
    sums: Mapping[str, float]
    products: Mapping[tuple[str, str], float]
    histograms: Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class CellResult:
    cells: tuple[CellSummary, ...]
    """One per declared group, in ``groups`` order (one cell when no ``group_by``)."""
    outside: frozenset[str]
    """Columns with a kept row (rules 1-2, any group) beyond its clip range."""


class Table(Protocol):
    """A dataset as a node-side party may query it."""

    @property
    def rows(self) -> int:
        """Every row of the dataset (the content check pins it)."""
        ...

    def count(self, where: Sequence[predicates.Predicate]) -> int:
        """Rows matching every predicate."""
        ...

    def cells(self, query: CellQuery) -> CellResult:
        """The per-cell aggregates of ``query`` (rules 1-4)."""
        ...


def table_of(ctx: NodeContext) -> Table:
    """The context's engine table, or the in-memory frame as one."""
    return ctx.table if ctx.table is not None else FrameTable(ctx.data)


class FrameTable:
    """``Table`` over a pandas frame: the reference semantics."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    @property
    def rows(self) -> int:
        return len(self._frame)

    def count(self, where: Sequence[predicates.Predicate]) -> int:
        return int(predicates.apply(where, self._frame).sum())

    def cells(self, query: CellQuery) -> CellResult:
        frame = self._frame
        values = _numeric(frame, query.columns)
        keep = predicates.apply(query.where, frame) & ~np.isnan(values).any(axis=1)
        lows = np.array([query.clip[c][0] for c in query.columns])
        highs = np.array([query.clip[c][1] for c in query.columns])
        kept = values[keep]
        beyond = ((kept < lows) | (kept > highs)).any(axis=0)
        outside = frozenset(query.columns[j] for j in np.flatnonzero(beyond))
        if not query.need_outside:
            outside = frozenset()
        bounded = np.clip(values, lows, highs)
        index = {c: j for j, c in enumerate(query.columns)}
        centred = bounded - np.array([query.centre(c) for c in query.columns])
        out = []
        for mask in _group_masks(frame, query, keep):
            raw, shifted = bounded[mask], centred[mask]
            out.append(
                CellSummary(
                    count=int(mask.sum()),
                    sums={
                        c: math.fsum(shifted[:, index[c]].tolist()) for c in query.sums
                    },
                    products={
                        (a, b): math.fsum(
                            (shifted[:, index[a]] * shifted[:, index[b]]).tolist()
                        )
                        for a, b in query.products
                    },
                    histograms={
                        c: tuple(
                            int(n) for n in np.histogram(raw[:, index[c]], bins=e)[0]
                        )
                        for c, e in query.histograms.items()
                    },
                )
            )
        return CellResult(tuple(out), outside)


def _numeric(frame: pd.DataFrame, columns: Sequence[str]) -> npt.NDArray[np.float64]:
    out = np.empty((len(frame), len(columns)), dtype=np.float64)
    for j, column in enumerate(columns):
        if column not in frame.columns:
            raise ProtocolError(f"the dataset has no column {column!r}")
        series = frame[column]
        if not (
            pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)
        ):
            raise ProtocolError(f"column {column!r} is not numeric in this dataset")
        out[:, j] = series.to_numpy(dtype=np.float64, na_value=np.nan)
    return out


def _group_masks(
    frame: pd.DataFrame, query: CellQuery, keep: npt.NDArray[np.bool_]
) -> list[npt.NDArray[np.bool_]]:
    if query.group_by is None:
        return [keep]
    if query.group_by not in frame.columns:
        raise ProtocolError(f"the dataset has no column {query.group_by!r}")
    column = frame[query.group_by]
    keep = keep & column.notna().to_numpy(dtype=bool)
    return [
        keep & (column == value).fillna(False).to_numpy(dtype=bool)
        for value in query.groups
    ]
