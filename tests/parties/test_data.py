"""Dataset sources and the in-memory table (docs/datasets.md); the demo data: test_demo_data.py."""

from __future__ import annotations

import sqlite3
import sys
import types
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from bund.parties.data import (
    DatasetError,
    DataSource,
    Table,
    load_csv,
    load_parquet,
    load_sqlite,
    open_source,
    write_csv,
)

# -- Table ---------------------------------------------------------------------------------------


def test_select_keeps_order_and_name_and_refuses_bad_positions() -> None:
    t = Table.from_columns("t", {"id": ["a", "b", "c"], "x": ["1", "2", "3"]})
    picked = t.select([2, 0, 2])
    assert picked.name == "t" and picked.data == {"id": ("c", "a", "c"), "x": ("3", "1", "3")}
    with pytest.raises(ValueError, match="outside"):
        t.select([3])
    with pytest.raises(ValueError, match="outside"):
        t.select([-1])


def test_content_hash_is_the_content_not_the_name() -> None:
    a = Table.from_columns("a", {"id": ["1", "2"], "x": ["3", "4"]})
    assert (
        a.content_hash()
        == Table.from_columns("b", {"id": ["1", "2"], "x": ["3", "4"]}).content_hash()
    )
    assert len(a.content_hash()) == 64 and int(a.content_hash(), 16) >= 0
    others = [
        {"id": ["1", "2"], "x": ["3", "5"]},  # a value
        {"x": ["3", "4"], "id": ["1", "2"]},  # column order
        {"id": ["1", "2"], "y": ["3", "4"]},  # a column name
        {"id": ["12", ""], "x": ["3", "4"]},  # value boundaries
        {"id": ["1", "2"]},  # a column fewer
    ]
    assert (
        len({a.content_hash()} | {Table.from_columns("a", o).content_hash() for o in others}) == 6
    )


# -- CSV -----------------------------------------------------------------------------------------


def write(tmp_path: Path, text: str | bytes, name: str = "d.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def test_csv_round_trip_keeps_text_exactly(tmp_path: Path) -> None:
    table = Table.from_columns(
        "loans", {"id": ["007", "a,b", 'say "hi"', "行"], "amount": ["1.50", "", "2", "3e3"]}
    )
    path = write_csv(table, tmp_path / "sub" / "loans.csv")
    assert load_csv(path) == table
    assert load_csv(path, "other").name == "other"
    assert path.read_bytes().startswith(b"id,amount\n007,1.50\n")
    one_column = Table.from_columns("ids", {"id": ["", "a", ""]})
    assert load_csv(write_csv(one_column, tmp_path / "ids.csv")) == one_column


def test_csv_with_bom_blank_lines_and_header_only(tmp_path: Path) -> None:
    bom = write(tmp_path, "\ufeffid,x\n1,2\n\n3,4\n\n")
    assert load_csv(bom).data == {"id": ("1", "3"), "x": ("2", "4")}
    header_only = load_csv(write(tmp_path, "id,x\n", "h.csv"))
    assert header_only.columns == ("id", "x") and header_only.num_rows == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ("\n\nid\n1\n", "first line is blank"),
        ("id,,x\n1,2,3\n", r"header column\(s\) \[2\] have no name"),
        ("id, \n1,2\n", r"header column\(s\) \[2\] have no name"),
        ("id,x,id\n1,2,3\n", r"\['id'\] appear more than once"),
        ("id,x\n1,2\n3\n", "record 3: 1 fields but the header names 2"),
        ("id,x\n1,2,3\n", "record 2: 3 fields"),
        ('id,x\n1,"a"b\n', "malformed CSV"),
        (b"id,x\n1,\xff\n", "not UTF-8"),
    ],
)
def test_csv_errors_say_what_to_fix(tmp_path: Path, content: str | bytes, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_csv(write(tmp_path, content))


def test_csv_missing_file_directory_and_row_cap(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        load_csv(tmp_path / "absent.csv")
    with pytest.raises(DatasetError, match="cannot read"):
        load_csv(tmp_path)
    path = write(tmp_path, "id\n1\n2\n3\n")
    assert load_csv(path, max_rows=3).num_rows == 3
    with pytest.raises(DatasetError, match="more than 2 rows; pass a larger max_rows"):
        load_csv(path, max_rows=2)
    with pytest.raises(ValueError, match="max_rows"):
        load_csv(path, max_rows=0)


# -- SQLite --------------------------------------------------------------------------------------


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "bank.db"
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE loans (company_id TEXT, amount REAL, term INTEGER, doc BLOB)")
        db.executemany(
            "INSERT INTO loans VALUES (?, ?, ?, ?)",
            [("91350100M000100Y43", 120.5, 12, b"\x00"), ("0012", None, 24, None)],
        )
    return path


def count_loans(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        (n,) = db.execute("SELECT count(*) FROM loans").fetchone()
        return int(n)


def test_sqlite_select(database: Path) -> None:
    t = load_sqlite(database, "SELECT company_id, amount, term FROM loans ORDER BY rowid;", "loans")
    assert t.name == "loans"
    assert t.data == {
        "company_id": ("91350100M000100Y43", "0012"),
        "amount": ("120.5", ""),
        "term": ("12", "24"),
    }
    with_cte = "WITH big AS (SELECT * FROM loans WHERE term > 12) SELECT company_id FROM big"
    assert load_sqlite(database, with_cte, "big").column("company_id") == ("0012",)
    empty = load_sqlite(database, "select term from loans where 0", "none")
    assert empty.columns == ("term",) and empty.num_rows == 0


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("DELETE FROM loans", "must be one SELECT statement"),
        ("", "must be one SELECT statement"),
        ("PRAGMA writable_schema = 1", "must be one SELECT statement"),
        ("SELECT 1; DELETE FROM loans", "must be one SELECT statement"),
        ("WITH x AS (SELECT 1) DELETE FROM loans", "not authorized"),
        ("WITH x AS (SELECT 1) INSERT INTO loans (term) SELECT 1 FROM x", "not authorized"),
        ("SELECT * FROM nowhere", "no such table"),
        ("SELECT term, term FROM loans", r"\['term'\] appear more than once"),
        ("SELECT doc FROM loans", "binary data"),
    ],
)
def test_sqlite_refuses_all_but_one_read(database: Path, query: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_sqlite(database, query, "loans")
    assert count_loans(database) == 2


def test_sqlite_missing_file_not_a_database_and_row_cap(database: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such database file"):
        load_sqlite(tmp_path / "absent.db", "SELECT 1", "x")
    assert not (tmp_path / "absent.db").exists()
    with pytest.raises(DatasetError, match="query failed.*not a database"):
        load_sqlite(write(tmp_path, "id\n1\n" * 200), "SELECT * FROM loans", "x")
    assert load_sqlite(database, "SELECT term FROM loans", "x", max_rows=2).num_rows == 2
    with pytest.raises(DatasetError, match="more than 1 rows"):
        load_sqlite(database, "SELECT term FROM loans", "x", max_rows=1)


# -- Parquet -------------------------------------------------------------------------------------


class FakeColumn:
    def __init__(self, values: list[Any]) -> None:
        self.values = values

    def to_pylist(self) -> list[Any]:
        return self.values


class FakeArrowTable:
    def __init__(self, columns: dict[str, list[Any]], names: list[str] | None = None) -> None:
        self.columns = columns
        self.column_names = names or list(columns)
        self.num_rows = len(next(iter(columns.values())))

    def column(self, name: str) -> FakeColumn:
        return FakeColumn(self.columns[name])


def fake_pyarrow(monkeypatch: pytest.MonkeyPatch, read: Any) -> None:
    module = types.ModuleType("pyarrow.parquet")
    module.read_table = read  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", module)


def test_parquet_without_pyarrow_gives_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = write(tmp_path, b"PAR1", "d.parquet")
    with pytest.raises(DatasetError, match="pip install pyarrow"):
        load_parquet(path)
    with pytest.raises(DatasetError, match="pip install pyarrow"):
        open_source(DataSource("parquet", path), "d")
    with pytest.raises(DatasetError, match="no such file"):
        load_parquet(tmp_path / "absent.parquet")


def test_parquet_values_become_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrow = FakeArrowTable({"id": ["a", None], "flag": [True, False], "x": [1.5, 2]})
    fake_pyarrow(monkeypatch, lambda path: arrow)
    path = write(tmp_path, b"PAR1", "d.parquet")
    t = load_parquet(path)
    assert t.name == "d"
    assert t.data == {"id": ("a", ""), "flag": ("1", "0"), "x": ("1.5", "2")}
    with pytest.raises(DatasetError, match="more than 1 rows"):
        load_parquet(path, max_rows=1)


def test_parquet_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, b"not parquet", "d.parquet")

    def broken(path: Path) -> None:
        raise OSError("Parquet magic bytes not found")

    fake_pyarrow(monkeypatch, broken)
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        load_parquet(path)
    fake_pyarrow(monkeypatch, lambda path: FakeArrowTable({"a": [1]}, names=["a", "a"]))
    with pytest.raises(DatasetError, match="more than once"):
        load_parquet(path)
    fake_pyarrow(monkeypatch, lambda path: FakeArrowTable({"a": [b"\x00"]}))
    with pytest.raises(DatasetError, match="binary data"):
        load_parquet(path)


# -- DataSource ----------------------------------------------------------------------------------


def test_data_source_validates_and_opens(database: Path, tmp_path: Path) -> None:
    csv_path = write(tmp_path, "company_id\n1\n")
    assert open_source(DataSource("csv", csv_path), "loan_book") == Table.from_columns(
        "loan_book", {"company_id": ["1"]}
    )
    sqlite = DataSource("sqlite", database, "SELECT term FROM loans")
    assert open_source(sqlite, "loans").column("term") == ("12", "24")
    with pytest.raises(ValueError, match="kind must be one of"):
        DataSource("xlsx", csv_path)
    with pytest.raises(ValueError, match="sqlite source needs query"):
        DataSource("sqlite", database)
    with pytest.raises(ValueError, match="other kinds take none"):
        DataSource("csv", csv_path, "SELECT 1")


# -- streamed sources ----------------------------------------------------------------------------


def test_an_opened_source_streams_columns_without_loading_them(tmp_path: Path) -> None:
    rows = [f"9131{i:014d},{i % 7}," for i in range(1000)]
    path = write(tmp_path, "id,x,empty\n" + "\n".join(rows) + "\n\n")
    table = open_source(DataSource("csv", path), "ids")
    assert table.columns == ("id", "x", "empty") and "x" in table.data
    assert [len(c) for c in table.iter_column("id", 300)] == [300, 300, 300, 100]
    chunks = list(table.iter_columns(["x", "id"], 600))
    assert chunks[1][1][0] == "913100000000000600" and chunks[1][0][0] == str(600 % 7)
    assert table.num_rows == 1000
    loaded = load_csv(path, "ids")
    assert table.content_hash() == loaded.content_hash()
    assert table.data._loaded is None  # type: ignore[attr-defined]  # nothing held whole yet
    assert table.column("x") == loaded.column("x")  # loading on first use still works
    with pytest.raises(DatasetError, match="no column 'nope'"):
        table.iter_column("nope")


def test_a_streamed_sqlite_source_agrees_with_the_loaded_one(database: Path) -> None:
    source = DataSource("sqlite", database, "SELECT company_id, amount FROM loans ORDER BY rowid")
    table = open_source(source, "loans")
    assert list(table.iter_columns(["amount", "company_id"], 1)) == [
        [["120.5"], ["91350100M000100Y43"]],
        [[""], ["0012"]],
    ]
    assert table.content_hash() == load_sqlite(database, source.query or "", "x").content_hash()


def test_a_source_changed_after_opening_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "id\na\nb\n")
    table = open_source(DataSource("csv", path), "ids")
    assert table.num_rows == 2
    path.write_text("id\na\nb\nc\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="changed after this node opened"):
        list(table.iter_column("id"))
    with pytest.raises(DatasetError, match="no such file"):
        open_source(DataSource("csv", tmp_path / "absent.csv"), "ids")
