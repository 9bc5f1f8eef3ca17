"""Audit records: the documented format, what fields may hold, what the log refuses."""

from __future__ import annotations

import dataclasses
import doctest
import hashlib
import importlib

import pytest

from bund.parties.audit import (
    GENESIS_HASH,
    AuditFormatError,
    AuditLog,
    MemoryAuditStore,
    verify_store,
)
from tests.parties.audit_helpers import KEY, PARTY, PUB, RECORDS, make_clock

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


@pytest.mark.parametrize("module", ["log", "stores", "treehead"])
def test_doc_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(f"bund.parties.audit.{module}"))
    assert result.failed == 0 and result.attempted > 0
