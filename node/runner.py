"""Runs a node's side of each job: one thread per job feeds its protocol party with
checked inbound messages, local events and deadline ticks, wraps what it sends,
and ends with a typed outcome for the node's meters and audit log."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from cleanroom import errors, wire
from cleanroom.keys import KeyBundle, NodeKeys
from cleanroom.partyio import PartyChannel
from protocols.party import LocalEvent, NodeParty, NodeUsage, Outbound, Progress

log = logging.getLogger(__name__)

PartyFactory = Callable[[], NodeParty]
Send = Callable[[wire.ProtocolMessage], None]
DEADLINE_FACTOR: Final = 2.0
"""A node waits this many times a stage's deadline before giving up on its own:
the coordinator, which enforces the deadline, should have dropped someone first."""
_PROGRESS_INTERVAL_S: Final = 0.5


class Ending(StrEnum):
    """How a node's part in a job ended."""

    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"  # the coordinator ended the job
    DROPPED = "dropped"  # the coordinator dropped this node; the job goes on


@dataclass(frozen=True)
class JobOutcome:
    job_id: str
    ending: Ending
    usage: NodeUsage | None
    reason: str
    party: NodeParty | None = None
    """The finished party, which checks the release before the node signs it."""

    @property
    def ok(self) -> bool:
        return self.ending is Ending.DONE


@dataclass(frozen=True)
class _Tick:
    now: float


@dataclass(frozen=True)
class _Event:
    event: LocalEvent


@dataclass
class _Job:
    job_id: str
    channel: PartyChannel
    deadline: Callable[[str], float]
    inbox: queue.Queue[object]
    party: NodeParty | None = None


class JobRunner:
    """The one executor that drives every job type's node-side party."""

    def __init__(
        self,
        *,
        node: str,
        keys: NodeKeys,
        send: Send,
        on_end: Callable[[JobOutcome], None],
        on_progress: Callable[[str, Progress], None] = lambda job, p: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._node = node
        self._keys = keys
        self._send = send
        self._on_end = on_end
        self._on_progress = on_progress
        self._clock = clock
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()

    def active(self) -> list[str]:
        with self._lock:
            return list(self._jobs)

    def start(
        self,
        job_id: str,
        bundles: Mapping[str, KeyBundle],
        factory: PartyFactory,
        *,
        deadline: Callable[[str], float],
    ) -> None:
        """Run the party ``factory`` builds; ``bundles`` are already CA-verified."""
        job = _Job(
            job_id,
            PartyChannel(job_id, self._node, self._keys, bundles),
            deadline,
            queue.Queue(),
        )
        with self._lock:
            if job_id in self._jobs:
                raise errors.ProtocolError(f"job {job_id} is already running here")
            self._jobs[job_id] = job
        threading.Thread(
            target=self._run, args=(job, factory), name=f"job-{job_id}", daemon=True
        ).start()

    def _find(self, job_id: str) -> _Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def deliver(self, msg: wire.ProtocolMessage) -> None:
        job = self._find(msg.job_id)
        if job is None:
            log.warning("dropping a message for job %s, not running here", msg.job_id)
            return
        job.inbox.put(msg)

    def stop(self, stop: wire.StopJob) -> None:
        job = self._find(stop.job_id)
        if job is not None:
            job.inbox.put(stop)

    def local_event(self, job_id: str, event: LocalEvent) -> None:
        job = self._find(job_id)
        if job is not None:
            job.inbox.put(_Event(event))

    def tick(self) -> None:
        now = self._clock()
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.inbox.put(_Tick(now))

    # ----------------------------------------------------------------------
    def _run(self, job: _Job, factory: PartyFactory) -> None:
        outcome: JobOutcome
        try:
            outcome = self._drive(job, factory)
        except errors.CleanroomError as exc:
            partial = job.party.usage() if job.party is not None else None
            outcome = JobOutcome(job.job_id, Ending.FAILED, partial, str(exc))
        except Exception as exc:  # a bug must not take the node down
            log.exception("job %s crashed", job.job_id)
            partial = None
            outcome = JobOutcome(
                job.job_id,
                Ending.FAILED,
                partial,
                f"internal error: {type(exc).__name__}",
            )
        finally:
            with self._lock:
                self._jobs.pop(job.job_id, None)
        self._on_end(outcome)

    def _drive(self, job: _Job, factory: PartyFactory) -> JobOutcome:
        job.party = party = factory()
        self._emit(job, party.start())
        stage, since, reported = self._stage(party), self._clock(), 0.0
        while not party.finished:
            item = job.inbox.get()
            if isinstance(item, wire.StopJob):
                ending = Ending.DROPPED if item.dropped else Ending.STOPPED
                why = item.reason or f"the job was {item.state}"
                return JobOutcome(job.job_id, ending, party.usage(), why)
            if isinstance(item, wire.ProtocolMessage):
                inbound = job.channel.open(item)
                if inbound is not None:  # None: a resend already received
                    self._emit(job, party.receive(inbound))
            elif isinstance(item, _Event):
                self._emit(job, party.local_event(item.event))
            elif isinstance(item, _Tick):
                waiting = party.waiting_for()
                limit = job.deadline(stage[1]) * DEADLINE_FACTOR
                if waiting and item.now - since > limit:
                    names = ", ".join(sorted(waiting))
                    raise errors.ProtocolAbort(
                        f"waited over {limit:g}s for {names} "
                        f"({party.progress().describe()})"
                    )
            now = self._stage(party)
            if now != stage:
                stage, since = now, self._clock()
            if time.monotonic() - reported > _PROGRESS_INTERVAL_S:
                reported = time.monotonic()
                self._on_progress(job.job_id, party.progress())
        return JobOutcome(job.job_id, Ending.DONE, party.usage(), "", party)

    @staticmethod
    def _stage(party: NodeParty) -> tuple[int | None, str]:
        progress = party.progress()
        return (progress.round, progress.stage)

    def _emit(self, job: _Job, outbound: Sequence[Outbound]) -> None:
        for out in outbound:
            self._send(job.channel.wrap(out))
