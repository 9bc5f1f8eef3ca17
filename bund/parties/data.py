"""Dataset sources and the table a protocol role reads its own data from.

A node declares each catalog dataset as a ``DataSource`` (CSV, SQLite, Parquet or PostgreSQL) and
opens it as a ``Table`` with ``open_source``; ``write_csv`` writes a table back as CSV. The
synthetic demo datasets are drawn in ``bund.parties.demo_data``; ``docs/datasets.md`` describes
both, and how each typed value becomes text (:func:`cell_text`).

A table opened from a CSV (in its declared encoding), SQLite or Parquet source reads only its
header at once. Its values are read on first use of ``column``/``data`` (held as Python strings,
so capped at ``DEFAULT_MAX_ROWS``), while ``iter_column``, ``num_rows``, ``content_hash`` and a
CSV table's ``quality`` counts stream the source in chunks without holding it (capped at
``STREAM_MAX_ROWS``): PSI at 10^8 ids reads its id column that way. The table pins the file it
was opened on (size and modification time): once the file changes, every read refuses, so one
table never mixes two versions of a dataset. A PostgreSQL source is read whole when it is opened
(one read-only transaction, so one consistent snapshot): it does not stream, and its
``iter_column`` slices the table in memory.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import hashlib
import importlib
import itertools
import logging
import math
import os
import re
import sqlite3
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, suppress
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from bund.compute.errors import BundError

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 10_000_000
"""Row cap of the loaders unless the caller passes another: a guard against exhausting memory."""

STREAM_MAX_ROWS = 1_000_000_000
"""Row cap of a streamed read (``Table.iter_column``), which holds one chunk at a time."""

#: Rows per chunk of ``Table.iter_column`` unless the caller asks for another size.
STREAM_CHUNK_ROWS = 65_536

DEFAULT_BATCH_ROWS = 10_000
"""Rows a PostgreSQL source fetches per round trip from its server-side cursor."""

DEFAULT_STATEMENT_TIMEOUT_S = 300.0
"""How long one statement of a PostgreSQL source may run before the server cancels it."""

CSV_ENCODINGS: Mapping[str, str] = {
    "utf-8": "utf-8-sig",
    "utf-8-sig": "utf-8-sig",
    "gbk": "gbk",
    "gb18030": "gb18030",
}
"""The encodings a CSV source may declare, and the codec each is read with.

``utf-8`` and ``utf-8-sig`` both drop a leading byte-order mark if there is one. GBK (code page
936) and GB18030 are what many Chinese institutions' systems export; GB18030 is a superset of GBK
that encodes every Unicode character, so a GBK file also reads as GB18030.
"""

#: What a CSV loader counts: blank lines between rows (skipped, as they always were).
QUALITY_BLANK_LINES = "blank_lines_skipped"

_TABLE_HASH_DOMAIN = b"bund.table.v1"


class DatasetError(BundError):
    """A dataset cannot be read or lacks what the job needs; the message names the fix."""


@dataclass(frozen=True)
class Table:
    """A party's dataset held column-wise as strings, exactly as read from its source.

    Columns are kept as text so identifiers keep their exact form (leading zeros, letters);
    ``numeric`` converts a column when a computation needs numbers.

    ``quality`` holds what the loader counted while reading (for a CSV file, blank lines it
    skipped): facts about its owner's data that stay with the owner. A role that reads the table
    reports them through ``JobContext.note_quality``; they are no part of the table's content, its
    equality or its version. A CSV table opened from a source counts them by streaming the file
    the first time they are read (with its row count, in the same pass).
    """

    name: str
    data: Mapping[str, tuple[str, ...]]
    quality: Mapping[str, int] = field(default_factory=dict, compare=False)

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

        A table opened from a CSV, SQLite or Parquet source streams them (one chunk in memory,
        up to ``STREAM_MAX_ROWS`` rows); an in-memory table (PostgreSQL's among them) slices its
        column.

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
                f"dataset {self.name!r} has no column {name!r}; bind a column it has"
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


def cell_text(value: object, where: str, column: str) -> str:
    """One value of a typed source (SQLite, Parquet, PostgreSQL) as the text a ``Table`` holds.

    Every typed source writes its values the same way, so a dataset moved from one source to
    another keeps its content hash: NULL becomes the empty string, booleans ``1``/``0``, integers
    their decimal digits, floats the shortest text that reads back to the same float (``0.1``,
    ``1e-07``, ``nan``, ``inf``), decimals (SQL ``numeric``) their digits in positional notation
    with their scale kept (``120.50``), dates, times and timestamps ISO 8601 (``2025-06-30``,
    ``2025-06-30T09:15:00``; one with a time zone converted to UTC, ``+00:00``), UUIDs their
    hyphenated form, text as it is.

    Raises:
        DatasetError: for binary data and values with no single text form (arrays, JSON documents,
            intervals), naming the column and how to select it as text instead.

    >>> cell_text(Decimal("1E-7"), "t", "x"), cell_text(0.1, "t", "x"), cell_text(True, "t", "x")
    ('0.0000001', '0.1', '1')
    >>> cell_text(dt.datetime(2025, 6, 30, 17, 15, tzinfo=dt.timezone(dt.timedelta(hours=8))),
    ...           "t", "x")
    '2025-06-30T09:15:00+00:00'
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None and value.utcoffset() is not None:
            value = value.astimezone(dt.UTC)
        return value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        raise DatasetError(
            f"{where}: column {column!r} holds binary data; select it as text (e.g. hex())"
        )
    raise DatasetError(
        f"{where}: column {column!r} holds {type(value).__name__} values, which have no single "
        "text form; convert them to text in the source (SQL: column::text)"
    )


def _columns_as_text(
    names: Sequence[str], rows: Iterable[Sequence[object]], where: str
) -> list[list[str]]:
    columns: list[list[str]] = [[] for _ in names]
    for row in rows:
        for values, column, value in zip(columns, names, row, strict=True):
            values.append(value if type(value) is str else cell_text(value, where, column))
    return columns


def load_csv(
    path: Path | str,
    name: str | None = None,
    *,
    encoding: str = "utf-8",
    max_rows: int = DEFAULT_MAX_ROWS,
) -> Table:
    r"""Read a CSV file whose first line names the columns.

    Args:
        path: the file; blank lines are skipped (those between rows are counted in the table's
            ``quality`` as ``blank_lines_skipped``).
        name: the table's name; the file's stem if not given.
        encoding: one of :data:`CSV_ENCODINGS`: ``utf-8`` (the default, with or without a
            byte-order mark), ``utf-8-sig``, ``gbk`` or ``gb18030``.
        max_rows: refuse a file with more data rows than this.

    Returns:
        The table, every value as text.

    Raises:
        DatasetError: if the file is missing, unreadable, not text in ``encoding`` (naming the
            line), empty, malformed, has an empty or duplicate column name, a row with the wrong
            number of fields, or too many rows.
        ValueError: if ``max_rows`` is below 1 or ``encoding`` is not one of the four.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "loans.csv"
    >>> _ = p.write_text("company_id,amount\n91350100M000100Y43,120\n", encoding="utf-8")
    >>> load_csv(p).numeric("amount")
    array([120.])
    >>> _ = p.write_text("企业名称,amount\n上海浦东发展银行,120\n", encoding="gb18030")
    >>> load_csv(p, encoding="gb18030").column("企业名称")
    ('上海浦东发展银行',)
    """
    _check_max_rows(max_rows)
    path = Path(path)
    quality: dict[str, int] = {}
    records = _csv_records(path, encoding, max_rows, quality)
    header = next(records)
    rows = list(records)
    blank = quality[QUALITY_BLANK_LINES]
    if blank:
        log.warning("%s: %d blank line(s) between rows skipped", path, blank)
    columns = zip(*rows, strict=True) if rows else ((),) * len(header)
    return Table(
        name or path.stem, dict(zip(header, (tuple(c) for c in columns), strict=True)), quality
    )


def _csv_records(
    path: Path, encoding: str, max_rows: int, quality: dict[str, int] | None = None
) -> Iterator[list[str]]:
    """The header of a CSV file, then each data record, checked as ``load_csv`` documents.

    ``quality``, if given, gets ``blank_lines_skipped``: the blank lines between the records
    read so far (final once the records are exhausted).
    """
    codec = _csv_codec(encoding)
    try:
        with path.open(encoding=codec, newline="") as f:
            records = _checked_csv(csv.reader(f, strict=True), str(path), max_rows, quality)
            header = next(records)
            if header[0].startswith("\ufeff"):  # GB18030's byte-order mark (0x84 0x31 0x95 0x33)
                header[0] = header[0][1:]
                _check_names(header, str(path))
            yield header
            yield from records
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file; check the dataset's path") from None
    except UnicodeDecodeError as exc:
        raise _not_decodable(path, encoding, codec, exc) from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read it ({exc.strerror}); check the path") from None


def _csv_codec(encoding: str) -> str:
    try:
        return CSV_ENCODINGS[encoding]
    except KeyError:
        raise ValueError(
            f"encoding must be one of {sorted(CSV_ENCODINGS)}, not {encoding!r}"
        ) from None


def _not_decodable(path: Path, encoding: str, codec: str, exc: UnicodeDecodeError) -> DatasetError:
    """The error for a file that is not text in ``encoding``, naming the first bad line."""
    where = _first_undecodable_line(path, codec)
    place = f"line {where[0]}" if where else "somewhere"
    reason, byte = (where[1], where[2]) if where else (exc.reason, exc.start)
    others = [e for e in ("utf-8", "gb18030") if CSV_ENCODINGS[e] != codec]
    hint = " or ".join(f'encoding = "{e}"' for e in others)
    name = encoding.upper()
    return DatasetError(
        f"{path} {place}: not {name} text ({reason} at byte {byte + 1} of the line); declare "
        f"the file's encoding in its dataset entry ({hint}) or save it as {name}"
    )


def _first_undecodable_line(path: Path, codec: str) -> tuple[int, str, int] | None:
    """The first line of ``path`` that ``codec`` cannot decode: (number, reason, byte in it).

    Lines split at newline bytes (0x0A), which UTF-8, GBK and GB18030 never use inside a
    multibyte character, so each line decodes on its own.
    """
    decoder = codecs.getincrementaldecoder(codec)()
    number = 0
    try:
        with path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    decoder.decode(raw)
                except UnicodeDecodeError as exc:
                    return number, exc.reason, exc.start
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        return max(number, 1), f"{exc.reason} at the end of the file", exc.start
    except OSError:
        return None
    return None


def _checked_csv(
    reader: Iterable[list[str]], where: str, max_rows: int, quality: dict[str, int] | None
) -> Iterator[list[str]]:
    """The header, then the rows; blank lines between rows (trailing ones aside) are counted."""
    records = iter(reader)
    counts: dict[str, int] = {} if quality is None else quality
    line = 1
    skipped = pending = rows = 0
    counts[QUALITY_BLANK_LINES] = 0
    try:
        header = next(records, None)
        if not header:
            raise DatasetError(
                f"{where}: the file is empty or its first line is blank; "
                "the first line must name the columns"
            )
        _check_names(header, where)
        yield header
        for line, record in enumerate(records, start=2):
            if not record:
                pending += 1
                continue
            skipped, pending = skipped + pending, 0
            counts[QUALITY_BLANK_LINES] = skipped
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


def _check_select(query: str, where: str) -> str:
    """``query`` without a trailing ``;`` if it starts as one SELECT statement, else raise."""
    statement = query.strip().removesuffix(";").rstrip()
    first_word = statement.split(None, 1)[0].upper() if statement else ""
    if first_word not in {"SELECT", "WITH"}:
        raise DatasetError(f"{where}: the query must be one SELECT statement, not {query!r}")
    return statement


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
        The result, each value as text (:func:`cell_text`).

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
    statement = _check_select(query, where)
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
            while batch := cursor.fetchmany(DEFAULT_BATCH_ROWS):
                count += len(batch)
                if count > max_rows:
                    raise _too_many_rows(where, max_rows)
                for row in batch:
                    yield [
                        v if type(v) is str else cell_text(v, where, c)
                        for c, v in zip(names, row, strict=True)
                    ]
    except sqlite3.ProgrammingError as exc:
        raise DatasetError(f"{where}: the query must be one SELECT statement ({exc})") from None
    except sqlite3.Error as exc:
        raise DatasetError(f"{where}: the query failed ({exc}); check the SQL") from None


_SQLITE_READ_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)


def _read_only_authorizer(action: int, *_: str | None) -> int:
    return sqlite3.SQLITE_OK if action in _SQLITE_READ_ACTIONS else sqlite3.SQLITE_DENY


def _optional(module: str, extra: str, purpose: str, where: str) -> Any:
    """Import an optional dependency, or raise naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DatasetError(
            f"{where}: {purpose} needs {module.split('.')[0]}, which is not installed; install "
            f"Bund with its {extra!r} extra: pip install 'bund[{extra}]'"
        ) from None


def load_parquet(
    path: Path | str, name: str | None = None, *, max_rows: int = DEFAULT_MAX_ROWS
) -> Table:
    """Read a Parquet file; needs pyarrow, installed by the ``parquet`` extra.

    The row count is read from the file's footer first, so a file over ``max_rows`` is refused
    before any row is read; the rows are then converted a record batch at a time.

    Args:
        path: the file.
        name: the table's name; the file's stem if not given.
        max_rows: refuse a file with more rows than this.

    Returns:
        The table, each value as text (:func:`cell_text`; a 32-bit float as the shortest text of
        its own precision, ``1.1`` rather than ``1.100000023841858``).

    Raises:
        DatasetError: if pyarrow is not installed (the message names the ``parquet`` extra), the
            file is missing or not Parquet, it has duplicate, binary or nested columns,
            nanosecond timestamps that are not whole microseconds, or too many rows.
        ValueError: if ``max_rows`` is below 1.
    """
    _check_max_rows(max_rows)
    path = Path(path)
    names, batches = _parquet_batches(path, max_rows)
    columns: list[list[str]] = [[] for _ in names]
    for batch in batches:
        for values, column in zip(columns, batch, strict=True):
            values += column
    return Table(name or path.stem, {n: tuple(c) for n, c in zip(names, columns, strict=True)})


def _parquet_batches(path: Path, max_rows: int) -> tuple[list[str], Iterator[list[list[str]]]]:
    """The column names of a Parquet file (read now), and its record batches as text columns.

    The row count comes from the file's footer, so a file over ``max_rows`` is refused before
    any row is read.
    """
    where = str(path)
    if not path.is_file():
        raise DatasetError(f"{where}: no such file; check the dataset's path")
    parquet = _optional("pyarrow.parquet", "parquet", "reading Parquet", where)
    pa = _optional("pyarrow", "parquet", "reading Parquet", where)
    try:
        file = parquet.ParquetFile(path)
        schema = file.schema_arrow
        if file.metadata.num_rows > max_rows:
            raise _too_many_rows(where, max_rows)
        names: list[str] = list(schema.names)
        _check_names(names, where)
    except (OSError, ValueError, TypeError, pa.ArrowException) as exc:
        raise DatasetError(f"{where}: not a readable Parquet file ({exc})") from None
    return names, _arrow_batches(pa, file, names, where)


def _arrow_batches(pa: Any, file: Any, names: list[str], where: str) -> Iterator[list[list[str]]]:
    """Each record batch of an open Parquet file, one list of text values per column."""
    try:
        for batch in file.iter_batches(batch_size=DEFAULT_BATCH_ROWS):
            yield [_arrow_text(pa, batch.column(j), where, c) for j, c in enumerate(names)]
    except (OSError, ValueError, TypeError, pa.ArrowException) as exc:
        raise DatasetError(f"{where}: not a readable Parquet file ({exc})") from None


def _parquet_records(path: Path, max_rows: int) -> Iterator[list[str]]:
    """The column names of a Parquet file, then each row as text, read in record batches."""
    names, batches = _parquet_batches(path, max_rows)
    yield names
    for batch in batches:
        yield from (list(row) for row in zip(*batch, strict=True))


def _arrow_text(pa: Any, array: Any, where: str, column: str) -> list[str]:
    """One Arrow column as text; 32- and 16-bit floats in the shortest form of their precision."""
    kind = array.type
    if pa.types.is_float32(kind) or pa.types.is_float16(kind):
        width = np.float32 if pa.types.is_float32(kind) else np.float16
        return [
            "" if v is None else str(width(v)) if math.isfinite(v) else repr(float(v))
            for v in array.to_pylist()
        ]
    if pa.types.is_timestamp(kind) and kind.unit == "ns":
        nanos = array.cast(pa.int64()).to_pylist()
        if any(v is not None and v % 1000 for v in nanos):
            raise DatasetError(
                f"{where}: column {column!r} holds timestamps with nanoseconds; store them with "
                "microsecond precision (pyarrow: coerce_timestamps='us')"
            )
        array = array.cast(pa.timestamp("us", kind.tz))
    if pa.types.is_dictionary(kind):
        array = array.dictionary_decode()
    return [v if type(v) is str else cell_text(v, where, column) for v in array.to_pylist()]


# -- PostgreSQL ------------------------------------------------------------------------------------

#: A schema or table name in ``table = "schema.table"``: no dot, quote, whitespace or NUL.
_PG_NAME = re.compile(r'^[^\s."\x00]{1,63}$')


def check_postgres_url(url: str) -> str:
    """``url`` if it is a ``postgresql://`` URL that holds no password, else ``ValueError``.

    A password in the URL would sit in ``node.toml`` in clear (and in every copy of it); a
    PostgreSQL source takes it from ``password_env`` or ``password_file`` instead. The message
    never repeats the URL, which may hold the very password it refuses.

    >>> check_postgres_url("postgresql://bund_reader@db.bank.example:5432/core?sslmode=verify-full")
    'postgresql://bund_reader@db.bank.example:5432/core?sslmode=verify-full'
    >>> check_postgres_url("postgresql://bund_reader:s3cret@db/core")
    Traceback (most recent call last):
    ValueError: url holds a password: remove it and set password_env or password_file instead
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("url must be a postgresql:// URL (postgresql://USER@HOST:PORT/DATABASE)")
    try:
        has_password = parts.password is not None
    except ValueError:
        raise ValueError("url is not a well-formed postgresql:// URL") from None
    if has_password or "password" in parse_qs(parts.query):
        raise ValueError(
            "url holds a password: remove it and set password_env or password_file instead"
        )
    return url


def postgres_table_name(table: str) -> tuple[str, str]:
    """``"schema.table"`` split into its two names, each checked; else ``ValueError``.

    The names are later quoted as identifiers (``psycopg.sql.Identifier``), so they match the
    catalog exactly: ``lending.loan_book``, not ``Lending.Loan_Book``, for a table created
    without quotes.

    >>> postgres_table_name("lending.loan_book")
    ('lending', 'loan_book')
    """
    parts = table.split(".")
    if len(parts) != 2 or not all(_PG_NAME.match(p) for p in parts):
        raise ValueError(
            f'table must be "schema.table" (two names of 1-63 characters without dots, quotes '
            f"or spaces), not {table!r}"
        )
    return parts[0], parts[1]


def _postgres_where(url: str, name: str) -> str:
    """Where a PostgreSQL source reads from, for messages: host, port, database; no secret."""
    parts = urlsplit(url)
    host = parts.hostname or "the local socket"
    port = f":{parts.port}" if parts.port else ""
    return f"PostgreSQL dataset {name!r} ({host}{port}{parts.path})"


def load_postgres(
    url: str,
    name: str,
    *,
    table: str | None = None,
    query: str | None = None,
    password: str | None = None,
    statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> Table:
    """Read a PostgreSQL table or query result; needs psycopg, installed by the ``postgres`` extra.

    The read runs in one transaction that is made read-only (``SET TRANSACTION READ ONLY``) before
    anything else, with a per-statement timeout (``statement_timeout``), and is rolled back at the
    end: no write of any kind (a data-modifying ``WITH``, a function that writes, a sequence's
    ``nextval``) can run in it. The role connected as should have SELECT only
    (``docs/datasets.md`` shows the GRANTs), and a superuser role is refused. The rows stream
    from a server-side cursor, ``batch_rows`` at a time, and the read stops as soon as it passes
    ``max_rows``.

    Args:
        url: a ``postgresql://USER@HOST:PORT/DATABASE`` URL without a password
            (:func:`check_postgres_url`); libpq parameters such as ``sslmode`` go in its query.
        name: the table's name.
        table: ``"schema.table"``: every column, rows ordered by all columns so that the
            dataset's version does not depend on how the server happens to scan it.
        query: a single ``SELECT`` (or ``WITH ... SELECT``) statement instead of ``table``; add an
            ``ORDER BY`` for a stable version.
        password: the role's password; None leaves authentication to libpq (a client
            certificate in ``url``, ``PGPASSFILE``, peer authentication on a local socket).
        statement_timeout_s: the server cancels any one statement of the read after this long.
        max_rows: refuse a result with more rows than this.
        batch_rows: rows fetched per round trip.

    Returns:
        The result, each value as text (:func:`cell_text`).

    Raises:
        DatasetError: if psycopg is not installed (naming the ``postgres`` extra), the server
            cannot be reached or refuses the login, the role is a superuser, the query is not one
            SELECT, tries to write, fails or times out, a column is duplicated or has no text
            form, or there are too many rows.
        ValueError: if the URL holds a password, not exactly one of ``table`` and ``query`` is
            given, ``table`` is not ``schema.table``, or a bound is not positive.
    """
    _check_max_rows(max_rows)
    check_postgres_url(url)
    if (table is None) == (query is None):
        raise ValueError("give a PostgreSQL source either table or query, not both or neither")
    if statement_timeout_s <= 0 or batch_rows < 1:
        raise ValueError("statement_timeout_s and batch_rows must be positive")
    where = _postgres_where(url, name)
    psycopg = _optional("psycopg", "postgres", "reading PostgreSQL", where)
    sql = psycopg.sql
    if table is not None:
        schema, relation = postgres_table_name(table)
        statement = sql.SQL("SELECT * FROM {} AS bund_row ORDER BY ROW(bund_row.*)").format(
            sql.Identifier(schema, relation)
        )
    else:
        statement = sql.SQL(_check_select(query or "", where))
    extra = {} if password is None else {"password": password}
    try:
        connection = psycopg.connect(
            url, connect_timeout=30, application_name="bund dataset reader", **extra
        )
    except psycopg.Error as exc:
        raise DatasetError(f"{where}: cannot connect ({_pg_message(exc)})") from None
    with closing(connection):
        try:
            names, columns = _read_postgres(
                connection, statement, statement_timeout_s, max_rows, batch_rows, where, table
            )
        except psycopg.Error as exc:
            raise DatasetError(f"{where}: the read failed ({_pg_message(exc)})") from None
        finally:
            with suppress(psycopg.Error):  # nothing to keep; closing would roll back as well
                connection.rollback()
    return Table(name, {n: tuple(c) for n, c in zip(names, columns, strict=True)})


def _read_postgres(
    connection: Any,
    statement: Any,
    timeout_s: float,
    max_rows: int,
    batch_rows: int,
    where: str,
    table: str | None,
) -> tuple[list[str], list[list[str]]]:
    """The read itself, inside the one read-only transaction (begun by the first statement)."""
    connection.execute("SET TRANSACTION READ ONLY")
    connection.execute(
        "SELECT set_config('statement_timeout', %s, true), set_config('TimeZone', 'UTC', true)",
        (f"{max(1, round(timeout_s * 1000))}ms",),
    )
    (superuser,) = connection.execute(
        "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if superuser:
        raise DatasetError(
            f"{where}: connected as a superuser role; connect as a role that may only SELECT "
            "the dataset (docs/datasets.md shows the GRANTs)"
        )
    if table is not None:
        (writable,) = connection.execute(
            "SELECT has_table_privilege(%s, 'INSERT,UPDATE,DELETE,TRUNCATE')",
            (".".join(f'"{p}"' for p in postgres_table_name(table)),),
        ).fetchone()
        if writable:
            log.warning(
                "%s: the role it connects as may write to %s; grant it SELECT only", where, table
            )
    with connection.cursor(name="bund_dataset") as cursor:
        cursor.itersize = batch_rows
        cursor.execute(statement)
        names = [d.name for d in cursor.description]
        _check_names(names, where)
        columns: list[list[str]] = [[] for _ in names]
        count = 0
        while batch := cursor.fetchmany(batch_rows):
            count += len(batch)
            if count > max_rows:
                raise _too_many_rows(where, max_rows)
            for values, column in zip(columns, _columns_as_text(names, batch, where), strict=True):
                values += column
    return names, columns


def _pg_message(exc: BaseException) -> str:
    """A psycopg error's first line: the server's or libpq's words, which hold no password."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# -- declared sources ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSource:
    """Where a node reads one catalog dataset from, as declared in ``node.toml``.

    ``[datasets.loan_book]`` with ``kind = "csv"`` and ``path = "data/loan_book.csv"`` becomes
    ``DataSource("csv", Path("data/loan_book.csv"))``; ``docs/datasets.md`` has an example of
    each kind.

    Attributes:
        kind: ``"csv"``, ``"sqlite"``, ``"parquet"`` or ``"postgres"``.
        path: the file of a ``csv``, ``sqlite`` or ``parquet`` source.
        query: the single SELECT statement of a ``sqlite`` source, or of a ``postgres`` one that
            names no ``table``.
        encoding: the text encoding of a ``csv`` source (:data:`CSV_ENCODINGS`).
        url: the ``postgresql://`` URL of a ``postgres`` source, without a password.
        table: the ``"schema.table"`` a ``postgres`` source reads whole, instead of a query.
        password: the password of a ``postgres`` source's role, as ``node.toml``'s
            ``password_env`` or ``password_file`` gave it; never shown (no ``repr``).
        statement_timeout_s: a ``postgres`` source's statement timeout.
    """

    kind: str
    path: Path | None = None
    query: str | None = None
    encoding: str = "utf-8"
    url: str | None = None
    table: str | None = None
    password: str | None = field(default=None, repr=False, compare=False)
    statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.kind not in _OPENERS:
            raise ValueError(f"kind must be one of {sorted(_OPENERS)}, not {self.kind!r}")
        _csv_codec(self.encoding)
        if self.kind == "postgres":
            self._check_postgres()
            return
        if self.path is None:
            raise ValueError(f'a {self.kind} source needs path = "FILE"')
        if (self.kind == "sqlite") != (self.query is not None):
            raise ValueError('a sqlite source needs query = "SELECT ..."; other kinds take none')
        if self.encoding != "utf-8" and self.kind != "csv":
            raise ValueError("only a csv source takes an encoding")
        if self.url is not None or self.table is not None or self.password is not None:
            raise ValueError("url, table and a password belong to postgres sources only")

    def _check_postgres(self) -> None:
        if self.url is None:
            raise ValueError('a postgres source needs url = "postgresql://USER@HOST:PORT/DB"')
        check_postgres_url(self.url)
        if (self.table is None) == (self.query is None):
            raise ValueError(
                'a postgres source needs either table = "schema.table" or query = "SELECT ...", '
                "not both"
            )
        if self.table is not None:
            postgres_table_name(self.table)
        if self.path is not None or self.encoding != "utf-8":
            raise ValueError("a postgres source takes no path and no encoding")
        if not self.statement_timeout_s > 0:
            raise ValueError("statement_timeout_s must be positive")


def _open_postgres(source: DataSource, name: str) -> Table:
    return load_postgres(
        source.url or "",
        name,
        table=source.table,
        query=source.query,
        password=source.password,
        statement_timeout_s=source.statement_timeout_s,
    )


def _path(source: DataSource) -> Path:
    assert source.path is not None  # checked by DataSource
    return source.path


_OPENERS: dict[str, Callable[[DataSource, str], Table]] = {
    "csv": lambda source, name: load_csv(_path(source), name, encoding=source.encoding),
    "parquet": lambda source, name: load_parquet(_path(source), name),
    "sqlite": lambda source, name: load_sqlite(_path(source), source.query or "", name),
    "postgres": _open_postgres,
}


def _source_records(
    source: DataSource, name: str, max_rows: int, quality: dict[str, int] | None = None
) -> Iterator[list[str]]:
    """The column names of a file source, then its rows as text, one at a time.

    ``quality`` gets what the reader counts (a CSV file's blank lines between rows).
    """
    if source.kind == "csv":
        return _csv_records(_path(source), source.encoding, max_rows, quality)
    if source.kind == "sqlite":
        return _sqlite_records(_path(source), source.query or "", name, max_rows)
    return _parquet_records(_path(source), max_rows)


#: The kinds of source ``open_source`` opens lazily and streams (files it can pin).
_STREAMED_KINDS = frozenset({"csv", "sqlite", "parquet"})


class _SourceColumns(Mapping[str, tuple[str, ...]]):
    """The columns of a table opened from a file source: names at once, values when first used.

    Values read through the mapping are loaded whole and kept (``DEFAULT_MAX_ROWS``); streamed
    reads (``stream``, ``num_rows``, ``quality``, ``content_hash``) hold one chunk. Every read
    first checks that the file still has the size and modification time it had when the table
    was opened.
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
        self._lock = threading.RLock()
        self._loaded: Table | None = None
        self._rows: int | None = None
        self._quality: dict[str, int] | None = None
        self._hash: str | None = None

    def _stat(self) -> tuple[int, int]:
        path = _path(self._source)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise DatasetError(
                f"{path}: cannot read it ({exc.strerror}); check the dataset's path"
            ) from None
        return st.st_size, st.st_mtime_ns

    def _check_pin(self) -> None:
        if self._stat() != self._pin:
            raise DatasetError(
                f"{self._source.path} changed after this node opened dataset {self._name!r}; "
                "reload the node's catalogue (SIGHUP) or restart it, so jobs see one version"
            )

    def _records(self, quality: dict[str, int] | None = None) -> Iterator[list[str]]:
        self._check_pin()
        records = _source_records(self._source, self._name, STREAM_MAX_ROWS, quality)
        next(records)
        return records

    def _load(self) -> Table:
        with self._lock:
            if self._loaded is None:
                self._check_pin()
                self._loaded = _OPENERS[self._source.kind](self._source, self._name)
            return self._loaded

    def __getitem__(self, key: str) -> tuple[str, ...]:
        if key not in self.names:
            raise KeyError(key)
        return self._load().data[key]

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

    def _scan(self) -> tuple[int, dict[str, int]]:
        """The row count and the reader's quality counts: one streamed pass, done once."""
        with self._lock:
            if self._rows is None or self._quality is None:
                if self._loaded is not None:
                    rows, quality = self._loaded.num_rows, dict(self._loaded.quality)
                else:
                    quality = {}
                    rows = sum(1 for _ in self._records(quality))
                    if quality.get(QUALITY_BLANK_LINES):
                        log.warning(
                            "%s: %d blank line(s) between rows skipped",
                            self._source.path,
                            quality[QUALITY_BLANK_LINES],
                        )
                self._rows, self._quality = rows, quality
            return self._rows, self._quality

    def num_rows(self) -> int:
        """How many rows the source holds (counted once per opened table)."""
        return self._scan()[0]

    def quality(self) -> dict[str, int]:
        """What the reader counted (a CSV file's blank lines), counted once per opened table."""
        return self._scan()[1]

    def counted_quality(self) -> dict[str, int] | None:
        """The quality counts if a pass has counted them already, else None (reads nothing)."""
        with self._lock:
            if self._quality is not None:
                return self._quality
            return None if self._loaded is None else dict(self._loaded.quality)

    def content_hash(self) -> str:
        """``Table.content_hash`` computed by streaming: one pass to count, one per column."""
        with self._lock:
            if self._hash is None:
                if self._loaded is not None:
                    self._hash = self._loaded.content_hash()
                    return self._hash
                rows = self.num_rows()
                digest = hashlib.sha256(_TABLE_HASH_DOMAIN)
                digest.update(len(self.names).to_bytes(8, "big"))
                for index, column in enumerate(self.names):
                    _hash_text(digest, column)
                    digest.update(rows.to_bytes(8, "big"))
                    for record in self._records():
                        _hash_text(digest, record[index])
                self._hash = digest.hexdigest()
            return self._hash


class _SourceQuality(Mapping[str, int]):
    """The ``quality`` of a CSV table opened from a source: counted when first read."""

    def __init__(self, columns: _SourceColumns) -> None:
        self._columns = columns

    def __getitem__(self, key: str) -> int:
        return self._columns.quality()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns.quality())

    def __len__(self) -> int:
        return len(self._columns.quality())

    def __repr__(self) -> str:
        counted = self._columns.counted_quality()
        return "<counted on first read>" if counted is None else repr(counted)


def open_source(source: DataSource, name: str) -> Table:
    """Open a declared dataset as a table called ``name``.

    A CSV, SQLite or Parquet source is opened lazily: only its header is read now, and its
    values on first use, whole (``column``, ``data``) or streamed (``iter_column``,
    ``num_rows``, ``content_hash``, a CSV table's ``quality``); see the module docstring. A
    PostgreSQL source is read whole now.

    Args:
        source: the catalog entry.
        name: the dataset's catalog name.

    Returns:
        The table.

    Raises:
        DatasetError: if the source cannot be read; the message names the fix. An error
            further into a file surfaces when its values are first read.
    """
    if source.kind not in _STREAMED_KINDS:
        return _OPENERS[source.kind](source, name)
    columns = _SourceColumns(source, name)
    quality: Mapping[str, int] = _SourceQuality(columns) if source.kind == "csv" else {}
    return Table(name, columns, quality)


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
