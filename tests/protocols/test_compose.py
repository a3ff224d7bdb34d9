"""Rounds of sub-protocols: each round its own SecAgg+ session over the parties
still in the job; late answers to a closed round are ignored, early ones refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cleanroom.errors import ProtocolAbort, ProtocolError
from protocols.compose import (
    BEGIN,
    CoordinatorRounds,
    NodeRounds,
    RoundBegin,
    split_stage,
)
from protocols.party import COORDINATOR, Inbound, Outbound, Party
from protocols.secagg import SecAggClient, SecAggConfig, SecAggServer

NODES = ("a", "b", "c", "d")
LENGTH = 3


def _config(r: int, parties: tuple[str, ...]) -> SecAggConfig:
    return SecAggConfig.create(
        session_id=f"job/r{r}", parties=parties, vector_length=LENGTH
    )


def _federation(rounds: int) -> tuple[CoordinatorRounds, dict[str, NodeRounds]]:
    keys = {n: Ed25519PrivateKey.generate() for n in NODES}
    publics = {n: k.public_key() for n, k in keys.items()}

    def node(name: str) -> NodeRounds:
        def make(begin: RoundBegin) -> Party:
            vector = np.full(LENGTH, 10 * begin.round + NODES.index(name), np.uint64)
            return SecAggClient(
                name,
                _config(begin.round, begin.parties),
                vector,
                signing_key=keys[name],
                peer_signing_keys={p: publics[p] for p in begin.parties},
            )

        return NodeRounds(rounds, make, name=name)

    def make_server(r: int, parties: tuple[str, ...]) -> Any:
        return SecAggServer(_config(r, parties), {p: publics[p] for p in parties})

    coordinator = CoordinatorRounds(
        rounds,
        NODES,
        make_server,
        combine=lambda results: {"rounds": results},
        round_result=lambda r, p: (
            list(p.result()["survivors"]),
            p.sum_vector().tolist(),
        ),
        min_parties=3,
    )
    return coordinator, {n: node(n) for n in NODES}


def _drive(
    coordinator: CoordinatorRounds,
    nodes: dict[str, NodeRounds],
    *,
    silent: dict[int, str] | None = None,
) -> None:
    """Deliver every message; the node named for a round stops answering in it,
    and the coordinator is told it dropped (as a deadline would)."""
    queue: list[tuple[str, Outbound]] = [(COORDINATOR, o) for o in coordinator.start()]
    for name, party in nodes.items():
        queue += [(name, o) for o in party.start()]
    while queue:
        sender, out = queue.pop(0)
        if out.recipient == COORDINATOR:
            produced = coordinator.receive(Inbound(sender, out.stage, out.payload))
            queue += [(COORDINATOR, o) for o in produced]
            continue
        number, _ = split_stage(out.stage)
        mute = (silent or {}).get(number)
        if out.recipient == mute:
            if out.stage.endswith(BEGIN):
                nodes[mute].receive(Inbound(sender, out.stage, out.payload))
            if not coordinator.finished and mute not in coordinator.gone:
                queue += [
                    (COORDINATOR, o) for o in coordinator.dropped(frozenset({mute}))
                ]
            continue
        if out.recipient in coordinator.gone:
            continue
        produced = nodes[out.recipient].receive(Inbound(sender, out.stage, out.payload))
        queue += [(out.recipient, o) for o in produced]


def test_every_round_is_its_own_session_and_sums_exactly() -> None:
    coordinator, nodes = _federation(4)
    _drive(coordinator, nodes)
    assert coordinator.finished and all(n.finished for n in nodes.values())
    results = coordinator.result()["rounds"]
    for r, (survivors, total) in enumerate(results):
        assert survivors == list(NODES)
        assert total == [sum(10 * r + i for i in range(4))] * LENGTH
    assert coordinator.progress().rounds == 4


def test_a_party_dropped_in_one_round_is_left_out_of_the_next() -> None:
    coordinator, nodes = _federation(3)
    _drive(coordinator, nodes, silent={1: "d"})
    results = coordinator.result()["rounds"]
    assert results[0][0] == list(NODES)
    assert results[2][0] == ["a", "b", "c"]
    assert results[2][1] == [sum(20 + i for i in range(3))] * LENGTH


def test_messages_for_rounds_not_yet_open_are_refused_and_late_ones_ignored() -> None:
    coordinator, nodes = _federation(2)
    coordinator.start()
    with pytest.raises(ProtocolError, match="not yet open"):
        coordinator.receive(Inbound("a", "r1/secagg/advertise-keys", b""))
    with pytest.raises(ProtocolError, match="names no round"):
        coordinator.receive(Inbound("a", "secagg/advertise-keys", b""))
    follower = nodes["a"]
    with pytest.raises(ProtocolError, match="not yet open"):
        follower.receive(Inbound("b", "r0/secagg/share-keys", b""))


def test_too_few_parties_for_a_round_ends_the_job() -> None:
    coordinator, _ = _federation(3)
    coordinator.start()
    coordinator.dropped(frozenset({"a"}))
    with pytest.raises(ProtocolAbort):
        coordinator.dropped(frozenset({"b"}))


def test_a_follower_left_out_of_a_round_stops() -> None:
    _, nodes = _federation(2)
    begin = RoundBegin(0, ("a", "b", "c")).encode()
    with pytest.raises(ProtocolAbort, match="left out"):
        nodes["d"].receive(Inbound(COORDINATOR, f"r0/{BEGIN}", begin))
