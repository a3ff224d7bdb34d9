"""The analyst's party of a job, run by the analyst's client: it pulls the job's
analyst mailbox, drives the job type's analyst state machine, sends its messages
in envelopes, and turns the released result into what the analyst reads.

Resumable (``cleanroom job run JOB``): the party is deterministic given a secret
seed kept with the analyst, so what it received is kept in a local journal and
replayed; messages it sent before are not sent again. The journal and seed live
in a 0600 SQLite file under the analyst's state directory; they hold what the
job type's analyst party holds (e.g. the seed of an HE secret key), so treat the
directory like the analyst's private key.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from cleanroom import errors, jobtypes, serde, wire
from cleanroom.jobspec import parse_spec
from cleanroom.jobtypes.base import AnalystContext
from cleanroom.keys import KeyBundle, NodeKeys, verify_key_bundle
from cleanroom.links import AnalystLink
from cleanroom.localdb import LocalDatabase
from cleanroom.partyio import PartyChannel
from protocols.party import ANALYST, AnalystParty, Inbound, Outbound, Progress
from protocols.seeded import seeded_random

log = logging.getLogger(__name__)

PULL_WAIT: Final = 2.0
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS sessions (
    job_id TEXT PRIMARY KEY, seed BLOB NOT NULL, ack INTEGER NOT NULL DEFAULT 0,
    sent INTEGER NOT NULL DEFAULT 0, ended TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS inbound (
    job_id TEXT NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (job_id, seq));
"""


class SessionStore:
    """The analyst's local journal of its parties' inbound items, by job."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / "analyst-sessions.db"
        self.db = LocalDatabase(path)
        os.chmod(path, 0o600)
        self.db.executescript(_SCHEMA)

    def open(self, job_id: str) -> tuple[bytes, int, int]:
        """(seed, ack, sent) of the job's session, created on first use."""
        with self.db.transaction() as db:
            row = db.execute(
                "SELECT seed, ack, sent FROM sessions WHERE job_id=?", (job_id,)
            ).fetchone()
            if row is None:
                seed = os.urandom(32)
                db.execute(
                    "INSERT INTO sessions (job_id, seed) VALUES (?, ?)", (job_id, seed)
                )
                return seed, 0, 0
        return bytes(row[0]), int(row[1]), int(row[2])

    def items(self, job_id: str) -> list[wire.WorkItem]:
        with self.db.read() as db:
            rows = db.execute(
                "SELECT seq, body FROM inbound WHERE job_id=? ORDER BY seq", (job_id,)
            ).fetchall()
        return [serde.work_from_bytes(int(seq), bytes(body)) for seq, body in rows]

    def add(self, job_id: str, item: wire.WorkItem) -> None:
        with self.db.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO inbound VALUES (?, ?, ?)",
                (job_id, item.seq, serde.work_to_bytes(item.work)),
            )
            db.execute("UPDATE sessions SET ack=? WHERE job_id=?", (item.seq, job_id))

    def set_sent(self, job_id: str, sent: int) -> None:
        with self.db.transaction() as db:
            db.execute("UPDATE sessions SET sent=? WHERE job_id=?", (sent, job_id))

    def close(self) -> None:
        self.db.close()


class AnalystSession:
    """One job's analyst party."""

    def __init__(
        self,
        link: AnalystLink,
        store: SessionStore,
        *,
        job_id: str,
        analyst: str,
        keys: NodeKeys,
        ca_pem: bytes,
        clock: Callable[[], float] = time.time,
        local_inputs: Mapping[str, Any] | None = None,
    ) -> None:
        self._link = link
        self._local_inputs = dict(local_inputs or {})
        self._store = store
        self.job_id = job_id
        self._analyst = analyst
        self._keys = keys
        self._ca_pem = ca_pem
        self._clock = clock
        self._seed, self._ack, self._sent = store.open(job_id)
        self._emitted = 0
        self.party: AnalystParty | None = None
        self.spec_yaml: str | None = None
        self.transcript: list[Inbound] = []
        """Every message the party received, opened, in order (``cleanroom.opened``)."""
        self._channel: PartyChannel | None = None
        self.ended: wire.StopJob | None = None
        self._replay()

    # ------------------------------------------------------------ driving --
    def _replay(self) -> None:
        for item in self._store.items(self.job_id):
            self._apply(item.work)

    def step(self, wait: float = PULL_WAIT) -> bool:
        """Pull once and process what arrived; False once there is nothing more
        for this party to do (finished, or the job ended)."""
        if self.done:
            return False
        batch = self._link.pull(wire.PullRequest(wait, self._ack, self.job_id))
        for item in batch.items:
            if item.seq <= self._ack:
                continue
            self._store.add(self.job_id, item)
            self._ack = item.seq
            self._apply(item.work)
        if not batch.items and batch.retry_after > 0:
            time.sleep(min(batch.retry_after, wait))
        return not self.done

    @property
    def done(self) -> bool:
        return self.ended is not None or (
            self.party is not None and self.party.finished
        )

    def progress(self) -> Progress:
        return Progress() if self.party is None else self.party.progress()

    def _apply(self, work: wire.Work) -> None:
        if isinstance(work, wire.StartJob):
            self._start(work)
        elif isinstance(work, wire.ProtocolMessage):
            if self.party is None or self._channel is None:
                raise errors.ProtocolError("a message arrived before the job started")
            message = self._channel.open(work)
            if message is None:
                return  # a resend of a message already applied
            self.transcript.append(message)
            self._emit(self.party.receive(message))
        elif isinstance(work, wire.StopJob):
            self.ended = work

    def _start(self, start: wire.StartJob) -> None:
        if self.party is not None:
            return
        spec = parse_spec(start.spec_yaml)
        self.spec_yaml = start.spec_yaml
        job_type = jobtypes.get(spec.type)
        bundles: dict[str, KeyBundle] = {}
        for raw in start.key_bundles:
            bundle = verify_key_bundle(KeyBundle.from_bytes(raw), self._ca_pem)
            bundles[bundle.node] = bundle
        missing = set(start.parties) - set(bundles)
        if missing:
            raise errors.AuthError(f"no verified keys for {', '.join(sorted(missing))}")
        self._channel = PartyChannel(self.job_id, ANALYST, self._keys, bundles)
        self.party = job_type.analyst_party(
            AnalystContext(
                job_id=self.job_id,
                spec=spec,
                analyst=self._analyst,
                parties=tuple(start.parties),
                signing_key=self._keys.signing,
                peer_signing_keys={n: b.signing_public for n, b in bundles.items()},
                random=seeded_random(self._seed),
                local_inputs=self._local_inputs,
            )
        )
        self._emit(self.party.start())

    def _emit(self, outbound: list[Outbound]) -> None:
        assert self._channel is not None
        for out in outbound:
            msg = self._channel.wrap(out)
            self._emitted += 1
            if self._emitted <= self._sent:
                continue  # sent before this session was resumed
            self._link.push(msg)
            self._sent = self._emitted
            self._store.set_sent(self.job_id, self._sent)

    def drain(self) -> None:
        """Take in whatever is still queued for the party (a released job's
        mailbox keeps it), without waiting."""
        while self.ended is None and self.step(wait=0.0):
            if self.party is not None and self.party.finished:
                return

    def finalize(
        self, result: Mapping[str, Any], attachments: Mapping[str, bytes]
    ) -> Mapping[str, Any]:
        """The analyst's reading of the released result."""
        if self.party is None or self.spec_yaml is None:
            raise errors.ProtocolError(
                f"job {self.job_id}: this client never ran the job's analyst party "
                "(run `cleanroom job run` with the analyst's state directory)"
            )
        self.party.attach(attachments)
        return self.party.finalize(result)
