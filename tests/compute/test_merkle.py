"""RFC 6962 Merkle trees and proofs, and the hash-chain link, against the RFC word for word."""

from __future__ import annotations

import doctest
import hashlib
from collections.abc import Iterator

import pytest

import bund.compute.merkle as merkle_module
from bund.compute.merkle import (
    EMPTY_ROOT,
    MerkleFrontier,
    chain_hash,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    verify_consistency,
    verify_inclusion,
)


def flip(data: bytes, position: int, mask: int) -> bytes:
    return data[:position] + bytes([data[position] ^ mask]) + data[position + 1 :]


def test_chain_link_is_not_an_rfc6962_interior_node() -> None:
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert chain_hash(a, b) != hashlib.sha256(b"\x01" + a + b).digest()
    with pytest.raises(ValueError):
        chain_hash(a[:31], b)


def test_merkle_root_matches_hand_computed_trees() -> None:
    def h(*parts: bytes) -> bytes:
        return hashlib.sha256(b"".join(parts)).digest()

    def node(left: bytes, right: bytes) -> bytes:
        return h(b"\x01", left, right)

    d = [leaf_hash(bytes([i])) for i in range(7)]
    assert d[0] == h(b"\x00", b"\x00")
    # RFC 6962 / certificate-transparency test vectors: empty tree, and the empty leaf.
    assert merkle_root([]).hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert leaf_hash(b"").hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    n01, n23, n45 = node(d[0], d[1]), node(d[2], d[3]), node(d[4], d[5])
    assert merkle_root(d[:1]) == d[0]
    assert merkle_root(d[:2]) == n01
    assert merkle_root(d[:3]) == node(n01, d[2])
    assert merkle_root(d[:4]) == node(n01, n23)
    assert merkle_root(d[:5]) == node(node(n01, n23), d[4])
    assert merkle_root(d[:7]) == node(node(n01, n23), node(n45, d[6]))
    with pytest.raises(ValueError):
        merkle_root([d[0], b"short"])


def h(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def node(left: bytes, right: bytes) -> bytes:
    return h(b"\x01", left, right)


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, word for word: the reference the fast code is held to."""
    if not leaves:
        return h()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node(mth(leaves[:k]), mth(leaves[k:]))


LEAVES = [leaf_hash(i.to_bytes(2, "big")) for i in range(70)]


def test_frontier_matches_the_rfc_definition_at_every_size() -> None:
    frontier = MerkleFrontier()
    for n in range(len(LEAVES) + 1):
        assert len(frontier) == n
        assert frontier.root() == mth(LEAVES[:n]) == merkle_root(LEAVES[:n])
        if n < len(LEAVES):
            frontier.append(LEAVES[n])
    assert EMPTY_ROOT == mth([])
    with pytest.raises(ValueError):
        frontier.append(b"short")


# The tree of RFC 6962 section 2.1.3 (d0..d6), its node names, and its example proofs.
RFC_D = [leaf_hash(f"d{i}".encode()) for i in range(7)]
a, b, c, d, e, f, j = RFC_D
g, hh, i_ = node(a, b), node(c, d), node(e, f)
k, l_ = node(g, hh), node(i_, j)
RFC_ROOT = node(k, l_)


def test_proofs_match_the_rfc_6962_example() -> None:
    assert merkle_root(RFC_D) == RFC_ROOT
    assert inclusion_proof(RFC_D, 0, 7) == [b, hh, l_]
    assert inclusion_proof(RFC_D, 3, 7) == [c, g, l_]
    assert inclusion_proof(RFC_D, 4, 7) == [f, j, k]
    assert inclusion_proof(RFC_D, 6, 7) == [i_, k]
    assert consistency_proof(RFC_D, 3, 7) == [c, d, g, l_]
    assert consistency_proof(RFC_D, 4, 7) == [l_]
    assert consistency_proof(RFC_D, 6, 7) == [i_, j, k]
    assert consistency_proof(RFC_D, 0, 7) == consistency_proof(RFC_D, 7, 7) == []
    assert verify_consistency(3, 7, node(g, c), RFC_ROOT, [c, d, g, l_])
    assert verify_consistency(4, 7, k, RFC_ROOT, [l_])
    assert verify_inclusion(d, 3, 7, RFC_ROOT, [c, g, l_])


def mutations(proof: list[bytes]) -> Iterator[list[bytes]]:
    """Every way to spoil a proof by one edit: flip, drop or add a hash, or swap two."""
    for position in range(len(proof)):
        yield proof[:position] + [flip(proof[position], 0, 1)] + proof[position + 1 :]
        yield proof[:position] + proof[position + 1 :]
    yield [*proof, LEAVES[0]]
    yield [LEAVES[0], *proof]
    if len(proof) > 1 and proof[0] != proof[1]:
        yield [proof[1], proof[0], *proof[2:]]


def test_consistency_proofs_for_every_pair_of_sizes_up_to_20() -> None:
    leaves = LEAVES[:20]
    roots = [mth(leaves[:n]) for n in range(21)]
    for n in range(21):
        for m in range(n + 1):
            proof = consistency_proof(leaves, m, n)
            assert verify_consistency(m, n, roots[m], roots[n], proof), (m, n)
            for spoiled in mutations(proof):
                assert not verify_consistency(m, n, roots[m], roots[n], spoiled), (m, n, spoiled)
            if m:
                assert not verify_consistency(m, n, flip(roots[m], 5, 1), roots[n], proof)
                assert not verify_consistency(m, n, roots[m], flip(roots[n], 5, 1), proof)
                # A fork: the same old size over a different first leaf.
                forked = mth([LEAVES[50], *leaves[1:m]])
                assert not verify_consistency(m, n, forked, roots[n], proof)
                for other in range(1, n + 1):
                    if other != m and roots[other] != roots[m]:
                        assert not verify_consistency(other, n, roots[m], roots[n], proof)


def test_inclusion_proofs_for_every_leaf_of_every_tree_up_to_20() -> None:
    leaves = LEAVES[:20]
    for n in range(1, 21):
        root = mth(leaves[:n])
        for index in range(n):
            proof = inclusion_proof(leaves, index, n)
            assert verify_inclusion(leaves[index], index, n, root, proof), (index, n)
            for spoiled in mutations(proof):
                assert not verify_inclusion(leaves[index], index, n, root, spoiled)
            assert not verify_inclusion(LEAVES[50], index, n, root, proof)
            assert not verify_inclusion(leaves[index], index, n, flip(root, 0, 1), proof)
            for other in range(n):
                if other != index:
                    assert not verify_inclusion(leaves[index], other, n, root, proof)


def test_proof_arguments_out_of_range() -> None:
    for args in [(-1, 3), (4, 3), (0, 21)]:
        with pytest.raises(ValueError):
            consistency_proof(LEAVES[:20], *args)
    for args in [(-1, 3), (3, 3), (0, 21)]:
        with pytest.raises(ValueError):
            inclusion_proof(LEAVES[:20], *args)
    with pytest.raises(ValueError):
        verify_consistency(4, 3, EMPTY_ROOT, EMPTY_ROOT, [])
    with pytest.raises(ValueError):
        verify_inclusion(LEAVES[0], -1, 3, EMPTY_ROOT, [])
    assert not verify_consistency(2, 3, LEAVES[0][:31], LEAVES[1], [LEAVES[2]])
    assert not verify_consistency(0, 3, LEAVES[0], LEAVES[1], [])  # not the empty root
    assert verify_consistency(0, 3, EMPTY_ROOT, LEAVES[1], [])
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert not verify_consistency(0, 0, EMPTY_ROOT, LEAVES[1], [])
    assert not verify_inclusion(LEAVES[0], 0, 1, LEAVES[0][:31], [])


def test_doc_examples_run() -> None:
    result = doctest.testmod(merkle_module)
    assert result.failed == 0 and result.attempted > 0
