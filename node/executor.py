"""Runs a node's side of each job: one thread per job feeds its protocol party,
wraps what it sends (signed to the coordinator, sealed envelopes to peers) and
checks what it receives before the party sees it."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from cleanroom import errors
from cleanroom.envelope import (
    EnvelopeHeader,
    ReplayGuard,
    open_envelope,
    seal,
    sign_message,
)
from cleanroom.keys import KeyBundle, NodeKeys, verify_key_bundle
from proto import cleanroom_pb2 as pb
from protocols.party import COORDINATOR, Inbound, NodeParty, NodeUsage, Outbound

log = logging.getLogger(__name__)

_STOP: Final = object()

PartyFactory = Callable[[pb.StartJob, dict[str, KeyBundle]], NodeParty]
Send = Callable[[pb.ProtocolMessage], None]


@dataclass
class _Job:
    job_id: str
    bundles: dict[str, KeyBundle]
    inbox: queue.Queue[object] = field(default_factory=queue.Queue)
    seq: dict[str, int] = field(default_factory=dict)
    guard: ReplayGuard = field(default_factory=ReplayGuard)
    party: NodeParty | None = None


@dataclass(frozen=True)
class JobOutcome:
    """How a node's part in a job ended, for its meters and audit log."""

    job_id: str
    ok: bool
    usage: NodeUsage | None
    reason: str


class JobRunner:
    """The one executor that drives every job type's node-side party."""

    def __init__(
        self,
        *,
        node: str,
        keys: NodeKeys,
        ca_pem: bytes,
        send: Send,
        on_end: Callable[[JobOutcome], None],
    ) -> None:
        self._node = node
        self._keys = keys
        self._ca_pem = ca_pem
        self._send = send
        self._on_end = on_end
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()

    def active(self) -> list[str]:
        with self._lock:
            return list(self._jobs)

    def start(self, start: pb.StartJob, factory: PartyFactory) -> None:
        """Verify every party's key bundle against the CA, then run the party."""
        bundles: dict[str, KeyBundle] = {}
        for raw in start.key_bundles:
            bundle = verify_key_bundle(KeyBundle.from_bytes(raw), self._ca_pem)
            bundles[bundle.node] = bundle
        missing = set(start.parties) - set(bundles)
        if missing:
            raise errors.AuthError(f"no verified keys for {', '.join(sorted(missing))}")
        job = _Job(start.job_id, bundles)
        with self._lock:
            if start.job_id in self._jobs:
                raise errors.ProtocolError(
                    f"job {start.job_id} is already running here"
                )
            self._jobs[start.job_id] = job
        threading.Thread(
            target=self._run,
            args=(job, start, factory),
            name=f"job-{start.job_id}",
            daemon=True,
        ).start()

    def deliver(self, msg: pb.ProtocolMessage) -> None:
        with self._lock:
            job = self._jobs.get(msg.job_id)
        if job is None:
            log.warning(
                "dropping a message for job %s, which is not running here", msg.job_id
            )
            return
        job.inbox.put(msg)

    def stop(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None:
            job.inbox.put(_STOP)

    # ----------------------------------------------------------------------
    def _run(self, job: _Job, start: pb.StartJob, factory: PartyFactory) -> None:
        outcome: JobOutcome
        try:
            job.party = factory(start, job.bundles)
            self._emit(job, job.party.start())
            while not job.party.finished:
                item = job.inbox.get()
                if item is _STOP:
                    raise errors.ProtocolAbort("stopped by the coordinator")
                assert isinstance(item, pb.ProtocolMessage)
                self._emit(job, job.party.receive(self._open(job, item)))
            outcome = JobOutcome(job.job_id, True, job.party.usage(), "")
        except errors.CleanroomError as exc:
            partial = job.party.usage() if job.party is not None else None
            outcome = JobOutcome(job.job_id, False, partial, str(exc))
        except Exception as exc:  # a bug must not take the node down
            log.exception("job %s crashed", job.job_id)
            outcome = JobOutcome(
                job.job_id, False, None, f"internal error: {type(exc).__name__}"
            )
        finally:
            with self._lock:
                self._jobs.pop(job.job_id, None)
        self._on_end(outcome)

    def _open(self, job: _Job, msg: pb.ProtocolMessage) -> Inbound:
        if msg.recipient != self._node:
            raise errors.EnvelopeError("message is addressed to another node")
        if msg.sender == COORDINATOR:
            # The coordinator's messages arrive on the mutually authenticated channel.
            return Inbound(COORDINATOR, msg.stage, msg.body)
        bundle = job.bundles.get(msg.sender)
        if bundle is None:
            raise errors.EnvelopeError(f"'{msg.sender}' is not a party of this job")
        header, payload = open_envelope(
            msg.body,
            recipient=self._node,
            recipient_exchange=self._keys.exchange,
            sender_signing_public=bundle.signing_public,
        )
        if (header.job_id, header.sender, header.stage) != (
            job.job_id,
            msg.sender,
            msg.stage,
        ):
            raise errors.EnvelopeError("envelope header does not match the message")
        job.guard.check(header)
        return Inbound(msg.sender, msg.stage, payload)

    def _emit(self, job: _Job, outbound: list[Outbound]) -> None:
        for out in outbound:
            seq = job.seq.get(out.recipient, 0)
            job.seq[out.recipient] = seq + 1
            header = EnvelopeHeader(
                job.job_id, self._node, out.recipient, out.stage, seq
            )
            if out.recipient == COORDINATOR:
                body = sign_message(header, out.payload, signing=self._keys.signing)
            else:
                bundle = job.bundles.get(out.recipient)
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
            self._send(
                pb.ProtocolMessage(
                    job_id=job.job_id,
                    sender=self._node,
                    recipient=out.recipient,
                    stage=out.stage,
                    body=body,
                )
            )
