"""``verify`` and ``pir_lookup`` params: the batch size the holder meters, the
fields asked about, the check mode, and the table version the buyer has cached.

Everything here is in the signed spec, so the coordinator and the holder see it:
it holds no claimed value and no key, only counts and column names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from cleanroom.errors import SpecError
from protocols.oprf.parties import MAX_BATCH

Mode = Literal["per_field", "all_fields"]
_VERIFY_KEYS: Final = ("key", "records", "fields", "mode", "table")
_PIR_KEYS: Final = ("key", "lookups", "fields", "table")


@dataclass(frozen=True)
class VerifyParams:
    """``records`` claims, each checked on ``fields`` (per field or all at once)."""

    key: str
    """The dataset's id column (the catalog names it)."""
    records: int
    fields: tuple[str, ...]
    mode: Mode
    table: str
    """Hex digest of the table version the buyer has cached ('' for none)."""

    @property
    def evaluations(self) -> int:
        """OPRF evaluations the holder does: one per (record, field) or per record."""
        per = 1 if self.mode == "all_fields" else len(self.fields)
        return self.records * per


@dataclass(frozen=True)
class PirParams:
    """``lookups`` keys, each answered with the record's ``fields``."""

    key: str
    lookups: int
    fields: tuple[str, ...]
    table: str

    @property
    def evaluations(self) -> int:
        return self.lookups


def _check_keys(params: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    extra = sorted(set(params) - set(allowed))
    if extra:
        raise SpecError(
            f"params.{extra[0]}", f"unknown parameter (allowed: {', '.join(allowed)})"
        )


def _count(params: Mapping[str, Any], key: str) -> int:
    value = params.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"params.{key}", "must be an integer")
    if not 1 <= value <= MAX_BATCH:
        raise SpecError(f"params.{key}", f"must be 1..{MAX_BATCH}")
    return value


def _fields(params: Mapping[str, Any]) -> tuple[str, ...]:
    raw = params.get("fields")
    if not isinstance(raw, list) or not raw:
        raise SpecError("params.fields", "must be a non-empty list of column names")
    for i, name in enumerate(raw):
        if not isinstance(name, str) or not name.strip() or len(name) > 255:
            raise SpecError(f"params.fields[{i}]", "must be a column name")
    if len(set(raw)) != len(raw):
        raise SpecError("params.fields", "names a column twice")
    return tuple(raw)


def _key(params: Mapping[str, Any], fields: tuple[str, ...]) -> str:
    raw = params.get("key")
    if not isinstance(raw, str) or not raw.strip() or len(raw) > 255:
        raise SpecError("params.key", "must name the dataset's id column")
    if raw in fields:
        raise SpecError("params.fields", f"'{raw}' is the key, not a field")
    return raw


def _table(params: Mapping[str, Any]) -> str:
    raw = params.get("table", "")
    if raw == "":
        return ""
    if not isinstance(raw, str) or len(raw) != 64:
        raise SpecError("params.table", "must be a table version (64 hex digits)")
    try:
        bytes.fromhex(raw)
    except ValueError:
        raise SpecError("params.table", "must be 64 hex digits") from None
    return raw.lower()


def parse_verify(params: Mapping[str, Any]) -> VerifyParams:
    _check_keys(params, _VERIFY_KEYS)
    mode = params.get("mode", "per_field")
    if mode not in ("per_field", "all_fields"):
        raise SpecError("params.mode", "must be per_field or all_fields")
    fields = _fields(params)
    parsed = VerifyParams(
        _key(params, fields), _count(params, "records"), fields, mode, _table(params)
    )
    if parsed.evaluations > MAX_BATCH:
        raise SpecError(
            "params.records", f"records x fields must not exceed {MAX_BATCH}"
        )
    return parsed


def parse_pir(params: Mapping[str, Any]) -> PirParams:
    _check_keys(params, _PIR_KEYS)
    fields = _fields(params)
    return PirParams(
        _key(params, fields), _count(params, "lookups"), fields, _table(params)
    )
