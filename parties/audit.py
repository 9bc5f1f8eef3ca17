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
It cannot see records cut off the end of a log (truncation), nor a whole log replaced by another
one signed with the same key: both need a checkpoint held by someone else (the regulator's signed
tree head), which a later issue adds. ``docs/audit.md`` says what verification proves.
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
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import IO, Any, Final, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from compute.errors import BundError

JsonScalar = str | int | float | bool | None

#: Bytes in a record hash, a leaf hash and ``prev_hash``.
HASH_SIZE: Final = 32
#: Bytes in an Ed25519 signature.
SIGNATURE_SIZE: Final = 64
#: ``prev_hash`` of record 0.
GENESIS_HASH: Final = bytes(HASH_SIZE)
#: Prefix of every signed message, so an audit signature is never valid in another context.
SIGNING_DOMAIN: Final = b"bund/audit/v1\x00"

_LEAF_PREFIX: Final = b"\x00"  # RFC 6962 section 2.1 leaf
_NODE_PREFIX: Final = b"\x01"  # RFC 6962 section 2.1 interior node
_CHAIN_PREFIX: Final = b"\x02"  # Bund: link of the hash chain, distinct from both
_SCHEMA_VERSION: Final = 1
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


def merkle_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """The RFC 6962 (section 2.1) Merkle tree hash over already-hashed leaves.

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
    if any(len(h) != HASH_SIZE for h in leaf_hashes):
        raise ValueError("every leaf hash must be 32 bytes")
    n = len(leaf_hashes)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaf_hashes[0]
    k = 1 << ((n - 1).bit_length() - 1)
    left, right = merkle_root(leaf_hashes[:k]), merkle_root(leaf_hashes[k:])
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


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
    prev = GENESIS_HASH
    position = 0
    iterator = iter(records)
    while True:
        try:
            record = next(iterator, None)
        except AuditFormatError as exc:
            if exc.index is None:
                raise
            return VerificationReport(False, position, position, str(exc))
        if record is None:
            return VerificationReport(True, position, None, "")
        problem = _problem(record, position, prev, public_key, party)
        if problem is not None:
            return VerificationReport(False, position, position, problem)
        prev = record.record_hash
        position += 1


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
        self._db.text_factory = bytes  # decoded strictly by _decode, so bad bytes name a record
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
        return [self._decode(row) for row in rows]

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM audit_records").fetchone()
        return int(count)

    def last(self) -> AuditRecord | None:
        """The record with the highest index, or None."""
        with self._lock:
            row = self._db.execute(_SELECT_LAST).fetchone()
        return None if row is None else self._decode(row)

    def close(self) -> None:
        """Close the database; the last connection to close folds the WAL into the file."""
        with self._lock:
            self._db.close()

    def _decode(self, row: Sequence[Any]) -> AuditRecord:
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
            raise AuditFormatError(f"record {index} in {self.path}: {exc}", index) from None


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
            timestamp = self._clock()
            if not isinstance(timestamp, str) or not _TIMESTAMP.fullmatch(timestamp):
                raise ValueError(
                    f"clock returned {timestamp!r}: it must return RFC 3339 UTC such as "
                    "2026-11-24T09:30:00.000000Z"
                )
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
            record_hash = chain_hash(self._prev_hash, unsigned.leaf_hash())
            record = dataclasses.replace(
                unsigned,
                record_hash=record_hash,
                signature=self._key.sign(SIGNING_DOMAIN + record_hash),
            )
            self.store.append(record)
            self._next_index, self._prev_hash = record.index + 1, record_hash
            return record
