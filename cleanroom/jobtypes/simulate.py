"""A job's parties driven in one process, as the executors would drive them, for
tests and benchmarks: messages routed between nodes, the coordinator and the
analyst, nodes dropped when a planned stage reaches them, then the release as the
nodes attest it and the analyst reads it."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocols.party import (
    ANALYST,
    COORDINATOR,
    AnalystParty,
    CoordinatorParty,
    Inbound,
    NodeParty,
    Outbound,
)


@dataclass(frozen=True)
class Run:
    """What a simulated job released: the coordinator's result, its attachments,
    what every node that signed vouched for, and the analyst's reading."""

    result: Mapping[str, Any]
    attachments: Mapping[str, bytes]
    attested: Mapping[str, Mapping[str, Any]]
    opened: Mapping[str, Any] | None
    dropped: frozenset[str]


def _matches(stage: str, planned: str) -> bool:
    return stage == planned or stage.endswith("/" + planned)


def drive(
    coordinator: CoordinatorParty,
    nodes: Mapping[str, NodeParty],
    analyst: AnalystParty | None = None,
    *,
    drop_at: Mapping[str, str] | None = None,
    max_messages: int = 1_000_000,
) -> Run:
    """Run the parties to the end. ``drop_at`` maps a node to a stage (full, or
    the part after a round prefix): the node dies just before it would send its
    first message of that stage (nothing it sends from then on is delivered),
    and the coordinator is told it dropped."""
    plan = dict(drop_at or {})
    gone: set[str] = set()
    queue: deque[tuple[str, Outbound]] = deque()
    queue.extend((COORDINATOR, o) for o in coordinator.start())
    for name, party in nodes.items():
        queue.extend((name, o) for o in party.start())
    if analyst is not None:
        queue.extend((ANALYST, o) for o in analyst.start())
    delivered = 0
    while queue and not coordinator.finished:
        delivered += 1
        if delivered > max_messages:
            raise RuntimeError("the parties did not finish")
        sender, out = queue.popleft()
        if sender in gone:
            continue
        if sender in plan and _matches(out.stage, plan[sender]):
            gone.add(sender)
            del plan[sender]
            queue.extend(
                (COORDINATOR, o) for o in coordinator.dropped(frozenset({sender}))
            )
            continue
        message = Inbound(sender, out.stage, out.payload)
        if out.recipient == COORDINATOR:
            queue.extend((COORDINATOR, o) for o in coordinator.receive(message))
        elif out.recipient == ANALYST:
            if analyst is not None:
                queue.extend((ANALYST, o) for o in analyst.receive(message))
        elif out.recipient in gone:
            continue
        else:
            party = nodes[out.recipient]
            queue.extend((out.recipient, o) for o in party.receive(message))
    if not coordinator.finished:
        raise RuntimeError("the protocol stalled before the coordinator finished")
    result = coordinator.result()
    attested = {
        name: party.attest(result)
        for name, party in nodes.items()
        if name not in gone and party.finished
    }
    opened = None
    if analyst is not None:
        analyst.attach(coordinator.attachments())
        opened = analyst.finalize(result)
    return Run(result, coordinator.attachments(), attested, opened, frozenset(gone))
