"""The demo runner: split sample data, start a federation, run each registered step."""

from __future__ import annotations

import importlib
import json
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from cleanroom import local
from cleanroom.client import Client
from cleanroom.demo import vertical as vertical_demo
from cleanroom.errors import CleanroomError
from cleanroom.federation import Federation

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")


@dataclass(frozen=True)
class DemoStep:
    """One capability shown by the demo.

    ``spec`` builds the job spec from the dataset names; ``compare`` takes the released
    result and the pooled plaintext frames and returns rows of (what, federated,
    plaintext reference, match?).
    """

    title: str
    spec: Callable[[Mapping[str, str]], str]
    compare: Callable[
        [Mapping[str, Any], Mapping[str, pd.DataFrame]],
        list[tuple[str, str, str, bool]],
    ]
    available: Callable[[], str | None] = lambda: None
    """Returns a reason to skip the step (e.g. no Docker engine), or None."""
    node_settings: Callable[
        [Path, Mapping[str, pd.DataFrame]], Mapping[str, Mapping[str, Any]]
    ] = lambda root, frames: {}
    """Before the federation starts: node -> ``[jobtypes.<name>]`` tables the
    step needs (e.g. a model a holder registers), files written under ``root``."""
    local_inputs: Callable[[Mapping[str, pd.DataFrame]], Mapping[str, Any]] = (
        lambda frames: {}
    )
    """The analyst's own inputs to its party (e.g. rows to score)."""


_STEPS: list[DemoStep] = []
_CURRENT: dict[str, Federation] = {}


def current_federation() -> Federation | None:
    """The running demo's federation, for steps that act as a data holder would."""
    return _CURRENT.get("federation")


def register_step(step: DemoStep) -> DemoStep:
    _STEPS.append(step)
    return step


def sample_data(directory: Path) -> dict[str, Path]:
    """scikit-learn's breast-cancer data (bundled, not downloaded) split in three."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    frame.insert(0, "patient_id", [f"P{i:05d}" for i in range(len(frame))])
    shuffled = frame.sample(frac=1.0, random_state=2026).reset_index(drop=True)
    bounds = [0, 160, 380, len(shuffled)]
    paths = {}
    for i, name in enumerate(HOSPITALS):
        paths[name] = directory / f"{name.replace('-', '_')}_patients.csv"
        shuffled.iloc[bounds[i] : bounds[i + 1]].to_csv(paths[name], index=False)
    return paths


def run_demo(*, workdir: Path | None = None, console: Console | None = None) -> bool:
    """Run every step; True if every federated result matched its reference."""
    # Importing these modules registers their steps.
    import cleanroom.demo.he
    import cleanroom.demo.steps  # noqa: F401
    from cleanroom.demo import privacy

    importlib.import_module("cleanroom.demo.fedavg")  # its step runs after those

    console = console or Console()
    with tempfile.TemporaryDirectory(prefix="cleanroom-demo-") as tmp:
        root = workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        paths = sample_data(root)
        frames = {n: pd.read_csv(p) for n, p in paths.items()}
        datasets = {n: p.stem for n, p in paths.items()}
        console.rule("[bold]cleanroom demo")
        console.print(
            f"three hospitals hold {sum(map(len, frames.values()))} patients "
            "(scikit-learn breast_cancer), split "
            + ", ".join(f"{n}: {len(f)}" for n, f in frames.items())
        )
        started = time.monotonic()
        settings: dict[str, dict[str, Mapping[str, Any]]] = {}
        for step in _STEPS:
            for node, tables in step.node_settings(root, frames).items():
                settings.setdefault(node, {}).update(tables)
        with console.status(
            "starting a local federation (coordinator + 3 nodes)"
        ) as status:
            fed = local.up(
                workdir=root / "federation",
                nodes=list(paths.items()),
                progress=lambda m: status.update(m),
                node_settings=settings,
            )
        console.print(
            f"federation up in {time.monotonic() - started:.1f}s at "
            f"{fed.coordinator_address} (mutual TLS, separate processes)"
        )
        all_ok = True
        _CURRENT["federation"] = fed
        try:
            with Client.from_federation(
                root / "federation" / "federation.json"
            ) as client:
                for step in _STEPS:
                    all_ok &= _run_step(step, client, datasets, frames, console)
            all_ok &= privacy.show(frames, console)
            from cleanroom.demo import psi

            all_ok &= psi.run(console)
            all_ok &= _governance(root / "federation", console)
        finally:
            _CURRENT.clear()
            local.down(root / "federation")
        all_ok &= vertical_demo.run(console)
        console.rule(
            "[bold green]all results match" if all_ok else "[bold red]mismatch"
        )
        return all_ok


def _run_step(
    step: DemoStep,
    client: Client,
    datasets: Mapping[str, str],
    frames: Mapping[str, pd.DataFrame],
    console: Console,
) -> bool:
    console.rule(step.title)
    skip = step.available()
    if skip:
        console.print(f"[yellow]skipped:[/] {skip}")
        return True
    spec = step.spec(datasets)
    started = time.monotonic()
    try:
        with console.status(f"running {step.title}") as status:
            inputs = step.local_inputs(frames)
            job = client.submit(spec, local_inputs=inputs).job.job_id
            final = client.wait(
                job,
                timeout=600,
                on_update=lambda v: status.update(
                    f"{step.title}: {v.job.state.value} — {v.job.progress}"
                ),
            )
    except CleanroomError as exc:
        console.print(f"[red]failed:[/] {exc}")
        return False
    if final.job.state.value != "succeeded":
        console.print(f"[red]{final.job.state.value}:[/] {final.job.reason}")
        return False
    document = client.result(job)
    rows = step.compare(document["result"], frames)
    table = Table("value", "federated (released)", "plaintext reference", "match")
    for what, got, want, ok in rows:
        table.add_row(what, got, want, "[green]yes[/]" if ok else "[red]NO[/]")
    console.print(table)
    signers = sorted({a["node"] for a in document["provenance"]["attestations"]})
    console.print(
        f"[dim]{job} in {time.monotonic() - started:.1f}s; result "
        f"{len(json.dumps(document))} bytes, signed by {', '.join(signers)}[/]"
    )
    return all(ok for *_, ok in rows)


WITNESS_WAIT_S = 30.0


def _governance(workdir: Path, console: Console) -> bool:
    """Show the meters and check every party's audit ledger offline."""
    from click.testing import CliRunner

    from cleanroom.cli.main import cli

    console.rule("controllable and countable — meters and audit ledgers")
    from cleanroom.cli.governance import usage_table

    runner = CliRunner()
    fed = Federation.load(workdir / "federation.json")

    for info in fed.nodes.values():
        console.print(usage_table(Path(info["config"])))
    exports = workdir / "audit-export"
    deadline = time.monotonic() + WITNESS_WAIT_S
    while True:  # the nodes witness the coordinator's log within seconds of a job
        outcome = runner.invoke(
            cli, ["audit", "export", "--workdir", str(workdir), "--out", str(exports)]
        )
        ok = outcome.exit_code == 0
        logs = sorted(str(p) for p in exports.glob("*.jsonl"))
        fed_file = str(workdir / "federation.json")
        outcome = runner.invoke(
            cli, ["audit", "verify", *logs, "--federation", fed_file]
        )
        ok &= outcome.exit_code == 0
        if ok or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    console.print(outcome.output.strip(), highlight=False)
    console.print(
        "every ledger verified offline against the CA alone: hash chain, Merkle "
        "root, signed heads, each log held to the heads the others witnessed and "
        "co-signed to its last entry"
        if ok
        else "[red]an audit ledger did not verify[/]"
    )
    return ok
