"""Commands for operators and data holders: pki, coordinator, node, local."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import click
from rich.table import Table

from cleanroom import jobtypes, logs, pki
from cleanroom import local as local_fed
from cleanroom.cli.common import err, handle_errors, out, print_json
from cleanroom.errors import ConfigError, NotFound
from cleanroom.jobspec import parse_spec
from cleanroom.jobtypes.hooks import HeldItem, HolderContext, HolderOpener
from cleanroom.localdb import LocalDatabase
from node.config import NodeConfig
from node.state import JobStatus, LocalJob, NodeState, node_database

config_option = click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The TOML config file.",
)


log_format_option = click.option(
    "--log-format",
    type=click.Choice(logs.FORMATS),
    default=None,
    help=f"text (default) or json: one JSON object per line (or ${logs.ENV}).",
)


def _logging(log_format: str | None = None) -> None:
    logs.configure(log_format)


# ------------------------------------------------------------------- pki --
@click.group("pki")
def pki_group() -> None:
    """A federation CA and the certificates of its parties."""


@pki_group.command("init")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=Path("pki"),
    show_default=True,
)
@click.option("--federation", default="cleanroom", show_default=True)
@handle_errors
def pki_init(directory: Path, federation: str) -> None:
    """Create the federation CA (ca.crt, ca.key)."""
    path = pki.init_ca(directory, federation=federation)
    out.print(f"federation CA written to {path}")


@pki_group.command("issue")
@click.option("--role", type=click.Choice(pki.ROLES), required=True)
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=Path("pki"),
    show_default=True,
    help="The CA directory.",
)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None)
@click.option("--dns", multiple=True, help="Extra DNS name for the certificate.")
@click.option("--ip", multiple=True, help="Extra IP address for the certificate.")
@click.option(
    "--org",
    "organisation",
    default="",
    help="An analyst's organisation, checked by node policies.",
)
@handle_errors
def pki_issue(
    role: str,
    name: str,
    directory: Path,
    out_dir: Path | None,
    dns: tuple[str, ...],
    ip: tuple[str, ...],
    organisation: str,
) -> None:
    """Issue a certificate and key for NAME in ROLE."""
    issued = pki.issue(
        directory,
        role,
        name,
        out_dir=out_dir,
        dns=dns,
        ips=ip,
        organisation=organisation,
    )
    out.print(f"{role} '{name}': {issued.cert_path} and {issued.key_path}")


# ------------------------------------------------------------ coordinator --
@click.group("coordinator")
def coordinator_group() -> None:
    """Run the coordinator (the exchange or platform operator)."""


@coordinator_group.command("serve")
@config_option
@log_format_option
@handle_errors
def coordinator_serve(config: Path, log_format: str | None) -> None:
    """Serve the node and analyst APIs until interrupted."""
    from coordinator.config import CoordinatorConfig
    from coordinator.server import serve

    _logging(log_format)
    serve(CoordinatorConfig.load(config))


# ------------------------------------------------------------------ node --
class _Holder(HolderOpener):
    """Opens a node's database for the holder's commands, from its config."""

    def __init__(self) -> None:
        self._open: dict[Path, tuple[NodeConfig, LocalDatabase]] = {}

    def config(self, path: Path) -> tuple[NodeConfig, LocalDatabase]:
        key = path.resolve()
        if key not in self._open:
            config = NodeConfig.load(path)
            jobtypes.load_plugins(config.plugins)
            db_path = node_database(config.data_dir)
            if not db_path.exists():
                raise ConfigError(
                    f"no node state at {db_path}: has the node been started?"
                )
            self._open[key] = (config, LocalDatabase(db_path))
        return self._open[key]

    def open(self, config: Path, job_type: str) -> HolderContext:
        node, db = self.config(config)
        return HolderContext(
            node.name, node.data_dir, db, node.jobtypes.get(job_type, {})
        )


@click.group("node")
@click.pass_context
def node_group(ctx: click.Context) -> None:
    """Run a data holder's node and decide on held jobs."""
    ctx.obj = _Holder()


@node_group.command("serve")
@config_option
@log_format_option
@handle_errors
def node_serve(config: Path, log_format: str | None) -> None:
    """Dial out to the coordinator and serve jobs until interrupted."""
    from node.agent import NodeAgent

    _logging(log_format)
    agent = NodeAgent(NodeConfig.load(config))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop())
    thread = threading.Thread(target=agent.run, name="agent")
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    agent.close()


def _state(config: Path) -> tuple[NodeState, _Holder]:
    holder = click.get_current_context().find_object(_Holder) or _Holder()
    return NodeState(holder.config(config)[1]), holder


@node_group.command("jobs")
@config_option
@click.option(
    "--all", "show_all", is_flag=True, help="Not only the jobs waiting for you."
)
@click.option(
    "--show", "show", default=None, metavar="JOB", help="Show one job in full."
)
@click.option(
    "--source", is_flag=True, help="With --show: print the job's code or material."
)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def node_jobs(
    config: Path, show_all: bool, show: str | None, source: bool, as_json: bool
) -> None:
    """List jobs held for your decision (or all jobs this node saw)."""
    state, holder = _state(config)
    if show:
        _show_job(state, holder, config, show, source=source, as_json=as_json)
        return
    jobs = state.jobs(status=None if show_all else JobStatus.PENDING)
    held: dict[str, HeldItem] = {}
    for job_type in jobtypes.all_types():
        for item in job_type.holder_waiting(holder.open(config, job_type.name)):
            try:
                if state.get(item.job_id).status == JobStatus.RUNNING:
                    held[item.job_id] = item
            except NotFound:
                continue
    if not show_all:  # work held for review inside a running job waits for you too
        jobs += [state.get(job_id) for job_id in held]
    if as_json:
        print_json(
            [
                {
                    **_public(j),
                    **(
                        {"waiting": held[j.job_id].status, "why": held[j.job_id].reason}
                        if j.job_id in held
                        else {}
                    ),
                }
                for j in jobs
            ]
        )
        return
    table = Table("job", "analyst", "type", "dataset", "purpose", "status", "reason")
    for j in jobs:
        status, reason = j.status.value, j.reason
        if j.job_id in held:
            status, reason = held[j.job_id].status, held[j.job_id].reason
        table.add_row(
            j.job_id, j.analyst, j.job_type, j.dataset, j.purpose, status, reason
        )
    out.print(table)


def _public(job: LocalJob) -> dict[str, object]:
    """A job for the holder's JSON: everything but the raw signed request bytes."""
    doc = {k: v for k, v in job.__dict__.items() if not isinstance(v, bytes)}
    doc["status"] = job.status.value
    return doc


def _show_job(
    state: NodeState,
    holder: _Holder,
    config: Path,
    job_id: str,
    *,
    source: bool,
    as_json: bool,
) -> None:
    job = state.get(job_id)
    spec = parse_spec(job.spec_yaml)
    review = jobtypes.get(spec.type).review(
        spec, job_id, holder.open(config, spec.type)
    )
    if as_json:
        print_json({**_public(job), "review": dict(review.document)})
        return
    if source:
        click.echo(review.source or job.spec_yaml, nl=False)
        return
    out.print(
        f"[bold]{job.job_id}[/] {job.job_type} on '{job.dataset}' by {job.analyst}"
        + (f" ({job.organisation})" if job.organisation else "")
        + f" for '{job.purpose}': {job.status.value} {job.reason}",
        highlight=False,
    )
    if review.lines:
        for line in review.lines:
            out.print(line, highlight=False, markup=False)
    else:
        out.print(job.spec_yaml, highlight=False, markup=False)


@node_group.command("approve")
@click.argument("job_id")
@config_option
@click.option("--reason", default="approved by the data holder")
@click.option(
    "--digest",
    default=None,
    metavar="PREFIX",
    help="Approve only if what you reviewed (e.g. the digest of a job's code) "
    "still starts with this.",
)
@handle_errors
def node_approve(job_id: str, config: Path, reason: str, digest: str | None) -> None:
    """Approve a held job; the running node reports it and reserves quota.

    The job type records what the approval covers in the same transaction (e.g.
    a job's exact code, by SHA-256, for the dataset, so changed code has another
    digest and needs its own approval)."""
    state, holder = _state(config)
    job = state.get(job_id)
    spec = parse_spec(job.spec_yaml)
    context = holder.open(config, spec.type)
    with context.db.transaction():
        state.holder_decide(job_id, True, reason)
        note = jobtypes.get(spec.type).holder_approved(spec, job_id, context, digest)
    out.print(f"{job_id}: approved" + (f" ({note})" if note else ""), highlight=False)


@node_group.command("deny")
@click.argument("job_id")
@config_option
@click.option("--reason", required=True, help="Told to the analyst.")
@handle_errors
def node_deny(job_id: str, config: Path, reason: str) -> None:
    """Refuse a held job with a reason."""
    _state(config)[0].holder_decide(job_id, False, reason)
    out.print(f"{job_id}: denied")


# ----------------------------------------------------------------- local --
@click.group("local")
def local_group() -> None:
    """A local federation on loopback for trying things out."""


def _parse_node(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise ConfigError(f"--node expects NAME=PATH.csv, got '{value}'")
    return name, Path(path)


@local_group.command("up")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=Path(".cleanroom"),
    show_default=True,
)
@click.option("--node", "nodes", multiple=True, required=True, metavar="NAME=PATH.csv")
@click.option(
    "--policy",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Policy YAML for every node (default: the local analyst may run anything).",
)
@click.option(
    "--node-timeout",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds without contact before a node counts as gone.",
)
@click.option(
    "--netns",
    is_flag=True,
    help="Root only: every party in its own network namespace, joined by a bridge.",
)
@handle_errors
def local_up(
    workdir: Path,
    nodes: tuple[str, ...],
    policy: Path | None,
    node_timeout: float,
    netns: bool,
) -> None:
    """Start a coordinator and one node per --node; return when all are connected."""
    started = time.monotonic()
    with err.status("starting") as status:
        fed = local_fed.up(
            workdir=workdir,
            nodes=[_parse_node(n) for n in nodes],
            policy=policy,
            node_timeout=node_timeout,
            netns=netns,
            progress=lambda msg: status.update(msg),
        )
    out.print(
        f"federation up in {time.monotonic() - started:.1f}s: coordinator at "
        f"{fed.coordinator_address}, nodes {', '.join(fed.nodes)}",
        highlight=False,
    )
    out.print(
        f"federation file: {workdir.resolve() / 'federation.json'}", highlight=False
    )


@local_group.command("status")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".cleanroom"))
@handle_errors
def local_status(workdir: Path) -> None:
    """Show processes and node connections."""
    print_json(local_fed.status(workdir))


@local_group.command("down")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".cleanroom"))
@handle_errors
def local_down(workdir: Path) -> None:
    """Stop the local federation's processes."""
    stopped = local_fed.down(workdir)
    out.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@click.command("demo")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep the demo's files here instead of a temporary folder.",
)
@handle_errors
def demo(workdir: Path | None) -> None:
    """Start a local federation on bundled sample data and run every job type."""
    import sys

    from cleanroom.demo import run_demo

    if not run_demo(workdir=workdir, console=out):
        sys.exit(1)


@local_group.command("restart")
@click.argument("party")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".cleanroom"))
@handle_errors
def local_restart(party: str, workdir: Path) -> None:
    """(Re)start the coordinator or one node (e.g. after killing it)."""
    pid = local_fed.restart(workdir, party)
    out.print(f"{party} started (pid {pid})")
