"""Validation of the public numeric parameters of federated training (ConfigError)."""

from __future__ import annotations

import math

from cleanroom.errors import ConfigError


def check_int(name: str, value: object, low: int, high: int) -> int:
    """``value`` if it is an int (not a bool) in ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be in {low}..{high}, got {value}")
    return value


def check_real(
    name: str, value: object, low: float, high: float, *, open_low: bool = False
) -> float:
    """``value`` as a float if it is a finite real in [low, high] ((low, high] when
    ``open_low``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    v = float(value)
    above = v > low if open_low else v >= low
    if not (math.isfinite(v) and above and v <= high):
        bracket = "(" if open_low else "["
        raise ConfigError(f"{name} must be in {bracket}{low}, {high}], got {value!r}")
    return v
