"""The scheduler: validates and admits jobs, gathers node approvals, drives each
job's coordinator-side party, relays node-to-node envelopes and ends every job
with a state and a human-readable reason."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cleanroom import errors, jobtypes, serde
from cleanroom.audit.heads import SignedTreeHead, verify_cosignature
from cleanroom.audit.log import AuditLog
from cleanroom.catalog import DatasetInfo
from cleanroom.envelope import ReplayGuard, verify_message
from cleanroom.jobspec import JobInput, JobSpec, parse_spec
from cleanroom.keys import (
    KeyBundle,
    canonical_json,
    verify_key_bundle,
    verify_statement,
)
from cleanroom.model import ACTIVE_STATES, Decision, JobRecord, JobState, NodeRecord
from cleanroom.provenance import head_to_dict, output_hash, serialize_result
from coordinator.mailbox import Mailboxes, Presence
from coordinator.store.base import Store
from proto import cleanroom_pb2 as pb
from protocols.party import COORDINATOR, CoordinatorParty, Inbound, Outbound

log = logging.getLogger(__name__)

BUSY_RETRY_SECONDS = 1.0
"""How long a node waits to pull again when no long-poll slot was free."""
RESTART_REASON = (
    "the coordinator restarted while the job was running and its protocol state "
    "was lost; resubmit the job"
)


@dataclass
class _Release:
    """A finished protocol's result, waiting for every party's signature."""

    document: dict[str, object]
    output_hash: str
    head: SignedTreeHead
    signatures: dict[str, dict[str, object]] = field(default_factory=dict)


@dataclass
class _Running:
    """In-memory state of a running job (lost on restart, which ends the job)."""

    job_id: str
    spec: JobSpec
    party: CoordinatorParty
    bundles: Mapping[str, KeyBundle]
    lock: threading.Lock = field(default_factory=threading.Lock)
    guard: ReplayGuard = field(default_factory=ReplayGuard)
    gone: set[str] = field(default_factory=set)
    stage_counts: dict[str, int] = field(default_factory=dict)
    last_stage: str = "start"
    release: _Release | None = None


class Scheduler:
    """All job logic of the coordinator; servicers only translate to and from gRPC."""

    def __init__(
        self,
        store: Store,
        *,
        ca_pem: bytes,
        audit: AuditLog,
        bundle: KeyBundle,
        node_timeout: float = 10.0,
        long_poll_slots: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.audit = audit
        self.bundle = bundle
        self.mailboxes = Mailboxes()
        self.presence = Presence(node_timeout, clock=clock)
        self._ca_pem = ca_pem
        self._clock = clock
        self._lock = threading.RLock()
        self._running: dict[str, _Running] = {}
        self._bundles: dict[str, KeyBundle] = {}
        # A long poll holds one RPC worker while it waits. Capping the waiting polls
        # below the pool size keeps workers free for pushes and analysts however
        # many nodes connect; a pull beyond the cap answers at once (see pull).
        self._poll_limit = long_poll_slots
        self._polls_waiting = 0
        self._poll_lock = threading.Lock()
        self._busy_retry = min(BUSY_RETRY_SECONDS, node_timeout / 3)

    # ------------------------------------------------------------ recovery --
    def recover(self) -> None:
        """After a restart: running jobs end with a clear reason; the rest resume."""
        for node in self.store.list_nodes():
            try:
                self._bundles[node.name] = KeyBundle.from_bytes(node.key_bundle)
            except errors.CryptoError:
                log.warning("stored key bundle of %s is unreadable", node.name)
        for job in self.store.jobs_in_states([JobState.RUNNING]):
            self._finish(job.job_id, JobState.FAILED, RESTART_REASON)
        for job in self.store.jobs_in_states([JobState.SUBMITTED]):
            self._request_approvals(job)

    # ---------------------------------------------------------------- nodes --
    def register(
        self, node: str, bundle_bytes: bytes, datasets: Sequence[DatasetInfo]
    ) -> None:
        """A node (re)connects: verify its key bundle and publish its catalog entry."""
        bundle = verify_key_bundle(
            KeyBundle.from_bytes(bundle_bytes), self._ca_pem, expected_name=node
        )
        now = self._clock()
        try:
            registered_at = self.store.get_node(node).registered_at
        except errors.NotFound:
            registered_at = now
        self.store.upsert_node(
            NodeRecord(
                node, bundle_bytes, serde.catalog_to_json(datasets), registered_at, now
            )
        )
        with self._lock:
            self._bundles[node] = bundle
        self.presence.seen(node)
        self.audit.append(
            "node.registered",
            data={
                "node": node,
                "datasets": [d.name for d in datasets],
                "signing_key": bundle.signing_public.hex(),
            },
        )
        # A node that comes back has lost the protocol state of its running jobs.
        for run in list(self._running.values()):
            if node in run.spec.nodes and node not in run.gone:
                self._drop(run, {node}, "restarted")
        for job in self.store.jobs_in_states([JobState.AWAITING_APPROVAL]):
            spec = parse_spec(job.spec_yaml)
            decided = {d.node for d in self.store.decisions(job.job_id)}
            if node in spec.nodes and node not in decided:
                self._send_approval(node, job)

    def pull(
        self, node: str, wait: float, is_active: Callable[[], bool] = lambda: True
    ) -> pb.WorkBatch:
        """Long poll: a node that went away stops counting as connected at once.

        When every long-poll slot is taken the pull does not wait: it returns what
        is queued, and if that is nothing, asks the node to retry a little later.
        """
        may_wait = self._claim_poll_slot()
        self.presence.pull_started(node)
        try:
            wait = min(max(wait, 0.0), 30.0) if may_wait else 0.0
            items = self.mailboxes.take(node, wait, is_active=is_active)
        finally:
            if may_wait:
                with self._poll_lock:
                    self._polls_waiting -= 1
            self.presence.pull_ended(node)
            self.store.touch_node(node, at=self._clock())
        retry = 0.0 if may_wait or items else self._busy_retry
        return pb.WorkBatch(items=items, retry_after_seconds=retry)

    @property
    def polls_waiting(self) -> int:
        """Long polls holding an RPC worker right now."""
        with self._poll_lock:
            return self._polls_waiting

    def _claim_poll_slot(self) -> bool:
        with self._poll_lock:
            if self._poll_limit is not None and self._polls_waiting >= self._poll_limit:
                return False
            self._polls_waiting += 1
            return True

    def decision(self, node: str, job_id: str, approved: bool, reason: str) -> None:
        job = self.store.get_job(job_id)
        spec = parse_spec(job.spec_yaml)
        if node not in spec.nodes:
            raise errors.AuthError(f"node '{node}' is not an input of job {job_id}")
        if job.state != JobState.AWAITING_APPROVAL:
            return  # a late decision on a job that already ended changes nothing
        self.store.record_decision(
            Decision(job_id, node, approved, reason, self._clock())
        )
        verdict = "approved" if approved else "refused"
        self._event(job_id, f"node.{verdict}", f"{node}: {reason}" if reason else node)
        if not approved:
            self._finish(job_id, JobState.REFUSED, f"node '{node}' refused: {reason}")
            return
        decisions = {d.node: d for d in self.store.decisions(job_id)}
        if all(n in decisions and decisions[n].approved for n in spec.nodes):
            self._start(job, spec)
        else:
            waiting = [n for n in spec.nodes if n not in decisions]
            self.store.set_progress(
                job_id,
                f"waiting for approval from {', '.join(waiting)}",
                at=self._clock(),
            )

    def message(self, node: str, msg: pb.ProtocolMessage) -> None:
        """A message pushed by ``node``: for the coordinator's party, or to relay."""
        if msg.sender != node:
            raise errors.AuthError(f"node '{node}' may not send as '{msg.sender}'")
        run = self._running.get(msg.job_id)
        if run is None:
            raise errors.ProtocolError(f"job {msg.job_id} is not running")
        if node not in run.spec.nodes:
            raise errors.AuthError(f"node '{node}' is not a party of job {msg.job_id}")
        if node in run.gone:
            raise errors.ProtocolError(
                f"node '{node}' was dropped from job {msg.job_id}"
            )
        if msg.recipient != COORDINATOR:
            if msg.recipient not in run.spec.nodes:
                raise errors.ProtocolError(
                    f"'{msg.recipient}' is not a party of this job"
                )
            self.mailboxes.put(msg.recipient, pb.WorkItem(message=msg))
            return
        bundle = run.bundles[node]
        header, payload = verify_message(
            msg.body, signing_public=bundle.signing_public, recipient=COORDINATOR
        )
        if (header.job_id, header.sender, header.stage) != (
            msg.job_id,
            node,
            msg.stage,
        ):
            raise errors.EnvelopeError("message header does not match its envelope")
        with run.lock:
            run.guard.check(header)
            try:
                outbound = run.party.receive(Inbound(node, msg.stage, payload))
            except errors.ProtocolError as exc:
                self._finish(
                    msg.job_id,
                    JobState.FAILED,
                    f"protocol error at stage '{msg.stage}' from '{node}': {exc}",
                )
                return
            run.stage_counts[msg.stage] = run.stage_counts.get(msg.stage, 0) + 1
            run.last_stage = msg.stage
            self._dispatch(run, outbound)
            self.store.set_progress(
                msg.job_id,
                f"stage {msg.stage}: {run.stage_counts[msg.stage]} of "
                f"{len(run.spec.nodes)} parties reported",
                at=self._clock(),
            )
            self._maybe_complete(run)

    def failure(self, node: str, job_id: str, reason: str) -> None:
        job = self.store.get_job(job_id)
        if node not in parse_spec(job.spec_yaml).nodes:
            raise errors.AuthError(f"node '{node}' is not an input of job {job_id}")
        self._finish(job_id, JobState.FAILED, f"node '{node}' failed: {reason}")

    # ------------------------------------------------------------- analysts --
    def catalog(self) -> dict[str, list[DatasetInfo]]:
        return {
            n.name: serde.catalog_from_json(n.catalog_json)
            for n in self.store.list_nodes()
        }

    def validate(self, spec_yaml: str) -> JobSpec:
        """Parse and check a spec against the job type and the catalog."""
        spec = parse_spec(spec_yaml)
        job_type = jobtypes.get(spec.type)
        catalog = self.catalog()
        resolved: dict[JobInput, DatasetInfo] = {}
        for i, item in enumerate(spec.inputs):
            if item.node not in catalog:
                known = ", ".join(sorted(catalog)) or "none registered"
                raise errors.SpecError(
                    f"inputs[{i}].node", f"unknown node '{item.node}' (known: {known})"
                )
            datasets = {d.name: d for d in catalog[item.node]}
            if item.dataset not in datasets:
                raise errors.SpecError(
                    f"inputs[{i}].dataset",
                    f"node '{item.node}' has no dataset '{item.dataset}' "
                    f"(it has: {', '.join(sorted(datasets)) or 'none'})",
                )
            resolved[item] = datasets[item.dataset]
        job_type.validate(spec, resolved)
        return spec

    def submit(
        self, analyst: str, spec_yaml: str, *, organisation: str = ""
    ) -> JobRecord:
        spec = self.validate(spec_yaml)
        now = self._clock()
        job = JobRecord(
            job_id=f"job-{secrets.token_hex(8)}",
            analyst=analyst,
            job_type=spec.type,
            spec_yaml=spec_yaml,
            spec_hash=spec.spec_hash,
            state=JobState.SUBMITTED,
            reason="",
            progress="submitted",
            created_at=now,
            updated_at=now,
            organisation=organisation,
        )
        self.store.create_job(job)
        self._event(
            job.job_id,
            "job.submitted",
            f"by {analyst}: {spec.type} on "
            + ", ".join(f"{i.node}/{i.dataset}" for i in spec.inputs),
        )
        self._request_approvals(job)
        return self.store.get_job(job.job_id)

    def cancel(self, analyst: str, job_id: str, reason: str) -> JobRecord:
        job = self.store.get_job(job_id)
        if job.analyst != analyst:
            raise errors.AuthError(f"job {job_id} belongs to another analyst")
        self._finish(job_id, JobState.CANCELLED, reason or f"cancelled by {analyst}")
        return self.store.get_job(job_id)

    def get_job(self, analyst: str, job_id: str) -> JobRecord:
        job = self.store.get_job(job_id)
        if job.analyst != analyst:
            raise errors.NotFound(f"no job {job_id}")
        return job

    def result(self, analyst: str, job_id: str) -> bytes:
        job = self.get_job(analyst, job_id)
        if job.state != JobState.SUCCEEDED:
            raise errors.NotFound(
                f"job {job_id} has no result (state: {job.state}"
                + (f": {job.reason})" if job.reason else ")")
            )
        return self.store.get_result(job_id)

    # ---------------------------------------------------------- background --
    def sweep(self) -> None:
        """Drop parties that lost contact from running jobs (the protocol decides)."""
        for run in list(self._running.values()):
            lost = {
                n
                for n in run.spec.nodes
                if n not in run.gone and not self.presence.connected(n)
            }
            if lost:
                self._drop(
                    run,
                    lost,
                    f"lost contact (no contact for over {self.presence.timeout:.0f}s)",
                )

    # ------------------------------------------------------------- internals --
    def _request_approvals(self, job: JobRecord) -> None:
        moved = self.store.transition(
            job.job_id,
            expected={JobState.SUBMITTED},
            new=JobState.AWAITING_APPROVAL,
            at=self._clock(),
        )
        if moved is None:
            return
        spec = parse_spec(job.spec_yaml)
        self.store.set_progress(
            job.job_id,
            "waiting for approval from " + ", ".join(spec.nodes),
            at=self._clock(),
        )
        for node in spec.nodes:
            self._send_approval(node, moved)

    def _send_approval(self, node: str, job: JobRecord) -> None:
        self.mailboxes.put(
            node,
            pb.WorkItem(
                approval=pb.ApprovalRequest(
                    job_id=job.job_id,
                    analyst=job.analyst,
                    spec_yaml=job.spec_yaml,
                    organisation=job.organisation,
                )
            ),
        )
        self._event(job.job_id, "approval.requested", node)

    def _start(self, job: JobRecord, spec: JobSpec) -> None:
        with self._lock:
            moved = self.store.transition(
                job.job_id,
                expected={JobState.AWAITING_APPROVAL},
                new=JobState.RUNNING,
                at=self._clock(),
            )
            if moved is None:
                return
            bundles = {n: self._bundles[n] for n in spec.nodes}
            ctx = jobtypes.CoordinatorContext(
                job_id=job.job_id,
                spec=spec,
                parties=spec.nodes,
                signing_keys={n: b.signing_public for n, b in bundles.items()},
            )
            party = jobtypes.get(spec.type).coordinator_party(ctx)
            run = _Running(job.job_id, spec, party, bundles)
            self._running[job.job_id] = run
        self._event(job.job_id, "job.started", ", ".join(spec.nodes))
        self.store.set_progress(job.job_id, "started", at=self._clock())
        start = pb.StartJob(
            job_id=job.job_id,
            analyst=job.analyst,
            spec_yaml=job.spec_yaml,
            parties=list(spec.nodes),
            key_bundles=[b.to_bytes() for b in bundles.values()],
        )
        for node in spec.nodes:
            self.mailboxes.put(node, pb.WorkItem(start=start))
        with run.lock:
            try:
                self._dispatch(run, party.start())
            except errors.ProtocolError as exc:
                self._finish(
                    job.job_id, JobState.FAILED, f"protocol could not start: {exc}"
                )
                return
            self._maybe_complete(run)

    def _dispatch(self, run: _Running, outbound: list[Outbound]) -> None:
        for out in outbound:
            if out.recipient not in run.spec.nodes:
                raise errors.ProtocolError(
                    f"party addressed unknown recipient '{out.recipient}'"
                )
            if out.recipient in run.gone:
                continue
            self.mailboxes.put(
                out.recipient,
                pb.WorkItem(
                    message=pb.ProtocolMessage(
                        job_id=run.job_id,
                        sender=COORDINATOR,
                        recipient=out.recipient,
                        stage=out.stage,
                        body=out.payload,
                    )
                ),
            )

    def _drop(self, run: _Running, nodes: set[str], why: str) -> None:
        with run.lock:
            if run.job_id not in self._running:
                return
            run.gone |= nodes
            names = ", ".join(sorted(nodes))
            self._event(run.job_id, "node.dropped", f"{names}: {why}")
            if run.release is not None:
                self._finish(
                    run.job_id,
                    JobState.FAILED,
                    f"node {names} {why} before signing the release",
                )
                return
            try:
                self._dispatch(run, run.party.dropped(frozenset(nodes)))
            except errors.ProtocolError as exc:
                stage = run.last_stage
                self._finish(
                    run.job_id,
                    JobState.FAILED,
                    f"node {names} {why} during stage '{stage}': {exc}",
                )
                return
            self._maybe_complete(run)

    def _maybe_complete(self, run: _Running) -> None:
        """The protocol finished: ask every remaining party to sign the output."""
        if not run.party.finished or run.release is not None:
            return
        document: dict[str, object] = {
            "job_id": run.job_id,
            "type": run.spec.type,
            "spec_hash": run.spec.spec_hash,
            "inputs": [{"node": i.node, "dataset": i.dataset} for i in run.spec.inputs],
            "completed_at": self._clock(),
            "result": json.loads(canonical_json(dict(run.party.result()))),
        }
        digest = output_hash(document)
        self._event(run.job_id, "job.output", f"output sha256 {digest}")
        head = self.audit.tree_head()
        run.release = _Release(document, digest, head)
        signers = [n for n in run.spec.nodes if n not in run.gone]
        request = pb.ReleaseRequest(
            job_id=run.job_id,
            output_hash=digest,
            coordinator_head=canonical_json(head_to_dict(head)),
        )
        for node in signers:
            self.mailboxes.put(node, pb.WorkItem(release=request))
        self.store.set_progress(
            run.job_id, "collecting the nodes' release signatures", at=self._clock()
        )

    def sign_release(self, node: str, msg: pb.ReleaseSignature) -> None:
        """A node's provenance signature and co-signature of our audit tree head."""
        run = self._running.get(msg.job_id)
        if run is None or run.release is None:
            raise errors.ProtocolError(
                f"job {msg.job_id} is not waiting for signatures"
            )
        if node not in run.spec.nodes or node in run.gone:
            raise errors.AuthError(f"node '{node}' is not a signer of job {msg.job_id}")
        release = run.release
        try:
            statement = json.loads(msg.statement_json)
        except ValueError as exc:
            raise errors.ProtocolError("malformed release statement") from exc
        bundle = run.bundles[node]
        verify_statement(bundle.signing_public, statement, msg.signature)
        expected = {
            "job_id": run.job_id,
            "node": node,
            "spec_hash": run.spec.spec_hash,
            "output_hash": release.output_hash,
            "dataset": run.spec.input_for(node).dataset,
            "coordinator_audit_head": head_to_dict(release.head),
        }
        if any(statement.get(k) != v for k, v in expected.items()):
            raise errors.InvalidSignature("release statement is for another output")
        cosigned = SignedTreeHead(
            release.head.owner,
            release.head.size,
            release.head.root_hash,
            release.head.timestamp,
            release.head.signature,
            {node: msg.cosignature},
        )
        verify_cosignature(cosigned, node, bundle.signing_public)
        self.audit.add_cosignature(
            release.head, node, msg.cosignature, public_key=bundle.signing_public
        )
        with run.lock:
            release.signatures[node] = {
                "node": node,
                "statement": statement,
                "signature": msg.signature,
            }
            if set(release.signatures) < {
                n for n in run.spec.nodes if n not in run.gone
            }:
                return
            document = dict(release.document)
            document["provenance"] = {
                "output_hash": release.output_hash,
                "attestations": [
                    release.signatures[n] for n in sorted(release.signatures)
                ],
                "key_bundles": {
                    n: base64.b64encode(run.bundles[n].to_bytes()).decode()
                    for n in sorted(release.signatures)
                },
                "coordinator_head": head_to_dict(release.head),
                "coordinator_bundle": base64.b64encode(self.bundle.to_bytes()).decode(),
            }
            self.store.put_result(run.job_id, serialize_result(document))
            self._finish(
                run.job_id,
                JobState.SUCCEEDED,
                f"result released, signed by {', '.join(sorted(release.signatures))}",
            )

    def _finish(self, job_id: str, state: JobState, reason: str) -> None:
        """End a job once, tell its nodes, and forget its protocol state."""
        job = self.store.transition(
            job_id, expected=ACTIVE_STATES, new=state, reason=reason, at=self._clock()
        )
        with self._lock:
            self._running.pop(job_id, None)
        if job is None:
            return
        self.store.set_progress(job_id, state.value, at=self._clock())
        self._event(job_id, f"job.{state.value}", reason)
        self.mailboxes.discard_job(job_id)
        stop = pb.WorkItem(
            stop=pb.StopJob(job_id=job_id, state=state.value, reason=reason)
        )
        for node in parse_spec(job.spec_yaml).nodes:
            self.mailboxes.put(node, stop)

    def _event(self, job_id: str, kind: str, detail: str) -> None:
        """Every step goes to the job's history and to the signed audit ledger."""
        self.store.append_event(job_id, kind, detail, at=self._clock())
        self.audit.append(kind, job_id=job_id, data={"detail": detail})


def decisions_view(store: Store, job: JobRecord) -> list[tuple[str, str, str]]:
    """(node, pending|approved|refused, reason) for every input of the job."""
    decided = {d.node: d for d in store.decisions(job.job_id)}
    rows = []
    for node in parse_spec(job.spec_yaml).nodes:
        d = decided.get(node)
        rows.append(
            (
                node,
                "pending" if d is None else ("approved" if d.approved else "refused"),
                d.reason if d else "",
            )
        )
    return rows
