"""A local federation on loopback: a fresh PKI, a coordinator and one node per dataset,
each a separate process, for demos, tests and trying things out."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from cleanroom import jobtypes, pki
from cleanroom.errors import ConfigError, TransportError
from cleanroom.federation import Federation
from cleanroom.links import GrpcAnalystLink
from cleanroom.netns import FILE as NETNS_FILE
from cleanroom.netns import Network

ANALYST = "analyst"
COORDINATOR = "coordinator"


def default_policy(analyst: str = ANALYST) -> dict[str, object]:
    """Lets the local analyst run every job type on every dataset, automatically."""
    return {
        "default": {
            "analysts": [analyst],
            "organisations": "*",
            "job_types": "*",
            "columns": {"allow": "*"},
            "purposes": "*",
            "min_group_size": 5,
            "approval": "auto",
        }
    }


def _toml_str(value: str | Path) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _spawn(args: Sequence[str], log_path: Path, prefix: Sequence[str] = ()) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "cleanroom", *args],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return proc.pid


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie nobody reaped has exited all the same
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def write_node_config(
    workdir: Path,
    name: str,
    dataset: Path,
    coordinator: str,
    policy_file: Path,
    plugins: Sequence[str] = (),
    jobtype_settings: Mapping[str, Mapping[str, Any]] | None = None,
    id_column: str = "",
) -> Path:
    node_dir = workdir / "nodes" / name
    node_dir.mkdir(parents=True, exist_ok=True)
    ca = workdir / "pki"
    config = node_dir / "node.toml"
    config.write_text(
        f"name = {_toml_str(name)}\n"
        f"coordinator = {_toml_str(coordinator)}\n"
        f'coordinator_name = "{COORDINATOR}"\n'
        f'data_dir = "data"\n'
        f"policy = {_toml_str(policy_file)}\n"
        f"plugins = [{', '.join(_toml_str(p) for p in plugins)}]\n\n"
        "[tls]\n"
        f"cert = {_toml_str(ca / (name + '.crt'))}\n"
        f"key = {_toml_str(ca / (name + '.key'))}\n"
        f"ca = {_toml_str(ca / 'ca.crt')}\n\n"
        f"[datasets.{dataset.stem}]\n"
        f"path = {_toml_str(dataset)}\n"
        + (f"id_column = {_toml_str(id_column)}\n" if id_column else "")
        + "".join(
            _toml_table(f"jobtypes.{job_type}", table)
            for job_type, table in sorted((jobtype_settings or {}).items())
        )
    )
    return config


def _toml_table(name: str, table: Mapping[str, Any]) -> str:
    """A TOML table of string, number and boolean values and nested tables."""
    scalars, nested = [], []
    for key, value in table.items():
        if isinstance(value, Mapping):
            nested.append(_toml_table(f"{name}.{_toml_str(key)}", value))
        elif isinstance(value, bool):
            scalars.append(f"{_toml_str(key)} = {'true' if value else 'false'}\n")
        elif isinstance(value, int | float):
            scalars.append(f"{_toml_str(key)} = {value!r}\n")
        else:
            scalars.append(f"{_toml_str(key)} = {_toml_str(str(value))}\n")
    return f"\n[{name}]\n" + "".join(scalars) + "".join(nested)


def up(
    *,
    workdir: Path,
    nodes: Sequence[tuple[str, Path]],
    policy: Path | None = None,
    node_timeout: float = 5.0,
    timeout: float = 60.0,
    plugins: Sequence[str] = (),
    rpc_workers: int | None = None,
    netns: bool = False,
    progress: Callable[[str], None] = lambda _: None,
    node_settings: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    id_columns: Mapping[str, str] | None = None,
) -> Federation:
    """Start a coordinator and the nodes; return once every node is connected.

    ``node_settings`` maps a node to its ``[jobtypes.<name>]`` tables;
    ``id_columns`` a node to its dataset's identifier column (for PSI and
    vertical jobs).
    ``netns`` (root only): each party in its own network namespace
    (``cleanroom.netns``), the coordinator listening on its namespace's address.
    """
    workdir = workdir.resolve()
    fed_file = workdir / "federation.json"
    if fed_file.exists():
        old = Federation.load(fed_file)
        if any(_alive(pid) for pid in old.processes.values()):
            raise ConfigError(
                f"a federation is already running in {workdir}; "
                "run 'cleanroom local down' first"
            )
    if not nodes:
        raise ConfigError("give at least one --node NAME=PATH.csv")
    names = [n for n, _ in nodes]
    if len(set(names)) != len(names):
        raise ConfigError("node names must be distinct")
    for name, path in nodes:
        if not path.is_file():
            raise ConfigError(f"--node {name}: no such file {path}")
    policy_doc = (
        default_policy() if policy is None else yaml.safe_load(policy.read_text())
    )
    jobtypes.names()  # the registry must import cleanly before anything starts
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(workdir / "pki", ignore_errors=True)
    progress("issuing a fresh PKI")
    pki.init_ca(workdir / "pki", federation="local")
    pki.issue(workdir / "pki", "coordinator", COORDINATOR)
    pki.issue(workdir / "pki", "analyst", ANALYST)
    for name in names:
        pki.issue(workdir / "pki", "node", name)
    policy_file = workdir / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy_doc, sort_keys=False))

    coord_dir = workdir / "coordinator"
    coord_dir.mkdir(exist_ok=True)
    address_file = coord_dir / "address"
    address_file.unlink(missing_ok=True)
    coord_config = coord_dir / "coordinator.toml"
    workers = f"rpc_workers = {rpc_workers}\n" if rpc_workers is not None else ""
    network = Network.create(["coordinator", *names]) if netns else None
    listen = f"{network.address('coordinator')}:0" if network else "127.0.0.1:0"
    if network is not None:
        network.save(workdir)
        progress(f"one network namespace per party, bridge {network.bridge}")

    def prefix(party: str) -> list[str]:
        return network.exec_prefix(party) if network is not None else []

    coord_config.write_text(
        f'name = "{COORDINATOR}"\nlisten = "{listen}"\ndata_dir = "data"\n'
        f'address_file = "address"\nnode_timeout_seconds = {node_timeout}\n'
        f"{workers}"
        f"plugins = [{', '.join(_toml_str(p) for p in plugins)}]\n\n[tls]\n"
        f"cert = {_toml_str(workdir / 'pki' / 'coordinator.crt')}\n"
        f"key = {_toml_str(workdir / 'pki' / 'coordinator.key')}\n"
        f"ca = {_toml_str(workdir / 'pki' / 'ca.crt')}\n"
    )
    processes: dict[str, int] = {}
    progress("starting the coordinator")
    processes["coordinator"] = _spawn(
        ["coordinator", "serve", "--config", str(coord_config)],
        workdir / "logs" / "coordinator.log",
        prefix("coordinator"),
    )
    fed = Federation(
        coordinator_address="",
        coordinator_name=COORDINATOR,
        analyst_name=ANALYST,
        analyst_cert=workdir / "pki" / f"{ANALYST}.crt",
        analyst_key=workdir / "pki" / f"{ANALYST}.key",
        ca=workdir / "pki" / "ca.crt",
        nodes={},
        processes=processes,
        workdir=workdir,
        plugins=tuple(plugins),
    )
    try:
        deadline = time.monotonic() + timeout
        while not address_file.exists():
            if not _alive(processes["coordinator"]):
                raise ConfigError(
                    "the coordinator exited:\n"
                    + _tail(workdir / "logs" / "coordinator.log")
                )
            if time.monotonic() > deadline:
                raise TransportError("the coordinator did not start in time")
            time.sleep(0.1)
        address = address_file.read_text().strip()
        fed = Federation(**{**fed.__dict__, "coordinator_address": address})
        for name, path in nodes:
            config = write_node_config(
                workdir,
                name,
                path.resolve(),
                address,
                policy_file,
                plugins,
                (node_settings or {}).get(name),
                (id_columns or {}).get(name, ""),
            )
            progress(f"starting node {name} with dataset '{path.stem}'")
            processes[f"node:{name}"] = _spawn(
                ["node", "serve", "--config", str(config)],
                workdir / "logs" / f"{name}.log",
                prefix(name),
            )
            fed.nodes[name] = {
                "config": str(config),
                "dataset": path.stem,
                "path": str(path.resolve()),
            }
        fed.save(fed_file)
        progress("waiting for every node to connect")
        wait_connected(fed, names, deadline=deadline)
    except BaseException:
        _stop_processes(processes)
        if network is not None:
            network.destroy()
            (workdir / NETNS_FILE).unlink(missing_ok=True)
        raise
    return fed


def wait_connected(fed: Federation, names: Sequence[str], *, deadline: float) -> None:
    with GrpcAnalystLink(
        fed.coordinator_address,
        fed.analyst_identity(),
        server_name=fed.coordinator_name,
    ) as client:
        while True:
            for key, pid in fed.processes.items():
                if not _alive(pid):
                    log = (
                        (fed.workdir or Path("."))
                        / "logs"
                        / f"{key.removeprefix('node:')}.log"
                    )
                    raise ConfigError(f"{key} exited:\n{_tail(log)}")
            try:
                connected = {e.node for e in client.catalog() if e.connected}
            except TransportError:
                connected = set()
            if set(names) <= connected:
                return
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(set(names) - connected))
                raise TransportError(f"nodes did not connect in time: {missing}")
            time.sleep(0.2)


def _stop_processes(processes: dict[str, int], *, grace: float = 5.0) -> None:
    for pid in processes.values():
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for pid in processes.values():
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def restart(workdir: Path, party: str) -> int:
    """(Re)start one party of a local federation — ``coordinator`` or a node name —
    on its previous address, and record its new process so ``down`` stops it."""
    workdir = workdir.resolve()
    fed_file = workdir / "federation.json"
    fed = Federation.load(fed_file)
    if party == "coordinator":
        key = "coordinator"
        config = workdir / "coordinator" / "coordinator.toml"
        text = config.read_text()
        if 'listen = "127.0.0.1:0"' in text:
            # keep the port the nodes and analysts already know
            config.write_text(
                text.replace(
                    'listen = "127.0.0.1:0"', f'listen = "{fed.coordinator_address}"'
                )
            )
        args = ["coordinator", "serve", "--config", str(config)]
    elif party in fed.nodes:
        key = f"node:{party}"
        args = ["node", "serve", "--config", fed.nodes[party]["config"]]
    else:
        raise ConfigError(f"no party '{party}' in {fed_file}")
    old = fed.processes.get(key)
    if old is not None and _alive(old):
        _stop_processes({key: old})
    network = Network.load(workdir)
    prefix = network.exec_prefix(party) if network is not None else []
    log_path = workdir / "logs" / f"{party}.log"
    processes = {**fed.processes, key: _spawn(args, log_path, prefix)}
    Federation(**{**fed.__dict__, "processes": processes}).save(fed_file)
    return processes[key]


def down(workdir: Path) -> list[str]:
    """Stop every process of the local federation; return what was stopped."""
    fed = Federation.load(workdir.resolve() / "federation.json")
    running = [k for k, pid in fed.processes.items() if _alive(pid)]
    _stop_processes(fed.processes)
    network = Network.load(workdir.resolve())
    if network is not None:
        network.destroy()
        (workdir.resolve() / NETNS_FILE).unlink(missing_ok=True)
    return running


def status(workdir: Path) -> dict[str, object]:
    fed = Federation.load(workdir.resolve() / "federation.json")
    procs = {k: {"pid": pid, "alive": _alive(pid)} for k, pid in fed.processes.items()}
    nodes: dict[str, object] = {}
    try:
        with GrpcAnalystLink(
            fed.coordinator_address,
            fed.analyst_identity(),
            server_name=fed.coordinator_name,
            deadline=5.0,
        ) as client:
            nodes = {
                e.node: {
                    "connected": e.connected,
                    "datasets": [d.name for d in e.datasets],
                }
                for e in client.catalog()
            }
    except TransportError as exc:
        nodes = {"error": str(exc)}
    return {"coordinator": fed.coordinator_address, "processes": procs, "nodes": nodes}
