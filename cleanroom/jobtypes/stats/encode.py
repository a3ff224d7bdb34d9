"""A node's ``secure_stats`` contribution: its rows summarised per cell, fixed-point
encoded, and (with DP) its share of the noise added — all before any masking.

Row rules, applied in this order and the same on every node:

1. ``where`` selects rows (``predicates``).
2. Complete cases only: a row with a missing (NaN/empty) value in any of
   ``columns`` or in ``group_by`` is left out of every cell.
3. Out-of-range values (beyond ``clip``, infinities included) are saturated to the
   bound, always: no job fails on a value it reads.
4. A row whose ``group_by`` value is not a declared group is in no cell.

``max_rows`` must cover the dataset's row bucket (``limits.rows_bound``: 100, 1k,
10k, ...), or the node refuses, naming the bucket, never the exact count: an exact
check would let an analyst binary-search the row count through refusals.

``cell_partitions`` gives the node the local row set of every cell (groups, and
bins per group), for its differencing record (``protocols.differencing``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from cleanroom.catalog import row_bucket
from cleanroom.errors import ProtocolError
from cleanroom.jobtypes import predicates
from cleanroom.jobtypes.stats.layout import NOISE_TAIL_SIGMAS, Layout
from cleanroom.jobtypes.stats.limits import rows_bound
from protocols.party import RandomSource
from protocols.prg import MaskVector


def contribution(layout: Layout, frame: pd.DataFrame) -> npt.NDArray[np.int64]:
    """The node's exact encoded vector (signed integers), without noise.

    This is the plaintext that never leaves the node.
    """
    params = layout.params
    check_rows(len(frame), params.max_rows)
    values, cells = _rows(layout, frame)
    centred = values - np.array([layout.centre(c) for c in params.columns])
    index = {c: i for i, c in enumerate(params.columns)}
    out = np.empty(layout.vector_length, dtype=np.int64)
    for g, cell in enumerate(cells):
        raw, shifted = values[cell], centred[cell]
        base = g * layout.cell_length
        for offset, segment in layout.slots():
            cols = [index[c] for c in segment.columns]
            if segment.kind == "count":
                slot = np.array([float(len(raw))])
            elif segment.kind == "sum":
                slot = np.array([math.fsum(shifted[:, cols[0]].tolist())])
            elif segment.kind == "product":
                pair = shifted[:, cols[0]] * shifted[:, cols[1]]
                slot = np.array([math.fsum(pair.tolist())])
            else:
                edges = params.edges[segment.columns[0]]
                slot = np.histogram(raw[:, cols[0]], bins=edges)[0].astype(np.float64)
            start = base + offset
            encoded = segment.encode(slot).view(np.int64)
            out[start : start + segment.size] = encoded
    return out


def check_rows(rows: int, max_rows: int) -> None:
    """Refuse when ``max_rows`` does not cover the row bucket of ``rows``."""
    bound = rows_bound(rows)
    if bound > max_rows:
        raise ProtocolError(
            f"the dataset has {row_bucket(rows)} rows (its catalog bucket): "
            f"params.max_rows must be at least {bound}"
        )


def cell_partitions(
    layout: Layout, frame: pd.DataFrame
) -> list[tuple[tuple[str, ...], npt.NDArray[np.int64]]]:
    """Every cell's local rows, as partitions of the frame's rows: for the groups,
    then for each binned column, (cell names, label per row: the cell's index in
    the names, or -1 for rows in none of them). Bin cells are named
    ``group/column/bin`` with the bin's index."""
    params = layout.params
    values, cells = _rows(layout, frame)
    keys = params.group_keys
    labels = np.full(len(frame), -1, dtype=np.int64)
    for g, cell in enumerate(cells):
        labels[cell] = g
    out = [(keys, labels)]
    index = {c: i for i, c in enumerate(params.columns)}
    for column, edges in params.edges.items():
        bins = len(edges) - 1
        position = _bin_of(values[:, index[column]], edges)
        binned = np.where(labels >= 0, labels * bins + position, -1)
        names = tuple(f"{g}/{column}/{b}" for g in keys for b in range(bins))
        out.append((names, binned))
    return out


def _bin_of(
    values: npt.NDArray[np.float64], edges: Sequence[float]
) -> npt.NDArray[np.int64]:
    """Each value's bin as ``np.histogram`` counts: [e_i, e_i+1), the last closed."""
    position = np.searchsorted(np.asarray(edges), values, side="right") - 1
    return np.clip(position, 0, len(edges) - 2).astype(np.int64)


def _rows(
    layout: Layout, frame: pd.DataFrame
) -> tuple[npt.NDArray[np.float64], list[npt.NDArray[np.bool_]]]:
    """The bounded values of ``columns`` and each cell's row mask (rules 1-4)."""
    params = layout.params
    values = _numeric(frame, params.columns)
    keep = predicates.apply(params.where, frame) & ~np.isnan(values).any(axis=1)
    cells = _cell_masks(frame, params.group_by, params.groups, keep)
    return _bounded(values, keep, layout), cells


def add_noise(
    layout: Layout, encoded: npt.NDArray[np.int64], random: RandomSource
) -> npt.NDArray[np.int64]:
    """``encoded`` plus this node's share of the calibrated discrete Gaussian noise."""
    noise = layout.noise
    if noise is None:
        return encoded.copy()
    sensitivities = _per_slot(layout, [s.sensitivity for s in layout.segments])
    draws = noise.sample(sensitivities, random)
    out = encoded.copy()
    for i, (draw, sensitivity) in enumerate(zip(draws, sensitivities, strict=True)):
        if abs(draw) > NOISE_TAIL_SIGMAS * sensitivity * noise.node_std:
            # Probability below 10^-300; refusing keeps the ring's headroom exact.
            raise ProtocolError(
                "a noise draw fell beyond its tail bound; retry the job"
            )
        out[i] += draw
    return out


def to_ring(layout: Layout, signed: npt.NDArray[np.int64]) -> MaskVector:
    """Check every slot against its codec's capacity, then view it mod 2^64."""
    limits = np.array(
        _per_slot(layout, [s.codec.max_encoded for s in layout.segments]),
        dtype=np.int64,
    )
    if np.any(np.abs(signed) > limits):
        raise ProtocolError("an encoded value exceeds its fixed-point capacity")
    ring: MaskVector = signed.view(np.uint64)
    return ring


def _per_slot(layout: Layout, per_segment: Sequence[int]) -> list[int]:
    cell = [
        v
        for v, s in zip(per_segment, layout.segments, strict=True)
        for _ in range(s.size)
    ]
    return cell * len(layout.params.group_keys)


def _numeric(frame: pd.DataFrame, columns: Sequence[str]) -> npt.NDArray[np.float64]:
    out = np.empty((len(frame), len(columns)), dtype=np.float64)
    for j, column in enumerate(columns):
        if column not in frame.columns:
            raise ProtocolError(f"the dataset has no column {column!r}")
        series = frame[column]
        if not (
            pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)
        ):
            raise ProtocolError(f"column {column!r} is not numeric in this dataset")
        out[:, j] = series.to_numpy(dtype=np.float64, na_value=np.nan)
    return out


def _cell_masks(
    frame: pd.DataFrame,
    group_by: str | None,
    groups: Sequence[object],
    keep: npt.NDArray[np.bool_],
) -> list[npt.NDArray[np.bool_]]:
    if group_by is None:
        return [keep]
    if group_by not in frame.columns:
        raise ProtocolError(f"the dataset has no column {group_by!r}")
    column = frame[group_by]
    keep = keep & column.notna().to_numpy(dtype=bool)
    cells = [
        keep & (column == value).fillna(False).to_numpy(dtype=bool) for value in groups
    ]
    if len(cells) > 1 and int(np.max(np.sum(cells, axis=0))) > 1:
        raise ProtocolError(f"a row of {group_by!r} matches two declared groups")
    return cells


def _bounded(
    values: npt.NDArray[np.float64], keep: npt.NDArray[np.bool_], layout: Layout
) -> npt.NDArray[np.float64]:
    params = layout.params
    lows = np.array([params.clip[c][0] for c in params.columns])
    highs = np.array([params.clip[c][1] for c in params.columns])
    return np.clip(values, lows, highs)
