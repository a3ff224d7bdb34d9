"""The ``secure_stats`` job: counts, sums, means, variances, covariances,
correlations, histograms and quantiles over horizontally partitioned datasets,
pooled with SecAgg+ so that no one sees any node's own contribution.

Parameters (every error names its path, e.g. ``params.columns[2]``)::

    columns: [age, bmi]                 # numeric columns
    stats: [count, sum, mean, variance, std, covariance, correlation,
            histogram, quantiles]       # any of these
    clip: {age: [0, 120], bmi: [10, 70]}  # required: public bounds per column
    bins: {age: [0, 18, 40, 65, 120], bmi: 12}  # histogram/quantiles only:
                                        # edges, or a count of equal-width bins
                                        # over the clip range; a bare int applies
                                        # to every column. Edges must cover the
                                        # clip range; bins [e_i, e_i+1), last closed.
    quantiles: [0.25, 0.5, 0.75]        # with 'quantiles'; each in (0, 1)
    group_by: sex                       # optional categorical column ...
    groups: [F, M]                      # ... with its public, declared categories
    where: [{column: age, op: ">=", value: 18}]   # optional, as for ``count``
    dp: {epsilon: 1.0, delta: 1.0e-6}   # optional differential privacy
    out_of_range: clip                  # the only choice: values are clipped
    threshold: 4                        # optional SecAgg+ threshold (> n/2)
    max_rows: 1000000                   # public bound on any input's rows

Bins, groups and clip bounds come from the spec, never from data, so no node
reveals its value range or category set. Rows with a missing value in a used
column are left out (complete cases); rows in no declared group are in no cell.

Protocol (``stats.parties``). Each node summarises its rows once into one vector
(``stats.layout``): per cell (group) a count, centred sums, sums of products and
histogram counts, each fixed-point encoded in Z_2^64 with a scale chosen so that
no sum over all inputs can wrap. With ``dp``, each node adds its share of
discrete Gaussian noise (``protocols.dp``) to every encoded value, calibrated so
that the sum of any ``threshold`` shares meets (epsilon, delta). The first input
by name (the leader) draws two seeds and seals them to the other nodes — the
values' seed also to the analyst; the coordinator never sees either. Then two
SecAgg+ rounds, each sum also masked and checksummed with a seed
(``protocols.sealed_sum``):

1. *counts*: every cell's count (groups and histogram bins). The coordinator
   unmasks the sum, still masked by the nodes' seed, and hands it back; each node
   opens it, checks its checksums (a changed sum is refused) and reports the
   cells that reach its own minimum group size;
2. *values*: the whole vector with every cell some node did not pass set to
   zero, over the same inputs (a node that left in between ends the job). The
   coordinator unmasks the sum, still masked by the values' seed, and releases it
   as an attachment; the analyst's party opens and checks it.

Every holder checks, before it reveals its unmasking shares, that the aggregate
covers at least its policy's ``min_inputs`` (default: every input) and, for a
query released before on the same dataset version, the same inputs as then.

What each party learns. The coordinator: every node's minimum group size, which
nodes survived each stage, and which cells pass — no count, no value (both sums
it unmasks are masked with seeds it does not hold), and it cannot alter either
undetected. The analyst: the statistics of the cells that pass for every input's
policy, the names of the suppressed groups, the noise scale with dp. One holder:
its own data, and every cell's pooled count (the counts round). Operator and
analyst together: the released statistics; as SecAgg+ has no consistency round,
an operator that shows different nodes different survivor sets can recover a
single node's *values-round* input masked only by the values' seed, which the
analyst holds — so this pair could see one node's passing cells; every cell it
sees still holds at least the minimum group size across all nodes, but not
necessarily within that node. A holder colluding with the operator: the pooled
counts and released statistics.
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
    register,
)
from cleanroom.jobtypes.hooks import Admission, AdmissionContext, Verdict
from cleanroom.jobtypes.stats.layout import build_layout
from cleanroom.jobtypes.stats.limits import check_cells
from cleanroom.jobtypes.stats.params import ANY_CELLS, StatsParams, parse_params
from cleanroom.jobtypes.stats.parties import StatsAnalyst, StatsCoordinator, StatsNode
from protocols.party import AnalystParty, CoordinatorParty, NodeParty
from protocols.secagg.config import MIN_PARTIES


class SecureStatsJob(JobType[StatsParams]):
    """Pooled statistics over every input, by secure aggregation."""

    name = "secure_stats"
    summary = (
        "count, sum, mean, variance, covariance, correlation, histogram and quantiles "
        "pooled over inputs by SecAgg+; small cells suppressed; optional DP"
    )
    min_inputs = MIN_PARTIES
    queries_table = True
    # Sums are math.fsum (exactly rounded), counts and histograms integers:
    # nothing it sends depends on row order.
    row_order_free = True

    def validate(self, spec: JobSpec, catalog: Mapping[JobInput, DatasetInfo]) -> None:
        # Against the schemas first: "no such column" says more than what follows.
        self.check_catalog(spec, None, catalog)  # type: ignore[arg-type]
        super().validate(spec, catalog)

    def parse_params(self, spec: JobSpec) -> StatsParams:
        params = parse_params(
            spec.params, parties=len(spec.inputs), schemas=(), max_cells=ANY_CELLS
        )
        build_layout(params)  # refuses a layout too large or that could overflow
        return params

    def check_catalog(
        self,
        spec: JobSpec,
        params: StatsParams,
        catalog: Mapping[JobInput, DatasetInfo],
    ) -> None:
        parse_params(
            spec.params,
            parties=len(spec.inputs),
            schemas=list(catalog.values()),
            max_cells=ANY_CELLS,
        )

    def columns_used(self, spec: JobSpec) -> frozenset[str]:
        return self.params(spec).columns_used()

    def admit(self, spec: JobSpec, ctx: AdmissionContext) -> Admission | None:
        params = self.params(spec)
        try:
            check_cells(params.group_by, params.groups, params.edges, ctx.max_cells)
        except SpecError as exc:
            return Admission(Verdict.DENY, (str(exc),))
        return None

    def estimate_memory(self, spec: JobSpec, rows: int) -> int:
        """The rows read (float64, a few copies) plus the vectors a node holds at
        once: its full vector, the sealed and masked copies of each round and
        SecAgg+'s per-neighbour masks, about 8 + inputs vectors of 8 bytes."""
        params = self.params(spec)
        layout = build_layout(params)
        vectors = (8 + params.parties) * 8 * layout.vector_length
        return super().estimate_memory(spec, rows) + 2 * vectors

    def epsilon(self, spec: JobSpec) -> tuple[float, float]:
        privacy = self.params(spec).privacy
        return (0.0, 0.0) if privacy is None else (privacy.epsilon, privacy.delta)

    def node_party(self, ctx: NodeContext) -> NodeParty:
        return StatsNode(ctx, build_layout(ctx.params))

    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        return StatsCoordinator(ctx, build_layout(ctx.params))

    def has_analyst_party(self, spec: JobSpec) -> bool:
        return True

    def analyst_party(self, ctx: AnalystContext) -> AnalystParty:
        return StatsAnalyst(ctx, build_layout(ctx.params))


register(SecureStatsJob())
