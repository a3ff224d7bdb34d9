"""Drives one running job's coordinator party on its own worker thread, off the RPC
threads: inbound messages, drops, deadline ticks and release signatures go into a
queue; each batch the worker processes is committed in one store transaction with
its journal entries (for replay after a restart), its outbound mail and progress.

A stage's deadline runs from when the party's reported stage (round, stage) last
changed; the parties it still waits for when the deadline passes are dropped, and
the protocol then recovers or ends the job with a reason naming them and the stage.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

from cleanroom import errors, serde, wire
from cleanroom.envelope import ReplayGuard, verify_message
from cleanroom.jobspec import JobSpec
from cleanroom.jobtypes.base import CoordinatorContext, JobType
from cleanroom.keys import KeyBundle, canonical_json
from cleanroom.model import JobState, ModelEntry
from cleanroom.requests import graph_seed
from coordinator.mailbox import analyst_mailbox, inbox
from coordinator.release import Release
from coordinator.state import CoordinatorState
from coordinator.store.base import Step
from protocols.party import (
    ANALYST,
    COORDINATOR,
    CoordinatorParty,
    Inbound,
    Outbound,
    Progress,
)
from protocols.seeded import seeded_random

log = logging.getLogger(__name__)

_BATCH: Final = 64
_LEN = struct.Struct(">I")

End = Callable[[str, JobState, str], None]


@dataclass(frozen=True)
class _Message:
    sender: str
    msg: wire.ProtocolMessage
    seq: int
    """Its seq in the job's durable inbox."""


@dataclass(frozen=True)
class _Drop:
    parties: frozenset[str]
    why: str


@dataclass(frozen=True)
class _Tick:
    now: float


@dataclass(frozen=True)
class _NodeProgress:
    node: str
    progress: Progress


@dataclass(frozen=True)
class _Signature:
    node: str
    signature: wire.ReleaseSignature


_STOP: Final = object()


def _entry(kind: str, meta: Mapping[str, Any], payload: bytes = b"") -> bytes:
    head = canonical_json({"k": kind, **meta})
    return _LEN.pack(len(head)) + head + payload


def _parse_entry(raw: bytes) -> tuple[str, dict[str, Any], bytes]:
    (size,) = _LEN.unpack_from(raw)
    head = json.loads(raw[4 : 4 + size])
    return str(head.pop("k")), head, raw[4 + size :]


@dataclass
class _Stage:
    key: tuple[int | None, str] = (None, "")
    since: float = 0.0


@dataclass
class RunSetup:
    """What a runner is built from."""

    job_id: str
    analyst: str
    spec: JobSpec
    job_type: JobType[Any]
    parties: tuple[str, ...]
    bundles: Mapping[str, KeyBundle]
    analyst_bundle: KeyBundle | None
    followers: tuple[str, ...] = field(default=())
    signed_request: bytes = b""


class JobRunner:
    """One running job: its coordinator party, who is gone, and its release."""

    def __init__(
        self, state: CoordinatorState, setup: RunSetup, *, on_end: End
    ) -> None:
        self._state = state
        self.setup = setup
        self.job_id = setup.job_id
        self.spec = setup.spec
        self._on_end = on_end
        self._queue: queue.Queue[object] = queue.Queue()
        self._lock = threading.Lock()
        self._gone: set[str] = set()
        self._guard = ReplayGuard()
        self._party: CoordinatorParty | None = None
        self._release: Release | None = None
        self._stage = _Stage()
        self._ended = False
        self._tick_queued = False
        self._journal: Sequence[bytes] | None = None
        self._nodes_progress: dict[str, Progress] = {}
        self._shown = ""
        self._consumed: set[int] = set()
        self._thread = threading.Thread(
            target=self._work, name=f"run-{setup.job_id}", daemon=True
        )

    # ------------------------------------------------------------- public --
    @property
    def parties(self) -> tuple[str, ...]:
        return self.setup.parties

    @property
    def members(self) -> tuple[str, ...]:
        """Every party that may send or receive: nodes and followers (analyst)."""
        return (*self.setup.parties, *self.setup.followers)

    def gone(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._gone)

    def is_member(self, party: str) -> bool:
        with self._lock:
            return party in self.members and party not in self._gone

    def start(self, journal: Sequence[bytes] | None = None) -> None:
        """Start the worker: a new job (``journal`` None) or a resumed one. Events
        queued before then wait until the party is built."""
        self._journal = journal
        self._thread.start()

    def deliver(self, sender: str, msg: wire.ProtocolMessage, seq: int) -> None:
        """A message already stored in the job's inbox under ``seq``."""
        self._queue.put(_Message(sender, msg, seq))

    def drop(self, parties: frozenset[str], why: str) -> None:
        self._queue.put(_Drop(parties, why))

    def tick(self, now: float) -> None:
        with self._lock:
            if self._tick_queued or self._ended:
                return
            self._tick_queued = True
        self._queue.put(_Tick(now))

    def sign(self, node: str, signature: wire.ReleaseSignature) -> None:
        self._queue.put(_Signature(node, signature))

    def node_progress(self, node: str, progress: Progress) -> None:
        self._queue.put(_NodeProgress(node, progress))

    def stop(self) -> None:
        with self._lock:
            self._ended = True
        self._queue.put(_STOP)

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # ------------------------------------------------------------- worker --
    def _work(self) -> None:
        try:
            self._begin(self._journal)
            while True:
                batch = [self._queue.get()]
                while len(batch) < _BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if not self._process(batch):
                    return
        except _Ended:
            return
        except Exception:  # a bug must fail the job, never the coordinator
            log.exception("job %s: the coordinator's runner crashed", self.job_id)
            self._end(JobState.FAILED, "internal error in the coordinator's runner")

    def _context(self, seed: bytes) -> CoordinatorContext:
        setup = self.setup
        keys = {n: b.signing_public for n, b in setup.bundles.items()}
        if setup.analyst_bundle is not None:
            keys[ANALYST] = setup.analyst_bundle.signing_public
        return CoordinatorContext(
            job_id=setup.job_id,
            spec=setup.spec,
            parties=setup.parties,
            signing_keys=keys,
            random=seeded_random(seed),
            graph_seed=(
                graph_seed(setup.signed_request, setup.analyst_bundle.signing_public)
                if setup.signed_request and setup.analyst_bundle is not None
                else b""
            ),
        )

    def _begin(self, journal: Sequence[bytes] | None) -> None:
        setup = self.setup
        entries = list(journal or ())
        if not entries:
            seed = os.urandom(32)
            party = self._build(seed)
            out = self._guarded(party.start, "the protocol could not start")
            start = wire.StartJob(
                setup.job_id,
                setup.analyst,
                setup.spec.source,
                setup.parties,
                tuple(b.to_bytes() for b in setup.bundles.values()),
                b""
                if setup.analyst_bundle is None
                else setup.analyst_bundle.to_bytes(),
            )
            mail: list[tuple[str, wire.Work]] = [
                (_mailbox(setup.job_id, p), start) for p in self.members
            ]
            self._commit([_entry("start", {"seed": seed.hex()})], mail, out)
        else:
            kind, meta, _ = _parse_entry(entries[0])
            if kind != "start":
                raise errors.StoreError(f"job {setup.job_id}: journal has no start")
            party = self._build(bytes.fromhex(meta["seed"]))
            self._guarded(party.start, "the protocol could not restart")
            for raw in entries[1:]:
                self._replay(party, raw)
            log.info(
                "job %s resumed after %d journal entries", setup.job_id, len(entries)
            )
            self._commit([], [], [])
            # Pushes acknowledged before the restart but not yet journaled.
            self._requeue_inbox()
        self._stage = _Stage(self._stage_key(), self._state.clock())
        self._maybe_release()

    def _requeue_inbox(self) -> None:
        pending = self._state.mailboxes.pending_items(inbox(self.job_id))
        queued: list[object] = []
        while True:
            try:
                queued.append(self._queue.get_nowait())
            except queue.Empty:
                break
        seen = {e.seq for e in queued if isinstance(e, _Message)}
        for item in pending:
            if item.seq not in seen and isinstance(item.work, wire.ProtocolMessage):
                self._queue.put(_Message(item.work.sender, item.work, item.seq))
        for event in queued:
            self._queue.put(event)

    def _build(self, seed: bytes) -> CoordinatorParty:
        party = self.setup.job_type.coordinator_party(self._context(seed))
        self._party = party
        return party

    def _replay(self, party: CoordinatorParty, raw: bytes) -> None:
        kind, meta, payload = _parse_entry(raw)
        if kind == "msg":
            self._guard.check(
                _header(self.job_id, meta["sender"], meta["stage"], meta["seq"])
            )
            party.receive(Inbound(meta["sender"], meta["stage"], payload))
        elif kind == "drop":
            parties = frozenset(meta["parties"])
            with self._lock:
                self._gone |= parties
            party.dropped(parties)

    def _process(self, batch: list[object]) -> bool:
        journal: list[bytes] = []
        mail: list[tuple[str, wire.Work]] = []
        out: list[Outbound] = []
        for event in batch:
            if isinstance(event, _Message):
                self._consumed.add(event.seq)
            if event is _STOP:
                self._commit(journal, mail, out)
                return False
            if isinstance(event, _Message):
                journal += self._on_message(event, out)
            elif isinstance(event, _Drop):
                journal += self._on_drop(event.parties, event.why, out, mail)
            elif isinstance(event, _Tick):
                with self._lock:
                    self._tick_queued = False
                self._on_tick(event.now, out, mail, journal)
            elif isinstance(event, _Signature):
                self._on_signature(event)
            elif isinstance(event, _NodeProgress):
                self._nodes_progress[event.node] = event.progress
        self._commit(journal, mail, out)
        self._maybe_release()
        return True

    def _on_message(self, event: _Message, out: list[Outbound]) -> list[bytes]:
        party = self._party
        assert party is not None
        sender, msg = event.sender, event.msg
        with self._lock:
            if sender in self._gone:
                return []  # a late message from a party already dropped
        bundle = (
            self.setup.analyst_bundle
            if sender == ANALYST
            else self.setup.bundles.get(sender)
        )
        if bundle is None:
            self._fail(f"'{sender}' is not a party of this job")
        try:
            header, payload = verify_message(
                msg.body, signing_public=bundle.signing_public, recipient=COORDINATOR
            )
            if (header.job_id, header.sender, header.stage) != (
                self.job_id,
                sender,
                msg.stage,
            ):
                raise errors.EnvelopeError("message header does not match its envelope")
            if self._guard.seen(header):
                # Resent after its acknowledgement was lost (e.g. we restarted):
                # it was processed once, and that is all it may be.
                log.info(
                    "job %s: ignored a resent message from %s", self.job_id, sender
                )
                return []
            self._guard.check(header)
        except errors.CryptoError as exc:
            self._fail(f"a message from '{_who(sender)}' failed its check: {exc}")
        if self._release is not None:
            return []  # the protocol finished; nothing more changes its result
        out += self._guarded(
            lambda: party.receive(Inbound(sender, msg.stage, payload)),
            f"protocol error at stage '{msg.stage}' from '{_who(sender)}'",
        )
        meta = {"sender": sender, "stage": msg.stage, "seq": header.seq}
        return [_entry("msg", meta, payload)]

    def _on_drop(
        self,
        parties: frozenset[str],
        why: str,
        out: list[Outbound],
        mail: list[tuple[str, wire.Work]],
    ) -> list[bytes]:
        party = self._party
        assert party is not None
        with self._lock:
            new = frozenset(p for p in parties if p in self.members) - self._gone
            self._gone |= new
        if not new:
            return []
        names = ", ".join(_who(p) for p in sorted(new))
        self._state.record(self.job_id, "node.dropped", f"{names}: {why}")
        for gone in new:
            stop = wire.StopJob(self.job_id, "dropped", why, dropped=True)
            mail.append((_mailbox(self.job_id, gone), stop))
        if self._release is not None:
            if new & set(self._release.signers):
                self._fail(f"{names} {why} before signing the release")
            return []
        where = party.progress().describe()
        out += self._guarded(lambda: party.dropped(new), f"{names} {why} ({where})")
        return [_entry("drop", {"parties": sorted(new), "why": why})]

    def _on_tick(
        self,
        now: float,
        out: list[Outbound],
        mail: list[tuple[str, wire.Work]],
        journal: list[bytes],
    ) -> None:
        party = self._party
        if party is None:
            return
        release = self._release
        if release is not None:
            waiting, stage = release.waiting(), "release"
        else:
            waiting, stage = party.waiting_for(), party.progress().stage
        with self._lock:
            waiting = waiting - self._gone
        limit = self.setup.job_type.deadline(self.spec, stage)
        if waiting and now - self._stage.since > limit:
            where = party.progress().describe() if release is None else "release"
            why = f"missed the {limit:g}s deadline ({where})"
            journal += self._on_drop(frozenset(waiting), why, out, mail)

    def _on_signature(self, event: _Signature) -> None:
        release = self._release
        if release is None:
            raise errors.ProtocolError(
                f"job {self.job_id} is not waiting for signatures"
            )
        try:
            complete = release.accept(event.node, event.signature)
        except errors.CleanroomError as exc:
            log.warning("job %s: release signature refused: %s", self.job_id, exc)
            return
        if complete:
            self._state.store.put_result(self.job_id, release.final_document())
            self._register_model(release)
            self._end(
                JobState.SUCCEEDED,
                f"result released, signed by {', '.join(sorted(release.signed))}",
            )

    def _register_model(self, release: Release) -> None:
        """A job type that trains a model gets a registry entry with its card."""
        try:
            card = self.setup.job_type.model_card(self.spec, release.final_dict())
        except errors.CleanroomError as exc:
            log.warning("job %s: no model card: %s", self.job_id, exc)
            return
        if card is None:
            return
        card = {**card, "row_buckets": self._row_buckets()}
        job = self._state.store.get_job(self.job_id)
        self._state.store.put_model(
            ModelEntry(
                job_id=self.job_id,
                analyst=job.analyst,
                job_type=self.spec.type,
                created_at=self._state.clock(),
                card_json=canonical_json(dict(card)).decode(),
            )
        )
        self._state.record(self.job_id, "model.registered", f"{self.spec.type} model")

    def _row_buckets(self) -> dict[str, str]:
        """Each input's published row bucket (public catalog metadata)."""
        out = {}
        for item in self.spec.inputs:
            try:
                record = self._state.store.get_node(item.node)
            except errors.NotFound:
                continue
            for info in serde.catalog_from_json(record.catalog_json):
                if info.name == item.dataset:
                    out[f"{item.node}/{item.dataset}"] = info.row_bucket
        return out

    def _maybe_release(self) -> None:
        party = self._party
        if party is None or self._release is not None or not party.finished:
            return
        with self._lock:
            signers = tuple(p for p in self.setup.parties if p not in self._gone)
        self._release = Release.begin(
            self._state,
            self.setup,
            self._guarded(party.result, "the protocol produced no result"),
            signers,
            self._guarded(party.attachments, "the protocol produced no result"),
        )
        self._stage = _Stage((None, "release"), self._state.clock())

    # ----------------------------------------------------------- plumbing --
    def _guarded(self, fn: Callable[[], Any], what: str) -> Any:
        try:
            return fn()
        except errors.ProtocolError as exc:
            self._fail(f"{what}: {exc}")

    def _fail(self, reason: str) -> NoReturn:
        self._end(JobState.FAILED, reason)
        raise _Ended()

    def _end(self, state: JobState, reason: str) -> None:
        with self._lock:
            self._ended = True
        self._on_end(self.job_id, state, reason)

    def _stage_key(self) -> tuple[int | None, str]:
        if self._party is None:
            return (None, "")
        progress = self._party.progress()
        return (progress.round, progress.stage)

    def _commit(
        self,
        journal: list[bytes],
        mail: list[tuple[str, wire.Work]],
        out: Sequence[Outbound],
    ) -> None:
        """One transaction: journal, outbound mail, progress; then wake pollers."""
        state = self._state
        with self._lock:
            gone = set(self._gone)
            if self._ended:
                return  # the job ended: its journal is gone, its queues drained
        for o in out:
            if o.recipient not in self.members:
                self._fail(f"the protocol addressed an unknown party '{o.recipient}'")
            if o.recipient in gone:
                continue
            msg = wire.ProtocolMessage(
                self.job_id, COORDINATOR, o.recipient, o.stage, o.payload
            )
            mail.append((_mailbox(self.job_id, o.recipient), msg))
        encoded = [state.mailboxes.encode(r, w) for r, w in mail]
        key = self._stage_key()
        if key != self._stage.key and self._release is None:
            now = state.clock()
            state.metrics.stage_ended(
                self.setup.job_type.name, self._stage.key[1], now - self._stage.since
            )
            self._stage = _Stage(key, now)
        text, doc = self._progress_text()
        changed = text != self._shown
        consumed = tuple(sorted(self._consumed))
        if not journal and not encoded and not changed and not consumed:
            return
        self._shown = text
        state.store.commit_step(
            Step(
                self.job_id,
                journal=journal,
                mail=encoded,
                consumed=(inbox(self.job_id), consumed) if consumed else None,
                progress=text if changed and self._release is None else None,
                progress_json=doc,
                at=state.clock(),
            )
        )
        self._consumed.clear()
        state.mailboxes.wake(r for r, *_ in encoded)

    def _progress_text(self) -> tuple[str, str]:
        """The coordinator party's progress, and what the nodes report of theirs."""
        if self._party is None:
            return "", ""
        progress = self._party.progress()
        text = progress.describe()
        own = [
            f"{node}: {p.done} of {p.total} {p.unit or 'items'}"
            for node, p in sorted(self._nodes_progress.items())
            if p.total
        ]
        if own:
            text += "; " + ", ".join(own)
        return text, json.dumps(progress.to_json(), separators=(",", ":"))


class _Ended(Exception):
    """The job ended inside the worker; stop processing."""


def _mailbox(job_id: str, party: str) -> str:
    return analyst_mailbox(job_id) if party == ANALYST else party


def _who(party: str) -> str:
    return "the analyst" if party == ANALYST else party


def _header(job_id: str, sender: str, stage: str, seq: int) -> Any:
    from cleanroom.envelope import EnvelopeHeader

    return EnvelopeHeader(job_id, sender, COORDINATOR, stage, seq)
