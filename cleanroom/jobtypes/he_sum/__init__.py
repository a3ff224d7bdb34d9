"""The ``he_sum`` job: column sums and counts (optionally per declared group)
across holders, encrypted under the analyst's Paillier key; the coordinator
multiplies the ciphertexts and only the analyst decrypts. Parameters: see
``cleanroom.jobtypes.he_sum.params``; user docs: docs/he.md.

Protocol (``he_sum.parties``). The analyst's party generates a key pair (3072
bits by default; 2048 only with ``allow_legacy_2048``) and sends the public key,
signed with the analyst's CA-anchored signing key for this job id and spec hash,
to every node and to the coordinator. Each node checks that signature, the key's
size and form (``protocols.paillier.keys``) before any cryptography, sums its
complete-case rows per cell, blanks every cell below its own minimum group size
(flagging it in the cell's ``suppressed`` slot, so the cell looks like any other
to the coordinator), refuses a sum beyond the packing headroom naming the column,
packs and encrypts the vector and sends it to the coordinator. It seals to the
analyst a signed statement with the ciphertext's digest and a random 62-bit tag
that is also the vector's first slot. The coordinator multiplies the vectors of
the inputs that reported, re-randomises the product and releases it as an
attachment; the released document names each input's ciphertext digest, which
every signing node checks (with its policy's ``min_inputs``) before it signs. The
analyst decrypts, and checks that the tag slot is the sum of the released inputs'
tags and the contributor slot their number: a relay that dropped, repeated or
substituted an input is caught.

Dropouts: the coordinator completes without a node that did not report if at
least ``params.min_inputs`` (default: all) remain, else it ends the job naming
the nodes that dropped; each holder's own ``min_inputs`` is checked when it
signs the release.

What each party learns. The coordinator: ciphertexts under a key it does not
hold, their sizes, and who reported — nothing of any value. The analyst: the
pooled counts and sums per cell over the inputs that did not suppress it, how
many inputs suppressed each cell, and which inputs took part. One holder: its own
data only. Operator and analyst together: every node's own vector (the operator
holds each node's ciphertext and the analyst the key) — single-key Paillier
aggregation cannot hide a contribution from this pair; use ``secure_stats`` when
that matters. Operator and one holder: nothing beyond what each already knows.

Differential privacy (``params.dp``, with public ``clip`` bounds): each node
adds its discrete Gaussian noise share to every count and sum before encryption
(``he_sum.params``); the job charges (epsilon, delta) to each dataset's budget, so
a dataset whose policy requires DP accepts it only with ``dp``. Without ``dp``
sums are exact up to the fixed-point step (2^-scale_bits per input). Suppression
on a node's exact cell count is not itself noised: ``suppressed_by`` tells the
analyst that some input had fewer than its minimum rows in that cell.
"""

from __future__ import annotations

from collections.abc import Mapping

from cleanroom.catalog import NUMERIC_TYPES, DatasetInfo
from cleanroom.errors import SpecError
from cleanroom.jobspec import JobInput, JobSpec
from cleanroom.jobtypes.base import (
    AnalystContext,
    CoordinatorContext,
    JobType,
    NodeContext,
    register,
)
from cleanroom.jobtypes.he_sum.params import HeSumParams, parse_params
from cleanroom.jobtypes.he_sum.parties import (
    HeSumAnalyst,
    HeSumCoordinator,
    HeSumNode,
)
from cleanroom.jobtypes.stats import limits
from protocols.party import AnalystParty, CoordinatorParty, NodeParty

NAME = "he_sum"


class HeSumJob(JobType[HeSumParams]):
    """Encrypted sums only the analyst can decrypt."""

    name = NAME
    summary = (
        "column sums and counts (per declared group) under the analyst's Paillier "
        "key; the coordinator multiplies ciphertexts, only the analyst decrypts"
    )
    min_inputs = 2
    rereadable = False

    def parse_params(self, spec: JobSpec) -> HeSumParams:
        return parse_params(spec)

    def check_catalog(
        self,
        spec: JobSpec,
        params: HeSumParams,
        catalog: Mapping[JobInput, DatasetInfo],
    ) -> None:
        for info in catalog.values():
            types = info.column_types()
            for i, column in enumerate(params.columns):
                if column not in types:
                    raise SpecError(
                        f"params.columns[{i}]",
                        f"dataset '{info.name}' has no column {column!r}",
                    )
                if types[column] not in NUMERIC_TYPES:
                    raise SpecError(
                        f"params.columns[{i}]", f"{column!r} is not numeric"
                    )
                if column == info.id_column:
                    raise SpecError(
                        f"params.columns[{i}]", f"{column!r} is an identifier column"
                    )
            if params.group_by is not None and params.group_by not in types:
                raise SpecError(
                    "params.group_by",
                    f"dataset '{info.name}' has no column {params.group_by!r}",
                )
        limits.refuse_identifiers(list(catalog.values()), (), params.group_by, {})

    def columns_used(self, spec: JobSpec) -> frozenset[str]:
        return self.params(spec).columns_used()

    def epsilon(self, spec: JobSpec) -> tuple[float, float]:
        privacy = self.params(spec).privacy
        return (0.0, 0.0) if privacy is None else (privacy.epsilon, privacy.delta)

    def has_analyst_party(self, spec: JobSpec) -> bool:
        return True

    def node_party(self, ctx: NodeContext) -> NodeParty:
        return HeSumNode(ctx)

    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        return HeSumCoordinator(ctx)

    def analyst_party(self, ctx: AnalystContext) -> AnalystParty:
        return HeSumAnalyst(ctx)


register(HeSumJob())

__all__ = ["NAME", "HeSumJob"]
