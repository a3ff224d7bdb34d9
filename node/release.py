"""Signing a finished job's release: the node signs the provenance of the output
and co-signs the coordinator's audit head, only after checking that its own part
really finished, that the document it is shown hashes to what it signs, that its
party agrees with the released values (``NodeParty.attest``), and that the head
is the coordinator's."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from cleanroom import errors, wire
from cleanroom.audit.heads import cosign, verify_tree_head
from cleanroom.audit.log import AuditLog
from cleanroom.jobspec import parse_spec
from cleanroom.keys import KeyBundle, NodeKeys, canonical_json, sign_statement
from cleanroom.provenance import (
    head_from_dict,
    head_to_dict,
    output_hash,
    release_statement,
)
from node.state import JobStatus, NodeState
from protocols.party import NodeParty

log = logging.getLogger(__name__)

WAIT_FOR_OWN_PART_S = 30.0
MAX_DOCUMENT_BYTES = 1 << 30


class ReleaseSigner:
    """Signs releases for one node; dataset hashes are recorded as jobs start."""

    def __init__(
        self,
        *,
        node: str,
        keys: NodeKeys,
        state: NodeState,
        audit: AuditLog,
        sign: Callable[[wire.ReleaseSignature], None],
        coordinator_bundle: Callable[[], KeyBundle | None],
        fail: Callable[[str, str], None],
    ) -> None:
        self._node = node
        self._keys = keys
        self._state = state
        self._audit = audit
        self._sign = sign
        self._coordinator = coordinator_bundle
        self._fail = fail
        self._hashes: dict[str, str] = {}
        self._parties: dict[str, NodeParty] = {}
        self._lock = threading.Lock()

    def started(self, job_id: str, dataset_hash: str) -> None:
        with self._lock:
            self._hashes[job_id] = dataset_hash

    def finished(self, job_id: str, party: NodeParty) -> None:
        with self._lock:
            self._parties[job_id] = party

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._hashes.pop(job_id, None)
            self._parties.pop(job_id, None)

    def on_request(self, req: wire.ReleaseRequest) -> None:
        """Run on its own thread: it may wait for the node's part to finish."""
        try:
            self._sign(self._signature(req))
        except (errors.TransportError, errors.StoreError) as exc:
            log.warning("job %s: release signature not delivered: %s", req.job_id, exc)
        except (errors.CleanroomError, ValueError) as exc:
            log.warning("job %s: will not sign its release: %s", req.job_id, exc)
            self._fail(req.job_id, f"refused to sign the release: {exc}")

    def _signature(self, req: wire.ReleaseRequest) -> wire.ReleaseSignature:
        deadline = time.monotonic() + WAIT_FOR_OWN_PART_S
        local = self._state.get(req.job_id)
        while local.status == JobStatus.RUNNING and time.monotonic() < deadline:
            time.sleep(0.05)
            local = self._state.get(req.job_id)
        deadline = time.monotonic() + WAIT_FOR_OWN_PART_S
        while True:  # the party is recorded just after the status says DONE
            with self._lock:
                dataset_hash = self._hashes.get(req.job_id)
                party = self._parties.get(req.job_id)
            if party is not None or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if local.status != JobStatus.DONE or dataset_hash is None or party is None:
            raise errors.ProtocolError(
                f"our part of {req.job_id} did not finish ({local.status})"
            )
        checked = self._check_document(req, party)
        coordinator = self._coordinator()
        if coordinator is None:
            raise errors.AuthError("the coordinator's audit key is not known yet")
        head = head_from_dict(json.loads(req.coordinator_head))
        verify_tree_head(head, coordinator.signing_public)
        spec = parse_spec(local.spec_yaml)
        with self._state.db.transaction():
            self._audit.append(
                "coordinator.head", job_id=req.job_id, data=head_to_dict(head)
            )
            self._audit.append(
                "job.release_signed",
                job_id=req.job_id,
                data={"output_hash": req.output_hash},
            )
        statement = release_statement(
            job_id=req.job_id,
            spec_hash=spec.spec_hash,
            node=self._node,
            dataset=local.dataset,
            dataset_hash=dataset_hash,
            output=req.output_hash,
            node_head=self._audit.tree_head(),
            coordinator_head=head,
            checked=checked,
        )
        self.forget(req.job_id)
        return wire.ReleaseSignature(
            req.job_id,
            canonical_json(statement).decode(),
            sign_statement(self._keys.signing, statement),
            cosign(head, self._node, self._keys.signing),
        )

    def _check_document(
        self, req: wire.ReleaseRequest, party: NodeParty
    ) -> Mapping[str, Any]:
        """The document must be this job's, hash to what we sign, and agree with
        our party's own view of the result."""
        if len(req.document) > MAX_DOCUMENT_BYTES:
            raise errors.ProtocolError("the release document is too large")
        try:
            document = json.loads(req.document)
        except ValueError:
            raise errors.ProtocolError("the release document is not JSON") from None
        if not isinstance(document, dict) or output_hash(document) != req.output_hash:
            raise errors.ProtocolError("the release document does not match its hash")
        if document.get("job_id") != req.job_id or not isinstance(
            document.get("result"), dict
        ):
            raise errors.ProtocolError("the release document is for another job")
        return dict(party.attest(document["result"]))
