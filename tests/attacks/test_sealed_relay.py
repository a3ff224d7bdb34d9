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

Rewrite = Callable[[wire.ProtocolMessage], wire.ProtocolMessage | None]


def _relay_through(monkeypatch: pytest.MonkeyPatch, rewrite: Rewrite) -> None:
    """Every message a node sends to the analyst passes ``rewrite`` first."""
    genuine = Mailboxes.put_many

    def put_many(
        self: Mailboxes, items: Iterable[tuple[str, wire.Work]]
    ) -> list[int]:
        kept: list[tuple[str, wire.Work]] = []
        for box, work in items:
            if isinstance(work, wire.ProtocolMessage) and work.recipient == ANALYST:
                changed = rewrite(work)
                if changed is None:
                    continue
                work = changed
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
    _relay_through(monkeypatch, lambda m: None if m.sender == "h2" else m)
    _no_reading(fed, ProtocolError)


def test_a_report_delivered_as_another_nodes_is_refused(
    fed: InProcessFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, bytes] = {}

    def swap(message: wire.ProtocolMessage) -> wire.ProtocolMessage:
        seen.setdefault(message.sender, message.body)
        if message.sender == "h2" and "h1" in seen:
            return replace(message, body=seen["h1"])  # h1's report, as h2's
        return message

    _relay_through(monkeypatch, swap)
    _no_reading(fed, EnvelopeError)


def test_honest_relay_opens(fed: InProcessFederation) -> None:
    view = fed.run(spec("count"))
    counts = fed.client.result(view.job.job_id)["result"]["counts"]
    assert {c["node"] for c in counts} == {"h1", "h2", "h3"}
