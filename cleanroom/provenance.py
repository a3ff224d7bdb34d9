"""Provenance of released results: node-signed statements over (job, spec, dataset
content, output, audit tree head) that anyone can check offline with the CA.

A result document as released::

    {"job_id", "type", "spec_hash", "inputs", "completed_at", "result",
     "provenance": {"output_hash", "attestations": [{node, statement, signature}],
                    "key_bundles": {node: base64 KeyBundle}, "coordinator_head"}}

``output_hash`` is SHA-256 over the canonical JSON of the document without its
``provenance``; every node signs it, so changing any byte breaks verification.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cleanroom.audit.heads import SignedTreeHead, verify_tree_head
from cleanroom.errors import AuditError, AuthError, CryptoError, InvalidSignature
from cleanroom.keys import (
    KeyBundle,
    canonical_json,
    verify_key_bundle,
    verify_statement,
)


def output_hash(document: Mapping[str, Any]) -> str:
    body = {k: v for k, v in document.items() if k != "provenance"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def head_to_dict(head: SignedTreeHead) -> dict[str, Any]:
    return {
        "owner": head.owner,
        "size": head.size,
        "root": head.root_hash.hex(),
        "timestamp": head.timestamp,
        "signature": base64.b64encode(head.signature).decode(),
    }


def head_from_dict(data: Mapping[str, Any]) -> SignedTreeHead:
    try:
        return SignedTreeHead(
            str(data["owner"]),
            int(data["size"]),
            bytes.fromhex(data["root"]),
            float(data["timestamp"]),
            base64.b64decode(data["signature"], validate=True),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise CryptoError("malformed tree head") from exc


def release_statement(
    *,
    job_id: str,
    spec_hash: str,
    node: str,
    dataset: str,
    dataset_hash: str,
    output: str,
    node_head: SignedTreeHead,
    coordinator_head: SignedTreeHead,
    checked: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a node signs before its part of a result is released: ``checked``
    holds the released values its own party vouched for."""
    return {
        "checked": dict(checked or {}),
        "kind": "cleanroom.release.v1",
        "job_id": job_id,
        "spec_hash": spec_hash,
        "node": node,
        "dataset": dataset,
        "dataset_hash": dataset_hash,
        "output_hash": output,
        "node_audit_head": head_to_dict(node_head),
        "coordinator_audit_head": head_to_dict(coordinator_head),
    }


@dataclass(frozen=True)
class VerifiedResult:
    job_id: str
    output_hash: str
    signers: tuple[str, ...]
    missing: tuple[str, ...] = ()
    """Inputs whose node did not sign (only with ``allow_partial``)."""
    checked: int = 0
    """Released values some signer's own party vouched for, all found equal."""


def resolve(result: Any, pointer: str) -> Any:
    """The value at a JSON pointer (RFC 6901) in ``result``; KeyError if absent."""
    if pointer == "":
        return result
    if not pointer.startswith("/"):
        raise KeyError(pointer)
    node = result
    for raw in pointer[1:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise KeyError(pointer)
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(pointer)
    return node


_BUNDLE_MAGIC = b"CRRESULT1\n"


def pack_result(document: bytes, attachments: Mapping[str, bytes]) -> bytes:
    """How the coordinator stores a result: the document and its attachments."""
    if not attachments:
        return document
    header = json.dumps(
        {"document": len(document), "attachments": [[n, len(d)] for n, d in
                                                     sorted(attachments.items())]}
    ).encode()  # fmt: skip
    parts = [_BUNDLE_MAGIC, len(header).to_bytes(4, "big"), header, document]
    parts += [attachments[n] for n in sorted(attachments)]
    return b"".join(parts)


def unpack_result(stored: bytes) -> tuple[bytes, dict[str, bytes]]:
    """``pack_result``'s inverse."""
    if not stored.startswith(_BUNDLE_MAGIC):
        return stored, {}
    at = len(_BUNDLE_MAGIC)
    size = int.from_bytes(stored[at : at + 4], "big")
    header = json.loads(stored[at + 4 : at + 4 + size])
    at += 4 + size
    document = stored[at : at + header["document"]]
    at += header["document"]
    attachments = {}
    for name, length in header["attachments"]:
        attachments[str(name)] = stored[at : at + length]
        at += length
    return document, attachments


def attachment_digests(attachments: Mapping[str, bytes]) -> dict[str, str]:
    return {n: hashlib.sha256(d).hexdigest() for n, d in sorted(attachments.items())}


def check_attachments(
    document: Mapping[str, Any], attachments: Mapping[str, bytes]
) -> None:
    """The attachments must be exactly the ones the signed document names."""
    named = document.get("attachments", {})
    if not isinstance(named, dict) or named != attachment_digests(attachments):
        raise InvalidSignature("the result's attachments are not the ones released")


def serialize_result(document: Mapping[str, Any]) -> bytes:
    """The one byte form of a released result: sorted keys, default separators."""
    return json.dumps(document, sort_keys=True).encode()


def _strict_b64(text: Any) -> bytes:
    """Decode base64 that must be in its one canonical form (no ignored bits)."""
    try:
        data = base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise InvalidSignature("malformed base64 in the result") from exc
    if base64.b64encode(data).decode() != text:
        raise InvalidSignature("non-canonical base64 in the result")
    return data


def _bundle(text: Any) -> KeyBundle:
    raw = _strict_b64(text)
    bundle = KeyBundle.from_bytes(raw)
    if bundle.to_bytes() != raw:
        raise InvalidSignature("key bundle is not in its canonical form")
    try:
        cert = x509.load_pem_x509_certificate(bundle.cert_pem)
    except ValueError as exc:
        raise InvalidSignature("key bundle certificate is malformed") from exc
    if cert.public_bytes(Encoding.PEM) != bundle.cert_pem:
        raise InvalidSignature("key bundle certificate is not in its canonical form")
    return bundle


def verify_result_bytes(
    raw: bytes, ca_pem: bytes, *, allow_partial: bool = False
) -> VerifiedResult:
    """Verify a result file byte for byte: it must be the canonical serialization of a
    document every signer signed, so no changed byte can go unnoticed."""
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise InvalidSignature("result is not valid JSON") from exc
    if not isinstance(document, dict) or serialize_result(document) != raw:
        raise InvalidSignature("result is not in its canonical form; it was altered")
    return verify_result(document, ca_pem, allow_partial=allow_partial)


def verify_result(
    document: Mapping[str, Any], ca_pem: bytes, *, allow_partial: bool = False
) -> VerifiedResult:
    """Check that every input's node signed this document, and that every value a
    node vouched for (``checked``: JSON pointer -> value) is the released one;
    CryptoError if not. ``allow_partial`` accepts missing signers (named in the
    result) but never a wrong value."""
    try:
        return _verify(document, ca_pem, allow_partial)
    except AuthError as exc:
        raise InvalidSignature(
            f"a signer's certificate does not verify: {exc}"
        ) from exc
    except CryptoError:
        raise
    except Exception as exc:  # untrusted input: anything unexpected means "not valid"
        raise InvalidSignature(f"malformed result ({type(exc).__name__})") from exc


def _verify(
    document: Mapping[str, Any], ca_pem: bytes, allow_partial: bool
) -> VerifiedResult:
    try:
        prov = document["provenance"]
        attestations = prov["attestations"]
        bundles = prov["key_bundles"]
        inputs = {(i["node"], i["dataset"]) for i in document["inputs"]}
    except (KeyError, TypeError) as exc:
        raise CryptoError("result has no provenance section") from exc
    digest = output_hash(document)
    if prov.get("output_hash") != digest:
        raise InvalidSignature("result content does not match its output hash")
    signers: list[str] = []
    checked = 0
    for att in attestations:
        node, statement = att.get("node"), att.get("statement", {})
        bundle = verify_key_bundle(_bundle(bundles[node]), ca_pem, expected_name=node)
        _strict_b64(att.get("signature", ""))
        verify_statement(bundle.signing_public, statement, att.get("signature", ""))
        expected = {
            "node": node,
            "job_id": document["job_id"],
            "output_hash": digest,
            "spec_hash": document["spec_hash"],
            "kind": "cleanroom.release.v1",
        }
        if any(statement.get(k) != v for k, v in expected.items()):
            raise InvalidSignature(f"statement by {node} is for another result")
        if (node, statement.get("dataset")) not in inputs:
            raise InvalidSignature(f"{node} signed for a dataset that is not an input")
        if node in signers:
            raise InvalidSignature(f"{node} signed twice")
        checked += _check_values(node, statement.get("checked", {}), document)
        signers.append(node)
    if not signers:
        raise InvalidSignature("no node signed this result")
    missing = sorted({n for n, _ in inputs} - set(signers))
    if missing and not allow_partial:
        raise InvalidSignature(
            f"not signed by every input: {', '.join(missing)} did not sign "
            "(--allow-partial shows such a result anyway)"
        )
    # The coordinator's head that every node co-signed must be the one shipped here,
    # signed by a key the CA vouches for as the coordinator's.
    head = prov.get("coordinator_head")
    if any(a["statement"].get("coordinator_audit_head") != head for a in attestations):
        raise InvalidSignature("coordinator audit head differs from the signed one")
    coordinator = verify_key_bundle(
        _bundle(prov.get("coordinator_bundle", "")), ca_pem, role="coordinator"
    )
    _strict_b64(head.get("signature") if isinstance(head, dict) else None)
    try:
        verify_tree_head(head_from_dict(head), coordinator.signing_public)
    except AuditError as exc:
        raise InvalidSignature(str(exc)) from exc
    return VerifiedResult(
        str(document["job_id"]),
        digest,
        tuple(sorted(signers)),
        tuple(missing),
        checked,
    )


def _check_values(node: str, checked: Any, document: Mapping[str, Any]) -> int:
    """Every value ``node``'s party vouched for must be the released one."""
    if not isinstance(checked, dict):
        raise InvalidSignature(f"{node}'s checked values are malformed")
    for pointer, value in checked.items():
        try:
            released = resolve(document["result"], pointer)
        except KeyError:
            raise InvalidSignature(
                f"{node} vouched for {pointer}, which the result does not hold"
            ) from None
        if released != value:
            raise InvalidSignature(
                f"the released {pointer} is not what {node} computed"
            )
    return len(checked)


def signing_keys_of(document: Mapping[str, Any]) -> dict[str, bytes]:
    """The nodes' identity keys from a (verified) release's key bundles."""
    bundles = document["provenance"]["key_bundles"]
    return {n: _bundle(b).signing_public for n, b in bundles.items()}
