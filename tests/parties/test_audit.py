"""Audit log: record format, hash chain, signatures, checkpoints and RFC 6962 proofs, stores
(contract suite over memory, SQLite and PostgreSQL), tamper detection.

The PostgreSQL tests need a server: ``eval "$(bash scripts/postgres.sh start)"`` sets
``BUND_TEST_POSTGRES_DSN``. Without it they are skipped, except under ``CI=true``, where they fail.
"""

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
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bund.parties.audit import (
    CHECKPOINT_DOMAIN,
    EMPTY_ROOT,
    GENESIS_HASH,
    SIGNING_DOMAIN,
    AuditFormatError,
    AuditLog,
    AuditLogConflictError,
    AuditLogCorruptError,
    AuditRecord,
    AuditStore,
    AuditStoreUnavailableError,
    Checkpoint,
    CheckpointReport,
    LogFault,
    MemoryAuditStore,
    MerkleFrontier,
    PostgresAuditStore,
    SqliteAuditStore,
    chain_hash,
    check_log_against_checkpoints,
    consistency_proof,
    export_jsonl,
    inclusion_proof,
    iter_jsonl,
    leaf_hash,
    merkle_root,
    open_audit_store,
    read_jsonl,
    verify_checkpoint,
    verify_consistency,
    verify_inclusion,
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


# -- Merkle tree, proofs ------------------------------------------------------------------------


def h(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def node(left: bytes, right: bytes) -> bytes:
    return h(b"\x01", left, right)


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, word for word: the reference the fast code is held to."""
    if not leaves:
        return h()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node(mth(leaves[:k]), mth(leaves[k:]))


LEAVES = [leaf_hash(i.to_bytes(2, "big")) for i in range(70)]


def test_frontier_matches_the_rfc_definition_at_every_size() -> None:
    frontier = MerkleFrontier()
    for n in range(len(LEAVES) + 1):
        assert len(frontier) == n
        assert frontier.root() == mth(LEAVES[:n]) == merkle_root(LEAVES[:n])
        if n < len(LEAVES):
            frontier.append(LEAVES[n])
    assert EMPTY_ROOT == mth([])
    with pytest.raises(ValueError):
        frontier.append(b"short")


# The tree of RFC 6962 section 2.1.3 (d0..d6), its node names, and its example proofs.
RFC_D = [leaf_hash(f"d{i}".encode()) for i in range(7)]
a, b, c, d, e, f, j = RFC_D
g, hh, i_ = node(a, b), node(c, d), node(e, f)
k, l_ = node(g, hh), node(i_, j)
RFC_ROOT = node(k, l_)


def test_proofs_match_the_rfc_6962_example() -> None:
    assert merkle_root(RFC_D) == RFC_ROOT
    assert inclusion_proof(RFC_D, 0, 7) == [b, hh, l_]
    assert inclusion_proof(RFC_D, 3, 7) == [c, g, l_]
    assert inclusion_proof(RFC_D, 4, 7) == [f, j, k]
    assert inclusion_proof(RFC_D, 6, 7) == [i_, k]
    assert consistency_proof(RFC_D, 3, 7) == [c, d, g, l_]
    assert consistency_proof(RFC_D, 4, 7) == [l_]
    assert consistency_proof(RFC_D, 6, 7) == [i_, j, k]
    assert consistency_proof(RFC_D, 0, 7) == consistency_proof(RFC_D, 7, 7) == []
    assert verify_consistency(3, 7, node(g, c), RFC_ROOT, [c, d, g, l_])
    assert verify_consistency(4, 7, k, RFC_ROOT, [l_])
    assert verify_inclusion(d, 3, 7, RFC_ROOT, [c, g, l_])


def mutations(proof: list[bytes]) -> Iterator[list[bytes]]:
    """Every way to spoil a proof by one edit: flip, drop or add a hash, or swap two."""
    for position in range(len(proof)):
        yield proof[:position] + [flip(proof[position], 0, 1)] + proof[position + 1 :]
        yield proof[:position] + proof[position + 1 :]
    yield [*proof, LEAVES[0]]
    yield [LEAVES[0], *proof]
    if len(proof) > 1 and proof[0] != proof[1]:
        yield [proof[1], proof[0], *proof[2:]]


def test_consistency_proofs_for_every_pair_of_sizes_up_to_20() -> None:
    leaves = LEAVES[:20]
    roots = [mth(leaves[:n]) for n in range(21)]
    for n in range(21):
        for m in range(n + 1):
            proof = consistency_proof(leaves, m, n)
            assert verify_consistency(m, n, roots[m], roots[n], proof), (m, n)
            for spoiled in mutations(proof):
                assert not verify_consistency(m, n, roots[m], roots[n], spoiled), (m, n, spoiled)
            if m:
                assert not verify_consistency(m, n, flip(roots[m], 5, 1), roots[n], proof)
                assert not verify_consistency(m, n, roots[m], flip(roots[n], 5, 1), proof)
                # A fork: the same old size over a different first leaf.
                forked = mth([LEAVES[50], *leaves[1:m]])
                assert not verify_consistency(m, n, forked, roots[n], proof)
                for other in range(1, n + 1):
                    if other != m and roots[other] != roots[m]:
                        assert not verify_consistency(other, n, roots[m], roots[n], proof)


def test_inclusion_proofs_for_every_leaf_of_every_tree_up_to_20() -> None:
    leaves = LEAVES[:20]
    for n in range(1, 21):
        root = mth(leaves[:n])
        for index in range(n):
            proof = inclusion_proof(leaves, index, n)
            assert verify_inclusion(leaves[index], index, n, root, proof), (index, n)
            for spoiled in mutations(proof):
                assert not verify_inclusion(leaves[index], index, n, root, spoiled)
            assert not verify_inclusion(LEAVES[50], index, n, root, proof)
            assert not verify_inclusion(leaves[index], index, n, flip(root, 0, 1), proof)
            for other in range(n):
                if other != index:
                    assert not verify_inclusion(leaves[index], other, n, root, proof)


def test_proof_arguments_out_of_range() -> None:
    for args in [(-1, 3), (4, 3), (0, 21)]:
        with pytest.raises(ValueError):
            consistency_proof(LEAVES[:20], *args)
    for args in [(-1, 3), (3, 3), (0, 21)]:
        with pytest.raises(ValueError):
            inclusion_proof(LEAVES[:20], *args)
    with pytest.raises(ValueError):
        verify_consistency(4, 3, EMPTY_ROOT, EMPTY_ROOT, [])
    with pytest.raises(ValueError):
        verify_inclusion(LEAVES[0], -1, 3, EMPTY_ROOT, [])
    assert not verify_consistency(2, 3, LEAVES[0][:31], LEAVES[1], [LEAVES[2]])
    assert not verify_consistency(0, 3, LEAVES[0], LEAVES[1], [])  # not the empty root
    assert verify_consistency(0, 3, EMPTY_ROOT, LEAVES[1], [])
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert not verify_consistency(0, 0, EMPTY_ROOT, LEAVES[1], [])
    assert not verify_inclusion(LEAVES[0], 0, 1, LEAVES[0][:31], [])


# -- checkpoints ---------------------------------------------------------------------------------


def grown(
    n: int,
    checkpoint_at: Callable[[int], bool],
    key: Ed25519PrivateKey = KEY,
    fork_at: int | None = None,
) -> tuple[list[AuditRecord], list[Checkpoint]]:
    """A log of ``n`` records with a checkpoint at each size chosen; from ``fork_at`` on, the
    records carry other content (the same party's key: another history of the same log)."""
    log = AuditLog(MemoryAuditStore(), key, PARTY, make_clock())
    checkpoints = []
    for size in range(n + 1):
        if checkpoint_at(size):
            checkpoints.append(log.checkpoint())
        if size < n:
            forked = fork_at is not None and size >= fork_at
            log.append("message_sent", "j", {"seq": size, "fork": forked})
    return log.store.read(), checkpoints


def resign(records: list[AuditRecord], index: int, change: dict[str, object]) -> list[AuditRecord]:
    """What the key's holder can do: change record ``index`` and re-sign the chain after it."""
    out = list(records[:index])
    prev = out[-1].record_hash if out else GENESIS_HASH
    for r in records[index:]:
        body = dataclasses.replace(r, prev_hash=prev, **(change if r.index == index else {}))  # type: ignore[arg-type]
        record_hash = chain_hash(prev, body.leaf_hash())
        signature = KEY.sign(SIGNING_DOMAIN + record_hash)
        out.append(dataclasses.replace(body, record_hash=record_hash, signature=signature))
        prev = record_hash
    return out


def check(
    records: list[AuditRecord], checkpoints: list[Checkpoint], party: str = PARTY
) -> CheckpointReport:
    return check_log_against_checkpoints(records, checkpoints, PUB, party)


def test_checkpoint_follows_the_documented_format() -> None:
    log = AuditLog(MemoryAuditStore(), KEY, PARTY, make_clock())
    records = fill(log, 5)
    cp = log.checkpoint()
    assert (cp.party, cp.tree_size, cp.timestamp) == (PARTY, 5, "2026-11-24T00:00:05.000000Z")
    assert cp.root_hash == mth([r.leaf_hash() for r in records])
    message = b"".join(
        [
            b"bund/checkpoint/v1\x00",
            b"\x00\x00\x00\x04bank",
            (5).to_bytes(8, "big"),
            cp.root_hash,
            b"\x00\x00\x00\x1b2026-11-24T00:00:05.000000Z",
        ]
    )
    assert cp.signed_bytes() == message and message.startswith(CHECKPOINT_DOMAIN)
    PUB.verify(cp.signature, message)
    assert verify_checkpoint(cp, PUB)
    assert len(log.store) == 5  # a checkpoint appends nothing


def test_checkpoint_and_record_signatures_do_not_cross() -> None:
    log = AuditLog(MemoryAuditStore(), KEY, PARTY, make_clock())
    record = log.append("rpc")
    cp = log.checkpoint()
    as_checkpoint = dataclasses.replace(cp, signature=record.signature)
    assert not verify_checkpoint(as_checkpoint, PUB)
    as_record = dataclasses.replace(record, signature=cp.signature)
    assert not verify_records([as_record], PUB).ok


CP = grown(3, lambda size: size == 3)[1][0]


@pytest.mark.parametrize(
    "change",
    [
        {"party": "tax"},
        {"tree_size": 2},
        {"root_hash": flip(CP.root_hash, 31, 1)},
        {"root_hash": CP.root_hash[:31]},
        {"timestamp": "2026-11-24T00:00:09.000000Z"},
        {"timestamp": "2026-11-24 00:00:03"},
        {"signature": flip(CP.signature, 0, 0x80)},
        {"signature": CP.signature[:63]},
        {"signature": OTHER_KEY.sign(CP.signed_bytes())},
    ],
)
def test_any_change_to_a_checkpoint_fails_verification(change: dict[str, object]) -> None:
    assert verify_checkpoint(CP, PUB)
    assert not verify_checkpoint(dataclasses.replace(CP, **change), PUB)  # type: ignore[arg-type]
    assert not verify_checkpoint(CP, OTHER_KEY.public_key())


@pytest.mark.parametrize(
    "change",
    [
        {"tree_size": -1},
        {"tree_size": 2**64},
        {"tree_size": "3"},
        {"root_hash": "ab"},
        {"party": 1},
    ],
)
def test_checkpoint_attributes_are_type_checked(change: dict[str, object]) -> None:
    with pytest.raises(AuditFormatError):
        dataclasses.replace(CP, **change)  # type: ignore[arg-type]


def test_checkpoint_of_a_reopened_log_reads_the_store_once() -> None:
    store = MemoryAuditStore()
    log = AuditLog(store, KEY, PARTY, make_clock())
    assert log.checkpoint().root_hash == EMPTY_ROOT
    for n in range(1, 41):
        log.append("rpc", "", {"n": n})
        reopened = AuditLog(store, KEY, PARTY, make_clock())
        roots = {log.checkpoint().root_hash, reopened.checkpoint().root_hash}
        assert roots == {mth([r.leaf_hash() for r in store.read()])}
    reopened.append("rpc")  # keeps the frontier it built
    assert reopened.checkpoint().root_hash == mth([r.leaf_hash() for r in store.read()])


class UnreadableStore(MemoryAuditStore):
    """A store whose record 2 cannot be decoded (its bytes were altered in the database)."""

    def read(self, start: int = 0, stop: int | None = None) -> list[AuditRecord]:
        raise AuditFormatError("record 2 in test.db: a text column is not UTF-8", 2)


@pytest.mark.parametrize("tamper", ["altered", "unreadable"])
def test_no_checkpoint_is_signed_over_a_broken_chain(tamper: str) -> None:
    store = UnreadableStore() if tamper == "unreadable" else MemoryAuditStore()
    for r in make_records(6):
        store.append(dataclasses.replace(r, event="tampered") if r.index == 2 else r)
    log = AuditLog(store, KEY, PARTY, make_clock())  # the last record verifies
    with pytest.raises(AuditLogCorruptError, match="cannot sign a checkpoint.*bund audit verify"):
        log.checkpoint()
    with pytest.raises(ValueError, match="RFC 3339"):
        AuditLog(MemoryAuditStore(), KEY, PARTY, lambda: "now").checkpoint()


# -- the regulator: a log checked against the checkpoints it holds ------------------------------


def every(size: int) -> bool:
    return True


def test_an_untouched_log_matches_its_checkpoints() -> None:
    records, checkpoints = grown(9, every)
    report = check(records, checkpoints[::-1] + checkpoints[:2])  # any order, duplicates too
    assert report.ok and report.count == 9 and report.fault is None and report.reason == ""
    assert check(records, []).ok


@pytest.mark.parametrize("case", ["flip", "delete", "reorder", "insert"])
@pytest.mark.parametrize("index", [0, 3, 7])
def test_tampered_records_are_named_by_the_regulator(case: str, index: int) -> None:
    records, checkpoints = grown(9, lambda size: size % 4 == 0)
    records = list(records)
    if case == "flip":
        records[index] = dataclasses.replace(records[index], job_id="other")
    elif case == "delete":
        del records[index]
    elif case == "reorder":
        records[index], records[index + 1] = records[index + 1], records[index]
    else:
        prev = records[index - 1].record_hash if index else GENESIS_HASH
        records.insert(index, forged(index, prev, OTHER_KEY))
    report = check(records, checkpoints)
    assert (report.fault, report.first_bad_index) == (LogFault.RECORD, index), report
    assert not report.ok and f"party 'bank': record {index}" in report.reason


@pytest.mark.parametrize("index", range(8))
def test_a_log_rewritten_after_a_checkpoint_is_named_to_the_record(index: int) -> None:
    records, checkpoints = grown(8, every)
    rewritten = resign(records, index, {"fields": {"seq": -1}})
    assert verify_records(rewritten, PUB, PARTY).ok  # the chain alone cannot tell
    report = check(rewritten, checkpoints)
    assert report.fault is LogFault.REWRITTEN and report.first_bad_index == index
    assert report.checkpoints == (checkpoints[index + 1],)
    assert "party 'bank' rewrote its log after checkpoint of" in report.reason


def test_a_rewrite_is_bounded_by_the_checkpoints_around_it() -> None:
    records, checkpoints = grown(10, lambda size: size in (4, 8))
    report = check(resign(records, 6, {"event": "nothing_to_see"}), checkpoints)
    assert report.fault is LogFault.REWRITTEN and report.first_bad_index == 4
    assert report.checkpoints[0].tree_size == 8
    assert "from index 4 (the last matching checkpoint) to 7" in report.reason
    # A rewrite after the last checkpoint is not the checkpoints' business.
    assert check(resign(records, 8, {"event": "later"}), checkpoints).ok


def test_truncation_after_a_checkpoint_is_named() -> None:
    records, checkpoints = grown(10, lambda size: size in (5, 10))
    assert verify_records(records[:7], PUB).ok  # without a checkpoint, a valid shorter log
    report = check(records[:7], checkpoints)
    assert (report.fault, report.first_bad_index, report.count) == (LogFault.TRUNCATED, 7, 7)
    assert report.checkpoints[0].tree_size == 10 and "records 7..9 were removed" in report.reason
    # Cut to 7 and grown back to 10: the records at 7.. are new, so the root differs.
    report = check(resign(records, 7, {"fields": {"seq": 70}}), checkpoints)
    assert report.fault is LogFault.REWRITTEN and report.first_bad_index == 5


def test_a_party_equivocating_is_named() -> None:
    honest, honest_checkpoints = grown(6, lambda size: size in (3, 6))
    _, fork_checkpoints = grown(6, lambda size: size in (3, 6), fork_at=4)
    held = honest_checkpoints + fork_checkpoints
    for records in (honest, []):  # the checkpoints alone convict, whatever log is shown
        report = check(records, held)
        assert report.fault is LogFault.EQUIVOCATION and not report.ok
        assert report.checkpoints == (honest_checkpoints[1], fork_checkpoints[1])
        assert (
            "party 'bank' equivocated: it signed two different logs of 6 records" in report.reason
        )
    # Same size, same root, another time: not equivocation.
    again = dataclasses.replace(honest_checkpoints[1], timestamp="2026-11-25T00:00:00Z")
    again = dataclasses.replace(again, signature=KEY.sign(again.signed_bytes()))
    assert check(honest, [*honest_checkpoints, again]).ok


def test_consistency_between_checkpoints_exposes_a_fork_without_the_log() -> None:
    honest, (old, new) = grown(9, lambda size: size in (4, 9))
    leaves = [r.leaf_hash() for r in honest]
    proof = consistency_proof(leaves, 4, 9)
    assert verify_consistency(4, 9, old.root_hash, new.root_hash, proof)
    forked, (_, forked_new) = grown(9, lambda size: size in (4, 9), fork_at=2)
    forked_proof = consistency_proof([r.leaf_hash() for r in forked], 4, 9)
    assert not verify_consistency(4, 9, old.root_hash, forked_new.root_hash, forked_proof)
    # One record, checked against a checkpoint without the rest of the log.
    assert verify_inclusion(leaves[6], 6, 9, new.root_hash, inclusion_proof(leaves, 6, 9))


def test_forged_or_foreign_checkpoints_are_refused() -> None:
    records, checkpoints = grown(5, lambda size: size in (2, 5))
    forged_cp = dataclasses.replace(checkpoints[1], root_hash=bytes(32))
    report = check(records, [checkpoints[0], forged_cp])
    assert report.fault is LogFault.CHECKPOINT and "checkpoint 1 of 5 records" in report.reason
    other = AuditLog(MemoryAuditStore(), KEY, "tax", make_clock()).checkpoint()
    report = check(records, [other])
    assert report.fault is LogFault.CHECKPOINT and "names party 'tax'" in report.reason
    assert check(records, checkpoints, party="tax").fault is LogFault.CHECKPOINT


def test_a_lazy_export_is_checked_line_by_line() -> None:
    records, checkpoints = grown(6, every)
    lines = exported(records).splitlines(keepends=True)
    lines[4] = lines[4].replace(b'"seq":4', b'"seq": 4')
    report = check_log_against_checkpoints(
        iter_jsonl(io.BytesIO(b"".join(lines))), checkpoints, PUB, PARTY
    )
    assert (report.fault, report.first_bad_index) == (LogFault.RECORD, 4)
    assert "line 5" in report.reason


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

    import bund.parties.audit as audit_module

    assert doctest.testmod(audit_module).failed == 0
