"""An in-process federation for fast lifecycle and race tests: the real coordinator
state, handlers and job runners, real node agents and a real analyst client, joined
by in-memory links that call the handlers directly (the transport seam) instead of
gRPC. Certificates, signed requests, envelopes and stores are all real.

This module and the CLI are the only places that import both ``node`` and
``coordinator``; integration tests over real sockets cover the wire itself.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from cleanroom import errors, pki, serde, wire
from cleanroom.audit.log import AuditLog
from cleanroom.client import Client
from cleanroom.keys import NodeKeys, make_key_bundle
from cleanroom.local import default_policy
from cleanroom.model import JobEvent, ModelEntry
from cleanroom.pki import Principal, TlsIdentity
from cleanroom.serde import JobView
from coordinator import lifecycle
from coordinator.handlers import analysts, nodes
from coordinator.state import CoordinatorState
from coordinator.store import open_store
from node.agent import NodeAgent
from node.config import DatasetConfig, NodeConfig

T = TypeVar("T")
COORDINATOR_NAME = "coordinator"
ANALYST_NAME = "analyst"


class _Server:
    """The coordinator the links reach; ``None`` while it is down."""

    def __init__(self) -> None:
        self.state: CoordinatorState | None = None

    def get(self) -> CoordinatorState:
        state = self.state
        if state is None:
            raise errors.TransportError("the coordinator is down")
        return state


class MemoryCoordinatorLink:
    """``node.link.CoordinatorLink`` calling the coordinator's handlers directly.

    A call during which the coordinator was killed fails as a broken RPC would,
    whether or not the dead coordinator still got through part of it.
    """

    def __init__(self, server: _Server, node: Principal) -> None:
        self._server = server
        self._node = node

    def _call(self, fn: Callable[[CoordinatorState], T]) -> T:
        state = self._server.get()
        result = fn(state)
        if self._server.state is not state:
            raise errors.TransportError("the coordinator went away during the call")
        return result

    def register(self, reg: wire.Registration) -> wire.RegisterReply:
        return self._call(lambda s: nodes.register(s, self._node, reg))

    def pull(self, req: wire.PullRequest) -> wire.WorkBatch:
        return self._call(
            lambda state: nodes.pull_node(
                state, self._node, req, is_active=lambda: self._server.state is state
            )
        )

    def push(self, msg: wire.ProtocolMessage) -> None:
        self._call(lambda s: nodes.push(s, self._node, msg))

    def report_decision(self, report: wire.DecisionReport) -> None:
        self._call(lambda s: nodes.decision(s, self._node, report))

    def report_failure(self, report: wire.FailureReport) -> None:
        self._call(lambda s: nodes.failure(s, self._node, report))

    def report_progress(self, report: wire.ProgressReport) -> None:
        self._call(lambda s: nodes.progress(s, self._node, report))

    def sign_release(self, signature: wire.ReleaseSignature) -> None:
        self._call(lambda s: nodes.sign_release(s, self._node, signature))

    def witness(self, req: wire.WitnessRequest) -> wire.WitnessReply:
        return self._call(lambda s: nodes.witness(s, self._node, req))

    def close(self) -> None:
        """Nothing to release."""


class MemoryAnalystLink:
    """``cleanroom.links.AnalystLink`` calling the coordinator's handlers directly;
    job views go through the same ``serde`` conversions as the gRPC servicer."""

    def __init__(self, server: _Server, analyst: Principal) -> None:
        self._server = server
        self._analyst = analyst

    def _view(self, state: CoordinatorState, job_id: str) -> JobView:
        job = analysts.get_job(state, self._analyst, job_id)
        return serde.job_from_proto(
            serde.job_to_proto(
                job,
                lifecycle.decisions_view(state, job),
                analyst_party=lifecycle.has_analyst_party(job),
            )
        )

    def submit(self, submission: wire.Submission) -> JobView:
        state = self._server.get()
        job = analysts.submit(state, self._analyst, submission)
        return self._view(state, job.job_id)

    def status(self, job_id: str) -> JobView:
        return self._view(self._server.get(), job_id)

    def list_jobs(self, limit: int = 100) -> list[JobView]:
        state = self._server.get()
        found = analysts.list_jobs(state, self._analyst, limit)
        return [self._view(state, j.job_id) for j in found]

    def cancel(self, job_id: str, reason: str) -> JobView:
        state = self._server.get()
        analysts.cancel(state, self._analyst, job_id, reason)
        return self._view(state, job_id)

    def events(self, job_id: str) -> list[JobEvent]:
        return analysts.events(self._server.get(), self._analyst, job_id)

    def result_bytes(self, job_id: str) -> bytes:
        return analysts.result(self._server.get(), self._analyst, job_id)[0]

    def attachments(self, job_id: str) -> dict[str, bytes]:
        return analysts.result(self._server.get(), self._analyst, job_id)[1]

    def catalog(self) -> list[wire.CatalogNode]:
        return analysts.catalog(self._server.get())

    def models(self, limit: int = 100, job_id: str = "") -> list[ModelEntry]:
        return serde.models_from_proto(
            serde.models_to_proto(
                analysts.models(self._server.get(), self._analyst, limit, job_id)
            )
        )

    def pull(self, req: wire.PullRequest) -> wire.WorkBatch:
        state = self._server.get()
        return analysts.pull(
            state, self._analyst, req, is_active=lambda: self._server.state is state
        )

    def push(self, msg: wire.ProtocolMessage) -> None:
        analysts.push(self._server.get(), self._analyst, msg)

    def healthy(self) -> bool:
        return self._server.state is not None

    def close(self) -> None:
        """Nothing to release."""


@dataclass
class InProcessFederation:
    """A coordinator, nodes and an analyst in one process.

    ``datasets`` maps node name -> its one dataset (a DataFrame, written to CSV in
    the federation's directory). ``policy`` is every node's policy (default: the
    analyst may run anything, automatically).
    """

    datasets: Mapping[str, pd.DataFrame]
    policy: Mapping[str, Any] | None = None
    store_url: str = "memory://"
    node_timeout: float = 5.0
    directory: Path | None = None
    plugins: tuple[str, ...] = ()
    jobtypes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    id_column: str = ""
    """Every dataset's identifier column (none by default)."""
    dataset_configs: Mapping[str, DatasetConfig] = field(default_factory=dict)
    """Node name -> its dataset's config, where the dataset lives elsewhere (a
    Parquet file for DuckDB, a database table); its frame is then not written."""
    agents: dict[str, NodeAgent] = field(default_factory=dict, init=False)
    _server: _Server = field(default_factory=_Server, init=False)
    _threads: dict[str, threading.Thread] = field(default_factory=dict, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cleanroom-inproc-")
            self.directory = Path(self._tmp.name)
        root = self.directory
        ca = root / "pki"
        pki.init_ca(ca, federation="inprocess")
        pki.issue(ca, "coordinator", COORDINATOR_NAME)
        pki.issue(ca, "analyst", ANALYST_NAME, organisation="lab")
        for name in self.datasets:
            pki.issue(ca, "node", name)
        self._ca = ca
        if self.store_url == "memory://":
            self._store = open_store(self.store_url)
        self.start_coordinator()
        threading.Thread(target=self._sweep, name="sweep", daemon=True).start()
        for name, frame in self.datasets.items():
            self.start_node(name, frame)
        self.client = self.analyst_client()
        self.wait_connected()

    # -------------------------------------------------------------- parties --
    def _identity(self, name: str) -> TlsIdentity:
        return TlsIdentity.load(
            self._ca / f"{name}.crt", self._ca / f"{name}.key", self._ca / "ca.crt"
        )

    def start_coordinator(self) -> CoordinatorState:
        """Start (or restart) the coordinator on the same store and audit file."""
        root = self.directory
        assert root is not None
        data = root / "coordinator"
        data.mkdir(exist_ok=True)
        identity = self._identity(COORDINATOR_NAME)
        keys = NodeKeys.load_or_create(data / "coordinator.keys")
        store = (
            self._store if self.store_url == "memory://" else open_store(self.store_url)
        )
        state = CoordinatorState(
            store,
            ca_pem=identity.ca_pem,
            audit=AuditLog(
                data / "audit.db", owner=COORDINATOR_NAME, signing_key=keys.signing
            ),
            bundle=make_key_bundle(
                COORDINATOR_NAME, keys, identity, role="coordinator"
            ),
            node_timeout=self.node_timeout,
        )
        lifecycle.recover(state)
        self._server.state = state
        return state

    def kill_coordinator(self) -> None:
        """As SIGKILL would: the runners stop where they are, nothing is ended."""
        state = self._server.state
        self._server.state = None
        if state is None:
            return
        for run in state.runs():
            run.stop()
            run.join(5.0)
        state.mailboxes.wake(self.datasets)
        state.audit.close()
        if self.store_url != "memory://":
            state.store.close()

    @property
    def state(self) -> CoordinatorState:
        return self._server.get()

    def start_node(self, name: str, frame: pd.DataFrame) -> NodeAgent:
        root = self.directory
        assert root is not None
        node_dir = root / "nodes" / name
        node_dir.mkdir(parents=True, exist_ok=True)
        dataset = self.dataset_configs.get(name)
        if dataset is None:
            path = node_dir / f"{name}.csv"
            frame.to_csv(path, index=False)
            dataset = DatasetConfig(name, path, id_column=self.id_column)
        config = NodeConfig(
            name=name,
            coordinator="in-process",
            coordinator_name=COORDINATOR_NAME,
            data_dir=node_dir / "data",
            cert=self._ca / f"{name}.crt",
            key=self._ca / f"{name}.key",
            ca=self._ca / "ca.crt",
            datasets=(dataset,),
            policy=dict(self.policy or default_policy(ANALYST_NAME)),
            jobtypes=dict(self.jobtypes),
            plugins=self.plugins,
        )
        principal = Principal("node", name)
        agent = NodeAgent(
            config,
            link_factory=lambda: MemoryCoordinatorLink(self._server, principal),
        )
        self.agents[name] = agent
        thread = threading.Thread(target=agent.run, name=f"node-{name}", daemon=True)
        self._threads[name] = thread
        thread.start()
        return agent

    def stop_node(self, name: str) -> None:
        agent = self.agents.pop(name)
        agent.stop()
        self._threads.pop(name).join(10.0)
        agent.close()

    def analyst_client(self) -> Client:
        root = self.directory
        assert root is not None
        identity = self._identity(ANALYST_NAME)
        keys = NodeKeys.load_or_create(root / "analyst.protocol")
        return Client(
            MemoryAnalystLink(self._server, identity.principal),
            analyst=ANALYST_NAME,
            keys=keys,
            bundle=make_key_bundle(ANALYST_NAME, keys, identity, role="analyst"),
            ca_pem=identity.ca_pem,
            state_dir=root / "analyst-state",
        )

    @property
    def ca_pem(self) -> bytes:
        return (self._ca / "ca.crt").read_bytes()

    def witness(self) -> None:
        """Every node witnesses the coordinator's log now (as they do after each
        job and every few seconds), one after the other. First every node takes
        and acknowledges what is queued for it (a finished job's stop notice, which
        the node records), so the heads exchanged cover every entry so far."""
        state = self.state
        wait_until(lambda: all(state.mailboxes.pending(n) == 0 for n in self.agents))
        for agent in self.agents.values():
            agent.witness.run()

    def export_logs(self, directory: Path) -> list[Path]:
        """Every party's audit export, as ``cleanroom audit export`` writes it."""
        directory.mkdir(parents=True, exist_ok=True)
        state = self.state
        paths = [directory / "coordinator.jsonl"]
        state.audit.export(paths[0], bundle=state.bundle.to_bytes())
        for name, agent in self.agents.items():
            paths.append(directory / f"{name}.jsonl")
            agent.audit.export(paths[-1], bundle=agent.bundle.to_bytes())
        return paths

    def wait_connected(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(a.connected.is_set() for a in self.agents.values()):
            if time.monotonic() > deadline:
                raise errors.TransportError("nodes did not connect in time")
            time.sleep(0.005)

    def _sweep(self) -> None:
        while not self._stop.wait(0.05):
            state = self._server.state
            if state is not None:
                try:
                    lifecycle.sweep(state)
                except errors.CleanroomError:
                    pass

    def run(
        self,
        spec_yaml: str,
        *,
        timeout: float = 30.0,
        local_inputs: Mapping[str, Any] | None = None,
    ) -> JobView:
        """Submit and wait (running the analyst party if any)."""
        view = self.client.submit(spec_yaml, local_inputs=local_inputs)
        return self.client.wait(view.job.job_id, timeout=timeout, poll=0.01)

    def close(self) -> None:
        self._stop.set()
        for agent in self.agents.values():
            agent.stop()
        self.kill_coordinator()  # waiting long polls return at once
        for name in list(self.agents):
            self.stop_node(name)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> InProcessFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)
