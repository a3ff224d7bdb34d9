"""Read sandbox outputs (.json, .csv) as columns and rows; round and compare cells."""

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
_MAX_DEPTH = 64


@dataclass
class ParsedOutput:
    """One output file seen as data: every scalar by column path, every row, every key.

    JSON is flattened so nothing hides in nesting: a column is a key path with
    list indices dropped (``groups.count``); a row is the scalar leaves of one
    object (nested objects included) or one list of scalars.
    """

    name: str
    document: Any
    columns: dict[str, list[Any]] = field(default_factory=dict)
    rows: list[list[tuple[str, Any]]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)


def parse_output(name: str, data: bytes) -> ParsedOutput:
    """Parse one output file; raises SandboxError if it is not readable JSON or CSV."""
    if name.endswith(".csv"):
        try:
            frame = pd.read_csv(io.BytesIO(data))
        except Exception as exc:
            raise SandboxError(f"{name}: not a readable CSV table ({exc})") from exc
        return frame_output(name, frame)
    if name.endswith(".json"):
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise SandboxError(f"{name}: not valid UTF-8 JSON ({exc})") from exc
        return document_output(name, document)
    raise SandboxError(
        f"{name}: only {', '.join(RELEASABLE_SUFFIXES)} files are released"
    )


def frame_output(name: str, frame: pd.DataFrame) -> ParsedOutput:
    parsed = ParsedOutput(name, frame, keys=[str(c) for c in frame.columns])
    as_objects = frame.astype(object)
    for column in frame.columns:
        parsed.columns[str(column)] = as_objects[column].tolist()
    names = [str(c) for c in frame.columns]
    parsed.rows = [
        list(zip(names, row, strict=True)) for row in as_objects.values.tolist()
    ]
    return parsed


def document_output(name: str, document: Any) -> ParsedOutput:
    parsed = ParsedOutput(name, document)
    _walk(document, "", parsed, 0)
    return parsed


def _walk(node: Any, path: str, out: ParsedOutput, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise SandboxError(f"{out.name}: nested deeper than {_MAX_DEPTH} levels")
    if isinstance(node, dict):
        out.rows.append(_object_leaves(node, path))
        for key, value in node.items():
            out.keys.append(str(key))
            child = f"{path}.{key}" if path else str(key)
            _walk(value, child, out, depth + 1)
    elif isinstance(node, list):
        scalars = [(path, v) for v in node if not isinstance(v, dict | list)]
        if scalars:
            out.rows.append(scalars)
        for value in node:
            _walk(value, path, out, depth + 1)
    else:
        out.columns.setdefault(path or "value", []).append(node)


def _object_leaves(node: dict[str, Any], path: str) -> list[tuple[str, Any]]:
    leaves: list[tuple[str, Any]] = []
    for key, value in node.items():
        child = f"{path}.{key}" if path else str(key)
        if isinstance(value, dict):
            leaves.extend(_object_leaves(value, child))
        elif not isinstance(value, list):
            leaves.append((child, value))
    return leaves


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


def cleaned(parsed: ParsedOutput, decimals: int | None) -> tuple[ParsedOutput, bytes]:
    """The rounded output, parsed, and the bytes that would be released."""
    if isinstance(parsed.document, pd.DataFrame):
        frame = round_frame(parsed.document, decimals)
        return frame_output(parsed.name, frame), frame.to_csv(index=False).encode()
    document = round_document(parsed.document, decimals)
    data = json.dumps(document, ensure_ascii=False, allow_nan=False, indent=1).encode()
    return document_output(parsed.name, document), data


def cell_token(value: Any) -> str | None:
    """A canonical form for comparing cells: numbers by value, text case-folded.

    ``1001``, ``1001.0`` and ``" 1001"`` compare equal; booleans, blanks and
    missing values never match anything.
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bool | np.bool_):
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


def tokens(values: list[Any]) -> list[str]:
    """The non-empty ``cell_token`` of each value."""
    return [t for t in (cell_token(v) for v in values) if t is not None]


def is_numeric_token(token: str) -> bool:
    return token.startswith("n:")
