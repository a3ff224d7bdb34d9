"""The ``vertical_logreg`` and ``vertical_predict`` job types (see the package
docstring for the protocol and what each party learns)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cleanroom.catalog import DatasetInfo
from cleanroom.errors import ProtocolError
from cleanroom.jobspec import JobInput, JobSpec
from cleanroom.jobtypes.base import (
    AnalystContext,
    CoordinatorContext,
    JobType,
    NodeContext,
)
from cleanroom.jobtypes.hooks import (
    Admission,
    AdmissionContext,
    NodeEnvironment,
    Verdict,
)
from cleanroom.jobtypes.vertical import params as vparams
from cleanroom.jobtypes.vertical.curve import curve_png
from cleanroom.jobtypes.vertical.params import PredictParams, TrainParams
from cleanroom.jobtypes.vertical.release import (
    TrainingAnalyst,
    VerticalAnalyst,
    VerticalCoordinator,
)
from cleanroom.jobtypes.vertical.scoring import SCORES, GuestScorer, HostScorer
from cleanroom.jobtypes.vertical.service import VerticalService
from cleanroom.jobtypes.vertical.training import (
    EPOCH_MARK,
    PROGRESS,
    REPORT,
    GuestTrainer,
    HostTrainer,
)
from protocols.party import AnalystParty, CoordinatorParty, NodeParty

EPOCH_DEADLINE_S = 600.0


class VerticalLogRegJob(JobType[TrainParams]):
    name = "vertical_logreg"
    summary = (
        "logistic regression on columns split across holders (PSI + CKKS or Paillier)"
    )
    min_inputs = 2
    resumable = False
    default_deadline = EPOCH_DEADLINE_S

    def parse_params(self, spec: JobSpec) -> TrainParams:
        return vparams.parse_train(spec)

    def check_catalog(
        self,
        spec: JobSpec,
        params: TrainParams,
        catalog: Mapping[JobInput, DatasetInfo],
    ) -> None:
        vparams.check_train_catalog(params, catalog)

    def columns_used(self, spec: JobSpec) -> frozenset[str]:
        # Each input reads different columns; ``admit`` checks a node's own.
        return frozenset()

    def has_analyst_party(self, spec: JobSpec) -> bool:
        return True

    def node_service(self, env: NodeEnvironment) -> Any:
        return VerticalService(env, lists_assets=True)

    def admit(self, spec: JobSpec, ctx: AdmissionContext) -> Admission | None:
        params = self.params(spec)
        service: VerticalService = ctx.service
        reasons = []
        refused = sorted(
            set(vparams.used_by(params, ctx.node)) - service.permitted(ctx.dataset)
        )
        if refused:
            reasons.append(f"column '{refused[0]}' is not permitted by this node")
        legacy = params.gradient == "paillier" and params.key_bits < 3072
        if legacy and not service.settings.allow_legacy_2048:
            reasons.append(
                f"{params.key_bits}-bit Paillier keys are below this node's minimum"
            )
        if params.batch_size < service.env.policy.min_group_size(ctx.dataset):
            reasons.append("batch_size is below this node's minimum group size")
        return Admission(Verdict.DENY, tuple(reasons)) if reasons else None

    def node_party(self, ctx: NodeContext) -> NodeParty:
        params: TrainParams = ctx.params
        return GuestTrainer(ctx) if ctx.node == params.guest else HostTrainer(ctx)

    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        params: TrainParams = ctx.params
        return VerticalCoordinator(
            ctx, REPORT, guest=params.guest, mark=EPOCH_MARK, epochs=params.epochs
        )

    def analyst_party(self, ctx: AnalystContext) -> AnalystParty:
        params = self.params(ctx.spec)
        guest = params.guest

        def shape(statements: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
            report = statements[guest]
            card = dict(report["model_card"])
            card["inputs"] = {
                node: {"dataset": s["dataset"], "dataset_hash": s["dataset_hash"]}
                for node, s in sorted(statements.items())
            }
            return {
                "model_card": card,
                "training_curve": report["training_curve"],
                "training_curve_png": curve_png(report["training_curve"]),
                "metrics": report["metrics"],
            }

        return TrainingAnalyst(
            ctx,
            REPORT,
            shape,
            guest=guest,
            progress_stage=PROGRESS,
            epochs=params.epochs,
        )


class VerticalPredictJob(JobType[PredictParams]):
    name = "vertical_predict"
    summary = "scores ids with a split vertical model, each part on its own node"
    min_inputs = 2
    resumable = False

    def parse_params(self, spec: JobSpec) -> PredictParams:
        return vparams.parse_predict(spec)

    def check_catalog(
        self,
        spec: JobSpec,
        params: PredictParams,
        catalog: Mapping[JobInput, DatasetInfo],
    ) -> None:
        vparams.check_ids(catalog)

    def columns_used(self, spec: JobSpec) -> frozenset[str]:
        return frozenset()

    def has_analyst_party(self, spec: JobSpec) -> bool:
        return True

    def node_service(self, env: NodeEnvironment) -> Any:
        return VerticalService(env, lists_assets=False)

    def admit(self, spec: JobSpec, ctx: AdmissionContext) -> Admission | None:
        params = self.params(spec)
        service: VerticalService = ctx.service
        try:
            part = service.load(params.model)
        except (ProtocolError, OSError, ValueError):  # missing or unreadable part
            return Admission(Verdict.DENY, ("this node holds no such vertical model",))
        refused = sorted(set(part["columns"]) - service.permitted(ctx.dataset))
        if refused:
            return Admission(
                Verdict.DENY, (f"column '{refused[0]}' is not permitted by this node",)
            )
        return None

    def node_party(self, ctx: NodeContext) -> NodeParty:
        params: PredictParams = ctx.params
        return GuestScorer(ctx) if ctx.node == params.guest else HostScorer(ctx)

    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        params: PredictParams = ctx.params
        return VerticalCoordinator(ctx, SCORES, guest=params.guest, mark="", epochs=0)

    def analyst_party(self, ctx: AnalystContext) -> AnalystParty:
        guest = self.params(ctx.spec).guest

        def shape(statements: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
            report = statements[guest]
            return {
                "model": report["model"],
                "scores": dict(zip(report["ids"], report["scores"], strict=True)),
                "unscored": report["unscored"],
            }

        return VerticalAnalyst(ctx, SCORES, shape)
