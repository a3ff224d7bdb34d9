"""A job's life at the coordinator: validated and admitted, approved by every input
node, run, and ended once with a state and a human-readable reason; after a
restart, running jobs resume from their journal (or end, for job types that
declare they cannot)."""

from __future__ import annotations

import logging

from cleanroom import errors, jobtypes, serde, wire
from cleanroom.catalog import DatasetInfo
from cleanroom.jobspec import JobInput, JobSpec, parse_spec
from cleanroom.keys import KeyBundle
from cleanroom.model import ACTIVE_STATES, Decision, JobRecord, JobState
from coordinator.mailbox import analyst_mailbox, inbox
from coordinator.runner import JobRunner, RunSetup
from coordinator.state import CoordinatorState
from protocols.party import ANALYST

log = logging.getLogger(__name__)

RECONNECT_GRACE_S = 15.0
"""After a restart, how long (beyond the node timeout) a running job's nodes have
to reconnect before they count as lost."""
RESTART_REASON = (
    "the coordinator restarted while the job was running and this job type "
    "cannot resume; resubmit the job"
)


# ------------------------------------------------------------------ catalog --
def catalog(state: CoordinatorState) -> dict[str, list[DatasetInfo]]:
    return {
        n.name: serde.catalog_from_json(n.catalog_json)
        for n in state.store.list_nodes()
    }


def validate(state: CoordinatorState, spec_yaml: str) -> JobSpec:
    """Parse and check a spec against its job type and the catalog."""
    spec = parse_spec(spec_yaml)
    job_type = jobtypes.get(spec.type)
    known = catalog(state)
    resolved: dict[JobInput, DatasetInfo] = {}
    for i, item in enumerate(spec.inputs):
        if item.node not in known:
            names = ", ".join(sorted(known)) or "none registered"
            raise errors.SpecError(
                f"inputs[{i}].node", f"unknown node '{item.node}' (known: {names})"
            )
        datasets = {d.name: d for d in known[item.node]}
        if item.dataset not in datasets:
            raise errors.SpecError(
                f"inputs[{i}].dataset",
                f"node '{item.node}' has no dataset '{item.dataset}' "
                f"(it has: {', '.join(sorted(datasets)) or 'none'})",
            )
        resolved[item] = datasets[item.dataset]
    job_type.validate(spec, resolved)
    return spec


# ---------------------------------------------------------------- approvals --
def request_approvals(state: CoordinatorState, job: JobRecord) -> None:
    moved = state.store.transition(
        job.job_id,
        expected={JobState.SUBMITTED},
        new=JobState.AWAITING_APPROVAL,
        at=state.clock(),
    )
    if moved is None:
        return
    spec = parse_spec(job.spec_yaml)
    state.store.set_progress(
        job.job_id,
        "waiting for approval from " + ", ".join(spec.nodes),
        at=state.clock(),
    )
    for node in spec.nodes:
        send_approval(state, node, moved)


def send_approval(state: CoordinatorState, node: str, job: JobRecord) -> None:
    state.mailboxes.put(
        node,
        wire.ApprovalRequest(
            job.job_id,
            job.analyst,
            job.organisation,
            job.spec_yaml,
            job.signed_request,
            job.analyst_bundle,
        ),
    )
    state.record(job.job_id, "approval.requested", node)


def decide(
    state: CoordinatorState, node: str, job_id: str, approved: bool, reason: str
) -> None:
    job = state.store.get_job(job_id)
    spec = parse_spec(job.spec_yaml)
    if node not in spec.nodes:
        raise errors.AuthError(f"node '{node}' is not an input of job {job_id}")
    if job.state != JobState.AWAITING_APPROVAL:
        return  # a late decision on a job that already ended changes nothing
    state.store.record_decision(Decision(job_id, node, approved, reason, state.clock()))
    verdict = "approved" if approved else "refused"
    state.record(job_id, f"node.{verdict}", f"{node}: {reason}" if reason else node)
    if not approved:
        finish(state, job_id, JobState.REFUSED, f"node '{node}' refused: {reason}")
        return
    decisions = {d.node: d for d in state.store.decisions(job_id)}
    if all(n in decisions and decisions[n].approved for n in spec.nodes):
        start(state, job, spec)
    else:
        waiting = [n for n in spec.nodes if n not in decisions]
        state.store.set_progress(
            job_id, f"waiting for approval from {', '.join(waiting)}", at=state.clock()
        )


# ---------------------------------------------------------------------- run --
def _setup(state: CoordinatorState, job: JobRecord, spec: JobSpec) -> RunSetup:
    job_type = jobtypes.get(spec.type)
    analyst_bundle = (
        KeyBundle.from_bytes(job.analyst_bundle) if job.analyst_bundle else None
    )
    followers: tuple[str, ...] = ()
    if job_type.has_analyst_party(spec):
        if analyst_bundle is None:
            raise errors.AuthError(
                f"'{spec.type}' needs the analyst's protocol keys; submit it with a "
                "current client"
            )
        followers = (ANALYST,)
    return RunSetup(
        job_id=job.job_id,
        analyst=job.analyst,
        spec=spec,
        job_type=job_type,
        parties=spec.nodes,
        bundles={n: state.bundle_of(n) for n in spec.nodes},
        analyst_bundle=analyst_bundle,
        followers=followers,
        signed_request=job.signed_request,
    )


def start(state: CoordinatorState, job: JobRecord, spec: JobSpec) -> None:
    moved = state.store.transition(
        job.job_id,
        expected={JobState.AWAITING_APPROVAL},
        new=JobState.RUNNING,
        at=state.clock(),
    )
    if moved is None:
        return
    try:
        setup = _setup(state, moved, spec)
    except errors.CleanroomError as exc:
        finish(state, job.job_id, JobState.FAILED, f"the job could not start: {exc}")
        return
    run = JobRunner(state, setup, on_end=lambda j, s, r: finish(state, j, s, r))
    state.add_run(run)
    state.record(job.job_id, "job.started", ", ".join(spec.nodes))
    run.start()


def finish(state: CoordinatorState, job_id: str, new: JobState, reason: str) -> None:
    """End a job once, tell its parties, and forget its protocol state."""
    job = state.store.transition(
        job_id, expected=ACTIVE_STATES, new=new, reason=reason, at=state.clock()
    )
    run = state.pop_run(job_id)
    if run is not None:
        run.stop()
    if job is None:
        return
    state.metrics.job_ended(job, state.clock())
    state.store.set_progress(job_id, new.value, at=state.clock())
    state.record(job_id, f"job.{new.value}", reason)
    # A released job's analyst party may not have read its messages yet.
    keep = [analyst_mailbox(job_id)] if new == JobState.SUCCEEDED else []
    state.mailboxes.discard_job(job_id, keep=keep)
    state.mailboxes.drop(inbox(job_id))
    stop = wire.StopJob(job_id, new.value, reason)
    recipients = list(parse_spec(job.spec_yaml).nodes)
    if run is not None and ANALYST in run.members:
        recipients.append(analyst_mailbox(job_id))
    state.mailboxes.put_many((r, stop) for r in recipients)
    state.store.journal_drop(job_id)


def cancel(
    state: CoordinatorState, analyst: str, job_id: str, reason: str
) -> JobRecord:
    job = state.store.get_job(job_id)
    if job.analyst != analyst:
        raise errors.AuthError(f"job {job_id} belongs to another analyst")
    finish(state, job_id, JobState.CANCELLED, reason or f"cancelled by {analyst}")
    return state.store.get_job(job_id)


# ---------------------------------------------------------------- recovery --
def recover(state: CoordinatorState) -> None:
    """After a restart: resumable running jobs resume from their journal, others
    end with a clear reason; submitted jobs ask for approval again."""
    state.load_bundles()
    for job in state.store.jobs_in_states([JobState.RUNNING]):
        resume(state, job)
    for job in state.store.jobs_in_states([JobState.SUBMITTED]):
        request_approvals(state, job)


def resume(state: CoordinatorState, job: JobRecord) -> None:
    try:
        spec = parse_spec(job.spec_yaml)
        job_type = jobtypes.get(spec.type)
        journal = state.store.journal(job.job_id)
        if not job_type.resumable:
            finish(state, job.job_id, JobState.FAILED, RESTART_REASON)
            return
        setup = _setup(state, job, spec)
    except errors.CleanroomError as exc:
        finish(state, job.job_id, JobState.FAILED, f"could not resume the job: {exc}")
        return
    for party in setup.parties:
        # Nodes back off up to 10 s between reconnection attempts.
        state.presence.grace(party, state.node_timeout + RECONNECT_GRACE_S)
    run = JobRunner(state, setup, on_end=lambda j, s, r: finish(state, j, s, r))
    state.add_run(run)
    state.record(job.job_id, "job.resumed", f"{len(journal)} journal entries")
    run.start(journal or None)


def node_returned(
    state: CoordinatorState,
    node: str,
    running: frozenset[str],
    fresh: bool,
    delivered: int = 0,
) -> None:
    """A node (re)registered. A fresh node process lost its queued work and the
    protocol state of every job it was running; a node that kept running (the
    coordinator restarted, or the connection broke) keeps the jobs it names, and
    the jobs whose start is still queued for it past ``delivered`` (the last
    item it handled): it has not seen them yet and will start them next."""
    if fresh:
        state.mailboxes.restarted(node)
        coming: set[str] = set()
    else:
        coming = {
            item.work.job_id
            for item in state.mailboxes.pending_items(node)
            if item.seq > delivered and isinstance(item.work, wire.StartJob)
        }
    for run in state.runs():
        if (
            node in run.parties
            and run.is_member(node)
            and run.job_id not in running
            and run.job_id not in coming
        ):
            run.drop(frozenset({node}), "restarted and lost its part of the job")
    for job in state.store.jobs_in_states([JobState.AWAITING_APPROVAL]):
        spec = parse_spec(job.spec_yaml)
        decided = {d.node for d in state.store.decisions(job.job_id)}
        if node in spec.nodes and node not in decided and fresh:
            send_approval(state, node, job)


def sweep(state: CoordinatorState) -> None:
    """Drop nodes that lost contact from running jobs, and tick every deadline."""
    now = state.clock()
    for run in state.runs():
        lost = frozenset(
            n
            for n in run.parties
            if run.is_member(n) and not state.presence.connected(n)
        )
        if lost:
            run.drop(
                lost, f"lost contact (no contact for over {state.node_timeout:.0f}s)"
            )
        run.tick(now)


def decisions_view(
    state: CoordinatorState, job: JobRecord
) -> list[tuple[str, str, str]]:
    """(node, pending|approved|refused, reason) for every input of the job."""
    decided = {d.node: d for d in state.store.decisions(job.job_id)}
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


def has_analyst_party(job: JobRecord) -> bool:
    try:
        spec = parse_spec(job.spec_yaml)
        return jobtypes.get(spec.type).has_analyst_party(spec)
    except errors.CleanroomError:
        return False
