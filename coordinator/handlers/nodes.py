"""What nodes ask of the coordinator: register, pull work, push messages, report
decisions, failures and progress, and sign releases."""

from __future__ import annotations

from collections.abc import Callable

from cleanroom import errors, serde, wire
from cleanroom.audit.heads import parse_head
from cleanroom.audit.witness import accept_head, head_and_proof
from cleanroom.jobspec import parse_spec
from cleanroom.keys import KeyBundle, canonical_json, verify_key_bundle
from cleanroom.model import JobState, NodeRecord
from cleanroom.pki import Principal
from coordinator import lifecycle
from coordinator.handlers import relay
from coordinator.longpoll import bounded_wait
from coordinator.state import CoordinatorState


def register(
    state: CoordinatorState, node: Principal, reg: wire.Registration
) -> wire.RegisterReply:
    """A node (re)connects: verify its key bundle and publish its catalog entry."""
    bundle = verify_key_bundle(
        KeyBundle.from_bytes(reg.key_bundle), state.ca_pem, expected_name=node.name
    )
    now = state.clock()
    try:
        registered_at = state.store.get_node(node.name).registered_at
    except errors.NotFound:
        registered_at = now
    state.store.upsert_node(
        NodeRecord(
            node.name,
            reg.key_bundle,
            serde.catalog_to_json(reg.datasets),
            registered_at,
            now,
            serde.assets_to_json(reg.assets),
        )
    )
    state.set_bundle(node.name, bundle)
    state.presence.seen(node.name)
    state.audit.append(
        "node.registered",
        data={
            "node": node.name,
            "datasets": [d.name for d in reg.datasets],
            "signing_key": bundle.signing_public.hex(),
        },
    )
    lifecycle.node_returned(
        state,
        node.name,
        frozenset(reg.running_jobs),
        fresh=reg.delivered_seq == 0,
        delivered=reg.delivered_seq,
    )
    return wire.RegisterReply(state.node_timeout / 3, state.bundle.to_bytes())


def witness(
    state: CoordinatorState, node: Principal, req: wire.WitnessRequest
) -> wire.WitnessReply:
    """One step of the node's and the coordinator's logs witnessing each other
    (``cleanroom.audit.witness``). A node whose log forked is refused, and the
    refusal is recorded."""
    bundle = state.bundle_of(node.name)
    if not req.node_head:
        head, proof = head_and_proof(state.audit, req.coordinator_since)
        kept = state.audit.witnessed(node.name)
        return wire.WitnessReply(
            coordinator_head=canonical_json(head.to_json()),
            coordinator_proof=tuple(proof),
            node_since=kept.size if kept is not None else 0,
        )
    theirs = parse_head(req.node_head)
    try:
        accept_head(
            state.audit,
            theirs,
            req.node_proof,
            owner=node.name,
            key=bundle.signing_public,
            bundle=bundle.to_bytes(),
        )
    except errors.AuditError as exc:
        state.audit.append("audit.fork", data={"party": node.name, "detail": str(exc)})
        raise
    state.audit.add_cosignature(
        parse_head(req.coordinator_head),
        node.name,
        req.coordinator_cosignature,
        public_key=bundle.signing_public,
    )
    return wire.WitnessReply(node_cosignature=state.audit.cosign(theirs))


def pull(
    state: CoordinatorState,
    recipient: str,
    req: wire.PullRequest,
    is_active: Callable[[], bool] = lambda: True,
) -> wire.WorkBatch:
    """Long poll ``recipient``'s mailbox; when every long-poll slot is taken the
    pull does not wait, and asks the caller to retry a little later."""
    with state.polls.claim() as may_wait:
        state.presence.pull_started(recipient)
        try:
            items = state.mailboxes.take(
                recipient,
                ack=req.ack_seq,
                wait=bounded_wait(req.wait_seconds, may_wait),
                is_active=is_active,
            )
        finally:
            state.presence.pull_ended(recipient)
    retry = 0.0 if may_wait or items else state.polls.busy_retry
    return wire.WorkBatch(tuple(items), retry)


def pull_node(
    state: CoordinatorState,
    node: Principal,
    req: wire.PullRequest,
    is_active: Callable[[], bool] = lambda: True,
) -> wire.WorkBatch:
    if not state.registered(node.name):
        raise errors.AuthError(f"node '{node.name}' has not registered")
    batch = pull(state, node.name, req, is_active)
    state.touch(node.name)
    return batch


def push(state: CoordinatorState, node: Principal, msg: wire.ProtocolMessage) -> None:
    relay.push(state, node.name, msg)


def decision(
    state: CoordinatorState, node: Principal, report: wire.DecisionReport
) -> None:
    lifecycle.decide(state, node.name, report.job_id, report.approved, report.reason)


def failure(
    state: CoordinatorState, node: Principal, report: wire.FailureReport
) -> None:
    job = state.store.get_job(report.job_id)
    if node.name not in parse_spec(job.spec_yaml).nodes:
        raise errors.AuthError(
            f"node '{node.name}' is not an input of job {report.job_id}"
        )
    if job.state == JobState.RUNNING:
        run = state.run(report.job_id)
        if run is not None and not run.is_member(node.name):
            return  # it was dropped already; the job goes on without it
    lifecycle.finish(
        state,
        report.job_id,
        JobState.FAILED,
        f"node '{node.name}' failed: {report.reason}",
    )


def progress(
    state: CoordinatorState, node: Principal, report: wire.ProgressReport
) -> None:
    """A node's own account of its work, shown with the job's progress (nothing
    is decided on it)."""
    run = state.run(report.job_id)
    if run is None or not run.is_member(node.name):
        return
    run.node_progress(node.name, report.progress)


def sign_release(
    state: CoordinatorState, node: Principal, sig: wire.ReleaseSignature
) -> None:
    run = state.run(sig.job_id)
    if run is None:
        raise errors.ProtocolError(f"job {sig.job_id} is not waiting for signatures")
    if node.name not in run.parties or not run.is_member(node.name):
        raise errors.AuthError(
            f"node '{node.name}' is not a signer of job {sig.job_id}"
        )
    run.sign(node.name, sig)
