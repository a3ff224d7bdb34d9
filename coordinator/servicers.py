"""gRPC servicers: they only translate. Each method takes the caller's principal
from its certificate, converts the request with ``serde``, calls a handler and
maps domain errors to status codes (``servicer_errors``)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from cleanroom import serde, wire
from cleanroom.transport import from_chunks, require_role, servicer_errors, to_chunks
from coordinator import lifecycle
from coordinator.handlers import analysts, nodes
from coordinator.state import CoordinatorState
from proto import cleanroom_pb2 as pb
from proto import cleanroom_pb2_grpc as pb_grpc

NODE, ANALYST = "node", "analyst"


class NodeServicer(pb_grpc.NodeServiceServicer):
    def __init__(self, state: CoordinatorState) -> None:
        self._s = state

    @servicer_errors
    def Register(
        self, request: pb.RegisterRequest, context: grpc.ServicerContext
    ) -> pb.RegisterResponse:
        reply = nodes.register(
            self._s,
            require_role(context, NODE),
            serde.registration_from_proto(request),
        )
        return pb.RegisterResponse(
            heartbeat_seconds=reply.heartbeat_seconds,
            coordinator_bundle=reply.coordinator_bundle,
        )

    @servicer_errors
    def PullWork(
        self, request: pb.PullRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Chunk]:
        batch = nodes.pull_node(
            self._s,
            require_role(context, NODE),
            wire.PullRequest(request.wait_seconds, request.ack_seq),
            is_active=context.is_active,
        )
        yield from to_chunks(serde.batch_to_proto(batch))

    @servicer_errors
    def PushMessage(
        self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext
    ) -> pb.Ack:
        node = require_role(context, NODE)
        msg = from_chunks(request_iterator, pb.ProtocolMessage)
        nodes.push(self._s, node, serde.message_from_proto(msg))
        return pb.Ack()

    @servicer_errors
    def ReportDecision(
        self, request: pb.DecisionRequest, context: grpc.ServicerContext
    ) -> pb.Ack:
        report = wire.DecisionReport(request.job_id, request.approved, request.reason)
        nodes.decision(self._s, require_role(context, NODE), report)
        return pb.Ack()

    @servicer_errors
    def ReportFailure(
        self, request: pb.FailureReport, context: grpc.ServicerContext
    ) -> pb.Ack:
        report = wire.FailureReport(request.job_id, request.reason)
        nodes.failure(self._s, require_role(context, NODE), report)
        return pb.Ack()

    @servicer_errors
    def ReportProgress(
        self, request: pb.ProgressReport, context: grpc.ServicerContext
    ) -> pb.Ack:
        report = wire.ProgressReport(
            request.job_id, serde.progress_from_json(request.progress_json)
        )
        nodes.progress(self._s, require_role(context, NODE), report)
        return pb.Ack()

    @servicer_errors
    def SignRelease(
        self, request: pb.ReleaseSignature, context: grpc.ServicerContext
    ) -> pb.Ack:
        signature = wire.ReleaseSignature(
            request.job_id,
            request.statement_json,
            request.signature,
            bytes(request.cosignature),
        )
        nodes.sign_release(self._s, require_role(context, NODE), signature)
        return pb.Ack()

    @servicer_errors
    def Witness(
        self, request: pb.WitnessRequest, context: grpc.ServicerContext
    ) -> pb.WitnessResponse:
        req = wire.WitnessRequest(
            coordinator_since=int(request.coordinator_since),
            node_head=bytes(request.node_head),
            node_proof=tuple(bytes(p) for p in request.node_proof),
            coordinator_head=bytes(request.coordinator_head),
            coordinator_cosignature=bytes(request.coordinator_cosignature),
        )
        reply = nodes.witness(self._s, require_role(context, NODE), req)
        return pb.WitnessResponse(
            coordinator_head=reply.coordinator_head,
            coordinator_proof=list(reply.coordinator_proof),
            node_since=reply.node_since,
            node_cosignature=reply.node_cosignature,
        )


class AnalystServicer(pb_grpc.AnalystServiceServicer):
    def __init__(self, state: CoordinatorState) -> None:
        self._s = state

    def _status(self, job_id: str, context: grpc.ServicerContext) -> pb.JobStatus:
        job = analysts.get_job(self._s, require_role(context, ANALYST), job_id)
        return serde.job_to_proto(
            job,
            lifecycle.decisions_view(self._s, job),
            analyst_party=lifecycle.has_analyst_party(job),
        )

    @servicer_errors
    def SubmitJob(
        self, request: pb.SubmitJobRequest, context: grpc.ServicerContext
    ) -> pb.JobStatus:
        submission = wire.Submission(
            request.spec_yaml, bytes(request.signed_request), bytes(request.key_bundle)
        )
        job = analysts.submit(self._s, require_role(context, ANALYST), submission)
        return self._status(job.job_id, context)

    @servicer_errors
    def GetJob(
        self, request: pb.GetJobRequest, context: grpc.ServicerContext
    ) -> pb.JobStatus:
        return self._status(request.job_id, context)

    @servicer_errors
    def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.ServicerContext
    ) -> pb.JobList:
        jobs = analysts.list_jobs(
            self._s, require_role(context, ANALYST), request.limit
        )
        return pb.JobList(
            jobs=[
                serde.job_to_proto(
                    j,
                    lifecycle.decisions_view(self._s, j),
                    analyst_party=lifecycle.has_analyst_party(j),
                )
                for j in jobs
            ]
        )

    @servicer_errors
    def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.ServicerContext
    ) -> pb.JobStatus:
        analysts.cancel(
            self._s, require_role(context, ANALYST), request.job_id, request.reason
        )
        return self._status(request.job_id, context)

    @servicer_errors
    def GetJobEvents(
        self, request: pb.GetJobRequest, context: grpc.ServicerContext
    ) -> pb.JobEventList:
        found = analysts.events(self._s, require_role(context, ANALYST), request.job_id)
        return pb.JobEventList(
            events=[
                pb.JobEvent(seq=e.seq, at=e.at, kind=e.kind, detail=e.detail)
                for e in found
            ]
        )

    @servicer_errors
    def FetchResult(
        self, request: pb.FetchResultRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Chunk]:
        document, files = analysts.result(
            self._s, require_role(context, ANALYST), request.job_id
        )
        attached = [
            pb.Attachment(name=n, data=d)
            for n, d in sorted(files.items())
            if request.with_attachments
        ]
        yield from to_chunks(
            pb.JobResult(
                job_id=request.job_id, result_json=document, attachments=attached
            )
        )

    @servicer_errors
    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ModelList:
        found = analysts.models(
            self._s, require_role(context, ANALYST), request.limit, request.job_id
        )
        return serde.models_to_proto(found)

    @servicer_errors
    def GetCatalog(
        self, request: pb.CatalogRequest, context: grpc.ServicerContext
    ) -> pb.Catalog:
        require_role(context, ANALYST)
        return serde.catalog_to_proto(analysts.catalog(self._s))

    @servicer_errors
    def PullWork(
        self, request: pb.PullRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Chunk]:
        batch = analysts.pull(
            self._s,
            require_role(context, ANALYST),
            wire.PullRequest(request.wait_seconds, request.ack_seq, request.job_id),
            is_active=context.is_active,
        )
        yield from to_chunks(serde.batch_to_proto(batch))

    @servicer_errors
    def PushMessage(
        self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext
    ) -> pb.Ack:
        analyst = require_role(context, ANALYST)
        msg = from_chunks(request_iterator, pb.ProtocolMessage)
        analysts.push(self._s, analyst, serde.message_from_proto(msg))
        return pb.Ack()
