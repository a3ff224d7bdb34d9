"""The per-party state machine interface every protocol implements.

A protocol is a set of parties. Each party is built with its inputs, keys and an
injectable randomness source, then driven by one executor: ``start()`` once, then
``receive()`` for every inbound message, and ``dropped()`` when the executor
learns that parties have gone away. Each call returns the messages to send. A
party has no sockets, files or clocks, so all parties of a protocol can run in
one process in tests and unchanged across real nodes.

Party names are node names; the coordinator (the aggregator/relay) is the party
named ``COORDINATOR``. Node-to-node messages are relayed by the coordinator
inside envelopes encrypted to the recipient and signed by the sender; that
wrapping is the executor's job, not the protocol's.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cleanroom.errors import ProtocolAbort

COORDINATOR: Final = "@coordinator"

RandomSource = Callable[[int], bytes]
"""Returns n cryptographically random bytes; ``os.urandom`` unless a test injects."""

SYSTEM_RANDOM: Final[RandomSource] = os.urandom


@dataclass(frozen=True)
class Outbound:
    """A message a party wants delivered to ``recipient`` for protocol ``stage``."""

    recipient: str
    stage: str
    payload: bytes


@dataclass(frozen=True)
class Inbound:
    """A message delivered to a party, already authenticated by the executor."""

    sender: str
    stage: str
    payload: bytes


@dataclass(frozen=True)
class NodeUsage:
    """What a node-side party consumed, reported to the node's meters.

    ``units`` holds the job type's declared units (e.g. ``{"verified_records": 12}``).
    """

    rows_touched: int = 0
    epsilon: float = 0.0
    units: Mapping[str, float] = field(default_factory=dict)


class Party(ABC):
    """One participant of a protocol, driven by an executor."""

    @abstractmethod
    def start(self) -> list[Outbound]:
        """Begin the protocol; return the first messages to send."""

    @abstractmethod
    def receive(self, message: Inbound) -> list[Outbound]:
        """Process one inbound message; raise ProtocolError if it must be refused."""

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        """Learn that ``parties`` are gone. By default a protocol cannot recover."""
        raise ProtocolAbort(f"parties dropped out: {', '.join(sorted(parties))}")

    @property
    @abstractmethod
    def finished(self) -> bool:
        """True once the party has nothing more to do."""


class CoordinatorParty(Party):
    """The coordinator's side of a protocol: it produces the job's released result."""

    @abstractmethod
    def result(self) -> Mapping[str, Any]:
        """The JSON-serialisable released result; only valid once ``finished``."""


class NodeParty(Party):
    """A data holder's side of a protocol."""

    def usage(self) -> NodeUsage:
        """What this party consumed; the node's meters record it."""
        return NodeUsage()
