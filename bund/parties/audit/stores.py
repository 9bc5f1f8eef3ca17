"""Where a log's records are kept: the ``AuditStore`` interface and its three implementations.

:class:`MemoryAuditStore` for tests and tools; :class:`SqliteAuditStore` (the node's
``audit.db``, the default) and :class:`PostgresAuditStore` (a production option), which share
all their logic in :class:`SqlAuditStore` and differ only in their dialect: the connection, the
parameter marker, the tables' DDL, how a writer locks and how errors are named.
:func:`open_audit_store` opens the one a node's configuration names. Every store runs the
contract suite in ``tests/parties/test_audit_stores.py``.
"""

from __future__ import annotations

import io
import itertools
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, Self

from bund.compute.canonical import canonical_json
from bund.compute.errors import BundError
from bund.parties.audit.records import AuditFormatError, AuditRecord, parse_fields

if TYPE_CHECKING:
    import psycopg

#: The version of the tables' layout that this code reads and writes.
SCHEMA_VERSION: Final = 1

_MAX_INDEX: Final = 2**63 - 1  # the largest index either database's integer column holds


class AuditLogConflictError(BundError):
    """A record that is not the next one of the store (another writer appended meanwhile)."""


class AuditStoreUnavailableError(BundError):
    """An audit store that cannot be opened or written: no driver, a server down, a file locked.

    A node refuses every action whose record it cannot write (write-ahead), so this reaches the
    caller as UNAVAILABLE with nothing done.
    """


class AuditStore(ABC):
    """Where a log's records are kept: append-only, read by index, no update or delete.

    Implementations are thread-safe and hold records exactly as given, so that the hashes
    recompute. Every implementation runs the contract suite in
    ``tests/parties/test_audit_stores.py``.
    """

    @abstractmethod
    def append(self, record: AuditRecord) -> None:
        """Add ``record`` durably: return only once it would survive a crash of the process.

        Raises:
            AuditLogConflictError: ``record.index`` is not one more than the last record's
                (0 for an empty store).
        """

    def append_many(self, records: Sequence[AuditRecord]) -> None:
        """Add consecutive ``records`` durably (a group commit).

        The default appends them one by one with :meth:`append`, each durably, so a failure
        part-way keeps the records before it; a store that can commit them in one transaction
        (one sync to disk, all or none) overrides it, as the SQL stores do.

        Raises:
            AuditLogConflictError: The first record is not the next one, or the records do not
                follow each other; nothing is appended.
        """
        _check_consecutive(records)
        for record in records:
            self.append(record)

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


def _check_consecutive(records: Sequence[AuditRecord]) -> None:
    for before, record in itertools.pairwise(records):
        if record.index != before.index + 1:
            raise _conflict(record, before.index + 1)


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


class _Cursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class SqlConnection(Protocol):
    """What :class:`SqlAuditStore` uses of a DB-API connection (sqlite3's, psycopg's)."""

    def execute(self, query: str, params: Sequence[Any] = (), /) -> _Cursor:
        """Run one statement with its parameters."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...


# Statements without parameters, the same in both dialects.
_COUNT: Final = "SELECT COUNT(*) FROM audit_records"
_NEXT_INDEX: Final = "SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_records"
_SELECT_LAST: Final = """
SELECT idx, timestamp, party, event, job_id, fields, prev_hash, record_hash, signature
FROM audit_records ORDER BY idx DESC LIMIT 1
"""


class SqlAuditStore(AuditStore):
    """An audit store in an SQL database: the behaviour that SQLite and PostgreSQL share.

    One table, ``audit_records``, with ``idx`` as primary key, and a version table holding
    :data:`SCHEMA_VERSION` (another version is refused, not migrated); the code has no UPDATE or
    DELETE. Opening for writing creates the tables if need be, in one transaction. An append is
    one transaction that locks out other writers (readers go on), checks that the record
    carries the next index (:class:`AuditLogConflictError` otherwise) and inserts it; it returns
    once the database reports the commit durable. ``fields`` is stored as the canonical JSON
    that the hash covers, text as UTF-8; both are read back as raw bytes and decoded strictly,
    so a row altered into invalid UTF-8 or non-canonical JSON is refused on read with its
    record's index. The database itself is not trusted: verification shows whether it was
    altered.

    A subclass opens the connection and supplies its dialect: the class attributes below (each
    statement written out in the driver's parameter style), :meth:`_configure` and
    :meth:`_column`, and optionally :meth:`_refusal`.

    Args:
        db: The open connection, in autocommit mode; the store closes it.
        where: The database in words, for messages (never a password).
        read_only: Only read (verification, export): append is refused and nothing is created.

    Attributes:
        where: The database in words, as given.

    Raises:
        AuditFormatError: The database holds no audit log (``read_only``) or another schema
            version.
    """

    #: Create the tables if they do not exist.
    _CREATE_TABLES: ClassVar[tuple[str, ...]]
    #: Add the version row (one parameter) unless there is one.
    _INSERT_VERSION: ClassVar[str]
    #: One row whose value is true when the version table exists.
    _HAS_VERSION_TABLE: ClassVar[str]
    #: The version rows.
    _SELECT_VERSION: ClassVar[str]
    #: Insert a row (nine parameters, in column order).
    _INSERT: ClassVar[str]
    #: The rows with ``start <= idx < stop`` (two parameters), in index order.
    _SELECT_RANGE: ClassVar[str]
    #: Begins a write transaction.
    _BEGIN: ClassVar[str]
    #: Run first in the transaction that creates the tables, so two openers create them once.
    _LOCK_SCHEMA: ClassVar[tuple[str, ...]] = ()
    #: Run first in an append's transaction, so that writers queue.
    _LOCK_RECORDS: ClassVar[tuple[str, ...]] = ()
    #: What to check when the database holds no log.
    _NO_LOG_HINT: ClassVar[str]

    def __init__(self, db: SqlConnection, where: str, read_only: bool) -> None:
        self.where = where
        self._db = db
        self._read_only = read_only
        self._lock = threading.Lock()
        try:
            self._open()
        except BaseException as exc:
            db.close()
            refusal = self._refusal(exc)
            if refusal is None:
                raise
            raise refusal from None

    def _open(self) -> None:
        self._configure()
        if not self._read_only:
            with self._transaction(self._LOCK_SCHEMA):
                for statement in self._CREATE_TABLES:
                    self._db.execute(statement)
                self._db.execute(self._INSERT_VERSION, (SCHEMA_VERSION,))
        [(exists,)] = self._db.execute(self._HAS_VERSION_TABLE).fetchall()
        if not exists:
            raise AuditFormatError(f"{self.where} holds no Bund audit log: {self._NO_LOG_HINT}")
        versions = self._db.execute(self._SELECT_VERSION).fetchall()
        if versions != [(SCHEMA_VERSION,)]:
            raise AuditFormatError(
                f"{self.where} has audit schema version {versions}, this Bund reads version "
                f"{SCHEMA_VERSION}: verify it with the Bund release that wrote it"
            )

    @abstractmethod
    def _configure(self) -> None:
        """Set up the session (durability, timeouts, read-only mode) before anything else."""

    @abstractmethod
    def _column(self, text: str) -> object:
        """``text`` as the driver writes it into a text column of ``audit_records``."""

    def _refusal(self, exc: BaseException) -> BundError | None:
        """The error to raise instead of ``exc`` when opening fails, or None to raise ``exc``."""
        return None

    def _write_failure(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised by an append, means the database cannot take writes now."""
        return False

    @contextmanager
    def _transaction(self, locks: tuple[str, ...]) -> Iterator[None]:
        """One transaction that takes ``locks`` first; rolled back if the body raises."""
        self._db.execute(self._BEGIN)
        try:
            for statement in locks:
                self._db.execute(statement)
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def append(self, record: AuditRecord) -> None:
        """Add ``record`` in one durable transaction (see :meth:`AuditStore.append`).

        Raises:
            io.UnsupportedOperation: The store was opened read-only.
            AuditLogConflictError: ``record`` is not the next record.
        """
        self.append_many((record,))

    def append_many(self, records: Sequence[AuditRecord]) -> None:
        """Add consecutive ``records`` in one durable transaction (one commit for them all).

        Raises:
            io.UnsupportedOperation: The store was opened read-only.
            AuditLogConflictError: The records are not the next ones; nothing is appended.
        """
        if self._read_only:
            raise io.UnsupportedOperation(f"{self.where} was opened read-only")
        if not records:
            return
        _check_consecutive(records)
        rows = [self._row(record) for record in records]
        try:
            with self._lock, self._transaction(self._LOCK_RECORDS):
                [(expected,)] = self._db.execute(_NEXT_INDEX).fetchall()
                if records[0].index != expected:
                    raise _conflict(records[0], expected)
                for row in rows:
                    self._db.execute(self._INSERT, row)
        except Exception as exc:
            if not self._write_failure(exc):
                raise
            raise AuditStoreUnavailableError(
                f"the audit store {self.where} cannot take records now ({exc}); nothing that "
                "needs a record was done. The node's operator must make the audit store writable"
            ) from exc

    def _row(self, record: AuditRecord) -> tuple[object, ...]:
        """``record`` as the nine parameters of :attr:`_INSERT`."""
        texts = (record.timestamp, record.party, record.event, record.job_id)
        return (
            record.index,
            *(self._column(text) for text in texts),
            self._column(canonical_json(record.fields).decode("utf-8")),
            record.prev_hash,
            record.record_hash,
            record.signature,
        )

    def read(self, start: int = 0, stop: int | None = None) -> list[AuditRecord]:
        """Records ``start`` to ``stop`` (see :meth:`AuditStore.read`)."""
        _check_range(start, stop)
        bounds = (min(start, _MAX_INDEX), _MAX_INDEX if stop is None else min(stop, _MAX_INDEX))
        with self._lock:
            rows = self._db.execute(self._SELECT_RANGE, bounds).fetchall()
        return [self._decode(row) for row in rows]

    def __len__(self) -> int:
        with self._lock:
            [(count,)] = self._db.execute(_COUNT).fetchall()
        return int(count)

    def last(self) -> AuditRecord | None:
        """The record with the highest index, or None."""
        with self._lock:
            row = self._db.execute(_SELECT_LAST).fetchone()
        return None if row is None else self._decode(row)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def _decode(self, row: Sequence[Any]) -> AuditRecord:
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
                fields=parse_fields(fields),
                prev_hash=row[6],
                record_hash=row[7],
                signature=row[8],
            )
        except AuditFormatError as exc:
            raise AuditFormatError(f"record {index} in {self.where}: {exc}", index) from None


def _utf8(value: object) -> str:
    if not isinstance(value, bytes):
        raise AuditFormatError(f"a text column holds {type(value).__name__}")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise AuditFormatError("a text column is not UTF-8") from None


class SqliteAuditStore(SqlAuditStore):
    """A store in one SQLite file (the node's ``audit.db``); see :class:`SqlAuditStore`.

    A new file is created 0600 (SQLite gives its ``-wal`` and ``-shm`` files the same mode), in
    WAL mode with ``synchronous=FULL``, so a record is on disk before :meth:`append` returns. An
    append's ``BEGIN IMMEDIATE`` takes the file's write lock; a reader is never blocked.

    Args:
        path: The database file.
        read_only: Open an existing log only to read it (verification, export), possibly while
            a node appends to it.

    Raises:
        FileNotFoundError: ``read_only`` and ``path`` does not exist.
        AuditFormatError: ``path`` is not a Bund audit database, or has another schema version.
    """

    _CREATE_TABLES = (
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL) STRICT",
        """CREATE TABLE IF NOT EXISTS audit_records (
            idx INTEGER PRIMARY KEY CHECK (idx >= 0),
            timestamp TEXT NOT NULL,
            party TEXT NOT NULL,
            event TEXT NOT NULL,
            job_id TEXT NOT NULL,
            fields TEXT NOT NULL,
            prev_hash BLOB NOT NULL,
            record_hash BLOB NOT NULL,
            signature BLOB NOT NULL
        ) STRICT""",
    )
    _INSERT_VERSION = (
        "INSERT INTO schema_version (version) SELECT ? "
        "WHERE NOT EXISTS (SELECT 1 FROM schema_version)"
    )
    _HAS_VERSION_TABLE = (
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    )
    _SELECT_VERSION = "SELECT version FROM schema_version"
    _INSERT = """
    INSERT INTO audit_records
        (idx, timestamp, party, event, job_id, fields, prev_hash, record_hash, signature)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
    """
    _SELECT_RANGE = """
    SELECT idx, timestamp, party, event, job_id, fields, prev_hash, record_hash, signature
    FROM audit_records WHERE idx >= ? AND idx < ? ORDER BY idx
    """
    _BEGIN = "BEGIN IMMEDIATE"
    _NO_LOG_HINT = "no schema_version table; check the path"

    def __init__(
        self, path: str | os.PathLike[str], read_only: bool = False, write_timeout_s: float = 10.0
    ) -> None:
        self.path = Path(path)
        self._write_timeout_ms = int(write_timeout_s * 1000)
        if read_only:
            if not self.path.exists():
                raise FileNotFoundError(f"no audit log at {self.path}")
            uri = self.path.resolve().as_uri() + "?mode=ro"
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.text_factory = bytes  # decoded strictly by _decode, so bad bytes name a record
        super().__init__(db, str(self.path), read_only)

    def _configure(self) -> None:
        self._db.execute(f"PRAGMA busy_timeout = {self._write_timeout_ms}")
        if not self._read_only:
            self._db.execute("PRAGMA journal_mode = WAL").fetchone()
            self._db.execute("PRAGMA synchronous = FULL")

    def _column(self, text: str) -> object:
        return text  # a STRICT TEXT column, stored as UTF-8

    def _refusal(self, exc: BaseException) -> BundError | None:
        if isinstance(exc, sqlite3.DatabaseError):
            return AuditFormatError(f"{self.where} cannot be opened as an audit log ({exc})")
        return None

    def _write_failure(self, exc: BaseException) -> bool:
        # Locked past busy_timeout, disk full, read-only file system, I/O error.
        return isinstance(exc, sqlite3.OperationalError)


class PostgresAuditStore(SqlAuditStore):
    """A store in a PostgreSQL database, for a production node (``pip install 'bund[postgres]'``).

    See :class:`SqlAuditStore`. The version table is ``audit_schema_version``. An append takes
    ``LOCK TABLE audit_records IN SHARE ROW EXCLUSIVE MODE``, which only writers contend for,
    and the session sets ``synchronous_commit = on``, so a returned record is in the server's
    flushed WAL. Text columns are BYTEA holding UTF-8: PostgreSQL TEXT cannot hold U+0000, which
    a record may. The tables live in the first schema of the ``search_path``; to use a schema of
    its own, add ``options=-csearch_path%3Dbund`` to the URL.

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

    _CREATE_TABLES = (
        "CREATE TABLE IF NOT EXISTS audit_schema_version (version INTEGER NOT NULL)",
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
    _INSERT_VERSION = (
        "INSERT INTO audit_schema_version (version) SELECT %s "
        "WHERE NOT EXISTS (SELECT 1 FROM audit_schema_version)"
    )
    _HAS_VERSION_TABLE = "SELECT to_regclass('audit_schema_version') IS NOT NULL"
    _SELECT_VERSION = "SELECT version FROM audit_schema_version"
    _INSERT = """
    INSERT INTO audit_records
        (idx, timestamp, party, event, job_id, fields, prev_hash, record_hash, signature)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
    """
    _SELECT_RANGE = """
    SELECT idx, timestamp, party, event, job_id, fields, prev_hash, record_hash, signature
    FROM audit_records WHERE idx >= %s AND idx < %s ORDER BY idx
    """
    _BEGIN = "BEGIN"
    # The key spells "bundaudt": it serialises creating the tables between nodes starting at once.
    _LOCK_SCHEMA = ("SELECT pg_advisory_xact_lock(7094698165402952820)",)
    # Conflicts with itself only: readers go on, a second writer waits for the commit.
    _LOCK_RECORDS = ("LOCK TABLE audit_records IN SHARE ROW EXCLUSIVE MODE",)
    _NO_LOG_HINT = (
        "no audit_schema_version table in the search_path; check the database and the URL's "
        "search_path option"
    )

    def __init__(self, dsn: str, read_only: bool = False, write_timeout_s: float = 10.0) -> None:
        self._write_timeout_ms = int(write_timeout_s * 1000)
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
        where = make_conninfo("", **{k: v for k, v in params.items() if k != "password"})
        if "connect_timeout" not in params:
            dsn = make_conninfo(dsn, connect_timeout=10)
        try:
            db: psycopg.Connection[tuple[Any, ...]] = psycopg.connect(dsn, autocommit=True)
        except psycopg.OperationalError as exc:
            raise AuditStoreUnavailableError(
                f"cannot connect to the audit database ({where}); check that the server is "
                f"up and that the URL's user, password and database are right: {exc}".rstrip()
            ) from None
        super().__init__(db, where, read_only)

    def _write_failure(self, exc: BaseException) -> bool:
        import psycopg

        # The server went away, the connection broke, or the database refuses writes.
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) or (
            isinstance(exc, psycopg.errors.ReadOnlySqlTransaction)
        )

    def _configure(self) -> None:
        self._db.execute("SET synchronous_commit = on")
        self._db.execute(f"SET lock_timeout = {self._write_timeout_ms}")
        if self._read_only:
            self._db.execute("SET default_transaction_read_only = on")

    def _column(self, text: str) -> object:
        return text.encode("utf-8")  # BYTEA


def open_audit_store(
    url_or_path: str | os.PathLike[str], read_only: bool = False, write_timeout_s: float = 10.0
) -> AuditStore:
    """Open the store that a node's configuration names.

    Args:
        url_or_path: A ``postgresql://`` (or ``postgres://``) URL for :class:`PostgresAuditStore`,
            or a file path for :class:`SqliteAuditStore`.
        read_only: Open only to read (verification, export).
        write_timeout_s: How long an append waits for a lock before it is refused
            (``AuditStoreUnavailableError``).

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
            return PostgresAuditStore(url_or_path, read_only, write_timeout_s)
        scheme, separator, _ = url_or_path.partition("://")
        if separator:
            raise ValueError(
                f"audit store {scheme}:// is not supported: give a file path (SQLite) or a "
                "postgresql:// URL"
            )
    return SqliteAuditStore(url_or_path, read_only, write_timeout_s)
