"""What one node knows of the requests it took under each contract: an index of its audit log.

The audit log is the record: every request taken is a signed ``serving_request`` record (its
sequence number, nonce, digest, number of ids and UTC day), every root a ``serving_root``
record, each durable before the answer is released. This ledger (``state/serving.db``) indexes
those records, so a node can refuse a replayed nonce, count what a contract has served today
and in all, and build a root or an inclusion proof, without reading its log. It is written after
the records (with ``synchronous=NORMAL``: no sync of its own), together with the audit index it
has reached, in one transaction; on start the node re-reads the log from there
(:meth:`ServingLedger.catch_up`), so a crash between the two, or a lost tail of this file, is
repaired from the log. Deleting the file costs one full read of the log.

Reservations in flight (taken, not yet recorded) are kept in memory: a nonce is fresh when it
is neither indexed nor in flight, and the counts include what is in flight, so concurrent
requests cannot together pass a limit.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bund.parties.audit import AuditRecord, JsonScalar
from bund.parties.lifecycle.events import Event, Key
from bund.parties.serving.errors import ReplayedRequestError, ServingLimitError

_SCHEMA = (
    (
        "CREATE TABLE IF NOT EXISTS requests (contract TEXT NOT NULL, seq INTEGER NOT NULL, "
        "nonce BLOB NOT NULL, digest BLOB NOT NULL, ids INTEGER NOT NULL, day TEXT NOT NULL, "
        "audit_index INTEGER NOT NULL, PRIMARY KEY (contract, seq))"
    ),
    "CREATE UNIQUE INDEX IF NOT EXISTS request_nonces ON requests (contract, nonce)",
    "CREATE INDEX IF NOT EXISTS request_digests ON requests (contract, digest)",
    (
        "CREATE TABLE IF NOT EXISTS roots (contract TEXT NOT NULL, first_seq INTEGER NOT NULL, "
        "count INTEGER NOT NULL, root BLOB NOT NULL, audit_index INTEGER NOT NULL, "
        "PRIMARY KEY (contract, first_seq))"
    ),
    (
        "CREATE TABLE IF NOT EXISTS indexed (one INTEGER PRIMARY KEY CHECK (one = 1), "
        "upto INTEGER NOT NULL)"
    ),
)


@dataclass(frozen=True)
class TakenRequest:
    """One request as a node recorded it (a row of the index)."""

    contract: str
    seq: int
    nonce: bytes
    digest: bytes
    ids: int
    day: str
    audit_index: int


@dataclass(frozen=True)
class Root:
    """A signed root of the request digests ``first_seq .. first_seq + count - 1``."""

    contract: str
    first_seq: int
    count: int
    root: bytes
    audit_index: int


@dataclass
class Usage:
    """What a contract has used at this node (in flight included), and where its roots stand."""

    #: The next request's sequence number (requests recorded so far).
    next_seq: int = 0
    #: The first sequence number not yet under a root.
    rooted: int = 0
    #: Ids scored in all, and on ``day`` (UTC), in flight included.
    ids_total: int = 0
    day: str = ""
    ids_day: int = 0
    #: Nonces reserved and not yet recorded.
    in_flight: set[bytes] = field(default_factory=set)


class ServingLedger:
    """The index of this node's serving records (``state/serving.db``); thread-safe."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._usage: dict[str, Usage] = {}
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # the audit log is the durable record
            for statement in _SCHEMA:
                self._db.execute(statement)

    # -- reading -------------------------------------------------------------------------------

    def indexed_upto(self) -> int:
        """The audit index up to which (exclusive) the log has been indexed."""
        with self._lock:
            row = self._db.execute("SELECT upto FROM indexed").fetchone()
        return 0 if row is None else int(row[0])

    def _load(self, contract: str, day: str | None) -> Usage:
        """The contract's usage, read once from the index, with ``day``'s count (lock held)."""
        usage = self._usage.get(contract)
        if usage is None:
            count, ids = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(ids), 0) FROM requests WHERE contract = ?",
                (contract,),
            ).fetchone()
            (rooted,) = self._db.execute(
                "SELECT COALESCE(MAX(first_seq + count), 0) FROM roots WHERE contract = ?",
                (contract,),
            ).fetchone()
            usage = Usage(next_seq=int(count), rooted=int(rooted), ids_total=int(ids))
            self._usage[contract] = usage
        if day is not None and usage.day != day:
            (today,) = self._db.execute(
                "SELECT COALESCE(SUM(ids), 0) FROM requests WHERE contract = ? AND day = ?",
                (contract, day),
            ).fetchone()
            usage.day, usage.ids_day = day, int(today)
        return usage

    def usage(self, contract: str, day: str | None) -> Usage:
        """A copy of what ``contract`` has used, with ``day``'s count (in flight included)."""
        with self._lock:
            u = self._load(contract, day)
            return Usage(u.next_seq, u.rooted, u.ids_total, u.day, u.ids_day, set(u.in_flight))

    def digests(self, contract: str, first: int, stop: int) -> list[bytes]:
        """The digests of requests ``first`` to ``stop - 1``, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, digest FROM requests WHERE contract = ? AND seq >= ? AND seq < ? "
                "ORDER BY seq",
                (contract, first, stop),
            ).fetchall()
        if [seq for seq, _ in rows] != list(range(first, stop)):
            raise LookupError(f"the index lacks requests of {contract} in {first}..{stop - 1}")
        return [bytes(d) for _, d in rows]

    def unrooted_contracts(self) -> set[str]:
        """The contracts with requests recorded after their last root."""
        with self._lock:
            rows = self._db.execute(
                "SELECT r.contract FROM requests r GROUP BY r.contract HAVING MAX(r.seq) >= "
                "(SELECT COALESCE(MAX(o.first_seq + o.count), 0) FROM roots o "
                "WHERE o.contract = r.contract)"
            ).fetchall()
        return {str(row[0]) for row in rows}

    def find(self, contract: str, digest: bytes) -> int | None:
        """The sequence number of the request with ``digest``, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq FROM requests WHERE contract = ? AND digest = ?", (contract, digest)
            ).fetchone()
        return None if row is None else int(row[0])

    def root_of(self, contract: str, seq: int) -> Root | None:
        """The root that covers request ``seq``, or None while none does."""
        with self._lock:
            row = self._db.execute(
                "SELECT first_seq, count, root, audit_index FROM roots WHERE contract = ? AND "
                "first_seq <= ? AND ? < first_seq + count",
                (contract, seq, seq),
            ).fetchone()
        if row is None:
            return None
        return Root(contract, int(row[0]), int(row[1]), bytes(row[2]), int(row[3]))

    # -- reservations --------------------------------------------------------------------------

    def reserve(
        self,
        contract: str,
        nonce: bytes,
        ids: int,
        day: str,
        max_daily: int,
        max_total: int | None,
    ) -> None:
        """Hold ``nonce`` and ``ids`` of the day's and the total limit for a request in flight.

        Raises:
            ReplayedRequestError: The nonce was seen before (recorded, or in flight).
            ServingLimitError: The request would pass the daily or the total limit.
        """
        with self._lock:
            usage = self._load(contract, day)
            seen = nonce in usage.in_flight or (
                self._db.execute(
                    "SELECT 1 FROM requests WHERE contract = ? AND nonce = ?", (contract, nonce)
                ).fetchone()
                is not None
            )
            if seen:
                raise ReplayedRequestError(
                    f"contract {contract} has seen this request's nonce: a replayed request is "
                    "refused (send each request once, with fresh random bytes)"
                )
            if usage.ids_day + ids > max_daily:
                left = max(0, max_daily - usage.ids_day)
                raise ServingLimitError(
                    f"contract {contract}'s daily limit of {max_daily:,} applicants is spent "
                    f"({left:,} left today, {ids:,} asked); it resets at 00:00 UTC"
                )
            if max_total is not None and usage.ids_total + ids > max_total:
                left = max(0, max_total - usage.ids_total)
                raise ServingLimitError(
                    f"contract {contract}'s total limit of {max_total:,} applicants is spent "
                    f"({left:,} left, {ids:,} asked); a new contract needs new approvals"
                )
            usage.in_flight.add(nonce)
            usage.ids_day += ids
            usage.ids_total += ids

    def release(self, contract: str, nonce: bytes, ids: int, day: str) -> None:
        """Give back a reservation whose request was never recorded (its record failed)."""
        with self._lock:
            usage = self._load(contract, day)
            if nonce in usage.in_flight:
                usage.in_flight.discard(nonce)
                usage.ids_total -= ids
                if usage.day == day:
                    usage.ids_day -= ids

    # -- what the audit log took ---------------------------------------------------------------

    def next_seqs(self, contracts: Iterable[str]) -> dict[str, int]:
        """The next sequence number of each contract (for the records about to be written)."""
        with self._lock:
            return {c: self._load(c, None).next_seq for c in set(contracts)}

    def recorded(self, requests: Sequence[TakenRequest], roots: Sequence[Root], upto: int) -> None:
        """Index requests and roots whose audit records are durable, up to audit index ``upto``."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO requests (contract, seq, nonce, digest, ids, day, "
                    "audit_index) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (r.contract, r.seq, r.nonce, r.digest, r.ids, r.day, r.audit_index)
                        for r in requests
                    ],
                )
                self._db.executemany(
                    "INSERT OR IGNORE INTO roots (contract, first_seq, count, root, audit_index) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(r.contract, r.first_seq, r.count, r.root, r.audit_index) for r in roots],
                )
                self._db.execute(
                    "INSERT INTO indexed (one, upto) VALUES (1, ?) ON CONFLICT (one) DO UPDATE "
                    "SET upto = MAX(upto, excluded.upto)",
                    (upto,),
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            for r in requests:
                usage = self._usage.get(r.contract)
                if usage is not None and r.seq >= usage.next_seq:
                    usage.next_seq = r.seq + 1
                    if r.nonce in usage.in_flight:
                        usage.in_flight.discard(r.nonce)
                    else:  # indexed from the log (catch_up): not counted yet
                        usage.ids_total += r.ids
                        if usage.day == r.day:
                            usage.ids_day += r.ids
            for root in roots:
                usage = self._usage.get(root.contract)
                if usage is not None:
                    usage.rooted = max(usage.rooted, root.first_seq + root.count)

    def catch_up(self, records: Iterable[AuditRecord]) -> int:
        """Index the serving records of ``records`` (the log after :meth:`indexed_upto`).

        Returns:
            How many requests and roots were indexed.

        Raises:
            ValueError: A serving record lacks a field this code writes.
        """
        requests: list[TakenRequest] = []
        roots: list[Root] = []
        upto = self.indexed_upto()
        for record in records:
            upto = max(upto, record.index + 1)
            f = record.fields
            if record.event == Event.SERVING_REQUEST:
                requests.append(
                    TakenRequest(
                        record.job_id,
                        _int(f, Key.SEQ),
                        _hex(f, Key.NONCE),
                        _hex(f, Key.REQUEST_SHA256),
                        _int(f, Key.IDS),
                        _text(f, Key.DAY),
                        record.index,
                    )
                )
            elif record.event == Event.SERVING_ROOT:
                roots.append(
                    Root(
                        record.job_id,
                        _int(f, Key.FIRST_SEQ),
                        _int(f, Key.COUNT),
                        _hex(f, Key.ROOT_HASH),
                        record.index,
                    )
                )
        self.recorded(requests, roots, upto)
        return len(requests) + len(roots)

    def forget_usage(self, contract: str) -> None:
        """Drop the cached usage of a contract that ended (its index rows stay, as evidence)."""
        with self._lock:
            self._usage.pop(contract, None)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


def _int(fields: Mapping[str, JsonScalar], key: str) -> int:
    value = fields.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"a serving record lacks its {key!r}")
    return value


def _text(fields: Mapping[str, JsonScalar], key: str) -> str:
    value = fields.get(key)
    if not isinstance(value, str):
        raise ValueError(f"a serving record lacks its {key!r}")
    return value


def _hex(fields: Mapping[str, JsonScalar], key: str) -> bytes:
    return bytes.fromhex(_text(fields, key))
