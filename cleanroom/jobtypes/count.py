"""The ``count`` job: rows per input, optionally filtered; a count below the
dataset's minimum group size is suppressed on the node. Each node signs its count
and seals it to the analyst; the coordinator only relays and keeps a salted
commitment to each report, which every node vouches for at release.

What each party learns. The analyst: every node's count or that it was
suppressed, each signed by its node. The coordinator: nothing of the counts (it
holds commitments it cannot guess a count from), only who took part. One holder:
its own count. Operator and analyst together: what the analyst learns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cleanroom.catalog import DatasetInfo
from cleanroom.errors import ProtocolError, SpecError
from cleanroom.jobspec import JobInput, JobSpec
from cleanroom.jobtypes import predicates
from cleanroom.jobtypes.base import (
    AnalystContext,
    CoordinatorContext,
    JobType,
    NodeContext,
)
from cleanroom.jobtypes.sealing import (
    CommitmentCollector,
    ReportOpener,
    attest_commitment,
    seal_report,
)
from cleanroom.jobtypes.stats import limits
from cleanroom.jobtypes.tables import table_of
from protocols.party import (
    ANALYST,
    AnalystParty,
    CoordinatorParty,
    Inbound,
    NodeParty,
    NodeUsage,
    Outbound,
    Progress,
)

STAGE_COUNT: Final = "count.report"


@dataclass(frozen=True)
class CountParams:
    where: tuple[predicates.Predicate, ...]


class CountNode(NodeParty):
    """Counts matching rows; seals its signed, size-checked statement."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._digest: str | None = None

    def start(self) -> list[Outbound]:
        ctx = self._ctx
        params: CountParams = ctx.params
        count = table_of(ctx).count(params.where)
        released = count >= ctx.min_group_size
        statement: dict[str, Any] = {
            "job_id": ctx.job_id,
            "spec_hash": ctx.spec.spec_hash,
            "node": ctx.node,
            "dataset": ctx.dataset,
            "dataset_hash": ctx.dataset_hash,
            "count": count if released else None,
            "suppressed": not released,
        }
        out, self._digest = seal_report(ctx, STAGE_COUNT, statement)
        return out

    def receive(self, message: Inbound) -> list[Outbound]:
        raise ProtocolError(f"count expects no messages, got '{message.stage}'")

    @property
    def finished(self) -> bool:
        return self._digest is not None

    def usage(self) -> NodeUsage:
        return NodeUsage(rows_touched=table_of(self._ctx).rows)

    def attest(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        assert self._digest is not None
        return attest_commitment(self._ctx.node, self._digest, result)


class CountCoordinator(CoordinatorParty):
    """Collects every node's commitment; it never sees a count."""

    def __init__(self, ctx: CoordinatorContext) -> None:
        self._collector = CommitmentCollector(ctx, STAGE_COUNT)

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        self._collector.receive(message)
        return []

    @property
    def finished(self) -> bool:
        return self._collector.finished

    def waiting_for(self) -> frozenset[str]:
        return self._collector.waiting_for()

    def progress(self) -> Progress:
        return self._collector.progress()

    def result(self) -> Mapping[str, Any]:
        return self._collector.result()


class CountAnalyst(AnalystParty):
    """Opens the nodes' sealed counts and checks them against the release."""

    def __init__(self, ctx: AnalystContext) -> None:
        self._ctx = ctx
        self._opener = ReportOpener(
            STAGE_COUNT,
            ctx.parties,
            ctx.peer_signing_keys,
            lambda node: {
                "job_id": ctx.job_id,
                "spec_hash": ctx.spec.spec_hash,
                "dataset": ctx.spec.input_for(node).dataset,
            },
        )

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        self._opener.receive(message)
        return []

    @property
    def finished(self) -> bool:
        return self._opener.finished

    def progress(self) -> Progress:
        return self._opener.progress()

    def finalize(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        reports = self._opener.open(result)
        counts = [
            {
                "node": node,
                "dataset": reports[node].statement["dataset"],
                "count": reports[node].statement["count"],
                "suppressed": reports[node].statement["suppressed"],
            }
            for node in self._ctx.parties
        ]
        released = [c["count"] for c in counts if not c["suppressed"]]
        return {
            **result,
            "counts": counts,
            "total": sum(released) if len(released) == len(counts) else None,
            "reports": [reports[n].to_json() for n in self._ctx.parties],
        }


class CountJob(JobType[CountParams]):
    name = "count"
    summary = "rows per input, optionally filtered; small counts are suppressed"
    queries_table = True

    def parse_params(self, spec: JobSpec) -> CountParams:
        extra = sorted(set(spec.params) - {"where"})
        if extra:
            raise SpecError(f"params.{extra[0]}", "unknown parameter (allowed: where)")
        return CountParams(predicates.parse_where(spec.params.get("where"), []))

    def check_catalog(
        self,
        spec: JobSpec,
        params: CountParams,
        catalog: Mapping[JobInput, DatasetInfo],
    ) -> None:
        schemas = list(catalog.values())
        where = predicates.parse_where(spec.params.get("where"), schemas)
        limits.refuse_identifiers(schemas, where, None, {})

    def columns_used(self, spec: JobSpec) -> frozenset[str]:
        return frozenset(p.column for p in self.params(spec).where)

    def has_analyst_party(self, spec: JobSpec) -> bool:
        return True

    def node_party(self, ctx: NodeContext) -> NodeParty:
        return CountNode(ctx)

    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        return CountCoordinator(ctx)

    def analyst_party(self, ctx: AnalystContext) -> AnalystParty:
        return CountAnalyst(ctx)


__all__ = ["ANALYST", "STAGE_COUNT", "CountJob"]
