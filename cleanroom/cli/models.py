"""``cleanroom model list | show | export``: the coordinator's model registry, and
the trained model the analyst's sealed result holds, written as a file. Every job
type that trains models plugs in through ``JobType.model_card`` and
``JobType.export_model``; none is named here."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.table import Table

from cleanroom import jobtypes
from cleanroom.cli.common import handle_errors, out, print_json
from cleanroom.cli.jobs import federation_option, json_option
from cleanroom.client import Client
from cleanroom.errors import SpecError
from cleanroom.jobspec import parse_spec


@click.group("model")
def model_group() -> None:
    """Trained models: the registry's model cards, and export of the weights."""


@model_group.command("list")
@click.option("--limit", type=int, default=50)
@federation_option
@json_option
@handle_errors
def list_models(limit: int, federation: Path, as_json: bool) -> None:
    """Your trained models, newest first."""
    with Client.from_federation(federation) as client:
        entries = client.models(limit=limit)
    cards = [json.loads(e.card_json) for e in entries]
    if as_json:
        print_json(cards)
        return
    table = Table("job", "type", "algorithm", "rounds", "final metric", "epsilon",
                  "registered")  # fmt: skip
    for entry, card in zip(entries, cards, strict=True):
        final = card.get("final_metrics") or {}
        metric = next(
            (f"{k} {final[k]:.4f}" for k in ("val_accuracy", "val_auc", "val_r2")
             if isinstance(final.get(k), int | float)),
            f"loss {final.get('train_loss', float('nan')):.4f}",
        )  # fmt: skip
        table.add_row(
            entry.job_id,
            entry.job_type,
            str(card.get("algorithm", "")),
            str(card.get("rounds_run", "")),
            metric,
            f"{(card.get('epsilon') or {}).get('charged', 0.0):g}",
            time.strftime("%Y-%m-%d %H:%M", time.gmtime(entry.created_at)),
        )
    out.print(table)


@model_group.command("show")
@click.argument("job_id")
@federation_option
@handle_errors
def show(job_id: str, federation: Path) -> None:
    """Print a model's card: inputs, algorithm, hyperparameters, metrics, epsilon,
    audit references."""
    with Client.from_federation(federation) as client:
        print_json(json.loads(client.model(job_id).card_json))


def _formats_help() -> str:
    offered = {fmt for t in jobtypes.all_types() for fmt in t.export_formats()}
    return (
        "File format (default: the job type's first). Offered by the installed "
        f"job types: {', '.join(sorted(offered)) or 'none'}."
    )


@model_group.command("export")
@click.argument("job_id")
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path),
    required=True,
    help="File to write.",
)
@click.option("--format", "fmt", default=None, help=_formats_help())
@federation_option
@handle_errors
def export(job_id: str, out_path: Path, fmt: str | None, federation: Path) -> None:
    """Write the trained model from your sealed result as a standard file
    (e.g. JSON for scikit-learn, ONNX for onnxruntime, a model asset)."""
    with Client.from_federation(federation) as client:
        entry = client.model(job_id)
        opened = client.opened(job_id)
    # The job type and inputs come from the spec the analyst signed (the job id
    # is its hash), not from the coordinator's registry entry.
    spec = parse_spec(opened.spec_yaml)
    if spec.type != entry.job_type:
        raise SpecError("type", "the registry entry does not match the signed spec")
    job_type = jobtypes.get(spec.type)
    formats = list(job_type.export_formats())
    if fmt is not None and fmt not in formats:
        raise SpecError(
            "format",
            f"'{spec.type}' models export as {', '.join(formats) or 'nothing'}",
        )
    data = job_type.export_model(opened.reading, fmt, spec=spec, job_id=job_id)
    out_path.write_bytes(data)
    out.print(f"saved {out_path}", highlight=False)
