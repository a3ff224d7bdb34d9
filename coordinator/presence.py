"""Who is connected: a party with a pending long poll, or one seen recently."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable


class Presence:
    """Tracks which recipients (nodes, analysts' job mailboxes) are connected."""

    def __init__(
        self, timeout: float, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._active: dict[str, int] = defaultdict(int)
        self._last_seen: dict[str, float] = {}
        self._grace: dict[str, float] = {}

    def grace(self, who: str, seconds: float) -> None:
        """Count ``who`` as connected for ``seconds`` from now, e.g. while it
        reconnects (with its back-off) after the coordinator restarted."""
        with self._lock:
            self._grace[who] = self._clock() + seconds

    def seen(self, who: str) -> None:
        with self._lock:
            self._last_seen[who] = self._clock()

    def pull_started(self, who: str) -> None:
        with self._lock:
            self._active[who] += 1
            self._last_seen[who] = self._clock()

    def pull_ended(self, who: str) -> None:
        with self._lock:
            self._active[who] = max(0, self._active[who] - 1)
            self._last_seen[who] = self._clock()

    def last_seen(self, who: str) -> float:
        with self._lock:
            return self._last_seen.get(who, 0.0)

    def connected(self, who: str) -> bool:
        with self._lock:
            if self._active.get(who, 0) > 0:
                return True
            if self._clock() < self._grace.get(who, 0.0):
                return True
            seen = self._last_seen.get(who)
            return seen is not None and self._clock() - seen < self.timeout
