"""Dataset sources and the in-memory table (docs/datasets.md); the demo data: test_demo_data.py."""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import sys
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
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


#: Chinese company names with their USCC ids, as a bank's or a bureau's system exports them.
FIRMS = (
    ("91310115MA1H7G4X3K", "上海浦东发展银行股份有限公司"),
    ("91440300708461136T", "深圳市腾讯计算机系统有限公司"),
    ("9133010072587720XA", "杭州“西湖”茶叶有限公司, 分公司"),  # quoted: a comma in it
)
#: A firm whose name holds 䶮 (U+4DAE): GB18030 encodes it (4 bytes), GBK cannot.
RARE = ("91320500MA1MXXB25Q", "苏州䶮鑫贸易有限公司")


def firms_csv(firms: tuple[tuple[str, str], ...]) -> str:
    rows = "".join(f'{uscc},"{name}",120\r\n' for uscc, name in firms)
    return f"统一社会信用代码,企业名称,授信额度_万元\r\n{rows}"


@pytest.mark.parametrize("encoding", ["gbk", "gb18030", "utf-8", "utf-8-sig"])
def test_csv_in_a_declared_encoding(tmp_path: Path, encoding: str) -> None:
    path = write(tmp_path, firms_csv(FIRMS).encode(encoding), "firms.csv")
    t = load_csv(path, encoding=encoding)
    assert t.columns == ("统一社会信用代码", "企业名称", "授信额度_万元")
    assert t.column("统一社会信用代码") == tuple(uscc for uscc, _ in FIRMS)
    assert t.column("企业名称") == tuple(name for _, name in FIRMS)
    source = DataSource("csv", path, encoding=encoding)
    assert open_source(source, "firms") == Table("firms", t.data)


def test_gb18030_reads_what_gbk_cannot_and_its_byte_order_mark(tmp_path: Path) -> None:
    text = firms_csv((*FIRMS, RARE))
    path = write(tmp_path, text.encode("gb18030"), "firms.csv")
    assert load_csv(path, encoding="gb18030").column("企业名称")[-1] == RARE[1]
    with_mark = write(tmp_path, ("\ufeff" + text).encode("gb18030"), "marked.csv")
    assert load_csv(with_mark, encoding="gb18030").columns[0] == "统一社会信用代码"
    with pytest.raises(DatasetError) as err:
        load_csv(path, encoding="gbk")
    message = str(err.value)
    assert message.startswith(f"{path} line 5: not GBK text")
    assert 'encoding = "gb18030"' in message


@pytest.mark.parametrize("encoding", ["gbk", "gb18030"])
def test_a_chinese_file_read_as_utf8_names_the_file_line_and_encoding(
    tmp_path: Path, encoding: str
) -> None:
    path = write(tmp_path, firms_csv(FIRMS).encode(encoding), "firms.csv")
    with pytest.raises(DatasetError) as err:
        load_csv(path)
    message = str(err.value)
    assert message.startswith(f"{path} line 1: not UTF-8 text (invalid ")
    assert "of the line); declare the file's encoding in its dataset entry" in message
    assert 'encoding = "gb18030"' in message


def test_a_bad_byte_deep_in_a_file_is_found_on_its_line(tmp_path: Path) -> None:
    lines = ["id,name"] + [f"{i},firm {i}" for i in range(20_000)]
    raw = "\n".join(lines).encode() + b"\n20000,\xe4\xb8\n"  # a truncated UTF-8 character
    with pytest.raises(DatasetError, match=r"line 20002: not UTF-8 text \(invalid continuation"):
        load_csv(write(tmp_path, raw, "long.csv"))


def test_unknown_encodings_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "id\n1\n")
    with pytest.raises(ValueError, match="encoding must be one of"):
        load_csv(path, encoding="latin-1")
    with pytest.raises(ValueError, match="encoding must be one of"):
        DataSource("csv", path, encoding="big5")
    with pytest.raises(ValueError, match="only a csv source takes an encoding"):
        DataSource("parquet", path, encoding="gbk")


def test_blank_lines_between_rows_are_counted_not_trailing_ones(tmp_path: Path) -> None:
    t = load_csv(write(tmp_path, "id\n1\n\n\n2\n\n3\n\n\n"))
    assert t.column("id") == ("1", "2", "3")
    assert t.quality == {"blank_lines_skipped": 3}
    assert load_csv(write(tmp_path, "id\n1\n2\n", "clean.csv")).quality == {
        "blank_lines_skipped": 0
    }
    assert t == Table.from_columns("d", {"id": ["1", "2", "3"]})  # counts are not content


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


# -- Parquet (real files written by pyarrow) -----------------------------------------------------


def write_parquet(path: Path, columns: dict[str, Any]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_values_become_the_text_a_csv_would_hold(tmp_path: Path) -> None:
    shanghai = dt.timezone(dt.timedelta(hours=8))
    path = write_parquet(
        tmp_path / "claims.parquet",
        {
            "id": pa.array(["91310000MA1FL0001X", None, "0012"], pa.string()),
            "count": pa.array([3, None, -7], pa.int64()),
            "amount": pa.array([120.5, 0.1, None], pa.float64()),
            "rate": pa.array([1.1, None, 3.0], pa.float32()),
            "flag": pa.array([True, False, None], pa.bool_()),
            "nothing": pa.array([None, None, None], pa.null()),
            "admitted": pa.array(
                [dt.datetime(2025, 6, 30, 9, 15), None, dt.datetime(2024, 1, 1)],
                pa.timestamp("us"),
            ),
            "paid_at": pa.array(
                [dt.datetime(2025, 6, 30, 17, 15, tzinfo=shanghai), None, None],
                pa.timestamp("ms", tz="Asia/Shanghai"),
            ),
            "day": pa.array([dt.date(2025, 6, 30), None, dt.date(1999, 12, 31)], pa.date32()),
            "fee": pa.array([Decimal("12.50"), Decimal("0.0000001"), None], pa.decimal128(12, 7)),
            "grade": pa.array(["A", "B", "A"]).dictionary_encode(),
        },
    )
    t = load_parquet(path)
    assert t.name == "claims"
    assert t.data == {
        "id": ("91310000MA1FL0001X", "", "0012"),
        "count": ("3", "", "-7"),
        "amount": ("120.5", "0.1", ""),
        "rate": ("1.1", "", "3.0"),
        "flag": ("1", "0", ""),
        "nothing": ("", "", ""),
        "admitted": ("2025-06-30T09:15:00", "", "2024-01-01T00:00:00"),
        "paid_at": ("2025-06-30T09:15:00+00:00", "", ""),
        "day": ("2025-06-30", "", "1999-12-31"),
        "fee": ("12.5000000", "0.0000001", ""),
        "grade": ("A", "B", "A"),
    }
    # The same values written as CSV read back to the same table, hence the same version.
    assert load_csv(write_csv(t, tmp_path / "claims.csv")).content_hash() == t.content_hash()


def test_parquet_row_cap_is_read_from_the_footer_and_batches_are_joined(tmp_path: Path) -> None:
    n = 25_003  # more than one record batch
    path = write_parquet(tmp_path / "big.parquet", {"id": pa.array([f"c{i}" for i in range(n)])})
    t = load_parquet(path, "big", max_rows=n)
    assert t.num_rows == n and t.column("id")[-1] == f"c{n - 1}"
    with pytest.raises(DatasetError, match=f"more than {n - 1} rows"):
        load_parquet(path, max_rows=n - 1)
    with pytest.raises(ValueError, match="max_rows"):
        load_parquet(path, max_rows=0)


def test_parquet_nanosecond_timestamps(tmp_path: Path) -> None:
    whole = write_parquet(
        tmp_path / "whole.parquet", {"t": pa.array([1_000, None], pa.timestamp("ns"))}
    )
    assert load_parquet(whole).column("t") == ("1970-01-01T00:00:00.000001", "")
    nanos = write_parquet(tmp_path / "nanos.parquet", {"t": pa.array([1], pa.timestamp("ns"))})
    with pytest.raises(DatasetError, match="column 't' holds timestamps with nanoseconds"):
        load_parquet(nanos)


@pytest.mark.parametrize(
    ("column", "message"),
    [
        (pa.array([b"\x00"], pa.binary()), "column 'x' holds binary data"),
        (pa.array([[1, 2]], pa.list_(pa.int64())), "column 'x' holds list values"),
        (pa.array([{"a": 1}], pa.struct([("a", pa.int64())])), "column 'x' holds dict values"),
    ],
)
def test_parquet_columns_without_a_text_form_are_refused(
    tmp_path: Path, column: Any, message: str
) -> None:
    path = write_parquet(tmp_path / "d.parquet", {"x": column})
    with pytest.raises(DatasetError, match=message):
        load_parquet(path)


def test_parquet_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        load_parquet(tmp_path / "absent.parquet")
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        load_parquet(write(tmp_path, b"not parquet at all", "d.parquet"))
    twice = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"])
    pq.write_table(twice, tmp_path / "twice.parquet")
    with pytest.raises(DatasetError, match=r"\['a'\] appear more than once"):
        load_parquet(tmp_path / "twice.parquet")


def test_parquet_without_pyarrow_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_parquet(tmp_path / "d.parquet", {"id": pa.array(["a"])})
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    hint = re.escape("install Bund with its 'parquet' extra: pip install 'bund[parquet]'")
    with pytest.raises(DatasetError, match=hint):
        load_parquet(path)
    with pytest.raises(DatasetError, match=hint):
        open_source(DataSource("parquet", path), "d")


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
    with pytest.raises(ValueError, match='a csv source needs path = "FILE"'):
        DataSource("csv")
    with pytest.raises(ValueError, match="belong to postgres sources only"):
        DataSource("csv", csv_path, url="postgresql://reader@db/core")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "a postgres source needs url"),
        ({"url": "mysql://reader@db/core", "table": "a.b"}, "must be a postgresql:// URL"),
        ({"url": "postgresql://reader:pw@db/core", "table": "a.b"}, "url holds a password"),
        ({"url": "postgresql://reader@db/core?password=pw", "table": "a.b"}, "holds a password"),
        ({"url": "postgresql://reader@db/core"}, "either table"),
        ({"url": "postgresql://reader@db/core", "table": "a.b", "query": "SELECT 1"}, "not both"),
        ({"url": "postgresql://reader@db/core", "table": "loans"}, 'must be "schema.table"'),
        ({"url": "postgresql://reader@db/core", "table": 'a."b'}, 'must be "schema.table"'),
        ({"url": "postgresql://reader@db/core", "table": "a.b c"}, 'must be "schema.table"'),
        (
            {"url": "postgresql://reader@db/core", "table": "a.b", "path": Path("x")},
            "takes no path",
        ),
        (
            {"url": "postgresql://reader@db/core", "table": "a.b", "statement_timeout_s": 0},
            "statement_timeout_s must be positive",
        ),
    ],
)
def test_postgres_sources_are_checked(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        DataSource("postgres", **fields)
    assert "pw" not in str(err.value)


def test_a_postgres_source_never_shows_its_password() -> None:
    source = DataSource(
        "postgres", url="postgresql://reader@db/core", table="lending.loans", password="s3cr3t"
    )
    assert "s3cr3t" not in repr(source) and "lending.loans" in repr(source)


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


def test_a_streamed_csv_in_a_declared_encoding_counts_its_blank_lines_without_loading(
    tmp_path: Path,
) -> None:
    text = firms_csv(FIRMS).replace("\r\n91440300", "\r\n\r\n\r\n91440300") + "\r\n\r\n"
    path = write(tmp_path, ("\ufeff" + text).encode("gb18030"), "firms.csv")
    loaded = load_csv(path, encoding="gb18030")
    assert loaded.quality == {"blank_lines_skipped": 2}  # trailing blank lines are not counted
    table = open_source(DataSource("csv", path, encoding="gb18030"), "firms")
    assert table.columns == loaded.columns
    assert table.quality == {"blank_lines_skipped": 2} and table.num_rows == 3
    assert [c for chunk in table.iter_column("企业名称", 2) for c in chunk] == list(
        loaded.column("企业名称")
    )
    assert table.content_hash() == loaded.content_hash()
    assert table.data._loaded is None  # type: ignore[attr-defined]  # counted, never held whole
    assert table == Table("firms", loaded.data)
    ascii_rows = "".join(f"{i},firm {i}\n" for i in range(5000))  # past the first buffer read
    gbk_rows = write(tmp_path, f"id,name\n{ascii_rows}5000,上海\n".encode("gbk"), "g.csv")
    as_utf8 = open_source(DataSource("csv", gbk_rows), "g")  # what it read so far decodes
    assert repr(as_utf8.quality) == "<counted on first read>"
    with pytest.raises(DatasetError, match=r"line 5002: not UTF-8 text"):
        as_utf8.quality["blank_lines_skipped"]


def test_a_streamed_parquet_source_agrees_with_the_loaded_one(tmp_path: Path) -> None:
    n = 25_000  # three record batches
    path = write_parquet(
        tmp_path / "d.parquet",
        {
            "id": pa.array([f"{i:018d}" for i in range(n)]),
            "rate": pa.array([i / 8 if i % 3 else None for i in range(n)], pa.float32()),
        },
    )
    loaded = load_parquet(path, "d")
    table = open_source(DataSource("parquet", path), "d")
    assert table.num_rows == n and table.quality == {}
    chunks = list(table.iter_columns(["rate", "id"], 10_000))
    assert [len(c[1]) for c in chunks] == [10_000, 10_000, 5_000]
    assert [v for c in chunks for v in c[0]] == list(loaded.column("rate"))
    assert table.content_hash() == loaded.content_hash()
    assert table.data._loaded is None  # type: ignore[attr-defined]
