"""TEST ONLY job types, installed as a plugin distribution (this directory holds its
``*.dist-info``): they exercise the seam's analyst party and its rounds.

``sealed_value``: every node seals the sum of a column to the analyst's key and
tells the coordinator it did; only the analyst's party can read the values.

``rounds_sum``: ``rounds`` rounds, each its own SecAgg+ session (fresh keys and
graph) over the nodes still in the job; a node named in ``stall`` stops answering
in that round (still connected), so the round's deadline drops it.
``rounds_sum_fragile`` is the same but declares it cannot resume after a
coordinator restart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cleanroom.errors import ProtocolError, SpecError
from cleanroom.jobspec import JobSpec
from cleanroom.jobtypes.base import (
    AnalystContext,
    CoordinatorContext,
    JobType,
    NodeContext,
)
from protocols.compose import CoordinatorRounds, NodeRounds, RoundBegin
from protocols.party import (
    ANALYST,
    COORDINATOR,
    AnalystParty,
    CoordinatorParty,
    Inbound,
    NodeParty,
    NodeUsage,
    Outbound,
    Party,
    Progress,
)
from protocols.secagg import SecAggClient, SecAggConfig, SecAggServer
from protocols.secagg.keys import identity_keys

VALUE, SENT = "sealed/value", "sealed/sent"


# ------------------------------------------------------------- sealed_value --
@dataclass(frozen=True)
class SealedParams:
    column: str


class _SealNode(NodeParty):
    def __init__(self, ctx: NodeContext) -> None:
        self._ctx, self._done = ctx, False

    def start(self) -> list[Outbound]:
        column = self._ctx.params.column
        value = float(self._ctx.data[column].sum())
        self._done = True
        body = json.dumps({"node": self._ctx.node, "value": value}).encode()
        return [Outbound(ANALYST, VALUE, body), Outbound(COORDINATOR, SENT, b"sent")]

    def receive(self, message: Inbound) -> list[Outbound]:
        raise ProtocolError("no message expected")

    @property
    def finished(self) -> bool:
        return self._done

    def usage(self) -> NodeUsage:
        return NodeUsage(rows_touched=len(self._ctx.data))


class _SealCoordinator(CoordinatorParty):
    def __init__(self, ctx: CoordinatorContext) -> None:
        self._ctx, self._sent = ctx, set[str]()

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        if message.stage != SENT or message.sender not in self._ctx.parties:
            raise ProtocolError(f"unexpected {message.stage} from {message.sender}")
        self._sent.add(message.sender)
        return []

    def waiting_for(self) -> frozenset[str]:
        return frozenset(self._ctx.parties) - self._sent

    @property
    def finished(self) -> bool:
        return self._sent == set(self._ctx.parties)

    def result(self) -> Mapping[str, Any]:
        return {"delivered_to_analyst": sorted(self._sent)}


class _SealAnalyst(AnalystParty):
    def __init__(self, ctx: AnalystContext) -> None:
        self._ctx, self._values = ctx, dict[str, float]()

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        if message.stage != VALUE or message.sender not in self._ctx.parties:
            raise ProtocolError(f"unexpected {message.stage} from {message.sender}")
        body = json.loads(message.payload)
        if body["node"] != message.sender:
            raise ProtocolError("a value signed by one node for another")
        self._values[message.sender] = float(body["value"])
        return []

    def progress(self) -> Progress:
        return Progress(
            stage=VALUE, heard=len(self._values), expected=len(self._ctx.parties)
        )

    @property
    def finished(self) -> bool:
        return set(self._values) == set(self._ctx.parties)

    def finalize(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        return {**result, "values": dict(self._values)}


class SealedValueJob(JobType[SealedParams]):
    name = "sealed_value"
    summary = "TEST ONLY: each node seals a column sum to the analyst"

    def parse_params(self, spec: JobSpec) -> SealedParams:
        column = spec.params.get("column")
        if not isinstance(column, str):
            raise SpecError("params.column", "expected a column name")
        return SealedParams(column)

    def columns_used(self, spec: JobSpec) -> frozenset[str]:
        return frozenset({self.params(spec).column})

    def has_analyst_party(self, spec: JobSpec) -> bool:
        return True

    def node_party(self, ctx: NodeContext) -> NodeParty:
        return _SealNode(ctx)

    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        return _SealCoordinator(ctx)

    def analyst_party(self, ctx: AnalystContext) -> AnalystParty:
        return _SealAnalyst(ctx)


# --------------------------------------------------------------- rounds_sum --
@dataclass(frozen=True)
class RoundsParams:
    rounds: int
    column: str
    length: int
    stall_node: str
    stall_round: int


def round_vector(values: Any, round_: int, length: int) -> np.ndarray:
    """A node's round input: its column's integer sum, plus the round, per slot."""
    base = int(np.asarray(values, dtype=float).sum())
    return np.arange(length, dtype=np.uint64) + np.uint64(base + 1000 * round_)


def _config(job_id: str, round_: int, parties: tuple[str, ...], length: int) -> Any:
    return SecAggConfig.create(
        session_id=f"{job_id}/r{round_}", parties=parties, vector_length=length
    )


class _Silent(Party):
    """A stalled node: connected, but it never answers."""

    def __init__(self, inner: Party) -> None:
        self._inner = inner

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        return []

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        return []

    @property
    def finished(self) -> bool:
        return False


class RoundsSumJob(JobType[RoundsParams]):
    name = "rounds_sum"
    summary = "TEST ONLY: a SecAgg+ sum per round, one sub-session each"
    min_inputs = 3

    def parse_params(self, spec: JobSpec) -> RoundsParams:
        raw = spec.params
        rounds, length = raw.get("rounds", 3), raw.get("length", 8)
        column = raw.get("column")
        if not isinstance(rounds, int) or not 1 <= rounds <= 1000:
            raise SpecError("params.rounds", "expected 1..1000")
        if not isinstance(length, int) or not 1 <= length <= 1 << 20:
            raise SpecError("params.length", "expected 1..2^20")
        if not isinstance(column, str):
            raise SpecError("params.column", "expected a column name")
        stall = raw.get("stall", {})
        return RoundsParams(
            rounds,
            column,
            length,
            str(stall.get("node", "")),
            int(stall.get("round", -1)),
        )

    def columns_used(self, spec: JobSpec) -> frozenset[str]:
        return frozenset({self.params(spec).column})

    def node_party(self, ctx: NodeContext) -> NodeParty:
        params: RoundsParams = ctx.params
        values = ctx.data[params.column].to_numpy()

        def make(begin: RoundBegin) -> Party:
            client = SecAggClient(
                ctx.node,
                _config(ctx.job_id, begin.round, begin.parties, params.length),
                round_vector(values, begin.round, params.length),
                signing_key=ctx.signing_key,
                peer_signing_keys=identity_keys(ctx.peer_signing_keys),
                random=ctx.random,
            )
            stalled = (ctx.node, begin.round) == (params.stall_node, params.stall_round)
            return _Silent(client) if stalled else client

        return NodeRounds(params.rounds, make, name=ctx.node)

    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        params: RoundsParams = ctx.params
        keys = identity_keys(ctx.signing_keys)

        def make(round_: int, parties: tuple[str, ...]) -> CoordinatorParty:
            config = _config(ctx.job_id, round_, parties, params.length)
            return SecAggServer(config, {p: keys[p] for p in parties})

        def keep(round_: int, party: CoordinatorParty) -> Any:
            assert isinstance(party, SecAggServer)
            summary = party.result()
            return {
                "round": round_,
                "survivors": list(summary["survivors"]),
                "sum": [int(v) for v in party.sum_vector()],
            }

        return CoordinatorRounds(
            params.rounds,
            ctx.parties,
            make,
            combine=lambda results: {"rounds": results},
            round_result=keep,
            min_parties=3,
        )


class FragileRoundsSumJob(RoundsSumJob):
    name = "rounds_sum_fragile"
    summary = "TEST ONLY: rounds_sum that cannot resume after a coordinator restart"
    resumable = False
