"""A party's channel: a byte-identical resend is dropped once, anything else
at or below the last accepted seq is refused, and neither reaches the party."""

from __future__ import annotations

import pytest

from cleanroom.errors import EnvelopeError
from cleanroom.keys import KeyBundle, NodeKeys
from cleanroom.partyio import PartyChannel
from protocols.party import Outbound

A, B = NodeKeys.generate(), NodeKeys.generate()


def _bundle(name: str, keys: NodeKeys) -> KeyBundle:
    # The channel reads only the public keys; the CA check happens before it.
    return KeyBundle(name, keys.signing_public, keys.exchange_public, b"", b"")


def _pair() -> tuple[PartyChannel, PartyChannel]:
    sender = PartyChannel("job-1", "node-a", A, {"node-b": _bundle("node-b", B)})
    receiver = PartyChannel("job-1", "node-b", B, {"node-a": _bundle("node-a", A)})
    return sender, receiver


def test_a_resend_after_a_lost_acknowledgement_is_dropped_not_refused() -> None:
    sender, receiver = _pair()
    first = sender.wrap(Outbound("node-b", "s/one", b"one"))
    second = sender.wrap(Outbound("node-b", "s/two", b"two"))
    opened = receiver.open(first)
    assert opened is not None and opened.payload == b"one"
    assert receiver.open(first) is None  # the same bytes again: already applied
    opened = receiver.open(second)
    assert opened is not None and opened.payload == b"two"
    assert receiver.open(second) is None
    assert receiver.open(first) is None


def test_an_out_of_order_envelope_is_still_refused() -> None:
    sender, receiver = _pair()
    first = sender.wrap(Outbound("node-b", "s/one", b"one"))
    second = sender.wrap(Outbound("node-b", "s/two", b"two"))
    assert receiver.open(second) is not None
    with pytest.raises(EnvelopeError, match="replayed or out of order"):
        receiver.open(first)  # never accepted, so not a resend: a reordering


def test_a_fresh_seal_of_an_accepted_seq_is_refused() -> None:
    """Sealing is randomised: a second envelope with the same seq (a sender
    that lost its counter, or a forged copy) differs in bytes and is refused."""
    sender, receiver = _pair()
    assert receiver.open(sender.wrap(Outbound("node-b", "s/one", b"one"))) is not None
    again, _ = _pair()
    with pytest.raises(EnvelopeError, match="replayed or out of order"):
        receiver.open(again.wrap(Outbound("node-b", "s/one", b"other")))
