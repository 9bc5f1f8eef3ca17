"""Verifying a log on its own: indices, hash chain and signatures, naming the first bad record.

:func:`verify_records` catches a record that was altered, removed, reordered or inserted. It
cannot see records cut off the end of a log (truncation), nor a log rewritten and re-signed with
the party's own key: those need a signed tree head held by someone else
(:func:`~bund.parties.audit.check_log_against_checkpoints`).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bund.compute.merkle import HASH_SIZE, chain_hash
from bund.parties.audit.records import (
    GENESIS_HASH,
    SIGNATURE_SIZE,
    SIGNING_DOMAIN,
    AuditFormatError,
    AuditRecord,
)

if TYPE_CHECKING:
    from bund.parties.audit.stores import AuditStore


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


def record_problem(
    record: AuditRecord,
    index: int,
    prev_hash: bytes | None,
    public_key: Ed25519PublicKey,
    party: str | None,
) -> str | None:
    """Why ``record`` cannot be record ``index`` after ``prev_hash``, or None when it can.

    Args:
        record: The record to judge.
        index: Its position in the log.
        prev_hash: The previous record's hash, or None to leave the link unchecked (a log's last
            record, judged alone).
        public_key: The party's audit public key.
        party: When given, the party the record must name.

    Returns:
        The first problem found, in words, or None.
    """
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

    ``records`` may be lazy (:func:`~bund.parties.audit.iter_jsonl`): a record that cannot even
    be read there is reported at its position instead of raising, so the first bad record is
    still the one named.

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
        for _ in verified(records, public_key, party):
            count += 1
    except BadRecord as bad:
        return VerificationReport(False, bad.index, bad.index, bad.reason)
    return VerificationReport(True, count, None, "")


class BadRecord(Exception):
    """Raised by :func:`verified` at the first record that fails.

    Attributes:
        index: Its position in the log.
        reason: Why it fails.
    """

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


def verified(
    records: Iterable[AuditRecord], public_key: Ed25519PublicKey, party: str | None
) -> Iterator[AuditRecord]:
    """Yield each record once it verifies, as :func:`verify_records` checks it.

    Raises:
        BadRecord: At the first record that fails, or that ``records`` reports it cannot read.
        AuditFormatError: ``records`` failed to read a record without saying which one.
    """
    prev = GENESIS_HASH
    iterator = iter(records)
    position = 0
    while True:
        try:
            record = next(iterator, None)
        except AuditFormatError as exc:
            if exc.index is None:
                raise
            raise BadRecord(position, str(exc)) from None
        if record is None:
            return
        problem = record_problem(record, position, prev, public_key, party)
        if problem is not None:
            raise BadRecord(position, problem)
        prev = record.record_hash
        position += 1
        yield record


def _then_raise(records: Iterable[AuditRecord], exc: AuditFormatError) -> Iterator[AuditRecord]:
    yield from records
    raise exc


def read_readable(
    store: AuditStore, start: int, stop: int
) -> tuple[list[AuditRecord], AuditFormatError | None]:
    """Records ``start <= index < stop`` up to the first one the store cannot decode, and why.

    A node serves its log to the regulator this way: the records before an undecodable one (its
    bytes altered into invalid UTF-8 or non-canonical JSON) still reach the regulator, and the
    error names the record, so the regulator reports the first bad index rather than a failed
    pull.

    Args:
        store: The store to read.
        start: The first index.
        stop: One past the last index.

    Returns:
        The readable records from ``start``, and the error at the first record that is not
        (``None`` when every record read).

    Raises:
        AuditFormatError: The store failed without naming a record.
    """
    try:
        return store.read(start, stop), None
    except AuditFormatError as exc:
        if exc.index is None or not start <= exc.index < stop:
            raise
        return store.read(start, exc.index), exc


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
