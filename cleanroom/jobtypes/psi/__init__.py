"""The ``psi`` job: private set intersection between holders (ECDH-PSI over
ristretto255, :mod:`protocols.psi`), relayed by the coordinator in envelopes
sealed node to node.

Outputs, per job and allowed by each holder's ``[jobtypes.psi] outputs``:
``intersection`` — each named receiver learns which of its own rows are shared
and keeps them node-side under the job id; ``cardinality`` — receivers learn only
how many; ``aligned`` — every input keeps its shared rows in one common order, for
a following job (:mod:`cleanroom.jobtypes.psi.store`). The analyst gets each
node's signed, sealed report: whether it received, and the intersection's size
where the receiver's ``report_cardinality`` allows.

What each party learns. Operator alone: who takes part, the sizes of the sealed
envelopes (so each set's size) and salted commitments; no key and no hash of a key
that can be recomputed without a party's secret scalar. Analyst alone: the
reports (receivers, the size). One holder: its own output per the mode and every
peer's set size; nothing of a peer's non-matching keys. Operator + analyst: the
two together. Operator + one holder: that holder's output and the sizes; the
other holders' keys stay blinded by their scalars. Semi-honest holders are
assumed (see :mod:`protocols.psi` for what a malicious one can do).
"""

from __future__ import annotations

from collections.abc import Mapping

from cleanroom.catalog import DatasetInfo
from cleanroom.errors import SpecError
from cleanroom.jobspec import JobInput, JobSpec
from cleanroom.jobtypes.base import (
    AnalystContext,
    CoordinatorContext,
    JobType,
    NodeContext,
    Review,
    register,
)
from cleanroom.jobtypes.hooks import (
    Admission,
    AdmissionContext,
    HolderContext,
    NodeEnvironment,
    Verdict,
)
from cleanroom.jobtypes.psi import store
from cleanroom.jobtypes.psi.params import PsiParams, parse
from cleanroom.jobtypes.psi.parties import (
    PsiAnalyst,
    PsiCoordinator,
    PsiNode,
    PsiService,
    PsiSettings,
)
from protocols.party import AnalystParty, CoordinatorParty, NodeParty


class PsiJob(JobType[PsiParams]):
    name = "psi"
    summary = "private set intersection: shared keys, their count or aligned rows"
    min_inputs = 2
    default_deadline = 1800.0
    """A million keys per party take minutes on two cores."""

    def parse_params(self, spec: JobSpec) -> PsiParams:
        return parse(spec)

    def check_catalog(
        self, spec: JobSpec, params: PsiParams, catalog: Mapping[JobInput, DatasetInfo]
    ) -> None:
        for info in catalog.values():
            missing = sorted(set(params.column_names) - set(info.column_names()))
            if missing:
                raise SpecError(
                    "params.columns",
                    f"dataset '{info.name}' has no column '{missing[0]}'",
                )

    def columns_used(self, spec: JobSpec) -> frozenset[str]:
        return frozenset(self.params(spec).column_names)

    def has_analyst_party(self, spec: JobSpec) -> bool:
        return True

    def node_service(self, env: NodeEnvironment) -> PsiService:
        store.ensure_schema(env.db)
        return PsiService(PsiSettings.parse(env.settings), env.db)

    def admit(self, spec: JobSpec, ctx: AdmissionContext) -> Admission | None:
        params = self.params(spec)
        settings: PsiSettings = ctx.service.settings
        reasons = []
        if params.output not in settings.outputs:
            reasons.append(f"'{params.output}' output is not allowed on this dataset")
        if params.max_items > settings.max_items:
            cap = settings.max_items
            reasons.append(f"max_items {params.max_items} exceeds this holder's {cap}")
        return Admission(Verdict.DENY, tuple(reasons)) if reasons else None

    def review(self, spec: JobSpec, job_id: str, holder: HolderContext) -> Review:
        params = self.params(spec)
        return Review(
            lines=(
                f"intersects {', '.join(params.column_names)} with "
                f"{', '.join(i.node for i in spec.inputs)}",
                f"output {params.output} to {', '.join(params.receivers)}",
            ),
            document={
                "columns": list(params.column_names),
                "output": params.output,
                "receivers": list(params.receivers),
                "max_items": params.max_items,
            },
        )

    def node_party(self, ctx: NodeContext) -> NodeParty:
        return PsiNode(ctx)

    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        return PsiCoordinator(ctx)

    def analyst_party(self, ctx: AnalystContext) -> AnalystParty:
        return PsiAnalyst(ctx)


register(PsiJob())

__all__ = ["PsiJob", "store"]
