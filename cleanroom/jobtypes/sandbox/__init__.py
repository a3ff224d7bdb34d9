"""The ``sandbox`` job: the analyst's own Python code runs on one node's dataset in
a locked-down container; only its vetted outputs, signed by the node, are released.

The spec carries the code as ``params.bundle`` (base64 of a tar.gz). The holder
reviews the bundle and approves its SHA-256 digest; the node runs only bundles
whose digest was approved for the dataset (``service.SandboxService``).

What each party learns. The holder: the code, and its outputs before release
when vetting holds them. The coordinator: that output was held for review, and a
salted commitment to the sealed output (never the output). The analyst: the
vetted outputs, signed by the node, and a generic failure reason, never the
code's stderr. Operator and analyst together: what the analyst learns. Vetting is
a help to review, not a proof: see docs/sandbox.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click

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
    HeldItem,
    HolderContext,
    NodeEnvironment,
)
from cleanroom.jobtypes.sandbox.book import SandboxBook
from cleanroom.jobtypes.sandbox.params import (
    NAME,
    SandboxParams,
    make_spec,
    pack_bundle,
    parse_params,
)
from cleanroom.jobtypes.sandbox.parties import (
    CPU_UNIT,
    SandboxAnalyst,
    SandboxCoordinator,
    SandboxNode,
)
from cleanroom.jobtypes.sandbox.rules import parse_rules
from protocols.party import AnalystParty, CoordinatorParty, NodeParty

__all__ = ["NAME", "SandboxJob", "make_spec", "pack_bundle"]

_MARGIN_S = 120.0
"""Added to the code's timeout for the stage that waits for its output."""


class SandboxJob(JobType[SandboxParams]):
    name = NAME
    summary = "the analyst's Python code on one dataset, in a sandbox; vetted outputs"
    units = (CPU_UNIT,)
    resumable = True

    def parse_params(self, spec: JobSpec) -> SandboxParams:
        if len(spec.inputs) != 1:
            raise SpecError(
                "inputs",
                f"a sandbox job reads exactly one dataset; got {len(spec.inputs)}",
            )
        return parse_params(spec)

    def check_catalog(
        self,
        spec: JobSpec,
        params: SandboxParams,
        catalog: Mapping[JobInput, DatasetInfo],
    ) -> None:
        for info in catalog.values():
            known = info.column_names()
            for i, column in enumerate(params.columns or ()):
                if column not in known:
                    raise SpecError(
                        f"params.columns[{i}]",
                        f"dataset '{info.name}' has no column {column!r}",
                    )

    def columns_used(self, spec: JobSpec) -> frozenset[str]:
        # Without params.columns the node mounts only the columns its policy
        # permits, so there is nothing more for the column rules to check.
        return frozenset(self.params(spec).columns or ())

    def estimate_units(self, spec: JobSpec, rows: int) -> Mapping[str, float]:
        return {CPU_UNIT: self.params(spec).timeout_s}

    def deadline(self, spec: JobSpec, stage: str) -> float:
        return max(
            super().deadline(spec, stage), self.params(spec).timeout_s + _MARGIN_S
        )

    def node_party(self, ctx: NodeContext) -> NodeParty:
        return SandboxNode(ctx)

    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        return SandboxCoordinator(ctx)

    def has_analyst_party(self, spec: JobSpec) -> bool:
        return True

    def analyst_party(self, ctx: AnalystContext) -> AnalystParty:
        return SandboxAnalyst(ctx)

    # ------------------------------------------------------- node-side hooks --
    def node_service(self, env: NodeEnvironment) -> Any:
        from cleanroom.jobtypes.sandbox.service import SandboxService

        return SandboxService(env)

    def admit(self, spec: JobSpec, ctx: AdmissionContext) -> Admission | None:
        if ctx.service is None:
            from cleanroom.jobtypes.hooks import Verdict

            return Admission(Verdict.DENY, ("this node offers no sandbox service",))
        return ctx.service.admit(self.params(spec), ctx)  # type: ignore[no-any-return]

    def review(self, spec: JobSpec, job_id: str, holder: HolderContext) -> Review:
        from cleanroom.jobtypes.sandbox.cli import holder_review

        dataset = spec.input_for(holder.node).dataset
        return holder_review(self.params(spec), job_id, dataset, spec.source, holder)

    def policy_rules(
        self, rules: Mapping[str, Any], *, where: str
    ) -> Mapping[str, Any]:
        return parse_rules(rules, where=where)

    def holder_approved(
        self, spec: JobSpec, job_id: str, holder: HolderContext, expect: str | None
    ) -> str:
        digest = self.params(spec).digest
        if expect is not None and (len(expect) < 12 or not digest.startswith(expect)):
            raise SpecError(
                "digest",
                f"{job_id}: its code's digest is {digest}, not {expect}…; review it "
                "again with `cleanroom node jobs --show`",
            )
        dataset = spec.input_for(holder.node).dataset
        SandboxBook(holder.db).approve_digest(dataset, digest, job_id)
        return f"code sha256 {digest}"

    def holder_waiting(self, holder: HolderContext) -> Sequence[HeldItem]:
        return [
            HeldItem(r.job_id, "output held", "; ".join(r.reasons))
            for r in SandboxBook(holder.db).held_outputs()
        ]

    # ------------------------------------------------------------------ CLI --
    def cli_commands(self) -> Sequence[click.Command]:
        from cleanroom.jobtypes.sandbox.cli import sandbox_group

        return (sandbox_group,)

    def node_cli_commands(self) -> Sequence[click.Command]:
        from cleanroom.jobtypes.sandbox.cli import node_reject, node_release

        return (node_release, node_reject)


register(SandboxJob())
