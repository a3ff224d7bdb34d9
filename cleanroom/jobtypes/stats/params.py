"""The ``secure_stats`` parameters, parsed and checked against the catalog schemas.

Every error is a SpecError naming the offending field (``params.columns[2]``,
``params.bins.age[3]``, ``params.dp.epsilon``). Parsing is pure: the coordinator runs
it against every input's schema, each node against its own, and every party derives
the same public layout from the result.

What the holder decides, not the analyst (the node passes it from its policy):
``max_cells`` caps the cells a job releases (each declared group, and each bin of
each histogram in each group, is a cell). Values are always clipped: failing on
an out-of-range value would be an oracle (``where`` + a moving clip bound), so
``out_of_range`` accepts only ``clip``.
Filters, groups and bins on a dataset's identifier column are refused, and
``max_rows`` is checked against the catalog's row bucket, never an exact count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np

from cleanroom.catalog import NUMERIC_TYPES, DatasetInfo
from cleanroom.errors import SpecError
from cleanroom.jobtypes import predicates
from cleanroom.jobtypes.stats.limits import (
    MAX_ROWS_LIMIT,
    GroupValue,
    check_cells,
    check_row_buckets,
    refuse_identifiers,
)
from protocols.secagg.config import MIN_PARTIES, default_threshold

STATS: Final = (
    "count",
    "sum",
    "mean",
    "variance",
    "std",
    "covariance",
    "correlation",
    "histogram",
    "quantiles",
)
NEEDS_SUMS: Final = frozenset(
    {"sum", "mean", "variance", "std", "covariance", "correlation"}
)
NEEDS_SQUARES: Final = frozenset({"variance", "std"})
NEEDS_PRODUCTS: Final = frozenset({"covariance", "correlation"})
NEEDS_HISTOGRAMS: Final = frozenset({"histogram", "quantiles"})

PARAMS: Final = (
    "columns",
    "stats",
    "clip",
    "bins",
    "quantiles",
    "group_by",
    "groups",
    "where",
    "dp",
    "out_of_range",
    "threshold",
    "max_rows",
)
DEFAULT_MAX_ROWS: Final = 1_000_000
MAX_COLUMNS: Final = 32
MAX_GROUPS: Final = 1000
MAX_BINS: Final = 10_000
DEFAULT_MAX_CELLS: Final = 1000
"""Cells (groups x (1 + bins)) a job may release when the node's policy says nothing."""
ANY_CELLS: Final = MAX_GROUPS * (1 + MAX_COLUMNS * MAX_BINS)
"""No cap on cells beyond the parser's own: what the spec is checked with before a
node applies its holder's ``max_cells`` (``SecureStatsJob.admit``)."""

OutOfRange = Literal["clip"]


@dataclass(frozen=True)
class Privacy:
    """The (epsilon, delta) the analyst asks the released result to satisfy."""

    epsilon: float
    delta: float


@dataclass(frozen=True)
class StatsParams:
    """Checked parameters of one ``secure_stats`` job."""

    columns: tuple[str, ...]
    stats: frozenset[str]
    clip: Mapping[str, tuple[float, float]]
    edges: Mapping[str, tuple[float, ...]]
    quantiles: tuple[float, ...]
    group_by: str | None
    groups: tuple[GroupValue, ...]
    where: tuple[predicates.Predicate, ...]
    privacy: Privacy | None
    out_of_range: OutOfRange
    parties: int
    threshold: int
    max_rows: int

    @property
    def group_keys(self) -> tuple[str, ...]:
        """How each cell is named in the result: ``all``, or each declared group."""
        if self.group_by is None:
            return ("all",)
        return tuple(group_key(g) for g in self.groups)

    def columns_used(self) -> frozenset[str]:
        """Every column the job reads."""
        used = set(self.columns) | {p.column for p in self.where}
        if self.group_by is not None:
            used.add(self.group_by)
        return frozenset(used)


def group_key(value: GroupValue) -> str:
    """The result key of a declared group value (JSON object keys are strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_params(
    params: Mapping[str, Any],
    *,
    parties: int,
    schemas: Sequence[DatasetInfo],
    max_cells: int = DEFAULT_MAX_CELLS,
) -> StatsParams:
    """Parse ``params`` for a job with ``parties`` inputs; check each schema.

    ``max_cells`` comes from the holder's policy."""
    extra = sorted(set(map(str, params)) - set(PARAMS))
    if extra:
        raise SpecError(
            f"params.{extra[0]}", f"unknown parameter (allowed: {', '.join(PARAMS)})"
        )
    if parties < MIN_PARTIES:
        raise SpecError(
            "inputs", f"secure_stats needs at least {MIN_PARTIES} inputs, got {parties}"
        )
    columns = _columns(params.get("columns"), schemas)
    stats = _stats(params.get("stats"))
    clip = _clip(params.get("clip"), columns)
    edges = _bins(params.get("bins"), stats, columns, clip)
    quantiles = _quantiles(params.get("quantiles"), stats)
    group_by, groups = _groups(params.get("group_by"), params.get("groups"), schemas)
    where = predicates.parse_where(params.get("where"), schemas)
    refuse_identifiers(schemas, where, group_by, edges)
    privacy = _privacy(params.get("dp"))
    check_cells(group_by, groups, edges, max_cells)
    max_rows = _int(
        params.get("max_rows", DEFAULT_MAX_ROWS), "params.max_rows", 1, MAX_ROWS_LIMIT
    )
    check_row_buckets(max_rows, schemas)
    return StatsParams(
        columns=columns,
        stats=stats,
        clip=clip,
        edges=edges,
        quantiles=quantiles,
        group_by=group_by,
        groups=groups,
        where=where,
        privacy=privacy,
        out_of_range=_out_of_range(params.get("out_of_range")),
        parties=parties,
        threshold=_threshold(params.get("threshold"), parties),
        max_rows=max_rows,
    )


def _columns(raw: Any, schemas: Sequence[DatasetInfo]) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        raise SpecError("params.columns", "expected a non-empty list of column names")
    if len(raw) > MAX_COLUMNS:
        raise SpecError("params.columns", f"at most {MAX_COLUMNS} columns")
    seen: list[str] = []
    for i, column in enumerate(raw):
        path = f"params.columns[{i}]"
        if not isinstance(column, str) or not column:
            raise SpecError(path, f"expected a column name, got {column!r}")
        if column in seen:
            raise SpecError(path, f"column {column!r} is listed twice")
        for schema in schemas:
            types = schema.column_types()
            if column not in types:
                raise SpecError(
                    path,
                    f"dataset '{schema.name}' has no column {column!r} "
                    f"(it has: {', '.join(types)})",
                )
            if types[column] not in NUMERIC_TYPES:
                raise SpecError(
                    path,
                    f"column {column!r} of dataset '{schema.name}' is "
                    f"{types[column]}; secure_stats needs numeric columns",
                )
        seen.append(column)
    return tuple(seen)


def _stats(raw: Any) -> frozenset[str]:
    if not isinstance(raw, list) or not raw:
        raise SpecError(
            "params.stats", f"expected a non-empty list of: {', '.join(STATS)}"
        )
    seen: set[str] = set()
    for i, stat in enumerate(raw):
        if stat not in STATS:
            raise SpecError(
                f"params.stats[{i}]",
                f"unknown statistic {stat!r} (known: {', '.join(STATS)})",
            )
        if stat in seen:
            raise SpecError(f"params.stats[{i}]", f"{stat!r} is listed twice")
        seen.add(stat)
    return frozenset(seen)


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(path, f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise SpecError(path, f"expected a finite number, got {value!r}")
    return float(value)


def _int(value: Any, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"expected an integer, got {value!r}")
    if not low <= value <= high:
        raise SpecError(path, f"must be in {low}..{high}, got {value}")
    return value


def _clip(raw: Any, columns: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    if not isinstance(raw, dict):
        raise SpecError(
            "params.clip",
            "expected {column: [lo, hi]}: the public bounds of every column",
        )
    for key in raw:
        if key not in columns:
            raise SpecError(f"params.clip.{key}", "not one of params.columns")
    clip: dict[str, tuple[float, float]] = {}
    for column in columns:
        path = f"params.clip.{column}"
        if column not in raw:
            raise SpecError(path, "missing: give the public bounds [lo, hi]")
        bounds = raw[column]
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise SpecError(path, f"expected [lo, hi], got {bounds!r}")
        lo, hi = (_number(b, f"{path}[{j}]") for j, b in enumerate(bounds))
        if not lo < hi:
            raise SpecError(path, f"lo must be below hi, got [{lo:g}, {hi:g}]")
        clip[column] = (lo, hi)
    return clip


def _bins(
    raw: Any,
    stats: frozenset[str],
    columns: tuple[str, ...],
    clip: Mapping[str, tuple[float, float]],
) -> dict[str, tuple[float, ...]]:
    if not stats & NEEDS_HISTOGRAMS:
        if raw is not None:
            raise SpecError(
                "params.bins", "given, but neither histogram nor quantiles is asked for"
            )
        return {}
    if raw is None:
        raise SpecError("params.bins", "histogram and quantiles need public bins")
    if isinstance(raw, int) and not isinstance(raw, bool):
        return {c: _equal_width(raw, clip[c], "params.bins") for c in columns}
    if not isinstance(raw, dict) or not raw:
        raise SpecError(
            "params.bins",
            "expected a bin count, or {column: bin count | [edge, edge, ...]}",
        )
    edges: dict[str, tuple[float, ...]] = {}
    for column, spec in raw.items():
        path = f"params.bins.{column}"
        if column not in columns:
            raise SpecError(path, "not one of params.columns")
        if isinstance(spec, int) and not isinstance(spec, bool):
            edges[column] = _equal_width(spec, clip[column], path)
        elif isinstance(spec, list):
            edges[column] = _explicit_edges(spec, clip[column], path)
        else:
            raise SpecError(
                path, f"expected a bin count or a list of edges, got {spec!r}"
            )
    return {c: edges[c] for c in columns if c in edges}


def _equal_width(
    count: int, bounds: tuple[float, float], path: str
) -> tuple[float, ...]:
    _int(count, path, 1, MAX_BINS)
    return tuple(float(e) for e in np.linspace(bounds[0], bounds[1], count + 1))


def _explicit_edges(
    raw: list[Any], bounds: tuple[float, float], path: str
) -> tuple[float, ...]:
    if not 2 <= len(raw) <= MAX_BINS + 1:
        raise SpecError(path, f"expected 2..{MAX_BINS + 1} edges, got {len(raw)}")
    edges = tuple(_number(e, f"{path}[{j}]") for j, e in enumerate(raw))
    for j in range(1, len(edges)):
        if not edges[j] > edges[j - 1]:
            raise SpecError(f"{path}[{j}]", "edges must increase strictly")
    lo, hi = bounds
    if edges[0] > lo or edges[-1] < hi:
        raise SpecError(
            path,
            f"edges [{edges[0]:g} .. {edges[-1]:g}] must cover the clip range "
            f"[{lo:g}, {hi:g}] so that every value falls in a bin",
        )
    return edges


def _quantiles(raw: Any, stats: frozenset[str]) -> tuple[float, ...]:
    if "quantiles" not in stats:
        if raw is not None:
            raise SpecError(
                "params.quantiles", "given, but 'quantiles' is not in stats"
            )
        return ()
    if not isinstance(raw, list) or not raw:
        raise SpecError(
            "params.quantiles", "expected a list of probabilities in (0, 1)"
        )
    out: list[float] = []
    for j, value in enumerate(raw):
        path = f"params.quantiles[{j}]"
        p = _number(value, path)
        if not 0 < p < 1:
            raise SpecError(path, f"must lie strictly between 0 and 1, got {p:g}")
        if p in out:
            raise SpecError(path, f"{p:g} is listed twice")
        out.append(p)
    return tuple(out)


def _groups(
    group_by: Any, raw: Any, schemas: Sequence[DatasetInfo]
) -> tuple[str | None, tuple[GroupValue, ...]]:
    if group_by is None:
        if raw is not None:
            raise SpecError("params.groups", "given without params.group_by")
        return None, ()
    if not isinstance(group_by, str) or not group_by:
        raise SpecError("params.group_by", f"expected a column name, got {group_by!r}")
    types = set()
    for schema in schemas:
        column_types = schema.column_types()
        if group_by not in column_types:
            raise SpecError(
                "params.group_by", f"dataset '{schema.name}' has no column {group_by!r}"
            )
        types.add(column_types[group_by])
    if not isinstance(raw, list) or not raw:
        raise SpecError(
            "params.groups",
            "declare the group values as a non-empty list: categories are public "
            "and never read from the data",
        )
    if len(raw) > MAX_GROUPS:
        raise SpecError("params.groups", f"at most {MAX_GROUPS} groups")
    keys: set[str] = set()
    values: set[str | float] = set()
    for j, value in enumerate(raw):
        path = f"params.groups[{j}]"
        _check_group_value(value, types, path)
        # 1, 1.0 and True select the same rows, and a row must fall in one cell only.
        same = value if isinstance(value, str) else float(value)
        if same in values or group_key(value) in keys:
            raise SpecError(path, f"group {value!r} is listed twice")
        values.add(same)
        keys.add(group_key(value))
    return group_by, tuple(raw)


def _check_group_value(value: Any, types: set[str], path: str) -> None:
    if not isinstance(value, str | int | float) or (
        isinstance(value, float) and not math.isfinite(value)
    ):
        raise SpecError(path, f"expected a string or a number, got {value!r}")
    for column_type in types:
        if column_type == "str":
            ok = isinstance(value, str)
        elif column_type == "bool":
            ok = isinstance(value, bool) or value in (0, 1)
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool | str)
        if not ok:
            raise SpecError(path, f"the group column is {column_type}; got {value!r}")


def _privacy(raw: Any) -> Privacy | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SpecError("params.dp", "expected {epsilon: ..., delta: ...}")
    extra = sorted(set(map(str, raw)) - {"epsilon", "delta"})
    if extra:
        raise SpecError(
            f"params.dp.{extra[0]}", "unknown field (allowed: epsilon, delta)"
        )
    epsilon = _number(raw.get("epsilon"), "params.dp.epsilon")
    if epsilon <= 0:
        raise SpecError("params.dp.epsilon", f"must be positive, got {epsilon:g}")
    delta = _number(raw.get("delta"), "params.dp.delta")
    if not 0 < delta < 1:
        raise SpecError(
            "params.dp.delta", f"must lie strictly between 0 and 1, got {delta:g}"
        )
    return Privacy(epsilon, delta)


def _out_of_range(raw: Any) -> OutOfRange:
    if raw is None or raw == "clip":
        return "clip"
    raise SpecError(
        "params.out_of_range",
        f"only 'clip' is offered, got {raw!r}: values are always clipped to "
        "params.clip (failing on a value outside would answer, without noise, "
        "whether one exists)",
    )


def _threshold(raw: Any, parties: int) -> int:
    if raw is None:
        return default_threshold(parties)
    return _int(raw, "params.threshold", parties // 2 + 1, parties)
