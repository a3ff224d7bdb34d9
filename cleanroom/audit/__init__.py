"""Tamper-evident audit ledger: hash-chained, Merkle-provable, signed and cosigned.

Every node and the coordinator keep an :class:`AuditLog`. Its owner signs tree
heads; other parties cosign them, which pins the history each one was shown, so
:func:`detect_fork` exposes an owner that shows different histories to
different parties. :func:`verify_export` checks an exported log offline.
"""

from .entry import GENESIS_PREV_HASH, AuditEntry, ChainVerifier, canonical_json
from .heads import (
    SignedTreeHead,
    cosign,
    detect_fork,
    load_public_key,
    public_key_bytes,
    sign_tree_head,
    verify_cosignature,
    verify_tree_head,
)
from .log import AuditLog
from .merkle import (
    EMPTY_ROOT,
    MerkleTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)
from .verify import JobEvent, VerifyReport, job_history, verify_export

__all__ = [
    "EMPTY_ROOT",
    "GENESIS_PREV_HASH",
    "AuditEntry",
    "AuditLog",
    "ChainVerifier",
    "JobEvent",
    "MerkleTree",
    "SignedTreeHead",
    "VerifyReport",
    "canonical_json",
    "consistency_proof",
    "cosign",
    "detect_fork",
    "inclusion_proof",
    "job_history",
    "leaf_hash",
    "load_public_key",
    "node_hash",
    "public_key_bytes",
    "root",
    "sign_tree_head",
    "verify_consistency",
    "verify_cosignature",
    "verify_export",
    "verify_inclusion",
    "verify_tree_head",
]
