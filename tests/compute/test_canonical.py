"""Canonical JSON version 1: its rules byte for byte, and that what was signed before verifies.

The fixtures in ``tests/fixtures/canonical_v1/`` were made with the encoders that came before
``canonical_json`` (see their ``generate.py``): an exported audit log with Chinese text and every
kind of scalar, a job spec with a Chinese purpose and its digest, and an approval payload signed
with a fixed test key.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.compute.canonical import CANONICAL_JSON_VERSION, canonical_json
from bund.compute.dp.budget import Budget
from bund.parties.approvals import ApprovalRequest, verify_approval
from bund.parties.audit import (
    AuditLog,
    Checkpoint,
    MemoryAuditStore,
    SqliteAuditStore,
    check_log_against_checkpoints,
    export_jsonl,
    iter_jsonl,
    verify_checkpoint,
    verify_store,
)
from bund.parties.jobs import InvalidJobSpecError, JobSpec, Participant
from tests.fixtures.canonical_v1 import generate
from tests.fixtures.canonical_v1.generate import fixture_key

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "canonical_v1"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def public_key(hex_key: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_key))


# -- the rules ---------------------------------------------------------------------------------


def test_version_1_bytes_are_pinned() -> None:
    """Any change to these bytes changes signed bytes: that is a new version, not a fix."""
    doc = {
        "z": [1, -2, 2**70, 0.5, 1e-06, 2.0, 1e22, True, False, None],
        "a": {"é": "数据可用不出域", "b": 'quote " back \\ nl \n tab \t nul \x00 del \x7f'},
        "line separators": "\u2028\u2029",
        "astral": "𝄞",
        "": [],
        "tuple": (1, "x"),
    }
    expected = (
        '{"":[],"a":{"b":"quote \\" back \\\\ nl \\n tab \\t nul \\u0000 del \x7f",'
        '"é":"数据可用不出域"},"astral":"𝄞","line separators":"\u2028\u2029",'
        '"tuple":[1,"x"],"z":[1,-2,1180591620717411303424,0.5,1e-06,2.0,1e+22,true,false,null]}'
    ).encode("utf-8")
    assert CANONICAL_JSON_VERSION == 1
    assert canonical_json(doc) == expected


def test_key_order_and_mapping_type_do_not_matter() -> None:
    forwards = {"b": 1, "a": {"d": 2, "c": 3}}
    backwards = {"a": MappingProxyType({"c": 3, "d": 2}), "b": 1}
    assert canonical_json(forwards) == canonical_json(backwards) == b'{"a":{"c":3,"d":2},"b":1}'
    # Code-point order: "Z" < "a" < "é" < "中" < "𝄞".
    assert canonical_json({"𝄞": 0, "中": 0, "é": 0, "a": 0, "Z": 0}).decode() == (
        '{"Z":0,"a":0,"é":0,"中":0,"𝄞":0}'
    )


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ({"x": float("nan")}, ValueError, r"value\['x'\] is nan"),
        ([1.0, float("inf")], ValueError, r"value\[1\] is inf"),
        ({"x": [float("-inf")]}, ValueError, "-inf"),
        ({"x": "\ud800"}, ValueError, "lone surrogate"),
        ({"\udfff": 1}, ValueError, "lone surrogate"),
        ({1: "one"}, TypeError, "keys must be str"),
        ({None: 1}, TypeError, "keys must be str"),
        ({"x": b"raw"}, TypeError, "bytes as hex"),
        ({"x": {1, 2}}, TypeError, "set"),
        ({"x": object()}, TypeError, "object"),
    ],
)
def test_what_json_cannot_say_unambiguously_is_refused(
    value: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        canonical_json(value)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)


def old_audit_body(value: object) -> bytes:
    """``_canonical`` of the audit log before the unification (commit 1fd02cb)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def old_spec_encoding(value: object) -> bytes:
    """``JobSpec.canonical_json`` before the unification."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def old_approval_encoding(value: object) -> bytes:
    """``ApprovalRequest.payload`` before the unification, without its domain prefix."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@settings(max_examples=300, deadline=None)
@given(value=json_values)
def test_version_1_is_what_each_old_encoder_wrote(value: object) -> None:
    """On every document the old encoders could be given, only an approval's differed, and only
    by escaping text beyond printable ASCII (DEL and above), which no approval field ever holds
    (names, hex digests, rationals and a package version)."""
    encoded = canonical_json(value)
    assert encoded == old_audit_body(value) == old_spec_encoding(value)
    assert (encoded == old_approval_encoding(value)) is all(b < 0x7F for b in encoded)
    assert json.loads(encoded) == value


# -- what was written before still verifies ----------------------------------------------------


def fixture_lines() -> Iterator[bytes]:
    with (FIXTURES / "audit_log.jsonl").open("rb") as f:
        yield from f


def fixture_checkpoint() -> Checkpoint:
    doc = fixture("audit.json")["checkpoint"]
    return Checkpoint(
        party=doc["party"],
        tree_size=doc["tree_size"],
        root_hash=bytes.fromhex(doc["root_hash"]),
        timestamp=doc["timestamp"],
        signature=bytes.fromhex(doc["signature"]),
    )


def test_an_audit_log_exported_before_still_verifies_and_exports_the_same() -> None:
    audit = fixture("audit.json")
    key = public_key(audit["audit_public_key_hex"])
    checkpoint = fixture_checkpoint()
    assert verify_checkpoint(checkpoint, key)
    report = check_log_against_checkpoints(iter_jsonl(fixture_lines()), [checkpoint], key, "tax")
    assert report.ok and report.count == 5, report
    records = list(iter_jsonl(fixture_lines()))
    assert records[0].fields["purpose"] == fixture("spec.json")["spec"]["purpose"]
    again = io.StringIO()
    export_jsonl(records, again)
    assert again.getvalue().encode("utf-8") == (FIXTURES / "audit_log.jsonl").read_bytes()


def test_an_old_log_moved_into_a_store_verifies_and_is_continued(tmp_path: Path) -> None:
    key = fixture_key("bund fixture audit key v1")
    assert key.public_key() == public_key(fixture("audit.json")["audit_public_key_hex"])
    with SqliteAuditStore(tmp_path / "audit.db") as store:
        for record in iter_jsonl(fixture_lines()):
            store.append(record)
    with SqliteAuditStore(tmp_path / "audit.db") as store:
        assert store.read() == list(iter_jsonl(fixture_lines()))
        log = AuditLog(store, key, "tax", lambda: "2026-11-25T00:00:00Z")
        assert log.append("job_submitted", "", {"purpose": "信贷"}).index == 5
        assert verify_store(store, key.public_key(), "tax").count == 6


def fixture_spec() -> JobSpec:
    doc = fixture("spec.json")["spec"]
    return JobSpec(
        protocol=doc["protocol"],
        participants=tuple(
            Participant(p["party"], p["role"], p["dataset"], p["columns"])
            for p in doc["participants"]
        ),
        receivers=tuple(doc["receivers"]),
        purpose=doc["purpose"],
        requester=doc["requester"],
        params=doc["params"],
        job_id=doc["job_id"],
    )


def test_a_spec_digested_before_gives_the_same_bytes_and_digest() -> None:
    spec, expected = fixture_spec(), fixture("spec.json")
    assert spec.canonical_json().hex() == expected["canonical_hex"]
    assert spec.digest() == expected["sha256"]
    assert "小微企业" in spec.purpose


def test_a_spec_with_a_non_finite_parameter_is_refused_before_any_digest() -> None:
    with pytest.raises(InvalidJobSpecError, match=r"rate.*finite"):
        JobSpec(
            protocol="psi",
            participants=(Participant("bank", "sender", "loans"),),
            receivers=("bank",),
            purpose="a test",
            requester="bank",
            params={"rate": float("nan")},
        )


def test_an_approval_signed_before_still_verifies() -> None:
    doc = fixture("approval.json")
    request = ApprovalRequest(
        spec=fixture_spec(),
        party=doc["party"],
        code_version=doc["code_version"],
        dataset=doc["dataset"],
        level=doc["level"],
        dataset_version=doc["dataset_version"],
        outputs=tuple(doc["outputs"]),
        learns=doc["learns"],
        cost=Budget.parse(doc["epsilon"], doc["delta"]),
    )
    assert request.payload().hex() == doc["payload_hex"]
    verify_approval(
        request, bytes.fromhex(doc["signature_hex"]), public_key(doc["approver_public_key_hex"])
    )
    # The audit fixture's job_approved record carries the same signature over the same spec.
    approved = list(iter_jsonl(fixture_lines()))[1]
    assert approved.fields["signature"] == doc["signature_hex"]
    assert approved.fields["spec_sha256"] == request.spec.digest()


def test_the_fixtures_are_what_their_generator_writes(tmp_path: Path) -> None:
    """Rerunning the generator with today's code writes the committed files byte for byte."""
    generate.main(tmp_path)
    for name in ("approval.json", "audit.json", "audit_log.jsonl", "spec.json"):
        assert (tmp_path / name).read_bytes() == (FIXTURES / name).read_bytes(), name


def test_a_record_written_today_has_the_body_the_old_encoder_wrote() -> None:
    log = AuditLog(MemoryAuditStore(), fixture_key("test"), "tax", lambda: "2026-11-24T09:30:00Z")
    record = log.append("job_submitted", "", {"purpose": "信贷", "epsilon": 0.5, "n": 2**70})
    assert record.body() == old_audit_body(json.loads(record.body()))
