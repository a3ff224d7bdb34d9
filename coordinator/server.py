"""Starts the coordinator: store, state, gRPC services, health, background sweep."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cleanroom import jobtypes
from cleanroom.audit.log import AuditLog
from cleanroom.keys import NodeKeys, make_key_bundle
from cleanroom.metrics import MetricsEndpoint, serve_metrics
from cleanroom.transport import secure_server
from coordinator import lifecycle
from coordinator.config import CoordinatorConfig, long_poll_slots
from coordinator.servicers import AnalystServicer, NodeServicer
from coordinator.state import CoordinatorState
from coordinator.store import open_store
from proto import cleanroom_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


@dataclass
class RunningCoordinator:
    """A started coordinator; ``stop()`` shuts it down cleanly."""

    server: grpc.Server
    state: CoordinatorState
    port: int
    _stop: threading.Event
    metrics: MetricsEndpoint | None = None

    def stop(self, grace: float = 2.0) -> None:
        self._stop.set()
        self.server.stop(grace).wait()
        if self.metrics is not None:
            self.metrics.stop()
        for run in self.state.runs():
            run.stop()
            run.join(5.0)
        self.state.store.close()
        self.state.audit.close()

    def wait(self) -> None:
        self.server.wait_for_termination()


def start_coordinator(*, config: CoordinatorConfig) -> RunningCoordinator:
    """Open the store, recover jobs, and serve on ``config.listen``."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    jobtypes.load_plugins(config.plugins)
    identity = config.identity()
    store = open_store(config.store_url)
    keys = NodeKeys.load_or_create(config.data_dir / "coordinator.keys")
    audit = AuditLog(
        config.data_dir / "audit.db", owner=config.name, signing_key=keys.signing
    )
    bundle = make_key_bundle(config.name, keys, identity, role="coordinator")
    state = CoordinatorState(
        store,
        ca_pem=identity.ca_pem,
        audit=audit,
        bundle=bundle,
        node_timeout=config.node_timeout,
        long_poll_slots=long_poll_slots(config.rpc_workers),
        max_jobs_per_analyst=config.max_jobs_per_analyst,
    )
    lifecycle.recover(state)
    server, port = secure_server(
        identity,
        config.listen,
        max_workers=config.rpc_workers,
        interceptors=[state.metrics.interceptor()],
    )
    pb_grpc.add_NodeServiceServicer_to_server(NodeServicer(state), server)
    pb_grpc.add_AnalystServiceServicer_to_server(AnalystServicer(state), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.start()
    for service in ("", "cleanroom.v1.NodeService", "cleanroom.v1.AnalystService"):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    stop = threading.Event()

    def sweep() -> None:
        while not stop.wait(0.5):
            try:
                lifecycle.sweep(state)
            except Exception:
                log.exception("sweep failed")

    threading.Thread(target=sweep, name="sweep", daemon=True).start()
    host = config.listen.rsplit(":", 1)[0]
    if config.address_file is not None:
        tmp = config.address_file.with_suffix(".tmp")
        tmp.write_text(f"{host}:{port}\n")
        tmp.replace(config.address_file)
    log.info("coordinator %s serving on %s:%d", config.name, host, port)
    metrics = None
    if config.metrics_listen:
        metrics = serve_metrics(state.metrics.registry, config.metrics_listen)
        log.info("metrics on http://%s:%d/metrics",
                 config.metrics_listen.rpartition(":")[0], metrics.port)  # fmt: skip
    return RunningCoordinator(server, state, port, stop, metrics)


def serve(config: CoordinatorConfig) -> None:
    """Run until SIGTERM or SIGINT."""
    running = start_coordinator(config=config)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    running.stop()
