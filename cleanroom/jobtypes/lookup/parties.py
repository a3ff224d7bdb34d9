"""The parties of ``verify`` and ``pir_lookup``: one holder node, the buyer (the
analyst's party) and the coordinator, which only relays and keeps a commitment.

    node -> analyst:  TABLE     the table version (the whole table, or only its
                                digest when the spec names the buyer's cached one)
    analyst -> node:  QUERY     the declared number of blinded elements
    node -> analyst:  EVALUATE  their evaluation under the table's key
    node -> analyst:  REPORT    signed statement: version, evaluations (sealed)
    node -> coord.:   REPORT/commitment

Every node-analyst message is sealed to its recipient by the executor, so the
coordinator sees sizes only; the holder sees blinded elements only.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any, Final

from cleanroom.errors import ProtocolError
from cleanroom.jobtypes.base import AnalystContext, CoordinatorContext, NodeContext
from cleanroom.jobtypes.lookup.params import PirParams, VerifyParams
from cleanroom.jobtypes.lookup.service import TableService
from cleanroom.jobtypes.sealing import (
    CommitmentCoordinator,
    attest_commitment,
    report_opener,
    seal_report,
)
from protocols.oprf.download import decode_table, encode_table
from protocols.oprf.messages import EVALUATE, QUERY
from protocols.oprf.parties import (
    LookupConfig,
    LookupHolder,
    PirBuyer,
    Product,
    VerifyBuyer,
)
from protocols.oprf.table import OprfTable, TableHeader
from protocols.party import (
    ANALYST,
    AnalystParty,
    Inbound,
    NodeParty,
    NodeUsage,
    Outbound,
    Progress,
)

TABLE: Final = "lookup/table"
REPORT: Final = "lookup/report"
_FULL: Final = b"T"
_CACHED: Final = b"V"
MAX_CLAIM_BYTES: Final = 64 << 20


def _config(
    job_id: str, holder: str, product: Product, header: TableHeader, params: Any
) -> LookupConfig:
    return LookupConfig(
        session_id=job_id,
        holder=holder,
        buyer=ANALYST,
        product=product,
        table=header,
        evaluations=params.evaluations,
        all_fields=isinstance(params, VerifyParams) and params.mode == "all_fields",
    )


def _kind(params: VerifyParams | PirParams) -> str:
    return params.mode if isinstance(params, VerifyParams) else "pir"


class LookupNode(NodeParty):
    """The holder: sends the table version, evaluates one batch, reports."""

    def __init__(self, ctx: NodeContext, product: Product, unit: str) -> None:
        self._ctx = ctx
        self._unit = unit
        params: VerifyParams | PirParams = ctx.params
        self._params = params
        service: TableService = ctx.service
        id_column = service.id_column(ctx.dataset)
        if id_column != params.key:
            raise ProtocolError(
                f"params.key: the id column of '{ctx.dataset}' is not '{params.key}'"
            )
        self._key, self._table = service.table(
            job_id=ctx.job_id,
            dataset=ctx.dataset,
            dataset_hash=ctx.dataset_hash,
            data=ctx.data,
            id_column=id_column,
            fields=params.fields,
            kind=_kind(params),
        )
        header = self._table.header
        self._config = _config(ctx.job_id, ctx.node, product, header, params)
        self._holder = LookupHolder(self._config, ctx.node, self._key, header)
        self._digest: str | None = None

    def start(self) -> list[Outbound]:
        version = self._table.header.digest
        if self._params.table == version.hex():
            body = _CACHED + version
        else:
            body = _FULL + encode_table(self._table)
        return [Outbound(ANALYST, TABLE, body)]

    def receive(self, message: Inbound) -> list[Outbound]:
        out = self._holder.receive(message)
        ctx = self._ctx
        statement: dict[str, Any] = {
            "job_id": ctx.job_id,
            "spec_hash": ctx.spec.spec_hash,
            "node": ctx.node,
            "dataset": ctx.dataset,
            "dataset_hash": ctx.dataset_hash,
            "table": self._table.header.digest.hex(),
            "evaluations": self._config.evaluations,
        }
        sealed, self._digest = seal_report(ctx, REPORT, statement)
        return out + sealed

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        return self._holder.dropped(parties)

    def waiting_for(self) -> frozenset[str]:
        return frozenset() if self.finished else frozenset({ANALYST})

    @property
    def finished(self) -> bool:
        return self._digest is not None

    def usage(self) -> NodeUsage:
        done = self._params.evaluations if self._holder.finished else 0
        units = {self._unit: float(_records(self._params) if done else 0)}
        return NodeUsage(rows_touched=len(self._ctx.data) if done else 0, units=units)

    def attest(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        if self._digest is None:
            raise ProtocolError("the holder has not reported")
        return attest_commitment(self._ctx.node, self._digest, result)


def _records(params: VerifyParams | PirParams) -> int:
    return params.records if isinstance(params, VerifyParams) else params.lookups


class LookupCoordinator(CommitmentCoordinator):
    """Relays and keeps the holder's commitment; it never sees a query or answer."""

    def __init__(self, ctx: CoordinatorContext) -> None:
        super().__init__(ctx, REPORT)


class LookupAnalyst(AnalystParty):
    """The buyer: takes the table, blinds its private inputs, reads the answers."""

    def __init__(self, ctx: AnalystContext, product: Product) -> None:
        self._ctx = ctx
        self._product = product
        self._params: VerifyParams | PirParams = ctx.params
        self._holder = ctx.spec.inputs[0].node
        self._buyer: VerifyBuyer | PirBuyer | None = None
        self._table: OprfTable | None = None
        self._opener = report_opener(ctx, REPORT, (self._holder,))

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        if message.sender != self._holder:
            raise ProtocolError(f"unexpected message from '{message.sender}'")
        if message.stage == REPORT:
            self._opener.receive(message)
            return []
        if message.stage == TABLE:
            if self._buyer is not None:
                raise ProtocolError("the holder sent its table twice")
            self._table = self._take_table(message.payload)
            self._buyer = self._make_buyer(self._table)
            return self._buyer.start()
        if message.stage == EVALUATE and self._buyer is not None:
            return self._buyer.receive(message)
        raise ProtocolError(f"the buyer does not expect {message.stage} now")

    def _take_table(self, payload: bytes) -> OprfTable:
        if payload[:1] == _FULL:
            table = decode_table(payload[1:])
        elif payload[:1] == _CACHED and len(payload) == 33:
            cached = self._ctx.local_inputs.get("table")
            if cached is None:
                raise ProtocolError(
                    "the spec names a cached table version but no table was given"
                )
            table = decode_table(_as_bytes(cached, "table"))
            if table.header.digest != payload[1:]:
                raise ProtocolError("the cached table is not the version named")
        else:
            raise ProtocolError(f"{TABLE}: malformed")
        if table.header.dataset != self._ctx.spec.input_for(self._holder).dataset:
            raise ProtocolError("the table is for another dataset")
        return table

    def _make_buyer(self, table: OprfTable) -> VerifyBuyer | PirBuyer:
        params, header = self._params, table.header
        config = _config(self._ctx.job_id, self._holder, self._product, header, params)
        if isinstance(params, VerifyParams):
            claims = read_claims(
                self._ctx.local_inputs.get("claims"), header.id_column, params.fields
            )
            if len(claims) != params.records:
                raise ProtocolError(
                    f"{len(claims)} claimed records, the spec declares {params.records}"
                )
            return VerifyBuyer(config, ANALYST, table, claims, random=self._ctx.random)
        keys = read_keys(self._ctx.local_inputs.get("keys"))
        if len(keys) != params.lookups:
            raise ProtocolError(
                f"{len(keys)} keys, the spec declares {params.lookups} lookups"
            )
        return PirBuyer(config, ANALYST, table, keys, random=self._ctx.random)

    @property
    def finished(self) -> bool:
        return (
            self._buyer is not None and self._buyer.finished and self._opener.finished
        )

    def progress(self) -> Progress:
        stage = QUERY if self._buyer is None else EVALUATE
        return Progress(stage=stage, heard=int(self.finished), expected=1)

    def finalize(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        reports = self._opener.open(result)
        if self._buyer is None or self._table is None:
            raise ProtocolError("the buyer has no answer")
        statement = reports[self._holder].statement
        version = self._table.header.digest.hex()
        if statement.get("table") != version:
            raise ProtocolError("the holder vouches for another table version")
        reading: dict[str, Any] = {
            **result,
            "table_version": version,
            "table_records": self._table.header.records,
            "report": reports[self._holder].to_json(),
        }
        if isinstance(self._buyer, VerifyBuyer):
            assert isinstance(self._params, VerifyParams)
            claims = read_claims(
                self._ctx.local_inputs.get("claims"),
                self._table.header.id_column,
                self._params.fields,
            )
            answers = self._buyer.results()
            id_column = self._table.header.id_column
            reading["mode"] = self._params.mode
            if self._params.mode == "all_fields":
                reading["records"] = [
                    {"id": c[id_column], "match": bool(a)}
                    for c, a in zip(claims, answers, strict=True)
                ]
            else:
                reading["records"] = [
                    {"id": c[id_column], "fields": dict(a)}  # type: ignore[call-overload]
                    for c, a in zip(claims, answers, strict=True)
                ]
        else:
            found = self._buyer.results()
            reading["lookups"] = [
                {"key": k, "found": v is not None, "record": v}
                for k, v in found.items()
            ]
        return reading


def downloaded_table(transcript: Sequence[Inbound]) -> bytes | None:
    """The table a job downloaded (from its analyst party's transcript, e.g.
    ``Client.opened(job).transcript``), to cache and pass to the next job as the
    private input ``table`` with its version as ``params.table``; None if the
    job used a cached one."""
    for message in transcript:
        if message.stage == TABLE and message.payload[:1] == _FULL:
            return message.payload[1:]
    return None


def _as_bytes(raw: object, name: str) -> bytes:
    if isinstance(raw, str):
        return raw.encode()
    if isinstance(raw, bytes | bytearray | memoryview):
        return bytes(raw)
    raise ProtocolError(f"the input '{name}' must be bytes or text")


def read_claims(
    given: object, id_column: str, fields: tuple[str, ...]
) -> list[dict[str, str]]:
    """The buyer's claimed records (a UTF-8 CSV with a header row, as bytes or
    text): the id column and every asked field must be columns; other columns
    are ignored."""
    if given is None:
        raise ProtocolError("no claimed records were given (input 'claims')")
    raw = _as_bytes(given, "claims")
    if len(raw) > MAX_CLAIM_BYTES:
        raise ProtocolError("the claimed records are too large")
    try:
        reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig")))
        rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ProtocolError(f"the claimed records are not a UTF-8 CSV: {exc}") from None
    missing = [c for c in (id_column, *fields) if c not in (reader.fieldnames or [])]
    if missing:
        raise ProtocolError(f"the claimed records lack the column '{missing[0]}'")
    return [{c: row[c] or "" for c in (id_column, *fields)} for row in rows]


def read_keys(given: object) -> list[str]:
    """The buyer's lookup keys: UTF-8 text (or bytes), one key per line."""
    if given is None:
        raise ProtocolError("no lookup keys were given (input 'keys')")
    raw = _as_bytes(given, "keys")
    if len(raw) > MAX_CLAIM_BYTES:
        raise ProtocolError("the lookup keys are too large")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ProtocolError("the lookup keys are not UTF-8") from None
    return [line for line in text.splitlines() if line.strip()]
