"""Helpers for tests that drive a real local federation through the CLI."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

COUNT_SPEC = """
type: count
inputs:
  - {node: h1, dataset: h1}
  - {node: h2, dataset: h2}
  - {node: h3, dataset: h3}
params:
  where:
    - {column: age, op: ">=", value: 40}
    - {column: sex, op: "==", value: "F"}
purpose: research
"""


def cli(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "cleanroom", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def make_csvs(directory: Path) -> dict[str, Path]:
    rng = np.random.default_rng(7)
    paths = {}
    for i, rows in enumerate((120, 200, 80), start=1):
        frame = pd.DataFrame(
            {
                "patient_id": [f"p{i}-{k}" for k in range(rows)],
                "age": rng.integers(18, 90, rows),
                "sex": rng.choice(["F", "M"], rows),
                "bmi": rng.normal(26, 4, rows).round(1),
            }
        )
        paths[f"h{i}"] = directory / f"h{i}.csv"
        frame.to_csv(paths[f"h{i}"], index=False)
    return paths


def expected_counts(paths: dict[str, Path]) -> dict[str, int]:
    out = {}
    for node, path in paths.items():
        d = pd.read_csv(path)
        out[node] = int(((d.age >= 40) & (d.sex == "F")).sum())
    return out


def wait_for(
    predicate: Callable[[], object], timeout: float = 30.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
