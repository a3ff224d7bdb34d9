"""From the unmasked aggregate to the released ``secure_stats`` result: decode each
cell, suppress small cells, derive the statistics.

Variance and covariance are sample statistics (``ddof = 1``, as ``np.cov``).
Quantiles are read from the cell's histogram by linear interpolation inside the
bin where the cumulative count reaches ``p * n``, so they are exact to within
one bin. With DP, noisy histogram counts are clamped at zero, variances at zero
and correlations to [-1, 1]: post-processing, which costs no privacy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

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
    """The released result; cells whose count is below ``min_group_size`` are
    named in ``suppressed_groups`` and contribute nothing else."""
    params = layout.params
    contributors = len(survivors)
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
        groups[key] = _cell(layout, decoded, count)
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


def _cell(layout: Layout, decoded: _Decoded, count: int) -> dict[str, Any]:
    params, stats = layout.params, layout.params.stats
    columns = params.columns
    out: dict[str, Any] = {}
    if "count" in stats:
        out["count"] = count
    sums = {
        c: float(decoded["sum", (c,)][0]) for c in columns if ("sum", (c,)) in decoded
    }
    if "sum" in stats:
        out["sum"] = {c: sums[c] + layout.centre(c) * count for c in columns}
    if "mean" in stats:
        out["mean"] = {c: sums[c] / count + layout.centre(c) for c in columns}

    def covariance(a: str, b: str) -> float | None:
        key = ("product", (a, b) if columns.index(a) <= columns.index(b) else (b, a))
        if count < 2 or key not in decoded:
            return None
        value = (float(decoded[key][0]) - sums[a] * sums[b] / count) / (count - 1)
        return max(value, 0.0) if a == b else value

    variances = {c: covariance(c, c) for c in columns}
    if "variance" in stats:
        out["variance"] = variances
    if "std" in stats:
        out["std"] = {
            c: None if v is None else math.sqrt(v) for c, v in variances.items()
        }
    if "covariance" in stats:
        out["covariance"] = {a: {b: covariance(a, b) for b in columns} for a in columns}
    if "correlation" in stats:
        out["correlation"] = {
            a: {
                b: _correlation(covariance(a, b), variances[a], variances[b])
                for b in columns
            }
            for a in columns
        }
    histograms = {
        c: [max(0, round(float(v))) for v in decoded["histogram", (c,)]]
        for c in params.edges
    }
    if "histogram" in stats:
        out["histogram"] = {
            c: {"edges": list(params.edges[c]), "counts": histograms[c]}
            for c in params.edges
        }
    if "quantiles" in stats:
        out["quantiles"] = {
            c: {
                repr(p): histogram_quantile(params.edges[c], histograms[c], p)
                for p in params.quantiles
            }
            for c in params.edges
        }
    return out


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
    noise = layout.noise
    if noise is None:
        return None
    unit = noise.total_std(contributors)
    stds: dict[str, Any] = {}
    for s in layout.segments:
        std = unit * s.sensitivity * s.resolution
        if s.kind in ("count", "histogram"):
            stds[s.kind] = std
        elif s.kind == "sum":
            stds.setdefault("centred_sum", {})[s.columns[0]] = std
        else:
            a, b = s.columns
            stds.setdefault("centred_product", {}).setdefault(a, {})[b] = std
    return {
        "epsilon": noise.epsilon,
        "delta": noise.delta,
        "mechanism": "distributed discrete Gaussian, shares summed by SecAgg+",
        "calibrated_for_nodes": noise.parties,
        "noise_shares": contributors,
        "coordinates_per_record": noise.dimensions,
        "noise_std": stds,
    }
