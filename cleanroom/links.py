"""The analyst's link to the coordinator: an interface, and its gRPC implementation
over mutual TLS. The in-process federation supplies another implementation that
calls the coordinator's handlers directly (``cleanroom.testing``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cleanroom import serde, wire
from cleanroom.model import JobEvent, ModelEntry
from cleanroom.pki import TlsIdentity
from cleanroom.serde import JobView
from cleanroom.transport import (
    DEFAULT_DEADLINE,
    from_chunks,
    raise_from_rpc,
    secure_channel,
    to_chunks,
)
from proto import cleanroom_pb2 as pb
from proto import cleanroom_pb2_grpc as pb_grpc


class AnalystLink(Protocol):
    """What an analyst's client says to the coordinator."""

    def submit(self, submission: wire.Submission) -> JobView: ...

    def status(self, job_id: str) -> JobView: ...

    def list_jobs(self, limit: int = 100) -> list[JobView]: ...

    def cancel(self, job_id: str, reason: str) -> JobView: ...

    def events(self, job_id: str) -> list[JobEvent]: ...

    def result_bytes(self, job_id: str) -> bytes: ...

    def attachments(self, job_id: str) -> dict[str, bytes]: ...

    def catalog(self) -> list[wire.CatalogNode]: ...

    def models(self, limit: int = 100, job_id: str = "") -> list[ModelEntry]: ...

    def pull(self, req: wire.PullRequest) -> wire.WorkBatch: ...

    def push(self, msg: wire.ProtocolMessage) -> None: ...

    def healthy(self) -> bool: ...

    def close(self) -> None: ...


class GrpcAnalystLink:
    """The gRPC link: one mTLS channel to the coordinator's analyst API."""

    def __init__(
        self,
        address: str,
        identity: TlsIdentity,
        *,
        server_name: str = "coordinator",
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        self._deadline = deadline
        self._channel = secure_channel(address, identity, server_name=server_name)
        self._stub = pb_grpc.AnalystServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        try:
            yield
        except grpc.RpcError as exc:
            raise_from_rpc(exc, what=what)

    def _unary(self, what: str, fn: Any, request: Any) -> Any:
        with self._call(what):
            return fn(request, timeout=self._deadline)

    def submit(self, submission: wire.Submission) -> JobView:
        request = pb.SubmitJobRequest(
            spec_yaml=submission.spec_yaml,
            signed_request=submission.signed_request,
            key_bundle=submission.key_bundle,
        )
        return serde.job_from_proto(
            self._unary("submit job", self._stub.SubmitJob, request)
        )

    def status(self, job_id: str) -> JobView:
        return serde.job_from_proto(
            self._unary("get job", self._stub.GetJob, pb.GetJobRequest(job_id=job_id))
        )

    def list_jobs(self, limit: int = 100) -> list[JobView]:
        reply = self._unary(
            "list jobs", self._stub.ListJobs, pb.ListJobsRequest(limit=limit)
        )
        return [serde.job_from_proto(j) for j in reply.jobs]

    def cancel(self, job_id: str, reason: str) -> JobView:
        request = pb.CancelJobRequest(job_id=job_id, reason=reason)
        return serde.job_from_proto(
            self._unary("cancel job", self._stub.CancelJob, request)
        )

    def events(self, job_id: str) -> list[JobEvent]:
        reply = self._unary(
            "get job events", self._stub.GetJobEvents, pb.GetJobRequest(job_id=job_id)
        )
        return [JobEvent(job_id, e.seq, e.at, e.kind, e.detail) for e in reply.events]

    def _fetch(self, job_id: str, with_attachments: bool) -> pb.JobResult:
        with self._call("fetch result"):
            chunks = self._stub.FetchResult(
                pb.FetchResultRequest(job_id=job_id, with_attachments=with_attachments),
                timeout=self._deadline * 10,
            )
            return from_chunks(chunks, pb.JobResult)
        raise AssertionError("unreachable")

    def result_bytes(self, job_id: str) -> bytes:
        return bytes(self._fetch(job_id, False).result_json)

    def attachments(self, job_id: str) -> dict[str, bytes]:
        found = self._fetch(job_id, True).attachments
        return {a.name: bytes(a.data) for a in found}

    def catalog(self) -> list[wire.CatalogNode]:
        reply = self._unary("get catalog", self._stub.GetCatalog, pb.CatalogRequest())
        return serde.catalog_from_proto(reply)

    def models(self, limit: int = 100, job_id: str = "") -> list[ModelEntry]:
        request = pb.ListModelsRequest(limit=limit, job_id=job_id)
        reply = self._unary("list models", self._stub.ListModels, request)
        return serde.models_from_proto(reply)

    def pull(self, req: wire.PullRequest) -> wire.WorkBatch:
        with self._call("pull the analyst party's messages"):
            chunks = self._stub.PullWork(
                pb.PullRequest(
                    wait_seconds=req.wait_seconds,
                    ack_seq=req.ack_seq,
                    job_id=req.job_id,
                ),
                timeout=req.wait_seconds + self._deadline,
            )
            return serde.batch_from_proto(from_chunks(chunks, pb.WorkBatch))
        raise AssertionError("unreachable")

    def push(self, msg: wire.ProtocolMessage) -> None:
        with self._call("push the analyst party's message"):
            self._stub.PushMessage(
                to_chunks(serde.message_to_proto(msg)), timeout=self._deadline * 4
            )

    def healthy(self) -> bool:
        try:
            reply = self._health.Check(
                health_pb2.HealthCheckRequest(service=""),
                timeout=min(self._deadline, 5.0),
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GrpcAnalystLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def result_document(raw: bytes) -> dict[str, Any]:
    return json.loads(raw)  # type: ignore[no-any-return]
