"""RFC 6962 / RFC 9162 Merkle tree hashing, inclusion and consistency proofs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from cleanroom.errors import AuditError

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """The RFC 6962 hash of one leaf: SHA-256(0x00 || data)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The RFC 6962 hash of an interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An append-only Merkle tree over leaf hashes that answers for any past size.

    Level ``k`` keeps, packed in one bytearray, the root of every *complete*
    aligned subtree of ``2**k`` leaves. A complete subtree never changes, so
    roots and proofs for any earlier tree size come from the same arrays, and
    any subtree root costs O(log n) hashes. For 10**6 leaves the arrays hold
    about 2 * 10**6 hashes (64 MB) and a proof costs well under a millisecond.
    Not thread-safe: the owner serialises access.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0
        self.extend_hashes(leaf_hashes)

    @classmethod
    def from_leaves(cls, leaves: Iterable[bytes]) -> MerkleTree:
        """A tree over raw leaf data (each is hashed with :func:`leaf_hash`)."""
        return cls(leaf_hash(leaf) for leaf in leaves)

    @property
    def size(self) -> int:
        return self._size

    def append(self, data: bytes) -> bytes:
        """Append one raw leaf; return its leaf hash."""
        h = leaf_hash(data)
        self.append_hash(h)
        return h

    def append_hash(self, h: bytes) -> None:
        """Append one leaf given by its leaf hash."""
        if len(h) != HASH_SIZE:
            raise AuditError("a leaf hash is 32 bytes")
        self._levels[0] += h
        self._size += 1
        self._carry(self._size)

    def extend_hashes(self, hashes: Iterable[bytes]) -> None:
        """Append many leaf hashes, building the upper levels a level at a time."""
        level0 = self._levels[0]
        old = self._size
        for h in hashes:
            if len(h) != HASH_SIZE:
                del level0[old * HASH_SIZE :]
                raise AuditError("a leaf hash is 32 bytes")
            level0 += h
        self._size = len(level0) // HASH_SIZE
        sha = hashlib.sha256
        step = 2 * HASH_SIZE
        # Parents completed by this batch on each level: indices lo//2 .. hi//2 - 1.
        lo, hi, level = old, self._size, 0
        while lo // 2 < hi // 2:
            if len(self._levels) == level + 1:
                self._levels.append(bytearray())
            buf, out = self._levels[level], self._levels[level + 1]
            for off in range(lo // 2 * step, hi // 2 * step, step):
                out += sha(NODE_PREFIX + buf[off : off + step]).digest()
            lo, hi, level = lo // 2, hi // 2, level + 1

    def _carry(self, n: int) -> None:
        level = 0
        while n & 1 == 0:
            buf = self._levels[level]
            parent = hashlib.sha256(NODE_PREFIX + buf[-2 * HASH_SIZE :]).digest()
            level += 1
            if len(self._levels) == level:
                self._levels.append(bytearray())
            self._levels[level] += parent
            n >>= 1

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        self._check_size(index + 1)
        return self._node(0, index)

    def _node(self, level: int, i: int) -> bytes:
        return bytes(self._levels[level][i * HASH_SIZE : (i + 1) * HASH_SIZE])

    def _subtree(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for a range the RFC recursion makes (so lo is aligned)."""
        n = hi - lo
        if n & (n - 1) == 0:
            level = n.bit_length() - 1
            return self._node(level, lo >> level)
        k = _split(n)
        return node_hash(
            self._node(k.bit_length() - 1, lo // k), self._subtree(lo + k, hi)
        )

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self._size:
            raise AuditError(f"tree size {size} is outside 0..{self._size}")

    def root(self, size: int | None = None) -> bytes:
        """The root hash of the first ``size`` leaves (default: all of them)."""
        size = self._size if size is None else size
        self._check_size(size)
        return EMPTY_ROOT if size == 0 else self._subtree(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 PATH(index, D[0:size]): sibling hashes from the leaf upwards."""
        size = self._size if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise AuditError(f"leaf index {index} is outside a tree of size {size}")
        lo, hi = 0, size
        top_down: list[bytes] = []
        while hi - lo > 1:
            k = _split(hi - lo)
            if index < lo + k:
                top_down.append(self._subtree(lo + k, hi))
                hi = lo + k
            else:
                top_down.append(self._subtree(lo, lo + k))
                lo += k
        return top_down[::-1]

    def consistency_proof(
        self, old_size: int, new_size: int | None = None
    ) -> list[bytes]:
        """RFC 9162 PROOF(old_size, D[0:new_size]); empty when old is 0 or equal."""
        new_size = self._size if new_size is None else new_size
        self._check_size(new_size)
        if not 0 <= old_size <= new_size:
            raise AuditError(f"old size {old_size} is outside 0..{new_size}")
        if old_size in (0, new_size):
            return []
        lo, hi, m = 0, new_size, old_size
        whole = True  # b in SUBPROOF: D[lo:lo+m] is still a subtree of the old tree
        top_down: list[bytes] = []
        while m != hi - lo:
            k = _split(hi - lo)
            if m <= k:
                top_down.append(self._subtree(lo + k, hi))
                hi = lo + k
            else:
                top_down.append(self._subtree(lo, lo + k))
                lo += k
                m -= k
                whole = False
        if not whole:
            top_down.append(self._subtree(lo, hi))
        return top_down[::-1]


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over raw leaf data; for repeated queries keep a :class:`MerkleTree`."""
    return MerkleTree.from_leaves(leaves).root()


def inclusion_proof(index: int, size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[0:size]) over raw leaf data."""
    return MerkleTree.from_leaves(leaves[:size]).inclusion_proof(index, size)


def consistency_proof(
    old_size: int, new_size: int, leaves: Sequence[bytes]
) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) over raw leaf data."""
    return MerkleTree.from_leaves(leaves[:new_size]).consistency_proof(
        old_size, new_size
    )


def _check_hashes(proof: Sequence[bytes], *named: tuple[str, bytes]) -> None:
    for name, value in named:
        if len(value) != HASH_SIZE:
            raise AuditError(f"{name} is not a 32-byte hash")
    if any(len(p) != HASH_SIZE for p in proof):
        raise AuditError("a proof element is not a 32-byte hash")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes
) -> None:
    """Check that ``leaf`` (a leaf hash) is at ``index`` in the tree with this root.

    RFC 9162 section 2.1.3.2. Returns None; raises AuditError on any mismatch.
    """
    _check_hashes(proof, ("leaf hash", leaf), ("root", root_hash))
    if not 0 <= index < size:
        raise AuditError(
            f"inclusion proof: index {index} outside a tree of size {size}"
        )
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise AuditError("inclusion proof is longer than the tree allows")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn & 1 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise AuditError("inclusion proof is shorter than the tree requires")
    if r != root_hash:
        raise AuditError(f"inclusion proof for leaf {index} does not match the root")


def verify_consistency(
    old_size: int,
    new_size: int,
    old_root: bytes,
    new_root: bytes,
    proof: Sequence[bytes],
) -> None:
    """Check that the tree ``old_root`` of ``old_size`` is a prefix of ``new_root``.

    RFC 9162 section 2.1.4.2. Returns None; raises AuditError on any mismatch.
    """
    _check_hashes(proof, ("old root", old_root), ("new root", new_root))
    if not 0 <= old_size <= new_size:
        raise AuditError(f"consistency: old size {old_size} > new size {new_size}")
    if old_size == new_size or old_size == 0:
        if proof:
            raise AuditError("consistency proof must be empty for these sizes")
        expected = new_root if old_size == new_size else EMPTY_ROOT
        if old_root != expected:
            raise AuditError(f"trees of size {old_size} have different roots")
        return
    if not proof:
        raise AuditError("consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise AuditError("consistency proof is longer than the trees allow")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn & 1 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise AuditError("consistency proof is shorter than the trees require")
    if fr != old_root:
        raise AuditError(
            f"consistency proof does not match the root of size {old_size}"
        )
    if sr != new_root:
        raise AuditError(
            f"consistency proof does not match the root of size {new_size}"
        )
