"""RFC 6962 Merkle tree: known answers, a naive cross-check and proof round trips."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.audit import merkle
from cleanroom.audit.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from cleanroom.errors import AuditError

# certificate-transparency merkle_tree_test.cc / transparency-dev testonly vectors.
CT_LEAVES = [
    bytes.fromhex(h)
    for h in [
        "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]  # fmt: skip
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
H_96A2 = "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"
H_5F08 = "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"
H_6B47 = "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"
H_BC1A = "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"
H_CA85 = "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"
H_0EBC = "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"
CT_PATHS = [
    (0, 1, []),
    (0, 8, [H_96A2, H_5F08, H_6B47]),
    (5, 8, [H_BC1A, H_CA85, CT_ROOTS[3]]),
    (2, 3, [CT_ROOTS[1]]),
    (1, 5, [CT_ROOTS[0], H_5F08, H_BC1A]),
]
CT_CONSISTENCY = [
    (1, 1, []),
    (1, 8, [H_96A2, H_5F08, H_6B47]),
    (6, 8, [H_0EBC, H_CA85, CT_ROOTS[3]]),
    (2, 5, [H_5F08, H_BC1A]),
]


# The RFC 6962 section 2.1 definitions, written as literally as possible.
def naive_mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + naive_mth(d[:k]) + naive_mth(d[k:])).digest()


def naive_path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*naive_path(m, d[:k]), naive_mth(d[k:])]
    return [*naive_path(m - k, d[k:]), naive_mth(d[:k])]


def naive_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [naive_mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*naive_subproof(m, d[:k], b), naive_mth(d[k:])]
    return [*naive_subproof(m - k, d[k:], False), naive_mth(d[:k])]


def naive_proof(m: int, d: list[bytes]) -> list[bytes]:
    return [] if m in (0, len(d)) else naive_subproof(m, d, True)


def data(n: int) -> list[bytes]:
    return [f"leaf-{i}".encode() for i in range(n)]


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert MerkleTree().root() == EMPTY_ROOT
    assert merkle.root([]) == EMPTY_ROOT


@pytest.mark.parametrize("n", range(1, 9))
def test_ct_reference_roots(n: int) -> None:
    assert merkle.root(CT_LEAVES[:n]).hex() == CT_ROOTS[n - 1]


@pytest.mark.parametrize(("index", "size", "path"), CT_PATHS)
def test_ct_reference_inclusion_paths(index: int, size: int, path: list[str]) -> None:
    proof = merkle.inclusion_proof(index, size, CT_LEAVES)
    assert [p.hex() for p in proof] == path
    root = bytes.fromhex(CT_ROOTS[size - 1])
    verify_inclusion(leaf_hash(CT_LEAVES[index]), index, size, proof, root)


@pytest.mark.parametrize(("old", "new", "path"), CT_CONSISTENCY)
def test_ct_reference_consistency_proofs(old: int, new: int, path: list[str]) -> None:
    proof = merkle.consistency_proof(old, new, CT_LEAVES)
    assert [p.hex() for p in proof] == path
    old_root, new_root = (bytes.fromhex(CT_ROOTS[s - 1]) for s in (old, new))
    verify_consistency(old, new, old_root, new_root, proof)


def test_roots_match_naive_for_sizes_up_to_70_incremental_and_bulk() -> None:
    leaves = data(70)
    incremental = MerkleTree()
    for n in range(1, 71):
        incremental.append(leaves[n - 1])
        assert incremental.root() == naive_mth(leaves[:n])
        assert MerkleTree.from_leaves(leaves[:n]).root() == incremental.root()
    for n in range(71):
        assert incremental.root(n) == naive_mth(leaves[:n])


def test_inclusion_proofs_for_every_leaf_up_to_40() -> None:
    leaves = data(40)
    tree = MerkleTree.from_leaves(leaves)
    for n in range(1, 41):
        root = naive_mth(leaves[:n])
        for i in range(n):
            proof = tree.inclusion_proof(i, n)
            assert proof == naive_path(i, leaves[:n])
            verify_inclusion(leaf_hash(leaves[i]), i, n, proof, root)


def test_consistency_proofs_for_every_pair_up_to_40() -> None:
    leaves = data(40)
    tree = MerkleTree.from_leaves(leaves)
    for n in range(41):
        for m in range(n + 1):
            proof = tree.consistency_proof(m, n)
            assert proof == naive_proof(m, leaves[:n])
            verify_consistency(
                m, n, naive_mth(leaves[:m]), naive_mth(leaves[:n]), proof
            )


def flip(h: bytes) -> bytes:
    return bytes([h[0] ^ 1]) + h[1:]


@pytest.mark.parametrize("n", [2, 3, 7, 8, 13, 33])
def test_inclusion_rejects_any_change(n: int) -> None:
    # A proof can fit a neighbouring size's shape; the signed root binds the size.
    tree = MerkleTree.from_leaves(data(n + 1))
    root = tree.root(n)
    for i in range(n):
        proof = tree.inclusion_proof(i, n)
        leaf = tree.leaf(i)
        bad_cases = [
            (flip(leaf), i, n, proof, root),
            (leaf, i, n, proof, flip(root)),
            (leaf, i, n + 1, proof, tree.root(n + 1)),
            (leaf, i, n - 1, proof, tree.root(n - 1)),
            (leaf, i, n, [*proof, proof[0]], root),
            (leaf, i, n, proof[:-1], root),
        ]
        bad_cases += [(leaf, j, n, proof, root) for j in (i - 1, i + 1)]
        bad_cases += [
            (leaf, i, n, [*proof[:j], flip(proof[j]), *proof[j + 1 :]], root)
            for j in range(len(proof))
        ]
        for case in bad_cases:
            with pytest.raises(AuditError):
                verify_inclusion(*case)


@pytest.mark.parametrize(("m", "n"), [(1, 2), (3, 7), (4, 8), (5, 9), (6, 8), (17, 33)])
def test_consistency_rejects_any_change(m: int, n: int) -> None:
    tree = MerkleTree.from_leaves(data(n + 1))
    old, new = tree.root(m), tree.root(n)
    proof = tree.consistency_proof(m, n)
    other = MerkleTree.from_leaves([b"x", *data(n)[1:]])
    bad_cases = [
        (m, n, flip(old), new, proof),
        (m, n, old, flip(new), proof),
        (m, n, old, other.root(n), proof),
        (m, n + 1, old, tree.root(n + 1), proof),
        (m + 1, n, tree.root(m + 1), new, proof),
        (m, n, old, new, proof[:-1]),
        (m, n, old, new, [*proof, proof[0]]),
        (m, n, old, new, []),
        (n, m, new, old, proof),
    ]
    bad_cases += [
        (m, n, old, new, [*proof[:j], flip(proof[j]), *proof[j + 1 :]])
        for j in range(len(proof))
    ]
    for case in bad_cases:
        with pytest.raises(AuditError):
            verify_consistency(*case)


def test_degenerate_consistency_cases() -> None:
    tree = MerkleTree.from_leaves(data(5))
    verify_consistency(5, 5, tree.root(), tree.root(), [])
    verify_consistency(0, 5, EMPTY_ROOT, tree.root(), [])
    with pytest.raises(AuditError):
        verify_consistency(5, 5, tree.root(4), tree.root(), [])
    with pytest.raises(AuditError):
        verify_consistency(0, 5, tree.root(1), tree.root(), [])
    with pytest.raises(AuditError):
        verify_consistency(5, 5, tree.root(), tree.root(), [tree.root()])


def test_out_of_range_requests_raise() -> None:
    tree = MerkleTree.from_leaves(data(4))
    for call in (
        lambda: tree.root(5),
        lambda: tree.inclusion_proof(4, 4),
        lambda: tree.inclusion_proof(0, 5),
        lambda: tree.consistency_proof(3, 5),
        lambda: tree.consistency_proof(4, 3),
        lambda: tree.append_hash(b"short"),
    ):
        with pytest.raises(AuditError):
            call()
    with pytest.raises(AuditError):
        verify_inclusion(tree.leaf(0), 0, 4, [b"short"], tree.root())


def test_node_hash_is_prefixed() -> None:
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    assert leaf_hash(b"a") == hashlib.sha256(b"\x00a").digest()


@settings(max_examples=60, deadline=None)
@given(
    leaves=st.lists(st.binary(max_size=16), min_size=1, max_size=90),
    data_=st.data(),
)
def test_proofs_round_trip(leaves: list[bytes], data_: st.DataObject) -> None:
    n = len(leaves)
    split = data_.draw(st.integers(0, n))
    tree = MerkleTree.from_leaves(leaves[:split])
    for leaf in leaves[split:]:
        tree.append(leaf)
    size = data_.draw(st.integers(1, n))
    index = data_.draw(st.integers(0, size - 1))
    old = data_.draw(st.integers(0, size))
    assert tree.root(size) == naive_mth(leaves[:size])
    proof = tree.inclusion_proof(index, size)
    verify_inclusion(leaf_hash(leaves[index]), index, size, proof, tree.root(size))
    cproof = tree.consistency_proof(old, size)
    verify_consistency(old, size, tree.root(old), tree.root(size), cproof)
