"""Every wire conversion round-trips, and garbage is refused with MalformedRequestError."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bund.parties import wire
from bund.parties.audit import AuditRecord, Checkpoint, WitnessedHead, WitnessReply
from bund.parties.errors import MalformedRequestError
from bund.parties.jobs import InvalidJobSpecError, JobSpec, Participant
from bund.parties.lifecycle.states import JobState, JobStatus
from bund.parties.lifecycle.store import ResultInfo
from bund.parties.serving.proofs import RequestProof
from bund.parties.serving.service import Answer, Applicant, Decision, Scored
from bund.v1 import common_pb2, job_pb2, serving_pb2

names = st.from_regex(r"[a-z][a-z0-9_\-]{0,20}", fullmatch=True)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=50),
)


@st.composite
def specs(draw: st.DrawFn) -> JobSpec:
    parties = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    participants = tuple(
        Participant(
            p,
            draw(names),
            draw(st.one_of(st.none(), names)),
            draw(st.dictionaries(names, names, max_size=3)),
        )
        for p in parties
    )
    return JobSpec(
        protocol=draw(names),
        participants=participants,
        receivers=tuple(draw(st.lists(st.sampled_from(parties), min_size=1, unique=True))),
        purpose=draw(st.text(min_size=1, max_size=80).filter(lambda s: s.strip() != "")),
        requester=draw(st.sampled_from(parties)),
        params=draw(st.dictionaries(names, scalars, max_size=5)),
        job_id=draw(st.one_of(st.just(""), st.from_regex(r"[0-9a-f]{32}", fullmatch=True))),
    )


@given(specs())
def test_spec_round_trips(spec: JobSpec) -> None:
    back = wire.spec_from_proto(wire.spec_to_proto(spec))
    assert back == spec
    assert back.digest() == spec.digest()
    raw = wire.spec_to_proto(spec).SerializeToString()
    assert wire.spec_from_proto(wire.parse(common_pb2.JobSpec, raw)) == spec  # type: ignore[arg-type]


@given(scalars)
def test_scalar_round_trips(value: object) -> None:
    assert wire.scalar_from_proto(wire.scalar_to_proto(value)) == value  # type: ignore[arg-type]


@given(
    specs(),
    st.sampled_from(list(JobState)),
    st.integers(0, 2**40),
    st.text(max_size=30),
    st.booleans(),
)
def test_status_round_trips(
    spec: JobSpec, state: JobState, done: int, phase: str, has_result: bool
) -> None:
    status = JobStatus(
        spec, state, phase, done, done + 1, "why", has_result, "ab" * 32, "2026-11-24T00:00:00Z"
    )
    assert wire.status_from_proto(wire.status_to_proto(status)) == status


@given(
    st.dictionaries(names, scalars, max_size=5),
    st.dictionaries(names, st.binary(max_size=100), max_size=3),
)
def test_result_round_trips(summary: dict[str, object], artifacts: dict[str, bytes]) -> None:
    sizes = {name: len(data) for name, data in artifacts.items()}
    result = ResultInfo(summary, sizes)  # type: ignore[arg-type]
    back = wire.result_from_proto(wire.result_to_proto("a" * 32, result))
    assert dict(back.summary) == summary and dict(back.artifact_sizes) == sizes


def test_node_info_round_trips() -> None:
    info = wire.NodeInfo("bank", "bank", "0.1.0", b"k" * 32, {"psi": "1"}, b"s" * 100)
    assert wire.node_info_from_proto(wire.node_info_to_proto(info)) == info
    bad = wire.node_info_to_proto(info)
    bad.audit_public_key = b"short"
    with pytest.raises(MalformedRequestError):
        wire.node_info_from_proto(bad)


@given(st.dictionaries(names, scalars, max_size=5), st.integers(0, 2**40))
def test_audit_record_and_page_round_trip(fields: dict[str, object], index: int) -> None:
    record = AuditRecord(
        index=index,
        timestamp="2026-11-24T00:00:00.000000Z",
        party="bank",
        event="rpc",
        job_id="",
        fields=fields,
        prev_hash=b"\x01" * 32,
        record_hash=b"\x02" * 32,
        signature=b"\x03" * 64,  # type: ignore[arg-type]
    )
    assert wire.audit_record_from_proto(wire.audit_record_to_proto(record)) == record
    page = wire.AuditPage((record,), index + 1, b"k" * 32)
    assert wire.audit_page_from_proto(wire.audit_page_to_proto(page)) == page
    broken = wire.AuditPage((record,), index + 3, b"k" * 32, (index + 1, "not canonical"))
    assert wire.audit_page_from_proto(wire.audit_page_to_proto(broken)) == broken


HEAD = Checkpoint("bank", 7, b"\x04" * 32, "2026-11-24T00:00:00.000000Z", b"\x05" * 64)
SEEN = WitnessedHead(HEAD, "tax", "2026-11-24T00:00:01.000000Z", b"\x06" * 64)


def test_witness_messages_round_trip() -> None:
    assert wire.witnessed_head_from_proto(wire.witnessed_head_to_proto(SEEN, 9)) == SEEN
    assert wire.witnessed_head_to_proto(SEEN, 9).seq == 9
    reply = WitnessReply(SEEN, dataclasses.replace(HEAD, party="tax"), b"k" * 32)
    assert wire.witness_reply_from_proto(wire.witness_reply_to_proto(reply)) == reply
    page = wire.WitnessedPage(((3, SEEN), (5, SEEN)), 8)
    assert wire.witnessed_page_from_proto(wire.witnessed_page_to_proto(page)) == page


def test_non_finite_parameters_are_refused() -> None:
    with pytest.raises(MalformedRequestError):
        wire.scalar_from_proto(common_pb2.Scalar(real=float("nan")))


def test_garbage_is_malformed() -> None:
    with pytest.raises(MalformedRequestError):
        wire.parse(job_pb2.DeliverRequest, b"\xff\xff\xff\xff\x0f")


@pytest.mark.parametrize("value", ["", "A" * 32, "g" * 32, "a" * 31])
def test_job_id_must_be_hex(value: str) -> None:
    with pytest.raises(MalformedRequestError):
        wire.job_id(value)


def test_invalid_spec_from_the_wire_names_the_field() -> None:
    message = wire.spec_to_proto(
        JobSpec("psi", (Participant("bank", "member"),), ("bank",), "p", "bank")
    )
    message.requester = "tax"
    with pytest.raises(InvalidJobSpecError, match="requester"):
        wire.spec_from_proto(message)


@pytest.mark.parametrize("name", ["bank\n", "bank\r", "", ".bank", "b/ank", "b" * 65])
def test_a_party_name_from_the_wire_is_a_whole_name(name: str) -> None:
    # "bank\n" matched a "$"-anchored pattern: a name is checked whole (log lines, file paths).
    message = wire.spec_to_proto(
        JobSpec("psi", (Participant("bank", "member"),), ("bank",), "p", "bank")
    )
    message.participants[0].party = name
    with pytest.raises(InvalidJobSpecError, match="not a valid name"):
        wire.spec_from_proto(message)


CONTRACT = "c" * 32
features = st.dictionaries(names, st.floats(allow_nan=False, allow_infinity=False), max_size=4)


@given(st.lists(st.tuples(st.text(max_size=20), features), max_size=5))
def test_serving_requests_round_trip(applicants: list[tuple[str, dict[str, float]]]) -> None:
    given_ = [Applicant(i, f) for i, f in applicants]
    message = wire.score_request_to_proto(CONTRACT, given_)
    assert wire.score_request_from_proto(message) == (CONTRACT, given_)
    parts = wire.score_parts_request_to_proto(CONTRACT, b"n" * 32, [a.id for a in given_])
    assert wire.score_parts_request_from_proto(parts) == (
        CONTRACT,
        b"n" * 32,
        [a.id for a in given_],
    )


@given(
    st.lists(
        st.tuples(
            st.text(max_size=20),
            st.sampled_from(["approve", "decline", "refer"]),
            st.one_of(st.none(), st.floats(0, 1)),
        ),
        max_size=5,
    )
)
def test_serving_answers_round_trip(decisions: list[tuple[str, str, float | None]]) -> None:
    scored = Scored(CONTRACT, b"n" * 32, b"d" * 32, tuple(Decision(*d) for d in decisions))
    assert wire.scored_from_proto(wire.scored_to_proto(scored)) == scored
    answer = Answer(b"d" * 32, b"BSRV" + bytes(8))
    assert wire.answer_from_proto(wire.answer_to_proto(answer)) == answer


def test_a_request_proof_round_trips_and_garbage_is_refused() -> None:
    record = AuditRecord(
        3, "2026-11-24T00:00:00.000000Z", "tax", "serving_root", CONTRACT,
        {"first_seq": 0, "count": 2, "root_hash": "ab"}, b"\x01" * 32, b"\x02" * 32, b"\x03" * 64,
    )  # fmt: skip
    proof = RequestProof(CONTRACT, b"d" * 32, 1, record, (b"\x04" * 32,))
    assert wire.request_proof_from_proto(wire.request_proof_to_proto(proof)) == proof
    long = wire.request_proof_to_proto(dataclasses.replace(proof, path=(b"\x04" * 32,) * 65))
    with pytest.raises(MalformedRequestError, match="64 hashes"):
        wire.request_proof_from_proto(long)
    with pytest.raises(MalformedRequestError, match="job_id"):
        wire.score_request_from_proto(serving_pb2.ScoreRequest(contract_id="nope"))
    too_many = serving_pb2.ScorePartsRequest(contract_id=CONTRACT, ids=["a"] * 10_001)
    with pytest.raises(MalformedRequestError, match="at most 10000"):
        wire.score_parts_request_from_proto(too_many)
    nan = serving_pb2.ScoreRequest(
        contract_id=CONTRACT, applicants=[serving_pb2.Applicant(id="a", features={"x": math.nan})]
    )
    with pytest.raises(MalformedRequestError, match="finite"):
        wire.score_request_from_proto(nan)
