"""The verification product (``verify``) and anonymous lookup (``pir_lookup``):
one holder, the buyer as the analyst's party, an OPRF-keyed table per dataset
version (:mod:`protocols.oprf`).

``verify``: the buyer gives claimed records (a CSV: the id column and the asked
fields) as a private input; it learns, per record, match / no-match per field, or
one all-fields bit where the spec (and the holder's ``modes``) says so.
``pir_lookup``: the buyer gives keys; it learns each key's record restricted to
the spec's fields (which the holder's column policy must permit), or that there
is none. Both are metered per record / lookup (``verified_records``,
``lookups``), reserved at admission against the holder's per-buyer quotas: a
batch beyond quota is refused before any work.

What each party learns. The buyer (analyst alone): the table of this version
(its size: records, fields, padded record size; nothing else without an OPRF
evaluation), and for its own batch the answers above; at most one OPRF output per
evaluation it paid for. The holder alone: the buyer's identity, the batch size
and the blinded elements, which are uniformly random group elements: not the
claimed identities, not the keys, not the answers, not whether a key was present
(absent keys cost the same work and the same bytes). The coordinator (operator
alone): sizes and timing of sealed envelopes and the holder's salted commitment.
Operator + buyer: what the buyer learns. Operator + holder: what the holder
learns, plus timing: nothing of the queries. Holder + buyer: everything of the
batch (they are the two ends). A malicious holder can answer with a wrong key so
the buyer sees "no match" (no DLEQ proof is implemented); it still learns nothing
of the queries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final

from cleanroom.catalog import DatasetInfo
from cleanroom.errors import ProtocolError, SpecError
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
    HolderContext,
    NodeEnvironment,
    Verdict,
)
from cleanroom.jobtypes.lookup.params import (
    PirParams,
    VerifyParams,
    parse_pir,
    parse_verify,
)
from cleanroom.jobtypes.lookup.parties import (
    LookupAnalyst,
    LookupCoordinator,
    LookupNode,
    downloaded_table,
    read_claims,
    read_keys,
)
from cleanroom.jobtypes.lookup.service import LookupSettings, TableService
from protocols.oprf.download import decode_table
from protocols.party import AnalystParty, CoordinatorParty, NodeParty

VERIFIED_RECORDS: Final = "verified_records"
LOOKUPS: Final = "lookups"


def _check_one_input(spec: JobSpec, name: str) -> None:
    if len(spec.inputs) != 1:
        raise SpecError("inputs", f"'{name}' asks exactly one holder")


def _check_schema(
    params: VerifyParams | PirParams, catalog: Mapping[JobInput, DatasetInfo]
) -> None:
    for info in catalog.values():
        if info.id_column != params.key:
            raise SpecError(
                "params.key", f"'{params.key}' is not the id column of '{info.name}'"
            )
        missing = sorted(set(params.fields) - set(info.column_names()))
        if missing:
            raise SpecError(
                "params.fields", f"dataset '{info.name}' has no column '{missing[0]}'"
            )


def _admit(service: TableService, records: int, mode: str | None) -> Admission | None:
    reasons = []
    limit = service.settings.max_batch
    if records > limit:
        reasons.append(f"{records} in one batch exceed this holder's {limit}")
    if mode is not None and mode not in service.settings.modes:
        reasons.append(f"this holder allows only {', '.join(service.settings.modes)}")
    return Admission(Verdict.DENY, tuple(reasons)) if reasons else None


class _LookupJob:
    """What both job types share (mixed into each JobType)."""

    name: ClassVar[str]
    default_deadline: ClassVar[float] = 1800.0
    """Building a table of a million records takes minutes on two cores."""

    def node_service(self, env: NodeEnvironment) -> TableService:
        settings = LookupSettings.parse(env.settings, f"jobtypes.{self.name}")
        return TableService(settings, env.audit, env.datasets)

    def has_analyst_party(self, spec: JobSpec) -> bool:
        return True

    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        return LookupCoordinator(ctx)

    def _check_private(
        self, inputs: Mapping[str, Any], allowed: tuple[str, ...]
    ) -> None:
        extra = sorted(set(inputs) - set(allowed))
        if extra:
            raise SpecError(
                f"inputs.{extra[0]}", f"unknown input (allowed: {', '.join(allowed)})"
            )
        if "table" in inputs:
            try:
                raw = inputs["table"]
                decode_table(raw.encode() if isinstance(raw, str) else bytes(raw))
            except (ProtocolError, TypeError) as exc:
                raise SpecError("inputs.table", str(exc)) from None


class VerifyJob(_LookupJob, JobType[VerifyParams]):
    name = "verify"
    summary = (
        "check claimed records against a holder's data: match per field, privately"
    )
    units = (VERIFIED_RECORDS,)
    rereadable = False
    """The reading depends on the buyer's private claims."""

    def parse_params(self, spec: JobSpec) -> VerifyParams:
        _check_one_input(spec, self.name)
        return parse_verify(spec.params)

    def check_catalog(
        self,
        spec: JobSpec,
        params: VerifyParams,
        catalog: Mapping[JobInput, DatasetInfo],
    ) -> None:
        _check_schema(params, catalog)

    def columns_used(self, spec: JobSpec) -> frozenset[str]:
        params = self.params(spec)
        return frozenset((params.key, *params.fields))

    def estimate_units(self, spec: JobSpec, rows: int) -> Mapping[str, float]:
        return {VERIFIED_RECORDS: float(self.params(spec).records)}

    def check_local_inputs(self, spec: JobSpec, inputs: Mapping[str, Any]) -> None:
        """The claims must be a CSV of exactly ``records`` rows with the key and
        every asked field; checked on the analyst's machine before submission."""
        self._check_private(inputs, ("claims", "table"))
        params = self.params(spec)
        try:
            claims = read_claims(inputs.get("claims"), params.key, params.fields)
        except ProtocolError as exc:
            raise SpecError("inputs.claims", str(exc)) from None
        if len(claims) != params.records:
            raise SpecError(
                "inputs.claims",
                f"{len(claims)} claimed records, params.records is {params.records}",
            )

    def admit(self, spec: JobSpec, ctx: AdmissionContext) -> Admission | None:
        params = self.params(spec)
        return _admit(ctx.service, params.records, params.mode)

    def review(self, spec: JobSpec, job_id: str, holder: HolderContext) -> Review:
        params = self.params(spec)
        return Review(
            lines=(
                f"checks {params.records} claimed records on "
                f"{', '.join(params.fields)} ({params.mode.replace('_', '-')})",
                "you will not see the claimed values nor the answers",
            ),
            document={
                "records": params.records,
                "fields": list(params.fields),
                "mode": params.mode,
            },
        )

    def node_party(self, ctx: NodeContext) -> NodeParty:
        return LookupNode(ctx, "verify", VERIFIED_RECORDS)

    def analyst_party(self, ctx: AnalystContext) -> AnalystParty:
        return LookupAnalyst(ctx, "verify")


class PirLookupJob(_LookupJob, JobType[PirParams]):
    name = "pir_lookup"
    summary = "fetch the permitted fields of records by key; the holder learns no key"
    units = (LOOKUPS,)
    rereadable = False
    """The reading depends on the buyer's private keys."""

    def parse_params(self, spec: JobSpec) -> PirParams:
        _check_one_input(spec, self.name)
        return parse_pir(spec.params)

    def check_catalog(
        self, spec: JobSpec, params: PirParams, catalog: Mapping[JobInput, DatasetInfo]
    ) -> None:
        _check_schema(params, catalog)

    def columns_used(self, spec: JobSpec) -> frozenset[str]:
        params = self.params(spec)
        return frozenset((params.key, *params.fields))

    def estimate_units(self, spec: JobSpec, rows: int) -> Mapping[str, float]:
        return {LOOKUPS: float(self.params(spec).lookups)}

    def check_local_inputs(self, spec: JobSpec, inputs: Mapping[str, Any]) -> None:
        """One key per line, exactly ``lookups`` of them."""
        self._check_private(inputs, ("keys", "table"))
        lookups = self.params(spec).lookups
        try:
            keys = read_keys(inputs.get("keys"))
        except ProtocolError as exc:
            raise SpecError("inputs.keys", str(exc)) from None
        if len(keys) != lookups:
            raise SpecError(
                "inputs.keys", f"{len(keys)} keys, params.lookups is {lookups}"
            )

    def admit(self, spec: JobSpec, ctx: AdmissionContext) -> Admission | None:
        return _admit(ctx.service, self.params(spec).lookups, None)

    def review(self, spec: JobSpec, job_id: str, holder: HolderContext) -> Review:
        params = self.params(spec)
        return Review(
            lines=(
                f"{params.lookups} lookups returning {', '.join(params.fields)}",
                "you will not see the keys, nor whether they are present",
            ),
            document={"lookups": params.lookups, "fields": list(params.fields)},
        )

    def node_party(self, ctx: NodeContext) -> NodeParty:
        return LookupNode(ctx, "pir", LOOKUPS)

    def analyst_party(self, ctx: AnalystContext) -> AnalystParty:
        return LookupAnalyst(ctx, "pir")


register(VerifyJob())
register(PirLookupJob())

__all__ = [
    "LOOKUPS",
    "VERIFIED_RECORDS",
    "PirLookupJob",
    "VerifyJob",
    "downloaded_table",
]
