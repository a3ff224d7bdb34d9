"""An in-memory Store for tests and single-process demos; nothing survives close()."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Collection, Sequence
from dataclasses import replace

from cleanroom.errors import NotFound, StoreError
from cleanroom.model import (
    Decision,
    JobEvent,
    JobRecord,
    JobState,
    ModelEntry,
    NodeRecord,
)
from coordinator.store.base import Mail, Step, Store


class MemoryStore(Store):
    """Dicts behind one lock; records are frozen dataclasses, so sharing is safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, JobRecord] = {}
        self._decisions: dict[str, dict[str, Decision]] = {}
        self._results: dict[str, bytes] = {}
        self._models: dict[str, ModelEntry] = {}
        self._events: dict[str, list[JobEvent]] = {}
        self._nodes: dict[str, NodeRecord] = {}
        self._mail: dict[str, dict[int, Mail]] = {}
        self._seq = itertools.count(1)
        self._journals: dict[str, list[bytes]] = {}

    # --- jobs -------------------------------------------------------------
    def create_job(self, job: JobRecord) -> None:
        with self._lock:
            if job.job_id in self._jobs:
                raise StoreError(f"job {job.job_id!r} already exists")
            self._jobs[job.job_id] = replace(job, state=JobState(job.state))
            self._decisions[job.job_id] = {}
            self._events[job.job_id] = []

    def get_job(self, job_id: str) -> JobRecord:
        with self._lock:
            return self._job(job_id)

    def list_jobs(
        self, *, analyst: str | None = None, limit: int = 100
    ) -> list[JobRecord]:
        if limit <= 0:
            return []
        with self._lock:
            jobs = [j for j in self._jobs.values() if analyst in (None, j.analyst)]
        jobs.sort(key=lambda j: (j.created_at, j.job_id), reverse=True)
        return jobs[:limit]

    def jobs_in_states(self, states: Collection[JobState]) -> list[JobRecord]:
        wanted = {JobState(s) for s in states}
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.state in wanted]
        jobs.sort(key=lambda j: (j.created_at, j.job_id))
        return jobs

    def transition(
        self,
        job_id: str,
        *,
        expected: Collection[JobState],
        new: JobState,
        reason: str = "",
        at: float,
    ) -> JobRecord | None:
        wanted = {JobState(s) for s in expected}
        with self._lock:
            job = self._job(job_id)
            if job.state not in wanted:
                return None
            job = replace(job, state=JobState(new), reason=reason, updated_at=at)
            self._jobs[job_id] = job
            return job

    def set_progress(
        self, job_id: str, progress: str, *, at: float, progress_json: str = ""
    ) -> None:
        with self._lock:
            self._set_progress(job_id, progress, at, progress_json)

    def _set_progress(
        self, job_id: str, progress: str, at: float, progress_json: str
    ) -> None:
        job = self._job(job_id)
        self._jobs[job_id] = replace(
            job, progress=progress, progress_json=progress_json, updated_at=at
        )

    # --- decisions, results, events -----------------------------------------
    def record_decision(self, decision: Decision) -> None:
        with self._lock:
            self._job(decision.job_id)
            self._decisions[decision.job_id][decision.node] = decision

    def decisions(self, job_id: str) -> list[Decision]:
        with self._lock:
            self._job(job_id)
            by_node = self._decisions[job_id]
            return [by_node[node] for node in sorted(by_node)]

    def put_result(self, job_id: str, result: bytes) -> None:
        with self._lock:
            self._job(job_id)
            self._results[job_id] = bytes(result)

    def get_result(self, job_id: str) -> bytes:
        with self._lock:
            try:
                return self._results[job_id]
            except KeyError:
                raise NotFound(f"no result for job {job_id!r}") from None

    def put_model(self, entry: ModelEntry) -> None:
        with self._lock:
            self._job(entry.job_id)
            self._models[entry.job_id] = entry

    def get_model(self, job_id: str) -> ModelEntry:
        with self._lock:
            try:
                return self._models[job_id]
            except KeyError:
                raise NotFound(f"no model for job {job_id!r}") from None

    def list_models(
        self, *, analyst: str | None = None, limit: int = 100
    ) -> list[ModelEntry]:
        if limit <= 0:
            return []
        with self._lock:
            found = [
                m
                for m in self._models.values()
                if analyst is None or m.analyst == analyst
            ]
        found.sort(key=lambda m: (m.created_at, m.job_id), reverse=True)
        return found[:limit]

    def append_event(
        self, job_id: str, kind: str, detail: str, *, at: float
    ) -> JobEvent:
        with self._lock:
            self._job(job_id)
            history = self._events[job_id]
            event = JobEvent(job_id, len(history) + 1, at, kind, detail)
            history.append(event)
            return event

    def events(self, job_id: str) -> list[JobEvent]:
        with self._lock:
            self._job(job_id)
            return list(self._events[job_id])

    # --- nodes ----------------------------------------------------------------
    def upsert_node(self, node: NodeRecord) -> None:
        with self._lock:
            self._nodes[node.name] = node

    def get_node(self, name: str) -> NodeRecord:
        with self._lock:
            return self._node(name)

    def list_nodes(self) -> list[NodeRecord]:
        with self._lock:
            return [self._nodes[name] for name in sorted(self._nodes)]

    def touch_node(self, name: str, *, at: float) -> None:
        with self._lock:
            self._nodes[name] = replace(self._node(name), last_seen=at)

    # --- mailboxes -------------------------------------------------------------
    def mail_put(self, items: Sequence[tuple[str, str, str, bytes]]) -> list[int]:
        with self._lock:
            return self._put(items)

    def _put(self, items: Sequence[tuple[str, str, str, bytes]]) -> list[int]:
        seqs = []
        for recipient, job_id, kind, body in items:
            seq = next(self._seq)
            box = self._mail.setdefault(recipient, {})
            box[seq] = Mail(seq, recipient, job_id, kind, bytes(body))
            seqs.append(seq)
        return seqs

    def mail_after(self, recipient: str, after: int, *, limit: int) -> list[Mail]:
        with self._lock:
            box = self._mail.get(recipient, {})
            return [box[s] for s in sorted(box) if s > after][: max(limit, 0)]

    def mail_ack(self, recipient: str, upto: int) -> None:
        with self._lock:
            box = self._mail.get(recipient, {})
            for seq in [s for s in box if s <= upto]:
                del box[seq]

    def mail_discard(
        self, job_id: str, kinds: Collection[str], *, keep: Collection[str] = ()
    ) -> None:
        wanted = set(kinds)
        with self._lock:
            for recipient, box in self._mail.items():
                if recipient in keep:
                    continue
                for seq in [
                    s for s, m in box.items() if m.job_id == job_id and m.kind in wanted
                ]:
                    del box[seq]

    def mail_clear(self, recipient: str, kinds: Collection[str]) -> None:
        wanted = set(kinds)
        with self._lock:
            box = self._mail.get(recipient, {})
            for seq in [s for s, m in box.items() if m.kind in wanted]:
                del box[seq]

    def mail_count(self, recipient: str) -> int:
        with self._lock:
            return len(self._mail.get(recipient, {}))

    # --- protocol journals ----------------------------------------------------
    def commit_step(self, step: Step) -> list[int]:
        with self._lock:
            self._job(step.job_id)
            self._journals.setdefault(step.job_id, []).extend(
                bytes(e) for e in step.journal
            )
            seqs = self._put([(r, step.job_id, k, b) for r, k, b in step.mail])
            if step.consumed is not None:
                box = self._mail.get(step.consumed[0], {})
                for seq in step.consumed[1]:
                    box.pop(seq, None)
            if step.progress is not None:
                self._set_progress(
                    step.job_id, step.progress, step.at, step.progress_json
                )
            return seqs

    def journal(self, job_id: str) -> list[bytes]:
        with self._lock:
            return list(self._journals.get(job_id, []))

    def journal_drop(self, job_id: str) -> None:
        with self._lock:
            self._journals.pop(job_id, None)

    def close(self) -> None:
        """Nothing to release; the data stays until the object is garbage."""

    # --- helpers (caller holds the lock) -------------------------------------
    def _job(self, job_id: str) -> JobRecord:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFound(f"no job {job_id!r}") from None

    def _node(self, name: str) -> NodeRecord:
        try:
            return self._nodes[name]
        except KeyError:
            raise NotFound(f"no node {name!r}") from None
