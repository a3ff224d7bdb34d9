"""Long-poll slots: a waiting poll holds one RPC worker, so at most a fixed number
may wait at once and the rest answer at once, keeping workers free for pushes and
analysts however many parties connect."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

BUSY_RETRY_SECONDS = 1.0
"""How long a party waits to pull again when no long-poll slot was free."""
MAX_WAIT_SECONDS = 30.0


class PollSlots:
    """Counts waiting polls under a lock; ``limit`` None means unlimited."""

    def __init__(self, limit: int | None, *, node_timeout: float) -> None:
        self._limit = limit
        self._waiting = 0
        self._lock = threading.Lock()
        self.busy_retry = min(BUSY_RETRY_SECONDS, node_timeout / 3)

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._waiting

    @contextmanager
    def claim(self) -> Iterator[bool]:
        """Yields whether this poll may wait (a slot was free)."""
        with self._lock:
            may_wait = self._limit is None or self._waiting < self._limit
            if may_wait:
                self._waiting += 1
        try:
            yield may_wait
        finally:
            if may_wait:
                with self._lock:
                    self._waiting -= 1


def bounded_wait(wait: float, may_wait: bool) -> float:
    return min(max(wait, 0.0), MAX_WAIT_SECONDS) if may_wait else 0.0
