"""gRPC servicers: requests become Scheduler calls, domain errors become statuses."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from cleanroom import serde
from cleanroom.transport import from_chunks, require_role, servicer_errors, to_chunks
from coordinator.scheduler import Scheduler, decisions_view
from proto import cleanroom_pb2 as pb
from proto import cleanroom_pb2_grpc as pb_grpc

NODE, ANALYST = "node", "analyst"


class NodeServicer(pb_grpc.NodeServiceServicer):
    def __init__(self, scheduler: Scheduler, heartbeat_seconds: float) -> None:
        self._s = scheduler
        self._heartbeat = heartbeat_seconds

    @servicer_errors
    def Register(
        self, request: pb.RegisterRequest, context: grpc.ServicerContext
    ) -> pb.RegisterResponse:
        node = require_role(context, NODE).name
        self._s.register(
            node,
            request.key_bundle,
            [serde.dataset_from_proto(d) for d in request.datasets],
        )
        return pb.RegisterResponse(
            heartbeat_seconds=self._heartbeat,
            coordinator_bundle=self._s.bundle.to_bytes(),
        )

    @servicer_errors
    def PullWork(
        self, request: pb.PullRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Chunk]:
        node = require_role(context, NODE).name
        batch = self._s.pull(node, request.wait_seconds, is_active=context.is_active)
        yield from to_chunks(batch)

    @servicer_errors
    def PushMessage(
        self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext
    ) -> pb.Ack:
        node = require_role(context, NODE).name
        self._s.message(node, from_chunks(request_iterator, pb.ProtocolMessage))
        return pb.Ack()

    @servicer_errors
    def ReportDecision(
        self, request: pb.DecisionRequest, context: grpc.ServicerContext
    ) -> pb.Ack:
        node = require_role(context, NODE).name
        self._s.decision(node, request.job_id, request.approved, request.reason)
        return pb.Ack()

    @servicer_errors
    def ReportFailure(
        self, request: pb.FailureReport, context: grpc.ServicerContext
    ) -> pb.Ack:
        node = require_role(context, NODE).name
        self._s.failure(node, request.job_id, request.reason)
        return pb.Ack()

    @servicer_errors
    def SignRelease(
        self, request: pb.ReleaseSignature, context: grpc.ServicerContext
    ) -> pb.Ack:
        node = require_role(context, NODE).name
        self._s.sign_release(node, request)
        return pb.Ack()


class AnalystServicer(pb_grpc.AnalystServiceServicer):
    def __init__(self, scheduler: Scheduler) -> None:
        self._s = scheduler

    def _status(self, job_id: str, analyst: str) -> pb.JobStatus:
        job = self._s.get_job(analyst, job_id)
        return serde.job_to_proto(job, decisions_view(self._s.store, job))

    @servicer_errors
    def SubmitJob(
        self, request: pb.SubmitJobRequest, context: grpc.ServicerContext
    ) -> pb.JobStatus:
        principal = require_role(context, ANALYST)
        analyst = principal.name
        job = self._s.submit(
            analyst, request.spec_yaml, organisation=principal.organisation
        )
        return self._status(job.job_id, analyst)

    @servicer_errors
    def GetJob(
        self, request: pb.GetJobRequest, context: grpc.ServicerContext
    ) -> pb.JobStatus:
        return self._status(request.job_id, require_role(context, ANALYST).name)

    @servicer_errors
    def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.ServicerContext
    ) -> pb.JobList:
        analyst = require_role(context, ANALYST).name
        jobs = self._s.store.list_jobs(analyst=analyst, limit=request.limit or 100)
        return pb.JobList(
            jobs=[serde.job_to_proto(j, decisions_view(self._s.store, j)) for j in jobs]
        )

    @servicer_errors
    def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.ServicerContext
    ) -> pb.JobStatus:
        analyst = require_role(context, ANALYST).name
        self._s.cancel(analyst, request.job_id, request.reason)
        return self._status(request.job_id, analyst)

    @servicer_errors
    def GetJobEvents(
        self, request: pb.GetJobRequest, context: grpc.ServicerContext
    ) -> pb.JobEventList:
        analyst = require_role(context, ANALYST).name
        self._s.get_job(analyst, request.job_id)
        return pb.JobEventList(
            events=[
                pb.JobEvent(seq=e.seq, at=e.at, kind=e.kind, detail=e.detail)
                for e in self._s.store.events(request.job_id)
            ]
        )

    @servicer_errors
    def FetchResult(
        self, request: pb.FetchResultRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Chunk]:
        analyst = require_role(context, ANALYST).name
        data = self._s.result(analyst, request.job_id)
        yield from to_chunks(pb.JobResult(job_id=request.job_id, result_json=data))

    @servicer_errors
    def GetCatalog(
        self, request: pb.CatalogRequest, context: grpc.ServicerContext
    ) -> pb.Catalog:
        require_role(context, ANALYST)
        nodes = []
        for record in self._s.store.list_nodes():
            nodes.append(
                pb.CatalogNode(
                    name=record.name,
                    connected=self._s.presence.connected(record.name),
                    last_seen=self._s.presence.last_seen(record.name)
                    or record.last_seen,
                    datasets=[
                        serde.dataset_to_proto(d)
                        for d in serde.catalog_from_json(record.catalog_json)
                    ],
                    key_bundle=record.key_bundle,
                )
            )
        return pb.Catalog(nodes=nodes)
