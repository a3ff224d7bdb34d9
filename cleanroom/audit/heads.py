"""Signed tree heads, co-signatures by other parties, and fork detection."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.exceptions import InvalidSignature as _BadSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cleanroom.errors import AuditError

from .entry import canonical_json
from .merkle import HASH_SIZE, verify_consistency

_HEAD_DOMAIN = b"cleanroom/audit/tree-head/v1\n"
_COSIGN_DOMAIN = b"cleanroom/audit/cosignature/v1\n"

PublicKeyLike = bytes | Ed25519PublicKey


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte Ed25519 public key for a private or public key."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def load_public_key(key: PublicKeyLike) -> Ed25519PublicKey:
    """An Ed25519 public key from its raw 32 bytes (or the key itself)."""
    if isinstance(key, Ed25519PublicKey):
        return key
    if not isinstance(key, bytes) or len(key) != 32:
        raise AuditError("an Ed25519 public key is 32 raw bytes")
    return Ed25519PublicKey.from_public_bytes(key)


@dataclass(frozen=True)
class SignedTreeHead:
    """A log owner's signed statement: "my log had ``size`` entries with this root".

    ``cosignatures`` maps a party's name to its signature over the same head,
    made with :func:`cosign`; a head cosigned by a node pins the history the
    owner showed that node.
    """

    owner: str
    size: int
    root_hash: bytes
    timestamp: float
    signature: bytes
    cosignatures: Mapping[str, bytes] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "root": self.root_hash.hex(),
            "size": self.size,
            "timestamp": self.timestamp,
        }

    def signed_message(self) -> bytes:
        """The bytes the owner signs."""
        return _HEAD_DOMAIN + canonical_json(self.body())

    def cosigned_message(self, name: str) -> bytes:
        """The bytes party ``name`` signs to co-sign this head."""
        return _COSIGN_DOMAIN + canonical_json({"cosigner": name, "head": self.body()})

    def same_head(self, other: SignedTreeHead) -> bool:
        """True if both are the same signed statement (cosignatures aside)."""
        return self.body() == other.body() and self.signature == other.signature

    def with_cosignature(self, name: str, signature: bytes) -> SignedTreeHead:
        return replace(self, cosignatures={**self.cosignatures, name: signature})

    def to_json(self) -> dict[str, Any]:
        return {
            **self.body(),
            "signature": self.signature.hex(),
            "cosignatures": {k: v.hex() for k, v in sorted(self.cosignatures.items())},
        }

    @classmethod
    def from_json(cls, obj: Any) -> SignedTreeHead:
        """Parse the JSON form; raise AuditError if a field is missing or mistyped."""
        try:
            owner, size, ts = obj["owner"], obj["size"], obj["timestamp"]
            root = bytes.fromhex(obj["root"])
            signature = bytes.fromhex(obj["signature"])
            cosigs = {str(k): bytes.fromhex(v) for k, v in obj["cosignatures"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise AuditError(
                f"tree head has a missing or malformed field: {exc}"
            ) from exc
        if not isinstance(owner, str) or not isinstance(size, int) or size < 0:
            raise AuditError("tree head owner or size is malformed")
        if not isinstance(ts, int | float) or not math.isfinite(ts):
            raise AuditError("tree head timestamp is malformed")
        if len(root) != HASH_SIZE:
            raise AuditError("tree head root is not a 32-byte hash")
        return cls(owner, size, root, float(ts), signature, cosigs)


def parse_head(raw: bytes) -> SignedTreeHead:
    """A head from its JSON bytes (``to_json``); AuditError if malformed."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise AuditError("a tree head is not JSON") from None
    return SignedTreeHead.from_json(obj)


def sign_tree_head(
    owner: str, size: int, root_hash: bytes, timestamp: float, key: Ed25519PrivateKey
) -> SignedTreeHead:
    """A tree head signed by the log owner's key."""
    unsigned = SignedTreeHead(owner, size, root_hash, float(timestamp), b"")
    return replace(unsigned, signature=key.sign(unsigned.signed_message()))


def verify_tree_head(head: SignedTreeHead, owner_key: PublicKeyLike) -> None:
    """Raise AuditError unless the owner's key signed this head."""
    try:
        load_public_key(owner_key).verify(head.signature, head.signed_message())
    except _BadSignature:
        raise AuditError(
            f"tree head of {head.owner!r} at size {head.size}: bad owner signature"
        ) from None


def cosign(head: SignedTreeHead, name: str, key: Ed25519PrivateKey) -> bytes:
    """Party ``name`` co-signs ``head``; the caller should first check the head.

    Co-signing says "this is the history the owner showed me"; a node does it
    after checking the owner's signature and consistency with heads it holds.
    """
    return key.sign(head.cosigned_message(name))


def verify_cosignature(head: SignedTreeHead, name: str, key: PublicKeyLike) -> None:
    """Raise AuditError unless ``head`` carries a valid cosignature by ``name``."""
    signature = head.cosignatures.get(name)
    if signature is None:
        raise AuditError(f"tree head at size {head.size} is not cosigned by {name!r}")
    try:
        load_public_key(key).verify(signature, head.cosigned_message(name))
    except _BadSignature:
        raise AuditError(
            f"tree head at size {head.size}: bad cosignature by {name!r}"
        ) from None


def detect_fork(
    head_a: SignedTreeHead,
    head_b: SignedTreeHead,
    proof: Sequence[bytes],
    *,
    owner_key: PublicKeyLike,
) -> None:
    """Raise AuditError if two signed heads of one log cannot both be true.

    Both signatures are checked first (an unsigned head proves nothing). Then
    the heads must agree: equal sizes need equal roots, and otherwise ``proof``
    (the owner's consistency proof from the smaller size to the larger) must
    verify. A failure here means the owner showed different histories.
    """
    if head_a.owner != head_b.owner:
        raise AuditError(
            f"heads come from different logs: {head_a.owner!r}, {head_b.owner!r}"
        )
    verify_tree_head(head_a, owner_key)
    verify_tree_head(head_b, owner_key)
    old, new = (head_a, head_b) if head_a.size <= head_b.size else (head_b, head_a)
    if old.size == new.size and old.root_hash != new.root_hash:
        raise AuditError(
            f"fork in the log of {old.owner!r}: two different roots at size {old.size}"
        )
    try:
        verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)
    except AuditError as exc:
        raise AuditError(
            f"fork in the log of {old.owner!r}: size {old.size} is not a prefix of "
            f"size {new.size} ({exc})"
        ) from exc
