"""The ``count`` job: rows per input, optionally filtered; a count below the
dataset's minimum group size is suppressed on the node. Each node signs its count
and seals it to the analyst; the coordinator only relays and keeps a salted
commitment to each report, which every node vouches for at release.

Parameters::

    where: [{column: age, op: ">=", value: 50}]   # optional filters
    dp: {epsilon: 0.5, delta: 1.0e-6}              # optional (required where
                                                   # the holder's policy says so)

With ``dp`` each node adds discrete Gaussian noise to its own count before it
seals it (``protocols.dp.noisy_count``, sensitivity 1, the full noise on every
node since each count is released on its own), decides suppression on the noisy
value only, and reports the exact noise std with the count; epsilon and delta
are charged to the analyst's and its organisation's budget on every input.
Without ``dp`` the node's differencing record (``NodeContext.cells_guard``)
refuses a count whose rows differ from an earlier released cell's by 1..k-1
rows; the analyst sees that count as ``suppressed``, exactly as a small count,
so the two reasons are not told apart.

What each party learns. The analyst: every node's count (noisy with dp) or that
it was suppressed, each signed by its node. The coordinator: nothing of the
counts (it holds commitments it cannot guess a count from), only who took part.
One holder: its own count. Operator and analyst together: what the analyst
learns. Nobody but the node sees an exact count under dp.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

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
    CommitmentCoordinator,
    ReportsAnalyst,
    attest_commitment,
    seal_report,
)
from cleanroom.jobtypes.stats import limits
from cleanroom.jobtypes.tables import FrameTable, table_of
from protocols import dp
from protocols.party import (
    ANALYST,
    AnalystParty,
    CoordinatorParty,
    Inbound,
    NodeParty,
    NodeUsage,
    Outbound,
)

STAGE_COUNT: Final = "count.report"
MAX_EPSILON: Final = 100.0


@dataclass(frozen=True)
class CountParams:
    where: tuple[predicates.Predicate, ...]
    privacy: dp.PrivacyCost | None = None


class CountNode(NodeParty):
    """Counts matching rows; seals its signed, size-checked statement."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._digest: str | None = None

    def start(self) -> list[Outbound]:
        ctx = self._ctx
        params: CountParams = ctx.params
        noise: dict[str, Any] = {}
        if params.privacy is not None:
            count = table_of(ctx).count(params.where)
            noisy = dp.noisy_count(count, params.privacy, ctx.random)
            released = not noisy.below(ctx.min_group_size)
            count = noisy.value
            noise = {"noise_std": noisy.std}
        elif ctx.table is None or isinstance(ctx.table, FrameTable):
            mask = predicates.apply(params.where, ctx.data)
            count = int(np.count_nonzero(mask))
            released = (
                count >= ctx.min_group_size
                # int8 labels 0 / -1 straight from the mask: no 8-byte copy.
                and ctx.cells_guard(
                    [(np.asarray(mask, np.bool_).view(np.int8) - 1, 1)]
                )[0]
            )
        else:
            # An engine-backed dataset (SQL, DuckDB) serves no row identities, so
            # no differencing record can be kept for it (docs/policy.md).
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
            **noise,
        }
        out, self._digest = seal_report(ctx, STAGE_COUNT, statement)
        return out

    def receive(self, message: Inbound) -> list[Outbound]:
        raise ProtocolError(f"count expects no messages, got '{message.stage}'")

    @property
    def finished(self) -> bool:
        return self._digest is not None

    def usage(self) -> NodeUsage:
        privacy: dp.PrivacyCost | None = self._ctx.params.privacy
        if privacy is None or self._digest is None:
            return NodeUsage(rows_touched=table_of(self._ctx).rows)
        return NodeUsage(
            rows_touched=table_of(self._ctx).rows,
            epsilon=privacy.epsilon,
            delta=privacy.delta,
        )

    def attest(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        assert self._digest is not None
        return attest_commitment(self._ctx.node, self._digest, result)


class CountCoordinator(CommitmentCoordinator):
    """Collects every node's commitment; it never sees a count."""

    def __init__(self, ctx: CoordinatorContext) -> None:
        super().__init__(ctx, STAGE_COUNT)


class CountAnalyst(ReportsAnalyst):
    """Opens the nodes' sealed counts and checks them against the release."""

    def __init__(self, ctx: AnalystContext) -> None:
        super().__init__(ctx, STAGE_COUNT)

    def finalize(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        reports = self._opener.open(result)
        privacy: dp.PrivacyCost | None = self._ctx.params.privacy
        counts = []
        for node in self._ctx.parties:
            statement = reports[node].statement
            row = {
                "node": node,
                "dataset": statement["dataset"],
                "count": statement["count"],
                "suppressed": statement["suppressed"],
            }
            if privacy is not None:
                std = statement.get("noise_std")
                if not isinstance(std, int | float) or isinstance(std, bool):
                    raise ProtocolError(f"{node}'s noisy count carries no noise std")
                row["noise_std"] = float(std)
            counts.append(row)
        released = [c["count"] for c in counts if not c["suppressed"]]
        complete = len(released) == len(counts)
        out: dict[str, Any] = {
            **result,
            "counts": counts,
            "total": sum(released) if complete else None,
            "reports": [reports[n].to_json() for n in self._ctx.parties],
        }
        if privacy is not None:
            out["dp"] = {
                "epsilon": privacy.epsilon,
                "delta": privacy.delta,
                "mechanism": "discrete Gaussian, added by each node to its count",
                "total_noise_std": math.sqrt(sum(c["noise_std"] ** 2 for c in counts))
                if complete
                else None,
            }
        return out


class CountJob(JobType[CountParams]):
    name = "count"
    summary = "rows per input, optionally filtered; small counts are suppressed"
    queries_table = True
    row_order_free = True  # an exact integer count, whatever the row order

    def parse_params(self, spec: JobSpec) -> CountParams:
        extra = sorted(set(spec.params) - {"where", "dp"})
        if extra:
            raise SpecError(
                f"params.{extra[0]}", "unknown parameter (allowed: where, dp)"
            )
        return CountParams(
            predicates.parse_where(spec.params.get("where"), []),
            _privacy(spec.params.get("dp")),
        )

    def epsilon(self, spec: JobSpec) -> tuple[float, float]:
        privacy = self.params(spec).privacy
        return (0.0, 0.0) if privacy is None else (privacy.epsilon, privacy.delta)

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


def _privacy(raw: Any) -> dp.PrivacyCost | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SpecError("params.dp", "expected {epsilon: ..., delta: ...}")
    extra = sorted(set(map(str, raw)) - {"epsilon", "delta"})
    if extra:
        raise SpecError(
            f"params.dp.{extra[0]}", "unknown field (allowed: epsilon, delta)"
        )
    values = []
    for name, high in (("epsilon", MAX_EPSILON), ("delta", 1.0)):
        value = raw.get(name)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 < value < high
        ):
            raise SpecError(
                f"params.dp.{name}",
                f"expected a number in (0, {high:g}), got {value!r}",
            )
        values.append(float(value))
    return dp.PrivacyCost(values[0], values[1])


__all__ = ["ANALYST", "STAGE_COUNT", "CountJob"]
