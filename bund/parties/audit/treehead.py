"""Signed tree heads ("checkpoints") of a log, and the regulator's check of a log against them.

In Bund, a *checkpoint* is only this: a party's signed statement of its log's size and Merkle
root, an RFC 6962 tree head (the ``GetCheckpoint`` RPC fetches one). The party signs it
(:meth:`~bund.parties.audit.AuditLog.checkpoint`), the regulator keeps it, and
:func:`check_log_against_checkpoints` later finds a log that no longer matches it, or two
checkpoints of one size that disagree (equivocation): what the hash chain alone cannot see.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bund.compute.merkle import HASH_SIZE, MerkleFrontier
from bund.parties.audit.records import (
    SIGNATURE_SIZE,
    AuditFormatError,
    AuditRecord,
    check_text,
    is_timestamp,
)
from bund.parties.audit.verify import BadRecord, verified

#: Prefix of every signed checkpoint; neither it nor the records' domain is a prefix of the other.
CHECKPOINT_DOMAIN: Final = b"bund/checkpoint/v1\x00"


@dataclass(frozen=True)
class Checkpoint:
    """A party's signed statement of its log's size and Merkle root (an RFC 6962 tree head).

    The party signs one on request (:meth:`~bund.parties.audit.AuditLog.checkpoint`) and the
    regulator keeps it. Having signed it, the party can no longer present a log whose first
    ``tree_size`` records hash to another root, nor one with fewer records, without being caught
    (:func:`check_log_against_checkpoints`). Construction checks types only, so that a received
    checkpoint can be represented and then judged by :func:`verify_checkpoint`.

    Attributes:
        party: The party whose log it is.
        tree_size: How many records it covers (records ``0 .. tree_size - 1``).
        root_hash: :func:`~bund.compute.merkle.merkle_root` over those records' leaf hashes.
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
            check_text(f"checkpoint {name}", getattr(self, name))
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
        or not is_timestamp(checkpoint.timestamp)
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
        records: The log, from record 0, in order; may be lazy
            (:func:`~bund.parties.audit.iter_jsonl`).
        checkpoints: The party's checkpoints that the regulator holds, in any order.
        public_key: The party's audit public key.
        party: The party, as its certificate names it; every record and checkpoint must name it.

    Returns:
        A report naming the fault, the checkpoint(s) and the record, if anything is wrong.

    Raises:
        AuditFormatError: ``records`` failed to read a record without saying which one.

    >>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    >>> from bund.parties.audit import AuditLog, MemoryAuditStore
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
        for record in verified(records, public_key, party):
            report = rewritten()
            if report is not None:
                return report
            frontier.append(record.leaf_hash())
    except BadRecord as bad:
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
