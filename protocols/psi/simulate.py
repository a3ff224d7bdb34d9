"""All parties of a PSI or lookup run in one process, through an in-memory relay.

The relay records every payload it carries (what the coordinator would see), so
tests can search the transcript; ``drop`` silences a party after it has sent a
given number of messages, then reports it dropped to everyone left.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from protocols.party import Inbound, Outbound, Party


@dataclass
class Transcript:
    """Every relayed message as (sender, recipient, stage, payload), in order."""

    messages: list[tuple[str, str, str, bytes]] = field(default_factory=list)

    def blob(self) -> bytes:
        """All payloads concatenated, for searching."""
        return b"".join(m[3] for m in self.messages)

    def stages(self) -> list[str]:
        """The stage of each message."""
        return [m[2] for m in self.messages]


def drive(
    parties: Mapping[str, Party], *, drop: Mapping[str, int] | None = None
) -> Transcript:
    """Start every party, relay until quiet; ``drop[name] = k`` kills ``name`` after
    its k-th message and then calls ``dropped`` on every other unfinished party."""
    transcript = Transcript()
    budget = dict(drop or {})
    sent = dict.fromkeys(parties, 0)
    gone: set[str] = set()
    queue: deque[tuple[str, Outbound]] = deque()
    for name, party in parties.items():
        queue.extend((name, m) for m in party.start())
    while queue:
        sender, message = queue.popleft()
        if sender in gone:
            continue
        if sender in budget and sent[sender] >= budget[sender]:
            gone.add(sender)
            for other, party in parties.items():
                if other not in gone and not party.finished:
                    party.dropped(frozenset({sender}))
            continue
        sent[sender] += 1
        transcript.messages.append(
            (sender, message.recipient, message.stage, message.payload)
        )
        if message.recipient in gone:
            continue
        target = parties[message.recipient]
        inbound = Inbound(sender, message.stage, message.payload)
        queue.extend((message.recipient, m) for m in target.receive(inbound))
    return transcript
