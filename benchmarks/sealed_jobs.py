"""BENCHMARK-ONLY: the ``bench_secure_vector`` sum sealed to the analyst, and the
unsealed sum delivered to the analyst the same way, for issue 12's end-to-end
cost of sealing.

``bench_sealed_vector`` is the secure-vector flow with the layer ``secure_stats``
puts on its sums (``protocols.sealed_sum``): the leader node draws a 32-byte seed
and sends it to the other nodes and to the analyst (node-to-node and
node-to-analyst mail is sealed by the transport); each node seals its vector
(mask plus checksums) before SecAgg+; the coordinator releases the still-masked
sum as an attachment; the analyst's party removes the masks for the released
survivors and checks every checksum. ``bench_delivered_vector`` is the unsealed
``bench_secure_vector`` whose sum is delivered to the analyst as an attachment in
the same way, so that the two differ only by sealing. Like the other benchmark
job types they load only where a config names them under ``plugins``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from benchmarks.plain_jobs import (
    SecureVectorCoordinator,
    SecureVectorJob,
    plain_vector,
    vector_config,
)
from cleanroom.errors import ProtocolError
from cleanroom.jobspec import JobSpec
from cleanroom.jobtypes.base import AnalystContext, CoordinatorContext, NodeContext
from protocols.party import (
    ANALYST,
    AnalystParty,
    CoordinatorParty,
    Inbound,
    NodeParty,
    NodeUsage,
    Outbound,
)
from protocols.sealed_sum import SealedSum
from protocols.secagg import SecAggClient
from protocols.secagg.keys import identity_keys

STAGE_SEED: Final = "bench_sealed.seed"
ATTACHMENT: Final = "sum"


def _session(job_id: str) -> str:
    return f"{job_id}/bench_sealed"


def _leader(parties: tuple[str, ...]) -> str:
    return min(parties)


class _SealedVectorNode(NodeParty):
    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._length = int(ctx.spec.params["length"])
        self._vector = plain_vector(
            ctx.data[ctx.spec.params["column"]].to_numpy(), self._length
        )
        self._client: SecAggClient | None = None

    def start(self) -> list[Outbound]:
        ctx = self._ctx
        if ctx.node != _leader(ctx.parties):
            return []
        seed = ctx.random(32)
        out = [Outbound(p, STAGE_SEED, seed) for p in ctx.parties if p != ctx.node]
        out.append(Outbound(ANALYST, STAGE_SEED, seed))
        return out + self._begin(seed)

    def _begin(self, seed: bytes) -> list[Outbound]:
        ctx = self._ctx
        seal = SealedSum(seed, _session(ctx.job_id), self._length)
        self._client = SecAggClient(
            ctx.node,
            vector_config(ctx.job_id, ctx.parties, seal.sealed_length),
            seal.seal(ctx.node, self._vector),
            signing_key=ctx.signing_key,
            peer_signing_keys=identity_keys(ctx.peer_signing_keys),
            random=ctx.random,
        )
        return self._client.start()

    def receive(self, message: Inbound) -> list[Outbound]:
        if message.stage == STAGE_SEED:
            if (
                message.sender != _leader(self._ctx.parties)
                or self._client is not None
                or len(message.payload) != 32
            ):
                raise ProtocolError(f"unexpected seed from '{message.sender}'")
            return self._begin(message.payload)
        if self._client is None:
            raise ProtocolError(f"'{message.stage}' before the seed")
        return self._client.receive(message)

    @property
    def finished(self) -> bool:
        return self._client is not None and self._client.finished

    def usage(self) -> NodeUsage:
        return NodeUsage(rows_touched=len(self._ctx.data))


class _DeliveringCoordinator(SecureVectorCoordinator):
    """The secure-vector sum (over ``sealed_length`` values when sealed) goes to
    the analyst as an attachment, still sealed or plain for the baseline."""

    _sum: bytes | None = None

    def _raw(self) -> bytes:
        if self._sum is None:  # once: the digest and the attachment share it
            total = np.asarray(self._server.sum_vector(), dtype=np.uint64)
            self._sum = total.astype("<u8").tobytes()
        return self._sum

    def result(self) -> Mapping[str, Any]:
        return {
            "length": self._length,
            "survivors": sorted(self._server.survivors),
            "attachment": hashlib.sha256(self._raw()).hexdigest(),
        }

    def attachments(self) -> Mapping[str, bytes]:
        return {ATTACHMENT: self._raw()}


class _VectorReader(AnalystParty):
    """Reads the delivered sum; with a seed, opens and checks it first."""

    def __init__(self, ctx: AnalystContext, *, sealed: bool) -> None:
        self._ctx = ctx
        self._sealed = sealed
        self._seed: bytes | None = None
        self._raw: bytes | None = None

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        if (
            not self._sealed
            or message.stage != STAGE_SEED
            or message.sender != _leader(self._ctx.parties)
            or self._seed is not None
            or len(message.payload) != 32
        ):
            raise ProtocolError(f"unexpected {message.stage} from '{message.sender}'")
        self._seed = message.payload
        return []

    @property
    def finished(self) -> bool:
        return not self._sealed or self._seed is not None

    def attach(self, attachments: Mapping[str, bytes]) -> None:
        self._raw = attachments.get(ATTACHMENT)

    def finalize(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        if self._raw is None:
            raise ProtocolError("the release carries no sum")
        total = np.frombuffer(self._raw, dtype="<u8").astype(np.uint64)
        length = int(self._ctx.spec.params["length"])
        if self._sealed:
            if self._seed is None:
                raise ProtocolError("no seed from the leader")
            seal = SealedSum(self._seed, _session(self._ctx.job_id), length)
            if len(total) != seal.sealed_length:
                raise ProtocolError("the sealed sum has the wrong length")
            values = seal.open(total, result["survivors"])
        else:
            values = total
        if len(values) != length:
            raise ProtocolError("the sum has the wrong length")
        raw = values.astype("<u8").tobytes()
        return {
            "length": length,
            "sha256": hashlib.sha256(raw).hexdigest(),
            "head": json.loads(json.dumps(values[:8].tolist())),
        }


class DeliveredVectorJob(SecureVectorJob):
    name = "bench_delivered_vector"
    summary = (
        "BENCHMARK ONLY: bench_secure_vector with the sum delivered to the analyst"
    )

    def has_analyst_party(self, spec: JobSpec) -> bool:
        return True

    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        return _DeliveringCoordinator(ctx)

    def analyst_party(self, ctx: AnalystContext) -> AnalystParty:
        return _VectorReader(ctx, sealed=False)


class SealedVectorJob(SecureVectorJob):
    name = "bench_sealed_vector"
    summary = "BENCHMARK ONLY: bench_secure_vector sealed to the analyst (sealed_sum)"

    def has_analyst_party(self, spec: JobSpec) -> bool:
        return True

    def node_party(self, ctx: NodeContext) -> NodeParty:
        return _SealedVectorNode(ctx)

    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        length = int(ctx.spec.params["length"])
        return _DeliveringCoordinator(
            ctx, SealedSum(bytes(32), "", length).sealed_length
        )

    def analyst_party(self, ctx: AnalystContext) -> AnalystParty:
        return _VectorReader(ctx, sealed=True)
