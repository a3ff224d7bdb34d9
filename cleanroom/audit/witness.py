"""Two logs that witness each other, so neither owner can rewrite its history.

A node and the coordinator exchange signed tree heads (the node starts it, after
every job it took part in ends and every little while):

1. node → coordinator: the size of the coordinator head it last witnessed.
   coordinator → node: a fresh head of its log, a consistency proof from that
   size, and the size of the node's head it last co-signed.
2. The node checks the head (the coordinator's CA-pinned key; consistent with
   the head it kept), keeps it and co-signs it.
   node → coordinator: a fresh head of its own log, a proof from that size, and
   its co-signature. The coordinator checks and keeps the node's head the same
   way, stores the co-signature on its own head and returns its co-signature of
   the node's head, which the node stores.

Neither side appends a log entry while witnessing, so an exchange leaves both
logs covered up to their heads by a head the other party co-signed. A party that
is shown a head its kept one is not a prefix of refuses to co-sign and raises
AuditError naming the fork or the rollback; exports carry the kept heads, so an
offline verifier holds each log to what the others saw (``audit.verify``).
"""

from __future__ import annotations

from collections.abc import Sequence

from cleanroom.errors import AuditError

from .heads import SignedTreeHead, verify_tree_head
from .log import AuditLog
from .merkle import verify_consistency


def head_and_proof(log: AuditLog, since: int) -> tuple[SignedTreeHead, list[bytes]]:
    """A fresh head of ``log`` and the consistency proof from size ``since``
    (empty for 0). AuditError if ``since`` is beyond the log: the other party
    witnessed entries this log no longer holds."""
    while True:
        head = log.tree_head()
        if not 0 <= since <= head.size:
            raise AuditError(
                f"{log.owner}'s log has {head.size} entries but a head for size "
                f"{since} was witnessed: the log was truncated or rolled back"
            )
        proof = log.consistency_proof(since, head.size) if since else []
        if log.size == head.size:  # no entry slipped in between
            return head, proof


def accept_head(
    log: AuditLog,
    head: SignedTreeHead,
    proof: Sequence[bytes],
    *,
    owner: str,
    key: bytes,
    bundle: bytes,
) -> None:
    """Check another party's ``head`` and keep it in ``log``'s witnessed heads.

    It must be ``owner``'s, signed with ``key`` (from ``bundle``, which the
    caller verified against the CA) and an extension of the last head of
    ``owner`` this log kept, by ``proof``. AuditError otherwise."""
    if head.owner != owner:
        raise AuditError(f"a tree head of {head.owner!r} was presented as {owner!r}'s")
    verify_tree_head(head, key)
    last = log.witnessed(owner)
    if last is not None and last.size:
        if head.size < last.size:
            raise AuditError(
                f"{owner}'s log shrank from {last.size} to {head.size} entries "
                "since it was witnessed: it was truncated or rolled back"
            )
        try:
            verify_consistency(
                last.size, head.size, last.root_hash, head.root_hash, list(proof)
            )
        except AuditError as exc:
            raise AuditError(
                f"fork in {owner}'s log: the witnessed head at size {last.size} is "
                f"not a prefix of the one at size {head.size} ({exc})"
            ) from exc
    log.record_witnessed(head, bundle)
