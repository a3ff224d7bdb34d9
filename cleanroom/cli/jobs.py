"""``cleanroom job ...`` and ``cleanroom catalog``: the analyst's commands."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from cleanroom.cli.common import EXIT_FAILED, err, handle_errors, out, print_json
from cleanroom.client import Client
from cleanroom.errors import ConfigError
from cleanroom.jobspec import parse_spec
from cleanroom.model import JobState
from cleanroom.serde import JobView

DEFAULT_FEDERATION = Path(".cleanroom") / "federation.json"

federation_option = click.option(
    "--federation",
    "federation",
    type=click.Path(path_type=Path),
    default=lambda: os.environ.get("CLEANROOM_FEDERATION", str(DEFAULT_FEDERATION)),
    show_default="$CLEANROOM_FEDERATION or .cleanroom/federation.json",
    help="federation.json written by 'cleanroom local up' (or by your operator).",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Machine-readable output."
)

_STATE_STYLE = {
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "red",
    JobState.REFUSED: "red",
    JobState.CANCELLED: "yellow",
}


def _show(view: JobView) -> None:
    j = view.job
    style = _STATE_STYLE.get(j.state, "cyan")
    out.print(
        f"[bold]{j.job_id}[/]  {j.job_type}  [{style}]{j.state.value}[/]"
        + (f" — {j.reason}" if j.reason else ""),
        highlight=False,
    )
    if not j.state.terminal:
        out.print(f"  progress: {j.progress}", highlight=False)
    for d in view.decisions:
        out.print(
            f"  {d.node}: {d.decision}" + (f" ({d.reason})" if d.reason else ""),
            highlight=False,
        )


_input_option = click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME=FILE",
    help="Your own input to your party of the job (e.g. rows=customers.csv); "
    "it stays on this machine except as the job's protocol sends it.",
)


def _read_inputs(inputs: tuple[str, ...]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for item in inputs:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise ConfigError(f"--input {item!r}: expected NAME=FILE")
        try:
            found[name] = Path(file).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"--input {name}: cannot read {file}: {exc.strerror}"
            ) from None
    return found


@click.group("job")
def job_group() -> None:
    """Submit, watch and fetch jobs."""


@job_group.command("submit")
@click.argument("spec", type=click.Path(path_type=Path, dir_okay=False))
@federation_option
@click.option("--wait", is_flag=True, help="Wait for the job to end, showing progress.")
@click.option(
    "--timeout", type=float, default=None, help="Give up waiting after N seconds."
)
@_input_option
@json_option
@handle_errors
def submit(
    spec: Path,
    federation: Path,
    wait: bool,
    timeout: float | None,
    inputs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Submit the job spec in SPEC (YAML)."""
    try:
        text = spec.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {spec}: {exc.strerror}") from None
    parse_spec(text)  # malformed specs fail here, before any connection
    local_inputs = _read_inputs(inputs)
    with Client.from_federation(federation) as client:
        view = client.submit(text, local_inputs=local_inputs)
        if not wait:
            print_json(view.as_dict()) if as_json else _show(view)
            if view.analyst_party and not as_json:
                out.print(
                    f"  this job needs your party: run `cleanroom job run "
                    f"{view.job.job_id}` (it waits for you)",
                    highlight=False,
                )
            return
        _run_to_end(client, view.job.job_id, timeout, as_json)


@job_group.command("run")
@click.argument("job_id")
@federation_option
@click.option(
    "--timeout", type=float, default=None, help="Give up waiting after N seconds."
)
@_input_option
@json_option
@handle_errors
def run(
    job_id: str,
    federation: Path,
    timeout: float | None,
    inputs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Run (or resume) your party of JOB_ID until the job ends, then show its result.

    Jobs whose type has an analyst party (e.g. homomorphic queries) wait for it;
    what it received is kept locally, so this can be stopped and run again."""
    local_inputs = _read_inputs(inputs)
    with Client.from_federation(federation) as client:
        if local_inputs:
            client.provide_inputs(job_id, local_inputs)
        _run_to_end(client, job_id, timeout, as_json)


def _run_to_end(
    client: Client, job_id: str, timeout: float | None, as_json: bool
) -> None:
    final = _wait(client, job_id, timeout)
    doc: dict[str, Any] = final.as_dict()
    if final.job.state == JobState.SUCCEEDED:
        doc["result"] = client.result(final.job.job_id)
    if as_json:
        print_json(doc)
    else:
        _show(final)
        if "result" in doc:
            print_json(doc["result"]["result"])
    if final.job.state != JobState.SUCCEEDED:
        sys.exit(EXIT_FAILED)


def _wait(client: Client, job_id: str, timeout: float | None) -> JobView:
    started = time.monotonic()
    with err.status(f"{job_id}: submitted") as status:

        def update(view: JobView) -> None:
            elapsed = time.monotonic() - started
            mine = ""
            if view.analyst_party and not view.job.state.terminal:
                mine = f"; your party: {client.session(job_id).progress().describe()}"
            status.update(
                f"{job_id}: {view.job.state.value} — {view.job.progress}{mine} "
                f"[dim]({elapsed:.0f}s)[/]"
            )

        return client.wait(job_id, timeout=timeout, on_update=update)


@job_group.command("status")
@click.argument("job_id")
@federation_option
@json_option
@handle_errors
def status(job_id: str, federation: Path, as_json: bool) -> None:
    """Show a job's state, progress and each node's decision."""
    with Client.from_federation(federation) as client:
        view = client.status(job_id)
        if as_json:
            doc = view.as_dict()
            doc["events"] = [e.__dict__ for e in client.events(job_id)]
            print_json(doc)
        else:
            _show(view)
            for e in client.events(job_id):
                out.print(
                    f"  [dim]{time.strftime('%H:%M:%S', time.localtime(e.at))}[/] "
                    f"{e.kind}: {e.detail}",
                    highlight=False,
                )


@job_group.command("result")
@click.argument("job_id")
@federation_option
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Save the signed result document (for 'result verify').",
)
@handle_errors
def result(job_id: str, federation: Path, out_path: Path | None) -> None:
    """Print (or save) a finished job's released, signed result document.

    For a job the analyst takes part in, the analyst's reading (what the released
    document is sealed to, e.g. the nodes' reports) is saved beside it as
    ``<name>.opened.json``, with what it was read from; ``cleanroom result
    verify`` checks both."""
    with Client.from_federation(federation) as client:
        if out_path is None:
            print_json(client.result(job_id))
            return
        out_path.write_bytes(client.result_bytes(job_id))
        out.print(f"saved {out_path}", highlight=False)
        if client.status(job_id).analyst_party:
            opened = opened_path(out_path)
            opened.write_text(json.dumps(client.opened(job_id).to_json(), indent=1))
            out.print(
                f"saved {opened} (what the release is sealed to)", highlight=False
            )


def opened_path(result_file: Path) -> Path:
    return result_file.with_name(result_file.stem + ".opened.json")


@job_group.command("cancel")
@click.argument("job_id")
@click.option("--reason", default="", help="Why, for the record.")
@federation_option
@json_option
@handle_errors
def cancel(job_id: str, reason: str, federation: Path, as_json: bool) -> None:
    """Cancel a job that has not ended."""
    with Client.from_federation(federation) as client:
        view = client.cancel(job_id, reason)
        print_json(view.as_dict()) if as_json else _show(view)


@job_group.command("list")
@click.option("--limit", type=int, default=50)
@federation_option
@json_option
@handle_errors
def list_jobs(limit: int, federation: Path, as_json: bool) -> None:
    """List your jobs, newest first."""
    with Client.from_federation(federation) as client:
        views = client.list_jobs(limit=limit)
    if as_json:
        print_json([v.as_dict() for v in views])
        return
    table = Table("job", "type", "state", "reason", "submitted")
    for v in views:
        table.add_row(
            v.job.job_id,
            v.job.job_type,
            v.job.state.value,
            v.job.reason,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.job.created_at)),
        )
    out.print(table)


@click.command("catalog")
@federation_option
@json_option
@handle_errors
def catalog(federation: Path, as_json: bool) -> None:
    """Browse nodes and their datasets' public metadata."""
    with Client.from_federation(federation) as client:
        entries = client.catalog()
    if as_json:
        print_json(
            [
                {
                    "node": e.node,
                    "connected": e.connected,
                    "datasets": [
                        {
                            "name": d.name,
                            "rows": d.row_bucket,
                            "id_column": d.id_column,
                            "columns": {c.name: c.type for c in d.columns},
                        }
                        for d in e.datasets
                    ],
                    "assets": [
                        {
                            "name": a.name,
                            "kind": a.kind,
                            "description": a.description,
                            "document": json.loads(a.document_json),
                        }
                        for a in e.assets
                    ],
                }
                for e in entries
            ]
        )
        return
    table = Table("node", "connected", "dataset", "rows", "columns")
    for e in entries:
        for d in e.datasets:
            table.add_row(
                e.node,
                "yes" if e.connected else "no",
                d.name,
                d.row_bucket,
                ", ".join(f"{c.name}:{c.type}" for c in d.columns),
            )
        for a in e.assets:
            table.add_row(
                e.node, "yes" if e.connected else "no", f"{a.name} ({a.kind})", "",
                a.description,
            )  # fmt: skip
    out.print(table)
