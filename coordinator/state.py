"""The coordinator's state, passed explicitly to every handler: the store, its audit
ledger and keys, the mailboxes, who is connected, and the running jobs' runners."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from cleanroom import errors
from cleanroom.audit.log import AuditLog
from cleanroom.keys import KeyBundle
from coordinator.longpoll import PollSlots
from coordinator.mailbox import Mailboxes
from coordinator.metrics import CoordinatorMetrics
from coordinator.presence import Presence
from coordinator.store.base import Store

if TYPE_CHECKING:
    from coordinator.runner import JobRunner

log = logging.getLogger(__name__)

TOUCH_INTERVAL_S = 5.0
DEFAULT_MAX_JOBS_PER_ANALYST = 16
"""Unfinished jobs one analyst may have at once (submitted, awaiting approval or
running): more is refused at submission, before any node is asked."""


class CoordinatorState:
    """Shared by the servicers' handlers, the job runners and the sweeper."""

    def __init__(
        self,
        store: Store,
        *,
        ca_pem: bytes,
        audit: AuditLog,
        bundle: KeyBundle,
        node_timeout: float = 10.0,
        long_poll_slots: int | None = None,
        max_jobs_per_analyst: int = DEFAULT_MAX_JOBS_PER_ANALYST,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.audit = audit
        self.bundle = bundle
        self.ca_pem = ca_pem
        self.clock = clock
        self.node_timeout = node_timeout
        self.max_jobs_per_analyst = max_jobs_per_analyst
        self.submissions = threading.Lock()
        """Held from counting an analyst's unfinished jobs to creating a new one."""
        self.mailboxes = Mailboxes(store)
        self.presence = Presence(node_timeout, clock=clock)
        self.polls = PollSlots(long_poll_slots, node_timeout=node_timeout)
        self.metrics = CoordinatorMetrics(self)
        self._lock = threading.RLock()
        self._runs: dict[str, JobRunner] = {}
        self._bundles: dict[str, KeyBundle] = {}
        self._touched: dict[str, float] = {}

    # ------------------------------------------------------------ history --
    def record(self, job_id: str, kind: str, detail: str) -> None:
        """Every step goes to the job's history and to the signed audit ledger."""
        self.store.append_event(job_id, kind, detail, at=self.clock())
        self.audit.append(kind, job_id=job_id, data={"detail": detail})

    # ------------------------------------------------------------- nodes --
    def set_bundle(self, node: str, bundle: KeyBundle) -> None:
        with self._lock:
            self._bundles[node] = bundle

    def bundle_of(self, node: str) -> KeyBundle:
        with self._lock:
            found = self._bundles.get(node)
        if found is None:
            raise errors.NotFound(f"node '{node}' has not registered")
        return found

    def registered(self, node: str) -> bool:
        with self._lock:
            return node in self._bundles

    def touch(self, node: str) -> None:
        """Persist that ``node`` was seen, at most every ``TOUCH_INTERVAL_S``:
        presence itself is kept in memory; the store's copy is for the catalog."""
        now = self.clock()
        with self._lock:
            if now - self._touched.get(node, -1e18) < TOUCH_INTERVAL_S:
                return
            self._touched[node] = now
        try:
            self.store.touch_node(node, at=now)
        except errors.NotFound:
            pass

    def load_bundles(self) -> None:
        for node in self.store.list_nodes():
            try:
                self.set_bundle(node.name, KeyBundle.from_bytes(node.key_bundle))
            except errors.CryptoError:
                log.warning("stored key bundle of %s is unreadable", node.name)

    # -------------------------------------------------------------- runs --
    def add_run(self, run: JobRunner) -> None:
        with self._lock:
            self._runs[run.job_id] = run

    def run(self, job_id: str) -> JobRunner | None:
        with self._lock:
            return self._runs.get(job_id)

    def pop_run(self, job_id: str) -> JobRunner | None:
        with self._lock:
            return self._runs.pop(job_id, None)

    def runs(self) -> list[JobRunner]:
        with self._lock:
            return list(self._runs.values())
