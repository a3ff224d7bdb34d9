"""The cells of a ``secure_stats`` layout and the two sealed rounds' vectors: the
counts round carries every cell's count (a group's row count, and each bin's), the
values round carries the whole layout with every cell that did not pass zeroed."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from cleanroom.errors import ProtocolError
from cleanroom.jobtypes.stats.layout import Layout
from protocols.prg import MaskVector

SEED: Final = "secure_stats/seeds"
"""Leader node -> every other node (sealed): the nodes' and the values' seeds."""
ANALYST_SEED: Final = "secure_stats/analyst-seed"
"""Leader node -> the analyst (sealed): the values' seed only."""
POLICY: Final = "secure_stats/policy"
"""Node -> coordinator: ``{"min_group_size": k}`` (public)."""
COUNTS_SUM: Final = "secure_stats/counts-sum"
"""Coordinator -> node: the counts round's (still masked) sum and its survivors."""
PASSING: Final = "secure_stats/passing"
"""Node -> coordinator: the cells that pass its own minimum group size."""
VALUES_BEGIN: Final = "secure_stats/values-begin"
"""Coordinator -> node: the cells every node passed; the values round starts."""
COUNTS: Final = "counts"
VALUES: Final = "values"
MAX_MESSAGE: Final = 1 << 26


@dataclass(frozen=True)
class Cell:
    """One cell: a group (``bin`` None) or one bin of one column within a group."""

    group: int
    column: str | None
    bin: int | None
    slot: int
    """Its count's slot in the full layout vector."""
    segment: int
    """The layout segment that slot belongs to (its codec decodes it)."""


def cells(layout: Layout) -> list[Cell]:
    """Every cell, in the counts round's order."""
    out: list[Cell] = []
    for g in range(len(layout.params.group_keys)):
        base = g * layout.cell_length
        for k, (offset, segment) in enumerate(layout.slots()):
            if segment.kind == "count":
                out.append(Cell(g, None, None, base + offset, k))
            elif segment.kind == "histogram":
                column = segment.columns[0]
                out += [
                    Cell(g, column, b, base + offset + b, k)
                    for b in range(segment.size)
                ]
    return out


def counts_vector(layout: Layout, full: MaskVector) -> MaskVector:
    """The counts round's input: the count slots of a node's full vector."""
    return np.ascontiguousarray(full[[c.slot for c in cells(layout)]])


def decode_counts(layout: Layout, total: MaskVector, contributors: int) -> list[int]:
    """Every cell's pooled (noisy, if DP) count, from the opened counts sum."""
    found = cells(layout)
    if total.shape != (len(found),):
        raise ProtocolError("the counts sum has the wrong length")
    counts = []
    for i, cell in enumerate(found):
        segment = layout.segments[cell.segment]
        value = segment.decode(total[i : i + 1], contributors)[0]
        counts.append(round(float(value)))
    return counts


def passing(layout: Layout, counts: Sequence[int], min_group_size: int) -> list[int]:
    """The cells that pass: a group whose count reaches ``min_group_size``, and a
    bin that does within a group that passes."""
    found = cells(layout)
    groups_ok = {c.group for c, n in zip(found, counts, strict=True)
                 if c.bin is None and n >= min_group_size}  # fmt: skip
    return [
        i
        for i, (c, n) in enumerate(zip(found, counts, strict=True))
        if c.group in groups_ok and n >= min_group_size
    ]


def values_vector(
    layout: Layout, full: MaskVector, passed: Sequence[int]
) -> MaskVector:
    """The values round's input: the full vector, with every slot of a group that
    did not pass, and every bin that did not, set to zero."""
    found = cells(layout)
    keep = set(passed)
    groups_ok = {found[i].group for i in keep if found[i].bin is None}
    out = full.copy()
    length = layout.cell_length
    for g in range(len(layout.params.group_keys)):
        if g not in groups_ok:
            out[g * length : (g + 1) * length] = 0
    for i, cell in enumerate(found):
        if cell.bin is not None and i not in keep:
            out[cell.slot] = 0
    return out


def suppressed_groups(layout: Layout, passed: Sequence[int]) -> list[str]:
    found = cells(layout)
    ok = {found[i].group for i in passed if found[i].bin is None}
    keys = layout.params.group_keys
    return [keys[g] for g in range(len(keys)) if g not in ok]


def dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def load(payload: bytes, what: str) -> dict[str, Any]:
    if len(payload) > MAX_MESSAGE:
        raise ProtocolError(f"the {what} message is too large")
    try:
        found = json.loads(payload)
    except ValueError:
        raise ProtocolError(f"malformed {what} message") from None
    if not isinstance(found, dict):
        raise ProtocolError(f"malformed {what} message")
    return found


def ring_to_text(vector: MaskVector) -> str:
    return base64.b64encode(
        np.ascontiguousarray(vector, dtype="<u8").tobytes()
    ).decode()


def ring_from_text(text: Any, length: int) -> MaskVector:
    try:
        raw = base64.b64decode(str(text), validate=True)
    except ValueError:
        raise ProtocolError("malformed vector") from None
    return ring_from_bytes(raw, length)


def ring_from_bytes(raw: bytes, length: int) -> MaskVector:
    if len(raw) != 8 * length:
        raise ProtocolError("a vector of the wrong length")
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64)


def names(value: Any, parties: Sequence[str], what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"malformed {what}")
    found = tuple(sorted(set(value)))
    if len(found) != len(value) or not set(found) <= set(parties):
        raise ProtocolError(f"the {what} names parties outside the job")
    return found


def indices(value: Any, length: int) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < length
        for v in value
    ):
        raise ProtocolError("malformed cell list")
    found = tuple(sorted(set(value)))
    if len(found) != len(value):
        raise ProtocolError("a cell listed twice")
    return found
