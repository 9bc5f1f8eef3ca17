"""Signed tree heads (checkpoints), and the regulator's check of a log against them."""

from __future__ import annotations

import dataclasses
import io

import pytest

from bund.compute.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    verify_consistency,
    verify_inclusion,
)
from bund.parties.audit import (
    CHECKPOINT_DOMAIN,
    GENESIS_HASH,
    AuditFormatError,
    AuditLog,
    AuditLogCorruptError,
    AuditRecord,
    LogFault,
    MemoryAuditStore,
    check_log_against_checkpoints,
    iter_jsonl,
    verify_checkpoint,
    verify_records,
)
from tests.compute.test_merkle import mth
from tests.parties.audit_helpers import (
    KEY,
    OTHER_KEY,
    PARTY,
    PUB,
    check,
    exported,
    fill,
    flip,
    forged,
    grown,
    make_clock,
    make_records,
    resign,
)

# -- checkpoints ---------------------------------------------------------------------------------


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
