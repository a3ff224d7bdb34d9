"""The coordinator's Prometheus metrics: jobs by type and state, job and stage
durations, RPC latency and errors, connected nodes and mailbox depth.

Gauges of state (jobs, nodes, mailboxes) are read from the store when scraped,
so they are right after a restart; durations and RPC counts are observed as they
happen. Labels: job type, state, stage name, RPC method and status code, node
name — nothing an analyst's parameters or a node's data could set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cleanroom.metrics import DURATION_BUCKETS
from cleanroom.model import JobRecord, JobState

if TYPE_CHECKING:
    from coordinator.state import CoordinatorState


class CoordinatorMetrics:
    """One coordinator's registry and the observations the code reports to it."""

    def __init__(self, state: CoordinatorState) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.job_duration = Histogram(
            "cleanroom_job_duration_seconds",
            "Submission to final state, per job type and final state.",
            ["job_type", "state"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.stage_duration = Histogram(
            "cleanroom_stage_duration_seconds",
            "How long a running job stayed in one protocol stage.",
            ["job_type", "stage"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.rpc_duration = Histogram(
            "cleanroom_rpc_duration_seconds",
            "Server-side latency of each RPC, by service and method.",
            ["service", "method"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.rpc_errors = Counter(
            "cleanroom_rpc_errors_total",
            "RPCs that ended in an error status, by service, method and gRPC code.",
            ["service", "method", "code"],
            registry=self.registry,
        )
        self.registry.register(_StateCollector(state))

    def job_ended(self, job: JobRecord, now: float) -> None:
        self.job_duration.labels(job.job_type, job.state.value).observe(
            max(0.0, now - job.created_at)
        )

    def stage_ended(self, job_type: str, stage: str, seconds: float) -> None:
        self.stage_duration.labels(job_type, stage or "start").observe(
            max(0.0, seconds)
        )

    def interceptor(self) -> grpc.ServerInterceptor:
        return _RpcInterceptor(self)


class _StateCollector(Collector):
    def __init__(self, state: CoordinatorState) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self._state
        jobs = GaugeMetricFamily(
            "cleanroom_jobs", "Jobs in the store by type and state.",
            labels=["job_type", "state"],
        )  # fmt: skip
        counts: dict[tuple[str, str], int] = {}
        for job in state.store.jobs_in_states(list(JobState)):
            key = (job.job_type, job.state.value)
            counts[key] = counts.get(key, 0) + 1
        for (job_type, job_state), n in sorted(counts.items()):
            jobs.add_metric([job_type, job_state], n)
        yield jobs
        nodes = state.store.list_nodes()
        connected = sum(1 for n in nodes if state.presence.connected(n.name))
        yield GaugeMetricFamily(
            "cleanroom_registered_nodes", "Nodes that have registered.", len(nodes)
        )
        yield GaugeMetricFamily(
            "cleanroom_connected_nodes",
            "Registered nodes polling now or seen within the node timeout.",
            connected,
        )
        depth = GaugeMetricFamily(
            "cleanroom_mailbox_depth", "Work items queued for a node.", labels=["node"]
        )
        for node in nodes:
            depth.add_metric([node.name], state.store.mail_count(node.name))
        yield depth


def _method(details: grpc.HandlerCallDetails) -> tuple[str, str]:
    """("NodeService", "PullWork") from "/cleanroom.v1.NodeService/PullWork"."""
    name = str(getattr(details, "method", "") or "")
    service, _, method = name.strip("/").rpartition("/")
    return service.rsplit(".", 1)[-1] or "unknown", method or "unknown"


class _RpcInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Times every unary and server-streaming handler and counts error codes."""

    def __init__(self, metrics: CoordinatorMetrics) -> None:
        self._metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        service, method = _method(details)
        metrics = self._metrics

        def done(started: float, context: Any, failed: bool) -> None:
            seconds = time.perf_counter() - started
            metrics.rpc_duration.labels(service, method).observe(seconds)
            code = context.code() if hasattr(context, "code") else None
            if failed or (code is not None and code != grpc.StatusCode.OK):
                name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
                metrics.rpc_errors.labels(service, method, name).inc()

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def unary(request: Any, context: Any) -> Any:
                started, failed = time.perf_counter(), True
                try:
                    reply = inner(request, context)
                    failed = False
                    return reply
                finally:
                    done(started, context, failed)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            stream_inner = handler.unary_stream

            def stream(request: Any, context: Any) -> Iterator[Any]:
                started, failed = time.perf_counter(), True
                try:
                    yield from stream_inner(request, context)
                    failed = False
                finally:
                    done(started, context, failed)

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary is not None:
            upload_inner = handler.stream_unary

            def upload(requests: Any, context: Any) -> Any:
                started, failed = time.perf_counter(), True
                try:
                    reply = upload_inner(requests, context)
                    failed = False
                    return reply
                finally:
                    done(started, context, failed)

            return grpc.stream_unary_rpc_method_handler(
                upload, handler.request_deserializer, handler.response_serializer
            )
        return handler
