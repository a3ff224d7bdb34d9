"""The ``secure_stats`` parties: each node masks its encoded vector with SecAgg+; the
coordinator wraps the SecAgg+ server, unmasks only the survivors' sum and releases
the statistics of the cells large enough for every input's policy."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from cleanroom.errors import ProtocolAbort, ProtocolError
from cleanroom.jobtypes.base import CoordinatorContext, NodeContext
from cleanroom.jobtypes.stats.encode import add_noise, contribution, to_ring
from cleanroom.jobtypes.stats.layout import Layout
from cleanroom.jobtypes.stats.release import release
from cleanroom.keys import canonical_json
from protocols.party import (
    COORDINATOR,
    CoordinatorParty,
    Inbound,
    NodeParty,
    NodeUsage,
    Outbound,
    Progress,
)
from protocols.secagg import (
    ADVERTISE_KEYS,
    MASKED_INPUT,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
)
from protocols.secagg.keys import identity_keys

POLICY: Final = "secure_stats/policy"
"""Node -> coordinator, before its SecAgg+ keys: ``{"min_group_size": n}``."""
_MAX_POLICY_BYTES: Final = 256


def secagg_config(
    job_id: str, parties: tuple[str, ...], layout: Layout
) -> SecAggConfig:
    """The one SecAgg+ configuration every party of the job derives."""
    return SecAggConfig.create(
        session_id=job_id,
        parties=parties,
        vector_length=layout.vector_length,
        threshold=layout.params.threshold,
        modulus_bits=64,
    )


class StatsNode(NodeParty):
    """Summarises the node's rows, adds its noise share, then runs SecAgg+."""

    def __init__(self, ctx: NodeContext, layout: Layout) -> None:
        self._ctx = ctx
        self._layout = layout
        self._client: SecAggClient | None = None
        self._started = False
        self._released = False

    def start(self) -> list[Outbound]:
        ctx, layout = self._ctx, self._layout
        if self._started:
            raise ProtocolError(f"{ctx.node} has already started")
        self._started = True
        vector = to_ring(
            layout, add_noise(layout, contribution(layout, ctx.data), ctx.random)
        )
        self._client = SecAggClient(
            ctx.node,
            secagg_config(ctx.job_id, ctx.parties, layout),
            vector,
            signing_key=ctx.signing_key,
            peer_signing_keys=identity_keys(ctx.peer_signing_keys),
            random=ctx.random,
        )
        del vector  # handed over: the client masks it and keeps no plain copy
        policy = canonical_json({"min_group_size": ctx.min_group_size})
        return [Outbound(COORDINATOR, POLICY, policy), *self._client.start()]

    def receive(self, message: Inbound) -> list[Outbound]:
        if self._client is None:
            raise ProtocolError(f"{self._ctx.node} has not started")
        out = self._client.receive(message)
        # From here on the (masked, noised) vector has left the node.
        self._released |= any(o.stage == MASKED_INPUT for o in out)
        return out

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        if self._client is None:
            if COORDINATOR in parties:
                raise ProtocolAbort("the coordinator went away")
            return []
        return self._client.dropped(parties)

    @property
    def finished(self) -> bool:
        return self._client is not None and self._client.finished

    def waiting_for(self) -> frozenset[str]:
        return frozenset() if self.finished else frozenset({COORDINATOR})

    def usage(self) -> NodeUsage:
        """Rows read; epsilon is spent once the noised vector has been sent."""
        privacy = self._layout.params.privacy
        spent = privacy.epsilon if privacy is not None and self._released else 0.0
        rows = len(self._ctx.data) if self._started else 0
        return NodeUsage(rows_touched=rows, epsilon=spent)


class StatsCoordinator(CoordinatorParty):
    """Relays and unmasks through SecAggServer, then builds the released result.

    It learns each node's minimum group size, which nodes survived, and the
    survivors' summed vector — never one node's vector on its own.
    """

    def __init__(self, ctx: CoordinatorContext, layout: Layout) -> None:
        self._ctx = ctx
        self._layout = layout
        self._config = secagg_config(ctx.job_id, ctx.parties, layout)
        self._server = SecAggServer(self._config, identity_keys(ctx.signing_keys))
        self._min_group_size: dict[str, int] = {}
        self._result: dict[str, Any] | None = None

    def start(self) -> list[Outbound]:
        return self._server.start()

    def receive(self, message: Inbound) -> list[Outbound]:
        if message.stage == POLICY:
            self._on_policy(message)
            return []
        if (
            message.stage == ADVERTISE_KEYS
            and message.sender not in self._min_group_size
        ):
            raise ProtocolError(
                f"{message.sender!r} sent its keys before its minimum group size"
            )
        out = self._server.receive(message)
        self._release_if_done()
        return out

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        try:
            out = self._server.dropped(parties)
        except ProtocolAbort as exc:
            raise ProtocolAbort(
                f"too few nodes remain to unmask the sum safely: {exc}"
            ) from None
        self._release_if_done()
        return out

    @property
    def finished(self) -> bool:
        return self._result is not None

    def waiting_for(self) -> frozenset[str]:
        return self._server.waiting_for()

    def progress(self) -> Progress:
        return self._server.progress()

    def result(self) -> Mapping[str, Any]:
        if self._result is None:
            raise ProtocolError("the result is not available before the job finishes")
        return self._result

    def _on_policy(self, message: Inbound) -> None:
        sender = message.sender
        if sender not in self._config.parties:
            raise ProtocolError(f"{sender!r} is not a party of this job")
        if sender in self._min_group_size:
            raise ProtocolError(f"{sender!r} already sent its minimum group size")
        if len(message.payload) > _MAX_POLICY_BYTES:
            raise ProtocolError(f"the policy message of {sender!r} is too large")
        try:
            value = json.loads(message.payload)["min_group_size"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"malformed policy message from {sender!r}") from exc
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ProtocolError(f"{sender!r} sent an invalid minimum group size")
        self._min_group_size[sender] = value

    def _release_if_done(self) -> None:
        if self._result is not None or not self._server.finished:
            return
        summary = self._server.result()
        survivors, dropped = list(summary["survivors"]), list(summary["dropped"])
        silent = [p for p in survivors if p not in self._min_group_size]
        if silent:
            raise ProtocolError(f"no minimum group size from {silent}")
        self._result = release(
            self._layout,
            self._server.sum_vector(),
            survivors=survivors,
            dropped=dropped,
            # Every input's policy counts, including a node that dropped out later.
            min_group_size=max(self._min_group_size.values()),
        )
