"""The demo's privacy step: a curious analyst's differencing attempt withheld by
the node's record, and a dataset whose holder requires DP answering only a noisy
count (an exact one is refused). Runs on an in-process federation over the same
hospital data, with ``patient_id`` as every dataset's identifier column."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from cleanroom.local import default_policy
from cleanroom.testing import ANALYST_NAME, InProcessFederation

DP_HOSPITAL = "hospital-a"
MIN_GROUP_SIZE = 5
DP_RULES: dict[str, Any] = {
    "required": True,
    "epsilon_per_job": {"min": 0.1, "max": 1.0},
    "epsilon_budget": 2.0,
    "delta_budget": 1.0e-5,
}


def _count(inputs: list[str], where: str, dp: str = "") -> str:
    lines = "\n".join(f"  - {{node: {n}, dataset: {n}}}" for n in inputs)
    extra = f"\n  dp: {dp}" if dp else ""
    return (
        f"type: count\ninputs:\n{lines}\nparams:\n  where: {where}{extra}\n"
        "purpose: privacy demo\n"
    )


def _counts(fed: InProcessFederation, spec: str) -> tuple[str, dict[str, Any]]:
    view = fed.run(spec, timeout=60)
    if view.job.state.value != "succeeded":
        return view.job.state.value + ": " + view.job.reason, {}
    return "succeeded", fed.client.result(view.job.job_id)["result"]


def show(frames: Mapping[str, pd.DataFrame], console: Console) -> bool:
    """Run both attempts; True if each ended as the holders' policies say."""
    console.rule("privacy — differencing withheld, DP required by a holder")
    policy = default_policy(ANALYST_NAME)
    policy[DP_HOSPITAL] = {**policy["default"], "dp": DP_RULES}  # type: ignore[dict-item]
    others = [n for n in frames if n != DP_HOSPITAL]
    target = frames[others[0]]
    largest = float(target.mean_radius.max())
    ok = True
    # The in-process nodes' reconnect warnings as it shuts down are not news here.
    quiet = logging.getLogger("node")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        ok = _attempts(frames, policy, others, largest, console)
    finally:
        quiet.setLevel(level)
    console.print("[green]privacy step as expected[/]" if ok else "[red]unexpected[/]")
    return ok


def _attempts(
    frames: Mapping[str, pd.DataFrame],
    policy: dict[str, object],
    others: list[str],
    largest: float,
    console: Console,
) -> bool:
    ok = True
    with InProcessFederation(
        dict(frames), policy=policy, id_column="patient_id"
    ) as fed:
        table = Table("query", "node", "released", "expected")
        everyone = '[{column: mean_radius, op: ">", value: 0}]'
        all_but_one = f'[{{column: mean_radius, op: "<", value: {largest!r}}}]'
        state, first = _counts(fed, _count(others, everyone))
        _, second = _counts(fed, _count(others, all_but_one))
        for label, found in (("all patients", first), ("all but one", second)):
            for row in found.get("counts", []):
                left_out = int((frames[row["node"]].mean_radius >= largest).sum())
                near = label == "all but one" and 1 <= left_out < MIN_GROUP_SIZE
                expect = "withheld" if near else "released"
                got = "withheld" if row["suppressed"] else str(row["count"])
                ok &= (got == "withheld") == (expect == "withheld")
                table.add_row(label, row["node"], got, expect)
        console.print(table)
        console.print(
            f"[dim]a node withholds the second count where its rows differ from "
            f"the first's by 1..{MIN_GROUP_SIZE - 1} patients (its differencing "
            "record); to the analyst it looks like a small count[/]"
        )
        exact, _ = _counts(fed, _count([DP_HOSPITAL], everyone))
        refused = "releases only differentially private results" in exact
        ok &= refused
        console.print(f"exact count on {DP_HOSPITAL}: {exact[:120]}")
        state, noisy = _counts(
            fed, _count([DP_HOSPITAL], everyone, "{epsilon: 0.5, delta: 1.0e-6}")
        )
        rows = noisy.get("counts", [])
        ok &= state == "succeeded" and bool(rows) and "noise_std" in rows[0]
        if rows:
            truth = len(frames[DP_HOSPITAL])
            console.print(
                f"DP count on {DP_HOSPITAL} (epsilon 0.5): {rows[0]['count']} "
                f"± {rows[0]['noise_std']:.1f} (noise std); exact {truth}, seen by "
                "the node only"
            )
    return ok
