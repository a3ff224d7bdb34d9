"""A malicious operator, as a test double: the coordinator's real state, store,
keys and handlers, with the job's coordinator party replaced by modified code
(``Tampering``) or work forged straight into the nodes' mailboxes. Everything
else — node agents, their policies, meters and logs, the analyst's client — is
the real thing, joined by the in-process transport."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from cleanroom.local import default_policy
from protocols.party import CoordinatorParty, Inbound, LocalEvent, Outbound, Progress

NODES = ("h1", "h2", "h3")
SIZES = (40, 55, 70)

Hear = Callable[["Tampering", Inbound], Inbound | None]
Say = Callable[["Tampering", Outbound], Outbound | None]
Release = Callable[[Mapping[str, Any]], Mapping[str, Any]]


def frames(seed: int = 5) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    return {
        name: pd.DataFrame(
            {
                "pid": [f"{name}-{k}" for k in range(n)],
                "age": rng.integers(18, 90, n),
                "bmi": rng.normal(26, 4, n).round(2),
                "income": rng.uniform(12_345, 98_765, n).round(3),
            }
        )
        for name, n in zip(NODES, SIZES, strict=True)
    }


def spec(job_type: str, params: Mapping[str, Any] | None = None, **extra: Any) -> str:
    doc: dict[str, Any] = {
        "type": job_type,
        "inputs": [{"node": n, "dataset": n} for n in NODES],
        "purpose": "research",
        **extra,
    }
    if params is not None:
        doc["params"] = dict(params)
    return json.dumps(doc)


STATS: dict[str, Any] = {
    "columns": ["age", "income"],
    "stats": ["count", "sum", "mean"],
    "clip": {"age": [0, 120], "income": [0, 100_000]},
}


def policy(**extra: Any) -> dict[str, Any]:
    doc = default_policy("analyst")
    doc["default"] = {**doc["default"], **extra}  # type: ignore[dict-item]
    return doc


class Tampering(CoordinatorParty):
    """The honest coordinator party inside modified code: ``hear`` may rewrite
    or swallow what reaches it, ``say`` what it sends, ``release`` what it
    releases."""

    resumable = False

    def __init__(
        self,
        inner: CoordinatorParty,
        *,
        hear: Hear | None = None,
        say: Say | None = None,
        release: Release | None = None,
    ) -> None:
        self.inner = inner
        self._hear = hear
        self._say = say
        self._release = release

    def _out(self, outbound: list[Outbound]) -> list[Outbound]:
        if self._say is None:
            return outbound
        said = (self._say(self, o) for o in outbound)
        return [o for o in said if o is not None]

    def start(self) -> list[Outbound]:
        return self._out(self.inner.start())

    def receive(self, message: Inbound) -> list[Outbound]:
        heard = message if self._hear is None else self._hear(self, message)
        return [] if heard is None else self._out(self.inner.receive(heard))

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        return self._out(self.inner.dropped(parties))

    def local_event(self, event: LocalEvent) -> list[Outbound]:
        return self._out(self.inner.local_event(event))

    def waiting_for(self) -> frozenset[str]:
        return self.inner.waiting_for()

    def progress(self) -> Progress:
        return self.inner.progress()

    @property
    def finished(self) -> bool:
        return self.inner.finished

    def result(self) -> Mapping[str, Any]:
        result = self.inner.result()
        return result if self._release is None else self._release(result)

    def attachments(self) -> Mapping[str, bytes]:
        return self.inner.attachments()
