"""The demo's built-in steps; each capability adds one here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from cleanroom.demo.runner import DemoStep, register_step


def _inputs(datasets: Mapping[str, str]) -> str:
    return "\n".join(f"  - {{node: {n}, dataset: {d}}}" for n, d in datasets.items())


def _count_spec(datasets: Mapping[str, str]) -> str:
    return f"""type: count
inputs:
{_inputs(datasets)}
params:
  where:
    - {{column: target, op: "==", value: 0}}
    - {{column: mean_radius, op: ">", value: 15}}
purpose: tumour-size audit
"""


def _count_compare(result: Mapping[str, Any], frames: Mapping[str, pd.DataFrame]
                   ) -> list[tuple[str, str, str, bool]]:
    rows = []
    for entry in result["counts"]:
        f = frames[entry["node"]]
        want = int(((f.target == 0) & (f.mean_radius > 15)).sum())
        got = "suppressed (< 5)" if entry["suppressed"] else str(entry["count"])
        ok = (entry["count"] == want) if not entry["suppressed"] else want < 5
        rows.append((f"malignant & radius > 15 at {entry['node']}", got, str(want), ok))
    return rows


register_step(DemoStep("count — rows per hospital, small cells suppressed",
                       _count_spec, _count_compare))
