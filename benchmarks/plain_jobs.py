"""BENCHMARK-ONLY job types that send each node's aggregate UNMASKED to the coordinator.

They are the plain-transport baselines of the end-to-end benchmarks: the same
aggregation over the same gRPC transport, envelopes and coordinator, minus the
cryptography. They are job-type plugins (entry points in ``cleanroom.job_types``)
loaded only by a process whose config names them under ``plugins``; a normal
deployment never loads them, and a node would still refuse them unless its
policy names them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from cleanroom.catalog import NUMERIC_TYPES, DatasetInfo
from cleanroom.errors import ProtocolError, SpecError
from cleanroom.jobspec import JobInput, JobSpec
from cleanroom.jobtypes.base import (
    CoordinatorContext,
    JobType,
    NodeContext,
    OneShotNode,
)
from protocols.party import (
    COORDINATOR,
    CoordinatorParty,
    Inbound,
    NodeParty,
    NodeUsage,
    Outbound,
    Progress,
)
from protocols.secagg import SecAggClient, SecAggConfig, SecAggServer
from protocols.secagg.keys import identity_keys

STAGE_SUMS: Final = "bench_plain.sums"
STAGE_VECTOR: Final = "bench_plain.vector"
MAX_LENGTH: Final = 1 << 26
FRACTION_BITS: Final = 16
"""Fixed-point scale of the vector job, as a secure vector sum would encode floats."""


def _numeric_columns(
    spec: JobSpec,
    catalog: Mapping[JobInput, DatasetInfo],
    columns: list[str],
    path: str,
) -> None:
    for item, info in catalog.items():
        types = info.column_types()
        for column in columns:
            if types.get(column) not in NUMERIC_TYPES:
                raise SpecError(
                    path,
                    f"'{column}' is not a numeric column of {item.node}/{item.dataset}",
                )


class _Collector(CoordinatorParty):
    """Takes one payload from every party, then releases ``combine`` of them."""

    stage: str = ""

    def __init__(self, ctx: CoordinatorContext) -> None:
        self._ctx = ctx
        self._payloads: dict[str, bytes] = {}

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        if message.stage != self.stage:
            raise ProtocolError(f"unexpected stage '{message.stage}'")
        if message.sender not in self._ctx.parties or message.sender in self._payloads:
            raise ProtocolError(f"unexpected report from '{message.sender}'")
        self._payloads[message.sender] = message.payload
        return []

    @property
    def finished(self) -> bool:
        return len(self._payloads) == len(self._ctx.parties)

    def waiting_for(self) -> frozenset[str]:
        return frozenset(self._ctx.parties) - set(self._payloads)

    def ordered(self) -> list[bytes]:
        return [self._payloads[p] for p in self._ctx.parties]


class PlainSumNode(OneShotNode):
    def report(self) -> Outbound:
        ctx, columns = self._ctx, list(self._ctx.spec.params["columns"])
        rows = len(ctx.data)
        if rows < ctx.min_group_size:
            body: dict[str, Any] = {"rows": None, "sums": None}
        else:
            sums = ctx.data[columns].to_numpy(dtype=float).sum(axis=0)
            body = {
                "rows": rows,
                "sums": dict(zip(columns, sums.tolist(), strict=True)),
            }
        return Outbound(COORDINATOR, STAGE_SUMS, json.dumps(body).encode())


class PlainSumCoordinator(_Collector):
    stage = STAGE_SUMS

    def result(self) -> Mapping[str, Any]:
        reports = [json.loads(p) for p in self.ordered()]
        if any(r["rows"] is None for r in reports):
            return {"rows": None, "sums": None, "suppressed": True}
        columns = list(self._ctx.spec.params["columns"])
        return {
            "rows": sum(r["rows"] for r in reports),
            "sums": {c: sum(r["sums"][c] for r in reports) for c in columns},
            "suppressed": False,
        }


class PlainSumJob(JobType[Mapping[str, Any]]):
    name = "bench_plain_sum"
    summary = "BENCHMARK ONLY: unmasked per-node column sums (plain-transport baseline)"

    def parse_params(self, spec: JobSpec) -> Mapping[str, Any]:
        columns = spec.params.get("columns")
        if (
            not isinstance(columns, list)
            or not columns
            or not all(isinstance(c, str) for c in columns)
        ):
            raise SpecError(
                "params.columns", "expected a non-empty list of column names"
            )
        return spec.params

    def check_catalog(
        self,
        spec: JobSpec,
        params: Mapping[str, Any],
        catalog: Mapping[JobInput, DatasetInfo],
    ) -> None:
        _numeric_columns(spec, catalog, list(params["columns"]), "params.columns")

    def columns_used(self, spec: JobSpec) -> frozenset[str]:
        return frozenset(spec.params.get("columns") or ())

    def node_party(self, ctx: NodeContext) -> NodeParty:
        return PlainSumNode(ctx)

    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        return PlainSumCoordinator(ctx)


def plain_vector(values: Any, length: int) -> Any:
    """A node's vector: its column in fixed point, cycled to ``length`` elements."""
    scaled = np.round(np.asarray(values, dtype=float) * (1 << FRACTION_BITS))
    return np.resize(scaled.astype(np.int64).view(np.uint64), length).astype("<u8")


class PlainVectorNode(OneShotNode):
    def report(self) -> Outbound:
        params = self._ctx.spec.params
        vector = plain_vector(
            self._ctx.data[params["column"]].to_numpy(), int(params["length"])
        )
        return Outbound(COORDINATOR, STAGE_VECTOR, vector.tobytes())


class PlainVectorCoordinator(_Collector):
    stage = STAGE_VECTOR

    def result(self) -> Mapping[str, Any]:
        length = int(self._ctx.spec.params["length"])
        total = np.zeros(length, dtype=np.uint64)
        for payload in self.ordered():
            if len(payload) != 8 * length:
                raise ProtocolError("vector report of the wrong length")
            np.add(total, np.frombuffer(payload, dtype="<u8"), out=total)
        raw = total.astype("<u8").tobytes()
        return {
            "length": length,
            "sha256": hashlib.sha256(raw).hexdigest(),
            "head": total[:8].tolist(),
        }


class PlainVectorJob(JobType[Mapping[str, Any]]):
    name = "bench_plain_vector"
    summary = "BENCHMARK ONLY: unmasked per-node vectors summed mod 2^64"

    def parse_params(self, spec: JobSpec) -> Mapping[str, Any]:
        column, length = spec.params.get("column"), spec.params.get("length")
        if not isinstance(column, str):
            raise SpecError("params.column", "expected a column name")
        if (
            isinstance(length, bool)
            or not isinstance(length, int)
            or not (0 < length <= MAX_LENGTH)
        ):
            raise SpecError("params.length", f"expected an int in 1..{MAX_LENGTH}")
        return spec.params

    def check_catalog(
        self,
        spec: JobSpec,
        params: Mapping[str, Any],
        catalog: Mapping[JobInput, DatasetInfo],
    ) -> None:
        _numeric_columns(spec, catalog, [params["column"]], "params.column")

    def columns_used(self, spec: JobSpec) -> frozenset[str]:
        column = spec.params.get("column")
        return frozenset([column] if isinstance(column, str) else [])

    def node_party(self, ctx: NodeContext) -> NodeParty:
        return PlainVectorNode(ctx)

    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        return PlainVectorCoordinator(ctx)


class _SecureVectorNode(NodeParty):
    """The same vector as ``bench_plain_vector``, masked with SecAgg+ (delegation)."""

    def __init__(self, ctx: NodeContext) -> None:
        params = ctx.spec.params
        vector = plain_vector(
            ctx.data[params["column"]].to_numpy(), int(params["length"])
        )
        self._rows = len(ctx.data)
        self._client = SecAggClient(
            ctx.node,
            vector_config(ctx.job_id, ctx.parties, int(params["length"])),
            vector,
            signing_key=ctx.signing_key,
            peer_signing_keys=identity_keys(ctx.peer_signing_keys),
            random=ctx.random,
        )

    def start(self) -> list[Outbound]:
        return self._client.start()

    def receive(self, message: Inbound) -> list[Outbound]:
        return self._client.receive(message)

    @property
    def finished(self) -> bool:
        return self._client.finished

    def usage(self) -> NodeUsage:
        return NodeUsage(rows_touched=self._rows)


class SecureVectorCoordinator(CoordinatorParty):
    """SecAgg+ over ``length`` values (default: the spec's); releases a digest."""

    def __init__(self, ctx: CoordinatorContext, length: int | None = None) -> None:
        self._length = int(ctx.spec.params["length"]) if length is None else length
        self._server = SecAggServer(
            vector_config(ctx.job_id, ctx.parties, self._length),
            identity_keys(ctx.signing_keys),
        )

    def start(self) -> list[Outbound]:
        return self._server.start()

    def receive(self, message: Inbound) -> list[Outbound]:
        return self._server.receive(message)

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        return self._server.dropped(parties)

    @property
    def finished(self) -> bool:
        return self._server.finished

    def waiting_for(self) -> frozenset[str]:
        return self._server.waiting_for()

    def progress(self) -> Progress:
        return self._server.progress()

    def result(self) -> Mapping[str, Any]:
        total = np.asarray(self._server.sum_vector(), dtype=np.uint64)
        raw = total.astype("<u8").tobytes()
        return {
            "length": self._length,
            "sha256": hashlib.sha256(raw).hexdigest(),
            "head": total[:8].tolist(),
        }


def vector_config(session: str, parties: tuple[str, ...], length: int) -> SecAggConfig:
    return SecAggConfig.create(
        session_id=session, parties=parties, vector_length=length
    )


class SecureVectorJob(PlainVectorJob):
    name = "bench_secure_vector"
    summary = "BENCHMARK ONLY: the bench_plain_vector vectors summed under SecAgg+"

    def node_party(self, ctx: NodeContext) -> NodeParty:
        return _SecureVectorNode(ctx)

    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        return SecureVectorCoordinator(ctx)
