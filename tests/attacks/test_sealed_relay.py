"""A malicious operator tampering with what it relays to the analyst's party:
dropping one node's sealed report, or delivering one node's report as another's.
The analyst's party opens only reports sealed and signed by their own node, and
only the set the released commitments name, so neither goes unnoticed."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

import pytest
from helpers.malicious import spec

from cleanroom import wire
from cleanroom.errors import CleanroomError, EnvelopeError, ProtocolError
from cleanroom.testing import InProcessFederation
from coordinator.mailbox import Mailboxes
from protocols.party import ANALYST

Rewrite = Callable[[wire.ProtocolMessage], list[wire.ProtocolMessage]]


def _relay_through(monkeypatch: pytest.MonkeyPatch, rewrite: Rewrite) -> None:
    """Every message a node sends to the analyst passes ``rewrite`` first."""
    genuine = Mailboxes.put_many

    def put_many(
        self: Mailboxes, items: Iterable[tuple[str, wire.Work]]
    ) -> list[int]:
        kept: list[tuple[str, wire.Work]] = []
        for box, work in items:
            if isinstance(work, wire.ProtocolMessage) and work.recipient == ANALYST:
                kept += [(box, w) for w in rewrite(work)]
            else:
                kept.append((box, work))
        return genuine(self, kept)

    monkeypatch.setattr(Mailboxes, "put_many", put_many)
    monkeypatch.setattr(
        Mailboxes, "put", lambda self, box, work: self.put_many([(box, work)])
    )


def _no_reading(fed: InProcessFederation, expected: type[CleanroomError]) -> None:
    view = fed.client.submit(spec("count"))
    job = view.job.job_id
    with pytest.raises(expected):
        final = fed.client.wait(job, timeout=15, poll=0.01)
        fed.client.result(job)  # a job that "succeeded" must still not open
        raise AssertionError(f"opened a tampered result: {final.job.state}")


def test_a_dropped_sealed_report_is_noticed(
    fed: InProcessFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    _relay_through(monkeypatch, lambda m: [] if m.sender == "h2" else [m])
    _no_reading(fed, ProtocolError)


def test_a_report_delivered_as_another_nodes_is_refused(
    fed: InProcessFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    held: dict[str, wire.ProtocolMessage] = {}

    def swap(message: wire.ProtocolMessage) -> list[wire.ProtocolMessage]:
        """h2's report is replaced by h1's, whichever of them arrives first."""
        if message.sender not in ("h1", "h2"):
            return [message]
        held[message.sender] = message
        if len(held) < 2:
            return [message] if message.sender == "h1" else []
        forged = replace(held["h2"], body=held["h1"].body)  # h1's report, as h2's
        return [message, forged] if message.sender == "h1" else [forged]

    _relay_through(monkeypatch, swap)
    _no_reading(fed, EnvelopeError)


def test_honest_relay_opens(fed: InProcessFederation) -> None:
    view = fed.run(spec("count"))
    counts = fed.client.result(view.job.job_id)["result"]["counts"]
    assert {c["node"] for c in counts} == {"h1", "h2", "h3"}
