"""A party's audit log: signed, chained records appended to a store, and signed tree heads.

Every record is bound to the one before it and signed:

* ``leaf_hash = SHA-256(0x00 || body)``, the RFC 6962 leaf hash of the record's canonical body
  (:meth:`AuditRecord.body`), so the signed checkpoints that come with the regulator's pull
  (tree size and Merkle root over the leaf hashes) need no second hash per record;
* ``record_hash = SHA-256(0x02 || prev_hash || leaf_hash)``
  (:func:`~bund.compute.merkle.chain_hash`), with ``prev_hash`` of record 0 equal to 32 zero
  bytes;
* ``signature = Ed25519(SIGNING_DOMAIN || record_hash)`` with the node's audit key, where
  ``SIGNING_DOMAIN`` is ``bund/audit/v1`` and a zero byte.

``docs/audit.md`` says what each check proves.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bund.compute.errors import BundError
from bund.compute.merkle import MerkleFrontier, chain_hash
from bund.parties.audit.records import (
    GENESIS_HASH,
    SIGNING_DOMAIN,
    AuditFormatError,
    AuditRecord,
    JsonScalar,
    check_text,
    is_timestamp,
    parse_timestamp,
)
from bund.parties.audit.stores import AuditStore
from bund.parties.audit.treehead import Checkpoint
from bund.parties.audit.verify import record_problem

_FRONTIER_BATCH: Final = 10_000  # records read at a time to build a log's Merkle frontier

log = logging.getLogger("bund.audit")


class AuditLogCorruptError(BundError):
    """An audit log that cannot be continued: a stored record does not verify.

    Attributes:
        first_bad_index: The first stored record that fails, when known.
    """

    def __init__(self, message: str, first_bad_index: int | None = None) -> None:
        super().__init__(message)
        self.first_bad_index = first_bad_index


class AuditLog:
    """A party's audit log: appends signed, chained records to a store, one at a time.

    On open it checks the store's last record (index, hash, signature with this key, party) and
    continues the chain after it; it refuses a log it cannot continue, rather than chain new
    records onto a tampered tail. The first :meth:`checkpoint` reads every stored record and
    checks that they chain up to that last one; if one does not, the log is *sealed*: from then
    on every :meth:`append` and :meth:`checkpoint` raises :class:`AuditLogCorruptError` naming
    the first bad record, so nothing more is appended onto a log that is no longer evidence
    (and every action that must be recorded first is refused). A node signs a checkpoint as it
    starts, so it finds out at once. The whole log, signatures included, is checked by
    :func:`~bund.parties.audit.verify_store`.

    Timestamps never go back: when the clock returns a time before the last record's (a clock
    stepped back), the log writes the last time again until the clock catches up, so one log's
    timestamps are non-decreasing; the witnesses' and the regulator's clocks catch a clock that
    is wrong (``docs/audit.md``).

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

    >>> from bund.parties.audit import MemoryAuditStore, verify_checkpoint, verify_store
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
        check_text("party", party)
        if not party:
            raise ValueError("party must not be empty")
        self.store = store
        self._key = signing_key
        self._party = party
        self._clock = clock
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()  # one frontier build at a time, appends go on
        self._last_time: tuple[dt.datetime, str] | None = None
        self._next_index, self._prev_hash = self._tail()
        self._frontier: MerkleFrontier | None = None  # built by the first checkpoint
        self._sealed: AuditLogCorruptError | None = None

    @property
    def party(self) -> str:
        """Whose log this is."""
        return self._party

    @property
    def sealed(self) -> AuditLogCorruptError | None:
        """Why the log refuses to go on (a stored record does not verify), or None."""
        return self._sealed

    def _tail(self) -> tuple[int, bytes]:
        try:
            last = self.store.last()
            size = len(self.store)
        except AuditFormatError as exc:
            raise AuditLogCorruptError(
                f"cannot continue the audit log: {exc}. Run `bund audit verify` to find the "
                "first bad record, keep the file as evidence and start a new log",
                exc.index,
            ) from exc
        if last is None:
            return 0, GENESIS_HASH
        problem = record_problem(last, size - 1, None, self._key.public_key(), self._party)
        if problem is not None:
            raise AuditLogCorruptError(
                f"cannot continue the audit log: its last record ({last.index}) does not verify: "
                f"{problem}. Run `bund audit verify` to find the first bad record, keep the file "
                "as evidence and start a new log",
                size - 1,
            )
        if is_timestamp(last.timestamp):
            self._last_time = (parse_timestamp(last.timestamp), last.timestamp)
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
            AuditLogCorruptError: The log is sealed (:attr:`sealed`); nothing is appended.
        """
        (record,) = self._append([(event, job_id, fields)])
        return record

    def append_many(
        self, entries: Sequence[tuple[str, str, Mapping[str, JsonScalar] | None]]
    ) -> list[AuditRecord]:
        """Append several signed records in one durable step (a group commit); return them.

        The records are chained and signed one after another, exactly as :meth:`append` would,
        and handed to the store at once (:meth:`AuditStore.append_many`): a store that commits
        them in one transaction syncs its disk once for all of them, and keeps all or none. For
        many actions that each must be recorded first (the requests to a standing contract),
        this costs one sync per group instead of one per action. If a store that appends one by
        one fails part-way, the log continues after what it kept.

        Args:
            entries: ``(event, job_id, fields)`` per record, in order; see :meth:`append`.

        Returns:
            The records as stored, in order.

        Raises:
            ValueError: An event is empty, or the clock's value is not RFC 3339 UTC.
            AuditFormatError: A field is nested, bytes, or a non-finite number; nothing is
                appended.
            AuditLogCorruptError: The log is sealed (:attr:`sealed`); nothing is appended.
        """
        return self._append(entries)

    def _append(
        self, entries: Sequence[tuple[str, str, Mapping[str, JsonScalar] | None]]
    ) -> list[AuditRecord]:
        """Chain, sign and store ``entries``: one record through ``store.append``, more at once."""
        if any(not event for event, _, _ in entries):
            raise ValueError("event must not be empty")
        with self._lock:
            if self._sealed is not None:
                events = ", ".join(sorted({repr(event) for event, _, _ in entries}))
                raise AuditLogCorruptError(
                    f"the audit log refuses to record {events}: {self._sealed}",
                    self._sealed.first_bad_index,
                )
            timestamp = self._now()
            records: list[AuditRecord] = []
            leaves: list[bytes] = []
            index, prev_hash = self._next_index, self._prev_hash
            for event, job_id, fields in entries:
                unsigned = AuditRecord(
                    index=index,
                    timestamp=timestamp,
                    party=self._party,
                    event=event,
                    job_id=job_id,
                    fields={} if fields is None else fields,
                    prev_hash=prev_hash,
                    record_hash=b"",
                    signature=b"",
                )
                leaf = unsigned.leaf_hash()
                record_hash = chain_hash(prev_hash, leaf)
                records.append(
                    dataclasses.replace(
                        unsigned,
                        record_hash=record_hash,
                        signature=self._key.sign(SIGNING_DOMAIN + record_hash),
                    )
                )
                leaves.append(leaf)
                index, prev_hash = index + 1, record_hash
            try:
                if len(records) == 1:
                    self.store.append(records[0])
                elif records:
                    self.store.append_many(records)
            except BaseException:
                if len(records) > 1:  # a store that appends one by one may have kept a prefix
                    self._next_index, self._prev_hash = self._tail()
                    self._frontier = None  # rebuilt, from the store, by the next checkpoint
                raise
            self._next_index, self._prev_hash = index, prev_hash
            if self._frontier is not None:
                for leaf in leaves:
                    self._frontier.append(leaf)
            return records

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
                was altered, no checkpoint is signed over it, and the log is sealed.
        """
        self._ensure_frontier()
        with self._lock:
            if self._sealed is not None or self._frontier is None:
                raise self._sealed_error()
            timestamp = self._now()
            unsigned = Checkpoint(
                party=self._party,
                tree_size=len(self._frontier),
                root_hash=self._frontier.root(),
                timestamp=timestamp,
                signature=b"",
            )
            return dataclasses.replace(unsigned, signature=self._key.sign(unsigned.signed_bytes()))

    def _sealed_error(self) -> AuditLogCorruptError:
        sealed = self._sealed
        if sealed is None:
            return AuditLogCorruptError("the audit log's Merkle frontier is not built")
        return AuditLogCorruptError(str(sealed), sealed.first_bad_index)

    def _ensure_frontier(self) -> None:
        """Build the Merkle frontier once, reading the store without holding up appends.

        The stored records up to the size seen on entry are read and checked outside the append
        lock (a long log takes seconds); those appended meanwhile are then read under it, and the
        chain must end at the log's last record. A break seals the log.
        """
        with self._build_lock:
            with self._lock:
                if self._sealed is not None:
                    raise self._sealed_error()
                if self._frontier is not None:
                    return
                size, last = self._next_index, self._prev_hash
            try:
                frontier = MerkleFrontier()
                prev = self._extend(frontier, GENESIS_HASH, size)
                if not hmac.compare_digest(prev, last):
                    raise self._corrupt(f"stored record {size - 1} is not the log's last", size - 1)
                with self._lock:  # the records appended meanwhile; further appends wait
                    prev = self._extend(frontier, prev, self._next_index)
                    if not hmac.compare_digest(prev, self._prev_hash):
                        raise self._corrupt("the store changed while it was read", len(frontier))
                    self._frontier = frontier
            except AuditLogCorruptError as exc:
                with self._lock:
                    self._sealed = exc
                log.error("%s's audit log is sealed: %s", self._party, exc)
                raise

    def _now(self) -> str:
        """The clock's time, or the last time written if the clock went back (held lock)."""
        timestamp = self._clock()
        if not is_timestamp(timestamp):
            raise ValueError(
                f"clock returned {timestamp!r}: it must return RFC 3339 UTC such as "
                "2026-11-24T09:30:00.000000Z"
            )
        when = parse_timestamp(timestamp)
        if self._last_time is not None and when < self._last_time[0]:
            log.warning(
                "%s's clock reads %s, before the audit log's last time %s: writing that time "
                "until the clock catches up",
                self._party,
                timestamp,
                self._last_time[1],
            )
            return self._last_time[1]
        self._last_time = (when, timestamp)
        return timestamp

    @staticmethod
    def _corrupt(why: str, index: int | None) -> AuditLogCorruptError:
        return AuditLogCorruptError(
            f"cannot sign a checkpoint: {why}. Run `bund audit verify` to find the first bad "
            "record, keep the store as evidence and start a new log",
            index,
        )

    def _extend(self, frontier: MerkleFrontier, prev: bytes, stop: int) -> bytes:
        """Add the stored records from ``len(frontier)`` to ``stop``, checking their chain.

        Returns:
            The hash of the last record added (``prev`` when none).

        Raises:
            AuditLogCorruptError: A record is missing, undecodable or breaks the chain.
        """
        try:
            for start in range(len(frontier), stop, _FRONTIER_BATCH):
                records = self.store.read(start, min(start + _FRONTIER_BATCH, stop))
                for record in records:
                    leaf = record.leaf_hash()
                    if (
                        record.index != len(frontier)
                        or not hmac.compare_digest(record.prev_hash, prev)
                        or not hmac.compare_digest(record.record_hash, chain_hash(prev, leaf))
                    ):
                        index = len(frontier)
                        raise self._corrupt(f"stored record {index} breaks the hash chain", index)
                    frontier.append(leaf)
                    prev = record.record_hash
                if len(records) < min(start + _FRONTIER_BATCH, stop) - start:
                    break
        except AuditFormatError as exc:
            index = len(frontier) if exc.index is None else exc.index
            raise self._corrupt(str(exc), index) from exc
        if len(frontier) != stop:
            raise self._corrupt(
                f"the store holds {len(frontier)} chained records, the log expects {stop}",
                len(frontier),
            )
        return prev
