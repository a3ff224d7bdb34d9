"""The noise standard deviation of every value a DP ``secure_stats`` job releases.

The noisy inputs of a cell are its decoded slots: the count N, the centred sums T_c,
the centred sums of products P_ab and the bin counts H_c[i]. Each carries the sum of
``contributors`` independent discrete Gaussian shares, so its variance is exactly
contributors x Var(N_Z(0, node variance x sensitivity^2)) x resolution^2, and the
slots are independent of each other.

Released values are functions of those slots. Exact: the count (N), every bin
(H_c[i]) and every sum (T_c + centre_c N: variance Var T_c + centre_c^2 Var N, which
the old report of the centred sum alone understated by the second term). Delta method
(first order, evaluated at the released noisy values, so the analyst can redo it):
mean, variance, std, covariance, correlation and quantiles; it is accurate when the
noise is small next to the count, and ignores the clamps (variance >= 0,
|correlation| <= 1) and a quantile's move to another bin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from cleanroom.jobtypes.stats.layout import Layout
from protocols import dp

Slot = tuple[str, tuple[str, ...], int]
"""(segment kind, its columns, index within the segment): one noisy input."""
Gradient = dict[Slot, float]

COUNT: Slot = ("count", (), 0)


def slot_variances(
    layout: Layout, contributors: int
) -> dict[tuple[str, tuple[str, ...]], float]:
    """Noise variance of one slot of each segment, in the units of its value."""
    noise = layout.noise
    if noise is None:
        return {}
    out: dict[tuple[str, tuple[str, ...]], float] = {}
    for s in layout.segments:
        share = dp.discrete_gaussian_variance(float(noise.variance_for(s.sensitivity)))
        out[s.kind, s.columns] = contributors * share * s.resolution**2
    return out


class CellNoise:
    """Gradients of one cell's released values, and the std they imply."""

    def __init__(
        self,
        layout: Layout,
        variances: Mapping[tuple[str, tuple[str, ...]], float],
        count: int,
        sums: Mapping[str, float],
        products: Mapping[tuple[str, ...], float],
    ) -> None:
        self._layout = layout
        self._variances = variances
        self._n = count
        self._sums = sums
        self._products = products

    def std(self, gradient: Gradient | None) -> float | None:
        """None when the value is not released, or when the job adds no noise."""
        if gradient is None or not self._variances:
            return None
        total = math.fsum(
            g * g * self._variances[kind, columns]
            for (kind, columns, _), g in gradient.items()
        )
        return math.sqrt(total)

    def sum(self, c: str) -> Gradient:
        return {("sum", (c,), 0): 1.0, COUNT: self._layout.centre(c)}

    def mean(self, c: str) -> Gradient:
        n, t = self._n, self._sums[c]
        return {("sum", (c,), 0): 1 / n, COUNT: -t / (n * n)}

    def covariance(self, a: str, b: str) -> Gradient | None:
        n = self._n
        columns = self._layout.params.columns
        pair = (a, b) if columns.index(a) <= columns.index(b) else (b, a)
        if n < 2 or pair not in self._products:
            return None
        ta, tb = self._sums[a], self._sums[b]
        value = (self._products[pair] - ta * tb / n) / (n - 1)
        gradient: Gradient = {("product", pair, 0): 1 / (n - 1)}
        for column, other in ((a, tb), (b, ta)):
            key: Slot = ("sum", (column,), 0)
            gradient[key] = gradient.get(key, 0.0) - other / (n * (n - 1))
        gradient[COUNT] = (ta * tb / (n * n) - value) / (n - 1)
        return gradient

    def std_of_std(self, c: str, variance: float | None) -> Gradient | None:
        gradient = self.covariance(c, c)
        if gradient is None or not variance:
            return None
        return _scaled(gradient, 1 / (2 * math.sqrt(variance)))

    def correlation(
        self,
        a: str,
        b: str,
        cov: float | None,
        var_a: float | None,
        var_b: float | None,
    ) -> Gradient | None:
        g_cov, g_a, g_b = (
            self.covariance(a, b),
            self.covariance(a, a),
            self.covariance(b, b),
        )
        if g_cov is None or g_a is None or g_b is None:
            return None
        if cov is None or not var_a or not var_b:
            return None
        scale = math.sqrt(var_a * var_b)
        out = _scaled(g_cov, 1 / scale)
        for g, var in ((g_a, var_a), (g_b, var_b)):
            for key, value in _scaled(g, -cov / (2 * scale * var)).items():
                out[key] = out.get(key, 0.0) + value
        return out

    def quantile(
        self, c: str, edges: Sequence[float], counts: Sequence[int | None], p: float
    ) -> Gradient | None:
        """d q / d H_c[j] of ``histogram_quantile`` over the released bins."""
        used = [0 if v is None else v for v in counts]
        total = sum(used)
        if total <= 0:
            return None
        target, below = p * total, 0
        for i, count in enumerate(used):
            if count > 0 and below + count >= target:
                width = edges[i + 1] - edges[i]
                inside = (target - below) / count
                gradient: Gradient = {}
                for j, value in enumerate(counts):
                    if value is None:
                        continue  # a suppressed bin is not released: no input
                    if j < i:
                        slope = (p - 1) * width / count
                    elif j == i:
                        slope = (p - inside) * width / count
                    else:
                        slope = p * width / count
                    gradient["histogram", (c,), j] = slope
                return gradient
            below += count
        return {}


def _scaled(gradient: Gradient, factor: float) -> Gradient:
    return {k: v * factor for k, v in gradient.items()}


def summary(layout: Layout, contributors: int) -> dict[str, Any]:
    """The value-independent stds: count, histogram bin, and each released sum."""
    variances = slot_variances(layout, contributors)
    out: dict[str, Any] = {"count": math.sqrt(variances["count", ()])}
    hist = [v for (kind, _), v in variances.items() if kind == "histogram"]
    if hist:
        out["histogram"] = math.sqrt(hist[0])
    for s in layout.segments:
        if s.kind == "sum":
            c = s.columns[0]
            out.setdefault("sum", {})[c] = math.sqrt(
                variances["sum", (c,)] + layout.centre(c) ** 2 * variances["count", ()]
            )
    return out
