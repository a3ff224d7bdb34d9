"""The node agent: dials out to the coordinator, decides on every job with its own
policy and meters before touching data, runs approved jobs and records it all."""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from cleanroom import errors, jobtypes, serde
from cleanroom.audit.heads import cosign, verify_tree_head
from cleanroom.audit.log import AuditLog
from cleanroom.jobspec import JobSpec, parse_spec
from cleanroom.keys import (
    KeyBundle,
    NodeKeys,
    canonical_json,
    make_key_bundle,
    sign_statement,
    verify_key_bundle,
)
from cleanroom.provenance import head_from_dict, head_to_dict, release_statement
from cleanroom.transport import (
    DEFAULT_DEADLINE,
    from_chunks,
    raise_from_rpc,
    secure_channel,
)
from node.config import NodeConfig
from node.datasets import DatasetRegistry
from node.executor import JobOutcome, JobRunner
from node.meters import Meters
from node.policy import JobRequest, Outcome, PolicySet
from node.sandbox_service import SandboxService
from node.state import JobStatus, LocalJob, NodeState
from proto import cleanroom_pb2 as pb
from proto import cleanroom_pb2_grpc as pb_grpc
from protocols.party import NodeParty

log = logging.getLogger(__name__)

PULL_WAIT = 5.0
MAX_BACKOFF = 10.0


class NodeAgent:
    """One data holder's node. ``run()`` blocks until ``stop()``."""

    def __init__(
        self, config: NodeConfig, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self._clock = clock
        config.data_dir.mkdir(parents=True, exist_ok=True)
        jobtypes.load_plugins(config.plugins)
        self.identity = config.identity()
        self.keys = NodeKeys.load_or_create(config.data_dir / "node.keys")
        self.datasets = DatasetRegistry(config.datasets)
        self.policy = PolicySet.from_mapping(config.policy)
        self.state = NodeState(config.state_path, clock=clock)
        self.meters = Meters(config.data_dir / "meters.db", now=clock)
        self.audit = AuditLog(
            config.data_dir / "audit.db",
            owner=config.name,
            signing_key=self.keys.signing,
            now=clock,
        )
        self.bundle = make_key_bundle(config.name, self.keys, self.identity)
        self.runner = JobRunner(
            node=config.name,
            keys=self.keys,
            ca_pem=self.identity.ca_pem,
            send=self._push,
            on_end=self._job_ended,
        )
        self.sandbox = SandboxService(
            config,
            state=self.state,
            audit=self.audit,
            policy=self.policy,
            datasets=self.datasets,
            deliver=self.runner.deliver,
        )
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._stub: pb_grpc.NodeServiceStub | None = None
        self._coordinator_bundle: KeyBundle | None = None
        self._dataset_hashes: dict[str, str] = {}
        self._audit_policy_version()

    # -------------------------------------------------------------- lifecycle --
    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Connect, pull work, and reconnect with backoff until stopped."""
        threading.Thread(
            target=self._report_holder_decisions, daemon=True, name="holder-decisions"
        ).start()
        backoff = 0.5
        while not self._stop.is_set():
            channel = secure_channel(
                self.config.coordinator,
                self.identity,
                server_name=self.config.coordinator_name,
            )
            try:
                stub = pb_grpc.NodeServiceStub(channel)
                reply = stub.Register(
                    pb.RegisterRequest(
                        key_bundle=self.bundle.to_bytes(),
                        datasets=[
                            serde.dataset_to_proto(i) for i in self.datasets.infos()
                        ],
                        software_version="0.1.0",
                    ),
                    timeout=DEFAULT_DEADLINE,
                )
                self._coordinator_bundle = verify_key_bundle(
                    KeyBundle.from_bytes(reply.coordinator_bundle),
                    self.identity.ca_pem,
                    expected_name=self.config.coordinator_name,
                    role="coordinator",
                )
                self._stub = stub
                self.connected.set()
                backoff = 0.5
                log.info("connected to coordinator at %s", self.config.coordinator)
                while not self._stop.is_set():
                    chunks = stub.PullWork(
                        pb.PullRequest(wait_seconds=PULL_WAIT),
                        timeout=PULL_WAIT + DEFAULT_DEADLINE,
                    )
                    batch = from_chunks(chunks, pb.WorkBatch)
                    for item in batch.items:
                        self._handle(item)
                    if not batch.items and batch.retry_after_seconds > 0:
                        # The coordinator had no long-poll slot free: pull later.
                        self._stop.wait(min(batch.retry_after_seconds, PULL_WAIT))
            except grpc.RpcError as exc:
                self.connected.clear()
                self._stub = None
                wait = backoff * (1 + secrets.randbelow(1000) / 2000)
                log.warning(
                    "coordinator unreachable (%s); retrying in %.1fs",
                    exc.code().name,
                    wait,
                )
                self._stop.wait(wait)
                backoff = min(backoff * 2, MAX_BACKOFF)
            finally:
                channel.close()

    def close(self) -> None:
        self.state.close()
        self.meters.close()
        self.audit.close()

    # --------------------------------------------------------------- dispatch --
    def _handle(self, item: pb.WorkItem) -> None:
        kind = item.WhichOneof("kind")
        try:
            if kind == "approval":
                self._on_approval(item.approval)
            elif kind == "start":
                self._on_start(item.start)
            elif kind == "message":
                self.runner.deliver(item.message)
            elif kind == "stop":
                self._on_stop(item.stop)
            elif kind == "release":
                threading.Thread(
                    target=self._on_release,
                    args=(item.release,),
                    daemon=True,
                    name=f"release-{item.release.job_id}",
                ).start()
        except errors.CleanroomError as exc:
            job_id = getattr(getattr(item, kind), "job_id", "") if kind else ""
            log.warning("job %s: %s", job_id, exc)
            if job_id and kind == "start":
                self._report_failure(job_id, str(exc))

    def _request(
        self, job_id: str, analyst: str, spec: JobSpec, organisation: str = ""
    ) -> JobRequest:
        """Check the job against this node's own view of its data, trusting no one."""
        mine = spec.input_for(self.config.name)
        job_type = jobtypes.get(spec.type)
        dataset = self.datasets.fresh(mine.dataset)
        job_type.validate_params(spec, {mine: dataset.info})
        columns = job_type.columns_used(spec)
        missing = sorted(columns - set(dataset.info.column_names()))
        if missing:
            raise errors.SpecError(
                "params", f"dataset '{mine.dataset}' has no column '{missing[0]}'"
            )
        epsilon, delta = job_type.epsilon(spec)
        rows = len(dataset.frame)
        return JobRequest(
            job_id=job_id,
            analyst=analyst,
            organisation=organisation,
            job_type=spec.type,
            dataset=mine.dataset,
            columns=columns,
            purpose=spec.purpose,
            epsilon=epsilon,
            delta=delta,
            rows=rows,
            units=job_type.estimate_units(spec, rows),
        )

    def _on_approval(self, req: pb.ApprovalRequest) -> None:
        now = self._clock()
        try:
            spec = parse_spec(req.spec_yaml)
            dataset = spec.input_for(self.config.name).dataset
        except errors.SpecError as exc:
            self._decide_now(req.job_id, False, f"invalid job spec: {exc}")
            return
        try:
            existing = self.state.get(req.job_id)
        except errors.NotFound:
            existing = None
        if (
            existing is not None
            and existing.status != JobStatus.PENDING
            and existing.reported
        ):
            self._report(existing)  # the coordinator restarted and asks again
            return
        record = LocalJob(
            req.job_id,
            req.analyst,
            spec.type,
            dataset,
            spec.purpose,
            req.spec_yaml,
            JobStatus.PENDING,
            "",
            "",
            False,
            now,
            now,
        )
        try:
            request = self._request(req.job_id, req.analyst, spec, req.organisation)
        except errors.CleanroomError as exc:
            self.state.record(record)
            self._decide_now(req.job_id, False, str(exc))
            return
        decision = self.policy.evaluate(request, now=now)
        decision = self.sandbox.admit(req.job_id, spec, decision)
        reasons = "; ".join(decision.reasons)
        self.state.record(record)
        self.audit.append(
            "job.requested",
            job_id=req.job_id,
            data={
                "analyst": req.analyst,
                "dataset": dataset,
                "type": spec.type,
                "purpose": spec.purpose,
                "spec_hash": spec.spec_hash,
                "policy_version": decision.policy_version,
                "outcome": decision.outcome.value,
                "reasons": list(decision.reasons),
            },
        )
        if decision.outcome == Outcome.DENY:
            self._decide_now(req.job_id, False, reasons)
        elif decision.outcome == Outcome.HOLD:
            self.state.set_status(req.job_id, JobStatus.PENDING, reasons)
            log.info("job %s held for the holder's decision: %s", req.job_id, reasons)
        else:
            self._approve(req.job_id, request, decided_by="policy", reason=reasons)

    def _approve(
        self, job_id: str, request: JobRequest, *, decided_by: str, reason: str
    ) -> None:
        policy = self.policy.for_dataset(request.dataset)
        try:
            self.meters.reserve(
                request,
                policy.quota_limits(),
                epsilon_budget=policy.epsilon_budget,
                delta_budget=policy.delta_budget,
            )
        except errors.QuotaExceeded as exc:
            self._decide_now(job_id, False, str(exc))
            return
        self.audit.append(
            "quota.reserved",
            job_id=job_id,
            data={
                "analyst": request.analyst,
                "dataset": request.dataset,
                "rows": request.rows,
                "epsilon": request.epsilon,
                "units": dict(request.units),
            },
        )
        self._decide_now(job_id, True, reason, decided_by=decided_by)

    def _decide_now(
        self, job_id: str, approved: bool, reason: str, *, decided_by: str = "policy"
    ) -> None:
        status = JobStatus.APPROVED if approved else JobStatus.DENIED
        self.state.set_status(
            job_id, status, reason, decided_by=decided_by, reported=False
        )
        self.audit.append(
            "job.approved" if approved else "job.refused",
            job_id=job_id,
            data={"reason": reason, "decided_by": decided_by},
        )
        try:
            self._report(self.state.get(job_id))
        except errors.NotFound:
            pass

    def _report(self, job: LocalJob) -> None:
        stub = self._stub
        if stub is None:
            return  # reported by the holder-decision loop once reconnected
        try:
            stub.ReportDecision(
                pb.DecisionRequest(
                    job_id=job.job_id,
                    approved=job.status
                    in (JobStatus.APPROVED, JobStatus.RUNNING, JobStatus.DONE),
                    reason=job.reason,
                ),
                timeout=DEFAULT_DEADLINE,
            )
            # Only the flag: the job may have started meanwhile (RUNNING must stay).
            self.state.mark_reported(job.job_id)
        except grpc.RpcError as exc:
            log.warning(
                "could not report decision on %s: %s", job.job_id, exc.code().name
            )

    def _report_holder_decisions(self) -> None:
        """The holder's CLI writes decisions into the node's state; report them."""
        while not self._stop.wait(0.5):
            self.sandbox.poll_decisions()
            for job in self.state.unreported():
                if job.decided_by == "holder" and job.status == JobStatus.APPROVED:
                    try:
                        request = self._request(
                            job.job_id, job.analyst, parse_spec(job.spec_yaml)
                        )
                    except errors.CleanroomError as exc:
                        self._decide_now(
                            job.job_id, False, str(exc), decided_by="holder"
                        )
                        continue
                    self.state.set_status(job.job_id, JobStatus.PENDING, "")
                    self._approve(
                        job.job_id,
                        request,
                        decided_by="holder",
                        reason=job.reason or "approved by the data holder",
                    )
                elif self._stub is not None:
                    if job.decided_by == "holder" and not any(
                        e.kind == "job.refused"
                        for e in self.audit.entries_for_job(job.job_id)
                    ):
                        # Once, even if the report below must be retried.
                        self.audit.append(
                            "job.refused",
                            job_id=job.job_id,
                            data={"reason": job.reason, "decided_by": "holder"},
                        )
                    self._report(job)

    def _on_start(self, start: pb.StartJob) -> None:
        local = self.state.get(start.job_id)
        if local.status != JobStatus.APPROVED:
            raise errors.PolicyRefusal(
                [f"job {start.job_id} was not approved here ({local.status})"]
            )
        spec = parse_spec(start.spec_yaml)
        if spec.spec_hash != parse_spec(local.spec_yaml).spec_hash:
            raise errors.PolicyRefusal(["the job spec differs from the one approved"])
        self.state.set_status(start.job_id, JobStatus.RUNNING, local.reason)
        self.audit.append(
            "job.started", job_id=start.job_id, data={"parties": list(start.parties)}
        )

        def build(start: pb.StartJob, bundles: dict[str, KeyBundle]) -> NodeParty:
            mine = spec.input_for(self.config.name)
            dataset = self.datasets.fresh(
                mine.dataset
            )  # refuses a changed or vanished file
            self._dataset_hashes[start.job_id] = dataset.content_hash
            ctx = jobtypes.NodeContext(
                job_id=start.job_id,
                spec=spec,
                node=self.config.name,
                dataset=mine.dataset,
                data=dataset.frame,
                dataset_hash=dataset.content_hash,
                min_group_size=self.policy.for_dataset(mine.dataset).min_group_size,
                signing_key=self.keys.signing,
                parties=tuple(start.parties),
                peer_signing_keys={n: b.signing_public for n, b in bundles.items()},
                services={"sandbox": self.sandbox},
            )
            return jobtypes.get(spec.type).node_party(ctx)

        self.runner.start(start, build)

    def _on_stop(self, stop: pb.StopJob) -> None:
        self.runner.stop(stop.job_id)
        try:
            local = self.state.get(stop.job_id)
        except errors.NotFound:
            return
        if local.status in (JobStatus.PENDING, JobStatus.APPROVED):
            # Never started here: free what was reserved for it.
            self.meters.release(stop.job_id, reason=f"job {stop.state}: {stop.reason}")
            self.state.set_status(stop.job_id, JobStatus.STOPPED, stop.reason)
        self.audit.append(
            "job.ended",
            job_id=stop.job_id,
            data={"state": stop.state, "reason": stop.reason},
        )

    def _job_ended(self, outcome: JobOutcome) -> None:
        sandbox_cpu = self.sandbox.finished(outcome.job_id)
        if outcome.ok and outcome.usage is not None:
            self.meters.settle(
                outcome.job_id, outcome.usage, sandbox_cpu_seconds=sandbox_cpu
            )
            self.state.set_status(outcome.job_id, JobStatus.DONE, "")
            self.audit.append(
                "job.released", job_id=outcome.job_id, data=_usage(outcome)
            )
            return
        self.meters.release(
            outcome.job_id,
            partial=outcome.usage,
            reason=outcome.reason,
            sandbox_cpu_seconds=sandbox_cpu,
        )
        self.state.set_status(outcome.job_id, JobStatus.FAILED, outcome.reason)
        self.audit.append(
            "job.failed",
            job_id=outcome.job_id,
            data={"reason": outcome.reason, **_usage(outcome)},
        )
        if outcome.reason != "stopped by the coordinator":
            self._report_failure(outcome.job_id, outcome.reason)

    def _on_release(self, req: pb.ReleaseRequest) -> None:
        """Sign the provenance of a finished job's output and co-sign the coordinator's
        audit head, after checking our part really finished and the head is genuine."""
        try:
            deadline = time.monotonic() + 30
            local = self.state.get(req.job_id)
            while local.status == JobStatus.RUNNING and time.monotonic() < deadline:
                time.sleep(0.05)
                local = self.state.get(req.job_id)
            if local.status != JobStatus.DONE or req.job_id not in self._dataset_hashes:
                raise errors.ProtocolError(
                    f"our part of {req.job_id} did not finish ({local.status})"
                )
            if self._coordinator_bundle is None:
                raise errors.AuthError("the coordinator's audit key is not known yet")
            head = head_from_dict(json.loads(req.coordinator_head))
            verify_tree_head(head, self._coordinator_bundle.signing_public)
            spec = parse_spec(local.spec_yaml)
            self.audit.append(
                "coordinator.head", job_id=req.job_id, data=head_to_dict(head)
            )
            self.audit.append(
                "job.release_signed",
                job_id=req.job_id,
                data={"output_hash": req.output_hash},
            )
            statement = release_statement(
                job_id=req.job_id,
                spec_hash=spec.spec_hash,
                node=self.config.name,
                dataset=local.dataset,
                dataset_hash=self._dataset_hashes.pop(req.job_id),
                output=req.output_hash,
                node_head=self.audit.tree_head(),
                coordinator_head=head,
            )
            signature = sign_statement(self.keys.signing, statement)
            cosignature = cosign(head, self.config.name, self.keys.signing)
            stub = self._stub
            if stub is None:
                raise errors.TransportError("not connected")
            stub.SignRelease(
                pb.ReleaseSignature(
                    job_id=req.job_id,
                    statement_json=canonical_json(statement).decode(),
                    signature=signature,
                    cosignature=cosignature,
                ),
                timeout=DEFAULT_DEADLINE,
            )
        except (errors.CleanroomError, ValueError) as exc:
            log.warning("job %s: will not sign its release: %s", req.job_id, exc)
            self._report_failure(req.job_id, f"refused to sign the release: {exc}")
        except grpc.RpcError as exc:
            log.warning(
                "job %s: release signature not delivered: %s",
                req.job_id,
                exc.code().name,
            )

    # ------------------------------------------------------------------- sends --
    def _push(self, msg: pb.ProtocolMessage) -> None:
        from cleanroom.transport import to_chunks

        for attempt in range(5):
            stub = self._stub
            if stub is not None:
                try:
                    stub.PushMessage(to_chunks(msg), timeout=DEFAULT_DEADLINE * 4)
                    return
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise_from_rpc(exc, what="push message")
            self._stop.wait(0.2 * (attempt + 1))
        raise errors.TransportError("coordinator unreachable; message not delivered")

    def _report_failure(self, job_id: str, reason: str) -> None:
        stub = self._stub
        if stub is None:
            return
        try:
            stub.ReportFailure(
                pb.FailureReport(job_id=job_id, reason=reason), timeout=DEFAULT_DEADLINE
            )
        except grpc.RpcError as exc:
            log.warning("could not report failure of %s: %s", job_id, exc.code().name)

    def _audit_policy_version(self) -> None:
        heads = self.audit.entries_for_job("policy") if self.audit.size else []
        last = heads[-1].data.get("version") if heads else None
        if last != self.policy.version:
            self.audit.append(
                "policy.changed", job_id="policy", data={"version": self.policy.version}
            )


def _usage(outcome: JobOutcome) -> dict[str, Any]:
    if outcome.usage is None:
        return {}
    return {
        "rows": outcome.usage.rows_touched,
        "epsilon": outcome.usage.epsilon,
        "units": dict(outcome.usage.units),
    }
