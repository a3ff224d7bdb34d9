"""The node's link to the coordinator: an interface, and its gRPC implementation
(mutual TLS, the node dials out). The in-process federation supplies another
implementation that calls the coordinator's handlers directly.

Every method raises ``TransportError`` when the coordinator cannot be reached,
and the coordinator's own domain error otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

import grpc

from cleanroom import serde, wire
from cleanroom.pki import TlsIdentity
from cleanroom.transport import (
    DEFAULT_DEADLINE,
    from_chunks,
    raise_from_rpc,
    secure_channel,
    to_chunks,
)
from proto import cleanroom_pb2 as pb
from proto import cleanroom_pb2_grpc as pb_grpc

T = TypeVar("T")


class CoordinatorLink(Protocol):
    """What a node says to the coordinator."""

    def register(self, reg: wire.Registration) -> wire.RegisterReply: ...

    def pull(self, req: wire.PullRequest) -> wire.WorkBatch: ...

    def push(self, msg: wire.ProtocolMessage) -> None: ...

    def report_decision(self, report: wire.DecisionReport) -> None: ...

    def report_failure(self, report: wire.FailureReport) -> None: ...

    def report_progress(self, report: wire.ProgressReport) -> None: ...

    def sign_release(self, signature: wire.ReleaseSignature) -> None: ...

    def witness(self, req: wire.WitnessRequest) -> wire.WitnessReply: ...

    def close(self) -> None: ...


LinkFactory = Callable[[], CoordinatorLink]


class GrpcCoordinatorLink:
    """The gRPC link: one mTLS channel to the coordinator."""

    def __init__(
        self,
        address: str,
        identity: TlsIdentity,
        *,
        server_name: str,
        observe: Callable[[str, float, str], None] | None = None,
    ) -> None:
        self._channel = secure_channel(address, identity, server_name=server_name)
        self._stub = pb_grpc.NodeServiceStub(self._channel)
        self._observe = observe
        """Called with (call, seconds, gRPC code name) after every call (metrics)."""

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        started, code = time.perf_counter(), "OK"
        try:
            yield
        except grpc.RpcError as exc:
            found = exc.code() if hasattr(exc, "code") else None
            code = found.name if isinstance(found, grpc.StatusCode) else "UNKNOWN"
            raise_from_rpc(exc, what=what)
        finally:
            if self._observe is not None:
                self._observe(what, time.perf_counter() - started, code)

    def register(self, reg: wire.Registration) -> wire.RegisterReply:
        with self._call("register"):
            reply = self._stub.Register(
                serde.registration_to_proto(reg), timeout=DEFAULT_DEADLINE
            )
        return wire.RegisterReply(
            reply.heartbeat_seconds, bytes(reply.coordinator_bundle)
        )

    def pull(self, req: wire.PullRequest) -> wire.WorkBatch:
        with self._call("pull work"):
            chunks = self._stub.PullWork(
                pb.PullRequest(wait_seconds=req.wait_seconds, ack_seq=req.ack_seq),
                timeout=req.wait_seconds + DEFAULT_DEADLINE,
            )
            return serde.batch_from_proto(from_chunks(chunks, pb.WorkBatch))
        raise AssertionError("unreachable")

    def push(self, msg: wire.ProtocolMessage) -> None:
        with self._call("push message"):
            self._stub.PushMessage(
                to_chunks(serde.message_to_proto(msg)), timeout=DEFAULT_DEADLINE * 4
            )

    def report_decision(self, report: wire.DecisionReport) -> None:
        with self._call("report decision"):
            self._stub.ReportDecision(
                pb.DecisionRequest(
                    job_id=report.job_id, approved=report.approved, reason=report.reason
                ),
                timeout=DEFAULT_DEADLINE,
            )

    def report_failure(self, report: wire.FailureReport) -> None:
        with self._call("report failure"):
            self._stub.ReportFailure(
                pb.FailureReport(job_id=report.job_id, reason=report.reason),
                timeout=DEFAULT_DEADLINE,
            )

    def report_progress(self, report: wire.ProgressReport) -> None:
        with self._call("report progress"):
            self._stub.ReportProgress(
                pb.ProgressReport(
                    job_id=report.job_id,
                    progress_json=serde.progress_to_json(report.progress),
                ),
                timeout=DEFAULT_DEADLINE,
            )

    def sign_release(self, signature: wire.ReleaseSignature) -> None:
        with self._call("sign release"):
            self._stub.SignRelease(
                pb.ReleaseSignature(
                    job_id=signature.job_id,
                    statement_json=signature.statement_json,
                    signature=signature.signature,
                    cosignature=signature.cosignature,
                ),
                timeout=DEFAULT_DEADLINE,
            )

    def witness(self, req: wire.WitnessRequest) -> wire.WitnessReply:
        with self._call("witness"):
            reply = self._stub.Witness(
                pb.WitnessRequest(
                    coordinator_since=req.coordinator_since,
                    node_head=req.node_head,
                    node_proof=list(req.node_proof),
                    coordinator_head=req.coordinator_head,
                    coordinator_cosignature=req.coordinator_cosignature,
                ),
                timeout=DEFAULT_DEADLINE,
            )
        return wire.WitnessReply(
            coordinator_head=bytes(reply.coordinator_head),
            coordinator_proof=tuple(bytes(p) for p in reply.coordinator_proof),
            node_since=int(reply.node_since),
            node_cosignature=bytes(reply.node_cosignature),
        )

    def close(self) -> None:
        self._channel.close()
