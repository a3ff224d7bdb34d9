"""Test support for federated training: a reproducible byte source and the datasets."""

from __future__ import annotations

import hashlib

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.model_selection import train_test_split

from protocols.party import RandomSource


def seeded_random(label: str) -> RandomSource:
    """SHAKE-256 of a label in counter mode: deterministic bytes, for tests only."""
    counter = 0

    def draw(n: int) -> bytes:
        nonlocal counter
        counter += 1
        return hashlib.shake_256(f"{label}/{counter}".encode()).digest(n)

    return draw


def dataset(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test), 25% held out, stratified for classes."""
    loader = {"breast_cancer": load_breast_cancer, "wine": load_wine}.get(name)
    if loader is None:
        d = load_diabetes()
        return tuple(train_test_split(d.data, d.target, test_size=0.25, random_state=0))
    d = loader()
    y = d.target.astype(float)
    return tuple(
        train_test_split(d.data, y, test_size=0.25, random_state=0, stratify=y)
    )


def declared_bounds(
    x: np.ndarray, margin: float = 0.1
) -> tuple[tuple[float, float], ...]:
    """Public per-feature bounds as a catalog would declare them: range plus margin."""
    lo, hi = x.min(axis=0), x.max(axis=0)
    pad = margin * (hi - lo)
    return tuple((float(a - m), float(b + m)) for a, b, m in zip(lo, hi, pad))
