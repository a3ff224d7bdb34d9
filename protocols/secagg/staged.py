"""What both SecAgg+ coordinators share (the full session's ``server`` and the
series round's ``series_server``): one stage at a time, each ending once every
live expected party has answered, dropouts reported at any time."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np

from cleanroom.errors import ProtocolError
from protocols.party import CoordinatorParty, Inbound, Outbound, Progress
from protocols.prg import MaskVector
from protocols.secagg.config import SecAggConfig


class StagedServer(CoordinatorParty):
    """The stage bookkeeping of a SecAgg+ coordinator; subclasses handle each
    stage's messages (``_handle``), move on (``_advance_if_complete``) and say
    when too few parties remain (``_check_threshold``)."""

    def __init__(self, config: SecAggConfig, first_stage: str) -> None:
        self._config = config
        self._members = frozenset(config.parties)
        self._started = False
        self._stage: str | None = first_stage
        self._expected: frozenset[str] = self._members
        self._received: set[str] = set()
        self._gone: set[str] = set()
        self._sum: MaskVector = np.zeros(config.vector_length, dtype=config.dtype)
        self._survivors: frozenset[str] = frozenset()
        self._result: MaskVector | None = None

    @property
    def finished(self) -> bool:
        """True once the sum has been unmasked."""
        return self._result is not None

    def start(self) -> list[Outbound]:
        """Nodes speak first: the coordinator has nothing to send."""
        if self._started:
            raise ProtocolError("the coordinator has already started")
        self._started = True
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        """Accept one node's message for the current stage, advancing when complete."""
        sender, stage = message.sender, message.stage
        if not self._started or self._stage is None:
            state = "finished" if self._stage is None else "not started"
            raise ProtocolError(f"the coordinator is {state}; refusing {stage}")
        if sender not in self._members:
            raise ProtocolError(f"{sender!r} is not a party of this session")
        if sender in self._gone:
            raise ProtocolError(
                f"{sender!r} was declared dropped; refusing its {stage}"
            )
        if stage != self._stage:
            raise ProtocolError(
                f"expected {self._stage} messages, got {stage} from {sender}"
            )
        if sender not in self._expected:
            raise ProtocolError(f"{sender!r} dropped out before {stage}")
        if sender in self._received:
            raise ProtocolError(f"{sender!r} already sent its {stage} message")
        self._handle(stage, sender, message.payload)
        self._received.add(sender)
        return self._advance_if_complete()

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        """Mark ``parties`` as gone; abort if the threshold can no longer be met."""
        unknown = sorted(p for p in parties if p not in self._members)
        if unknown:
            raise ProtocolError(f"unknown parties reported dropped: {unknown}")
        self._gone |= parties
        if self._stage is None:
            return []
        self._check_threshold()
        return self._advance_if_complete()

    def waiting_for(self) -> frozenset[str]:
        """The live parties the current stage still waits for."""
        if not self._started or self._stage is None:
            return frozenset()
        return frozenset(self._expected - self._received - self._gone)

    def progress(self) -> Progress:
        if self._stage is None:
            return Progress(stage="unmasked")
        live = self._expected - self._gone
        return Progress(
            stage=self._stage,
            heard=len(self._received & live),
            expected=len(live),
        )

    def sum_vector(self) -> MaskVector:
        """The survivors' exact sum mod 2^modulus_bits; only valid once finished."""
        if self._result is None:
            raise ProtocolError("the sum is not available before the protocol finishes")
        return self._result.copy()

    def result(self) -> Mapping[str, Any]:
        """The released result: survivors, dropped parties and the sum as ints."""
        total = self.sum_vector()
        return {
            "survivors": sorted(self._survivors),
            "dropped": sorted(set(self._config.parties) - self._survivors),
            "modulus_bits": self._config.modulus_bits,
            "sum": total.tolist(),
        }

    def _begin(self, stage: str | None, expected: frozenset[str]) -> None:
        self._stage = stage
        self._expected = expected
        self._received = set()

    @abstractmethod
    def _handle(self, stage: str, sender: str, payload: bytes) -> None:
        """Take in one checked message of the current stage."""

    @abstractmethod
    def _advance_if_complete(self) -> list[Outbound]:
        """Move on once the stage has every live party's message."""

    @abstractmethod
    def _check_threshold(self) -> None:
        """ProtocolAbort once too few parties remain to finish."""
