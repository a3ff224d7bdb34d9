"""Dataset metadata as published to the catalog: schema, a coarse size, no rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

COLUMN_TYPES: Final = ("int", "float", "str", "bool")
NUMERIC_TYPES: Final = frozenset({"int", "float", "bool"})

_BUCKETS: Final = [
    (100, "<100"),
    (1_000, "100-1k"),
    (10_000, "1k-10k"),
    (100_000, "10k-100k"),
    (1_000_000, "100k-1M"),
]


def row_bucket(rows: int) -> str:
    """A coarse row-count bucket: the catalog never learns exact sizes."""
    for bound, label in _BUCKETS:
        if rows < bound:
            return label
    return ">=1M"


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type: str


@dataclass(frozen=True)
class DatasetInfo:
    """What a node publishes about one dataset."""

    name: str
    columns: tuple[ColumnInfo, ...]
    row_bucket: str
    id_column: str = ""
    description: str = ""

    def column_types(self) -> Mapping[str, str]:
        return {c.name: c.type for c in self.columns}

    def column_names(self) -> Sequence[str]:
        return [c.name for c in self.columns]


@dataclass(frozen=True)
class AssetInfo:
    """What a node publishes about an asset a job type offers (e.g. a model): its
    name, kind (the job type's word for it), description and a JSON document
    (schema, model card ...). Never the asset itself."""

    name: str
    kind: str
    description: str = ""
    document_json: str = "{}"
