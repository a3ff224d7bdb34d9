"""The first aggregation round: global feature means and standard deviations (and, for
regression, the target's) from summed counts, sums and sums of squares.

Each node sends, over its rows clipped to the public bounds, its training and
validation row counts and, per feature, the sums of ``u = (x - c) / h`` and ``u^2``
over its training rows, ``c`` and ``h`` the midpoint and half range of the
feature's bounds: every term lies in [-1, 1], so every feature gets the same
relative precision and one row moves each sum by at most 1 (the DP sensitivity).
Sums are encoded row by row, exactly. No node's own statistics are ever shared: only the
SecAgg+ sum is decoded.

Population statistics (ddof = 0, as scikit-learn's ``StandardScaler``); a feature
of zero variance gets scale 1, as there. With DP the noisy estimates are clamped
into what the public bounds allow: the mean into [low, high], the scale into
[half range / 8, half range] (a noisy variance near zero would otherwise
blow one feature up), counts to at least 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cleanroom.errors import ProtocolError
from protocols.fl.local import row_units
from protocols.fl.models import Matrix, Vector
from protocols.fl.plan import FedAvgPlan
from protocols.fl.vector import Units

DP_MIN_SCALE_FRACTION: Final = 1 / 8
_ZERO_VARIANCE: Final = 1e-24


@dataclass(frozen=True)
class Standardisation:
    """What the first round releases; the coordinator sends it to every node."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    train_rows: float
    val_rows: float
    target_mean: float = 0.0
    target_scale: float = 1.0
    val_target_sst: float = 0.0
    """Sum over validation rows of (y - mean of validation y)^2, for R^2."""

    def features(self, x: Matrix) -> Matrix:
        return np.asarray((x - np.array(self.mean)) / np.array(self.scale))

    def target(self, y: Vector) -> Vector:
        return np.asarray((y - self.target_mean) / self.target_scale)

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean),
            "scale": list(self.scale),
            "train_rows": self.train_rows,
            "val_rows": self.val_rows,
            "target_mean": self.target_mean,
            "target_scale": self.target_scale,
            "val_target_sst": self.val_target_sst,
        }

    @classmethod
    def from_json(cls, plan: FedAvgPlan, data: Mapping[str, Any]) -> Standardisation:
        """Parse and check what the (untrusted) coordinator broadcast."""
        p = plan.params.model.n_features
        try:
            mean = tuple(float(v) for v in data["mean"])
            scale = tuple(float(v) for v in data["scale"])
            scalars = [
                float(data[k])
                for k in (
                    "train_rows",
                    "val_rows",
                    "target_mean",
                    "target_scale",
                    "val_target_sst",
                )
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError("malformed standardisation") from exc
        values = [*mean, *scale, *scalars]
        if len(mean) != p or len(scale) != p or not all(map(math.isfinite, values)):
            raise ProtocolError(f"a standardisation needs {p} finite means and scales")
        if min(scale) <= 0 or scalars[3] <= 0 or min(scalars[:2]) < 0:
            raise ProtocolError("standardisation scales and counts must be positive")
        return cls(mean, scale, *scalars)


def standardisation_units(
    plan: FedAvgPlan,
    x_train: Matrix,
    x_val: Matrix,
    y_train: Vector | None = None,
    y_val: Vector | None = None,
) -> dict[str, Units]:
    """A node's first-round contribution, from rows already clipped to the bounds."""
    params = plan.params
    layout = plan.standardisation
    u = _unit_scaled(x_train, params.feature_bounds)
    sum_bits = layout.segment("feature_sum").scale_bits
    square_bits = layout.segment("feature_square").scale_bits
    units: dict[str, Units] = {
        "train_count": np.array([len(x_train)], dtype=np.int64),
        "val_count": np.array([len(x_val)], dtype=np.int64),
        "feature_sum": np.array(
            [row_units(u[:, j], sum_bits) for j in range(u.shape[1])], dtype=np.int64
        ),
        "feature_square": np.array(
            [row_units(u[:, j] ** 2, square_bits) for j in range(u.shape[1])],
            dtype=np.int64,
        ),
    }
    if params.target_bounds is not None:
        if y_train is None or y_val is None:
            raise ProtocolError("regression needs the targets")
        bits = layout.segment("target").scale_bits
        t = _unit_scaled(y_train[:, None], (params.target_bounds,))[:, 0]
        v = _unit_scaled(y_val[:, None], (params.target_bounds,))[:, 0]
        units["target"] = np.array(
            [row_units(a, bits) for a in (t, t * t, v, v * v)], dtype=np.int64
        )
    return units


def _unit_scaled(x: Matrix, bounds: tuple[tuple[float, float], ...]) -> Matrix:
    centre = np.array([(lo + hi) / 2 for lo, hi in bounds])
    half = np.array([(hi - lo) / 2 for lo, hi in bounds])
    # The clip only absorbs float rounding: rows are already inside the bounds.
    return np.asarray(np.clip((x - centre) / half, -1.0, 1.0))


def read_standardisation(
    plan: FedAvgPlan, sums: Mapping[str, npt.NDArray[np.float64]]
) -> Standardisation:
    """The global statistics from the decoded sum of every node's contribution."""
    params = plan.params
    noisy = plan.dp
    train_rows = float(sums["train_count"][0])
    val_rows = float(sums["val_count"][0])
    if noisy:
        train_rows, val_rows = max(train_rows, 1.0), max(val_rows, 1.0)
    elif train_rows < 1:
        raise ProtocolError("no training rows at any node")
    means, scales = [], []
    for j, (lo, hi) in enumerate(params.feature_bounds):
        mean, scale = _moments(
            sums["feature_sum"][j], sums["feature_square"][j], train_rows, lo, hi, noisy
        )
        means.append(mean)
        scales.append(scale)
    if params.target_bounds is None:
        return Standardisation(tuple(means), tuple(scales), train_rows, val_rows)
    lo, hi = params.target_bounds
    t_sum, t_square, v_sum, v_square = (float(v) for v in sums["target"])
    target_mean, target_scale = _moments(t_sum, t_square, train_rows, lo, hi, noisy)
    spread = max(v_square - v_sum * v_sum / val_rows, 0.0) if val_rows >= 1 else 0.0
    sst = spread * ((hi - lo) / 2) ** 2
    return Standardisation(
        tuple(means),
        tuple(scales),
        train_rows,
        val_rows,
        target_mean,
        target_scale,
        sst,
    )


def _moments(
    total: float, squares: float, rows: float, lo: float, hi: float, noisy: bool
) -> tuple[float, float]:
    """Mean and population std from the sums of u and u^2, u = (x - c) / h."""
    half, centre = (hi - lo) / 2, (hi + lo) / 2
    shift = float(total) / rows
    variance = (float(squares) / rows - shift * shift) * half * half
    mean = centre + shift * half
    if noisy:
        low_scale = half * DP_MIN_SCALE_FRACTION
        scale = min(max(math.sqrt(max(variance, 0.0)), low_scale), half)
        return min(max(mean, lo), hi), scale
    if variance <= _ZERO_VARIANCE * half * half:
        return mean, 1.0
    return mean, math.sqrt(variance)
