"""A party's envelopes: what a node or the analyst sends is signed for the
coordinator and sealed for anyone else; what it receives from another party is
opened and checked (signature, header, order) before the protocol sees it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from cleanroom import errors, wire
from cleanroom.envelope import (
    EnvelopeHeader,
    ReplayGuard,
    open_envelope,
    seal,
    sign_message,
)
from cleanroom.keys import KeyBundle, NodeKeys
from protocols.party import COORDINATOR, Inbound, Outbound


class PartyChannel:
    """One party's view of one job's envelopes.

    ``bundles`` holds the CA-verified key bundles of every other party the job
    may exchange envelopes with (nodes by name, the analyst as ``ANALYST``).
    """

    def __init__(
        self,
        job_id: str,
        me: str,
        keys: NodeKeys,
        bundles: Mapping[str, KeyBundle],
    ) -> None:
        self._job_id = job_id
        self._me = me
        self._keys = keys
        self._bundles = dict(bundles)
        self._seq: dict[str, int] = {}
        self._guard = ReplayGuard()
        self._accepted: dict[str, set[bytes]] = {}

    def wrap(self, out: Outbound) -> wire.ProtocolMessage:
        seq = self._seq.get(out.recipient, 0)
        self._seq[out.recipient] = seq + 1
        header = EnvelopeHeader(self._job_id, self._me, out.recipient, out.stage, seq)
        if out.recipient == COORDINATOR:
            body = sign_message(header, out.payload, signing=self._keys.signing)
        else:
            bundle = self._bundles.get(out.recipient)
            if bundle is None:
                raise errors.ProtocolError(
                    f"'{out.recipient}' is not a party of this job"
                )
            body = seal(
                header,
                out.payload,
                sender_signing=self._keys.signing,
                recipient_exchange_public=bundle.exchange_public,
            )
        return wire.ProtocolMessage(
            self._job_id, self._me, out.recipient, out.stage, body
        )

    def open(self, msg: wire.ProtocolMessage) -> Inbound | None:
        """The checked message, or None for a byte-identical copy of one already
        accepted (a sender resending after its acknowledgement was lost).

        Any other envelope at or below the last accepted seq of its sender (a
        replay of something else, or a reordering) raises EnvelopeError; a copy
        never reaches the party twice.
        """
        if msg.recipient != self._me:
            raise errors.EnvelopeError("message is addressed to another party")
        if msg.sender == COORDINATOR:
            # The coordinator's messages arrive on the mutually authenticated channel.
            return Inbound(COORDINATOR, msg.stage, msg.body)
        bundle = self._bundles.get(msg.sender)
        if bundle is None:
            raise errors.EnvelopeError(f"'{msg.sender}' is not a party of this job")
        digest = hashlib.sha256(msg.body).digest()
        accepted = self._accepted.setdefault(msg.sender, set())
        if digest in accepted:
            return None
        header, payload = open_envelope(
            msg.body,
            recipient=self._me,
            recipient_exchange=self._keys.exchange,
            sender_signing_public=bundle.signing_public,
        )
        if (header.job_id, header.sender, header.stage) != (
            self._job_id,
            msg.sender,
            msg.stage,
        ):
            raise errors.EnvelopeError("envelope header does not match the message")
        self._guard.check(header)
        accepted.add(digest)
        return Inbound(msg.sender, msg.stage, payload)
