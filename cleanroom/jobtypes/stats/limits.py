"""Limits a ``secure_stats`` job must respect whatever the analyst asks: no filter,
group or bin on an identifier column, at most the holder's ``max_cells`` cells, and
``max_rows`` checked against public row buckets only, so no refusal is an oracle."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from cleanroom.catalog import DatasetInfo, row_bucket
from cleanroom.errors import SpecError
from cleanroom.jobtypes import predicates

MAX_ROWS_LIMIT: Final = 2**40
GroupValue = str | int | float | bool


def rows_bound(rows: int) -> int:
    """The exclusive upper bound of ``rows``'s decade bucket: 100, 1,000, 10,000...

    Below 1M it is exactly the upper bound of the catalog's row bucket; above, the
    catalog says only ">=1M" and this reveals the decade. A node decides ``max_rows``
    on this bound, never on its exact count, so a refusal is not an oracle."""
    bound = 100
    while rows >= bound:
        bound *= 10
    return bound


def bucket_bound(label: str) -> int | None:
    """The upper bound of a catalog row bucket; None for the open top bucket."""
    bound = 100
    while bound <= MAX_ROWS_LIMIT:
        if row_bucket(bound - 1) == label:
            return None if row_bucket(bound) == label else bound
        bound *= 10
    return None


def check_row_buckets(max_rows: int, schemas: Sequence[DatasetInfo]) -> None:
    for schema in schemas:
        bound = bucket_bound(schema.row_bucket)
        if bound is not None and max_rows < bound:
            raise SpecError(
                "params.max_rows",
                f"dataset '{schema.name}' has {schema.row_bucket} rows (catalog): "
                f"max_rows must be at least {bound}",
            )


def refuse_identifiers(
    schemas: Sequence[DatasetInfo],
    where: Sequence[predicates.Predicate],
    group_by: str | None,
    edges: Mapping[str, tuple[float, ...]],
) -> None:
    """Filters, groups and bins on an id column single out rows by construction."""
    ids = {s.id_column: s.name for s in schemas if s.id_column}
    if not ids:
        return
    why = "is the identifier column of dataset '{}': no filter, group or bin on it"
    for i, predicate in enumerate(where):
        if predicate.column in ids:
            raise SpecError(
                f"params.where[{i}].column",
                f"{predicate.column!r} " + why.format(ids[predicate.column]),
            )
    if group_by in ids:
        raise SpecError("params.group_by", f"{group_by!r} " + why.format(ids[group_by]))
    for column in edges:
        if column in ids:
            raise SpecError(
                f"params.bins.{column}", f"{column!r} " + why.format(ids[column])
            )


def check_cells(
    group_by: str | None,
    groups: Sequence[GroupValue],
    edges: Mapping[str, tuple[float, ...]],
    max_cells: int,
) -> None:
    cells_per_group = 1 + sum(len(e) - 1 for e in edges.values())
    cells = (len(groups) if group_by is not None else 1) * cells_per_group
    if cells > max_cells:
        raise SpecError(
            "params.bins" if edges else "params.groups",
            f"{cells} cells (each group, and each bin of each histogram in each "
            f"group, is a cell); this data holder allows at most {max_cells}",
        )
