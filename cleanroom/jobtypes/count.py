"""The ``count`` job: rows per input, optionally filtered, each released only when it
reaches the dataset's minimum group size and signed by the node that computed it.

What each party learns: every node's (suppressed or released) count, and which
counts were suppressed, is seen by the coordinator and the analyst; a node learns
nothing of the others."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cleanroom.catalog import DatasetInfo
from cleanroom.errors import ProtocolError, SpecError
from cleanroom.jobspec import JobInput, JobSpec
from cleanroom.jobtypes import predicates
from cleanroom.jobtypes.base import (
    CoordinatorContext,
    JobType,
    NodeContext,
    OneShotNode,
    check_node_statement,
)
from cleanroom.keys import sign_statement
from protocols.party import (
    COORDINATOR,
    CoordinatorParty,
    Inbound,
    NodeParty,
    Outbound,
    Progress,
)

STAGE_COUNT: Final = "count.report"


@dataclass(frozen=True)
class CountParams:
    where: tuple[predicates.Predicate, ...]


class CountNode(OneShotNode):
    """Counts matching rows and reports a signed, size-checked statement."""

    def report(self) -> Outbound:
        ctx = self._ctx
        params: CountParams = ctx.params
        count = int(predicates.apply(params.where, ctx.data).sum())
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
        signature = sign_statement(ctx.signing_key, statement)
        payload = json.dumps({"statement": statement, "signature": signature}).encode()
        return Outbound(COORDINATOR, STAGE_COUNT, payload)


class CountCoordinator(CoordinatorParty):
    """Collects every node's signed count and checks it before release."""

    def __init__(self, ctx: CoordinatorContext) -> None:
        self._ctx = ctx
        self._reports: dict[str, dict[str, Any]] = {}

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        ctx = self._ctx
        if message.stage != STAGE_COUNT:
            raise ProtocolError(f"unexpected stage '{message.stage}'")
        if message.sender not in ctx.parties:
            raise ProtocolError(f"'{message.sender}' is not a party of this job")
        if message.sender in self._reports:
            raise ProtocolError(f"'{message.sender}' already reported")
        try:
            report = json.loads(message.payload)
            statement, signature = report["statement"], report["signature"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError("malformed count report") from exc
        check_node_statement(ctx, message.sender, statement, signature, "count report")
        self._reports[message.sender] = {"statement": statement, "signature": signature}
        return []

    @property
    def finished(self) -> bool:
        return len(self._reports) == len(self._ctx.parties)

    def waiting_for(self) -> frozenset[str]:
        return frozenset(self._ctx.parties) - set(self._reports)

    def progress(self) -> Progress:
        return Progress(
            stage=STAGE_COUNT,
            heard=len(self._reports),
            expected=len(self._ctx.parties),
        )

    def result(self) -> Mapping[str, Any]:
        counts = [
            {
                "node": node,
                "dataset": self._reports[node]["statement"]["dataset"],
                "count": self._reports[node]["statement"]["count"],
                "suppressed": self._reports[node]["statement"]["suppressed"],
            }
            for node in self._ctx.parties
        ]
        released = [c["count"] for c in counts if not c["suppressed"]]
        return {
            "counts": counts,
            "total": sum(released) if len(released) == len(counts) else None,
            "attestations": [
                {"node": node, **self._reports[node]} for node in self._ctx.parties
            ],
        }


class CountJob(JobType[CountParams]):
    name = "count"
    summary = "rows per input, optionally filtered; small counts are suppressed"

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
        predicates.parse_where(spec.params.get("where"), list(catalog.values()))

    def columns_used(self, spec: JobSpec) -> frozenset[str]:
        return frozenset(p.column for p in self.params(spec).where)

    def node_party(self, ctx: NodeContext) -> NodeParty:
        return CountNode(ctx)

    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        return CountCoordinator(ctx)
