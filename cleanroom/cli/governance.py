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

from cleanroom.audit.log import AuditLog
from cleanroom.audit.verify import job_history, verify_export
from cleanroom.cli.common import EXIT_FAILED, handle_errors, out
from cleanroom.errors import ConfigError, CryptoError
from cleanroom.federation import Federation
from cleanroom.keys import NodeKeys
from cleanroom.opened import verify_opened_file
from cleanroom.provenance import head_from_dict, verify_result_bytes


def node_database(data_dir: Path) -> Path:
    from node.state import node_database as path_of

    return path_of(data_dir)


def _node_config(path: Path):  # type: ignore[no-untyped-def]
    from node.config import NodeConfig

    return NodeConfig.load(path)


def _export_log(db: Path, keys_file: Path, owner: str, dest: Path) -> Path:
    """Export the audit log kept in ``db`` (a node's database or the coordinator's
    own audit file)."""
    if not db.exists():
        raise ConfigError(f"no audit log at {db}")
    keys = NodeKeys.load_or_create(keys_file)
    with AuditLog(db, owner=owner, signing_key=keys.signing) as log:
        log.export(dest)
    return dest


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
        node = _node_config(config)
        written.append(
            _export_log(
                node_database(node.data_dir),
                node.data_dir / "node.keys",
                node.name,
                out_path,
            )
        )
    elif coordinator_config:
        from coordinator.config import CoordinatorConfig

        coord = CoordinatorConfig.load(coordinator_config)
        written.append(
            _export_log(
                coord.data_dir / "audit.db",
                coord.data_dir / "coordinator.keys",
                coord.name,
                out_path,
            )
        )
    elif workdir:
        fed = Federation.load(workdir / "federation.json")
        out_path.mkdir(parents=True, exist_ok=True)
        written.append(
            _export_log(
                workdir.resolve() / "coordinator" / "data" / "audit.db",
                workdir.resolve() / "coordinator" / "data" / "coordinator.keys",
                fed.coordinator_name,
                out_path / "coordinator.jsonl",
            )
        )
        for name, info in fed.nodes.items():
            node = _node_config(Path(info["config"]))
            written.append(
                _export_log(
                    node_database(node.data_dir),
                    node.data_dir / "node.keys",
                    name,
                    out_path / f"{name}.jsonl",
                )
            )
    else:
        raise ConfigError("give --config, --coordinator-config or --workdir")
    for path in written:
        out.print(f"exported {path}", highlight=False)


def _heads_recorded_in(path: Path) -> list:  # type: ignore[type-arg]
    heads = []
    for line in path.read_text().splitlines():
        obj = json.loads(line)
        if obj.get("kind") == "coordinator.head":
            heads.append(head_from_dict(obj["data"]))
    return heads


@audit_group.command("verify")
@click.argument(
    "exports", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True)
)
@click.option(
    "--trusted-key",
    "trusted",
    multiple=True,
    metavar="NAME=HEX",
    help="Pin a party's Ed25519 audit key (e.g. from its key bundle).",
)
@click.option(
    "--known-heads-from",
    "known_from",
    multiple=True,
    type=click.Path(path_type=Path, exists=True),
    help="A node's export: check this log is consistent with the coordinator "
    "heads that node co-signed (detects forks and rollbacks).",
)
@handle_errors
def audit_verify(
    exports: tuple[Path, ...], trusted: tuple[str, ...], known_from: tuple[Path, ...]
) -> None:
    """Check exported logs offline: chain, Merkle root, signatures, cosignatures."""
    pinned: dict[str, bytes] = {}
    for item in trusted:
        name, _, hexkey = item.partition("=")
        try:
            pinned[name] = bytes.fromhex(hexkey)
        except ValueError:
            raise ConfigError(f"--trusted-key {item}: expected NAME=HEX") from None
    # Logs checked together vouch for each other's cosignatures with their owners'
    # keys; a pinned key must agree with the key a log embeds, or the check fails.
    owners = {path: _owner_of(path) for path in exports}
    keys = {owner: key for owner, key in owners.values()}
    keys.update(pinned)
    known = [h for path in known_from for h in _heads_recorded_in(path)]
    for path in exports:
        owner = owners[path][0]
        report = verify_export(
            path, trusted_keys=keys, known_heads=[h for h in known if h.owner == owner]
        )
        out.print(
            f"[green]OK[/] {path}: {report.owner}, {report.entries} entries, root "
            f"{report.root[:16]}…, {report.heads} signed heads, cosigned by "
            f"{', '.join(report.cosigners) or 'nobody yet'}",
            highlight=False,
        )


def _owner_of(path: Path) -> tuple[str, bytes]:
    try:
        header = json.loads(path.read_text().splitlines()[0])
        return str(header["owner"]), bytes.fromhex(header["public_key"])
    except (ValueError, KeyError, IndexError):
        raise ConfigError(f"{path}: not an audit export") from None


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
    if ca is None:
        fed = Federation.load(federation or Path(".cleanroom") / "federation.json")
        ca = fed.ca
    try:
        verified = verify_result_bytes(
            result_file.read_bytes(), ca.read_bytes(), allow_partial=allow_partial
        )
    except (ValueError, CryptoError, KeyError, TypeError) as exc:
        out.print(f"[red]INVALID[/] {result_file}: {exc}", highlight=False)
        sys.exit(EXIT_FAILED)
    opened = result_file.with_name(result_file.stem + ".opened.json")
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
