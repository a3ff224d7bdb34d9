"""The ``he_inference`` job: private inference, the data product "delivered as a
model". A buyer (the analyst) scores its own rows against a model a holder has
registered on its node; the features stay encrypted under the buyer's CKKS key
and the weights never leave the owner. Parameters: see
``cleanroom.jobtypes.he_inference.params``; model registration:
``cleanroom.jobtypes.he_inference.service``; user docs: docs/he.md.

Protocol (``he_inference.parties``, on ``protocols.ckks``). The owner's node plans
the run from its model (parameter set chosen from the model's depth within the
HE-standard 128-bit limits) and sends the buyer a signed plan: model id and
version, input schema and standardisation, row count, parameter set. The buyer's
party reads its rows from its local input (never sent as they are), checks them
against the schema, encrypts one ciphertext per feature per slot block and sends
them with its public context. The owner evaluates, re-randomises and floods the
result (``protocols.ckks.flooding`` states the bound) and returns the scores; the
buyer decrypts them. The owner's signed summary of the run (rows, model, the
CKKS parameter set) is the released result; the scores are the analyst's only.

Metering: the spec declares ``rows``; the owner's node reserves that many
``scored_rows`` against the buyer's quota when it approves the job, before any
evaluation, and refuses a job beyond the quota without using any of it. It also
reserves ``evaluations_exposed``, the most model evaluations those rows' slot
blocks could carry for a buyer that fills every slot (a holder worried about
model extraction sets its quota on that meter).

What each party learns. The owner: the row and feature counts, the buyer and
purpose — no feature, no score. The coordinator: who takes part and the sizes of
sealed envelopes. The buyer: its scores (with flooding noise) and the public plan
— a coarse bound on the weights' size; like any scoring service, enough scores
can reveal a linear model (``protocols.ckks.config`` says how many). Operator and
buyer: what the buyer learns. Operator and owner: the counts and sizes only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cleanroom.jobspec import JobSpec
from cleanroom.jobtypes.base import (
    AnalystContext,
    CoordinatorContext,
    JobType,
    NodeContext,
    register,
)
from cleanroom.jobtypes.he_inference.params import (
    EXPOSED,
    UNIT,
    InferenceParams,
    exposed_bound,
    parse_params,
)
from cleanroom.jobtypes.he_inference.parties import (
    HeInferenceBuyer,
    HeInferenceCoordinator,
    HeInferenceOwner,
)
from cleanroom.jobtypes.hooks import (
    Admission,
    AdmissionContext,
    NodeEnvironment,
    Verdict,
)
from protocols.party import AnalystParty, CoordinatorParty, NodeParty

NAME = "he_inference"


class HeInferenceJob(JobType[InferenceParams]):
    """Score the analyst's encrypted rows against a holder's model."""

    name = NAME
    summary = (
        "score the analyst's CKKS-encrypted rows against a holder's registered "
        "model; the weights stay on the node, the scores go to the analyst only"
    )
    units = (UNIT, EXPOSED)
    rereadable = False
    resumable = False
    default_deadline = 300.0

    def parse_params(self, spec: JobSpec) -> InferenceParams:
        return parse_params(spec)

    def columns_used(self, spec: JobSpec) -> frozenset[str]:
        return frozenset()

    def estimate_units(self, spec: JobSpec, rows: int) -> Mapping[str, float]:
        declared = self.params(spec).rows
        return {UNIT: float(declared), EXPOSED: float(exposed_bound(declared))}

    def has_analyst_party(self, spec: JobSpec) -> bool:
        return True

    def node_service(self, env: NodeEnvironment) -> Any:
        from cleanroom.jobtypes.he_inference.service import ModelRegistry

        return ModelRegistry(env)

    def admit(self, spec: JobSpec, ctx: AdmissionContext) -> Admission | None:
        name = self.params(spec).model
        if ctx.service is None or ctx.service.get(name, ctx.dataset) is None:
            return Admission(
                Verdict.DENY,
                (f"this node offers no model {name!r} on {ctx.dataset!r}",),
            )
        return None

    def node_party(self, ctx: NodeContext) -> NodeParty:
        return HeInferenceOwner(ctx)

    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        return HeInferenceCoordinator(ctx)

    def analyst_party(self, ctx: AnalystContext) -> AnalystParty:
        return HeInferenceBuyer(ctx)


register(HeInferenceJob())

__all__ = ["NAME", "HeInferenceJob"]
