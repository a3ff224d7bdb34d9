"""``he_sum`` params, parsed once per spec, and the plaintext layout they imply.

    columns: [age, income]      # numeric columns to sum (complete cases only)
    group_by: sex               # optional column ...
    groups: [F, M]              # ... with its public, declared categories
    scale_bits: 16              # fixed-point fraction bits of every sum (0..32)
    key_bits: 3072              # the analyst's Paillier modulus (>= 3072)
    allow_legacy_2048: false    # true: 2048-bit keys (about 112-bit security)
    min_inputs: 3               # fewest inputs to aggregate (default: all)
    clip: {age: [0, 120]}       # public bounds: values are clipped to them
    dp: {epsilon: 1.0, delta: 1.0e-6}   # optional; needs clip for every column

With ``dp`` each node adds its share of discrete Gaussian noise
(``protocols.dp``) to every count and sum of every cell, suppressed or not,
before encryption, calibrated so that the sum of any ``min_inputs`` shares is
(epsilon, delta)-DP for adding or removing one record (which moves one cell's
count by 1 and each of its sums by at most max(|lo|, |hi|)).

One encrypted vector per node, integers in slots of a packed plaintext::

    [tag, contributors, (suppressed, count, sum_1 .. sum_k) per cell]

``tag`` is a 62-bit random number the node also seals to the analyst, so that a
relay that drops, repeats or swaps an input is caught; ``contributors`` is 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cleanroom.errors import ConfigError, SpecError
from cleanroom.jobspec import JobSpec
from protocols import dp
from protocols.paillier import DEFAULT_BITS, LEGACY_BITS, PackingLayout
from protocols.paillier.keys import MAX_BITS, check_key_bits

VALUE_BITS: Final = 64
"""Every slot value fits in a signed 64-bit integer before the sum."""
TAG_BITS: Final = 62
DEFAULT_SCALE_BITS: Final = 16
MAX_SCALE_BITS: Final = 32
MAX_COLUMNS: Final = 64
MAX_GROUPS: Final = 256
HEADER_SLOTS: Final = 2
_KEYS: Final = (
    "columns",
    "group_by",
    "groups",
    "scale_bits",
    "key_bits",
    "allow_legacy_2048",
    "min_inputs",
    "clip",
    "dp",
)

GroupValue = str | int | bool


@dataclass(frozen=True)
class HeSumParams:
    columns: tuple[str, ...]
    group_by: str | None
    groups: tuple[GroupValue, ...]
    scale_bits: int
    key_bits: int
    allow_legacy_2048: bool
    min_inputs: int
    inputs: int
    clip: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    privacy: dp.DistributedGaussian | None = None

    def sensitivities(self) -> list[int]:
        """Integer sensitivity of a cell's count and of each of its sums."""
        scale = 1 << self.scale_bits
        return [1] + [
            max(1, math.ceil(max(abs(lo), abs(hi)) * scale))
            for lo, hi in (self.clip[c] for c in self.columns)
        ]

    @property
    def cells(self) -> int:
        return max(1, len(self.groups))

    @property
    def per_cell(self) -> int:
        return 2 + len(self.columns)

    @property
    def length(self) -> int:
        """Values in every node's vector."""
        return HEADER_SLOTS + self.cells * self.per_cell

    def layout(self, *, scaled: bool = False) -> PackingLayout:
        """Slots sized for one addition per input (each node sends one vector);
        ``scaled``: the same slots at the sums' fixed-point scale, to encode them."""
        scale = self.scale_bits if scaled else 0
        return PackingLayout(self.key_bits, VALUE_BITS, self.inputs, scale)

    def columns_used(self) -> frozenset[str]:
        used = set(self.columns)
        if self.group_by is not None:
            used.add(self.group_by)
        return frozenset(used)


def _int(value: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SpecError(path, f"expected an integer in {lo}..{hi}, got {value!r}")
    return value


def _names(value: Any, path: str, limit: int) -> tuple[str, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= limit:
        raise SpecError(path, f"expected a list of 1..{limit} column names")
    for i, name in enumerate(value):
        if not isinstance(name, str) or not name:
            raise SpecError(f"{path}[{i}]", "expected a column name")
    if len(set(value)) != len(value):
        raise SpecError(path, "column names must be unique")
    return tuple(value)


def parse_params(spec: JobSpec) -> HeSumParams:
    raw: Mapping[str, Any] = spec.params
    extra = sorted(set(raw) - set(_KEYS))
    if extra:
        raise SpecError(
            f"params.{extra[0]}", f"unknown parameter (allowed: {', '.join(_KEYS)})"
        )
    if "columns" not in raw:
        raise SpecError("params.columns", "required: the columns to sum")
    columns = _names(raw["columns"], "params.columns", MAX_COLUMNS)
    group_by = raw.get("group_by")
    groups: Sequence[GroupValue] = ()
    if group_by is not None:
        if not isinstance(group_by, str) or not group_by:
            raise SpecError("params.group_by", "expected a column name")
        if group_by in columns:
            raise SpecError("params.group_by", "is also a summed column")
        found = raw.get("groups")
        if not isinstance(found, list) or not 1 <= len(found) <= MAX_GROUPS:
            raise SpecError(
                "params.groups", f"group_by needs 1..{MAX_GROUPS} declared groups"
            )
        for i, g in enumerate(found):
            if not isinstance(g, str | int | bool) or isinstance(g, float):
                raise SpecError(f"params.groups[{i}]", "expected a string or integer")
        if len({str(g) for g in found}) != len(found):
            raise SpecError("params.groups", "groups must be unique")
        groups = tuple(found)
    elif "groups" in raw:
        raise SpecError("params.groups", "groups need a group_by column")
    legacy = raw.get("allow_legacy_2048", False)
    if not isinstance(legacy, bool):
        raise SpecError("params.allow_legacy_2048", "expected true or false")
    bits = _int(raw.get("key_bits", DEFAULT_BITS), "params.key_bits", 0, MAX_BITS)
    try:
        check_key_bits(bits, allow_legacy_2048=legacy)
    except ConfigError as exc:
        raise SpecError("params.key_bits", str(exc)) from None
    if bits % 2 or bits < LEGACY_BITS:
        raise SpecError("params.key_bits", "must be even")
    inputs = len(spec.inputs)
    clip = _clip(raw.get("clip"), columns)
    min_inputs = (
        _int(raw.get("min_inputs", inputs), "params.min_inputs", 2, inputs)
        if inputs >= 2
        else inputs
    )
    params = HeSumParams(
        columns=columns,
        group_by=group_by,
        groups=tuple(groups),
        scale_bits=_int(
            raw.get("scale_bits", DEFAULT_SCALE_BITS),
            "params.scale_bits",
            0,
            MAX_SCALE_BITS,
        ),
        key_bits=bits,
        allow_legacy_2048=legacy,
        min_inputs=min_inputs,
        inputs=inputs,
        clip=clip,
        privacy=_privacy(raw.get("dp"), clip, columns, max(1, min_inputs)),
    )
    layout = params.layout()
    if params.length > 16 * layout.slots:
        raise SpecError("params", "too many groups x columns for one job")
    return params


def _clip(value: Any, columns: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError("params.clip", "expected {column: [low, high]}")
    found: dict[str, tuple[float, float]] = {}
    for column, bounds in value.items():
        path = f"params.clip.{column}"
        if column not in columns:
            raise SpecError(path, "is not one of params.columns")
        if (
            not isinstance(bounds, list)
            or len(bounds) != 2
            or not all(
                isinstance(b, int | float) and not isinstance(b, bool) for b in bounds
            )
            or not all(math.isfinite(b) for b in bounds)
            or not bounds[0] < bounds[1]
        ):
            raise SpecError(path, "expected [low, high] with low < high")
        found[column] = (float(bounds[0]), float(bounds[1]))
    return found


def _privacy(
    value: Any,
    clip: Mapping[str, tuple[float, float]],
    columns: tuple[str, ...],
    parties: int,
) -> dp.DistributedGaussian | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"epsilon", "delta"}:
        raise SpecError("params.dp", "expected {epsilon: e, delta: d}")
    missing = [c for c in columns if c not in clip]
    if missing:
        raise SpecError(
            f"params.clip.{missing[0]}", "dp needs public bounds for every column"
        )
    epsilon, delta = value.get("epsilon"), value.get("delta", 1e-6)
    for name, number in (("epsilon", epsilon), ("delta", delta)):
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise SpecError(f"params.dp.{name}", "expected a number")
    try:
        return dp.calibrate(
            float(epsilon),  # type: ignore[arg-type]
            float(delta),
            dimensions=1 + len(columns),
            parties=parties,
        )
    except ConfigError as exc:
        raise SpecError("params.dp", str(exc)) from None
