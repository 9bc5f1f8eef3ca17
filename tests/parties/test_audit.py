"""Audit log: record format, hash chain, signatures, stores (contract suite), tamper detection."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
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
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parties.audit import (
    GENESIS_HASH,
    SIGNING_DOMAIN,
    AuditFormatError,
    AuditLog,
    AuditLogConflictError,
    AuditLogCorruptError,
    AuditRecord,
    AuditStore,
    MemoryAuditStore,
    SqliteAuditStore,
    chain_hash,
    export_jsonl,
    iter_jsonl,
    leaf_hash,
    merkle_root,
    read_jsonl,
    verify_records,
    verify_store,
)

PARTY = "bank"
KEY = Ed25519PrivateKey.generate()
PUB = KEY.public_key()
OTHER_KEY = Ed25519PrivateKey.generate()
REPO = Path(__file__).resolve().parents[2]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
field_maps = st.dictionaries(st.text(max_size=12), scalars, max_size=6)


def make_clock() -> Callable[[], str]:
    """A deterministic clock: one second later at every call."""
    ticks = itertools.count()
    base = dt.datetime(2026, 11, 24, tzinfo=dt.UTC)

    def clock() -> str:
        moment = base + dt.timedelta(seconds=next(ticks))
        return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")

    return clock


def fill(log: AuditLog, n: int) -> list[AuditRecord]:
    """A job's worth of typical records, each with distinct fields."""
    events = [
        ("job_submitted", {"protocol": "psi", "by": "bank"}),
        ("job_accepted", {"spec_sha256": "ab" * 32}),
        ("message_sent", {"peer": "tax", "tag": "psi/blinded/0", "sha256": "cd" * 32}),
        ("message_received", {"peer": "tax", "tag": "psi/blinded/1", "sha256": "ef" * 32}),
        ("job_refused", {"reason": "dataset loans is not shared with insurer"}),
        ("job_closed", {"outcome": "succeeded", "transcript_sha256": "01" * 32}),
    ]
    out = []
    for i in range(n):
        event, fields = events[i % len(events)]
        out.append(log.append(event, f"job-{i // 3}", {**fields, "seq": i, "size": 100 + i}))
    return out


def make_records(n: int, key: Ed25519PrivateKey = KEY, party: str = PARTY) -> list[AuditRecord]:
    return fill(AuditLog(MemoryAuditStore(), key, party, make_clock()), n)


RECORDS = make_records(6)
N = len(RECORDS)


def flip(data: bytes, position: int, mask: int) -> bytes:
    return data[:position] + bytes([data[position] ^ mask]) + data[position + 1 :]


def forged(index: int, prev_hash: bytes, signer: Ed25519PrivateKey | None) -> AuditRecord:
    """A record hashed exactly as the log would, signed by another key or not at all."""
    body = dataclasses.replace(
        RECORDS[0], index=index, prev_hash=prev_hash, fields={"forged": True}
    )
    record_hash = chain_hash(prev_hash, body.leaf_hash())
    signature = bytes(64) if signer is None else signer.sign(SIGNING_DOMAIN + record_hash)
    return dataclasses.replace(body, record_hash=record_hash, signature=signature)


def bad_at(records: list[AuditRecord]) -> int | None:
    report = verify_records(records, PUB)
    assert report.ok is (report.first_bad_index is None)
    return report.first_bad_index


# -- format and hashing ------------------------------------------------------------------------


def test_record_follows_the_documented_format() -> None:
    log = AuditLog(MemoryAuditStore(), KEY, PARTY, make_clock())
    first = log.append("job_refused", "j1", {"reason": "no", "size": 3, "ok": False, "x": None})
    second = log.append("rpc")
    body = (
        '{"event":"job_refused","fields":{"ok":false,"reason":"no","size":3,"x":null},'
        f'"index":0,"job_id":"j1","party":"bank","prev_hash":"{"00" * 32}",'
        '"timestamp":"2026-11-24T00:00:00.000000Z"}'
    ).encode()
    assert first.body() == body
    assert first.prev_hash == GENESIS_HASH
    leaf = hashlib.sha256(b"\x00" + body).digest()
    assert first.leaf_hash() == leaf
    assert first.record_hash == hashlib.sha256(b"\x02" + GENESIS_HASH + leaf).digest()
    PUB.verify(first.signature, b"bund/audit/v1\x00" + first.record_hash)
    assert second.prev_hash == first.record_hash and second.index == 1
    assert dict(second.fields) == {} and second.job_id == ""


def test_chain_link_is_not_an_rfc6962_interior_node() -> None:
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert chain_hash(a, b) != hashlib.sha256(b"\x01" + a + b).digest()
    with pytest.raises(ValueError):
        chain_hash(a[:31], b)


def test_merkle_root_matches_hand_computed_trees() -> None:
    def h(*parts: bytes) -> bytes:
        return hashlib.sha256(b"".join(parts)).digest()

    def node(left: bytes, right: bytes) -> bytes:
        return h(b"\x01", left, right)

    d = [leaf_hash(bytes([i])) for i in range(7)]
    assert d[0] == h(b"\x00", b"\x00")
    # RFC 6962 / certificate-transparency test vectors: empty tree, and the empty leaf.
    assert merkle_root([]).hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert leaf_hash(b"").hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    n01, n23, n45 = node(d[0], d[1]), node(d[2], d[3]), node(d[4], d[5])
    assert merkle_root(d[:1]) == d[0]
    assert merkle_root(d[:2]) == n01
    assert merkle_root(d[:3]) == node(n01, d[2])
    assert merkle_root(d[:4]) == node(n01, n23)
    assert merkle_root(d[:5]) == node(node(n01, n23), d[4])
    assert merkle_root(d[:7]) == node(node(n01, n23), node(n45, d[6]))
    with pytest.raises(ValueError):
        merkle_root([d[0], b"short"])


@pytest.mark.parametrize(
    "fields",
    [
        {"payload": b"raw rows"},
        {"payload": bytearray(b"raw")},
        {"nested": {"a": 1}},
        {"list": [1, 2]},
        {"set": {1}},
        {"nan": float("nan")},
        {"inf": float("-inf")},
        {1: "non-string key"},
        {"surrogate": "\ud800"},
    ],
)
def test_fields_that_are_not_flat_scalars_are_refused(fields: dict[object, object]) -> None:
    store = MemoryAuditStore()
    log = AuditLog(store, KEY, PARTY, make_clock())
    log.append("rpc")
    with pytest.raises(AuditFormatError):
        log.append("message_sent", "j", fields)  # type: ignore[arg-type]
    assert len(store) == 1
    assert log.append("rpc").index == 1  # nothing was consumed by the refused record
    with pytest.raises(AuditFormatError):
        dataclasses.replace(RECORDS[0], fields=fields)
    assert verify_store(store, PUB).ok


def test_bytes_are_refused_with_a_message_that_says_what_to_record() -> None:
    log = AuditLog(MemoryAuditStore(), KEY, PARTY, make_clock())
    with pytest.raises(AuditFormatError, match="sha256 and size, never its content"):
        log.append("message_sent", "j", {"payload": b"x"})  # type: ignore[dict-item]


def test_bad_event_or_clock_is_refused() -> None:
    log = AuditLog(MemoryAuditStore(), KEY, PARTY, make_clock())
    with pytest.raises(ValueError, match="event"):
        log.append("")
    local = AuditLog(MemoryAuditStore(), KEY, PARTY, lambda: "2026-11-24T09:30:00+08:00")
    with pytest.raises(ValueError, match="RFC 3339 UTC"):
        local.append("rpc")
    with pytest.raises(ValueError, match="party"):
        AuditLog(MemoryAuditStore(), KEY, "", make_clock())


# -- verification over a list of records --------------------------------------------------------


def test_untouched_log_verifies() -> None:
    report = verify_records(RECORDS, PUB, party=PARTY)
    assert (report.ok, report.count, report.first_bad_index, report.reason) == (True, N, None, "")
    assert verify_records([], PUB).ok


@settings(max_examples=150, deadline=None)
@given(
    index=st.integers(0, N - 1),
    name=st.sampled_from(["prev_hash", "record_hash", "signature"]),
    data=st.data(),
)
def test_flipped_byte_of_a_hash_or_signature_names_the_record(
    index: int, name: str, data: st.DataObject
) -> None:
    value: bytes = getattr(RECORDS[index], name)
    position = data.draw(st.integers(0, len(value) - 1))
    mask = data.draw(st.integers(1, 255))
    records = list(RECORDS)
    records[index] = dataclasses.replace(records[index], **{name: flip(value, position, mask)})
    assert bad_at(records) == index


@pytest.mark.parametrize("index", range(N))
@pytest.mark.parametrize(
    "change",
    [
        {"timestamp": "2026-11-23T00:00:00.000000Z"},
        {"party": "tax"},
        {"event": "tampered"},
        {"job_id": "other"},
        {"fields": {"seq": -1}},
    ],
)
def test_altered_record_is_named(index: int, change: dict[str, object]) -> None:
    records = list(RECORDS)
    records[index] = dataclasses.replace(records[index], **change)  # type: ignore[arg-type]
    report = verify_records(records, PUB)
    assert report.first_bad_index == index and "altered" in report.reason


@pytest.mark.parametrize("index", range(N - 1))
def test_deleted_record_is_named(index: int) -> None:
    records = list(RECORDS)
    del records[index]
    assert bad_at(records) == index
    # An attacker who also renumbers the rest breaks the next record's hash instead.
    renumbered = [dataclasses.replace(r, index=i) for i, r in enumerate(records)]
    assert bad_at(renumbered) == index


def test_truncated_tail_is_not_detectable_without_a_checkpoint() -> None:
    """Documented limit: a prefix of a valid log is a valid log."""
    assert verify_records(RECORDS[:3], PUB).ok


@pytest.mark.parametrize("index", range(N - 1))
def test_reordered_pair_is_named(index: int) -> None:
    records = list(RECORDS)
    records[index], records[index + 1] = records[index + 1], records[index]
    assert bad_at(records) == index
    renumbered = [dataclasses.replace(r, index=i) for i, r in enumerate(records)]
    assert bad_at(renumbered) == index


@pytest.mark.parametrize("index", range(N + 1))
@pytest.mark.parametrize("signer", [None, OTHER_KEY], ids=["unsigned", "other-key"])
def test_inserted_forgery_is_named(index: int, signer: Ed25519PrivateKey | None) -> None:
    prev = RECORDS[index - 1].record_hash if index else GENESIS_HASH
    records = list(RECORDS)
    records.insert(index, forged(index, prev, signer))
    report = verify_records(records, PUB)
    assert report.first_bad_index == index and "signature" in report.reason


@pytest.mark.parametrize("index", range(N))
def test_record_replayed_from_another_log_is_named(index: int) -> None:
    other = make_records(N, key=OTHER_KEY, party="tax")
    inserted = list(RECORDS)
    inserted.insert(index, other[index])
    assert bad_at(inserted) == index
    replaced = list(RECORDS)
    replaced[index] = other[index]
    assert bad_at(replaced) == index


@pytest.mark.parametrize("index", range(1, N))
def test_record_replayed_from_the_same_log_is_named(index: int) -> None:
    records = list(RECORDS)
    records.insert(index, RECORDS[index - 1])
    assert bad_at(records) == index


def test_wrong_key_party_or_sizes_name_record_zero() -> None:
    wrong_key = verify_records(RECORDS, OTHER_KEY.public_key())
    assert wrong_key.first_bad_index == 0 and "signature" in wrong_key.reason
    wrong_party = verify_records(RECORDS, PUB, party="tax")
    assert wrong_party.first_bad_index == 0 and "party" in wrong_party.reason
    short = [dataclasses.replace(RECORDS[0], signature=RECORDS[0].signature[:63])]
    assert "63 bytes" in verify_records(short, PUB).reason


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
            "from parties.audit import AuditLog, SqliteAuditStore\n"
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


# -- JSON lines --------------------------------------------------------------------------------


def exported(records: list[AuditRecord]) -> bytes:
    text = io.StringIO()
    export_jsonl(records, text)
    return text.getvalue().encode()


def test_jsonl_round_trips_from_text_and_binary_streams() -> None:
    data = exported(RECORDS)
    lines = data.decode().splitlines()
    assert len(lines) == N and data.endswith(b"\n")
    doc = json.loads(lines[0])
    assert doc["signature"] == RECORDS[0].signature.hex() and doc["index"] == 0
    assert read_jsonl(io.BytesIO(data)) == RECORDS
    assert read_jsonl(io.StringIO(data.decode())) == RECORDS
    assert verify_records(iter_jsonl(io.BytesIO(data)), PUB).count == N


@settings(max_examples=50, deadline=None)
@given(fields=st.lists(field_maps, min_size=1, max_size=4))
def test_jsonl_round_trips_any_flat_fields(fields: list[dict[str, object]]) -> None:
    log = AuditLog(MemoryAuditStore(), KEY, PARTY, make_clock())
    records = [log.append("rpc", "", f) for f in fields]  # type: ignore[arg-type]
    back = read_jsonl(io.BytesIO(exported(records)))
    assert back == records and verify_records(back, PUB).ok


def _edit_line(line: str, how: str) -> str:
    doc = json.loads(line)
    if how == "upper-hex":
        return line.replace(doc["record_hash"], doc["record_hash"].upper())
    if how == "spaces":
        return json.dumps(doc, sort_keys=True) + "\n"
    if how == "key-order":
        backwards = dict(reversed(doc.items()))
        return json.dumps(backwards, separators=(",", ":"), ensure_ascii=False) + "\n"
    if how == "missing-key":
        del doc["job_id"]
    elif how == "extra-key":
        doc["content"] = "raw rows"
    elif how == "nested-field":
        doc["fields"]["rows"] = [1, 2]
    elif how == "nan":
        return line.replace('"seq":', '"seq":NaN,"x":', 1)
    elif how == "blank":
        return "\n"
    elif how == "not-an-object":
        return "[]\n"
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


@pytest.mark.parametrize(
    "how",
    [
        "upper-hex",
        "spaces",
        "key-order",
        "missing-key",
        "extra-key",
        "nested-field",
        "nan",
        "blank",
        "not-an-object",
    ],
)
def test_jsonl_parsing_is_strict(how: str) -> None:
    lines = exported(RECORDS).decode().splitlines(keepends=True)
    lines[3] = _edit_line(lines[3], how)
    data = "".join(lines).encode()
    with pytest.raises(AuditFormatError, match=r"line 4 \(record 3\)") as err:
        read_jsonl(io.BytesIO(data))
    assert err.value.index == 3
    report = verify_records(iter_jsonl(io.BytesIO(data)), PUB)
    assert report.first_bad_index == 3 and report.count == 3


def test_jsonl_without_final_newline_or_with_bad_utf8_is_refused() -> None:
    data = exported(RECORDS)
    with pytest.raises(AuditFormatError, match="newline") as err:
        read_jsonl(io.BytesIO(data[:-1]))
    assert err.value.index == N - 1
    bad = data[:-30] + b"\xff" + data[-29:]
    with pytest.raises(AuditFormatError, match="binary mode"):
        verify_records(iter_jsonl(io.TextIOWrapper(io.BytesIO(bad), encoding="utf-8")), PUB)
    assert verify_records(iter_jsonl(io.BytesIO(bad)), PUB).first_bad_index == N - 1


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_flipped_byte_in_an_exported_record_names_the_record(data: st.DataObject) -> None:
    image = exported(RECORDS)
    lines = image.splitlines(keepends=True)
    index = data.draw(st.integers(0, N - 1))
    start = sum(len(line) for line in lines[:index])
    position = data.draw(st.integers(start, start + len(lines[index]) - 1))
    flipped = flip(image, position, data.draw(st.integers(1, 255)))
    report = verify_records(iter_jsonl(io.BytesIO(flipped)), PUB, PARTY)
    assert not report.ok and report.first_bad_index == index, report


def test_doc_example_runs() -> None:
    import doctest

    import parties.audit

    assert doctest.testmod(parties.audit).failed == 0
