"""SecAgg+ test doubles: the real coordinator or client, its outgoing messages
rewritten by the test (a malicious relay or node driving real parties)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from protocols.party import CoordinatorParty, Inbound, Outbound, Party
from protocols.secagg import SecAggClient, SecAggServer

Rewrite = Callable[[Outbound], list[Outbound]]


class TamperingCoordinator(CoordinatorParty):
    """Test double: an honest coordinator whose outgoing messages are rewritten."""

    def __init__(self, inner: SecAggServer, rewrite: Rewrite) -> None:
        self.inner, self.rewrite = inner, rewrite

    def start(self) -> list[Outbound]:
        return self._apply(self.inner.start())

    def receive(self, message: Inbound) -> list[Outbound]:
        return self._apply(self.inner.receive(message))

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        return self._apply(self.inner.dropped(parties))

    @property
    def finished(self) -> bool:
        return self.inner.finished

    def result(self) -> Mapping[str, Any]:
        return self.inner.result()

    def _apply(self, out: list[Outbound]) -> list[Outbound]:
        return [rewritten for o in out for rewritten in self.rewrite(o)]


class TamperingNode(Party):
    """Test double: an honest client whose outgoing messages are rewritten."""

    def __init__(self, inner: SecAggClient, rewrite: Rewrite) -> None:
        self.inner, self.rewrite = inner, rewrite

    def start(self) -> list[Outbound]:
        return [r for o in self.inner.start() for r in self.rewrite(o)]

    def receive(self, message: Inbound) -> list[Outbound]:
        return [r for o in self.inner.receive(message) for r in self.rewrite(o)]

    @property
    def finished(self) -> bool:
        return self.inner.finished
