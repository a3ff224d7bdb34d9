"""The node's side of its log and the coordinator's witnessing each other
(``cleanroom.audit.witness``): after every job it took part in ends, whenever its
own log grew, and at least every ``INTERVAL_S`` while connected, the node checks,
keeps and co-signs the coordinator's latest head and has its own co-signed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from cleanroom import errors, wire
from cleanroom.audit.heads import parse_head
from cleanroom.audit.log import AuditLog
from cleanroom.audit.witness import accept_head, head_and_proof
from cleanroom.keys import KeyBundle, canonical_json
from node.link import CoordinatorLink

log = logging.getLogger(__name__)

INTERVAL_S: Final = 10.0
"""Even with nothing new here, the coordinator's log grows; it is witnessed at
least this often by each connected node."""
SETTLE_S: Final = 0.5
"""A burst of entries (a job ending) is witnessed once, this long after it."""


class LogWitness:
    """When to witness, and the two calls of one exchange."""

    def __init__(
        self,
        audit: AuditLog,
        *,
        coordinator: Callable[[], KeyBundle | None],
        call: Callable[[Callable[[CoordinatorLink], Any]], Any],
        clock: Callable[[], float] = time.monotonic,
        interval: float = INTERVAL_S,
    ) -> None:
        self._audit = audit
        self._coordinator = coordinator
        self._call = call
        self._clock = clock
        self._interval = interval
        self._lock = threading.Lock()
        self._wanted_at: float | None = None
        self._last_run = -float("inf")
        self._last_size = -1

    def request(self) -> None:
        """Witness soon (e.g. a job ended: its last entries should be covered)."""
        with self._lock:
            if self._wanted_at is None:
                self._wanted_at = self._clock() + SETTLE_S

    def due(self) -> bool:
        now = self._clock()
        with self._lock:
            wanted = self._wanted_at is not None and now >= self._wanted_at
        grew = self._audit.size != self._last_size
        return (
            wanted
            or (grew and now - self._last_run >= SETTLE_S)
            or (now - self._last_run >= self._interval)
        )

    def maybe_run(self) -> None:
        """Witness if due; a coordinator that cannot be reached is tried later."""
        if not self.due():
            return
        try:
            self.run()
        except errors.TransportError as exc:
            log.debug("witnessing postponed: %s", exc)
        except errors.AuditError as exc:  # recorded; tried again at the interval
            self._last_size = self._audit.size
            log.error("audit logs not witnessed: %s", exc)

    def run(self) -> None:
        """One exchange. AuditError (recorded in this node's log) if the
        coordinator's log is not an extension of the head this node kept."""
        bundle = self._coordinator()
        if bundle is None:
            raise errors.TransportError("the coordinator's key bundle is not known yet")
        with self._lock:
            self._wanted_at = None
        self._last_run = self._clock()
        kept = self._audit.witnessed(bundle.node)
        try:
            first: wire.WitnessReply = self._call(
                lambda link: link.witness(
                    wire.WitnessRequest(coordinator_since=kept.size if kept else 0)
                )
            )
        except errors.AuditError as exc:
            # A log that cannot prove it extends the kept head was rolled back.
            detail = (
                f"the coordinator could not prove its log extends the head of "
                f"size {kept.size if kept else 0} this node kept ({exc})"
            )
            self._audit.append("coordinator.fork", data={"detail": detail})
            log.error("refusing to co-sign the coordinator's audit log: %s", detail)
            raise
        theirs = parse_head(first.coordinator_head)
        try:
            accept_head(
                self._audit,
                theirs,
                first.coordinator_proof,
                owner=bundle.node,
                key=bundle.signing_public,
                bundle=bundle.to_bytes(),
            )
        except errors.AuditError as exc:
            self._audit.append("coordinator.fork", data={"detail": str(exc)})
            log.error("refusing to co-sign the coordinator's audit log: %s", exc)
            raise
        mine, proof = head_and_proof(self._audit, first.node_since)
        reply: wire.WitnessReply = self._call(
            lambda link: link.witness(
                wire.WitnessRequest(
                    node_head=canonical_json(mine.to_json()),
                    node_proof=tuple(proof),
                    coordinator_head=first.coordinator_head,
                    coordinator_cosignature=self._audit.cosign(theirs),
                )
            )
        )
        self._audit.add_cosignature(
            mine,
            bundle.node,
            reply.node_cosignature,
            public_key=bundle.signing_public,
        )
        self._last_size = mine.size
