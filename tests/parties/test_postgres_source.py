"""PostgreSQL dataset sources against the real server the test command starts (docs/datasets.md).

A fresh schema holds the bank's loan table; a role made here has only what docs/datasets.md tells
a DBA to grant (USAGE on the schema, SELECT on the one table), as a production node's would. The
test role itself owns the tables and may write to them: reads through it show that the read-only
transaction, not only the grants, refuses every write.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from bund.parties.config import load_config
from bund.parties.data import (
    DatasetError,
    DataSource,
    Table,
    load_csv,
    load_postgres,
    open_source,
    write_csv,
)
from bund.parties.errors import ConfigError
from tests.parties.test_audit import postgres_dsn_from_env
from tests.parties.test_config_schemas import NODE, POLICY

LOANS = [
    ("91310115MA1H7G4X3K", "上海浦东发展银行股份有限公司", "120.50", "4.35", "2025-06-30"),
    ("0012", "", None, "3.1", None),
    ("91440300708461136T", "深圳市腾讯计算机系统有限公司", "0.0000001", None, "2024-01-01"),
]


@dataclass(frozen=True)
class Server:
    """The test database: a schema with the loan table, and URLs without passwords."""

    schema: str
    #: The owner (the test role, which may write): its URL and password.
    owner_url: str
    owner_password: str
    #: A role with USAGE on the schema and SELECT on ``loans`` only.
    reader: str
    reader_url: str
    reader_password: str

    def count(self, table: str = "loans") -> int:
        with psycopg.connect(self.owner_url, password=self.owner_password) as db:
            (n,) = db.execute(f"SELECT count(*) FROM {self.schema}.{table}").fetchone()
            return int(n)


def url_for(dsn: str, user: str) -> tuple[str, str]:
    """A postgresql:// URL for ``user`` on the DSN's server, without the password, and it."""
    info = conninfo_to_dict(dsn)
    return f"postgresql://{user}@{info['host']}:{info['port']}/{info['dbname']}", str(
        info.get("password", "")
    )


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    dsn = postgres_dsn_from_env()
    schema = f"lending_{os.getpid()}"
    reader = f"bund_reader_{os.getpid()}"
    reader_password = secrets.token_hex(16)
    owner_url, owner_password = url_for(dsn, str(conninfo_to_dict(dsn)["user"]))
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(f"CREATE SCHEMA {schema}")
        db.execute(
            f"CREATE TABLE {schema}.loans (company_id text, company_name text, "
            "amount_10k_cny numeric(20, 7), rate_pct real, granted date)"
        )
        db.cursor().executemany(f"INSERT INTO {schema}.loans VALUES (%s, %s, %s, %s, %s)", LOANS)
        db.execute(f"CREATE TABLE {schema}.staff (name text)")
        db.execute(f"INSERT INTO {schema}.staff VALUES ('not for the node')")
        db.execute(f"CREATE SEQUENCE {schema}.ids")
        db.execute(
            f"CREATE FUNCTION {schema}.bump() RETURNS int LANGUAGE sql AS "
            f"'INSERT INTO {schema}.loans (company_id) VALUES (''written'') RETURNING 1'"
        )
        db.execute(
            f"CREATE TABLE {schema}.many AS SELECT 'c' || lpad(i::text, 5, '0') AS id, i AS n "
            "FROM generate_series(1, 2500) AS i"
        )
        # What docs/datasets.md tells a DBA to run for a node's reader role.
        db.execute(f"CREATE ROLE {reader} LOGIN PASSWORD '{reader_password}'")
        db.execute(f"GRANT USAGE ON SCHEMA {schema} TO {reader}")
        db.execute(f"GRANT SELECT ON {schema}.loans, {schema}.many TO {reader}")
    try:
        yield Server(
            schema,
            owner_url,
            owner_password,
            reader,
            url_for(dsn, reader)[0],
            reader_password,
        )
    finally:
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute(f"DROP SCHEMA {schema} CASCADE")
            db.execute(f"DROP ROLE {reader}")


def read(server: Server, **kw: object) -> Table:
    return load_postgres(server.reader_url, "loans", password=server.reader_password, **kw)  # type: ignore[arg-type]


def test_a_table_source_reads_every_column_in_a_stable_order(
    server: Server, tmp_path: Path
) -> None:
    t = read(server, table=f"{server.schema}.loans")
    assert t.name == "loans"
    assert t.data == {
        "company_id": ("0012", "91310115MA1H7G4X3K", "91440300708461136T"),
        "company_name": ("", "上海浦东发展银行股份有限公司", "深圳市腾讯计算机系统有限公司"),
        "amount_10k_cny": ("", "120.5000000", "0.0000001"),
        "rate_pct": ("3.1", "4.35", ""),
        "granted": ("", "2025-06-30", "2024-01-01"),
    }
    # What a CSV export of the same values reads as: the same table, the same version.
    assert load_csv(write_csv(t, tmp_path / "loans.csv"), "loans") == t
    source = DataSource(
        "postgres",
        url=server.reader_url,
        table=f"{server.schema}.loans",
        password=server.reader_password,
    )
    assert open_source(source, "loan_book") == Table("loan_book", t.data)


def test_rows_are_ordered_by_every_column_whatever_the_columns_are_called(server: Server) -> None:
    with psycopg.connect(server.owner_url, password=server.owner_password, autocommit=True) as db:
        db.execute(f"CREATE TABLE {server.schema}.odd (bund_row int, x text)")
        db.execute(f"INSERT INTO {server.schema}.odd VALUES (1, 'b'), (NULL, 'c'), (1, 'a')")
    t = load_postgres(
        server.owner_url, "odd", table=f"{server.schema}.odd", password=server.owner_password
    )
    assert t.data == {"bund_row": ("1", "1", ""), "x": ("a", "b", "c")}


def test_a_query_source_runs_in_a_read_only_transaction_on_a_server_side_cursor(
    server: Server,
) -> None:
    t = read(
        server,
        query=f"""
            SELECT company_id,
                   current_setting('transaction_read_only') AS read_only,
                   current_setting('statement_timeout') AS timeout,
                   (SELECT count(*) FROM pg_cursors WHERE name = 'bund_dataset') AS cursors
            FROM {server.schema}.loans WHERE company_name LIKE '%银行%' ORDER BY company_id;
        """,
        statement_timeout_s=7,
    )
    assert t.data == {
        "company_id": ("91310115MA1H7G4X3K",),
        "read_only": ("on",),
        "timeout": ("7s",),
        "cursors": ("1",),
    }


def test_rows_stream_in_batches_up_to_the_row_cap(server: Server) -> None:
    many = f"{server.schema}.many"
    t = read(server, table=many, batch_rows=1000, max_rows=2500)
    assert t.num_rows == 2500 and t.column("id")[:2] == ("c00001", "c00002")
    assert t.column("n")[-1] == "2500"
    with pytest.raises(DatasetError, match="more than 2499 rows; pass a larger max_rows"):
        read(server, table=many, batch_rows=1000, max_rows=2499)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("DELETE FROM {s}.loans", "the query must be one SELECT statement"),
        ("SELECT 1; DELETE FROM {s}.loans", "cannot insert multiple commands"),
        ("SELECT 1; COMMIT; DELETE FROM {s}.loans", "cannot insert multiple commands"),
        (
            "WITH gone AS (DELETE FROM {s}.loans RETURNING *) SELECT * FROM gone",
            "must not contain data-modifying statements",
        ),
        ("SELECT {s}.bump()", "cannot execute INSERT in a read-only transaction"),
        ("SELECT nextval('{s}.ids')", "cannot execute nextval() in a read-only transaction"),
        ("SELECT * FROM {s}.loans FOR UPDATE", "cannot execute SELECT FOR UPDATE in a read-only"),
    ],
)
def test_a_write_through_a_query_is_refused_even_for_a_role_that_may_write(
    server: Server, query: str, message: str
) -> None:
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_postgres(
            server.owner_url,
            "loans",
            query=query.format(s=server.schema),
            password=server.owner_password,
        )
    assert server.count() == len(LOANS)


def test_the_reader_role_reads_only_what_it_was_granted(server: Server) -> None:
    with pytest.raises(DatasetError, match="permission denied for table staff"):
        read(server, table=f"{server.schema}.staff")
    with pytest.raises(DatasetError, match="permission denied for table staff"):
        read(server, query=f"SELECT name FROM {server.schema}.staff")
    with pytest.raises(DatasetError, match="cannot execute INSERT in a read-only transaction"):
        read(server, query=f"SELECT {server.schema}.bump()")
    assert server.count() == len(LOANS)


def test_a_role_that_may_write_is_read_with_a_warning(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    load_postgres(
        server.owner_url, "x", table=f"{server.schema}.loans", password=server.owner_password
    )
    assert f"may write to {server.schema}.loans; grant it SELECT only" in caplog.text
    caplog.clear()
    read(server, table=f"{server.schema}.loans")
    assert "grant it SELECT only" not in caplog.text


def test_failures_say_what_to_fix_and_never_show_the_password(server: Server) -> None:
    cases = [
        ({"table": f"{server.schema}.absent"}, 'relation "'),
        ({"query": "SELECT pg_sleep(5)", "statement_timeout_s": 0.2}, "statement timeout"),
        ({"query": "SELECT 1 AS a, 2 AS a"}, r"\['a'\] appear more than once"),
        ({"query": "SELECT ARRAY[1, 2] AS a"}, "column 'a' holds list values"),
        ({"query": "SELECT '\\x00'::bytea AS a"}, "column 'a' holds binary data"),
    ]
    for fields, message in cases:
        with pytest.raises(DatasetError, match=message) as err:
            read(server, **fields)
        assert server.reader_password not in str(err.value)
    with pytest.raises(DatasetError, match="cannot connect.*password authentication failed"):
        load_postgres(server.reader_url, "x", table=f"{server.schema}.loans", password="wrong")
    with pytest.raises(ValueError, match="url holds a password"):
        load_postgres(
            server.reader_url.replace("@", f":{server.reader_password}@"),
            "x",
            table=f"{server.schema}.loans",
        )


# --- node.toml -------------------------------------------------------------------------------


def node_toml(directory: Path, dataset: str) -> Path:
    (directory / "policy.toml").write_text(POLICY, encoding="utf-8")
    head = NODE[: NODE.index("[datasets.loans]")]
    path = directory / "node.toml"
    path.write_text(f"{head}[datasets.loans]\n{dataset}", encoding="utf-8")
    return path


def test_node_toml_takes_the_password_from_an_environment_variable(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUND_LOANS_PASSWORD", server.reader_password)
    path = node_toml(
        tmp_path,
        f'kind = "postgres"\nurl = "{server.reader_url}"\ntable = "{server.schema}.loans"\n'
        'password_env = "BUND_LOANS_PASSWORD"\nstatement_timeout_s = 30\n',
    )
    source = load_config(path).datasets["loans"]
    assert source.kind == "postgres" and source.statement_timeout_s == 30.0
    assert server.reader_password not in repr(load_config(path))
    assert open_source(source, "loans").num_rows == len(LOANS)


def test_node_toml_takes_the_password_from_a_private_file(server: Server, tmp_path: Path) -> None:
    secret = tmp_path / "secrets" / "loans.password"
    secret.parent.mkdir()
    secret.write_text(server.reader_password + "\n", encoding="utf-8")
    secret.chmod(0o600)
    query = f"SELECT company_id FROM {server.schema}.loans ORDER BY 1"
    path = node_toml(
        tmp_path,
        f'kind = "postgres"\nurl = "{server.reader_url}"\nquery = "{query}"\n'
        'password_file = "secrets/loans.password"\n',
    )
    source = load_config(path).datasets["loans"]
    assert open_source(source, "loans").column("company_id")[0] == "0012"
    secret.chmod(0o644)
    with pytest.raises(
        ConfigError, match=re.escape(f"may be read by other users; chmod 600 {secret}")
    ):
        load_config(path)


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        (
            'kind = "postgres"\nurl = "postgresql://r:hunter2@db/x"\ntable = "a.b"\n',
            "datasets.loans: url holds a password: remove it and set password_env or password_file",
        ),
        (
            (
                'kind = "postgres"\nurl = "postgresql://r@db/x"\ntable = "a.b"\n'
                'password_env = "BUND_UNSET_PASSWORD_VARIABLE"\n'
            ),
            "password_env names BUND_UNSET_PASSWORD_VARIABLE, which is not set",
        ),
        (
            (
                'kind = "postgres"\nurl = "postgresql://r@db/x"\ntable = "a.b"\n'
                'password_env = "HOME"\npassword_file = "pw"\n'
            ),
            "set password_env or password_file, not both",
        ),
        (
            (
                'kind = "postgres"\nurl = "postgresql://r@db/x"\ntable = "a.b"\n'
                'password_file = "absent"\n'
            ),
            "cannot be read (No such file or directory)",
        ),
        (
            'kind = "csv"\npath = "loans.csv"\npassword_env = "HOME"\n',
            "password_env and password_file belong to postgres sources only",
        ),
        ('kind = "csv"\npath = "loans.csv"\nencoding = "big5"\n', "datasets.loans.encoding"),
        ('kind = "postgres"\nurl = "postgresql://r@db/x"\n', "needs either table"),
    ],
)
def test_node_toml_postgres_entries_are_checked(tmp_path: Path, dataset: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_config(node_toml(tmp_path, dataset))
    assert "hunter2" not in str(err.value)
