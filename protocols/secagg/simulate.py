"""Run a whole SecAgg+ session in one process, for tests, benchmarks and demos.

The driver stands in for the executor: it delivers messages in order, counts
the bytes each party sends, and simulates dropouts. A party dropping at stage
``S`` disappears just before it would answer the coordinator's ``S`` message
(for ADVERTISE_KEYS: before it starts), and the coordinator is told at once,
as an executor would be when the party's deadline passed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cleanroom.errors import ConfigError, ProtocolAbort
from protocols.party import (
    COORDINATOR,
    SYSTEM_RANDOM,
    CoordinatorParty,
    Inbound,
    Outbound,
    Party,
    RandomSource,
)
from protocols.prg import MaskVector
from protocols.secagg.client import SecAggClient
from protocols.secagg.config import SecAggConfig
from protocols.secagg.messages import ADVERTISE_KEYS, STAGES
from protocols.secagg.series_wire import SERIES_INPUT, SERIES_STAGES
from protocols.secagg.server import SecAggServer


@dataclass
class Traffic:
    """Payload bytes and message counts each party sent during one run."""

    bytes_sent: dict[str, int] = field(default_factory=dict)
    messages_sent: dict[str, int] = field(default_factory=dict)

    def record(self, sender: str, outbound: Outbound) -> None:
        """Count one outbound message."""
        self.bytes_sent[sender] = self.bytes_sent.get(sender, 0) + len(outbound.payload)
        self.messages_sent[sender] = self.messages_sent.get(sender, 0) + 1


def make_identities(
    parties: tuple[str, ...], random: RandomSource = SYSTEM_RANDOM
) -> dict[str, Ed25519PrivateKey]:
    """Fresh Ed25519 identity keys for simulated parties."""
    return {p: Ed25519PrivateKey.from_private_bytes(random(32)) for p in parties}


def build_session(
    inputs: Mapping[str, npt.ArrayLike],
    config: SecAggConfig,
    *,
    random: RandomSource = SYSTEM_RANDOM,
    identities: Mapping[str, Ed25519PrivateKey] | None = None,
) -> tuple[SecAggServer, dict[str, SecAggClient]]:
    """One honest coordinator and one client per party, with matching identities."""
    if set(inputs) != set(config.parties):
        raise ConfigError("inputs must hold exactly one vector per configured party")
    ids = (
        dict(identities)
        if identities is not None
        else make_identities(config.parties, random)
    )
    public = {p: k.public_key() for p, k in ids.items()}
    clients = {
        p: SecAggClient(
            p,
            config,
            inputs[p],
            signing_key=ids[p],
            peer_signing_keys=public,
            random=random,
        )
        for p in config.parties
    }
    return SecAggServer(config, public), clients


def drive(
    coordinator: CoordinatorParty,
    nodes: Mapping[str, Party],
    *,
    drop_at: Mapping[str, str] | None = None,
) -> Traffic:
    """Deliver every message until the session is quiet; exceptions propagate."""
    drops = dict(drop_at or {})
    for party, stage in drops.items():
        if party not in nodes or stage not in (*STAGES, *SERIES_STAGES):
            raise ConfigError(f"cannot drop {party!r} at stage {stage!r}")
    traffic = Traffic()
    queue: deque[tuple[str, Inbound]] = deque()

    def post(sender: str, outbound: list[Outbound]) -> None:
        for message in outbound:
            traffic.record(sender, message)
            inbound = Inbound(
                sender=sender, stage=message.stage, payload=message.payload
            )
            queue.append((message.recipient, inbound))

    post(COORDINATOR, coordinator.start())
    # A party dropping at a protocol's first stage never starts.
    gone = {p for p, stage in drops.items() if stage in (ADVERTISE_KEYS, SERIES_INPUT)}
    for name, node in nodes.items():
        if name not in gone:
            post(name, node.start())
    if gone:
        post(COORDINATOR, coordinator.dropped(frozenset(gone)))
    while queue:
        recipient, message = queue.popleft()
        if recipient == COORDINATOR:
            post(COORDINATOR, coordinator.receive(message))
        elif recipient in gone:
            continue
        elif drops.get(recipient) == message.stage:
            gone.add(recipient)
            post(COORDINATOR, coordinator.dropped(frozenset({recipient})))
        else:
            post(recipient, nodes[recipient].receive(message))
    if not coordinator.finished:
        raise ProtocolAbort("the session went quiet before the coordinator finished")
    return traffic


def run_in_process(
    inputs: Mapping[str, npt.ArrayLike],
    config: SecAggConfig,
    *,
    drop_at: Mapping[str, str] | None = None,
    random: RandomSource = SYSTEM_RANDOM,
) -> MaskVector:
    """Run SecAgg+ over ``inputs`` and return the survivors' sum mod 2^bits.

    ``drop_at`` maps a party to the stage (a name from ``messages.STAGES``) at
    which it disappears.
    """
    server, clients = build_session(inputs, config, random=random)
    drive(server, clients, drop_at=drop_at)
    return server.sum_vector()


def plaintext_sum(
    inputs: Mapping[str, npt.ArrayLike], config: SecAggConfig, parties: list[str]
) -> MaskVector:
    """The reference sum of ``parties``' inputs mod 2^bits, computed in the clear."""
    total: MaskVector = np.zeros(config.vector_length, dtype=config.dtype)
    for party in parties:
        np.add(total, np.asarray(inputs[party]).astype(config.dtype), out=total)
    return total
