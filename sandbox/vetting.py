"""Vet a sandboxed job's output against the raw dataset before anything is released.

Rules, each checked on the output as written and as it would be released
(rounded), and each one holding the whole output when it fires:

* only ``.json`` and ``.csv`` files, within per-file and total size limits;
* values in a count column below ``min_cell_count``;
* a cell equal to a raw value of a sensitive column;
* a column or key that carries identifier values (any text identifier; for
  numeric identifiers, a column named like the identifier or one made mostly
  of identifier values, so that small counts do not trip it);
* a row reproducing a dataset row: at least ``raw_row_columns`` cells (count
  columns aside) equal to that row's cells, one of them a value fewer than
  ``min_cell_count`` dataset rows share (so a group-by key like
  ``(F, smoker, north)`` is not a "row").

An information budget, because outputs that pass every rule above can still carry
rows in their numbers (``age * 1e7 + diagnosis * 1e6 + income`` as "weights"):

* at most ``max_numeric_values`` numeric values over all files (the service sets
  rows / min_group_size of the dataset unless the holder's policy says
  otherwise): a release of more numbers than that could hold a value per person;
* whole numbers of magnitude 2^24 or more (outside count columns): a float's
  53-bit mantissa holds several small fields at once;
* values of more than 12 significant digits as released (after rounding).

These are a help to the holder's review, not a proof: code can spread a row over
fewer, smaller numbers, and only DP bounds what numbers reveal. Reasons name files,
columns and rules but never the matching raw values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from cleanroom.errors import ConfigError, SandboxError
from sandbox.outputs import (
    RELEASABLE_SUFFIXES,
    ParsedOutput,
    cell_token,
    cleaned,
    is_numeric_token,
    parse_output,
    tokens,
)

MiB = 1024 * 1024
_MAX_REASONS_PER_RULE = 5


@dataclass(frozen=True)
class VettingRules:
    """A holder's release policy for sandbox output (column names as in the dataset)."""

    min_cell_count: int = 10
    rounding: int | None = 4
    sensitive_columns: list[str] = field(default_factory=list)
    identifier_columns: list[str] = field(default_factory=list)
    count_columns: list[str] = field(default_factory=lambda: ["count", "n"])
    max_file_bytes: int = 10 * MiB
    max_total_bytes: int = 50 * MiB
    max_files: int = 100
    raw_row_columns: int = 3
    max_numeric_values: int | None = None
    """The information budget: numeric values all outputs may hold (None: any)."""

    def __post_init__(self) -> None:
        if self.min_cell_count < 1 or self.raw_row_columns < 2:
            raise ConfigError("min_cell_count must be >= 1 and raw_row_columns >= 2")
        if self.rounding is not None and not 0 <= self.rounding <= 15:
            raise ConfigError("rounding must be between 0 and 15 decimals, or None")
        if min(self.max_file_bytes, self.max_total_bytes, self.max_files) <= 0:
            raise ConfigError("output size limits must be positive")


@dataclass(frozen=True)
class VettingResult:
    """``pass`` with the cleaned bytes to release, or ``held`` with reasons only."""

    status: Literal["pass", "held"]
    reasons: list[str]
    cleaned_outputs: dict[str, bytes]

    def release(self) -> dict[str, bytes]:
        """The cleaned outputs; raises SandboxError if the output is held."""
        if self.status != "pass":
            raise SandboxError("output held for review: " + "; ".join(self.reasons))
        return dict(self.cleaned_outputs)


def vet_outputs(
    outputs: Path | Mapping[str, bytes], dataset: pd.DataFrame, rules: VettingRules
) -> VettingResult:
    """Check a job's outputs (a directory or name → bytes) against the raw dataset."""
    reasons: list[str] = []
    files = _load(outputs, rules, reasons)
    if reasons:
        return VettingResult("held", reasons, {})
    raw = _RawData(dataset, rules)
    released: dict[str, bytes] = {}
    numbers = 0
    for name, data in sorted(files.items()):
        try:
            parsed = parse_output(name, data)
        except SandboxError as exc:
            reasons.append(str(exc))
            continue
        rounded, released[name] = cleaned(parsed, rules.rounding)
        for view in (parsed, rounded):
            for reason in raw.check(view):
                if reason not in reasons:
                    reasons.append(reason)
        numbers += _count_numbers(rounded)
        reasons += _dense_numbers(rounded, rules)
    budget = rules.max_numeric_values
    if budget is not None and numbers > budget:
        reasons.append(
            f"the outputs hold {numbers} numeric values; the information budget is "
            f"{budget} (the dataset's rows / minimum group size, unless the holder "
            "set sandbox.max_released_values)"
        )
    if reasons:
        return VettingResult("held", reasons, {})
    return VettingResult("pass", [], released)


PACKED_MAGNITUDE = 2**24
"""Whole numbers from here up could pack several small fields into one float."""
MAX_SIGNIFICANT_DIGITS = 12


def _numbers(values: list[object]) -> list[float]:
    return [
        float(v)
        for v in values
        if isinstance(v, int | float | np.integer | np.floating)
        and not isinstance(v, bool | np.bool_)
        and math.isfinite(float(v))
    ]


def _count_numbers(out: ParsedOutput) -> int:
    return sum(len(_numbers(values)) for values in out.columns.values())


def _significant_digits(value: float) -> int:
    digits = repr(abs(value)).lower().split("e")[0].replace(".", "").lstrip("0")
    return len(digits.rstrip("0")) if "." in repr(value) else len(digits)


def _dense_numbers(out: ParsedOutput, rules: VettingRules) -> list[str]:
    """Columns whose numbers look like packed fields (see the module docstring)."""
    counts = {c.casefold() for c in rules.count_columns}
    found = []
    for column, values in out.columns.items():
        numbers = _numbers(values)
        if column.rsplit(".", 1)[-1].casefold() not in counts and any(
            v == int(v) and abs(v) >= PACKED_MAGNITUDE for v in numbers
        ):
            found.append(
                f"{out.name}: column {column!r} holds whole numbers of 2^24 or more "
                "(several fields may be packed in one value)"
            )
        if any(_significant_digits(v) > MAX_SIGNIFICANT_DIGITS for v in numbers):
            found.append(
                f"{out.name}: column {column!r} holds values of more than "
                f"{MAX_SIGNIFICANT_DIGITS} significant digits"
            )
    return found[:_MAX_REASONS_PER_RULE]


def _load(
    outputs: Path | Mapping[str, bytes], rules: VettingRules, reasons: list[str]
) -> dict[str, bytes]:
    if isinstance(outputs, Path):
        files: dict[str, bytes] = {}
        for entry in sorted(outputs.rglob("*")):
            rel = entry.relative_to(outputs).as_posix()
            if entry.is_symlink() or not (entry.is_file() or entry.is_dir()):
                reasons.append(f"{rel}: not a plain file")
            elif entry.is_file():
                if entry.stat().st_size > rules.max_file_bytes:
                    reasons.append(f"{rel}: larger than {rules.max_file_bytes} bytes")
                else:
                    files[rel] = entry.read_bytes()
    else:
        files = dict(outputs)
    if not files and not reasons:
        reasons.append("the job wrote no output")
    if len(files) > rules.max_files:
        reasons.append(f"more than {rules.max_files} output files")
    for name, data in sorted(files.items()):
        if not name.lower().endswith(RELEASABLE_SUFFIXES):
            reasons.append(f"{name}: only .json and .csv outputs are released")
        elif len(data) > rules.max_file_bytes:
            reasons.append(f"{name}: larger than {rules.max_file_bytes} bytes")
    if sum(len(data) for data in files.values()) > rules.max_total_bytes:
        reasons.append(f"outputs total more than {rules.max_total_bytes} bytes")
    return files


class _RawData:
    """The dataset, tokenised once, in the shapes the rules need."""

    def __init__(self, dataset: pd.DataFrame, rules: VettingRules) -> None:
        self._rules = rules
        missing = [
            c
            for c in [*rules.sensitive_columns, *rules.identifier_columns]
            if c not in dataset.columns
        ]
        if missing:
            raise ConfigError(
                f"vetting rules name columns the dataset lacks: {missing}"
            )
        self._count_names = {c.casefold() for c in rules.count_columns}
        as_objects = dataset.astype(object)
        self._matrix = [
            [cell_token(v) for v in as_objects[c].tolist()] for c in dataset.columns
        ]
        columns = [str(c) for c in dataset.columns]
        self._sensitive = {
            c: self._column_set(columns.index(c)) for c in rules.sensitive_columns
        }
        self._identifiers = {
            c: self._column_set(columns.index(c)) for c in rules.identifier_columns
        }
        # token -> dataset rows in which it is a rare value of some column.
        self._rare: dict[str, set[int]] = {}
        for column in self._matrix:
            frequency = pd.Series(column).value_counts(dropna=True)
            rare = set(frequency[frequency < rules.min_cell_count].index)
            for row, token in enumerate(column):
                if token is not None and token in rare:
                    self._rare.setdefault(token, set()).add(row)

    def _column_set(self, index: int) -> set[str]:
        return {t for t in self._matrix[index] if t is not None}

    def check(self, out: ParsedOutput) -> list[str]:
        return [
            *self._counts(out),
            *self._sensitive_values(out),
            *self._identifier_values(out),
            *self._raw_rows(out),
        ]

    def _is_count(self, column: str) -> bool:
        return column.rsplit(".", 1)[-1].casefold() in self._count_names

    def _counts(self, out: ParsedOutput) -> list[str]:
        found = []
        for column, values in out.columns.items():
            small = [
                t
                for t in tokens(values)
                if self._is_count(column)
                and is_numeric_token(t)
                and float(t[2:]) < self._rules.min_cell_count
            ]
            if small:
                found.append(
                    f"{out.name}: count column {column!r} has {len(small)} value(s) "
                    f"below the minimum cell count {self._rules.min_cell_count}"
                )
        return found[:_MAX_REASONS_PER_RULE]

    def _sensitive_values(self, out: ParsedOutput) -> list[str]:
        found = []
        for column, values in out.columns.items():
            if self._is_count(column):
                continue
            present = set(tokens(values))
            for name, raw in self._sensitive.items():
                if present & raw:
                    found.append(
                        f"{out.name}: column {column!r} contains raw values of "
                        f"sensitive column {name!r}"
                    )
        return found[:_MAX_REASONS_PER_RULE]

    def _identifier_values(self, out: ParsedOutput) -> list[str]:
        found = []
        labelled = [(f"column {c!r}", c, v) for c, v in out.columns.items()]
        labelled.append(("its keys", "", list(out.keys)))
        for label, column, values in labelled:
            present = set(tokens(values))
            for name, raw in self._identifiers.items():
                hits = present & raw
                text_hits = [t for t in hits if not is_numeric_token(t)]
                named_like = column.rsplit(".", 1)[-1].casefold() == name.casefold()
                mostly = len(hits) >= 3 and 2 * len(hits) >= len(present)
                if text_hits or (hits and named_like) or mostly:
                    found.append(
                        f"{out.name}: {label} contains values of identifier "
                        f"column {name!r}"
                    )
        return found[:_MAX_REASONS_PER_RULE]

    def _raw_rows(self, out: ParsedOutput) -> list[str]:
        need = self._rules.raw_row_columns
        found = []
        for number, row in enumerate(out.rows, start=1):
            # Counts are judged by the count rule; as row cells they would
            # collide with small raw values (an age of 23, a count of 23).
            present = set(tokens([v for c, v in row if not self._is_count(c)]))
            if len(present) < need:
                continue
            candidates: set[int] = set()
            for token in present:
                candidates |= self._rare.get(token, set())
            for candidate in candidates:
                matches = sum(
                    1 for column in self._matrix if column[candidate] in present
                )
                if matches >= need:
                    found.append(
                        f"{out.name}: row {number} reproduces a dataset row "
                        f"({matches} matching columns)"
                    )
                    break
            if len(found) >= _MAX_REASONS_PER_RULE:
                break
        return found
