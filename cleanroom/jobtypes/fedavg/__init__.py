"""The ``fedavg`` job: horizontal federated training (FedAvg, FedProx, DP-FedSGD) of
logistic (binary, multinomial), linear and small-MLP models over the inputs' rows,
every contribution summed through SealedSum + SecAgg+; the model is sealed to the
analyst and registered in the coordinator's model registry.

Parameters (``docs/fedavg.md`` has every default)::

    features: [age, bmi, ...]     # numeric columns, the same at every input
    label: outcome                # numeric label / target column
    algorithm: logistic           # logistic | multinomial | linear | mlp
    classes: [0, 1]               # declared class labels (classification)
    feature_bounds: {age: [0, 120], ...}   # public, required; rows are clipped
    target_bounds: [0, 400]       # regression only
    rounds: 30
    local: {epochs: 1, batch_size: 32, learning_rate: 0.1, proximal_mu: 0.0}
    threshold: 3                  # fewest nodes any sum may cover
    graph: complete               # or k-regular: SecAgg+'s sparse sound graph
    dp: {epsilon: 1.0, delta: 1.0e-6, example_clip: 1.0}   # DP-FedSGD

Holder settings (node config ``[jobtypes.fedavg]``): ``max_rounds``,
``max_learning_rate``, ``min_rows`` and ``require_dp``; a node refuses a job
outside them, and refuses to train on fewer rows than ``min_rows`` or its
policy's ``min_group_size``.

Protocol (``parties``). The leader node (first by name) draws a 32-byte seed and
sends it only to the other nodes. Aggregation 0 sums the standardisation
statistics; aggregations 1..rounds the sample-weighted local updates with the
round's losses, accuracy counts and AUC histograms on every node's held-out
rows; a last one only evaluates. Each is its own SecAgg+ session over the
previous one's survivors, every input also masked and checksummed with the seed
(``protocols.sealed_sum``). The coordinator unmasks the SecAgg+ sum — still
masked — and hands it back; every node opens and checks it and runs the same
aggregator (``protocols.fl``) on it, so every node derives the same next model,
early-stopping and divergence decision. Nodes report each round's aggregated
metrics to the coordinator (progress, the training curve); at the end each node
seals its signed final report (weights, standardisation, history) to the analyst
and gives the coordinator a salted commitment, which it vouches for at release.

What each party learns. The coordinator (operator) alone: who survived each
round, and every round's aggregated metrics (mean losses, validation accuracy
and AUC, with DP noisy) — no update, no model, no row: every sum it unmasks is
masked with the nodes' seed and it cannot alter one undetected. The analyst
alone: the final model, its standardisation and the per-round metrics. One
holder: its own rows, and every round's global model and pooled standardisation
(that is how FedAvg trains). Operator and analyst together: the same. Operator
and one holder: the seed, hence every round's sum of updates and the global
models; SecAgg+ still hides every other node's individual update unless the
operator controls enough nodes to reach the round's threshold. Without DP,
sums of updates can still leak about rows; the ``dp`` option bounds what the
model and the metrics reveal about any one row (row-level DP, accountant in
``protocols.fl.privacy``), charged to each holder's budget before the job starts.

Export (``export``): the analyst writes its model as JSON (scikit-learn), ONNX or
an ``he_inference`` model asset; a holder serving the asset to buyers must name
every other training holder's consent in its node config (docs/he.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cleanroom.catalog import DatasetInfo
from cleanroom.errors import ConfigError, SpecError
from cleanroom.jobspec import JobInput, JobSpec
from cleanroom.jobtypes.base import (
    AnalystContext,
    CoordinatorContext,
    JobType,
    NodeContext,
    register,
)
from cleanroom.jobtypes.fedavg.params import FedSpec, check_schemas, parse
from cleanroom.jobtypes.fedavg.parties import FedAnalyst, FedCoordinator, FedNode
from protocols.party import AnalystParty, CoordinatorParty, NodeParty
from protocols.secagg.config import MIN_PARTIES

if TYPE_CHECKING:
    from cleanroom.jobtypes.hooks import Admission, AdmissionContext, NodeEnvironment


@dataclass(frozen=True)
class FedPolicy:
    """A holder's bounds on training jobs (node config ``[jobtypes.fedavg]``)."""

    max_rounds: int = 500
    max_learning_rate: float = 10.0
    min_rows: int = 0
    require_dp: bool = False

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> FedPolicy:
        unknown = sorted(set(m) - {"max_rounds", "max_learning_rate", "min_rows",
                                   "require_dp"})  # fmt: skip
        if unknown:
            raise ConfigError(f"jobtypes.fedavg.{unknown[0]}: unknown setting")
        try:
            return cls(
                max_rounds=int(m.get("max_rounds", 500)),
                max_learning_rate=float(m.get("max_learning_rate", 10.0)),
                min_rows=int(m.get("min_rows", 0)),
                require_dp=bool(m.get("require_dp", False)),
            )
        except (TypeError, ValueError):
            raise ConfigError("jobtypes.fedavg: settings must be numbers") from None

    def refusals(self, spec: FedSpec) -> list[str]:
        out = []
        if spec.params.rounds > self.max_rounds:
            out.append(
                f"rounds {spec.params.rounds} exceed this node's {self.max_rounds}"
            )
        if spec.learning_rate() > self.max_learning_rate:
            out.append(
                f"learning rate {spec.learning_rate():g} exceeds this node's "
                f"{self.max_learning_rate:g}"
            )
        if self.require_dp and spec.plan.privacy is None:
            out.append("this node trains only with dp")
        return out


class FedAvgJob(JobType[FedSpec]):
    """Federated averaging over horizontally partitioned inputs."""

    name = "fedavg"
    summary = (
        "federated training (FedAvg/FedProx, optional DP) of logistic, linear and "
        "MLP models; every update summed by SecAgg+; model sealed to the analyst"
    )
    min_inputs = MIN_PARTIES

    def parse_params(self, spec: JobSpec) -> FedSpec:
        return parse(spec.params, parties=len(spec.inputs))

    def check_catalog(
        self, spec: JobSpec, params: FedSpec, catalog: Mapping[JobInput, DatasetInfo]
    ) -> None:
        schemas = [
            (f"inputs[{i}]", catalog[item])
            for i, item in enumerate(spec.inputs)
            if item in catalog
        ]
        check_schemas(params, schemas)

    def columns_used(self, spec: JobSpec) -> frozenset[str]:
        return self.params(spec).columns()

    def epsilon(self, spec: JobSpec) -> tuple[float, float]:
        return self.params(spec).epsilon

    def node_service(self, env: NodeEnvironment) -> Any:
        return FedPolicy.from_mapping(env.settings)

    def admit(self, spec: JobSpec, ctx: AdmissionContext) -> Admission | None:
        from cleanroom.jobtypes.hooks import Admission, Verdict

        policy = ctx.service if isinstance(ctx.service, FedPolicy) else FedPolicy()
        reasons = policy.refusals(self.params(spec))
        return Admission(Verdict.DENY, tuple(reasons)) if reasons else None

    def node_party(self, ctx: NodeContext) -> NodeParty:
        policy = ctx.service if isinstance(ctx.service, FedPolicy) else FedPolicy()
        spec: FedSpec = ctx.params
        refused = policy.refusals(spec)
        if refused:
            raise SpecError("params", refused[0])
        return FedNode(ctx, spec, max(policy.min_rows, ctx.min_group_size, 1))

    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        return FedCoordinator(ctx, ctx.params)

    def has_analyst_party(self, spec: JobSpec) -> bool:
        return True

    def analyst_party(self, ctx: AnalystContext) -> AnalystParty:
        return FedAnalyst(ctx, ctx.params)

    # ---------------------------------------------------------- registry --
    def model_card(
        self, spec: JobSpec, document: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        from cleanroom.jobtypes.fedavg.card import model_card

        return model_card(self.params(spec), spec, document)

    def export_formats(self) -> Sequence[str]:
        from cleanroom.jobtypes.fedavg.export import FORMATS

        return FORMATS

    def export_model(
        self,
        reading: Mapping[str, Any],
        fmt: str | None = None,
        *,
        spec: JobSpec | None = None,
        job_id: str = "",
    ) -> bytes:
        from cleanroom.jobtypes.fedavg.export import export

        return export(reading, fmt, spec, job_id)


register(FedAvgJob())
