"""The hashes of an audit log: RFC 6962 Merkle trees, their proofs, and the hash-chain link.

Pure functions over 32-byte SHA-256 hashes, after RFC 6962 (Certificate Transparency), section
2.1, with the verifiers of RFC 9162, sections 2.1.3 and 2.1.4:

* a leaf is ``SHA-256(0x00 || data)`` (:func:`leaf_hash`) and an interior node
  ``SHA-256(0x01 || left || right)``; :func:`merkle_root` and :class:`MerkleFrontier` compute a
  tree's root, :data:`EMPTY_ROOT` being the root of no leaves;
* :func:`inclusion_proof` / :func:`verify_inclusion` show that one leaf is in a tree, and
  :func:`consistency_proof` / :func:`verify_consistency` that a tree only appended to an earlier
  one, each without the rest of the leaves;
* :func:`chain_hash` links a leaf to the hash before it, ``SHA-256(0x02 || prev || leaf)``. The
  chain has its own domain byte: with ``0x01``, a link would be byte for byte an RFC 6962
  interior node, and could be presented as a Merkle node over two unrelated hashes.

The audit log (``bund.parties.audit``) hashes each record's body into a leaf, chains the leaves,
and signs tree heads (checkpoints) over them; ``docs/audit.md`` says what each check proves.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from typing import Final

#: Bytes in a leaf hash, a node hash, a root and a chain link.
HASH_SIZE: Final = 32
#: Root of the empty tree (RFC 6962: ``MTH({}) = SHA-256()``).
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()

_LEAF_PREFIX: Final = b"\x00"  # RFC 6962 section 2.1 leaf
_NODE_PREFIX: Final = b"\x01"  # RFC 6962 section 2.1 interior node
_CHAIN_PREFIX: Final = b"\x02"  # Bund: link of the hash chain, distinct from both


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: ``SHA-256(0x00 || data)``.

    Args:
        data: The leaf's data (for the audit log, a record's canonical body).

    Returns:
        The 32-byte leaf hash.
    """
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def chain_hash(prev_hash: bytes, leaf: bytes) -> bytes:
    """Link a leaf into the hash chain: ``SHA-256(0x02 || prev_hash || leaf)``.

    Args:
        prev_hash: The previous link (for the audit log's record 0, 32 zero bytes).
        leaf: This leaf's hash.

    Returns:
        The 32-byte link (the audit log's ``record_hash``).

    Raises:
        ValueError: Either argument is not 32 bytes.
    """
    if len(prev_hash) != HASH_SIZE or len(leaf) != HASH_SIZE:
        raise ValueError("prev_hash and leaf must be 32 bytes each")
    return hashlib.sha256(_CHAIN_PREFIX + prev_hash + leaf).digest()


def _node(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


class MerkleFrontier:
    """The RFC 6962 tree of a growing log, kept in O(log n) space.

    A tree of ``n`` leaves is a row of perfect subtrees, one per set bit of ``n``, largest first,
    and its root folds their roots from the right. The frontier keeps only those roots: an append
    merges equal-sized neighbours like a binary counter (amortised two hashes), and
    :meth:`root` costs at most ``log2(n)`` hashes. So a node that checkpoints every few minutes
    never rehashes its log.

    >>> leaves = [leaf_hash(bytes([i])) for i in range(5)]
    >>> frontier = MerkleFrontier()
    >>> for leaf in leaves:
    ...     frontier.append(leaf)
    >>> len(frontier), frontier.root() == merkle_root(leaves)
    (5, True)
    """

    def __init__(self) -> None:
        self._size = 0
        self._subtrees: list[bytes] = []  # roots of the perfect subtrees, largest first

    def __len__(self) -> int:
        return self._size

    def append(self, leaf: bytes) -> None:
        """Add the next leaf hash.

        Args:
            leaf: A 32-byte leaf hash (:func:`leaf_hash`).

        Raises:
            ValueError: ``leaf`` is not 32 bytes.
        """
        if len(leaf) != HASH_SIZE:
            raise ValueError("every leaf hash must be 32 bytes")
        node, size = leaf, self._size
        while size & 1:
            node = _node(self._subtrees.pop(), node)
            size >>= 1
        self._subtrees.append(node)
        self._size += 1

    def root(self) -> bytes:
        """The RFC 6962 root of the leaves appended so far (:data:`EMPTY_ROOT` for none)."""
        if not self._subtrees:
            return EMPTY_ROOT
        root = self._subtrees[-1]
        for left in reversed(self._subtrees[:-1]):
            root = _node(left, root)
        return root


def merkle_root(leaf_hashes: Iterable[bytes]) -> bytes:
    """The RFC 6962 (section 2.1) Merkle tree hash over already-hashed leaves, in O(n).

    ``MTH({}) = SHA-256()``; one leaf is its own root; otherwise, with ``k`` the largest power of
    two below ``n``, ``MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))``.

    Args:
        leaf_hashes: Leaf hashes (:func:`leaf_hash`), in order.

    Returns:
        The 32-byte root.

    Raises:
        ValueError: A leaf hash is not 32 bytes.

    >>> merkle_root([]).hex()[:16]
    'e3b0c44298fc1c14'
    >>> one = leaf_hash(b"")
    >>> merkle_root([one]) == one
    True
    """
    frontier = MerkleFrontier()
    for leaf in leaf_hashes:
        frontier.append(leaf)
    return frontier.root()


def _split(n: int) -> int:
    """The largest power of two below ``n`` (``n >= 2``): where RFC 6962 splits a tree."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, tree_size: int) -> list[bytes]:
    """The RFC 6962 (section 2.1.1) audit path of leaf ``index`` in the tree of ``tree_size``.

    Args:
        leaf_hashes: The log's leaf hashes, at least ``tree_size`` of them.
        index: The leaf to prove, ``0 <= index < tree_size``.
        tree_size: The size of the tree (a checkpoint's ``tree_size``).

    Returns:
        The sibling hashes from the leaf up to the root; O(n) hashes to compute.

    Raises:
        ValueError: The sizes are out of range, or a leaf hash is not 32 bytes.

    >>> leaves = [leaf_hash(bytes([i])) for i in range(7)]
    >>> proof = inclusion_proof(leaves, 3, 7)
    >>> verify_inclusion(leaves[3], 3, 7, merkle_root(leaves), proof)
    True
    """
    if not 0 <= index < tree_size <= len(leaf_hashes):
        raise ValueError(f"need 0 <= index ({index}) < tree_size ({tree_size}) <= leaves")
    path: list[bytes] = []
    lo, hi, m = 0, tree_size, index
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            path.append(merkle_root(leaf_hashes[lo + k : hi]))
            hi = lo + k
        else:
            path.append(merkle_root(leaf_hashes[lo : lo + k]))
            lo, m = lo + k, m - k
    return path[::-1]


def verify_inclusion(
    leaf: bytes, index: int, tree_size: int, root: bytes, proof: Sequence[bytes]
) -> bool:
    """Check an RFC 6962 audit path (the algorithm of RFC 9162, section 2.1.3.2).

    Args:
        leaf: The leaf hash of the record to check.
        index: Its position in the log.
        tree_size: The size of the tree that ``root`` is the root of.
        root: A checkpoint's root.
        proof: The audit path (:func:`inclusion_proof`), as received.

    Returns:
        Whether ``leaf`` is leaf ``index`` of the tree of ``tree_size`` leaves with ``root``.

    Raises:
        ValueError: ``index`` or ``tree_size`` is negative.
    """
    if index < 0 or tree_size < 0:
        raise ValueError("index and tree_size must not be negative")
    if index >= tree_size or any(len(h) != HASH_SIZE for h in (leaf, root, *proof)):
        return False
    fn, sn, r = index, tree_size - 1, leaf
    for sibling in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(sibling, r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = _node(r, sibling)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and hmac.compare_digest(r, root)


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """The RFC 6962 (section 2.1.2) proof that the tree of ``old_size`` leaves is a prefix.

    That is, that the log of ``new_size`` records only appended to the log of ``old_size``. For
    ``old_size`` 0 or equal to ``new_size`` the proof is empty.

    Args:
        leaf_hashes: The log's leaf hashes, at least ``new_size`` of them.
        old_size: The size of the earlier checkpoint.
        new_size: The size of the later checkpoint.

    Returns:
        The proof's hashes, in RFC 6962 order; O(n) hashes to compute.

    Raises:
        ValueError: The sizes are out of range, or a leaf hash is not 32 bytes.

    >>> leaves = [leaf_hash(bytes([i])) for i in range(7)]
    >>> old, new = merkle_root(leaves[:3]), merkle_root(leaves)
    >>> verify_consistency(3, 7, old, new, consistency_proof(leaves, 3, 7))
    True
    """
    if not 0 <= old_size <= new_size <= len(leaf_hashes):
        raise ValueError(f"need 0 <= old_size ({old_size}) <= new_size ({new_size}) <= leaves")
    if old_size == 0:
        return []
    proof: list[bytes] = []
    lo, hi, m, complete = 0, new_size, old_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            proof.append(merkle_root(leaf_hashes[lo + k : hi]))
            hi = lo + k
        else:
            proof.append(merkle_root(leaf_hashes[lo : lo + k]))
            lo, m, complete = lo + k, m - k, False
    if not complete:
        proof.append(merkle_root(leaf_hashes[lo:hi]))
    return proof[::-1]


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Check an RFC 6962 consistency proof (the algorithm of RFC 9162, section 2.1.4.2).

    Args:
        old_size: The earlier checkpoint's tree size.
        new_size: The later checkpoint's tree size.
        old_root: The earlier checkpoint's root.
        new_root: The later checkpoint's root.
        proof: The proof (:func:`consistency_proof`), as received.

    Returns:
        Whether the tree with ``new_root`` extends the tree with ``old_root``: False means the
        party rewrote, reordered or dropped records between the two checkpoints, or that the
        proof is wrong.

    Raises:
        ValueError: ``old_size`` is negative or above ``new_size``.
    """
    if not 0 <= old_size <= new_size:
        raise ValueError(f"need 0 <= old_size ({old_size}) <= new_size ({new_size})")
    if any(len(h) != HASH_SIZE for h in (old_root, new_root, *proof)):
        return False
    if old_size == new_size:
        return not proof and hmac.compare_digest(old_root, new_root)
    if old_size == 0:
        return not proof and hmac.compare_digest(old_root, EMPTY_ROOT)
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a perfect subtree: its root is the proof's start
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = _node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    old_ok = hmac.compare_digest(fr, old_root)
    new_ok = hmac.compare_digest(sr, new_root)
    return sn == 0 and old_ok and new_ok
