"""Per-node work queues that long-polling nodes drain, and who is connected."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable

from proto import cleanroom_pb2 as pb


class Mailboxes:
    """FIFO work queues per node; ``take`` blocks until work arrives or time is up."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queues: dict[str, deque[pb.WorkItem]] = defaultdict(deque)

    def put(self, node: str, item: pb.WorkItem) -> None:
        with self._cond:
            self._queues[node].append(item)
            self._cond.notify_all()

    def take(
        self,
        node: str,
        wait: float,
        *,
        max_items: int = 64,
        is_active: Callable[[], bool] = lambda: True,
    ) -> list[pb.WorkItem]:
        """Up to ``max_items`` queued items; waits up to ``wait`` seconds for the first.

        Gives up early, taking nothing, once ``is_active`` says the caller has gone.
        """
        deadline = time.monotonic() + wait
        with self._cond:
            queue = self._queues[node]
            while not queue:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not is_active():
                    return []
                self._cond.wait(min(remaining, 0.25))
            return [queue.popleft() for _ in range(min(max_items, len(queue)))]

    def discard_job(self, job_id: str, *, keep_stops: bool = True) -> None:
        """Drop queued protocol messages of a finished job (its stop notice stays)."""
        with self._cond:
            for queue in self._queues.values():
                # Filter in place: a waiting long poll holds a reference to this deque.
                kept = [
                    item
                    for item in queue
                    if not (item.HasField("message") and item.message.job_id == job_id)
                ]
                queue.clear()
                queue.extend(kept)


class Presence:
    """Tracks which nodes are connected: a pending long poll, or seen recently."""

    def __init__(
        self, timeout: float, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._active: dict[str, int] = defaultdict(int)
        self._last_seen: dict[str, float] = {}

    def seen(self, node: str) -> None:
        with self._lock:
            self._last_seen[node] = self._clock()

    def pull_started(self, node: str) -> None:
        with self._lock:
            self._active[node] += 1
            self._last_seen[node] = self._clock()

    def pull_ended(self, node: str) -> None:
        with self._lock:
            self._active[node] = max(0, self._active[node] - 1)
            self._last_seen[node] = self._clock()

    def last_seen(self, node: str) -> float:
        with self._lock:
            return self._last_seen.get(node, 0.0)

    def connected(self, node: str) -> bool:
        with self._lock:
            if self._active.get(node, 0) > 0:
                return True
            seen = self._last_seen.get(node)
            return seen is not None and self._clock() - seen < self.timeout
