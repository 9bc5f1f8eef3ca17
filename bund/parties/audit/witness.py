"""Witness cosigning: nodes hold each other's signed tree heads between the regulator's audits.

A party can rewrite its own log and re-sign it with its own key; the chain then verifies, and
the regulator's checkpoints catch it only for records older than the regulator's last audit.
So every node also presents its current signed tree head (a :class:`Checkpoint`) to its peers,
periodically and when a job closes, and each peer acts as a **witness**: it verifies the head
with the party's audit key, checks it against the heads it already holds of that party (a log
of one size has one root; a log never shrinks), keeps it durably (:class:`WitnessStore`),
countersigns it with its own audit key (:class:`WitnessedHead`, with its own clock's time of
receipt) and answers with its own head, so that one call witnesses both directions
(:meth:`Witness.answer`, :meth:`Witness.present`). The regulator later collects what each
witness holds and holds every party's log to all of it. A rewrite of anything a witness saw
then contradicts the witness; what a party can still rewrite unseen is its tail since its last
exchange (``docs/audit.md`` states the window).

A head that contradicts one held is kept as evidence and recorded in the witness's own audit
log (``witness_conflict``); a head signed with another key than the one pinned for the party is
refused and recorded (``witness_key_changed``). :class:`WitnessExchange` is the node's thread
that presents heads to every peer every interval and, on request, when a job closes.

The cosignature is domain-separated from records and checkpoints::

    signed = "bund/cosignature/v1" || 0x00 || u32 len || witness (UTF-8)
             || u32 len || received_at (UTF-8) || checkpoint.signed_bytes()
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import logging
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bund.compute.errors import BundError
from bund.compute.merkle import HASH_SIZE
from bund.parties.audit.log import AuditLog
from bund.parties.audit.records import SIGNATURE_SIZE, check_text, is_timestamp, parse_timestamp
from bund.parties.audit.treehead import Checkpoint, verify_checkpoint
from bund.parties.lifecycle.events import Event, Key

_log = logging.getLogger("bund.witness")

#: Prefix of every cosignature; no other signed domain is a prefix of it, nor it of another.
COSIGNATURE_DOMAIN: Final = b"bund/cosignature/v1\x00"
#: The version of ``witness.db``'s tables that this code reads and writes.
WITNESS_SCHEMA_VERSION: Final = 1
#: Bytes of a raw Ed25519 public key.
_RAW_KEY_SIZE: Final = 32


class WitnessError(BundError):
    """A tree head this node will not witness (not the presenter's own, or badly signed)."""


class WitnessConflictError(WitnessError):
    """A tree head that contradicts one this witness holds of the same party.

    The witness keeps it as evidence and records a ``witness_conflict`` in its own audit log.
    """


class WitnessKeyError(WitnessError):
    """A party presented its head with another audit key than the one this witness pinned."""


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _key_id(raw: bytes) -> str:
    """A short name of a raw key for records and messages (its first 8 bytes, hex)."""
    return raw[:8].hex()


@dataclass(frozen=True)
class WitnessedHead:
    """A witness's signed statement "I received this head of that party's log at this time".

    Attributes:
        head: The party's signed tree head, as received.
        witness: The witnessing party.
        received_at: RFC 3339 UTC time of receipt, from the witness's clock.
        cosignature: Ed25519 over :meth:`signed_bytes` with the witness's audit key.

    Raises:
        AuditFormatError: An attribute of the wrong type.
    """

    head: Checkpoint
    witness: str
    received_at: str
    cosignature: bytes

    def __post_init__(self) -> None:
        check_text("witness", self.witness)
        check_text("received_at", self.received_at)
        if type(self.cosignature) is not bytes:
            raise WitnessError("a cosignature must be bytes")

    def signed_bytes(self) -> bytes:
        """What the cosignature covers: the witness, its time of receipt and the whole head.

        Raises:
            ValueError: The head's root is not 32 bytes.
        """
        witness, received = self.witness.encode("utf-8"), self.received_at.encode("utf-8")
        return b"".join(
            (
                COSIGNATURE_DOMAIN,
                struct.pack(">I", len(witness)),
                witness,
                struct.pack(">I", len(received)),
                received,
                self.head.signed_bytes(),
            )
        )

    def describe(self) -> str:
        """In words, for messages: whose head, its size and time, who witnessed it and when."""
        return (
            f"{self.head.party}'s head {self.head.describe()}, witnessed by {self.witness} at "
            f"{self.received_at} by its clock"
        )


def cosign(
    head: Checkpoint, witness: str, received_at: str, key: Ed25519PrivateKey
) -> WitnessedHead:
    """Countersign ``head`` as ``witness``, received at ``received_at``.

    >>> from bund.parties.audit import AuditLog, MemoryAuditStore
    >>> party_key, witness_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    >>> head = AuditLog(MemoryAuditStore(), party_key, "bank", lambda: "2026-11-24T09:30:00Z"
    ...                 ).checkpoint()
    >>> seen = cosign(head, "tax", "2026-11-24T09:30:01Z", witness_key)
    >>> verify_cosignature(seen, witness_key.public_key())
    True
    """
    unsigned = WitnessedHead(head, witness, received_at, b"")
    return dataclasses.replace(unsigned, cosignature=key.sign(unsigned.signed_bytes()))


def verify_cosignature(witnessed: WitnessedHead, witness_key: Ed25519PublicKey) -> bool:
    """Whether ``witnessed`` is well formed and countersigned with ``witness_key``.

    It says nothing about the head's own signature: check that with the party's key
    (:func:`~bund.parties.audit.verify_checkpoint`).
    """
    if (
        len(witnessed.cosignature) != SIGNATURE_SIZE
        or len(witnessed.head.root_hash) != HASH_SIZE
        or not is_timestamp(witnessed.received_at)
    ):
        return False
    try:
        witness_key.verify(witnessed.cosignature, witnessed.signed_bytes())
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class WitnessReply:
    """A witness's answer to a presented head: its cosignature, and its own head to witness.

    Attributes:
        cosigned: The presented head, countersigned by the witness.
        head: The witness's own current tree head.
        audit_public_key: The witness's raw audit public key, which verifies both.
    """

    cosigned: WitnessedHead
    head: Checkpoint
    audit_public_key: bytes


# -- the store ------------------------------------------------------------------------------

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS witness_schema_version (version INTEGER NOT NULL)",
    (
        "CREATE TABLE IF NOT EXISTS pinned_keys (party TEXT PRIMARY KEY, "
        "public_key BLOB NOT NULL, pinned_at TEXT NOT NULL)"
    ),
    (
        "CREATE TABLE IF NOT EXISTS heads (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        "party TEXT NOT NULL, tree_size INTEGER NOT NULL, root_hash BLOB NOT NULL, "
        "timestamp TEXT NOT NULL, signature BLOB NOT NULL, received_at TEXT NOT NULL, "
        "cosignature BLOB NOT NULL)"
    ),
    "CREATE INDEX IF NOT EXISTS heads_by_party ON heads (party, tree_size)",
)
_SELECT: Final = (
    "SELECT seq, party, tree_size, root_hash, timestamp, signature, received_at, cosignature "
    "FROM heads "
)


class WitnessStore:
    """The heads a node witnessed of other parties' logs, and the audit key pinned for each.

    SQLite (``state/witness.db``, created 0600), WAL with ``synchronous=FULL``: a head is kept
    durably before it is countersigned. Heads are only ever added, each with a sequence number
    the regulator pages by. A head of a size already held with the same root is not kept twice,
    so an idle party costs nothing; one that contradicts a held head is kept beside it.

    Args:
        path: The database file.
        witness: This node's party, named in every :class:`WitnessedHead` read back.

    Raises:
        WitnessError: The file holds another schema version.
    """

    def __init__(self, path: Path, witness: str) -> None:
        fresh = not path.exists()
        if fresh:
            path.touch(mode=0o600)
        self._witness = witness
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        for statement in _SCHEMA:
            self._db.execute(statement)
        row = self._db.execute("SELECT version FROM witness_schema_version").fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO witness_schema_version VALUES (?)", (WITNESS_SCHEMA_VERSION,)
            )
        elif row[0] != WITNESS_SCHEMA_VERSION:
            self._db.close()
            raise WitnessError(
                f"{path} holds witness schema version {row[0]}, this node reads "
                f"{WITNESS_SCHEMA_VERSION}: keep the file as evidence and start a new one"
            )

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def pinned_key(self, party: str) -> bytes | None:
        """The raw audit key pinned for ``party``, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT public_key FROM pinned_keys WHERE party = ?", (party,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def pin_key(self, party: str, key: bytes, at: str) -> None:
        """Pin ``key`` as ``party``'s audit key (first sight only; a pinned key stays)."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO pinned_keys VALUES (?, ?, ?)", (party, key, at))

    def _head(self, row: tuple[Any, ...]) -> tuple[int, WitnessedHead]:
        seq, party, size, root, timestamp, signature, received_at, cosignature = row
        head = Checkpoint(party, size, bytes(root), timestamp, bytes(signature))
        return seq, WitnessedHead(head, self._witness, received_at, bytes(cosignature))

    def roots_at(self, party: str, tree_size: int) -> list[WitnessedHead]:
        """Every head held of ``party``'s log at ``tree_size`` (one, unless it equivocated)."""
        with self._lock:
            rows = self._db.execute(
                _SELECT + "WHERE party = ? AND tree_size = ? ORDER BY seq",
                (party, tree_size),
            ).fetchall()
        return [self._head(row)[1] for row in rows]

    def next_larger(self, party: str, tree_size: int) -> WitnessedHead | None:
        """The smallest head held of ``party``'s log that is larger than ``tree_size``."""
        with self._lock:
            row = self._db.execute(
                _SELECT + "WHERE party = ? AND tree_size > ? ORDER BY tree_size, seq LIMIT 1",
                (party, tree_size),
            ).fetchone()
        return None if row is None else self._head(row)[1]

    def add(self, witnessed: WitnessedHead) -> int:
        """Keep a witnessed head durably; return its sequence number."""
        head = witnessed.head
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO heads (party, tree_size, root_hash, timestamp, signature, "
                "received_at, cosignature) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    head.party,
                    head.tree_size,
                    head.root_hash,
                    head.timestamp,
                    head.signature,
                    witnessed.received_at,
                    witnessed.cosignature,
                ),
            )
        return int(cursor.lastrowid or 0)

    def read(
        self, after: int = 0, limit: int = 1000
    ) -> tuple[list[tuple[int, WitnessedHead]], int]:
        """Heads with a sequence number above ``after``, at most ``limit``, and the last number.

        Returns:
            ``(seq, head)`` pairs in order, and the largest sequence number held (0 for none).
        """
        with self._lock:
            rows = self._db.execute(
                _SELECT + "WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
            last = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM heads").fetchone()[0]
        return [self._head(row) for row in rows], int(last)


# -- the witness ------------------------------------------------------------------------------


class Witness:
    """This node as a witness of its peers' logs, and as a party whose head they witness.

    Args:
        log: This node's audit log: it signs the heads this node presents, and records what
            this node sees go wrong (a conflict, a changed key).
        signing_key: This node's audit key: it countersigns the heads it receives.
        store: Where the heads received are kept.
        clock: This node's clock (RFC 3339 UTC), for the time of receipt.
    """

    def __init__(
        self,
        log: AuditLog,
        signing_key: Ed25519PrivateKey,
        store: WitnessStore,
        clock: Callable[[], str],
    ) -> None:
        self.log = log
        self.store = store
        self.party = log.party
        self._key = signing_key
        self._raw_key = _raw(signing_key.public_key())
        self._clock = clock
        self._lock = threading.Lock()
        self._keys_reported: set[tuple[str, bytes]] = set()

    def audit_key(self, party: str, reported: bytes) -> Ed25519PublicKey:
        """The audit key that verifies ``party``'s heads: the one lookup of a peer's key.

        Today a node pins the key a party reports on first sight (over mTLS, from the party's
        own node), once a head or cosignature verifies with it (:meth:`_pin`), and holds the
        party to it from then on. This is the one place to change when the federation roster
        carries every party's audit key.

        Args:
            party: The party, as its certificate names it.
            reported: The raw key its node reported with its head.

        Returns:
            The key pinned for it, or the reported key when none is pinned yet.

        Raises:
            WitnessKeyError: ``reported`` is not the key pinned; recorded once per key as
                ``witness_key_changed``.
            WitnessError: ``reported`` is not a raw Ed25519 key.
        """
        if len(reported) != _RAW_KEY_SIZE:
            raise WitnessError(f"{party}'s audit key must be {_RAW_KEY_SIZE} raw Ed25519 bytes")
        pinned = self.store.pinned_key(party)
        if pinned is None:
            return Ed25519PublicKey.from_public_bytes(reported)
        if not hmac.compare_digest(pinned, reported):
            with self._lock:
                first = (party, reported) not in self._keys_reported
                self._keys_reported.add((party, reported))
            if first:
                self.log.append(
                    Event.WITNESS_KEY_CHANGED,
                    "",
                    {
                        Key.PEER: party,
                        Key.KEY_ID: _key_id(reported),
                        Key.PINNED_KEY_ID: _key_id(pinned),
                    },
                )
            raise WitnessKeyError(
                f"{party}'s node reports audit key {_key_id(reported)}, but {self.party} pinned "
                f"{_key_id(pinned)} for it: a replaced key must be handed over again "
                "(docs/audit.md, witness cosigning)"
            )
        return Ed25519PublicKey.from_public_bytes(pinned)

    def _pin(self, party: str, verified: bytes) -> None:
        """Pin a key that just verified ``party``'s signature, unless one is pinned already."""
        if self.store.pinned_key(party) is None:
            self.store.pin_key(party, verified, self._now())

    def receive(self, head: Checkpoint, reported_key: bytes, presenter: str) -> WitnessedHead:
        """Check ``presenter``'s head, keep it and countersign it.

        The head must be the presenter's own, signed with the key pinned for it, and consistent
        with every head held of its log: a head of a size already held has the same root, and
        no head signed later holds fewer records than one held. A head that contradicts a held
        one is kept (evidence), recorded as ``witness_conflict`` and refused.

        Args:
            head: The head as received.
            reported_key: The raw audit key the presenter reported.
            presenter: Whose node presented it, from its certificate.

        Returns:
            The head countersigned by this node, with this node's time of receipt.

        Raises:
            WitnessError: Another party's head, this node's own, or a bad signature.
            WitnessKeyError: The key is not the one pinned.
            WitnessConflictError: The head contradicts one held.
        """
        if head.party != presenter or presenter == self.party:
            raise WitnessError(
                f"{presenter} presented a head of {head.party!r}'s log: a node presents only "
                "its own head, to other parties"
            )
        key = self.audit_key(presenter, reported_key)
        if not verify_checkpoint(head, key):
            raise WitnessError(
                f"{presenter}'s head {head.describe()} does not verify with its audit key"
            )
        self._pin(presenter, reported_key)
        with self._lock:
            witnessed = cosign(head, self.party, self._now(), self._key)
            held = self.store.roots_at(head.party, head.tree_size)
            conflict = self._conflict(head, held)
            if not any(hmac.compare_digest(h.head.root_hash, head.root_hash) for h in held):
                self.store.add(witnessed)
                if conflict is not None:
                    self._record_conflict(head, conflict)
        if conflict is not None:
            raise WitnessConflictError(
                f"{presenter}'s head {head.describe()} contradicts {conflict.describe()}; "
                f"{self.party} keeps both as evidence for the regulator"
            )
        return witnessed

    def _conflict(self, head: Checkpoint, held: list[WitnessedHead]) -> WitnessedHead | None:
        """A held head that ``head`` contradicts, or None."""
        for other in held:
            if not hmac.compare_digest(other.head.root_hash, head.root_hash):
                return other  # two logs of one size: equivocation or a rewrite
        larger = self.store.next_larger(head.party, head.tree_size)
        if larger is not None and _signed_before(larger.head, head):
            return larger  # signed later, yet fewer records: the log shrank
        return None

    def _record_conflict(self, head: Checkpoint, held: WitnessedHead) -> None:
        self.log.append(
            Event.WITNESS_CONFLICT,
            "",
            {
                Key.PEER: head.party,
                Key.TREE_SIZE: head.tree_size,
                Key.ROOT_HASH: head.root_hash.hex(),
                Key.HEAD_TIMESTAMP: head.timestamp,
                Key.HELD_TREE_SIZE: held.head.tree_size,
                Key.HELD_ROOT_HASH: held.head.root_hash.hex(),
                Key.HELD_TIMESTAMP: held.head.timestamp,
            },
        )

    def answer(self, head: Checkpoint, reported_key: bytes, presenter: str) -> WitnessReply:
        """Serve a presented head: :meth:`receive` it and answer with this node's own head.

        Raises:
            WitnessError: As :meth:`receive`.
            AuditLogCorruptError: This node's own log is sealed; the presented head was kept.
        """
        cosigned = self.receive(head, reported_key, presenter)
        return WitnessReply(cosigned, self.log.checkpoint(), self._raw_key)

    def present(self, peer: str, send: Callable[[Checkpoint, bytes], WitnessReply]) -> WitnessReply:
        """Present this node's current head to ``peer``, and witness the head it answers with.

        Args:
            peer: The witness.
            send: Delivers a head and this node's raw audit key to ``peer``; returns its reply.

        Returns:
            The peer's reply, checked.

        Raises:
            WitnessError: The peer countersigned another head, or its cosignature does not
                verify; or its own head is refused as :meth:`receive` refuses one.
            AuditLogCorruptError: This node's log is sealed: it presents nothing.
        """
        head = self.log.checkpoint()
        reply = send(head, self._raw_key)
        key = self.audit_key(peer, reply.audit_public_key)
        cosigned = reply.cosigned
        if (
            cosigned.witness != peer
            or cosigned.head != head
            or not verify_cosignature(cosigned, key)
        ):
            raise WitnessError(f"{peer} did not countersign {self.party}'s head as presented")
        self._pin(peer, reply.audit_public_key)
        self.receive(reply.head, reply.audit_public_key, peer)
        return reply

    def held(self, after: int, limit: int) -> tuple[list[tuple[int, WitnessedHead]], int]:
        """A page of the heads this node witnessed (see :meth:`WitnessStore.read`)."""
        return self.store.read(after, limit)

    def _now(self) -> str:
        timestamp = self._clock()
        if not is_timestamp(timestamp):
            raise ValueError(f"clock returned {timestamp!r}, not RFC 3339 UTC")
        return timestamp


def _signed_before(earlier: Checkpoint, later: Checkpoint) -> bool:
    """Whether ``earlier`` was signed strictly before ``later``, by the party's own clock."""
    try:
        return parse_timestamp(earlier.timestamp) < parse_timestamp(later.timestamp)
    except ValueError:
        return False


# -- the exchange thread ----------------------------------------------------------------------

#: Delivers this node's head and raw audit key to a peer's ``Witness`` RPC; returns its reply.
Send = Callable[[str, Checkpoint, bytes], WitnessReply]


class WitnessExchange:
    """A node's thread that presents its head to every peer, every interval and on request.

    It starts with a round at once (which also signs this node's first head, reading and
    checking its whole stored log: a corrupt log is sealed there and then), then one every
    ``interval_s``; :meth:`request` (a job closed) runs an extra round with the parties named
    as soon as the thread is free. Exchanges run one at a time, so a peer receives this node's
    heads in the order they were signed. A failed exchange is logged and retried next round.

    Args:
        witness: This node as a witness.
        peers: The parties to exchange with, asked at every round.
        send: Delivers a head to a peer (the node's gRPC client).
        interval_s: Seconds between rounds.

    Raises:
        ValueError: ``interval_s`` is not positive.
    """

    def __init__(
        self,
        witness: Witness,
        peers: Callable[[], Collection[str]],
        send: Send,
        interval_s: float,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"the witness interval must be positive, not {interval_s}")
        self.witness = witness
        self._peers = peers
        self._send = send
        self._interval = interval_s
        self._wake = threading.Condition()
        self._pending: set[str] = set()
        self._stopping = False
        self._thread: threading.Thread | None = None
        #: Completed rounds (tests wait on it).
        self.rounds = 0

    def start(self) -> None:
        """Start the thread (its first round begins at once)."""
        self._thread = threading.Thread(
            target=self._run, name=f"bund-witness-{self.witness.party}", daemon=True
        )
        self._thread.start()

    def request(self, parties: Iterable[str]) -> None:
        """Exchange with ``parties`` soon (a job with them closed here); never raises."""
        with self._wake:
            self._pending.update(p for p in parties if p != self.witness.party)
            self._wake.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread (after the exchange in flight, if any) and close the store."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self.witness.store.close()

    def exchange(self, peer: str) -> bool:
        """Present this node's head to ``peer`` and witness its answer; False (logged) if not."""
        try:
            self.witness.present(peer, lambda head, key: self._send(peer, head, key))
        except BundError as exc:
            _log.warning("%s: witness exchange with %s failed: %s", self.witness.party, peer, exc)
            return False
        except Exception:
            _log.exception("%s: witness exchange with %s failed", self.witness.party, peer)
            return False
        return True

    def _targets(self) -> set[str]:
        try:
            return set(self._peers()) - {self.witness.party}
        except BundError as exc:
            _log.warning("%s: cannot list witness peers: %s", self.witness.party, exc)
            return set()

    def _woken(self, due: float) -> bool:
        return self._stopping or bool(self._pending) or time.monotonic() >= due

    def _run(self) -> None:
        due = time.monotonic()
        while True:
            with self._wake:
                self._wake.wait_for(
                    functools.partial(self._woken, due), timeout=max(0.0, due - time.monotonic())
                )
                if self._stopping:
                    return
                if time.monotonic() >= due:
                    periodic, due = True, time.monotonic() + self._interval
                else:
                    periodic = False
                targets, self._pending = set(self._pending), set()
            if periodic:
                targets |= self._targets()
                if not targets:  # no peer: still sign a head, which checks the stored log
                    self._check_own_log()
            for peer in sorted(targets):
                with self._wake:
                    if self._stopping:
                        return
                self.exchange(peer)
            self.rounds += 1

    def _check_own_log(self) -> None:
        try:
            self.witness.log.checkpoint()
        except BundError as exc:
            _log.warning("%s: cannot sign a tree head: %s", self.witness.party, exc)
