"""``cleanroom sandbox``: build the sandbox image, write sandbox job specs; and the
holder's view of a sandbox job's code under ``cleanroom node jobs --show``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import yaml
from rich.table import Table

from cleanroom.cli.common import EXIT_FAILED, err, handle_errors, out
from cleanroom.errors import SandboxError
from cleanroom.jobspec import parse_spec
from cleanroom.jobtypes.sandbox_job import (
    DEFAULT_ENTRYPOINT,
    DEFAULT_TIMEOUT_S,
    bundle_files,
    make_spec,
    parse_params,
    review,
)
from node.state import LocalJob, NodeState

NO_ENGINE_HELP = (
    "no Docker engine is reachable, so the sandbox image cannot be built here. "
    "Start one (as root: bash scripts/setup-docker.sh, or your distribution's "
    "docker service) and retry. A node without Docker refuses sandbox jobs unless "
    "its holder sets sandbox.allow_unshare_fallback = true (weaker isolation; see "
    "docs/sandbox.md)."
)


@click.group("sandbox")
def sandbox_group() -> None:
    """Run analysts' own code on a node's data, in a locked-down sandbox."""


@sandbox_group.command("build-image")
@click.option("--force", is_flag=True, help="Rebuild even if the image exists.")
@handle_errors
def build_image_command(force: bool) -> None:
    """Build the sandbox's Docker image (Debian packages, ~2 minutes the first
    time) and print its tag."""
    from sandbox import build_image, docker_client

    try:
        client = docker_client()
    except SandboxError as exc:
        err.print(f"[red]error:[/] {NO_ENGINE_HELP}\n({exc})", highlight=False)
        sys.exit(EXIT_FAILED)
    with err.status("building the sandbox image") as status:

        def progress(message: str) -> None:
            status.update(message)
            err.print(f"[dim]{message}[/]", highlight=False)

        tag = build_image(client=client, progress=progress, force=force)
    click.echo(tag)


@sandbox_group.command("spec")
@click.argument(
    "code_dir", type=click.Path(path_type=Path, file_okay=False, exists=True)
)
@click.option("--node", required=True, help="The node holding the dataset.")
@click.option("--dataset", required=True, help="The dataset the code reads.")
@click.option("--purpose", required=True, help="What the result is for.")
@click.option("--entrypoint", default=DEFAULT_ENTRYPOINT, show_default=True)
@click.option(
    "--timeout", "timeout", type=float, default=DEFAULT_TIMEOUT_S, show_default=True
)
@click.option("--outputs", default=None, help="What the code writes to /output.")
@click.option(
    "--column", "columns", multiple=True, help="Mount only these columns (repeat)."
)
@click.option("--description", default="")
@handle_errors
def spec_command(
    code_dir: Path,
    node: str,
    dataset: str,
    purpose: str,
    entrypoint: str,
    timeout: float,
    outputs: str | None,
    columns: tuple[str, ...],
    description: str,
) -> None:
    """Write a sandbox job spec for the code in CODE_DIR to stdout."""
    click.echo(
        make_spec(
            code_dir,
            inputs=[(node, dataset)],
            purpose=purpose,
            entrypoint=entrypoint,
            timeout_seconds=timeout,
            outputs=outputs,
            columns=list(columns) or None,
            description=description,
        ),
        nl=False,
    )


# ------------------------------------------------- the holder's review view --
def review_document(job: LocalJob, state: NodeState) -> dict[str, Any]:
    """A sandbox job's code review and held output, as plain data."""
    spec = parse_spec(job.spec_yaml)
    seen = review(spec)
    held = state.output_review(job.job_id)
    return {
        "digest": seen.digest,
        "approved_for_dataset": state.digest_approved(job.dataset, seen.digest),
        "entrypoint": seen.entrypoint,
        "timeout_seconds": seen.timeout_s,
        "outputs": seen.outputs,
        "columns": list(seen.columns) if seen.columns else "every permitted column",
        "files": [{"path": p, "bytes": n} for p, n in seen.files],
        "findings": [str(f) for f in seen.findings],
        "held_output": None
        if held is None
        else {
            "status": held.status.value,
            "reasons": list(held.reasons),
            "reason": held.reason,
        },
    }


def print_review(job: LocalJob, state: NodeState) -> None:
    """Show the holder the bundle: files, digest, static findings, held output."""
    doc = review_document(job, state)
    out.print(
        f"[bold]{job.job_id}[/] sandbox on '{job.dataset}' by {job.analyst} for "
        f"'{job.purpose}': {job.status.value} {job.reason}",
        highlight=False,
    )
    out.print(f"code bundle sha256: [bold]{doc['digest']}[/]", highlight=False)
    if doc["approved_for_dataset"]:
        out.print("[green]you approved this exact code for this dataset before[/]")
    columns = doc["columns"]
    out.print(
        f"runs: python3 /code/{doc['entrypoint']} (timeout "
        f"{doc['timeout_seconds']:g}s) on /data/data.csv with "
        + (columns if isinstance(columns, str) else ", ".join(columns)),
        highlight=False,
        markup=False,
    )
    if doc["outputs"] is not None:
        out.print(f"declared outputs: {doc['outputs']}", highlight=False, markup=False)
    files = Table("file", "bytes")
    for entry in doc["files"]:
        files.add_row(entry["path"], str(entry["bytes"]))
    out.print(files)
    if doc["findings"]:
        out.print(
            "[yellow]static findings[/] (aids for your review, not the security "
            "boundary: the sandbox is):"
        )
        for finding in doc["findings"]:
            out.print(f"  {finding}", highlight=False, markup=False)
    else:
        out.print("static findings: none (the sandbox confines the code regardless)")
    held = doc["held_output"]
    if held is not None:
        out.print(f"[bold]output {held['status']}[/] {held['reason']}", highlight=False)
        for reason in held["reasons"]:
            out.print(f"  - {reason}", highlight=False, markup=False)
    out.print(spec_without_bundle(job.spec_yaml), highlight=False, markup=False)
    out.print(
        "read every file with --source; approve this exact code with "
        f"`cleanroom node approve {job.job_id} --digest {doc['digest'][:16]}`",
        highlight=False,
        markup=False,
    )


def print_source(job: LocalJob) -> None:
    """Print every file of the bundle, for reading it in full."""
    files = bundle_files(parse_params(parse_spec(job.spec_yaml)).bundle)
    for name, data in sorted(files.items()):
        click.echo(f"===== {name} =====")
        click.echo(data.decode("utf-8", errors="replace"))


def spec_without_bundle(spec_yaml: str) -> str:
    """The spec as YAML with the (long) base64 bundle elided."""
    doc = yaml.safe_load(spec_yaml)
    if isinstance(doc, dict) and isinstance(doc.get("params"), dict):
        doc["params"]["bundle"] = "<code bundle: see the files above>"
    return str(yaml.safe_dump(doc, sort_keys=False))
