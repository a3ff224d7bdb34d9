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
    out_of_range: error                 # or clip; default error, clip with dp
    threshold: 4                        # optional SecAgg+ threshold (> n/2)
    max_rows: 1000000                   # public bound on any input's rows

Bins, groups and clip bounds come from the spec, never from data, so no node
reveals its value range or category set. Rows with a missing value in a used
column are left out (complete cases); rows in no declared group are in no cell.

Protocol. Each node summarises its rows into one vector (``stats.layout``):
per cell (group) a count, centred sums, sums of products and histogram counts,
each fixed-point encoded in Z_2^64 with a scale chosen so that no sum over all
inputs can wrap (``FixedPoint.check_capacity``). With ``dp``, each node adds
its share of discrete Gaussian noise (``protocols.dp``) to every encoded value,
scaled to how far adding or removing one row can move it (from the clip bounds),
and calibrated so that the sum of any ``threshold`` shares meets (epsilon,
delta) for the whole vector: over-provisioned for dropouts (n shares give n/t
times the variance), and assuming honest nodes (a node that subtracts its own
share removes it). It then sends its own ``min_group_size``
(signed, as every node-to-coordinator message is) and runs SecAgg+ (session =
job id, parties = the inputs). Fewer than ``threshold`` survivors: the job
aborts. A node that sent its masked vector and then vanished still counts as a
survivor; one that vanished before is left out and listed in ``dropped``.

What the coordinator learns: every node's minimum group size; which nodes
survived each stage; and the survivors' summed vector — pooled (and, with
dp, noised) counts, sums and histograms of every declared cell, including cells
it then suppresses. SecAgg+ hides each node's own vector: the coordinator
recovers either a node's self-mask or its mask key, never both, and an unmasked
sum covers at least ``threshold`` nodes. Under dp the aggregate it sees is
already noised. What the analyst gets: the cells whose pooled count reaches
the largest ``min_group_size`` among all inputs, the names of the suppressed
cells and nothing else about them, the survivors and dropped nodes, and the
noise scale when dp is on. Bins within a released cell are not suppressed one
by one: choose coarse public bins, or dp, where small bins matter.
"""

from __future__ import annotations

from collections.abc import Mapping

from cleanroom.catalog import DatasetInfo
from cleanroom.jobspec import JobInput, JobSpec
from cleanroom.jobtypes.base import (
    CoordinatorContext,
    JobType,
    NodeContext,
    register,
)
from cleanroom.jobtypes.stats.layout import build_layout
from cleanroom.jobtypes.stats.params import StatsParams, parse_params
from cleanroom.jobtypes.stats.parties import StatsCoordinator, StatsNode
from protocols.party import CoordinatorParty, NodeParty
from protocols.secagg.config import MIN_PARTIES


class SecureStatsJob(JobType[StatsParams]):
    """Pooled statistics over every input, by secure aggregation."""

    name = "secure_stats"
    summary = (
        "count, sum, mean, variance, covariance, correlation, histogram and quantiles "
        "pooled over inputs by SecAgg+; small cells suppressed; optional DP"
    )
    min_inputs = MIN_PARTIES

    def validate(self, spec: JobSpec, catalog: Mapping[JobInput, DatasetInfo]) -> None:
        # Against the schemas first: "no such column" says more than what follows.
        self.check_catalog(spec, None, catalog)  # type: ignore[arg-type]
        super().validate(spec, catalog)

    def parse_params(self, spec: JobSpec) -> StatsParams:
        params = parse_params(spec.params, parties=len(spec.inputs), schemas=())
        build_layout(params)  # refuses a layout too large or that could overflow
        return params

    def check_catalog(
        self,
        spec: JobSpec,
        params: StatsParams,
        catalog: Mapping[JobInput, DatasetInfo],
    ) -> None:
        parse_params(
            spec.params, parties=len(spec.inputs), schemas=list(catalog.values())
        )

    def columns_used(self, spec: JobSpec) -> frozenset[str]:
        return self.params(spec).columns_used()

    def epsilon(self, spec: JobSpec) -> tuple[float, float]:
        privacy = self.params(spec).privacy
        return (0.0, 0.0) if privacy is None else (privacy.epsilon, privacy.delta)

    def node_party(self, ctx: NodeContext) -> NodeParty:
        return StatsNode(ctx, build_layout(ctx.params))

    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        return StatsCoordinator(ctx, build_layout(ctx.params))


register(SecureStatsJob())
