"""Dataset sources and the table a protocol role reads its own data from.

A node declares each catalog dataset as a ``DataSource`` (CSV, SQLite or Parquet) and opens it as
a ``Table`` with ``open_source``; ``write_csv`` writes a table back as CSV. The synthetic demo
datasets are drawn in ``bund.parties.demo_data``; ``docs/datasets.md`` describes both.

A table opened from a source reads only its header at once. Its values are read on first use
of ``column``/``data`` (held as Python strings, so capped at ``DEFAULT_MAX_ROWS``), while
``iter_column``, ``num_rows`` and ``content_hash`` stream the source in chunks without holding
it (capped at ``STREAM_MAX_ROWS``): PSI at 10^8 ids reads its id column that way. The table pins
the file it was opened on (size and modification time): once the file changes, every read
refuses, so one table never mixes two versions of a dataset.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import itertools
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bund.compute.errors import BundError

DEFAULT_MAX_ROWS = 10_000_000
"""Row cap of the loaders unless the caller passes another: a guard against exhausting memory."""

STREAM_MAX_ROWS = 1_000_000_000
"""Row cap of a streamed read (``Table.iter_column``), which holds one chunk at a time."""

#: Rows per chunk of ``Table.iter_column`` unless the caller asks for another size.
STREAM_CHUNK_ROWS = 65_536

_TABLE_HASH_DOMAIN = b"bund.table.v1"


class DatasetError(BundError):
    """A dataset cannot be read or lacks what the job needs; the message names the fix."""


@dataclass(frozen=True)
class Table:
    """A party's dataset held column-wise as strings, exactly as read from its source.

    Columns are kept as text so identifiers keep their exact form (leading zeros, letters);
    ``numeric`` converts a column when a computation needs numbers.
    """

    name: str
    data: Mapping[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        if isinstance(self.data, _SourceColumns):
            return
        lengths = {len(v) for v in self.data.values()}
        if len(lengths) > 1:
            raise DatasetError(f"dataset {self.name!r}: columns have different lengths {lengths}")

    @classmethod
    def from_columns(cls, name: str, columns: Mapping[str, Sequence[str]]) -> Table:
        """Build a table from column name -> values."""
        return cls(name, {k: tuple(str(x) for x in v) for k, v in columns.items()})

    @property
    def columns(self) -> tuple[str, ...]:
        """Column names in source order."""
        return tuple(self.data)

    @property
    def num_rows(self) -> int:
        """Number of rows (a table opened from a source counts them by streaming it)."""
        if isinstance(self.data, _SourceColumns):
            return self.data.num_rows()
        return len(next(iter(self.data.values()))) if self.data else 0

    def iter_column(self, name: str, chunk_rows: int = STREAM_CHUNK_ROWS) -> Iterator[list[str]]:
        """The values of column ``name`` in chunks of ``chunk_rows``, in row order.

        A table opened from a source streams them (one chunk in memory, up to
        ``STREAM_MAX_ROWS`` rows); an in-memory table slices its column.

        Raises:
            DatasetError: The column does not exist, or the source cannot be read or changed.

        >>> list(Table.from_columns("t", {"id": ["a", "b", "c"]}).iter_column("id", 2))
        [['a', 'b'], ['c']]
        """
        return (columns[0] for columns in self.iter_columns((name,), chunk_rows))

    def iter_columns(
        self, names: Sequence[str], chunk_rows: int = STREAM_CHUNK_ROWS
    ) -> Iterator[list[list[str]]]:
        """The values of several columns, chunk by chunk: one list per column, rows aligned.

        Raises:
            DatasetError: A column does not exist, or the source cannot be read or changed.
        """
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be at least 1")
        for name in names:
            if name not in self.data:
                self.column(name)  # raises, naming the columns
        if isinstance(self.data, _SourceColumns):
            return self.data.stream(names, chunk_rows)
        return self._slices(names, chunk_rows)

    def _slices(self, names: Sequence[str], chunk_rows: int) -> Iterator[list[list[str]]]:
        columns = [self.column(name) for name in names]
        for start in range(0, self.num_rows, chunk_rows):
            yield [list(values[start : start + chunk_rows]) for values in columns]

    def column(self, name: str) -> tuple[str, ...]:
        """The values of column ``name`` as text."""
        try:
            return self.data[name]
        except KeyError:
            raise DatasetError(
                f"dataset {self.name!r} has no column {name!r}; its columns are {list(self.data)}"
            ) from None

    def numeric(self, name: str) -> np.ndarray:
        """Column ``name`` as float64; an empty cell or non-number raises ``DatasetError``."""
        values = self.column(name)
        try:
            return np.array([float(v) for v in values], dtype=np.float64)
        except ValueError as exc:
            raise DatasetError(
                f"dataset {self.name!r} column {name!r} is not numeric: {exc}"
            ) from None

    def select(self, rows: Sequence[int]) -> Table:
        """A table of the given rows, in the given order, under the same name.

        Args:
            rows: row positions, each in ``range(num_rows)``; repeats are allowed.

        Returns:
            The selected rows.

        Raises:
            ValueError: if a position is out of range (negative positions are refused too).

        >>> Table.from_columns("t", {"id": ["a", "b", "c"]}).select([2, 0]).column("id")
        ('c', 'a')
        """
        n = self.num_rows
        bad = [i for i in rows if not 0 <= i < n]
        if bad:
            raise ValueError(f"row positions {bad[:5]} are outside 0..{n - 1} of {self.name!r}")
        return Table(self.name, {k: tuple(v[i] for i in rows) for k, v in self.data.items()})

    def content_hash(self) -> str:
        """The dataset version: hex SHA-256 of the columns and values, independent of the name.

        The encoding is ``b"bund.table.v1"``, then the column count, then per column its name,
        its row count and each value; every string is UTF-8 preceded by its 8-byte big-endian
        length and every count is 8 bytes big-endian, so no two tables share an encoding.

        Returns:
            64 lowercase hex digits.

        >>> a = Table.from_columns("a", {"id": ["1", "2"]})
        >>> a.content_hash() == Table.from_columns("b", {"id": ["1", "2"]}).content_hash()
        True
        >>> a.content_hash() == Table.from_columns("a", {"id": ["12"]}).content_hash()
        False
        """
        if isinstance(self.data, _SourceColumns):
            return self.data.content_hash()
        digest = hashlib.sha256(_TABLE_HASH_DOMAIN)
        digest.update(len(self.data).to_bytes(8, "big"))
        for column, values in self.data.items():
            _hash_text(digest, column)
            digest.update(len(values).to_bytes(8, "big"))
            for value in values:
                _hash_text(digest, value)
        return digest.hexdigest()


def _hash_text(digest: hashlib._Hash, text: str) -> None:
    raw = text.encode("utf-8")
    digest.update(len(raw).to_bytes(8, "big"))
    digest.update(raw)


# -- sources -------------------------------------------------------------------------------------


def _check_max_rows(max_rows: int) -> None:
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, not {max_rows}")


def _too_many_rows(where: str, max_rows: int) -> DatasetError:
    return DatasetError(
        f"{where}: more than {max_rows} rows; pass a larger max_rows or split the dataset"
    )


def _check_names(names: Sequence[str], where: str) -> None:
    """Refuse empty and duplicate column names, which would make columns unaddressable."""
    empty = [i + 1 for i, n in enumerate(names) if not n.strip()]
    if empty:
        raise DatasetError(f"{where}: header column(s) {empty} have no name; name every column")
    duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicates:
        raise DatasetError(f"{where}: column names {duplicates} appear more than once; rename them")


def _cell(value: object, where: str) -> str:
    """One value from a typed source as the text a ``Table`` holds (NULL becomes empty)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, bytes | bytearray | memoryview):
        raise DatasetError(f"{where}: a column holds binary data; select it as text (e.g. hex())")
    return str(value)


def load_csv(
    path: Path | str, name: str | None = None, *, max_rows: int = DEFAULT_MAX_ROWS
) -> Table:
    r"""Read a CSV file whose first line names the columns.

    Args:
        path: the file, UTF-8 with or without a byte-order mark; blank lines are skipped.
        name: the table's name; the file's stem if not given.
        max_rows: refuse a file with more data rows than this.

    Returns:
        The table, every value as text.

    Raises:
        DatasetError: if the file is missing, unreadable, not UTF-8, empty, malformed, has an
            empty or duplicate column name, a row with the wrong number of fields, or too many
            rows.
        ValueError: if ``max_rows`` is below 1.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "loans.csv"
    >>> _ = p.write_text("company_id,amount\n91350100M000100Y43,120\n", encoding="utf-8")
    >>> load_csv(p).numeric("amount")
    array([120.])
    """
    _check_max_rows(max_rows)
    path = Path(path)
    records = _csv_records(path, max_rows)
    header = next(records)
    rows = list(records)
    columns = zip(*rows, strict=True) if rows else ((),) * len(header)
    return Table(name or path.stem, dict(zip(header, (tuple(c) for c in columns), strict=True)))


def _csv_records(path: Path, max_rows: int) -> Iterator[list[str]]:
    """The header of a CSV file, then each data record, checked as ``load_csv`` documents."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            yield from _checked_csv(csv.reader(f, strict=True), str(path), max_rows)
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file; check the dataset's path") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read it ({exc.strerror}); check the path") from None


def _checked_csv(reader: Iterable[list[str]], where: str, max_rows: int) -> Iterator[list[str]]:
    records = iter(reader)
    line = 1
    try:
        header = next(records, None)
        if not header:
            raise DatasetError(
                f"{where}: the file is empty or its first line is blank; "
                "the first line must name the columns"
            )
        _check_names(header, where)
        yield header
        rows = 0
        for line, record in enumerate(records, start=2):
            if not record:
                continue
            if len(record) != len(header):
                raise DatasetError(
                    f"{where} record {line}: {len(record)} fields but the header names "
                    f"{len(header)} columns; give every row one value per column and quote "
                    "values that contain commas"
                )
            if rows == max_rows:
                raise _too_many_rows(where, max_rows)
            rows += 1
            yield record
    except csv.Error as exc:
        raise DatasetError(f"{where} near record {line + 1}: malformed CSV ({exc})") from None


def load_sqlite(
    path: Path | str, query: str, name: str, *, max_rows: int = DEFAULT_MAX_ROWS
) -> Table:
    """Run one SELECT statement on a SQLite database opened read-only.

    The database is opened with the URI ``mode=ro`` and an authorizer that allows only reads,
    so a catalog query can never change the data it describes.

    Args:
        path: the database file.
        query: a single ``SELECT`` (or ``WITH ... SELECT``) statement; a trailing ``;`` is allowed.
        name: the table's name.
        max_rows: refuse a result with more rows than this.

    Returns:
        The result, every value as text and NULL as the empty string.

    Raises:
        DatasetError: if the file is missing or not a database, the query is not a single
            SELECT, it fails, it returns duplicate or binary columns, or too many rows.
        ValueError: if ``max_rows`` is below 1.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "bank.db"
    >>> with closing(sqlite3.connect(p)) as db, db:
    ...     _ = db.execute("CREATE TABLE loans (company_id TEXT, amount REAL)")
    ...     _ = db.execute("INSERT INTO loans VALUES ('91350100M000100Y43', 120.0)")
    >>> load_sqlite(p, "SELECT company_id, amount FROM loans", "loans").column("amount")
    ('120.0',)
    """
    _check_max_rows(max_rows)
    records = _sqlite_records(Path(path), query, name, max_rows)
    names = next(records)
    rows = list(records)
    columns = zip(*rows, strict=True) if rows else ((),) * len(names)
    return Table(name, dict(zip(names, (tuple(c) for c in columns), strict=True)))


def _sqlite_records(path: Path, query: str, name: str, max_rows: int) -> Iterator[list[str]]:
    """The column names of a SELECT, then each row as text, checked as ``load_sqlite`` says."""
    where = f"{path} ({name})"
    statement = query.strip().removesuffix(";").rstrip()
    first_word = statement.split(None, 1)[0].upper() if statement else ""
    if first_word not in {"SELECT", "WITH"}:
        raise DatasetError(f"{where}: the query must be one SELECT statement, not {query!r}")
    if not path.is_file():
        raise DatasetError(f"{where}: no such database file; check the dataset's path")
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            db.set_authorizer(_read_only_authorizer)
            cursor = db.execute(statement)
            names = [d[0] for d in cursor.description]
            _check_names(names, where)
            yield names
            count = 0
            while batch := cursor.fetchmany(STREAM_CHUNK_ROWS):
                count += len(batch)
                if count > max_rows:
                    raise _too_many_rows(where, max_rows)
                for row in batch:
                    yield [_cell(v, where) for v in row]
    except sqlite3.ProgrammingError as exc:
        raise DatasetError(f"{where}: the query must be one SELECT statement ({exc})") from None
    except sqlite3.Error as exc:
        raise DatasetError(f"{where}: the query failed ({exc}); check the SQL") from None


_SQLITE_READ_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)


def _read_only_authorizer(action: int, *_: str | None) -> int:
    return sqlite3.SQLITE_OK if action in _SQLITE_READ_ACTIONS else sqlite3.SQLITE_DENY


def load_parquet(
    path: Path | str, name: str | None = None, *, max_rows: int = DEFAULT_MAX_ROWS
) -> Table:
    """Read a Parquet file; needs the optional ``pyarrow`` package.

    Args:
        path: the file.
        name: the table's name; the file's stem if not given.
        max_rows: refuse a file with more rows than this.

    Returns:
        The table, every value as text and null as the empty string.

    Raises:
        DatasetError: if pyarrow is not installed (the message gives ``pip install pyarrow``), the
            file is missing or not Parquet, it has duplicate or binary columns, or too many rows.
        ValueError: if ``max_rows`` is below 1.
    """
    _check_max_rows(max_rows)
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise DatasetError(f"{where}: no such file; check the dataset's path")
    try:
        parquet = importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise DatasetError(
            f"{where}: reading Parquet needs pyarrow, which is not installed; "
            "run `pip install pyarrow` or export the dataset as CSV"
        ) from None
    try:
        arrow = parquet.read_table(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowIOError / ArrowInvalid
        raise DatasetError(f"{where}: not a readable Parquet file ({exc})") from None
    if arrow.num_rows > max_rows:
        raise _too_many_rows(where, max_rows)
    names: list[str] = list(arrow.column_names)
    _check_names(names, where)
    return Table(
        name or path.stem,
        {n: tuple(_cell(v, where) for v in arrow.column(n).to_pylist()) for n in names},
    )


def _parquet_records(path: Path, max_rows: int) -> Iterator[list[str]]:
    """The column names of a Parquet file, then each row as text, read in record batches."""
    where = str(path)
    if not path.is_file():
        raise DatasetError(f"{where}: no such file; check the dataset's path")
    try:
        parquet = importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise DatasetError(
            f"{where}: reading Parquet needs pyarrow, which is not installed; "
            "run `pip install pyarrow` or export the dataset as CSV"
        ) from None
    try:
        file: Any = parquet.ParquetFile(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowIOError / ArrowInvalid
        raise DatasetError(f"{where}: not a readable Parquet file ({exc})") from None
    names: list[str] = list(file.schema_arrow.names)
    _check_names(names, where)
    yield names
    if file.metadata.num_rows > max_rows:
        raise _too_many_rows(where, max_rows)
    for batch in file.iter_batches(batch_size=STREAM_CHUNK_ROWS):
        columns = [[_cell(v, where) for v in c.to_pylist()] for c in batch.columns]
        yield from (list(row) for row in zip(*columns, strict=True))


def _source_records(source: DataSource, name: str, max_rows: int) -> Iterator[list[str]]:
    """The column names of a declared source, then its rows as text, one at a time."""
    if source.kind == "csv":
        return _csv_records(source.path, max_rows)
    if source.kind == "sqlite":
        return _sqlite_records(source.path, source.query or "", name, max_rows)
    return _parquet_records(source.path, max_rows)


class _SourceColumns(Mapping[str, tuple[str, ...]]):
    """The columns of a table opened from a source: names at once, values when first used.

    Values read through the mapping are loaded whole and kept (``DEFAULT_MAX_ROWS``); streamed
    reads (``stream``, ``num_rows``, ``content_hash``) hold one chunk. Every read first checks
    that the file still has the size and modification time it had when the table was opened.
    """

    def __init__(self, source: DataSource, name: str) -> None:
        self._source, self._name = source, name
        records = _source_records(source, name, STREAM_MAX_ROWS)
        try:
            self.names: tuple[str, ...] = tuple(next(records))
        finally:
            close = getattr(records, "close", None)
            if close is not None:
                close()
        self._pin = self._stat()
        self._lock = threading.Lock()
        self._loaded: Mapping[str, tuple[str, ...]] | None = None
        self._rows: int | None = None
        self._hash: str | None = None

    def _stat(self) -> tuple[int, int]:
        try:
            st = os.stat(self._source.path)
        except OSError as exc:
            raise DatasetError(
                f"{self._source.path}: cannot read it ({exc.strerror}); check the dataset's path"
            ) from None
        return st.st_size, st.st_mtime_ns

    def _check_pin(self) -> None:
        if self._stat() != self._pin:
            raise DatasetError(
                f"{self._source.path} changed after this node opened dataset {self._name!r}; "
                "reload the node's catalogue (SIGHUP) or restart it, so jobs see one version"
            )

    def _records(self) -> Iterator[list[str]]:
        self._check_pin()
        records = _source_records(self._source, self._name, STREAM_MAX_ROWS)
        next(records)
        return records

    def _load(self) -> Mapping[str, tuple[str, ...]]:
        with self._lock:
            if self._loaded is None:
                self._check_pin()
                self._loaded = _OPENERS[self._source.kind](self._source, self._name).data
            return self._loaded

    def __getitem__(self, key: str) -> tuple[str, ...]:
        if key not in self.names:
            raise KeyError(key)
        return self._load()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.names

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def stream(self, columns: Sequence[str], chunk_rows: int) -> Iterator[list[list[str]]]:
        """The values of ``columns`` in chunks, read from the source as they are needed."""
        indices = [self.names.index(c) for c in columns]
        records = self._records()
        while rows := list(itertools.islice(records, chunk_rows)):
            yield [[r[i] for r in rows] for i in indices]

    def num_rows(self) -> int:
        """How many rows the source holds (counted once per opened table)."""
        with self._lock:
            if self._rows is None:
                self._rows = sum(1 for _ in self._records())
            return self._rows

    def content_hash(self) -> str:
        """``Table.content_hash`` computed by streaming: one pass to count, one per column."""
        with self._lock:
            if self._hash is None:
                rows = sum(1 for _ in self._records())
                digest = hashlib.sha256(_TABLE_HASH_DOMAIN)
                digest.update(len(self.names).to_bytes(8, "big"))
                for index, column in enumerate(self.names):
                    _hash_text(digest, column)
                    digest.update(rows.to_bytes(8, "big"))
                    for record in self._records():
                        _hash_text(digest, record[index])
                self._rows, self._hash = rows, digest.hexdigest()
            return self._hash


@dataclass(frozen=True)
class DataSource:
    """Where a node reads one catalog dataset from, as declared in ``node.toml``.

    ``[datasets.loan_book]`` with ``kind = "csv"`` and ``path = "data/loan_book.csv"`` becomes
    ``DataSource("csv", Path("data/loan_book.csv"))``.

    Attributes:
        kind: ``"csv"``, ``"sqlite"`` or ``"parquet"``.
        path: the file.
        query: the single SELECT statement of a ``"sqlite"`` source; ``None`` for the others.
    """

    kind: str
    path: Path
    query: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _OPENERS:
            raise ValueError(f"kind must be one of {sorted(_OPENERS)}, not {self.kind!r}")
        if (self.kind == "sqlite") != (self.query is not None):
            raise ValueError('a sqlite source needs query = "SELECT ..."; other kinds take none')


_OPENERS: dict[str, Callable[[DataSource, str], Table]] = {
    "csv": lambda source, name: load_csv(source.path, name),
    "parquet": lambda source, name: load_parquet(source.path, name),
    "sqlite": lambda source, name: load_sqlite(source.path, source.query or "", name),
}


def open_source(source: DataSource, name: str) -> Table:
    """Open a declared dataset as a table called ``name``, reading only its header now.

    Values are read on first use: whole (``column``, ``data``) or streamed (``iter_column``,
    ``num_rows``, ``content_hash``); see the module docstring.

    Args:
        source: the catalog entry.
        name: the dataset's catalog name.

    Returns:
        The table.

    Raises:
        DatasetError: if the source cannot be read; the message names the fix. An error
            further into the file surfaces when the values are first read.
    """
    return Table(name, _SourceColumns(source, name))


def write_csv(table: Table, path: Path) -> Path:
    """Write ``table`` as UTF-8 CSV without a byte-order mark, creating parent directories.

    ``load_csv`` reads the file back to an equal table.

    Args:
        table: the table.
        path: the file to write.

    Returns:
        ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(table.columns)
        writer.writerows(zip(*table.data.values(), strict=True))
    return path
