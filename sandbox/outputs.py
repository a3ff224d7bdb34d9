"""Parse sandbox outputs (.json, .csv) into tables, round them, and compare cell values."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cleanroom.errors import SandboxError

RELEASABLE_SUFFIXES = (".json", ".csv")


@dataclass
class Table:
    """One tabular piece of an output file: ``source`` is e.g. ``stats.json:groups``."""

    source: str
    frame: pd.DataFrame
    keys: list[str] = field(default_factory=list)


def parse_output(name: str, data: bytes) -> tuple[list[Table], Any]:
    """The file's tables plus its parsed document (kept for re-serialising)."""
    if name.endswith(".csv"):
        try:
            frame = pd.read_csv(io.BytesIO(data), dtype_backend="numpy_nullable")
        except Exception as exc:
            raise SandboxError(f"{name}: not a readable CSV table ({exc})") from exc
        return [Table(name, frame, [str(c) for c in frame.columns])], frame
    if name.endswith(".json"):
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise SandboxError(f"{name}: not valid UTF-8 JSON ({exc})") from exc
        tables: list[Table] = []
        _collect_tables(name, document, tables)
        return tables, document
    raise SandboxError(f"{name}: only {', '.join(RELEASABLE_SUFFIXES)} files are released")


def _collect_tables(source: str, node: Any, out: list[Table]) -> None:
    """Flatten a JSON document: record lists become tables, scalar leaves a one-row one."""
    if isinstance(node, list):
        out.append(_list_table(source, node))
        for item in node:
            if isinstance(item, dict | list):
                for key, value in _nested(item):
                    _collect_tables(f"{source}.{key}", value, out)
        return
    if not isinstance(node, dict):
        out.append(Table(source, pd.DataFrame({"value": [node]})))
        return
    scalars: dict[str, Any] = {}
    keys: list[str] = []
    _flatten(node, "", scalars, keys, source, out)
    if scalars or keys:
        frame = pd.DataFrame([scalars]) if scalars else pd.DataFrame()
        out.append(Table(source, frame, keys))


def _flatten(
    node: dict[str, Any],
    prefix: str,
    scalars: dict[str, Any],
    keys: list[str],
    source: str,
    out: list[Table],
) -> None:
    for key, value in node.items():
        keys.append(str(key))
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            _flatten(value, f"{path}.", scalars, keys, source, out)
        elif isinstance(value, list):
            _collect_tables(f"{source}:{path}", value, out)
        else:
            scalars[path] = value


def _list_table(source: str, items: list[Any]) -> Table:
    if items and all(isinstance(item, dict) for item in items):
        rows = [{k: v for k, v in item.items() if not isinstance(v, dict | list)}
                for item in items]  # fmt: skip
        keys = sorted({str(k) for item in items for k in item})
        return Table(source, pd.DataFrame(rows), keys)
    if items and all(isinstance(item, list) for item in items):
        rows = [[v for v in item if not isinstance(v, dict | list)] for item in items]
        return Table(source, pd.DataFrame(rows))
    scalar = [item for item in items if not isinstance(item, dict | list)]
    return Table(source, pd.DataFrame({"value": scalar}))


def _nested(item: dict[str, Any] | list[Any]) -> list[tuple[str, Any]]:
    pairs = item.items() if isinstance(item, dict) else enumerate(item)
    return [(str(k), v) for k, v in pairs if isinstance(v, dict | list)]


def round_document(node: Any, decimals: int | None) -> Any:
    """The JSON document with floats rounded and non-finite numbers made null."""
    if isinstance(node, dict):
        return {k: round_document(v, decimals) for k, v in node.items()}
    if isinstance(node, list):
        return [round_document(v, decimals) for v in node]
    if isinstance(node, float):
        if not math.isfinite(node):
            return None
        return round(node, decimals) if decimals is not None else node
    return node


def round_frame(frame: pd.DataFrame, decimals: int | None) -> pd.DataFrame:
    """The table with float columns rounded (integer and text columns untouched)."""
    if decimals is None:
        return frame
    rounded = frame.copy()
    for column in rounded.columns:
        if pd.api.types.is_float_dtype(rounded[column].dtype):
            rounded[column] = rounded[column].round(decimals)
    return rounded


def serialise(name: str, document: Any, decimals: int | None) -> bytes:
    """The cleaned bytes that would be released for one output file."""
    if isinstance(document, pd.DataFrame):
        return round_frame(document, decimals).to_csv(index=False).encode()
    cleaned = round_document(document, decimals)
    return json.dumps(cleaned, ensure_ascii=False, allow_nan=False).encode()


def cell_token(value: Any) -> str | None:
    """A canonical form for comparing cells: numbers by value, text case-folded.

    ``1001``, ``1001.0`` and ``"1001"`` compare equal; booleans, blanks and
    missing values never match anything.
    """
    if value is None or value is pd.NA or isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | np.integer):
        return f"n:{int(value)}"
    if isinstance(value, float | np.floating):
        number = float(value)
        if not math.isfinite(number):
            return None
        return f"n:{int(number)}" if number.is_integer() else f"n:{number!r}"
    text = str(value).strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        return f"s:{text.casefold()}"
    return cell_token(number) if math.isfinite(number) else f"s:{text.casefold()}"


def column_tokens(series: pd.Series) -> list[str | None]:
    """``cell_token`` of every cell of a column (object dtype keeps Python scalars)."""
    return [cell_token(v) for v in series.astype(object).tolist()]


def numeric_token(token: str | None) -> bool:
    return token is not None and token.startswith("n:")
