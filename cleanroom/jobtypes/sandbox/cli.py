"""The sandbox's commands: ``cleanroom sandbox build-image | spec`` for analysts and
operators, ``cleanroom node release | reject`` for the holder's held output, and
what ``cleanroom node jobs --show`` tells the holder about a sandbox job's code."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import click
import yaml
from rich.console import Console
from rich.table import Table

from cleanroom.cli.common import EXIT_FAILED, err, handle_errors, out
from cleanroom.errors import SandboxError
from cleanroom.jobtypes.base import Review
from cleanroom.jobtypes.hooks import HolderContext, open_holder
from cleanroom.jobtypes.sandbox.book import SandboxBook
from cleanroom.jobtypes.sandbox.params import (
    DEFAULT_ENTRYPOINT,
    DEFAULT_TIMEOUT_S,
    NAME,
    SandboxParams,
    make_spec,
    review,
)

NO_ENGINE_HELP = (
    "no Docker engine is reachable, so the sandbox image cannot be built here. "
    "Start one (as root: bash scripts/setup-docker.sh, or your distribution's "
    "docker service) and retry. A node without Docker refuses sandbox jobs unless "
    "its holder sets allow_unshare_fallback = true under [jobtypes.sandbox] "
    "(weaker isolation; see docs/sandbox.md)."
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


# ------------------------------------------------------ the holder's commands --
_config = click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The node's TOML config file.",
)


@click.command("release")
@click.argument("job_id")
@_config
@click.option("--reason", default="released by the data holder after review")
@handle_errors
def node_release(job_id: str, config: Path, reason: str) -> None:
    """Release a sandbox job's held output to the analyst anyway."""
    SandboxBook(open_holder(config, NAME).db).decide_output(job_id, True, reason)
    out.print(f"{job_id}: output released")


@click.command("reject")
@click.argument("job_id")
@_config
@click.option("--reason", required=True, help="Told to the analyst.")
@handle_errors
def node_reject(job_id: str, config: Path, reason: str) -> None:
    """Reject a sandbox job's held output; the job fails with your reason."""
    SandboxBook(open_holder(config, NAME).db).decide_output(job_id, False, reason)
    out.print(f"{job_id}: output rejected")


# ------------------------------------------------- the holder's review view --
def review_document(
    params: SandboxParams, job_id: str, dataset: str, book: SandboxBook
) -> dict[str, Any]:
    """A sandbox job's code review and held output, as plain data."""
    seen = review(params)
    held = book.output_review(job_id)
    return {
        "digest": seen.digest,
        "approved_for_dataset": book.digest_approved(dataset, seen.digest),
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


def holder_review(
    params: SandboxParams,
    job_id: str,
    dataset: str,
    spec_yaml: str,
    holder: HolderContext,
) -> Review:
    """What ``cleanroom node jobs --show`` prints for a sandbox job."""
    doc = review_document(params, job_id, dataset, SandboxBook(holder.db))
    buffer = io.StringIO()
    show = Console(file=buffer, width=100, color_system=None)
    show.print(f"code bundle sha256: {doc['digest']}", highlight=False, markup=False)
    if doc["approved_for_dataset"]:
        show.print("you approved this exact code for this dataset before")
    columns = doc["columns"]
    show.print(
        f"runs: python3 /code/{doc['entrypoint']} (timeout "
        f"{doc['timeout_seconds']:g}s) on /data/data.csv with "
        + (columns if isinstance(columns, str) else ", ".join(columns)),
        highlight=False,
        markup=False,
    )
    if doc["outputs"] is not None:
        show.print(f"declared outputs: {doc['outputs']}", highlight=False, markup=False)
    files = Table("file", "bytes")
    for entry in doc["files"]:
        files.add_row(entry["path"], str(entry["bytes"]))
    show.print(files)
    if doc["findings"]:
        show.print(
            "static findings (aids for your review, not the security boundary: "
            "the sandbox is):"
        )
        for finding in doc["findings"]:
            show.print(f"  {finding}", highlight=False, markup=False)
    else:
        show.print("static findings: none (the sandbox confines the code regardless)")
    held = doc["held_output"]
    if held is not None:
        show.print(f"output {held['status']} {held['reason']}", highlight=False)
        for reason in held["reasons"]:
            show.print(f"  - {reason}", highlight=False, markup=False)
    show.print(spec_without_bundle(spec_yaml), highlight=False, markup=False)
    show.print(
        "read every file with --source; approve this exact code with "
        f"`cleanroom node approve {job_id} --digest {doc['digest'][:16]}`",
        highlight=False,
        markup=False,
    )
    source = "".join(
        f"===== {name} =====\n{data.decode('utf-8', errors='replace')}\n"
        for name, data in sorted(params.files.items())
    )
    return Review(tuple(buffer.getvalue().splitlines()), doc, source)


def spec_without_bundle(spec_yaml: str) -> str:
    """The spec as YAML with the (long) base64 bundle elided."""
    doc = yaml.safe_load(spec_yaml)
    if isinstance(doc, dict) and isinstance(doc.get("params"), dict):
        doc["params"]["bundle"] = "<code bundle: see the files above>"
    return str(yaml.safe_dump(doc, sort_keys=False))
