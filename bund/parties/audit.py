"""Append-only, hash-chained, signed audit log; its stores; verification; JSON-lines export.

Every node keeps one log. A record holds who did what (event, job, flat scalar fields such as a
message's sha256, size, tag and peer) and never payload content: :class:`AuditRecord` refuses
nested values and bytes. Each record is bound to the one before it and signed:

* ``body`` is canonical JSON (sorted keys, no whitespace, UTF-8) of every attribute except
  ``record_hash`` and ``signature``; byte strings inside it are lower-case hex.
* ``leaf_hash = SHA-256(0x00 || body)``, the RFC 6962 leaf hash, so the signed checkpoints that
  come with the regulator's pull (tree size and :func:`merkle_root` over the leaf hashes) need no
  second hash per record.
* ``record_hash = SHA-256(0x02 || prev_hash || leaf_hash)``, with ``prev_hash`` of record 0 equal
  to 32 zero bytes. The chain uses its own domain byte: ``0x01 || 32 bytes || 32 bytes`` is exactly
  an RFC 6962 interior node, and a chain hash must never double as a Merkle node.
* ``signature = Ed25519(SIGNING_DOMAIN || record_hash)`` with the node's audit key, where
  ``SIGNING_DOMAIN`` is ``bund/audit/v1`` and a zero byte.

:func:`verify_records` names the first record that was altered, removed, reordered or inserted.
It cannot see records cut off the end of a log (truncation), nor a log rewritten and re-signed
with the party's own key. Those need a :class:`Checkpoint` held by someone else: the party signs
its log's size and Merkle root (:meth:`AuditLog.checkpoint`), the regulator keeps it, and
:func:`check_log_against_checkpoints` later finds a log that no longer matches it, or two
checkpoints of one size that disagree (equivocation). RFC 6962 inclusion and consistency proofs
let a regulator check one record, or that a log only grew, without the whole log.
``docs/audit.md`` says what each check proves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import json
import math
import os
import re
import sqlite3
import struct
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import IO, TYPE_CHECKING, Any, Final, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bund.compute.errors import BundError

if TYPE_CHECKING:
    import psycopg

JsonScalar = str | int | float | bool | None

#: Bytes in a record hash, a leaf hash and ``prev_hash``.
HASH_SIZE: Final = 32
#: Bytes in an Ed25519 signature.
SIGNATURE_SIZE: Final = 64
#: ``prev_hash`` of record 0.
GENESIS_HASH: Final = bytes(HASH_SIZE)
#: Prefix of every signed message, so an audit signature is never valid in another context.
SIGNING_DOMAIN: Final = b"bund/audit/v1\x00"
#: Prefix of every signed checkpoint; neither domain is a prefix of the other.
CHECKPOINT_DOMAIN: Final = b"bund/checkpoint/v1\x00"
#: Root of the empty tree (RFC 6962: ``MTH({}) = SHA-256()``).
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()

_LEAF_PREFIX: Final = b"\x00"  # RFC 6962 section 2.1 leaf
_NODE_PREFIX: Final = b"\x01"  # RFC 6962 section 2.1 interior node
_CHAIN_PREFIX: Final = b"\x02"  # Bund: link of the hash chain, distinct from both
_SCHEMA_VERSION: Final = 1
_FRONTIER_BATCH: Final = 10_000  # records read at a time to build a log's Merkle frontier
_TIMESTAMP: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")
_HEX: Final = re.compile(r"(?:[0-9a-f]{2})*")
_SCALAR_TYPES: Final = (str, int, float, bool, type(None))


class AuditFormatError(BundError, ValueError):
    """An audit record, file or database that cannot be read as the audit format.

    Attributes:
        index: Position in the log (0-based) of the record that could not be read, when known.
    """

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class AuditLogCorruptError(BundError):
    """An audit log that cannot be continued because its last record does not verify."""


class AuditLogConflictError(BundError):
    """A record that is not the next one of the store (another writer appended meanwhile)."""


class AuditStoreUnavailableError(BundError):
    """An audit store that cannot be opened: its driver is not installed or its server is down."""


def _canonical(value: object) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8, no NaN or infinities."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise AuditFormatError(f"audit {name} must be a string, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise AuditFormatError(f"audit {name} is not valid Unicode (lone surrogate)") from None


def _frozen_fields(fields: object) -> Mapping[str, JsonScalar]:
    """Check that ``fields`` is a flat mapping of JSON scalars; return a read-only copy."""
    if not isinstance(fields, Mapping):
        raise AuditFormatError(f"audit fields must be a mapping, not {type(fields).__name__}")
    checked: dict[str, JsonScalar] = {}
    for key, value in fields.items():
        _check_text("field name", key)
        if type(value) not in _SCALAR_TYPES:
            raise AuditFormatError(
                f"audit field {key!r} is {type(value).__name__}: fields hold flat JSON scalars "
                "(str, int, float, bool, None) only; record a payload's sha256 and size, "
                "never its content"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise AuditFormatError(f"audit field {key!r} is {value}: JSON has no such number")
        if isinstance(value, str):
            _check_text(f"field {key!r}", value)
        checked[key] = value
    return MappingProxyType(dict(sorted(checked.items())))


@dataclass(frozen=True)
class AuditRecord:
    """One signed record of a party's audit log.

    Construction checks types only, so that a record read from a file or a peer can be
    represented and then judged by :func:`verify_records`; hash and signature sizes are checked
    there.

    Attributes:
        index: Position in the log, from 0.
        timestamp: RFC 3339 UTC time the log appended it (``2026-11-24T09:30:00.000000Z``).
        party: The party whose log this is.
        event: What happened (``job_submitted``, ``message_sent``, ``job_closed``, ``rpc``...).
        job_id: The job it concerns, or ``""``.
        fields: Flat JSON scalars (never payload content); kept as a read-only mapping in key
            order, so a record reads back the same from every store.
        prev_hash: ``record_hash`` of the record before it (32 zero bytes for record 0).
        record_hash: ``SHA-256(0x02 || prev_hash || leaf_hash)``.
        signature: Ed25519 signature over ``SIGNING_DOMAIN || record_hash``.

    Raises:
        AuditFormatError: An attribute of the wrong type, or a field that is not a JSON scalar.
    """

    index: int
    timestamp: str
    party: str
    event: str
    job_id: str
    fields: Mapping[str, JsonScalar]
    prev_hash: bytes
    record_hash: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if type(self.index) is not int or self.index < 0:
            raise AuditFormatError(f"audit record index must be an int >= 0, not {self.index!r}")
        for name in ("timestamp", "party", "event", "job_id"):
            _check_text(name, getattr(self, name))
        for name in ("prev_hash", "record_hash", "signature"):
            if type(getattr(self, name)) is not bytes:
                raise AuditFormatError(f"audit record {name} must be bytes")
        object.__setattr__(self, "fields", _frozen_fields(self.fields))

    def body(self) -> bytes:
        """The canonical bytes that the leaf hash covers: everything but hash and signature."""
        return _canonical(
            {
                "event": self.event,
                "fields": dict(self.fields),
                "index": self.index,
                "job_id": self.job_id,
                "party": self.party,
                "prev_hash": self.prev_hash.hex(),
                "timestamp": self.timestamp,
            }
        )

    def leaf_hash(self) -> bytes:
        """``SHA-256(0x00 || body)``: this record's leaf in the RFC 6962 tree of the log."""
        return leaf_hash(self.body())


_JSONL_KEYS: Final = frozenset(field.name for field in dataclasses.fields(AuditRecord))


def leaf_hash(body: bytes) -> bytes:
    """RFC 6962 leaf hash of a record body: ``SHA-256(0x00 || body)``.

    Args:
        body: A record's canonical body (:meth:`AuditRecord.body`).

    Returns:
        The 32-byte leaf hash.
    """
    return hashlib.sha256(_LEAF_PREFIX + body).digest()


def chain_hash(prev_hash: bytes, leaf: bytes) -> bytes:
    """Link a leaf into the chain: ``SHA-256(0x02 || prev_hash || leaf)``.

    Args:
        prev_hash: The previous record's hash (``GENESIS_HASH`` for record 0).
        leaf: This record's leaf hash.

    Returns:
        The 32-byte record hash.

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
            leaf: A 32-byte leaf hash (:meth:`AuditRecord.leaf_hash`).

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
        leaf_hashes: Leaf hashes (:meth:`AuditRecord.leaf_hash`) in log order.

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


@dataclass(frozen=True)
class VerificationReport:
    """The outcome of verifying a log.

    Attributes:
        ok: Every record verified (a truncated tail is not detectable; see the module doc).
        count: How many records verified, from the start of the log.
        first_bad_index: Position (0-based) of the first record that failed, or ``None``.
        reason: Why that record failed; ``""`` when ``ok``.
    """

    ok: bool
    count: int
    first_bad_index: int | None
    reason: str


def _problem(
    record: AuditRecord,
    index: int,
    prev_hash: bytes | None,
    public_key: Ed25519PublicKey,
    party: str | None,
) -> str | None:
    """Why ``record`` cannot be record ``index`` after ``prev_hash`` (None: it can)."""
    if record.index != index:
        return (
            f"index is {record.index}, expected {index}: "
            "a record was removed, inserted or reordered here"
        )
    if party is not None and record.party != party:
        return f"party is {record.party!r}, expected {party!r}"
    for name, value, size in (
        ("prev_hash", record.prev_hash, HASH_SIZE),
        ("record_hash", record.record_hash, HASH_SIZE),
        ("signature", record.signature, SIGNATURE_SIZE),
    ):
        if len(value) != size:
            return f"{name} has {len(value)} bytes, expected {size}"
    if prev_hash is not None and not hmac.compare_digest(record.prev_hash, prev_hash):
        return (
            "prev_hash does not match the previous record's hash: "
            "a record was removed, inserted or reordered here"
        )
    expected = chain_hash(record.prev_hash, record.leaf_hash())
    if not hmac.compare_digest(record.record_hash, expected):
        return "record_hash does not match the record's contents: the record was altered"
    try:
        public_key.verify(record.signature, SIGNING_DOMAIN + record.record_hash)
    except InvalidSignature:
        return "signature does not verify with this key: the record is forged or altered"
    return None


def verify_records(
    records: Iterable[AuditRecord], public_key: Ed25519PublicKey, party: str | None = None
) -> VerificationReport:
    """Check a log's indices, hash chain and signatures; name the first bad record.

    Catches a record that was altered (any byte of its body, hash or signature), removed,
    reordered, or inserted (forged, or replayed from another log). Records cut off the end of the
    log are NOT detected: the remaining prefix is a valid log. Detecting truncation, or a whole
    log replaced by another one signed with the same key, needs a checkpoint (tree size and
    Merkle root) signed earlier and held by someone else.

    ``records`` may be lazy (:func:`iter_jsonl`): a record that cannot even be read there is
    reported at its position instead of raising, so the first bad record is still the one named.

    Args:
        records: The log, from record 0, in order.
        public_key: The party's audit public key.
        party: When given, every record must name this party.

    Returns:
        A report; ``first_bad_index`` is the position of the first record that fails.

    Raises:
        AuditFormatError: ``records`` failed to read a record without saying which one.
    """
    count = 0
    try:
        for _ in _verified(records, public_key, party):
            count += 1
    except _BadRecord as bad:
        return VerificationReport(False, bad.index, bad.index, bad.reason)
    return VerificationReport(True, count, None, "")


class _BadRecord(Exception):
    """Raised by :func:`_verified` at the first record that fails."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


def _verified(
    records: Iterable[AuditRecord], public_key: Ed25519PublicKey, party: str | None
) -> Iterator[AuditRecord]:
    """Yield each record once it verifies; raise :class:`_BadRecord` at the first that fails."""
    prev = GENESIS_HASH
    iterator = iter(records)
    position = 0
    while True:
        try:
            record = next(iterator, None)
        except AuditFormatError as exc:
            if exc.index is None:
                raise
            raise _BadRecord(position, str(exc)) from None
        if record is None:
            return
        problem = _problem(record, position, prev, public_key, party)
        if problem is not None:
            raise _BadRecord(position, problem)
        prev = record.record_hash
        position += 1
        yield record


def _then_raise(records: Iterable[AuditRecord], exc: AuditFormatError) -> Iterator[AuditRecord]:
    yield from records
    raise exc


def verify_store(
    store: AuditStore, public_key: Ed25519PublicKey, party: str | None = None
) -> VerificationReport:
    """Verify every record of a store, as :func:`verify_records` does.

    A record that the store cannot decode (its bytes altered into invalid UTF-8 or non-canonical
    JSON) is reported at its position once the records before it have verified, so the record
    named is still the first bad one.

    Args:
        store: The store to read.
        public_key: The party's audit public key.
        party: When given, every record must name this party.

    Returns:
        A report naming the first bad record, if any.
    """
    try:
        records = store.read()
    except AuditFormatError as exc:
        if exc.index is None:
            raise
        return verify_records(_then_raise(store.read(0, exc.index), exc), public_key, party)
    return verify_records(records, public_key, party)


# -- checkpoints -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A party's signed statement of its log's size and Merkle root (an RFC 6962 tree head).

    The party signs one on request (:meth:`AuditLog.checkpoint`) and the regulator keeps it.
    Having signed it, the party can no longer present a log whose first ``tree_size`` records
    hash to another root, nor one with fewer records, without being caught
    (:func:`check_log_against_checkpoints`). Construction checks types only, so that a received
    checkpoint can be represented and then judged by :func:`verify_checkpoint`.

    Attributes:
        party: The party whose log it is.
        tree_size: How many records it covers (records ``0 .. tree_size - 1``).
        root_hash: :func:`merkle_root` over those records' leaf hashes.
        timestamp: RFC 3339 UTC time of signing, from the party's clock.
        signature: Ed25519 over :meth:`signed_bytes` with the party's audit key.

    Raises:
        AuditFormatError: An attribute of the wrong type, or a size outside ``0 .. 2**64 - 1``.
    """

    party: str
    tree_size: int
    root_hash: bytes
    timestamp: str
    signature: bytes

    def __post_init__(self) -> None:
        if type(self.tree_size) is not int or not 0 <= self.tree_size < 2**64:
            raise AuditFormatError(f"checkpoint tree_size must be a u64, not {self.tree_size!r}")
        for name in ("party", "timestamp"):
            _check_text(f"checkpoint {name}", getattr(self, name))
        for name in ("root_hash", "signature"):
            if type(getattr(self, name)) is not bytes:
                raise AuditFormatError(f"checkpoint {name} must be bytes")

    def signed_bytes(self) -> bytes:
        """What the signature covers: an unambiguous, domain-separated encoding.

        ``CHECKPOINT_DOMAIN || u32 len || party (UTF-8) || u64 tree_size || root_hash (32) ||
        u32 len || timestamp (UTF-8)``, integers big-endian. The domain keeps a checkpoint
        signature from ever verifying as a record signature, and the reverse.

        Raises:
            ValueError: ``root_hash`` is not 32 bytes.
        """
        if len(self.root_hash) != HASH_SIZE:
            raise ValueError("root_hash must be 32 bytes")
        party, timestamp = self.party.encode("utf-8"), self.timestamp.encode("utf-8")
        return b"".join(
            (
                CHECKPOINT_DOMAIN,
                struct.pack(">I", len(party)),
                party,
                struct.pack(">Q", self.tree_size),
                self.root_hash,
                struct.pack(">I", len(timestamp)),
                timestamp,
            )
        )

    def describe(self) -> str:
        """The checkpoint in words, for messages: its size, time and the start of its root."""
        root = self.root_hash.hex()[:16]
        return f"of {self.tree_size} records signed {self.timestamp} (root {root})"


def verify_checkpoint(checkpoint: Checkpoint, public_key: Ed25519PublicKey) -> bool:
    """Whether ``checkpoint`` is well formed and signed with ``public_key``.

    Args:
        checkpoint: A checkpoint, as received.
        public_key: The party's audit public key.

    Returns:
        True only if the root and signature have the right sizes, the timestamp is RFC 3339 UTC
        and the signature verifies.
    """
    if (
        len(checkpoint.root_hash) != HASH_SIZE
        or len(checkpoint.signature) != SIGNATURE_SIZE
        or not _TIMESTAMP.fullmatch(checkpoint.timestamp)
    ):
        return False
    try:
        public_key.verify(checkpoint.signature, checkpoint.signed_bytes())
    except InvalidSignature:
        return False
    return True


class LogFault(StrEnum):
    """What :func:`check_log_against_checkpoints` found wrong."""

    #: A record fails the hash chain or its signature (as :func:`verify_records` reports).
    RECORD = "record"
    #: A checkpoint is not signed with the party's key, or names another party.
    CHECKPOINT = "checkpoint"
    #: Two validly signed checkpoints of the same size have different roots.
    EQUIVOCATION = "equivocation"
    #: The log verifies, but its first ``tree_size`` records no longer match a checkpoint.
    REWRITTEN = "rewritten"
    #: The log has fewer records than a checkpoint covers.
    TRUNCATED = "truncated"


@dataclass(frozen=True)
class CheckpointReport:
    """The outcome of checking a party's log against the checkpoints a regulator holds.

    Attributes:
        ok: Every record verified, and the log matches every checkpoint.
        party: The party checked.
        count: How many records verified, from the start of the log.
        fault: What is wrong, or ``None`` when ``ok``.
        first_bad_index: The first record that fails (``RECORD``); for ``REWRITTEN`` the first
            record that no matching checkpoint vouches for (the change is at or after it and
            before the failing checkpoint's ``tree_size``); for ``TRUNCATED`` the first missing
            record; ``None`` for the checkpoint faults and when ``ok``.
        checkpoints: The checkpoints involved: the failing one, or both equivocating ones.
        reason: Why, naming the party and the checkpoint; ``""`` when ``ok``.
    """

    ok: bool
    party: str
    count: int
    fault: LogFault | None
    first_bad_index: int | None
    checkpoints: tuple[Checkpoint, ...]
    reason: str


def check_log_against_checkpoints(
    records: Iterable[AuditRecord],
    checkpoints: Iterable[Checkpoint],
    public_key: Ed25519PublicKey,
    party: str,
) -> CheckpointReport:
    """Verify a party's log and hold it to the checkpoints it signed earlier (the regulator).

    In one pass, O(n) hashes and one signature check per record: the checks of
    :func:`verify_records`, then the root over the first ``tree_size`` records against each
    checkpoint. That catches what the chain alone cannot: a log rewritten and re-signed with the
    party's own key after a checkpoint, and a log truncated below one. Before any record is read,
    the checkpoints themselves are checked: each must be signed with ``public_key`` and name
    ``party``, and two of the same size must have the same root, or the party equivocated
    (showed two different histories).

    Args:
        records: The log, from record 0, in order; may be lazy (:func:`iter_jsonl`).
        checkpoints: The party's checkpoints that the regulator holds, in any order.
        public_key: The party's audit public key.
        party: The party, as its certificate names it; every record and checkpoint must name it.

    Returns:
        A report naming the fault, the checkpoint(s) and the record, if anything is wrong.

    Raises:
        AuditFormatError: ``records`` failed to read a record without saying which one.

    >>> key = Ed25519PrivateKey.generate()
    >>> log = AuditLog(MemoryAuditStore(), key, "bank", lambda: "2026-11-24T09:30:00Z")
    >>> _ = log.append("node_started")
    >>> held = [log.checkpoint()]
    >>> _ = log.append("node_stopped")
    >>> check_log_against_checkpoints(log.store.read(), held, key.public_key(), "bank").ok
    True
    >>> report = check_log_against_checkpoints([], held, key.public_key(), "bank")
    >>> report.fault, report.first_bad_index
    (<LogFault.TRUNCATED: 'truncated'>, 0)
    """

    def fail(
        fault: LogFault, count: int, index: int | None, involved: Sequence[Checkpoint], why: str
    ) -> CheckpointReport:
        return CheckpointReport(False, party, count, fault, index, tuple(involved), why)

    by_size: dict[int, Checkpoint] = {}
    for position, checkpoint in enumerate(checkpoints):
        if checkpoint.party != party:
            return fail(
                LogFault.CHECKPOINT,
                0,
                None,
                [checkpoint],
                f"party {party!r}: checkpoint {position} names party {checkpoint.party!r}: "
                "it is no evidence about this log",
            )
        if not verify_checkpoint(checkpoint, public_key):
            return fail(
                LogFault.CHECKPOINT,
                0,
                None,
                [checkpoint],
                f"party {party!r}: checkpoint {position} {checkpoint.describe()} does not "
                "verify with the party's audit key: it was forged or altered since it was "
                "received; keep it as evidence and pull a fresh checkpoint",
            )
        earlier = by_size.setdefault(checkpoint.tree_size, checkpoint)
        if not hmac.compare_digest(earlier.root_hash, checkpoint.root_hash):
            return fail(
                LogFault.EQUIVOCATION,
                0,
                None,
                [earlier, checkpoint],
                f"party {party!r} equivocated: it signed two different logs of "
                f"{checkpoint.tree_size} records, checkpoint {earlier.describe()} and "
                f"checkpoint {checkpoint.describe()}; it showed different histories of the same "
                "records, so at most one of them is its log",
            )
    pending = sorted(by_size.values(), key=lambda c: c.tree_size, reverse=True)
    frontier = MerkleFrontier()
    vouched = 0  # size of the largest checkpoint matched so far

    def rewritten() -> CheckpointReport | None:
        nonlocal vouched
        while pending and pending[-1].tree_size == len(frontier):
            checkpoint = pending.pop()
            root = frontier.root()
            if not hmac.compare_digest(root, checkpoint.root_hash):
                return fail(
                    LogFault.REWRITTEN,
                    len(frontier),
                    vouched,
                    [checkpoint],
                    f"party {party!r} rewrote its log after checkpoint {checkpoint.describe()}: "
                    f"records 0..{checkpoint.tree_size - 1} verify but now hash to root "
                    f"{root.hex()[:16]}; a record from index {vouched} (the last matching "
                    f"checkpoint) to {checkpoint.tree_size - 1} was changed and the log re-signed "
                    "with the party's key",
                )
            vouched = checkpoint.tree_size
        return None

    try:
        for record in _verified(records, public_key, party):
            report = rewritten()
            if report is not None:
                return report
            frontier.append(record.leaf_hash())
    except _BadRecord as bad:
        why = f"party {party!r}: record {bad.index} fails: {bad.reason}"
        return fail(LogFault.RECORD, bad.index, bad.index, [], why)
    report = rewritten()
    if report is not None:
        return report
    if pending:
        checkpoint = pending[-1]
        return fail(
            LogFault.TRUNCATED,
            len(frontier),
            len(frontier),
            [checkpoint],
            f"party {party!r} truncated its log: it has {len(frontier)} records, but checkpoint "
            f"{checkpoint.describe()} covers {checkpoint.tree_size}; records "
            f"{len(frontier)}..{checkpoint.tree_size - 1} were removed",
        )
    return CheckpointReport(True, party, len(frontier), None, None, (), "")


# -- stores ------------------------------------------------------------------------------------


class AuditStore(ABC):
    """Where a log's records are kept: append-only, read by index, no update or delete.

    Implementations are thread-safe and hold records exactly as given, so that the hashes
    recompute. Every implementation runs the contract suite in ``tests/parties/test_audit.py``.
    """

    @abstractmethod
    def append(self, record: AuditRecord) -> None:
        """Add ``record`` durably: return only once it would survive a crash of the process.

        Raises:
            AuditLogConflictError: ``record.index`` is not one more than the last record's
                (0 for an empty store).
        """

    @abstractmethod
    def read(self, start: int = 0, stop: int | None = None) -> list[AuditRecord]:
        """The records with ``start <= index < stop`` (to the end if ``stop`` is None), in order.

        Raises:
            ValueError: ``start`` is negative or ``stop`` is below ``start``.
            AuditFormatError: A stored record cannot be decoded (its ``index`` says which).
        """

    @abstractmethod
    def __len__(self) -> int:
        """Number of records held."""

    @abstractmethod
    def last(self) -> AuditRecord | None:
        """The record with the highest index, or None when empty."""

    @abstractmethod
    def close(self) -> None:
        """Release the store's resources; it is not used afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _check_range(start: int, stop: int | None) -> None:
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(f"bad record range [{start}, {stop})")


def _conflict(record: AuditRecord, expected: int) -> AuditLogConflictError:
    return AuditLogConflictError(
        f"audit record {record.index} cannot be appended: the next index is {expected}. "
        "Another writer is appending to this log; run one node per state directory"
    )


class MemoryAuditStore(AuditStore):
    """An in-process store for tests and tools; nothing survives the process."""

    def __init__(self) -> None:
        self._records: list[AuditRecord] = []
        self._lock = threading.Lock()

    def append(self, record: AuditRecord) -> None:
        """Add ``record`` (see :meth:`AuditStore.append`)."""
        with self._lock:
            if record.index != len(self._records):
                raise _conflict(record, len(self._records))
            self._records.append(record)

    def read(self, start: int = 0, stop: int | None = None) -> list[AuditRecord]:
        """Records ``start`` to ``stop`` (see :meth:`AuditStore.read`)."""
        _check_range(start, stop)
        with self._lock:
            return self._records[start:stop]

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def last(self) -> AuditRecord | None:
        """The last record, or None."""
        with self._lock:
            return self._records[-1] if self._records else None

    def close(self) -> None:
        """Nothing to release."""


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS audit_records (
    idx INTEGER PRIMARY KEY CHECK (idx >= 0),
    timestamp TEXT NOT NULL,
    party TEXT NOT NULL,
    event TEXT NOT NULL,
    job_id TEXT NOT NULL,
    fields TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    record_hash BLOB NOT NULL,
    signature BLOB NOT NULL
) STRICT;
"""
_INSERT: Final = """
INSERT INTO audit_records
    (idx, timestamp, party, event, job_id, fields, prev_hash, record_hash, signature)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_SELECT_RANGE: Final = """
SELECT idx, timestamp, party, event, job_id, fields, prev_hash, record_hash, signature
FROM audit_records WHERE idx >= ? AND idx < ? ORDER BY idx
"""
_SELECT_LAST: Final = """
SELECT idx, timestamp, party, event, job_id, fields, prev_hash, record_hash, signature
FROM audit_records ORDER BY idx DESC LIMIT 1
"""
_MAX_INDEX: Final = 2**63 - 1  # SQLite's largest INTEGER


class SqliteAuditStore(AuditStore):
    """A store in one SQLite file (the node's ``audit.db``).

    A new file is created 0600 (SQLite gives its ``-wal`` and ``-shm`` files the same mode), in
    WAL mode with ``synchronous=FULL``, so a record is on disk before :meth:`append` returns.
    ``idx`` is the primary key, so an index is held once, and this class has no UPDATE or DELETE.
    ``fields`` is kept as the canonical JSON that the hash covers; a row whose text is not valid
    UTF-8, or whose fields are not byte-for-byte canonical, is refused on read with the record's
    index. The file itself is not trusted: verification shows whether it was altered.

    Args:
        path: The database file.
        read_only: Open an existing log only to read it (verification, export), possibly while
            a node appends to it.

    Raises:
        FileNotFoundError: ``read_only`` and ``path`` does not exist.
        AuditFormatError: ``path`` is not a Bund audit database, or has another schema version.
    """

    def __init__(self, path: str | os.PathLike[str], read_only: bool = False) -> None:
        self.path = Path(path)
        self._read_only = read_only
        self._lock = threading.Lock()
        if read_only:
            if not self.path.exists():
                raise FileNotFoundError(f"no audit log at {self.path}")
            uri = self.path.resolve().as_uri() + "?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.text_factory = bytes  # decoded strictly by _decode_row, so bad bytes name a record
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise AuditFormatError(
                f"{self.path} cannot be opened as an audit log ({exc})"
            ) from None
        except AuditFormatError:
            self._db.close()
            raise

    def _open(self) -> None:
        self._db.execute("PRAGMA busy_timeout = 10000")
        if not self._read_only:
            self._db.execute("PRAGMA journal_mode = WAL").fetchone()
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT INTO schema_version (version) SELECT ? "
                "WHERE NOT EXISTS (SELECT 1 FROM schema_version)",
                (_SCHEMA_VERSION,),
            )
        versions = self._db.execute("SELECT version FROM schema_version").fetchall()
        if versions != [(_SCHEMA_VERSION,)]:
            raise AuditFormatError(
                f"{self.path} has audit schema version {versions}, this Bund reads version "
                f"{_SCHEMA_VERSION}: verify it with the Bund release that wrote it"
            )

    def append(self, record: AuditRecord) -> None:
        """Add ``record`` in one durable transaction (see :meth:`AuditStore.append`).

        Raises:
            io.UnsupportedOperation: The store was opened read-only.
            AuditLogConflictError: ``record`` is not the next record.
        """
        if self._read_only:
            raise io.UnsupportedOperation(f"{self.path} was opened read-only")
        row = (
            record.index,
            record.timestamp,
            record.party,
            record.event,
            record.job_id,
            _canonical(dict(record.fields)).decode("utf-8"),
            record.prev_hash,
            record.record_hash,
            record.signature,
        )
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (expected,) = self._db.execute(
                    "SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_records"
                ).fetchone()
                if record.index != expected:
                    raise _conflict(record, expected)
                self._db.execute(_INSERT, row)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def read(self, start: int = 0, stop: int | None = None) -> list[AuditRecord]:
        """Records ``start`` to ``stop`` (see :meth:`AuditStore.read`)."""
        _check_range(start, stop)
        with self._lock:
            rows = self._db.execute(
                _SELECT_RANGE, (start, _MAX_INDEX if stop is None else min(stop, _MAX_INDEX))
            ).fetchall()
        return [_decode_row(row, str(self.path)) for row in rows]

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM audit_records").fetchone()
        return int(count)

    def last(self) -> AuditRecord | None:
        """The record with the highest index, or None."""
        with self._lock:
            row = self._db.execute(_SELECT_LAST).fetchone()
        return None if row is None else _decode_row(row, str(self.path))

    def close(self) -> None:
        """Close the database; the last connection to close folds the WAL into the file."""
        with self._lock:
            self._db.close()


def _decode_row(row: Sequence[Any], where: str) -> AuditRecord:
    """A record from a row of ``audit_records`` whose text columns are read as raw bytes."""
    index = row[0]
    try:
        timestamp, party, event, job_id, fields = (_utf8(value) for value in row[1:6])
        return AuditRecord(
            index=index,
            timestamp=timestamp,
            party=party,
            event=event,
            job_id=job_id,
            fields=_parse_fields(fields),
            prev_hash=row[6],
            record_hash=row[7],
            signature=row[8],
        )
    except AuditFormatError as exc:
        raise AuditFormatError(f"record {index} in {where}: {exc}", index) from None


def _utf8(value: object) -> str:
    if not isinstance(value, bytes):
        raise AuditFormatError(f"a text column holds {type(value).__name__}")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise AuditFormatError("a text column is not UTF-8") from None


def _refuse_constant(name: str) -> object:
    raise AuditFormatError(f"{name} is not a JSON number")


def _loads(text: str) -> object:
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except AuditFormatError:
        raise
    except ValueError as exc:  # JSONDecodeError, or an integer with too many digits
        raise AuditFormatError(f"not JSON ({exc})") from None


def _parse_fields(text: str) -> Mapping[str, JsonScalar]:
    """Fields from their stored JSON, refused unless it is byte-for-byte canonical."""
    fields = _frozen_fields(_loads(text))
    if _canonical(dict(fields)) != text.encode("utf-8"):
        raise AuditFormatError("fields are not in canonical JSON form")
    return fields


_PG_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS audit_schema_version (version INTEGER NOT NULL)",
    # Text columns are BYTEA holding UTF-8: PostgreSQL TEXT cannot hold U+0000, which a record
    # may, and bytes are decoded as strictly as SQLite's (a bad byte names its record).
    """CREATE TABLE IF NOT EXISTS audit_records (
        idx BIGINT PRIMARY KEY CHECK (idx >= 0),
        timestamp BYTEA NOT NULL,
        party BYTEA NOT NULL,
        event BYTEA NOT NULL,
        job_id BYTEA NOT NULL,
        fields BYTEA NOT NULL,
        prev_hash BYTEA NOT NULL,
        record_hash BYTEA NOT NULL,
        signature BYTEA NOT NULL
    )""",
)
_PG_SCHEMA_LOCK: Final = 0x62756E64_61756474  # "bundaudt": serialises schema creation
_PG_INSERT: Final = """
INSERT INTO audit_records
    (idx, timestamp, party, event, job_id, fields, prev_hash, record_hash, signature)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
"""
_PG_SELECT_RANGE: Final = """
SELECT idx, timestamp, party, event, job_id, fields, prev_hash, record_hash, signature
FROM audit_records WHERE idx >= %s AND idx < %s ORDER BY idx
"""
_PG_SELECT_LAST: Final = """
SELECT idx, timestamp, party, event, job_id, fields, prev_hash, record_hash, signature
FROM audit_records ORDER BY idx DESC LIMIT 1
"""


class PostgresAuditStore(AuditStore):
    """A store in a PostgreSQL database, for a production node (``pip install 'bund[postgres]'``).

    Same semantics as :class:`SqliteAuditStore`: an ``audit_records`` table with ``idx`` as
    primary key and an ``audit_schema_version`` table (another version is refused); no UPDATE
    or DELETE in the code; an append takes a table lock that only writers contend for, and must
    carry the next index (:class:`AuditLogConflictError` otherwise). Every append is its own
    transaction with ``synchronous_commit = on``, so a returned record is in the server's
    flushed WAL. Text is stored as UTF-8 in BYTEA columns and decoded strictly on read.
    The tables live in the first schema of the ``search_path``; to use a schema of its own,
    add ``options=-csearch_path%3Dbund`` to the URL. The database is not trusted: verification
    shows whether it was altered.

    Args:
        dsn: A libpq connection string or ``postgresql://`` URL.
        read_only: Only read (verification, export): the session refuses writes and no table is
            created.

    Raises:
        AuditStoreUnavailableError: psycopg is not installed, ``dsn`` is malformed, or the server
            cannot be reached or refuses the login.
        AuditFormatError: The database holds no audit log (``read_only``) or another schema
            version.
    """

    def __init__(self, dsn: str, read_only: bool = False) -> None:
        try:
            import psycopg
        except ImportError:
            raise AuditStoreUnavailableError(
                "a postgresql:// audit store needs the psycopg driver: run "
                "`pip install 'bund[postgres]'`, or use an SQLite file path instead"
            ) from None
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise AuditStoreUnavailableError(
                f"not a PostgreSQL connection string ({exc}): give a URL such as "
                "postgresql://bund@db.example:5432/audit"
            ) from None
        #: The connection string without its password, for messages.
        self.where = make_conninfo("", **{k: v for k, v in params.items() if k != "password"})
        self._read_only = read_only
        self._lock = threading.Lock()
        if "connect_timeout" not in params:
            dsn = make_conninfo(dsn, connect_timeout=10)
        try:
            self._db: psycopg.Connection[tuple[Any, ...]] = psycopg.connect(dsn, autocommit=True)
        except psycopg.OperationalError as exc:
            raise AuditStoreUnavailableError(
                f"cannot connect to the audit database ({self.where}); check that the server is "
                f"up and that the URL's user, password and database are right: {exc}".rstrip()
            ) from None
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        self._db.execute("SET synchronous_commit = on")
        if self._read_only:
            self._db.execute("SET default_transaction_read_only = on")
        else:
            with self._db.transaction():
                self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_SCHEMA_LOCK,))
                for statement in _PG_SCHEMA:
                    self._db.execute(statement)
                self._db.execute(
                    "INSERT INTO audit_schema_version (version) SELECT %s "
                    "WHERE NOT EXISTS (SELECT 1 FROM audit_schema_version)",
                    (_SCHEMA_VERSION,),
                )
        [(table,)] = self._db.execute("SELECT to_regclass('audit_schema_version')").fetchall()
        if table is None:
            raise AuditFormatError(
                f"{self.where} holds no Bund audit log (no audit_schema_version table in the "
                "search_path): check the database and the URL's search_path option"
            )
        versions = self._db.execute("SELECT version FROM audit_schema_version").fetchall()
        if versions != [(_SCHEMA_VERSION,)]:
            raise AuditFormatError(
                f"{self.where} has audit schema version {versions}, this Bund reads version "
                f"{_SCHEMA_VERSION}: verify it with the Bund release that wrote it"
            )

    def append(self, record: AuditRecord) -> None:
        """Add ``record`` in one durable transaction (see :meth:`AuditStore.append`).

        Raises:
            io.UnsupportedOperation: The store was opened read-only.
            AuditLogConflictError: ``record`` is not the next record.
        """
        if self._read_only:
            raise io.UnsupportedOperation(f"{self.where} was opened read-only")
        row = (
            record.index,
            *(
                text.encode("utf-8")
                for text in (record.timestamp, record.party, record.event, record.job_id)
            ),
            _canonical(dict(record.fields)),
            record.prev_hash,
            record.record_hash,
            record.signature,
        )
        with self._lock, self._db.transaction():
            # Conflicts with itself only: readers go on, a second writer waits for the commit.
            self._db.execute("LOCK TABLE audit_records IN SHARE ROW EXCLUSIVE MODE")
            [(expected,)] = self._db.execute(
                "SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_records"
            ).fetchall()
            if record.index != expected:
                raise _conflict(record, expected)
            self._db.execute(_PG_INSERT, row)

    def read(self, start: int = 0, stop: int | None = None) -> list[AuditRecord]:
        """Records ``start`` to ``stop`` (see :meth:`AuditStore.read`)."""
        _check_range(start, stop)
        with self._lock:
            rows = self._db.execute(
                _PG_SELECT_RANGE,
                (min(start, _MAX_INDEX), _MAX_INDEX if stop is None else min(stop, _MAX_INDEX)),
            ).fetchall()
        return [_decode_row(row, self.where) for row in rows]

    def __len__(self) -> int:
        with self._lock:
            [(count,)] = self._db.execute("SELECT COUNT(*) FROM audit_records").fetchall()
        return int(count)

    def last(self) -> AuditRecord | None:
        """The record with the highest index, or None."""
        with self._lock:
            row = self._db.execute(_PG_SELECT_LAST).fetchone()
        return None if row is None else _decode_row(row, self.where)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


def open_audit_store(url_or_path: str | os.PathLike[str], read_only: bool = False) -> AuditStore:
    """Open the store that a node's configuration names.

    Args:
        url_or_path: A ``postgresql://`` (or ``postgres://``) URL for :class:`PostgresAuditStore`,
            or a file path for :class:`SqliteAuditStore`.
        read_only: Open only to read (verification, export).

    Returns:
        The store; the caller closes it.

    Raises:
        ValueError: A URL of another scheme.
        AuditStoreUnavailableError: See :class:`PostgresAuditStore`.
        AuditFormatError: See the two stores.
        FileNotFoundError: ``read_only`` and no SQLite file at the path.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with open_audit_store(f"{tmp}/audit.db") as store:
    ...         type(store).__name__
    'SqliteAuditStore'
    """
    if isinstance(url_or_path, str):
        if url_or_path.startswith(("postgresql://", "postgres://")):
            return PostgresAuditStore(url_or_path, read_only)
        scheme, separator, _ = url_or_path.partition("://")
        if separator:
            raise ValueError(
                f"audit store {scheme}:// is not supported: give a file path (SQLite) or a "
                "postgresql:// URL"
            )
    return SqliteAuditStore(url_or_path, read_only)


# -- JSON lines ------------------------------------------------------------------------------


def _record_line(record: AuditRecord) -> str:
    doc = {
        "event": record.event,
        "fields": dict(record.fields),
        "index": record.index,
        "job_id": record.job_id,
        "party": record.party,
        "prev_hash": record.prev_hash.hex(),
        "record_hash": record.record_hash.hex(),
        "signature": record.signature.hex(),
        "timestamp": record.timestamp,
    }
    return _canonical(doc).decode("utf-8") + "\n"


def export_jsonl(records: Iterable[AuditRecord], fp: IO[str]) -> None:
    """Write records as JSON lines: one canonical JSON object per line, bytes as lower-case hex.

    The line of a record is exactly what :func:`iter_jsonl` requires, so a regulator's copy can
    be checked byte for byte.

    Args:
        records: The records, in log order.
        fp: A text stream opened for writing, UTF-8.
    """
    for record in records:
        fp.write(_record_line(record))


def _record_from_doc(doc: object) -> AuditRecord:
    if not isinstance(doc, dict):
        raise AuditFormatError("not a JSON object")
    if set(doc) != _JSONL_KEYS:
        missing, extra = sorted(_JSONL_KEYS - set(doc)), sorted(set(doc) - _JSONL_KEYS)
        raise AuditFormatError(
            f"keys differ from the audit format: missing {missing}, extra {extra}"
        )
    raw: dict[str, bytes] = {}
    for name in ("prev_hash", "record_hash", "signature"):
        value = doc[name]
        if not isinstance(value, str) or not _HEX.fullmatch(value):
            raise AuditFormatError(f"{name} is not lower-case hex")
        raw[name] = bytes.fromhex(value)
    return AuditRecord(
        index=doc["index"],
        timestamp=doc["timestamp"],
        party=doc["party"],
        event=doc["event"],
        job_id=doc["job_id"],
        fields=doc["fields"],
        prev_hash=raw["prev_hash"],
        record_hash=raw["record_hash"],
        signature=raw["signature"],
    )


def iter_jsonl(fp: Iterable[str] | Iterable[bytes]) -> Iterator[AuditRecord]:
    """Read records lazily from JSON lines written by :func:`export_jsonl`.

    Parsing is strict: each line must be exactly the line that :func:`export_jsonl` writes for
    the record it holds (key order, no whitespace, lower-case hex, escapes, number form, final
    newline). So no byte of an exported file can change without the change being refused here
    or caught by :func:`verify_records`.

    Args:
        fp: Lines: a binary stream (preferred: an invalid UTF-8 byte is then reported with its
            line) or a text stream.

    Yields:
        The records, in file order.

    Raises:
        AuditFormatError: A line is malformed; ``index`` is its position (line number - 1).
    """
    position = 0
    try:
        lines: Iterable[str | bytes] = fp
        for position, raw in enumerate(lines):
            where = f"line {position + 1} (record {position})"
            if isinstance(raw, str):
                line = raw
            else:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise AuditFormatError(f"{where}: not UTF-8", position) from None
            try:
                if not line.endswith("\n"):
                    raise AuditFormatError("no final newline (a truncated file?)")
                record = _record_from_doc(_loads(line[:-1]))
                if _record_line(record) != line:
                    raise AuditFormatError(
                        "not in the canonical form that export writes "
                        "(whitespace, key order, escapes or number form differ)"
                    )
            except AuditFormatError as exc:
                raise AuditFormatError(f"{where}: {exc}", position) from None
            yield record
    except UnicodeDecodeError as exc:  # raised by a text stream, somewhere after `position`
        raise AuditFormatError(
            f"not UTF-8 after line {position}; open the file in binary mode to find the line"
        ) from exc


def read_jsonl(fp: Iterable[str] | Iterable[bytes]) -> list[AuditRecord]:
    """Read every record of an exported log (see :func:`iter_jsonl`).

    Pass ``iter_jsonl(fp)`` to :func:`verify_records` instead to have a malformed line reported
    as a bad record, after the records before it were verified.

    Args:
        fp: Lines, from a binary or text stream.

    Returns:
        The records, in file order.

    Raises:
        AuditFormatError: A line is malformed; ``index`` is its position.
    """
    return list(iter_jsonl(fp))


# -- the log -----------------------------------------------------------------------------------


class AuditLog:
    """A party's audit log: appends signed, chained records to a store, one at a time.

    On open it checks the store's last record (index, hash, signature with this key, party) and
    continues the chain after it; it refuses a log it cannot continue, rather than chain new
    records onto a tampered tail. The whole log is checked by :func:`verify_store`.

    Args:
        store: Where records go.
        signing_key: The party's Ed25519 audit key.
        party: The party's name, written into every record.
        clock: Returns the current time as RFC 3339 UTC, e.g. ``2026-11-24T09:30:00.000000Z``.

    Attributes:
        store: The store given.

    Raises:
        ValueError: ``party`` is empty.
        AuditLogCorruptError: The store's last record does not verify.

    >>> key = Ed25519PrivateKey.generate()
    >>> log = AuditLog(MemoryAuditStore(), key, "bank", lambda: "2026-11-24T09:30:00Z")
    >>> record = log.append("message_sent", "job-1", {"peer": "tax", "sha256": "ab", "size": 2})
    >>> record.index, record.event
    (0, 'message_sent')
    >>> verify_store(log.store, key.public_key()).ok
    True
    >>> checkpoint = log.checkpoint()
    >>> checkpoint.tree_size, verify_checkpoint(checkpoint, key.public_key())
    (1, True)
    """

    def __init__(
        self,
        store: AuditStore,
        signing_key: Ed25519PrivateKey,
        party: str,
        clock: Callable[[], str],
    ) -> None:
        _check_text("party", party)
        if not party:
            raise ValueError("party must not be empty")
        self.store = store
        self._key = signing_key
        self._party = party
        self._clock = clock
        self._lock = threading.Lock()
        self._next_index, self._prev_hash = self._tail()
        self._frontier: MerkleFrontier | None = None  # built by the first checkpoint

    def _tail(self) -> tuple[int, bytes]:
        try:
            last = self.store.last()
            size = len(self.store)
        except AuditFormatError as exc:
            raise AuditLogCorruptError(
                f"cannot continue the audit log: {exc}. Run `bund audit verify` to find the "
                "first bad record, keep the file as evidence and start a new log"
            ) from exc
        if last is None:
            return 0, GENESIS_HASH
        problem = _problem(last, size - 1, None, self._key.public_key(), self._party)
        if problem is not None:
            raise AuditLogCorruptError(
                f"cannot continue the audit log: its last record ({last.index}) does not verify: "
                f"{problem}. Run `bund audit verify` to find the first bad record, keep the file "
                "as evidence and start a new log"
            )
        return last.index + 1, last.record_hash

    def append(
        self, event: str, job_id: str = "", fields: Mapping[str, JsonScalar] | None = None
    ) -> AuditRecord:
        """Append one signed record; return it once the store holds it durably.

        Args:
            event: What happened, e.g. ``job_refused``.
            job_id: The job it concerns, or ``""``.
            fields: Flat JSON scalars (a message's sha256, size, tag and peer; a refusal's
                reason); never payload content.

        Returns:
            The record as stored.

        Raises:
            ValueError: ``event`` is empty, or the clock's value is not RFC 3339 UTC.
            AuditFormatError: A field is nested, bytes, or a non-finite number; nothing is
                appended.
        """
        if not event:
            raise ValueError("event must not be empty")
        with self._lock:
            timestamp = self._now()
            unsigned = AuditRecord(
                index=self._next_index,
                timestamp=timestamp,
                party=self._party,
                event=event,
                job_id=job_id,
                fields={} if fields is None else fields,
                prev_hash=self._prev_hash,
                record_hash=b"",
                signature=b"",
            )
            leaf = unsigned.leaf_hash()
            record_hash = chain_hash(self._prev_hash, leaf)
            record = dataclasses.replace(
                unsigned,
                record_hash=record_hash,
                signature=self._key.sign(SIGNING_DOMAIN + record_hash),
            )
            self.store.append(record)
            self._next_index, self._prev_hash = record.index + 1, record_hash
            if self._frontier is not None:
                self._frontier.append(leaf)
            return record

    def checkpoint(self) -> Checkpoint:
        """Sign the log's current size and Merkle root, for the regulator to keep.

        Appends nothing. A checkpoint is a statement about the log, not an event in it: were it
        recorded, every checkpoint would grow the log it describes, so an idle node could never
        checkpoint the same log twice. The regulator's pull that fetches it is recorded anyway,
        as an ``rpc`` record, by the node's audit interceptor.

        The first call reads the whole store once, in batches, to build the Merkle frontier,
        and refuses to sign unless every stored record's hash chain leads to the last record
        (whose signature was checked on open); from then on, appends keep the frontier, and a
        checkpoint costs O(log n) hashes and one signature.

        Returns:
            The signed checkpoint.

        Raises:
            ValueError: The clock's value is not RFC 3339 UTC.
            AuditLogCorruptError: The stored records do not chain up to the last one: the store
                was altered, and no checkpoint is signed over it.
        """
        with self._lock:
            timestamp = self._now()
            if self._frontier is None:
                self._frontier = self._build_frontier()
            unsigned = Checkpoint(
                party=self._party,
                tree_size=len(self._frontier),
                root_hash=self._frontier.root(),
                timestamp=timestamp,
                signature=b"",
            )
            return dataclasses.replace(unsigned, signature=self._key.sign(unsigned.signed_bytes()))

    def _now(self) -> str:
        timestamp = self._clock()
        if not isinstance(timestamp, str) or not _TIMESTAMP.fullmatch(timestamp):
            raise ValueError(
                f"clock returned {timestamp!r}: it must return RFC 3339 UTC such as "
                "2026-11-24T09:30:00.000000Z"
            )
        return timestamp

    def _build_frontier(self) -> MerkleFrontier:
        """The frontier of the stored records, checking that they chain up to the last one."""
        frontier = MerkleFrontier()
        prev = GENESIS_HASH

        def corrupt(why: str) -> AuditLogCorruptError:
            return AuditLogCorruptError(
                f"cannot sign a checkpoint: {why}. Run `bund audit verify` to find the first bad "
                "record, keep the store as evidence and start a new log"
            )

        try:
            for start in range(0, self._next_index, _FRONTIER_BATCH):
                for record in self.store.read(start, start + _FRONTIER_BATCH):
                    leaf = record.leaf_hash()
                    if (
                        record.index != len(frontier)
                        or not hmac.compare_digest(record.prev_hash, prev)
                        or not hmac.compare_digest(record.record_hash, chain_hash(prev, leaf))
                    ):
                        raise corrupt(f"stored record {len(frontier)} breaks the hash chain")
                    frontier.append(leaf)
                    prev = record.record_hash
        except AuditFormatError as exc:
            raise corrupt(str(exc)) from exc
        if len(frontier) != self._next_index or not hmac.compare_digest(prev, self._prev_hash):
            raise corrupt(
                f"the store holds {len(frontier)} chained records, the log expects "
                f"{self._next_index}"
            )
        return frontier
