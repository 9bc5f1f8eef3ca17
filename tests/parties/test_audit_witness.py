"""Witness cosigning, and the audit log's own guards: monotonic time and a sealed corrupt log."""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bund.parties.audit import (
    CHECKPOINT_DOMAIN,
    COSIGNATURE_DOMAIN,
    SIGNING_DOMAIN,
    AuditLog,
    AuditLogCorruptError,
    AuditRecord,
    Checkpoint,
    MemoryAuditStore,
    SqliteAuditStore,
    Witness,
    WitnessConflictError,
    WitnessError,
    WitnessExchange,
    WitnessKeyError,
    WitnessReply,
    WitnessStore,
    check_log_against_checkpoints,
    cosign,
    read_readable,
    verify_checkpoint,
    verify_cosignature,
    verify_store,
)
from bund.parties.identity import raw_public_key
from bund.parties.lifecycle.events import Event, Key
from tests.conftest import wait_until
from tests.parties.audit_helpers import KEY, PARTY, PUB, fill, make_clock

TAX_KEY = Ed25519PrivateKey.generate()


def at(seconds: float) -> str:
    moment = dt.datetime(2026, 11, 24, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


class SteppedClock:
    """A clock a test sets by hand."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds

    def __call__(self) -> str:
        return at(self.seconds)


# -- the log's own guards ---------------------------------------------------------------------


def test_a_clock_that_steps_back_never_makes_the_log_go_back() -> None:
    clock = SteppedClock(100)
    log = AuditLog(MemoryAuditStore(), KEY, PARTY, clock)
    first = log.append("node_started")
    clock.seconds = 40  # NTP stepped the clock back a minute
    held = log.append("rpc")
    head = log.checkpoint()
    clock.seconds = 130
    later = log.append("rpc")
    assert held.timestamp == head.timestamp == first.timestamp == at(100)
    assert later.timestamp == at(130)
    assert verify_store(log.store, PUB, PARTY).ok
    # A reopened log holds to the last stored time too.
    clock.seconds = 10
    assert AuditLog(log.store, KEY, PARTY, clock).append("rpc").timestamp == at(130)


@pytest.fixture
def corrupt_db(tmp_path: Path) -> Path:
    """A SQLite log of 8 records whose record 3 was altered in place (its tail still verifies)."""
    path = tmp_path / "audit.db"
    with SqliteAuditStore(path) as store:
        fill(AuditLog(store, KEY, PARTY, make_clock()), 8)
    db = sqlite3.connect(path)
    db.execute("UPDATE audit_records SET job_id = 'elsewhere' WHERE idx = 3")
    db.commit()
    db.close()
    return path


def test_a_log_corrupt_mid_way_is_sealed_at_its_first_checkpoint(corrupt_db: Path) -> None:
    with SqliteAuditStore(corrupt_db) as store:
        log = AuditLog(store, KEY, PARTY, make_clock())  # the last record verifies: it opens
        assert log.sealed is None
        with pytest.raises(AuditLogCorruptError, match="stored record 3") as err:
            log.checkpoint()
        assert err.value.first_bad_index == 3
        assert log.sealed is not None and log.sealed.first_bad_index == 3
        # From then on nothing is appended onto a log that is no longer evidence.
        with pytest.raises(AuditLogCorruptError, match="refuses to record 'rpc'.*record 3"):
            log.append("rpc")
        with pytest.raises(AuditLogCorruptError, match="record 3"):
            log.checkpoint()
        assert len(store) == 8
        assert verify_store(store, PUB, PARTY).first_bad_index == 3


def test_a_node_serves_the_records_before_one_it_cannot_decode(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with SqliteAuditStore(path) as store:
        fill(AuditLog(store, KEY, PARTY, make_clock()), 8)
    db = sqlite3.connect(path)
    db.execute("UPDATE audit_records SET fields = fields || ' ' WHERE idx = 5")  # not canonical
    db.commit()
    db.close()
    with SqliteAuditStore(path) as store:
        records, error = read_readable(store, 2, 7)
        assert [r.index for r in records] == [2, 3, 4]
        assert error is not None and error.index == 5 and "record 5" in str(error)
        records, error = read_readable(store, 6, 8)
        assert [r.index for r in records] == [6, 7] and error is None
        with pytest.raises(AuditLogCorruptError) as err:
            AuditLog(store, KEY, PARTY, make_clock()).checkpoint()
        assert err.value.first_bad_index == 5


class _SlowStore(MemoryAuditStore):
    """A store whose first long read waits until the test lets it go on."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = threading.Event()
        self.go_on = threading.Event()

    def read(self, start: int = 0, stop: int | None = None) -> list[AuditRecord]:
        if stop is not None and stop - start > 1 and not self.go_on.is_set():
            self.reading.set()
            assert self.go_on.wait(10)
        return super().read(start, stop)


def test_the_first_checkpoint_reads_the_log_without_holding_up_appends() -> None:
    store = _SlowStore()
    fill(AuditLog(store, KEY, PARTY, make_clock()), 6)
    log = AuditLog(store, KEY, PARTY, make_clock())
    heads: list[Checkpoint] = []
    signer = threading.Thread(target=lambda: heads.append(log.checkpoint()))
    signer.start()
    assert store.reading.wait(10)  # the frontier is being built from the store ...
    log.append("rpc")  # ... and an append goes through meanwhile
    store.go_on.set()
    signer.join(10)
    (head,) = heads
    assert head.tree_size == 7 and verify_checkpoint(head, PUB)
    assert check_log_against_checkpoints(store.read(), [head], PUB, PARTY).ok


# -- cosignatures -----------------------------------------------------------------------------


def bank_log(clock: Callable[[], str] | None = None) -> AuditLog:
    return AuditLog(MemoryAuditStore(), KEY, PARTY, clock or SteppedClock(0))


def test_a_cosignature_binds_the_witness_its_time_and_the_whole_head() -> None:
    log = bank_log()
    log.append("node_started")
    head = log.checkpoint()
    seen = cosign(head, "tax", at(1), TAX_KEY)
    assert verify_cosignature(seen, TAX_KEY.public_key())
    assert not verify_cosignature(seen, KEY.public_key())
    for changed in (
        dataclasses.replace(seen, witness="registry"),
        dataclasses.replace(seen, received_at=at(2)),
        dataclasses.replace(seen, head=dataclasses.replace(head, tree_size=2)),
        dataclasses.replace(seen, head=dataclasses.replace(head, timestamp=at(5))),
        dataclasses.replace(seen, head=dataclasses.replace(head, root_hash=bytes(32))),
        dataclasses.replace(seen, cosignature=seen.cosignature[:-1]),
        dataclasses.replace(seen, received_at="yesterday"),
    ):
        assert not verify_cosignature(changed, TAX_KEY.public_key()), changed
    # Domain separation: a cosignature is never a checkpoint's or a record's signature.
    assert seen.signed_bytes().startswith(COSIGNATURE_DOMAIN)
    for domain in (CHECKPOINT_DOMAIN, SIGNING_DOMAIN):
        assert not COSIGNATURE_DOMAIN.startswith(domain)
        assert not domain.startswith(COSIGNATURE_DOMAIN)
    forged = dataclasses.replace(head, signature=seen.cosignature)
    assert not verify_checkpoint(forged, TAX_KEY.public_key())


# -- the witness ------------------------------------------------------------------------------


class Pair:
    """Bank and tax, each with a log, a witness store and a witness."""

    def __init__(self, tmp_path: Path) -> None:
        self.clock = SteppedClock(0)
        self.bank_log = bank_log(self.clock)
        self.tax_log = AuditLog(MemoryAuditStore(), TAX_KEY, "tax", self.clock)
        self.bank = Witness(
            self.bank_log, KEY, WitnessStore(tmp_path / "bank-witness.db", PARTY), self.clock
        )
        self.tax = Witness(
            self.tax_log, TAX_KEY, WitnessStore(tmp_path / "tax-witness.db", "tax"), self.clock
        )

    def bank_presents(self) -> WitnessReply:
        return self.bank.present("tax", lambda head, key: self.tax.answer(head, key, PARTY))

    def close(self) -> None:
        self.bank.store.close()
        self.tax.store.close()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    p = Pair(tmp_path)
    yield p
    p.close()


BANK_RAW = raw_public_key(PUB)


def held_of(witness: Witness) -> list[tuple[str, int]]:
    return [(h.head.party, h.head.tree_size) for _, h in witness.held(0, 100)[0]]


def test_one_call_witnesses_both_directions(pair: Pair) -> None:
    pair.bank_log.append("node_started")
    pair.tax_log.append("node_started")
    pair.tax_log.append("rpc")
    pair.clock.seconds = 3
    reply = pair.bank_presents()
    assert reply.cosigned.witness == "tax" and reply.cosigned.received_at == at(3)
    assert verify_cosignature(reply.cosigned, TAX_KEY.public_key())
    assert held_of(pair.tax) == [(PARTY, 1)]
    assert held_of(pair.bank) == [("tax", 2)]
    (_, kept), last = pair.bank.held(0, 10)[0][0], pair.bank.held(0, 10)[1]
    assert last == 1 and verify_cosignature(kept, KEY.public_key())
    # An idle log presented again costs nothing: the same head is not kept twice.
    pair.bank_presents()
    assert held_of(pair.tax) == [(PARTY, 1)] and held_of(pair.bank) == [("tax", 2)]
    # Each witness pinned the other's key on first sight.
    assert pair.tax.store.pinned_key(PARTY) == BANK_RAW


def test_a_witness_takes_only_a_partys_own_head_signed_with_its_pinned_key(pair: Pair) -> None:
    pair.bank_log.append("node_started")
    head = pair.bank_log.checkpoint()
    with pytest.raises(WitnessError, match="presents only its own head"):
        pair.tax.receive(head, BANK_RAW, "registry")
    with pytest.raises(WitnessError, match="presents only its own head"):
        pair.bank.receive(head, BANK_RAW, PARTY)
    with pytest.raises(WitnessError, match="raw Ed25519"):
        pair.tax.receive(head, b"short", PARTY)
    bad = dataclasses.replace(head, signature=bytes(64))
    with pytest.raises(WitnessError, match="does not verify"):
        pair.tax.receive(bad, BANK_RAW, PARTY)
    # A key is pinned only once a head verifies with it: a garbage key pins nothing.
    with pytest.raises(WitnessError, match="does not verify"):
        pair.tax.receive(head, bytes(32), PARTY)
    assert pair.tax.store.pinned_key(PARTY) is None
    pair.tax.receive(head, BANK_RAW, PARTY)
    assert pair.tax.store.pinned_key(PARTY) == BANK_RAW
    # The key was pinned; another one is refused and recorded once.
    other = Ed25519PrivateKey.generate()
    stolen = AuditLog(MemoryAuditStore(), other, PARTY, pair.clock)
    stolen.append("node_started")
    for _ in range(2):
        with pytest.raises(WitnessKeyError, match="pinned"):
            pair.tax.receive(stolen.checkpoint(), raw_public_key(other.public_key()), PARTY)
    changed = [r for r in pair.tax_log.store.read() if r.event == Event.WITNESS_KEY_CHANGED]
    assert len(changed) == 1 and changed[0].fields[Key.PEER] == PARTY
    assert held_of(pair.tax) == [(PARTY, 1)]


def test_a_head_that_contradicts_a_held_one_is_kept_recorded_and_refused(pair: Pair) -> None:
    for _ in range(3):
        pair.bank_log.append("message_sent")
    pair.clock.seconds = 10
    honest = pair.bank_log.checkpoint()
    pair.tax.receive(honest, BANK_RAW, PARTY)
    # The bank rewrites its log (same key) and presents a head of the same size.
    rewritten = bank_log(SteppedClock(20))
    for _ in range(3):
        rewritten.append("message_received")
    forked = rewritten.checkpoint()
    with pytest.raises(WitnessConflictError, match="contradicts"):
        pair.tax.receive(forked, BANK_RAW, PARTY)
    # ... or one signed later with fewer records: its log shrank.
    shorter = bank_log(SteppedClock(30))
    shorter.append("node_started")
    with pytest.raises(WitnessConflictError, match="contradicts"):
        pair.tax.receive(shorter.checkpoint(), BANK_RAW, PARTY)
    assert sorted(held_of(pair.tax)) == [(PARTY, 1), (PARTY, 3), (PARTY, 3)]
    conflicts = [r for r in pair.tax_log.store.read() if r.event == Event.WITNESS_CONFLICT]
    assert [(r.fields[Key.TREE_SIZE], r.fields[Key.HELD_TREE_SIZE]) for r in conflicts] == [
        (3, 3),
        (1, 3),
    ]
    # Presented again, a conflicting head is refused again but neither kept nor recorded twice.
    with pytest.raises(WitnessConflictError):
        pair.tax.receive(forked, BANK_RAW, PARTY)
    assert len(held_of(pair.tax)) == 3
    assert sum(r.event == Event.WITNESS_CONFLICT for r in pair.tax_log.store.read()) == 2


def test_heads_arriving_out_of_order_are_no_conflict(pair: Pair) -> None:
    pair.bank_log.append("node_started")
    pair.clock.seconds = 1
    older = pair.bank_log.checkpoint()
    pair.bank_log.append("rpc")
    pair.clock.seconds = 2
    newer = pair.bank_log.checkpoint()
    pair.tax.receive(newer, BANK_RAW, PARTY)
    pair.tax.receive(older, BANK_RAW, PARTY)  # signed first, arrived last
    assert sorted(held_of(pair.tax)) == [(PARTY, 1), (PARTY, 2)]


def test_a_presenter_checks_the_cosignature_it_gets_back(pair: Pair) -> None:
    pair.bank_log.append("node_started")
    pair.tax_log.append("node_started")

    def lying(head: Checkpoint, key: bytes) -> WitnessReply:
        reply = pair.tax.answer(head, key, PARTY)
        return dataclasses.replace(
            reply, cosigned=dataclasses.replace(reply.cosigned, received_at=at(99))
        )

    with pytest.raises(WitnessError, match="did not countersign"):
        pair.bank.present("tax", lying)
    assert held_of(pair.bank) == []


def test_the_store_is_private_durable_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "witness.db"
    log = bank_log()
    log.append("node_started")
    head = log.checkpoint()
    store = WitnessStore(path, "tax")
    for i in range(5):
        store.add(cosign(dataclasses.replace(head, tree_size=i), "tax", at(i), TAX_KEY))
    store.pin_key(PARTY, BANK_RAW, at(0))
    store.pin_key(PARTY, bytes(32), at(1))  # a pinned key stays
    store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    store = WitnessStore(path, "tax")
    page, last = store.read(after=1, limit=2)
    assert [seq for seq, _ in page] == [2, 3] and last == 5
    assert [h.head.tree_size for _, h in page] == [1, 2]
    assert all(h.witness == "tax" for _, h in page)
    assert store.pinned_key(PARTY) == BANK_RAW
    store.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE witness_schema_version SET version = 2")
    db.commit()
    db.close()
    with pytest.raises(WitnessError, match="schema version 2"):
        WitnessStore(path, "tax")


# -- the exchange thread ----------------------------------------------------------------------


def test_the_exchange_runs_at_once_every_interval_and_when_asked(pair: Pair) -> None:
    pair.bank_log.append("node_started")
    pair.tax_log.append("node_started")
    calls: list[str] = []
    lock = threading.Lock()

    def send(peer: str, head: Checkpoint, key: bytes) -> WitnessReply:
        with lock:
            calls.append(peer)
        if peer == "registry":
            raise WitnessError("registry is down")  # a failed exchange stops nothing
        return pair.tax.answer(head, key, PARTY)

    exchange = WitnessExchange(pair.bank, lambda: {"tax", "registry", PARTY}, send, 3600)
    exchange.start()
    try:
        wait_until(lambda: exchange.rounds >= 1 or None, 10, "the first round")
        assert sorted(calls) == ["registry", "tax"]  # never itself
        assert held_of(pair.tax) == [(PARTY, 1)]
        pair.bank_log.append("job_closed")
        exchange.request(["tax", PARTY])  # a job with tax closed here
        wait_until(lambda: exchange.rounds >= 2 or None, 10, "the round asked for")
        assert calls[2:] == ["tax"]
        assert held_of(pair.tax) == [(PARTY, 1), (PARTY, 2)]
    finally:
        exchange.close()
    with pytest.raises(sqlite3.ProgrammingError):
        pair.bank.store.read()  # closed with the thread


def test_an_exchange_interval_must_be_positive(pair: Pair) -> None:
    with pytest.raises(ValueError, match="positive"):
        WitnessExchange(pair.bank, frozenset, lambda *a: pytest.fail("no call"), 0)
