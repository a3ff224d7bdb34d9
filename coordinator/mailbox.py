"""Durable work queues per recipient (a node, or one job's analyst party), kept in
the store so that a coordinator restart loses nothing; long polls wait here."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

from cleanroom import serde, wire
from coordinator.store.base import Store

PROTOCOL_KINDS = ("message", "release")
"""What a finished job's queues may drop: its stop notices stay."""
STALE_AFTER_RESTART = ("message", "start", "release")
"""What a recipient that restarted afresh can no longer use; decisions to make
(approvals) and notices (stops) stay queued for it."""


def analyst_mailbox(job_id: str) -> str:
    """The recipient name of one job's analyst party."""
    return f"@analyst/{job_id}"


def inbox(job_id: str) -> str:
    """The durable inbox of one job's coordinator party: a pushed message is
    stored here before the push is acknowledged, and leaves it only in the same
    transaction that journals its processing."""
    return f"@coordinator/{job_id}"


class Mailboxes:
    """FIFO queues in the store; ``take`` blocks until work arrives or time is up.

    Items stay queued until their recipient acknowledges them (``ack``), so a
    batch lost on a broken connection is delivered again.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cond = threading.Condition()
        self._version: dict[str, int] = defaultdict(int)
        self._acked: dict[str, int] = {}

    def put(self, recipient: str, work: wire.Work) -> None:
        self.put_many([(recipient, work)])

    def put_many(self, items: Iterable[tuple[str, wire.Work]]) -> list[int]:
        rows = [
            (recipient, work.job_id, wire.kind_of(work), serde.work_to_bytes(work))
            for recipient, work in items
        ]
        if not rows:
            return []
        seqs = self._store.mail_put(rows)
        self.wake(r for r, *_ in rows)
        return seqs

    def pending_items(self, recipient: str) -> list[wire.WorkItem]:
        """Everything queued for ``recipient``, oldest first (no waiting)."""
        found = self._store.mail_after(recipient, 0, limit=1 << 30)
        return [serde.work_from_bytes(m.seq, m.body) for m in found]

    @staticmethod
    def encode(recipient: str, work: wire.Work) -> tuple[str, str, bytes]:
        """(recipient, kind, body) for ``Store.commit_step``; ``wake`` afterwards."""
        return recipient, wire.kind_of(work), serde.work_to_bytes(work)

    def wake(self, recipients: Iterable[str]) -> None:
        with self._cond:
            for recipient in recipients:
                self._version[recipient] += 1
            self._cond.notify_all()

    def take(
        self,
        recipient: str,
        *,
        ack: int,
        wait: float,
        max_items: int = 64,
        is_active: Callable[[], bool] = lambda: True,
    ) -> list[wire.WorkItem]:
        """Items after ``ack`` (everything up to it is deleted first); waits up to
        ``wait`` seconds for the first. Takes nothing once ``is_active`` says the
        caller has gone."""
        with self._cond:
            fresh_ack = ack > self._acked.get(recipient, 0)
            if fresh_ack:
                self._acked[recipient] = ack
        if ack > 0 and fresh_ack:
            self._store.mail_ack(recipient, ack)
        deadline = time.monotonic() + wait
        while True:
            with self._cond:
                version = self._version[recipient]
            found = self._store.mail_after(recipient, ack, limit=max_items)
            if found:
                return [serde.work_from_bytes(m.seq, m.body) for m in found]
            with self._cond:
                while self._version[recipient] == version:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not is_active():
                        return []
                    self._cond.wait(min(remaining, 0.25))

    def drop(self, recipient: str) -> None:
        """Forget everything queued for ``recipient`` (its job ended)."""
        self._store.mail_clear(recipient, tuple(wire.KIND_OF.values()))

    def restarted(self, recipient: str) -> None:
        """The recipient restarted afresh: drop what only its old process could use."""
        self._store.mail_clear(recipient, STALE_AFTER_RESTART)

    def discard_job(
        self,
        job_id: str,
        kinds: Sequence[str] = PROTOCOL_KINDS,
        *,
        keep: Sequence[str] = (),
    ) -> None:
        """Drop queued protocol messages of a finished job (its stop notices stay),
        except for the recipients in ``keep``."""
        self._store.mail_discard(job_id, kinds, keep=keep)

    def pending(self, recipient: str) -> int:
        return self._store.mail_count(recipient)
