"""The node decides: every job request is checked here — the analyst's signed
request, the job type's params against the node's own view of its data, the
policy, the job type's own admission hook, the meters — before any row is
touched. An approval, its reservation and its audit entries commit together."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from cleanroom import errors, jobtypes, wire
from cleanroom.audit.log import AuditLog
from cleanroom.jobspec import JobSpec, parse_spec
from cleanroom.jobtypes.hooks import AdmissionContext, Verdict
from cleanroom.keys import KeyBundle, verify_key_bundle
from cleanroom.pki import principal_from_cert
from cleanroom.requests import verify_request
from node.datasets import DatasetRegistry
from node.meters import Meters
from node.policy import JobRequest, Outcome, PolicyDecision, PolicySet
from node.state import JobStatus, LocalJob, NodeState

log = logging.getLogger(__name__)

Report = Callable[[wire.DecisionReport], None]


@dataclass(frozen=True)
class Analyst:
    """Who asked, as the analyst's CA-issued certificate says (never a field the
    coordinator set)."""

    name: str
    organisation: str
    bundle: KeyBundle


class Admission:
    """Decides on job requests for one node."""

    def __init__(
        self,
        *,
        node: str,
        ca_pem: bytes,
        state: NodeState,
        meters: Meters,
        audit: AuditLog,
        policy: PolicySet,
        datasets: DatasetRegistry,
        services: dict[str, Any],
        report: Report,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._node = node
        self._ca_pem = ca_pem
        self._state = state
        self._meters = meters
        self._audit = audit
        self._policy = policy
        self._datasets = datasets
        self._services = services
        self._report = report
        self._clock = clock

    # ------------------------------------------------------------- checks --
    def analyst(self, bundle_bytes: bytes, *, expected: str = "") -> Analyst:
        """The analyst's bundle checked against the CA; name and organisation
        from its certificate."""
        bundle = verify_key_bundle(
            KeyBundle.from_bytes(bundle_bytes), self._ca_pem, role="analyst"
        )
        principal = principal_from_cert(bundle.cert_pem)
        if expected and principal.name != expected:
            raise errors.AuthError(
                f"the analyst's keys belong to {principal.name!r}, not {expected!r}"
            )
        return Analyst(principal.name, principal.organisation, bundle)

    def request(self, job_id: str, analyst: Analyst, spec: JobSpec) -> JobRequest:
        """The job as this node's policy and meters see it, from its own data."""
        mine = spec.input_for(self._node)
        job_type = jobtypes.get(spec.type)
        dataset = self._datasets.fresh(mine.dataset)
        job_type.check_catalog(spec, job_type.params(spec), {mine: dataset.info})
        columns = job_type.columns_used(spec)
        missing = sorted(columns - set(dataset.info.column_names()))
        if missing:
            raise errors.SpecError(
                "params", f"dataset '{mine.dataset}' has no column '{missing[0]}'"
            )
        policy = self._policy.for_dataset(mine.dataset)
        if (
            spec.deadline_seconds
            and spec.deadline_seconds > policy.max_deadline_seconds
        ):
            raise errors.PolicyRefusal(
                [
                    f"deadline_seconds {spec.deadline_seconds:g} exceeds this node's "
                    f"limit of {policy.max_deadline_seconds:g}"
                ]
            )
        epsilon, delta = job_type.epsilon(spec)
        rows = dataset.rows
        memory = job_type.estimate_memory(spec, rows)
        if memory > policy.max_job_memory:
            raise errors.PolicyRefusal(
                [
                    f"the job needs about {memory / 2**20:,.0f} MiB on this node "
                    f"(its job type's estimate from the spec); this dataset allows "
                    f"at most {policy.max_job_memory / 2**20:,.0f} MiB per job"
                ]
            )
        if (
            epsilon == 0
            and job_type.queries_table
            and dataset.in_engine
            and policy.differencing
        ):
            # Cells an engine counts have no row identities here, so nothing
            # would stop two exact releases from differencing out one row.
            raise errors.PolicyRefusal(
                [
                    f"dataset '{mine.dataset}' releases only differentially private "
                    "results to this job type: it is served by a database engine, "
                    "where this node keeps no record of released cells against "
                    "differencing (its holder may set differencing.enabled: false "
                    "to allow exact results)"
                ]
            )
        return JobRequest(
            job_id=job_id,
            analyst=analyst.name,
            organisation=analyst.organisation,
            job_type=spec.type,
            dataset=mine.dataset,
            columns=columns,
            purpose=spec.purpose,
            epsilon=epsilon,
            delta=delta,
            rows=rows,
            units=job_type.estimate_units(spec, rows),
        )

    # --------------------------------------------------------- decisions --
    def on_request(self, req: wire.ApprovalRequest) -> None:
        now = self._clock()
        try:
            spec = parse_spec(req.spec_yaml)
            dataset = spec.input_for(self._node).dataset
        except errors.SpecError as exc:
            self._refuse_unrecorded(req.job_id, f"invalid job spec: {exc}")
            return
        try:
            existing: LocalJob | None = self._state.get(req.job_id)
        except errors.NotFound:
            existing = None
        if existing is not None:
            if existing.status != JobStatus.PENDING:
                self.report(existing)  # the coordinator asks again (it restarted)
            return
        try:
            analyst = self.analyst(req.analyst_bundle, expected=req.analyst)
            signed = verify_request(
                req.signed_request,
                spec_yaml=req.spec_yaml,
                bundle=analyst.bundle,
                now=now,
            )
            if signed.job_id != req.job_id:
                raise errors.AuthError("the job id does not match the signed request")
        except errors.CleanroomError as exc:
            self._refuse_unrecorded(
                req.job_id, f"the job request is not genuine: {exc}"
            )
            return
        record = LocalJob(
            req.job_id,
            analyst.name,
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
            analyst.organisation,
            req.signed_request,
            req.analyst_bundle,
        )
        try:
            self._state.claim_nonce(signed.nonce, req.job_id)
            request = self.request(req.job_id, analyst, spec)
        except errors.CleanroomError as exc:
            self._state.record(record)
            self.decide(req.job_id, False, str(exc))
            return
        decision = self._refine(spec, request, self._policy.evaluate(request, now=now))
        reasons = "; ".join(decision.reasons)
        if decision.outcome == Outcome.HOLD:
            # Recorded held, with its reasons, in one write: the holder may decide
            # as soon as the job is visible, and nothing here may overwrite that.
            record = replace(record, reason=reasons)
        with self._state.db.transaction():
            self._state.record(record)
            self._audit.append(
                "job.requested",
                job_id=req.job_id,
                data={
                    "analyst": analyst.name,
                    "organisation": analyst.organisation,
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
            self.decide(req.job_id, False, reasons)
        elif decision.outcome == Outcome.HOLD:
            log.info("job %s held for the holder's decision: %s", req.job_id, reasons)
        else:
            self.approve(req.job_id, request, decided_by="policy", reason=reasons)

    def _refine(
        self, spec: JobSpec, request: JobRequest, decision: PolicyDecision
    ) -> PolicyDecision:
        """The job type's admission hook may deny or hold what the policy allows."""
        if decision.outcome == Outcome.DENY:
            return decision
        job_type = jobtypes.get(spec.type)
        refined = job_type.admit(
            spec,
            AdmissionContext(
                job_id=request.job_id,
                node=self._node,
                dataset=request.dataset,
                analyst=request.analyst,
                organisation=request.organisation,
                service=self._services.get(spec.type),
                audit=self._audit,
                policy_outcome=decision.outcome.value,
                max_cells=self._policy.for_dataset(request.dataset).max_cells,
            ),
        )
        if refined is None:
            return decision
        if refined.verdict == Verdict.DENY:
            return PolicyDecision(
                Outcome.DENY, refined.reasons, decision.policy_version
            )
        earlier = decision.reasons if decision.outcome == Outcome.HOLD else ()
        return PolicyDecision(
            Outcome.HOLD, (*earlier, *refined.reasons), decision.policy_version
        )

    def approve(
        self, job_id: str, request: JobRequest, *, decided_by: str, reason: str
    ) -> None:
        """Reserve the job's use and approve it, in one transaction with the audit."""
        policy = self._policy.for_dataset(request.dataset)
        try:
            with self._state.db.transaction():
                running = self._state.active(request.analyst, request.dataset)
                if running >= policy.max_concurrent_jobs:
                    raise errors.QuotaExceeded(
                        [
                            f"analyst {request.analyst!r} already has {running} jobs "
                            f"approved or running on {request.dataset!r}; this "
                            f"dataset allows {policy.max_concurrent_jobs} at once"
                        ]
                    )
                self._meters.reserve(
                    request,
                    policy.quota_limits(),
                    epsilon_budget=policy.epsilon_budget,
                    delta_budget=policy.delta_budget,
                    organisation_budget=policy.budget_shared_by_organisation,
                )
                self._audit.append(
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
                self._set_decision(job_id, True, reason, decided_by)
        except errors.QuotaExceeded as exc:
            self.decide(job_id, False, str(exc), decided_by=decided_by)
            return
        self._report_state(job_id)

    def decide(
        self, job_id: str, approved: bool, reason: str, *, decided_by: str = "policy"
    ) -> None:
        with self._state.db.transaction():
            self._set_decision(job_id, approved, reason, decided_by)
        self._report_state(job_id)

    def _set_decision(
        self, job_id: str, approved: bool, reason: str, decided_by: str
    ) -> None:
        status = JobStatus.APPROVED if approved else JobStatus.DENIED
        self._state.set_status(
            job_id, status, reason, decided_by=decided_by, reported=False
        )
        self._audit.append(
            "job.approved" if approved else "job.refused",
            job_id=job_id,
            data={"reason": reason, "decided_by": decided_by},
        )

    def _refuse_unrecorded(self, job_id: str, reason: str) -> None:
        """Refuse a request too broken to record as a job of this node."""
        self._audit.append("job.refused", job_id=job_id, data={"reason": reason})
        self._send(wire.DecisionReport(job_id, False, reason))

    def _report_state(self, job_id: str) -> None:
        try:
            self.report(self._state.get(job_id))
        except errors.NotFound:
            pass

    def report(self, job: LocalJob) -> None:
        approved = job.status in (JobStatus.APPROVED, JobStatus.RUNNING, JobStatus.DONE)
        if self._send(wire.DecisionReport(job.job_id, approved, job.reason)):
            # Only the flag: the job may have started meanwhile (RUNNING must stay).
            self._state.mark_reported(job.job_id)

    def _send(self, report: wire.DecisionReport) -> bool:
        try:
            self._report(report)
            return True
        except errors.CleanroomError as exc:
            log.warning("could not report decision on %s: %s", report.job_id, exc)
            return False

    def holder_decisions(self, connected: bool) -> None:
        """The holder's CLI writes decisions into the node's state; act on them."""
        for job in self._state.unreported():
            if job.decided_by == "holder" and job.status == JobStatus.APPROVED:
                try:
                    spec = parse_spec(job.spec_yaml)
                    analyst = self.analyst(job.analyst_bundle, expected=job.analyst)
                    request = self.request(job.job_id, analyst, spec)
                except errors.CleanroomError as exc:
                    self.decide(job.job_id, False, str(exc), decided_by="holder")
                    continue
                self._state.set_status(job.job_id, JobStatus.PENDING, "")
                self.approve(
                    job.job_id,
                    request,
                    decided_by="holder",
                    reason=job.reason or "approved by the data holder",
                )
            elif connected:
                if job.decided_by == "holder" and not any(
                    e.kind == "job.refused"
                    for e in self._audit.entries_for_job(job.job_id)
                ):
                    self._audit.append(
                        "job.refused",
                        job_id=job.job_id,
                        data={"reason": job.reason, "decided_by": "holder"},
                    )
                self.report(job)
