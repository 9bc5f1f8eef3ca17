"""The AuditStore contract suite over memory, SQLite and PostgreSQL, and tampering with stores.

The PostgreSQL tests need a server: ``eval "$(bash scripts/postgres.sh start)"`` sets
``BUND_TEST_POSTGRES_DSN``. Without it they are skipped, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bund.parties.audit import (
    AuditFormatError,
    AuditLog,
    AuditLogConflictError,
    AuditLogCorruptError,
    AuditRecord,
    AuditStore,
    AuditStoreUnavailableError,
    LogFault,
    MemoryAuditStore,
    PostgresAuditStore,
    SqliteAuditStore,
    open_audit_store,
    verify_store,
)
from tests.parties.audit_helpers import (
    KEY,
    OTHER_KEY,
    PARTY,
    PUB,
    RECORDS,
    REPO,
    check,
    field_maps,
    fill,
    flip,
    forged,
    make_clock,
    make_records,
    resign,
)

# -- store contract ----------------------------------------------------------------------------


class AuditStoreContract:
    """Every AuditStore passes these; subclass with a ``store_factory`` per implementation."""

    __test__ = False
    tmp_path: Path

    @pytest.fixture(autouse=True)
    def _workdir(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    def store_factory(self) -> AuditStore:
        """A new, empty store (a fresh one at every call)."""
        raise NotImplementedError

    def test_empty_store(self) -> None:
        with self.store_factory() as store:
            assert len(store) == 0 and store.last() is None and store.read() == []

    def test_records_read_back_exactly(self) -> None:
        with self.store_factory() as store:
            records = fill(AuditLog(store, KEY, PARTY, make_clock()), 7)
            assert store.read() == records
            assert store.read(2, 5) == records[2:5]
            assert store.read(5) == records[5:]
            assert store.read(3, 3) == [] and store.read(7) == [] and store.read(0, 99) == records
            assert store.last() == records[-1] and len(store) == 7
            assert [r.body() for r in store.read()] == [r.body() for r in records]
            assert verify_store(store, PUB, PARTY).ok

    # Run once per store class by design, hence from several executors.
    @settings(
        max_examples=40, deadline=None, suppress_health_check=[HealthCheck.differing_executors]
    )
    @given(fields=field_maps, event=st.text(min_size=1, max_size=10), job_id=st.text(max_size=10))
    def test_any_flat_fields_round_trip_and_verify(
        self, fields: dict[str, object], event: str, job_id: str
    ) -> None:
        with self.store_factory() as store:
            log = AuditLog(store, KEY, PARTY, make_clock())
            log.append("rpc")
            record = log.append(event, job_id, fields)  # type: ignore[arg-type]
            back = store.read(1)[0]
            assert back == record
            assert sorted((k, type(v)) for k, v in back.fields.items()) == sorted(
                (k, type(v)) for k, v in fields.items()
            )
            assert verify_store(store, PUB).ok

    def test_range_must_not_be_negative(self) -> None:
        with self.store_factory() as store, pytest.raises(ValueError):
            store.read(-1)

    def test_only_the_next_record_is_appended(self) -> None:
        with self.store_factory() as store:
            records = make_records(3)
            store.append(records[0])
            with pytest.raises(AuditLogConflictError, match="next index is 1"):
                store.append(records[2])
            with pytest.raises(AuditLogConflictError):
                store.append(records[0])
            assert store.read() == records[:1]

    def test_a_group_commit_keeps_all_its_records_or_none(self) -> None:
        with self.store_factory() as store:
            records = make_records(5)
            store.append(records[0])
            with pytest.raises(AuditLogConflictError):  # a gap inside the group
                store.append_many([records[1], records[3]])
            with pytest.raises(AuditLogConflictError):  # not the next records
                store.append_many(records[2:4])
            assert store.read() == records[:1]
            store.append_many(records[1:4])
            store.append_many([])
            assert store.read() == records[:4] and store.last() == records[3]

    def test_a_log_group_commits_records_as_appends_would(self) -> None:
        with self.store_factory() as store:
            log = AuditLog(store, KEY, PARTY, make_clock())
            first = log.append("node_started")
            head = log.checkpoint()  # the frontier follows a group commit too
            group = log.append_many(
                [("serving_request", "c", {"seq": i, "ids": 1}) for i in range(3)]
            )
            last = log.append("node_stopped")
            assert [r.index for r in group] == [1, 2, 3] and last.index == 4
            assert group[0].prev_hash == first.record_hash
            assert last.prev_hash == group[-1].record_hash
            assert store.read(1, 4) == group and log.append_many([]) == []
            assert verify_store(store, PUB, PARTY).count == 5
            assert check(store.read(), [head, log.checkpoint()]).ok
            with pytest.raises(ValueError, match="event"):
                log.append_many([("serving_request", "c", {}), ("", "c", {})])
            with pytest.raises(AuditFormatError):
                log.append_many([("serving_request", "c", {}), ("rpc", "", {"bad": b"x"})])  # type: ignore[dict-item]
            assert len(store) == 5  # nothing of a refused group

    def test_a_new_log_continues_the_chain(self) -> None:
        with self.store_factory() as store:
            first = fill(AuditLog(store, KEY, PARTY, make_clock()), 3)
            more = fill(AuditLog(store, KEY, PARTY, make_clock()), 2)
            assert [r.index for r in more] == [3, 4]
            assert more[0].prev_hash == first[-1].record_hash
            assert verify_store(store, PUB).count == 5

    def test_a_log_is_not_continued_with_another_key_or_party(self) -> None:
        with self.store_factory() as store:
            fill(AuditLog(store, KEY, PARTY, make_clock()), 2)
            with pytest.raises(AuditLogCorruptError, match="bund audit verify"):
                AuditLog(store, OTHER_KEY, PARTY, make_clock())
            with pytest.raises(AuditLogCorruptError, match="party"):
                AuditLog(store, KEY, "tax", make_clock())

    def test_checkpoints_of_a_reopened_store_hold_the_regulator_check(self) -> None:
        with self.store_factory() as store:
            log = AuditLog(store, KEY, PARTY, make_clock())
            fill(log, 5)
            held = [log.checkpoint()]
            fill(log, 3)
            held.append(AuditLog(store, KEY, PARTY, make_clock()).checkpoint())  # from the store
            assert held[1].root_hash == log.checkpoint().root_hash
            assert check(store.read(), held).ok
            assert check(store.read(0, 6), held).fault is LogFault.TRUNCATED

    def test_concurrent_appends_form_one_valid_chain(self) -> None:
        with self.store_factory() as store:
            log = AuditLog(store, KEY, PARTY, make_clock())
            start = threading.Barrier(8)

            def work(thread: int) -> None:
                start.wait()
                for seq in range(25):
                    log.append("message_sent", "j", {"thread": thread, "seq": seq})

            threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            report = verify_store(store, PUB, PARTY)
            assert report.ok and report.count == 200
            seen = {(r.fields["thread"], r.fields["seq"]) for r in store.read()}
            assert seen == {(t, s) for t in range(8) for s in range(25)}


class TestMemoryAuditStore(AuditStoreContract):
    __test__ = True

    def store_factory(self) -> AuditStore:
        return MemoryAuditStore()


class TestSqliteAuditStore(AuditStoreContract):
    __test__ = True
    _names = itertools.count()

    def store_factory(self) -> AuditStore:
        return SqliteAuditStore(self.tmp_path / f"audit-{next(self._names)}.db")

    def test_file_is_private_durable_and_versioned(self) -> None:
        path = self.tmp_path / "audit.db"
        with SqliteAuditStore(path) as store:
            AuditLog(store, KEY, PARTY, make_clock()).append("node_started")
            for name in ("audit.db", "audit.db-wal"):
                assert stat.S_IMODE((self.tmp_path / name).stat().st_mode) == 0o600
        db = sqlite3.connect(path)
        try:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
            db.execute("UPDATE schema_version SET version = 2")
            db.commit()
        finally:
            db.close()
        with pytest.raises(AuditFormatError, match="schema version"):
            SqliteAuditStore(path)

    def test_acknowledged_records_survive_a_crash(self) -> None:
        path = self.tmp_path / "audit.db"
        raw = KEY.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        script = (
            "import os, sys\n"
            "from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey\n"
            "from bund.parties.audit import AuditLog, SqliteAuditStore\n"
            "key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(sys.argv[2]))\n"
            "log = AuditLog(SqliteAuditStore(sys.argv[1]), key, 'bank',"
            " lambda: '2026-11-24T00:00:00Z')\n"
            "for i in range(3):\n"
            "    log.append('rpc', '', {'i': i})\n"
            "os._exit(0)  # no close: the WAL is not checkpointed\n"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run(
            [sys.executable, "-c", script, str(path), raw.hex()], check=True, env=env, timeout=60
        )
        with SqliteAuditStore(path) as store:
            assert verify_store(store, PUB, PARTY).count == 3
            assert AuditLog(store, KEY, PARTY, make_clock()).append("node_started").index == 3

    def test_reopened_file_continues_the_chain(self) -> None:
        path = self.tmp_path / "audit.db"
        with SqliteAuditStore(path) as store:
            first = fill(AuditLog(store, KEY, PARTY, make_clock()), 3)
        assert not Path(f"{path}-wal").exists()  # a clean close folds the WAL into the file
        with SqliteAuditStore(path) as store:
            more = fill(AuditLog(store, KEY, PARTY, make_clock()), 3)
            assert more[0].index == 3 and more[0].prev_hash == first[-1].record_hash
            assert store.read() == first + more
        with SqliteAuditStore(path, read_only=True) as store:
            assert verify_store(store, PUB, PARTY).count == 6

    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE audit_records SET fields = replace(fields, 'succeeded', 'failed')",
            "UPDATE audit_records SET fields = replace(fields, '\"seq\":', ' \"seq\":')",
            "UPDATE audit_records SET signature = zeroblob(64)",
            "DELETE FROM audit_records WHERE idx = 4",
        ],
        ids=["altered", "non-canonical", "unsigned", "deleted-before-last"],
    )
    def test_a_tampered_tail_is_not_continued(self, statement: str) -> None:
        path = self.tmp_path / "audit.db"
        with SqliteAuditStore(path) as store:
            fill(AuditLog(store, KEY, PARTY, make_clock()), 6)
        db = sqlite3.connect(path)
        db.execute(f"{statement}{'' if 'DELETE' in statement else ' WHERE idx = 5'}")
        db.commit()
        db.close()
        with SqliteAuditStore(path) as store:
            with pytest.raises(AuditLogCorruptError, match="bund audit verify"):
                AuditLog(store, KEY, PARTY, make_clock())
            assert verify_store(store, PUB).first_bad_index in (4, 5)

    def test_rows_deleted_after_a_checkpoint_are_named(self) -> None:
        path = self.tmp_path / "audit.db"
        with SqliteAuditStore(path) as store:
            log = AuditLog(store, KEY, PARTY, make_clock())
            fill(log, 8)
            held = [log.checkpoint()]
        db = sqlite3.connect(path)
        db.execute("DELETE FROM audit_records WHERE idx >= 5")
        db.commit()
        db.close()
        with open_audit_store(str(path), read_only=True) as store:
            assert verify_store(store, PUB, PARTY).ok  # a valid, shorter log
            report = check(store.read(), held)
        assert (report.fault, report.first_bad_index) == (LogFault.TRUNCATED, 5)

    def test_read_only(self) -> None:
        path = self.tmp_path / "audit.db"
        with pytest.raises(FileNotFoundError):
            SqliteAuditStore(path, read_only=True)
        with SqliteAuditStore(path) as store:
            fill(AuditLog(store, KEY, PARTY, make_clock()), 2)
            with SqliteAuditStore(path, read_only=True) as reader:  # while the writer is open
                assert len(reader) == 2
                with pytest.raises(io.UnsupportedOperation):
                    reader.append(make_records(3)[2])
        junk = self.tmp_path / "junk.db"
        junk.write_bytes(b"not a database" * 100)
        for read_only in (True, False):
            with pytest.raises(AuditFormatError, match="cannot be opened as an audit log"):
                SqliteAuditStore(junk, read_only=read_only)

    def _rewrite(self, rows: list[AuditRecord], renumber: bool) -> Path:
        """What an attacker with the file can do: rewrite the table at will."""
        path = self.tmp_path / "tampered.db"
        with SqliteAuditStore(path):
            pass
        db = sqlite3.connect(path)
        for position, r in enumerate(rows):
            db.execute(
                "INSERT INTO audit_records VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    position if renumber else r.index,
                    r.timestamp,
                    r.party,
                    r.event,
                    r.job_id,
                    json.dumps(dict(r.fields), sort_keys=True, separators=(",", ":")),
                    r.prev_hash,
                    r.record_hash,
                    r.signature,
                ),
            )
        db.commit()
        db.close()
        return path

    @pytest.mark.parametrize(
        ("case", "renumber"),
        [
            ("deleted", False),
            ("deleted", True),
            ("inserted", False),
            ("inserted", True),
            # Rows come back in index order, so only swapping their contents reorders them.
            ("reordered", True),
        ],
    )
    def test_tampered_database_names_the_first_bad_record(self, case: str, renumber: bool) -> None:
        inserted = RECORDS[:2] + [forged(2, RECORDS[1].record_hash, OTHER_KEY)]
        rows = {
            "deleted": RECORDS[:2] + RECORDS[3:],
            "reordered": RECORDS[:2] + [RECORDS[3], RECORDS[2]] + RECORDS[4:],
            "inserted": inserted + [dataclasses.replace(r, index=r.index + 1) for r in RECORDS[2:]],
        }[case]
        with SqliteAuditStore(self._rewrite(rows, renumber), read_only=True) as store:
            assert verify_store(store, PUB).first_bad_index == 2


# -- PostgreSQL ----------------------------------------------------------------------------------


def postgres_dsn_from_env() -> str:
    """The test server's URL; skip without one, but fail under CI, which must run these tests."""
    dsn = os.environ.get("BUND_TEST_POSTGRES_DSN", "")
    if dsn:
        return dsn
    how = 'start a server with eval "$(bash scripts/postgres.sh start)"'
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"BUND_TEST_POSTGRES_DSN is not set, and CI must run the PostgreSQL tests: {how}"
        )
    pytest.skip(f"BUND_TEST_POSTGRES_DSN is not set: {how}")


class _RefusesSome(MemoryAuditStore):
    """A store that appends one by one and refuses one event (a store that fails part-way)."""

    def append(self, record: AuditRecord) -> None:
        if record.event == "refused":
            raise AuditStoreUnavailableError("down for this record (test)")
        super().append(record)


def test_a_log_continues_after_what_a_one_by_one_store_kept_of_a_group() -> None:
    store = _RefusesSome()
    log = AuditLog(store, KEY, PARTY, make_clock())
    log.append("node_started")
    with pytest.raises(AuditStoreUnavailableError):
        log.append_many([("kept", "", {}), ("refused", "", {}), ("lost", "", {})])
    assert [r.event for r in store.read()] == ["node_started", "kept"]
    after = log.append("node_stopped")
    assert after.index == 2 and verify_store(store, PUB, PARTY).count == 3
    assert check(store.read(), [log.checkpoint()]).ok


def test_postgres_tests_skip_locally_but_fail_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUND_TEST_POSTGRES_DSN", raising=False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run"):
        postgres_dsn_from_env()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        postgres_dsn_from_env()
    monkeypatch.setenv("BUND_TEST_POSTGRES_DSN", "postgresql://u@127.0.0.1/db")
    assert postgres_dsn_from_env() == "postgresql://u@127.0.0.1/db"


def test_missing_psycopg_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(AuditStoreUnavailableError, match=r"pip install 'bund\[postgres\]'"):
        open_audit_store("postgresql://bund@127.0.0.1/audit")


def test_store_urls_and_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"mysql:// is not supported"):
        open_audit_store("mysql://bund:secret@db/audit")
    with pytest.raises(AuditStoreUnavailableError, match="not a PostgreSQL connection string"):
        open_audit_store("postgresql://[::1")
    for where in (str(tmp_path / "a.db"), tmp_path / "b.db"):
        with open_audit_store(where) as store:
            assert isinstance(store, SqliteAuditStore)


class PostgresSandbox:
    """Fresh schemas in the test database, one per store, dropped at the end of the module."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.dsn = dsn
        self.admin = psycopg.connect(dsn, autocommit=True)
        self.schemas: list[str] = []

    def new_schema(self) -> str:
        name = f"audit_{os.getpid()}_{len(self.schemas)}"
        self.admin.execute(f"CREATE SCHEMA {name}")
        self.schemas.append(name)
        return name

    def dsn_for(self, schema: str) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(self.dsn, options=f"-c search_path={schema}")

    def execute(self, schema: str, statement: str) -> None:
        """What anyone with the database's credentials can do."""
        self.admin.execute(f"SET search_path = {schema}")
        self.admin.execute(statement)
        self.admin.execute("RESET search_path")

    def close(self) -> None:
        for name in self.schemas:
            self.admin.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        self.admin.close()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresSandbox]:
    sandbox = PostgresSandbox(postgres_dsn_from_env())
    yield sandbox
    sandbox.close()


class TestPostgresAuditStore(AuditStoreContract):
    __test__ = True
    pg: PostgresSandbox

    @pytest.fixture(autouse=True)
    def _server(self, postgres: PostgresSandbox) -> None:
        self.pg = postgres

    def store_factory(self) -> AuditStore:
        return PostgresAuditStore(self.pg.dsn_for(self.pg.new_schema()))

    def filled(self, n: int) -> tuple[str, list[AuditRecord]]:
        schema = self.pg.new_schema()
        with PostgresAuditStore(self.pg.dsn_for(schema)) as store:
            return schema, fill(AuditLog(store, KEY, PARTY, make_clock()), n)

    def test_opened_by_url_and_versioned(self) -> None:
        schema, records = self.filled(2)
        url = f"{self.pg.dsn}?options=-csearch_path%3D{schema}"
        with open_audit_store(url, read_only=True) as store:
            assert isinstance(store, PostgresAuditStore) and store.read() == records
            assert "password" not in store.where and schema in store.where
        self.pg.execute(schema, "UPDATE audit_schema_version SET version = 2")
        with pytest.raises(AuditFormatError, match="schema version"):
            PostgresAuditStore(self.pg.dsn_for(schema))

    def test_read_only_creates_nothing_and_writes_nothing(self) -> None:
        empty = self.pg.new_schema()
        with pytest.raises(AuditFormatError, match="holds no Bund audit log"):
            PostgresAuditStore(self.pg.dsn_for(empty), read_only=True)
        schema, records = self.filled(2)
        with PostgresAuditStore(self.pg.dsn_for(schema), read_only=True) as store:
            with pytest.raises(io.UnsupportedOperation):
                store.append(make_records(3)[2])
            assert len(store) == 2 and verify_store(store, PUB, PARTY).ok

    def test_unreachable_server_is_named_without_its_password(self) -> None:
        import psycopg.conninfo

        params = psycopg.conninfo.conninfo_to_dict(self.pg.dsn)
        wrong = psycopg.conninfo.make_conninfo(self.pg.dsn, password="not-the-password")
        with pytest.raises(AuditStoreUnavailableError, match="password authentication") as err:
            PostgresAuditStore(wrong)
        assert str(params["password"]) not in str(err.value)
        assert "not-the-password" not in str(err.value)

    def test_a_second_writer_gets_a_conflict(self) -> None:
        dsn = self.pg.dsn_for(self.pg.new_schema())
        with PostgresAuditStore(dsn) as first, PostgresAuditStore(dsn) as second:
            log_a = AuditLog(first, KEY, PARTY, make_clock())
            log_b = AuditLog(second, KEY, PARTY, make_clock())
            log_a.append("node_started")
            with pytest.raises(AuditLogConflictError, match="next index is 1"):
                log_b.append("node_started")
            assert verify_store(second, PUB, PARTY).count == 1

    def test_acknowledged_records_survive_a_crash(self) -> None:
        dsn = self.pg.dsn_for(self.pg.new_schema())
        script = (
            "import os, sys\n"
            "from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey\n"
            "from bund.parties.audit import AuditLog, PostgresAuditStore\n"
            "log = AuditLog(PostgresAuditStore(sys.argv[1]), Ed25519PrivateKey.generate(),"
            " 'bank', lambda: '2026-11-24T00:00:00Z')\n"
            "for i in range(3):\n"
            "    log.append('rpc', '', {'i': i})\n"
            "os._exit(0)  # no close, no goodbye to the server\n"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run([sys.executable, "-c", script, dsn], check=True, env=env, timeout=60)
        with PostgresAuditStore(dsn, read_only=True) as store:
            assert [r.fields["i"] for r in store.read()] == [0, 1, 2]

    @pytest.mark.parametrize(
        ("statement", "bad"),
        [
            (
                (
                    "UPDATE audit_records SET fields = convert_to(replace("
                    "convert_from(fields, 'UTF8'), 'succeeded', 'failed'), 'UTF8') WHERE idx = 5"
                ),
                5,
            ),
            ("UPDATE audit_records SET fields = fields || '\\xff'::bytea WHERE idx = 5", 5),
            ("UPDATE audit_records SET event = '\\x00ff'::bytea WHERE idx = 3", 3),
            ("UPDATE audit_records SET signature = '\\x00'::bytea WHERE idx = 5", 5),
            ("DELETE FROM audit_records WHERE idx = 4", 4),
        ],
        ids=["altered", "not-utf8", "control-byte", "unsigned", "deleted-before-last"],
    )
    def test_tampered_rows_are_named(self, statement: str, bad: int) -> None:
        schema, _ = self.filled(6)
        self.pg.execute(schema, statement)
        with PostgresAuditStore(self.pg.dsn_for(schema)) as store:
            assert verify_store(store, PUB, PARTY).first_bad_index == bad
            if bad != 3:  # the tail itself is broken: the log is not continued
                with pytest.raises(AuditLogCorruptError, match="bund audit verify"):
                    AuditLog(store, KEY, PARTY, make_clock())

    def test_rows_rewritten_or_deleted_after_a_checkpoint_are_named(self) -> None:
        schema = self.pg.new_schema()
        with PostgresAuditStore(self.pg.dsn_for(schema)) as store:
            log = AuditLog(store, KEY, PARTY, make_clock())
            fill(log, 8)
            held = [log.checkpoint()]
            records = store.read()
        # The key's holder re-signs records 6.. in place, then someone cuts the tail.
        for r in resign(records, 6, {"job_id": "elsewhere"})[6:]:
            self.pg.execute(
                schema,
                f"UPDATE audit_records SET job_id = '\\x{r.job_id.encode().hex()}'::bytea, "
                f"prev_hash = '\\x{r.prev_hash.hex()}'::bytea, "
                f"record_hash = '\\x{r.record_hash.hex()}'::bytea, "
                f"signature = '\\x{r.signature.hex()}'::bytea WHERE idx = {r.index}",
            )
        with PostgresAuditStore(self.pg.dsn_for(schema), read_only=True) as store:
            assert verify_store(store, PUB, PARTY).ok
            report = check(store.read(), held)
        assert (report.fault, report.first_bad_index) == (LogFault.REWRITTEN, 0)
        self.pg.execute(schema, "DELETE FROM audit_records WHERE idx >= 6")
        with PostgresAuditStore(self.pg.dsn_for(schema), read_only=True) as store:
            report = check(store.read(), held)
        assert (report.fault, report.first_bad_index) == (LogFault.TRUNCATED, 6)


@pytest.fixture(scope="module")
def sqlite_image(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[bytes, list[tuple[int, int]]]:
    """A closed audit.db and, per record, the byte span of its stored values in the file."""
    path = tmp_path_factory.mktemp("image") / "audit.db"
    with SqliteAuditStore(path) as store:
        records = fill(AuditLog(store, KEY, PARTY, make_clock()), 5)
    image = path.read_bytes()
    spans = []
    for r in records:
        # A row's values lie in column order, timestamp first and signature last.
        assert image.count(r.timestamp.encode()) == 1 and image.count(r.signature) == 1
        start = image.index(r.timestamp.encode())
        end = image.index(r.signature) + len(r.signature)
        fields = json.dumps(dict(r.fields), sort_keys=True, separators=(",", ":"))
        text = f"{r.timestamp}{r.party}{r.event}{r.job_id}{fields}".encode()
        assert end - start == len(text) + 32 + 32 + 64  # nothing but this row's values
        spans.append((start, end))
    return image, spans


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_flipped_byte_in_the_sqlite_file_names_the_record(
    sqlite_image: tuple[bytes, list[tuple[int, int]]], data: st.DataObject
) -> None:
    image, spans = sqlite_image
    index = data.draw(st.integers(0, len(spans) - 1))
    position = data.draw(st.integers(spans[index][0], spans[index][1] - 1))
    mask = data.draw(st.integers(1, 255))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.db"
        path.write_bytes(flip(image, position, mask))
        with SqliteAuditStore(path, read_only=True) as store:
            report = verify_store(store, PUB, PARTY)
    assert not report.ok and report.first_bad_index == index, report
