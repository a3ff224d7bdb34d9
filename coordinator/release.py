"""Release: a finished protocol's result becomes a document every remaining input
node signs (provenance) before the analyst can fetch it; the nodes also co-sign
the coordinator's audit tree head."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cleanroom import errors, wire
from cleanroom.audit.heads import SignedTreeHead, verify_cosignature
from cleanroom.keys import canonical_json, verify_statement
from cleanroom.provenance import (
    attachment_digests,
    head_to_dict,
    output_hash,
    pack_result,
    serialize_result,
)
from coordinator.state import CoordinatorState

if TYPE_CHECKING:
    from coordinator.runner import RunSetup


@dataclass
class Release:
    """A result waiting for its signers' signatures."""

    state: CoordinatorState
    setup: RunSetup
    document: dict[str, Any]
    output_hash: str
    head: SignedTreeHead
    signers: tuple[str, ...]
    files: dict[str, bytes] = field(default_factory=dict)
    signatures: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def begin(
        cls,
        state: CoordinatorState,
        setup: RunSetup,
        result: Mapping[str, Any],
        signers: Sequence[str],
        attachments: Mapping[str, bytes] | None = None,
    ) -> Release:
        spec = setup.spec
        document: dict[str, Any] = {
            "job_id": setup.job_id,
            "type": spec.type,
            "spec_hash": spec.spec_hash,
            "inputs": [{"node": i.node, "dataset": i.dataset} for i in spec.inputs],
            "completed_at": state.clock(),
            "result": json.loads(canonical_json(dict(result))),
        }
        files = dict(attachments or {})
        if files:
            document["attachments"] = attachment_digests(files)
        digest = output_hash(document)
        state.record(setup.job_id, "job.output", f"output sha256 {digest}")
        head = state.audit.tree_head()
        release = cls(state, setup, document, digest, head, tuple(signers), files)
        request = wire.ReleaseRequest(
            setup.job_id,
            digest,
            canonical_json(head_to_dict(head)),
            canonical_json(document),
        )
        state.mailboxes.put_many((node, request) for node in signers)
        state.store.set_progress(
            setup.job_id,
            "collecting the nodes' release signatures",
            at=state.clock(),
        )
        return release

    @property
    def signed(self) -> tuple[str, ...]:
        return tuple(sorted(self.signatures))

    def waiting(self) -> frozenset[str]:
        return frozenset(self.signers) - set(self.signatures)

    def accept(self, node: str, msg: wire.ReleaseSignature) -> bool:
        """Check one node's provenance signature and co-signature; True once every
        signer has signed."""
        if node not in self.signers:
            raise errors.AuthError(f"node '{node}' is not a signer of this release")
        try:
            statement = json.loads(msg.statement_json)
        except ValueError as exc:
            raise errors.ProtocolError("malformed release statement") from exc
        bundle = self.setup.bundles[node]
        verify_statement(bundle.signing_public, statement, msg.signature)
        expected = {
            "job_id": self.setup.job_id,
            "node": node,
            "spec_hash": self.setup.spec.spec_hash,
            "output_hash": self.output_hash,
            "dataset": self.setup.spec.input_for(node).dataset,
            "coordinator_audit_head": head_to_dict(self.head),
        }
        if not isinstance(statement, dict) or any(
            statement.get(k) != v for k, v in expected.items()
        ):
            raise errors.InvalidSignature("release statement is for another output")
        head = self.head
        cosigned = SignedTreeHead(
            head.owner,
            head.size,
            head.root_hash,
            head.timestamp,
            head.signature,
            {node: msg.cosignature},
        )
        verify_cosignature(cosigned, node, bundle.signing_public)
        self.state.audit.add_cosignature(
            head, node, msg.cosignature, public_key=bundle.signing_public
        )
        self.signatures[node] = {
            "node": node,
            "statement": statement,
            "signature": msg.signature,
        }
        return not self.waiting()

    def final_document(self) -> bytes:
        return pack_result(serialize_result(self.final_dict()), self.files)

    def final_dict(self) -> dict[str, Any]:
        """The released document with every signer's provenance."""
        document = dict(self.document)
        document["provenance"] = {
            "output_hash": self.output_hash,
            "attestations": [self.signatures[n] for n in self.signed],
            "key_bundles": {
                n: base64.b64encode(self.setup.bundles[n].to_bytes()).decode()
                for n in self.signed
            },
            "coordinator_head": head_to_dict(self.head),
            "coordinator_bundle": base64.b64encode(
                self.state.bundle.to_bytes()
            ).decode(),
        }
        return document
