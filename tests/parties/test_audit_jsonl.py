"""JSON-lines export and its strict import: no byte of an export changes unnoticed."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.parties.audit import (
    AuditFormatError,
    AuditLog,
    MemoryAuditStore,
    iter_jsonl,
    read_jsonl,
    verify_records,
)
from tests.parties.audit_helpers import (
    KEY,
    PARTY,
    PUB,
    RECORDS,
    N,
    exported,
    field_maps,
    flip,
    make_clock,
)

# -- JSON lines --------------------------------------------------------------------------------


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
