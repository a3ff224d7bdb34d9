"""A node's Prometheus metrics: its jobs by type and outcome with their durations,
its RPCs to the coordinator (latency and errors), whether it is connected, jobs
running now, and meter usage per dataset.

Meter gauges are read from the node's database when scraped (summed over
analysts, so no analyst's name becomes a label). Nothing here carries a value
computed from the holder's rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cleanroom.metrics import DURATION_BUCKETS

if TYPE_CHECKING:
    from node.meters import Meters


class NodeMetrics:
    """One node's registry and the observations the agent reports to it."""

    def __init__(
        self,
        meters: Meters,
        *,
        connected: Callable[[], bool],
        running: Callable[[], int],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs = Counter(
            "cleanroom_node_jobs",
            "This node's part of jobs that ended, by job type and outcome.",
            ["job_type", "outcome"],
            registry=self.registry,
        )
        self.job_duration = Histogram(
            "cleanroom_node_job_duration_seconds",
            "From the job's arrival at this node to the end of its part.",
            ["job_type", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.rpc_duration = Histogram(
            "cleanroom_node_rpc_duration_seconds",
            "Latency of this node's calls to the coordinator, by call.",
            ["method"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.rpc_errors = Counter(
            "cleanroom_node_rpc_errors",
            "Calls to the coordinator that failed, by call and gRPC code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.registry.register(_NodeState(meters, connected, running))

    def rpc(self, method: str, seconds: float, code: str) -> None:
        self.rpc_duration.labels(method).observe(seconds)
        if code != "OK":
            self.rpc_errors.labels(method, code).inc()

    def job_ended(self, job_type: str, outcome: str, seconds: float) -> None:
        self.jobs.labels(job_type, outcome).inc()
        self.job_duration.labels(job_type, outcome).observe(max(0.0, seconds))


class _NodeState(Collector):
    def __init__(
        self, meters: Meters, connected: Callable[[], bool], running: Callable[[], int]
    ) -> None:
        self._meters = meters
        self._connected = connected
        self._running = running

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "cleanroom_node_connected",
            "1 while the node holds a registered link to the coordinator.",
            1.0 if self._connected() else 0.0,
        )
        yield GaugeMetricFamily(
            "cleanroom_node_running_jobs", "Jobs running on this node.", self._running()
        )
        used = GaugeMetricFamily(
            "cleanroom_node_meter_used",
            "Metered usage per dataset and meter, summed over analysts.",
            labels=["dataset", "meter", "period"],
        )
        reserved = GaugeMetricFamily(
            "cleanroom_node_meter_reserved",
            "Usage reserved by running or held jobs, per dataset and meter.",
            labels=["dataset", "meter"],
        )
        totals: dict[tuple[str, str], list[float]] = {}
        for row in self._meters.usage():
            sums = totals.setdefault((row.dataset, row.meter), [0.0, 0.0, 0.0])
            sums[0] += row.used_total
            sums[1] += row.used_today
            sums[2] += row.reserved_total
        for (dataset, meter), (total, today, held) in sorted(totals.items()):
            used.add_metric([dataset, meter, "total"], total)
            used.add_metric([dataset, meter, "today"], today)
            reserved.add_metric([dataset, meter], held)
        yield used
        yield reserved
