"""Run a buyer and an owner in one process, for tests, benchmarks and demos."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from cleanroom.errors import ProtocolAbort
from protocols.party import Inbound, Outbound, Party


@dataclass
class Traffic:
    """Payload bytes and message counts each party sent, by stage."""

    bytes_sent: dict[str, int] = field(default_factory=dict)
    bytes_by_stage: dict[str, int] = field(default_factory=dict)
    messages_sent: dict[str, int] = field(default_factory=dict)

    def record(self, sender: str, outbound: Outbound) -> None:
        size = len(outbound.payload)
        self.bytes_sent[sender] = self.bytes_sent.get(sender, 0) + size
        self.bytes_by_stage[outbound.stage] = (
            self.bytes_by_stage.get(outbound.stage, 0) + size
        )
        self.messages_sent[sender] = self.messages_sent.get(sender, 0) + 1


def run_in_process(buyer: Party, owner: Party, *, names: tuple[str, str]) -> Traffic:
    """Start both parties and deliver every message in order until both finish.

    ``names`` are (buyer, owner): the senders the executor authenticates.
    """
    parties = dict(zip(names, (buyer, owner), strict=True))
    traffic = Traffic()
    queue: deque[tuple[str, Outbound]] = deque()
    for name in reversed(names):  # the owner starts first, so it is ready
        for outbound in parties[name].start():
            traffic.record(name, outbound)
            queue.append((name, outbound))
    while queue:
        sender, outbound = queue.popleft()
        recipient = outbound.recipient
        for reply in parties[recipient].receive(
            Inbound(sender, outbound.stage, outbound.payload)
        ):
            traffic.record(recipient, reply)
            queue.append((recipient, reply))
    if not (buyer.finished and owner.finished):
        raise ProtocolAbort("the run ended before both parties finished")
    return traffic
