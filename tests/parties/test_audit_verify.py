"""Verifying a log on its own: every kind of tampering names the first bad record."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.parties.audit import GENESIS_HASH, AuditRecord, verify_records
from tests.parties.audit_helpers import (
    OTHER_KEY,
    PARTY,
    PUB,
    RECORDS,
    N,
    flip,
    forged,
    make_records,
)


def bad_at(records: list[AuditRecord]) -> int | None:
    report = verify_records(records, PUB)
    assert report.ok is (report.first_bad_index is None)
    return report.first_bad_index


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
