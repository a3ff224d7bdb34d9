"""The analyst's typed Python client; the CLI is built on it, notebooks can use it too.

with Client.from_federation("work/federation.json") as client:
    job = client.submit(open("count.yaml").read())
    done = client.wait(job.job.job_id)
    print(client.result(done.job.job_id))
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cleanroom import errors, serde
from cleanroom.catalog import DatasetInfo
from cleanroom.federation import Federation
from cleanroom.model import JobEvent
from cleanroom.pki import TlsIdentity
from cleanroom.serde import JobView
from cleanroom.transport import (
    DEFAULT_DEADLINE,
    from_chunks,
    raise_from_rpc,
    secure_channel,
)
from proto import cleanroom_pb2 as pb
from proto import cleanroom_pb2_grpc as pb_grpc

T = TypeVar("T")


@dataclass(frozen=True)
class CatalogEntry:
    """A node as the catalog shows it: connection state and dataset metadata only."""

    node: str
    connected: bool
    last_seen: float
    datasets: tuple[DatasetInfo, ...]
    key_bundle: bytes


class Client:
    """Talks to the coordinator's analyst API over mutual TLS."""

    def __init__(
        self,
        *,
        address: str,
        identity: TlsIdentity,
        server_name: str = "coordinator",
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        self.address = address
        self._deadline = deadline
        self._channel = secure_channel(address, identity, server_name=server_name)
        self._stub = pb_grpc.AnalystServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    @classmethod
    def from_federation(cls, path: str | Path) -> Client:
        fed = Federation.load(Path(path))
        return cls(
            address=fed.coordinator_address,
            identity=fed.analyst_identity(),
            server_name=fed.coordinator_name,
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, *exc: type[BaseException] | BaseException | TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        try:
            yield
        except grpc.RpcError as exc:
            raise_from_rpc(exc, what=what)

    def _unary(self, what: str, fn: Callable[..., T], request: Any) -> T:
        with self._call(what):
            return fn(request, timeout=self._deadline)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ jobs --
    def submit(self, spec_yaml: str) -> JobView:
        """Submit a job spec; SpecError (with the field path) if it is invalid."""
        return serde.job_from_proto(
            self._unary(
                "submit job",
                self._stub.SubmitJob,
                pb.SubmitJobRequest(spec_yaml=spec_yaml),
            )
        )

    def status(self, job_id: str) -> JobView:
        return serde.job_from_proto(
            self._unary("get job", self._stub.GetJob, pb.GetJobRequest(job_id=job_id))
        )

    def list_jobs(self, *, limit: int = 100) -> list[JobView]:
        reply = self._unary(
            "list jobs", self._stub.ListJobs, pb.ListJobsRequest(limit=limit)
        )
        return [serde.job_from_proto(j) for j in reply.jobs]

    def cancel(self, job_id: str, reason: str = "") -> JobView:
        return serde.job_from_proto(
            self._unary(
                "cancel job",
                self._stub.CancelJob,
                pb.CancelJobRequest(job_id=job_id, reason=reason),
            )
        )

    def events(self, job_id: str) -> list[JobEvent]:
        reply = self._unary(
            "get job events", self._stub.GetJobEvents, pb.GetJobRequest(job_id=job_id)
        )
        return [JobEvent(job_id, e.seq, e.at, e.kind, e.detail) for e in reply.events]

    def result(self, job_id: str) -> dict[str, Any]:
        """The released result document (streamed, so it may be of any size)."""
        return json.loads(self.result_bytes(job_id))  # type: ignore[no-any-return]

    def result_bytes(self, job_id: str) -> bytes:
        with self._call("fetch result"):
            chunks = self._stub.FetchResult(
                pb.FetchResultRequest(job_id=job_id), timeout=self._deadline * 10
            )
            return from_chunks(chunks, pb.JobResult).result_json
        raise AssertionError("unreachable")

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float = 0.25,
        on_update: Callable[[JobView], None] | None = None,
    ) -> JobView:
        """Block until the job reaches a final state; TransportError on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            view = self.status(job_id)
            if on_update is not None:
                on_update(view)
            if view.job.state.terminal:
                return view
            if deadline is not None and time.monotonic() > deadline:
                raise errors.TransportError(
                    f"job {job_id} still {view.job.state} after {timeout}s"
                )
            time.sleep(poll)

    # --------------------------------------------------------------- catalog --
    def catalog(self) -> list[CatalogEntry]:
        reply = self._unary("get catalog", self._stub.GetCatalog, pb.CatalogRequest())
        return [
            CatalogEntry(
                n.name,
                n.connected,
                n.last_seen,
                tuple(serde.dataset_from_proto(d) for d in n.datasets),
                n.key_bundle,
            )
            for n in reply.nodes
        ]

    def healthy(self) -> bool:
        """True if the coordinator's health service answers SERVING."""
        try:
            reply = self._health.Check(
                health_pb2.HealthCheckRequest(service=""),
                timeout=min(self._deadline, 5.0),
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
