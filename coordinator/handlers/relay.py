"""Routing one pushed protocol message: to the job's coordinator party, or relayed
unread to another party's mailbox."""

from __future__ import annotations

from cleanroom import errors, wire
from coordinator.mailbox import analyst_mailbox, inbox
from coordinator.state import CoordinatorState
from protocols.party import ANALYST, COORDINATOR


def push(state: CoordinatorState, sender: str, msg: wire.ProtocolMessage) -> None:
    """``sender`` is the caller's party name, from its certificate (``ANALYST``
    for the job's own analyst)."""
    if msg.sender != sender:
        raise errors.AuthError(f"'{sender}' may not send as '{msg.sender}'")
    run = state.run(msg.job_id)
    if run is None:
        raise errors.ProtocolError(f"job {msg.job_id} is not running")
    if sender not in run.members:
        raise errors.AuthError(f"'{sender}' is not a party of job {msg.job_id}")
    if not run.is_member(sender):
        raise errors.ProtocolError(f"'{sender}' was dropped from job {msg.job_id}")
    if msg.recipient == COORDINATOR:
        # Stored before the push is acknowledged: a restart cannot lose it.
        (seq,) = state.mailboxes.put_many([(inbox(msg.job_id), msg)])
        run.deliver(sender, msg, seq)
        return
    if msg.recipient not in run.members:
        raise errors.ProtocolError(f"'{msg.recipient}' is not a party of this job")
    if not run.is_member(msg.recipient):
        return  # a message for a party already dropped goes nowhere
    box = analyst_mailbox(msg.job_id) if msg.recipient == ANALYST else msg.recipient
    state.mailboxes.put(box, msg)
