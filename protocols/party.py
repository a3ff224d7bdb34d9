"""The per-party state machine interface every protocol implements.

A protocol is a set of parties. Each party is built with its inputs, keys and an
injectable randomness source, then driven by one executor: ``start()`` once, then
``receive()`` for every inbound message, ``dropped()`` when the executor learns
that parties have gone away (lost contact, or missed a stage's deadline), and
``local_event()`` for something that happened on the party's own premises (a
holder's decision). Each call returns the messages to send. A party has no
sockets, files or clocks, so all parties of a protocol can run in one process in
tests and unchanged across real nodes.

Party names are node names; the coordinator (aggregator and relay) is the party
named ``COORDINATOR`` and the analyst who submitted the job is ``ANALYST``.
Messages between nodes and the analyst are relayed by the coordinator inside
envelopes encrypted to the recipient and signed by the sender; that wrapping is
the executor's job, not the protocol's.

Time is the executor's too: a party says which parties its current stage waits
for (``waiting_for``) and what it is doing (``progress``); the executor gives each
stage a deadline from its clock and calls ``dropped`` with the parties that
missed it. Stage names may be namespaced (``r7/secagg/masked``) by combinators
that run sub-protocols in sequence (``protocols.compose``).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cleanroom.errors import ProtocolAbort, ProtocolError

COORDINATOR: Final = "@coordinator"
ANALYST: Final = "@analyst"
"""The analyst's party in every job; its keys come from the analyst's CA-anchored
key bundle, its name and organisation from the analyst's certificate."""

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
class Progress:
    """What a party is doing, as it reports it (never counted from stage names).

    ``heard``/``expected`` count the parties the current stage has heard from and
    waits for in total; ``done``/``total`` count work items (rows, ciphertexts).
    ``note`` is a short free text for the party's own user (e.g. the analyst
    party's last loss). It travels like every other field: a node's progress goes
    to the coordinator, so a node party puts there only what the coordinator may
    see.
    """

    stage: str = ""
    round: int | None = None
    rounds: int | None = None
    heard: int = 0
    expected: int = 0
    done: int = 0
    total: int = 0
    unit: str = ""
    note: str = ""

    def describe(self) -> str:
        parts = []
        if self.round is not None:
            parts.append(
                f"round {self.round + 1}"
                + (f" of {self.rounds}" if self.rounds is not None else "")
            )
        if self.stage:
            parts.append(f"stage {self.stage}")
        if self.expected:
            parts.append(f"{self.heard} of {self.expected} parties heard from")
        if self.total:
            parts.append(f"{self.done} of {self.total} {self.unit or 'items'}")
        if self.note:
            parts.append(self.note)
        return ", ".join(parts) or "running"

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "round": self.round,
            "rounds": self.rounds,
            "heard": self.heard,
            "expected": self.expected,
            "done": self.done,
            "total": self.total,
            "unit": self.unit,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Progress:
        def integer(key: str) -> int:
            value = raw.get(key, 0)
            return (
                value if isinstance(value, int) and not isinstance(value, bool) else 0
            )

        def optional(key: str) -> int | None:
            value = raw.get(key)
            return (
                value
                if isinstance(value, int) and not isinstance(value, bool)
                else None
            )

        return cls(
            stage=str(raw.get("stage", ""))[:200],
            round=optional("round"),
            rounds=optional("rounds"),
            heard=integer("heard"),
            expected=integer("expected"),
            done=integer("done"),
            total=integer("total"),
            unit=str(raw.get("unit", ""))[:40],
            note=str(raw.get("note", ""))[:200],
        )


@dataclass(frozen=True)
class LocalEvent:
    """Something that happened on a party's own premises, e.g. a holder's decision."""

    kind: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeUsage:
    """What a node-side party consumed, reported to the node's meters.

    ``units`` holds the job type's declared units (e.g. ``{"verified_records": 12}``).
    """

    rows_touched: int = 0
    epsilon: float = 0.0
    delta: float = 0.0
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

    def local_event(self, event: LocalEvent) -> list[Outbound]:
        """An event on the party's own premises; by default none is expected."""
        raise ProtocolError(f"{type(self).__name__} expects no local event")

    def waiting_for(self) -> frozenset[str]:
        """The parties the current stage still waits for; the executor drops those
        that miss the stage's deadline. Empty: nothing to time out (e.g. waiting
        for a person's review)."""
        return frozenset()

    def progress(self) -> Progress:
        """What the party is doing now."""
        return Progress()

    @property
    @abstractmethod
    def finished(self) -> bool:
        """True once the party has nothing more to do."""


class CoordinatorParty(Party):
    """The coordinator's side of a protocol: it assembles the job's released result.

    A coordinator party must be deterministic given its context (randomness only
    from ``CoordinatorContext.random``): the coordinator resumes a job after a
    restart by replaying the party's journal of inbound messages.
    """

    @abstractmethod
    def result(self) -> Mapping[str, Any]:
        """The JSON-serialisable released result; only valid once ``finished``."""

    def attachments(self) -> Mapping[str, bytes]:
        """Large data released with the result (e.g. a masked aggregate): stored
        beside the document, which names each by its SHA-256; sent to the analyst,
        not to the nodes that sign the document."""
        return {}


class NodeParty(Party):
    """A data holder's side of a protocol."""

    def usage(self) -> NodeUsage:
        """What this party consumed; the node's meters record it."""
        return NodeUsage()

    def attest(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        """Before the node signs a release: check the released ``result`` against
        what this party itself knows, and return what it vouches for (it goes
        into the node's signed statement). Raise ProtocolError if the result
        contradicts the party's own view: the node then refuses to sign.

        The default vouches for nothing beyond the document's hash.
        """
        return {}


class AnalystParty(Party):
    """The analyst's side of a protocol, run by the analyst's client.

    It must be deterministic given its context (randomness from
    ``AnalystContext.random``, which the client seeds from a secret it keeps), so
    that ``cleanroom job run`` can resume it by replaying what it received.
    """

    def attach(self, attachments: Mapping[str, bytes]) -> None:
        """The released result's attachments (large sealed data the document names
        by hash), checked against those hashes; given before ``finalize``."""

    def finalize(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        """Turn the released result into what the analyst reads (decrypt, unmask).

        Called once the job succeeded, with the released document's ``result``.
        """
        return result
