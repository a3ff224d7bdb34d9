"""Controllable and countable: ``audit``, ``usage``, ``result`` and ``node usage``."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path

import click
from rich.table import Table

from cleanroom.audit.ledgers import verify_ledgers
from cleanroom.audit.log import AuditLog
from cleanroom.audit.verify import job_history
from cleanroom.cli.common import EXIT_FAILED, handle_errors, out
from cleanroom.cli.jobs import opened_path
from cleanroom.errors import ConfigError, CryptoError
from cleanroom.federation import Federation
from cleanroom.keys import NodeKeys, make_key_bundle
from cleanroom.opened import verify_opened_file
from cleanroom.pki import TlsIdentity
from cleanroom.provenance import verify_result_bytes


def node_database(data_dir: Path) -> Path:
    from node.state import node_database as path_of

    return path_of(data_dir)


def _node_config(path: Path):  # type: ignore[no-untyped-def]
    from node.config import NodeConfig

    return NodeConfig.load(path)


def _export_log(
    db: Path, keys_file: Path, owner: str, dest: Path, tls: TlsIdentity, role: str
) -> Path:
    """Export the audit log kept in ``db`` (a node's database or the coordinator's
    own audit file), with the owner's CA-signed key bundle."""
    if not db.exists():
        raise ConfigError(f"no audit log at {db}")
    keys = NodeKeys.load_or_create(keys_file)
    bundle = make_key_bundle(owner, keys, tls, role=role).to_bytes()
    with AuditLog(db, owner=owner, signing_key=keys.signing) as log:
        log.export(dest, bundle=bundle)
    return dest


def _export_coordinator(config: Path, dest: Path) -> Path:
    from coordinator.config import CoordinatorConfig

    coord = CoordinatorConfig.load(config)
    return _export_log(
        coord.data_dir / "audit.db",
        coord.data_dir / "coordinator.keys",
        coord.name,
        dest,
        coord.identity(),
        "coordinator",
    )


def _export_node(config: Path, dest: Path) -> Path:
    node = _node_config(config)
    return _export_log(
        node_database(node.data_dir),
        node.data_dir / "node.keys",
        node.name,
        dest,
        node.identity(),
        "node",
    )


# ----------------------------------------------------------------- audit --
@click.group("audit")
def audit_group() -> None:
    """Export, verify and read the hash-chained, signed audit ledgers."""


@audit_group.command("export")
@click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A node's config: export its log.",
)
@click.option(
    "--coordinator-config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The coordinator's config: export its log.",
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    help="A local federation: export every party's log.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path),
    required=True,
    help="The export file (or folder with --workdir).",
)
@handle_errors
def audit_export(
    config: Path | None,
    coordinator_config: Path | None,
    workdir: Path | None,
    out_path: Path,
) -> None:
    """Write a self-contained, signed export of an audit log for offline checks."""
    written: list[Path] = []
    if config:
        written.append(_export_node(config, out_path))
    elif coordinator_config:
        written.append(_export_coordinator(coordinator_config, out_path))
    elif workdir:
        fed = Federation.load(workdir / "federation.json")
        out_path.mkdir(parents=True, exist_ok=True)
        coordinator = workdir.resolve() / "coordinator" / "coordinator.toml"
        written.append(_export_coordinator(coordinator, out_path / "coordinator.jsonl"))
        for name, info in fed.nodes.items():
            written.append(
                _export_node(Path(info["config"]), out_path / f"{name}.jsonl")
            )
    else:
        raise ConfigError("give --config, --coordinator-config or --workdir")
    for path in written:
        out.print(f"exported {path}", highlight=False)


@audit_group.command("verify")
@click.argument(
    "exports", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True)
)
@click.option(
    "--ca",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="The federation's CA certificate (default: the federation file's).",
)
@click.option("--federation", type=click.Path(path_type=Path), default=None)
@click.option(
    "--allow-unwitnessed",
    is_flag=True,
    help="Report, instead of failing on, entries no other party's co-signed head "
    "covers yet.",
)
@handle_errors
def audit_verify(
    exports: tuple[Path, ...],
    ca: Path | None,
    federation: Path | None,
    allow_unwitnessed: bool,
) -> None:
    """Check exported logs offline and against each other: chain, Merkle roots,
    signatures with keys the CA vouches for, every head another party witnessed,
    and that every entry is covered by a head another party co-signed."""
    ca_pem = _ca_pem(ca, federation)
    for checked in verify_ledgers(
        list(exports), ca_pem=ca_pem, allow_unwitnessed=allow_unwitnessed
    ):
        r = checked.report
        out.print(
            f"[green]OK[/] {checked.path}: {r.owner}, {r.entries} entries, root "
            f"{r.root[:16]}…, {r.heads} signed heads, cosigned by "
            f"{', '.join(c for c in r.cosigners if c != r.owner) or 'nobody'}; held "
            f"to {checked.held_to} heads others witnessed",
            highlight=False,
        )
        if checked.unwitnessed is not None:
            first, last = checked.unwitnessed
            out.print(
                f"[bold yellow]UNWITNESSED[/] {r.owner}: entries {first}..{last} "
                "are covered by no head another party co-signed",
                highlight=False,
            )


def _ca_pem(ca: Path | None, federation: Path | None) -> bytes:
    if ca is None:
        fed = Federation.load(federation or Path(".cleanroom") / "federation.json")
        ca = fed.ca
    return ca.read_bytes()


@audit_group.command("show")
@click.option("--job", "job_id", required=True)
@click.argument(
    "exports", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True)
)
@handle_errors
def audit_show(job_id: str, exports: tuple[Path, ...]) -> None:
    """A job's whole history across parties, from their verified exports."""
    for event in job_history(list(exports), job_id):
        e = event.entry
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.timestamp))
        out.print(
            f"{stamp}  [bold]{event.log:<12}[/] {e.kind:<22} "
            f"{json.dumps(e.data, sort_keys=True)[:120]}",
            highlight=False,
            markup=True,
        )


# ---------------------------------------------------------------- result --
@click.group("result")
def result_group() -> None:
    """Check released results."""


@result_group.command("verify")
@click.argument(
    "result_file", type=click.Path(path_type=Path, exists=True, dir_okay=False)
)
@click.option(
    "--ca",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="The federation CA certificate (default: from --federation).",
)
@click.option("--federation", type=click.Path(path_type=Path), default=None)
@click.option(
    "--allow-partial",
    is_flag=True,
    help="Accept a result some inputs did not sign (they are named).",
)
@handle_errors
def result_verify(
    result_file: Path, ca: Path | None, federation: Path | None, allow_partial: bool
) -> None:
    """Verify offline that every input's node signed exactly this result document,
    and that every value a node vouched for is the released one."""
    ca_pem = _ca_pem(ca, federation)
    try:
        verified = verify_result_bytes(
            result_file.read_bytes(), ca_pem, allow_partial=allow_partial
        )
    except (ValueError, CryptoError, KeyError, TypeError) as exc:
        out.print(f"[red]INVALID[/] {result_file}: {exc}", highlight=False)
        sys.exit(EXIT_FAILED)
    opened = opened_path(result_file)
    if opened.exists():
        try:
            verify_opened_file(result_file.read_bytes(), opened.read_bytes())
        except (ValueError, CryptoError, KeyError, TypeError) as exc:
            out.print(f"[red]INVALID[/] {opened}: {exc}", highlight=False)
            sys.exit(EXIT_FAILED)
        out.print(
            f"[green]OPENED[/] {opened}: the reading replays from the signed "
            "release (the nodes' sealed parts checked as the analyst checked them)",
            highlight=False,
        )
    if verified.missing:
        out.print(
            f"[bold red]PARTIAL[/] {verified.job_id}: NOT signed by "
            f"{', '.join(verified.missing)} — their part is unverified",
            highlight=False,
        )
    out.print(
        f"[green]VERIFIED[/] {verified.job_id}: output {verified.output_hash[:16]}… "
        f"signed by {', '.join(verified.signers)}; {verified.checked} released "
        "values checked against what the nodes computed",
        highlight=False,
    )


# ----------------------------------------------------------------- usage --
def _meters(config: Path):  # type: ignore[no-untyped-def]
    from cleanroom.localdb import LocalDatabase
    from node.meters import Meters

    node = _node_config(config)
    path = node_database(node.data_dir)
    if not path.exists():
        raise ConfigError(f"no meters at {path}: has the node run?")
    return node, Meters(LocalDatabase(path))


def usage_table(config: Path) -> Table:
    node, meters = _meters(config)
    table = Table(
        "analyst",
        "dataset",
        "meter",
        "today",
        "total",
        "reserved",
        "remaining",
        title=f"usage on {node.name}",
    )
    try:
        for row in meters.usage():
            remaining = row.remaining()
            table.add_row(
                row.analyst,
                row.dataset,
                row.meter,
                f"{row.used_today:g}",
                f"{row.used_total:g}",
                f"{row.reserved_total:g}",
                "unlimited" if remaining is None else f"{remaining:g}",
            )
    finally:
        meters.close()
    return table


@click.command("usage")
@click.option(
    "--config", "config", type=click.Path(path_type=Path, dir_okay=False), required=True
)
@handle_errors
def node_usage(config: Path) -> None:
    """Meters and remaining quota per analyst and dataset."""
    out.print(usage_table(config))


@click.group("usage")
def usage_group() -> None:
    """Billing statements for the exchange."""


@usage_group.command("export")
@click.option(
    "--csv", "as_csv", is_flag=True, required=True, help="CSV (the only format)."
)
@click.option(
    "--config",
    "configs",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="A node's config.",
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    help="Every node of a local federation.",
)
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=None)
@handle_errors
def usage_export(
    as_csv: bool, configs: tuple[Path, ...], workdir: Path | None, out_path: Path | None
) -> None:
    """One row per settled or released job and meter: the billing statement."""
    paths = list(configs)
    if workdir:
        paths += [
            Path(i["config"])
            for i in Federation.load(workdir / "federation.json").nodes.values()
        ]
    if not paths:
        raise ConfigError("give --config NODE.toml (repeatable) or --workdir")
    buffer = io.StringIO()
    writer = None
    for config in paths:
        node, meters = _meters(config)
        part = io.StringIO()
        try:
            meters.export_csv(part)
        finally:
            meters.close()
        rows = list(csv.reader(io.StringIO(part.getvalue())))
        if writer is None:
            writer = csv.writer(buffer)
            writer.writerow(["node", *rows[0]])
        for row in rows[1:]:
            writer.writerow([node.name, *row])
    if out_path:
        out_path.write_text(buffer.getvalue())
    else:
        click.echo(buffer.getvalue(), nl=False)
