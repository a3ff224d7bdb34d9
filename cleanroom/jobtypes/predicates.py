"""Simple row filters (``where`` clauses) shared by job types: checked against the
catalog schema before a job runs, applied to a node's rows inside the node."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd

from cleanroom.catalog import NUMERIC_TYPES, DatasetInfo
from cleanroom.errors import SpecError

OPERATORS: Final = ("==", "!=", "<", "<=", ">", ">=", "in", "not_in")


@dataclass(frozen=True)
class Predicate:
    column: str
    op: str
    value: Any


def _check_value(value: Any, col_type: str, path: str) -> None:
    if col_type in NUMERIC_TYPES:
        ok = isinstance(value, int | float) and not (
            isinstance(value, float) and not np.isfinite(value)
        )
        if col_type == "bool":
            ok = isinstance(value, bool | int)
        if not ok:
            raise SpecError(
                path, f"column is {col_type}; expected a number, got {value!r}"
            )
    elif not isinstance(value, str):
        raise SpecError(path, f"column is {col_type}; expected a string, got {value!r}")


def parse_where(
    raw: Any, schemas: Sequence[DatasetInfo], *, path: str = "params.where"
) -> tuple[Predicate, ...]:
    """Parse a list of ``{column, op, value}`` and check each against every schema."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError(path, "expected a list of {column, op, value}")
    predicates = []
    for i, item in enumerate(raw):
        here = f"{path}[{i}]"
        if not isinstance(item, dict) or set(item) - {"column", "op", "value"}:
            raise SpecError(here, "expected exactly the fields column, op, value")
        column, op = item.get("column"), item.get("op")
        if not isinstance(column, str) or not column:
            raise SpecError(f"{here}.column", f"expected a column name, got {column!r}")
        if op not in OPERATORS:
            raise SpecError(
                f"{here}.op", f"unknown operator {op!r} (known: {', '.join(OPERATORS)})"
            )
        if "value" not in item:
            raise SpecError(f"{here}.value", "missing")
        value = item["value"]
        for schema in schemas:
            types = schema.column_types()
            if column not in types:
                raise SpecError(
                    f"{here}.column",
                    f"dataset '{schema.name}' has no column {column!r} "
                    f"(it has: {', '.join(types)})",
                )
            if op in ("in", "not_in"):
                if not isinstance(value, list) or not value:
                    raise SpecError(f"{here}.value", f"'{op}' needs a non-empty list")
                for j, v in enumerate(value):
                    _check_value(v, types[column], f"{here}.value[{j}]")
            else:
                _check_value(value, types[column], f"{here}.value")
        predicates.append(Predicate(str(column), str(op), value))
    return tuple(predicates)


def _matches(p: Predicate, col: pd.Series) -> Any:
    if p.op == "in":
        return col.isin(p.value)
    if p.op == "not_in":
        return ~col.isin(p.value)
    compare = {
        "==": col.__eq__,
        "!=": col.__ne__,
        "<": col.__lt__,
        "<=": col.__le__,
        ">": col.__gt__,
        ">=": col.__ge__,
    }[p.op]
    return compare(p.value)


def apply(predicates: Sequence[Predicate], data: pd.DataFrame) -> np.ndarray:
    """A boolean mask of the rows matching every predicate."""
    mask = np.ones(len(data), dtype=bool)
    for p in predicates:
        mask &= np.asarray(_matches(p, data[p.column]), dtype=bool)
    return mask
