"""Prometheus metrics endpoints: each coordinator and node process serves its own
registry over HTTP (``metrics_listen`` in its config; off unless set). Metric
names start with ``cleanroom_``; labels never carry a value computed from data,
a job's parameters or an analyst's input — only job types, states, stages, RPC
methods and codes, node and dataset names the operator already knows."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from cleanroom.errors import ConfigError

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                    120, 300, 900, 3600)  # fmt: skip
"""Seconds: RPCs in the first half, stages and whole jobs in the second."""


def parse_listen(value: object, where: str) -> str:
    """``host:port`` (port 0: any free port); ConfigError names ``where``."""
    text = str(value)
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{where}: expected host:port, got '{text}'")
    return text


@dataclass
class MetricsEndpoint:
    """A running ``/metrics`` HTTP server; ``stop()`` closes it."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5.0)


def serve_metrics(registry: CollectorRegistry, listen: str) -> MetricsEndpoint:
    """Serve ``registry`` at ``http://listen/metrics`` from a daemon thread."""
    host, _, port = listen.rpartition(":")
    try:
        server, thread = start_http_server(
            int(port), addr=host.strip("[]"), registry=registry
        )
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {listen}: {exc.strerror}") from None
    return MetricsEndpoint(server, thread)
