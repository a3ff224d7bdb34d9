"""What analysts ask of the coordinator: submit, watch, cancel and fetch jobs, read
the catalog, and run their party of a job (pull its mailbox, push messages)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from cleanroom import errors, serde, wire
from cleanroom.keys import KeyBundle, verify_key_bundle
from cleanroom.model import JobEvent, JobRecord, JobState, ModelEntry
from cleanroom.pki import Principal
from cleanroom.provenance import unpack_result
from cleanroom.requests import verify_request
from coordinator import lifecycle
from coordinator.handlers import nodes, relay
from coordinator.mailbox import analyst_mailbox
from coordinator.state import CoordinatorState
from protocols.party import ANALYST

_UNFINISHED: Final = (
    JobState.SUBMITTED,
    JobState.AWAITING_APPROVAL,
    JobState.RUNNING,
)


def submit(
    state: CoordinatorState, analyst: Principal, submission: wire.Submission
) -> JobRecord:
    """Validate, create and send out for approval. The signed request fixes the job
    id (the coordinator cannot choose one) and is checked here too, so junk is
    refused early; every node checks it again itself."""
    signed, bundle_bytes = submission.signed_request, submission.key_bundle
    if not signed or not bundle_bytes:
        raise errors.AuthError(
            "a job must be submitted as a request signed with the analyst's "
            "protocol key (use cleanroom.Client or the cleanroom CLI)"
        )
    spec = lifecycle.validate(state, submission.spec_yaml)
    now = state.clock()
    bundle = verify_key_bundle(
        KeyBundle.from_bytes(bundle_bytes),
        state.ca_pem,
        expected_name=analyst.name,
        role="analyst",
    )
    job_id = verify_request(
        signed, spec_yaml=submission.spec_yaml, bundle=bundle, now=now
    ).job_id
    job = JobRecord(
        job_id=job_id,
        analyst=analyst.name,
        job_type=spec.type,
        spec_yaml=submission.spec_yaml,
        spec_hash=spec.spec_hash,
        state=JobState.SUBMITTED,
        reason="",
        progress="submitted",
        created_at=now,
        updated_at=now,
        organisation=analyst.organisation,
        signed_request=signed,
        analyst_bundle=bundle_bytes,
    )
    with state.submissions:
        unfinished = [
            j
            for j in state.store.jobs_in_states(_UNFINISHED)
            if j.analyst == analyst.name
        ]
        if len(unfinished) >= state.max_jobs_per_analyst:
            raise errors.QuotaExceeded(
                [
                    f"analyst {analyst.name!r} has {len(unfinished)} unfinished jobs; "
                    f"this coordinator runs at most {state.max_jobs_per_analyst} "
                    "per analyst at once"
                ]
            )
        try:
            state.store.create_job(job)
        except errors.StoreError:
            state.store.get_job(job_id)  # NotFound: the store failed, say so
            raise errors.AuthError("this signed request was submitted before") from None
    state.record(
        job.job_id,
        "job.submitted",
        f"by {analyst.name}: {spec.type} on "
        + ", ".join(f"{i.node}/{i.dataset}" for i in spec.inputs),
    )
    lifecycle.request_approvals(state, job)
    return state.store.get_job(job.job_id)


def get_job(state: CoordinatorState, analyst: Principal, job_id: str) -> JobRecord:
    job = state.store.get_job(job_id)
    if job.analyst != analyst.name:
        raise errors.NotFound(f"no job {job_id}")
    return job


def list_jobs(
    state: CoordinatorState, analyst: Principal, limit: int
) -> list[JobRecord]:
    return state.store.list_jobs(analyst=analyst.name, limit=limit or 100)


def models(
    state: CoordinatorState, analyst: Principal, limit: int, job_id: str = ""
) -> list[ModelEntry]:
    """The analyst's own registry entries (one job's, if ``job_id`` is given)."""
    if job_id:
        entry = state.store.get_model(job_id)
        if entry.analyst != analyst.name:
            raise errors.NotFound(f"no model for job {job_id!r}")
        return [entry]
    return state.store.list_models(analyst=analyst.name, limit=limit or 100)


def cancel(
    state: CoordinatorState, analyst: Principal, job_id: str, reason: str
) -> JobRecord:
    return lifecycle.cancel(state, analyst.name, job_id, reason)


def events(state: CoordinatorState, analyst: Principal, job_id: str) -> list[JobEvent]:
    get_job(state, analyst, job_id)
    return state.store.events(job_id)


def result(
    state: CoordinatorState, analyst: Principal, job_id: str
) -> tuple[bytes, dict[str, bytes]]:
    """The released document, and its attachments."""
    job = get_job(state, analyst, job_id)
    if job.state != JobState.SUCCEEDED:
        raise errors.NotFound(
            f"job {job_id} has no result (state: {job.state}"
            + (f": {job.reason})" if job.reason else ")")
        )
    return unpack_result(state.store.get_result(job_id))


def pull(
    state: CoordinatorState,
    analyst: Principal,
    req: wire.PullRequest,
    is_active: Callable[[], bool] = lambda: True,
) -> wire.WorkBatch:
    """The analyst party's mailbox of one of the analyst's own jobs."""
    get_job(state, analyst, req.job_id)
    return nodes.pull(state, analyst_mailbox(req.job_id), req, is_active)


def push(
    state: CoordinatorState, analyst: Principal, msg: wire.ProtocolMessage
) -> None:
    get_job(state, analyst, msg.job_id)
    relay.push(state, ANALYST, msg)


def catalog(state: CoordinatorState) -> list[wire.CatalogNode]:
    return [
        wire.CatalogNode(
            record.name,
            state.presence.connected(record.name),
            state.presence.last_seen(record.name) or record.last_seen,
            tuple(serde.catalog_from_json(record.catalog_json)),
            record.key_bundle,
            tuple(serde.assets_from_json(record.assets_json)),
        )
        for record in state.store.list_nodes()
    ]
