"""From the unmasked aggregate to the released ``secure_stats`` result: decode each
cell, suppress small cells, derive the statistics.

Every group and every histogram bin is a cell: a group whose count is below the
minimum group size is named in ``suppressed_groups`` and released no further; a bin
below it is released as ``null``. Variance and covariance are sample statistics
(``ddof = 1``, as ``np.cov``). Quantiles are read from the released bins only (a
suppressed bin counts as empty, so they are post-processing of released values)
by linear interpolation inside the bin where the cumulative count reaches
``p * n``: exact to within one bin when no bin is suppressed. With DP the decisions
use the noisy values; variances are clamped at zero and correlations to [-1, 1]
(post-processing, which costs no privacy), and each released cell carries the
noise std of every value it holds (``noise``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from cleanroom.jobtypes.stats import noise
from cleanroom.jobtypes.stats.layout import Layout
from protocols.prg import MaskVector

_Decoded = Mapping[tuple[str, tuple[str, ...]], npt.NDArray[np.float64]]


def release(
    layout: Layout,
    total: MaskVector,
    *,
    survivors: Sequence[str],
    dropped: Sequence[str],
    min_group_size: int,
) -> dict[str, Any]:
    """The released result; groups whose count is below ``min_group_size`` are
    named in ``suppressed_groups`` and contribute nothing else, and so are bins."""
    params = layout.params
    contributors = len(survivors)
    variances = noise.slot_variances(layout, contributors)
    groups: dict[str, Any] = {}
    suppressed: list[str] = []
    length = layout.cell_length
    for g, key in enumerate(params.group_keys):
        cell = total[g * length : (g + 1) * length]
        decoded: dict[tuple[str, tuple[str, ...]], npt.NDArray[np.float64]] = {
            (s.kind, s.columns): s.decode(
                np.ascontiguousarray(cell[offset : offset + s.size]), contributors
            )
            for offset, s in layout.slots()
        }
        count = round(float(decoded["count", ()][0]))
        if count < min_group_size:
            suppressed.append(key)
            continue
        groups[key] = _cell(layout, decoded, count, min_group_size, variances)
    return {
        "group_by": params.group_by,
        "groups": groups,
        "suppressed_groups": suppressed,
        "min_group_size": min_group_size,
        "survivors": list(survivors),
        "dropped": list(dropped),
        "ddof": 1,
        "resolution": _resolution(layout),
        "dp": _privacy(layout, contributors),
    }


def histogram_quantile(
    edges: Sequence[float], counts: Sequence[int], p: float
) -> float | None:
    """The p-quantile of histogram data, interpolating linearly within its bin."""
    total = sum(counts)
    if total <= 0:
        return None
    target = p * total
    below = 0
    for i, count in enumerate(counts):
        if count > 0 and below + count >= target:
            return edges[i] + (target - below) / count * (edges[i + 1] - edges[i])
        below += count
    return edges[-1]


def _cell(
    layout: Layout,
    decoded: _Decoded,
    count: int,
    min_group_size: int,
    variances: Mapping[tuple[str, tuple[str, ...]], float],
) -> dict[str, Any]:
    params, stats = layout.params, layout.params.stats
    columns = params.columns
    out: dict[str, Any] = {}
    sums = {
        c: float(decoded["sum", (c,)][0]) for c in columns if ("sum", (c,)) in decoded
    }
    products = {
        columns_: float(value[0])
        for (kind, columns_), value in decoded.items()
        if kind == "product"
    }
    cell = noise.CellNoise(layout, variances, count, sums, products)
    stds: dict[str, Any] = {}
    if "count" in stats:
        out["count"] = count
        stds["count"] = cell.std({noise.COUNT: 1.0})
    if "sum" in stats:
        out["sum"] = {c: sums[c] + layout.centre(c) * count for c in columns}
        stds["sum"] = {c: cell.std(cell.sum(c)) for c in columns}
    if "mean" in stats:
        out["mean"] = {c: sums[c] / count + layout.centre(c) for c in columns}
        stds["mean"] = {c: cell.std(cell.mean(c)) for c in columns}

    def covariance(a: str, b: str) -> float | None:
        key = ("product", (a, b) if columns.index(a) <= columns.index(b) else (b, a))
        if count < 2 or key not in decoded:
            return None
        value = (float(decoded[key][0]) - sums[a] * sums[b] / count) / (count - 1)
        return max(value, 0.0) if a == b else value

    var = {c: covariance(c, c) for c in columns}
    if "variance" in stats:
        out["variance"] = var
        stds["variance"] = {c: cell.std(cell.covariance(c, c)) for c in columns}
    if "std" in stats:
        out["std"] = {c: None if v is None else math.sqrt(v) for c, v in var.items()}
        stds["std"] = {c: cell.std(cell.std_of_std(c, var[c])) for c in columns}
    if "covariance" in stats:
        out["covariance"] = {a: {b: covariance(a, b) for b in columns} for a in columns}
        stds["covariance"] = {
            a: {b: cell.std(cell.covariance(a, b)) for b in columns} for a in columns
        }
    if "correlation" in stats:
        out["correlation"] = {
            a: {b: _correlation(covariance(a, b), var[a], var[b]) for b in columns}
            for a in columns
        }
        stds["correlation"] = {
            a: {
                b: cell.std(cell.correlation(a, b, covariance(a, b), var[a], var[b]))
                for b in columns
            }
            for a in columns
        }
    # Each bin is a cell of its own: below the minimum group size it is withheld.
    histograms: dict[str, list[int | None]] = {}
    for c in params.edges:
        bins = (max(0, round(float(v))) for v in decoded["histogram", (c,)])
        histograms[c] = [b if b >= min_group_size else None for b in bins]
    if "histogram" in stats:
        out["histogram"] = {
            c: {"edges": list(params.edges[c]), "counts": histograms[c]}
            for c in params.edges
        }
        if params.edges:
            stds["histogram"] = {
                c: cell.std({("histogram", (c,), 0): 1.0}) for c in params.edges
            }
    if "quantiles" in stats:
        out["quantiles"] = {
            c: {
                repr(p): histogram_quantile(
                    params.edges[c], _released(histograms[c]), p
                )
                for p in params.quantiles
            }
            for c in params.edges
        }
        stds["quantiles"] = {
            c: {
                repr(p): cell.std(cell.quantile(c, params.edges[c], histograms[c], p))
                for p in params.quantiles
            }
            for c in params.edges
        }
    if layout.noise is not None:
        out["noise"] = {"std": stds}
    return out


def _released(counts: Sequence[int | None]) -> list[int]:
    """Bin counts as the analyst sees them: a withheld bin counts as empty."""
    return [0 if c is None else c for c in counts]


def _correlation(
    cov: float | None, var_a: float | None, var_b: float | None
) -> float | None:
    if cov is None or not var_a or not var_b:
        return None
    return min(1.0, max(-1.0, cov / math.sqrt(var_a * var_b)))


def _resolution(layout: Layout) -> dict[str, Any]:
    """The value of one encoded unit of each centred sum and sum of products."""
    out: dict[str, Any] = {}
    for s in layout.segments:
        if s.kind == "sum":
            out.setdefault("sum", {})[s.columns[0]] = s.resolution
        elif s.kind == "product":
            a, b = s.columns
            out.setdefault("product", {}).setdefault(a, {})[b] = s.resolution
    return out


def _privacy(layout: Layout, contributors: int) -> dict[str, Any] | None:
    calibrated = layout.noise
    if calibrated is None:
        return None
    return {
        "epsilon": calibrated.epsilon,
        "delta": calibrated.delta,
        "mechanism": "distributed discrete Gaussian, shares summed by SecAgg+",
        "calibrated_for_nodes": calibrated.parties,
        "noise_shares": contributors,
        "coordinates_per_record": calibrated.dimensions,
        # exact and the same in every cell; each cell's "noise" has all the rest
        "noise_std": noise.summary(layout, contributors),
        "noise_std_method": (
            "count, sum, histogram: exact; mean, variance, std, covariance, "
            "correlation, quantiles: delta method at the released values"
        ),
    }
