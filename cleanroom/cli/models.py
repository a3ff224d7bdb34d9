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


@model_group.command("export")
@click.argument("job_id")
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path),
    required=True,
    help="File to write (JSON; load it with the job type's loader).",
)
@federation_option
@handle_errors
def export(job_id: str, out_path: Path, federation: Path) -> None:
    """Write the trained model from your sealed result as a standard file."""
    with Client.from_federation(federation) as client:
        entry = client.model(job_id)
        reading = client.result(job_id)["result"]
    data = jobtypes.get(entry.job_type).export_model(reading)
    out_path.write_bytes(data)
    out.print(f"saved {out_path}", highlight=False)
