"""SQL text for the ``Table`` queries, with bound parameters: filters, group cells
and aggregates compiled for the engine that holds the rows (DuckDB, PostgreSQL).

Identifiers come from the node's own catalog and are double-quoted; every value
an analyst chose (filter values, group values, clip bounds, bin edges) is a bound
parameter, never text. The semantics are ``tables.FrameTable``'s: see
``cleanroom.jobtypes.tables``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cleanroom.jobtypes.predicates import Predicate
from cleanroom.jobtypes.tables import CellQuery

Types = Mapping[str, str]
"""Column -> catalog type (int, float, str, bool)."""


@dataclass(frozen=True)
class Dialect:
    """How one engine spells what differs: placeholders, NaN, exact sums."""

    name: str
    placeholder: str
    """``{}`` is replaced by the parameter's name."""
    double: str
    nan_test: str
    """``{}`` is replaced by a DOUBLE expression; true when it is NaN."""
    exact_sum: str
    """An aggregate summing ``{}`` as exactly as the engine can."""


DUCKDB = Dialect("duckdb", "${}", "DOUBLE", "isnan({})", "fsum({})")
POSTGRES = Dialect(
    "postgresql",
    ":{}",
    "DOUBLE PRECISION",
    "({} = CAST('NaN' AS DOUBLE PRECISION))",
    "SUM({})",
)


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


@dataclass
class Compiler:
    """Accumulates bound parameters while it writes one statement."""

    dialect: Dialect
    types: Types
    params: dict[str, Any] = field(default_factory=dict)

    def bind(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return self.dialect.placeholder.format(name)

    def number(self, column: str) -> str:
        """The column as a DOUBLE (a bool as 0/1)."""
        col = quote(column)
        if self.types.get(column) == "bool":
            col = f"CAST({col} AS INTEGER)"
        return f"CAST({col} AS {self.dialect.double})"

    def missing(self, column: str) -> str:
        test = f"{quote(column)} IS NULL"
        if self.types.get(column) == "float":
            test += " OR " + self.dialect.nan_test.format(self.number(column))
        return f"({test})"

    def _operand(self, column: str) -> str:
        if self.types.get(column) == "bool":
            return f"CAST({quote(column)} AS INTEGER)"
        return quote(column)

    def _value(self, column: str, value: Any) -> Any:
        if self.types.get(column) == "bool" or isinstance(value, bool):
            return int(value)
        return value

    def _holds(self, p: Predicate) -> str:
        """True exactly where ``==``, ``in`` or an ordering holds (never on a
        missing value)."""
        col = self._operand(p.column)
        if p.op in ("in", "not_in"):
            values = ", ".join(self.bind(self._value(p.column, v)) for v in p.value)
            test = f"{col} IN ({values})"
        else:
            op = {"==": "=", "!=": "="}.get(p.op, p.op)
            test = f"{col} {op} {self.bind(self._value(p.column, p.value))}"
        return f"(NOT {self.missing(p.column)} AND {test})"

    def predicate(self, p: Predicate) -> str:
        holds = f"COALESCE({self._holds(p)}, FALSE)"
        return f"(NOT {holds})" if p.op in ("!=", "not_in") else holds

    def where(self, where: Sequence[Predicate]) -> str:
        return " AND ".join([self.predicate(p) for p in where] or ["TRUE"])


def count_sql(
    dialect: Dialect, types: Types, source: str, where: Sequence[Predicate]
) -> tuple[str, dict[str, Any]]:
    c = Compiler(dialect, types)
    return f"SELECT COUNT(*) FROM {source} AS src WHERE {c.where(where)}", c.params


def cells_sql(
    dialect: Dialect, types: Types, source: str, query: CellQuery
) -> tuple[str, dict[str, Any], list[str]]:
    """One grouped statement: a row per cell index (NULL: kept but in no group),
    with the count, the out-of-range flags, the sums, products and bin counts.
    Returns the SQL, its parameters and the names of its aggregate columns."""
    c = Compiler(dialect, types)
    index = {col: j for j, col in enumerate(query.columns)}
    inner: list[str] = []
    if query.group_by is None:
        inner.append("0 AS cell")
    else:
        arms = " ".join(
            f"WHEN {c._operand(query.group_by)} = "
            f"{c.bind(c._value(query.group_by, g))} THEN {k}"
            for k, g in enumerate(query.groups)
        )
        inner.append(f"CASE {arms} ELSE NULL END AS cell" if arms else "NULL AS cell")
    for col, j in index.items():
        lo, hi = query.clip[col]
        raw = c.number(col)
        if query.need_outside:
            inner.append(
                f"CASE WHEN {raw} < {c.bind(float(lo))} OR {raw} > "
                f"{c.bind(float(hi))} THEN 1 ELSE 0 END AS o{j}"
            )
        inner.append(
            f"LEAST(GREATEST({raw}, {c.bind(float(lo))}), {c.bind(float(hi))}) AS v{j}"
        )
    keep = [c.where(query.where)] + [f"NOT {c.missing(col)}" for col in query.columns]
    if query.group_by is not None:
        keep.append(f"NOT {c.missing(query.group_by)}")
        if not query.need_outside:
            # Rows in no group matter only to the out-of-range flags.
            values = ", ".join(
                c.bind(c._value(query.group_by, g)) for g in query.groups
            )
            in_a_group = f"{c._operand(query.group_by)} IN ({values})"
            keep.append(in_a_group if values else "FALSE")
    outer = ["COUNT(*) AS n"]
    names = ["n"]
    if query.need_outside:
        for j in index.values():
            outer.append(f"MAX(o{j}) AS o{j}")
            names.append(f"o{j}")

    def centred(col: str) -> str:
        return f"(v{index[col]} - {c.bind(float(query.centre(col)))})"

    for k, col in enumerate(query.sums):
        outer.append(dialect.exact_sum.format(centred(col)) + f" AS s{k}")
        names.append(f"s{k}")
    for k, (a, b) in enumerate(query.products):
        outer.append(
            dialect.exact_sum.format(f"{centred(a)} * {centred(b)}") + f" AS q{k}"
        )
        names.append(f"q{k}")
    for k, (col, edges) in enumerate(query.histograms.items()):
        v = f"v{index[col]}"
        for i in range(len(edges) - 1):
            upper = "<=" if i == len(edges) - 2 else "<"
            outer.append(
                f"SUM(CASE WHEN {v} >= {c.bind(float(edges[i]))} AND {v} {upper} "
                f"{c.bind(float(edges[i + 1]))} THEN 1 ELSE 0 END) AS h{k}_{i}"
            )
            names.append(f"h{k}_{i}")
    sql = (
        f"SELECT cell, {', '.join(outer)} FROM (SELECT {', '.join(inner)} "
        f"FROM {source} AS src WHERE {' AND '.join(keep)}) AS t GROUP BY cell"
    )
    return sql, c.params, names
