"""Protobuf <-> domain objects: the only module (with servicers, client and node) that sees bund.v1.

Every ``x_to_proto`` has its ``x_from_proto``; ``from_proto`` functions validate what they build and
raise ``MalformedRequestError`` (or the domain's own error) on anything a peer could get wrong.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError, Message

from bund.compute.canonical import canonical_json
from bund.compute.dp.budget import Budget, format_rational, parse_rational
from bund.compute.errors import InvalidInputError
from bund.parties.errors import MalformedRequestError
from bund.parties.jobspec import JobSpec, JsonScalar, Participant, is_job_id
from bund.parties.lifecycle.states import JobState, JobStatus, PartyView
from bund.v1.audit_pb2 import AuditRecord as ProtoAuditRecord
from bund.v1.audit_pb2 import Checkpoint as ProtoCheckpoint
from bund.v1.audit_pb2 import GetWitnessedHeadsResponse as ProtoWitnessedPage
from bund.v1.audit_pb2 import ReadAuditLogResponse as ProtoAuditPage
from bund.v1.audit_pb2 import UnreadableRecord as ProtoUnreadable
from bund.v1.audit_pb2 import WitnessedHead as ProtoWitnessedHead
from bund.v1.audit_pb2 import WitnessResponse as ProtoWitnessReply
from bund.v1.common_pb2 import JobSpec as ProtoJobSpec
from bund.v1.common_pb2 import Participant as ProtoParticipant
from bund.v1.common_pb2 import Scalar as ProtoScalar
from bund.v1.federation_pb2 import GetNodeInfoResponse as ProtoNodeInfo
from bund.v1.job_pb2 import ApprovalRequest as ProtoApprovalRequest
from bund.v1.job_pb2 import GetJobResultResponse as ProtoJobResult
from bund.v1.job_pb2 import JobState as ProtoJobState
from bund.v1.job_pb2 import JobStatus as ProtoJobStatus
from bund.v1.job_pb2 import PartyView as ProtoPartyView
from bund.v1.serving_pb2 import Applicant as ProtoApplicant
from bund.v1.serving_pb2 import Decision as ProtoDecision
from bund.v1.serving_pb2 import RequestProof as ProtoRequestProof
from bund.v1.serving_pb2 import ScorePartsRequest as ProtoScorePartsRequest
from bund.v1.serving_pb2 import ScorePartsResponse as ProtoAnswer
from bund.v1.serving_pb2 import ScoreRequest as ProtoScoreRequest
from bund.v1.serving_pb2 import ScoreResponse as ProtoScored

# A job's spec and status convert with the light modules above: ``bund job status`` loads no
# more. The domain classes of approvals, audit records, results and serving come from modules
# that load the node's (cryptography, pydantic, the protocols): each conversion that builds one
# imports it where it does.
if TYPE_CHECKING:
    from bund.parties.approvals import ApprovalRequest
    from bund.parties.audit import AuditRecord, Checkpoint, WitnessedHead, WitnessReply
    from bund.parties.lifecycle.store import ResultInfo
    from bund.parties.serving.proofs import RequestProof
    from bund.parties.serving.service import Answer, Applicant, Scored


def parse(message_type: type[Message], data: bytes) -> Message:
    """Parse ``data`` as ``message_type``; garbage raises ``MalformedRequestError``."""
    message = message_type()
    try:
        message.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError):
        raise MalformedRequestError(
            f"the request is not a valid {message_type.DESCRIPTOR.full_name} message"
        ) from None
    return message


def scalar_to_proto(value: JsonScalar) -> ProtoScalar:
    """A JSON scalar as a ``Scalar`` (None leaves the oneof unset)."""
    if value is None:
        return ProtoScalar()
    if isinstance(value, bool):
        return ProtoScalar(flag=value)
    if isinstance(value, int):
        return ProtoScalar(integer=value)
    if isinstance(value, float):
        return ProtoScalar(real=value)
    if isinstance(value, str):
        return ProtoScalar(text=value)
    raise TypeError(f"not a JSON scalar: {type(value).__name__}")


def scalar_from_proto(message: ProtoScalar) -> JsonScalar:
    """A ``Scalar`` as a JSON scalar; non-finite reals are refused."""
    kind = message.WhichOneof("kind")
    if kind is None:
        return None
    value: JsonScalar = getattr(message, kind)
    if isinstance(value, float) and not math.isfinite(value):
        raise MalformedRequestError("a parameter holds a non-finite number")
    return value


def scalars_to_proto(values: Mapping[str, JsonScalar]) -> dict[str, ProtoScalar]:
    """A mapping of JSON scalars as ``map<string, Scalar>``."""
    return {k: scalar_to_proto(v) for k, v in values.items()}


def scalars_from_proto(values: Mapping[str, ProtoScalar]) -> dict[str, JsonScalar]:
    """``map<string, Scalar>`` as a mapping of JSON scalars."""
    return {k: scalar_from_proto(v) for k, v in values.items()}


def spec_to_proto(spec: JobSpec) -> ProtoJobSpec:
    """Serialise a ``JobSpec``."""
    return ProtoJobSpec(
        job_id=spec.job_id,
        protocol=spec.protocol,
        participants=[
            ProtoParticipant(
                party=p.party, role=p.role, dataset=p.dataset or "", columns=dict(p.columns)
            )
            for p in spec.participants
        ],
        receivers=list(spec.receivers),
        purpose=spec.purpose,
        requester=spec.requester,
        params=scalars_to_proto(spec.params),
    )


def spec_from_proto(message: ProtoJobSpec) -> JobSpec:
    """Deserialise and validate a ``JobSpec`` (``InvalidJobSpecError`` names the bad field)."""
    return JobSpec(
        protocol=message.protocol,
        participants=tuple(
            Participant(
                party=p.party,
                role=p.role,
                dataset=p.dataset or None,
                columns=dict(p.columns),
            )
            for p in message.participants
        ),
        receivers=tuple(message.receivers),
        purpose=message.purpose,
        requester=message.requester,
        params=scalars_from_proto(message.params),
        job_id=message.job_id,
    )


_STATE_TO_PROTO = {
    JobState.PROPOSED: ProtoJobState.JOB_STATE_PROPOSED,
    JobState.ACCEPTED: ProtoJobState.JOB_STATE_ACCEPTED,
    JobState.RUNNING: ProtoJobState.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: ProtoJobState.JOB_STATE_SUCCEEDED,
    JobState.FAILED: ProtoJobState.JOB_STATE_FAILED,
    JobState.REFUSED: ProtoJobState.JOB_STATE_REFUSED,
    JobState.ABORTED: ProtoJobState.JOB_STATE_ABORTED,
    JobState.AWAITING_APPROVAL: ProtoJobState.JOB_STATE_AWAITING_APPROVAL,
    JobState.INTERRUPTED: ProtoJobState.JOB_STATE_INTERRUPTED,
    JobState.SERVING: ProtoJobState.JOB_STATE_SERVING,
}
_STATE_FROM_PROTO = {v: k for k, v in _STATE_TO_PROTO.items()}


def state_to_proto(state: JobState) -> ProtoJobState.ValueType:
    """A job state's wire value."""
    return _STATE_TO_PROTO[state]


def state_from_proto(value: ProtoJobState.ValueType) -> JobState:
    """A job state from its wire value.

    Raises:
        MalformedRequestError: If the value names no state.
    """
    try:
        return _STATE_FROM_PROTO[value]
    except KeyError:
        raise MalformedRequestError(f"unknown job state {value}") from None


def status_to_proto(status: JobStatus) -> ProtoJobStatus:
    """Serialise a ``JobStatus``."""
    return ProtoJobStatus(
        spec=spec_to_proto(status.spec),
        state=_STATE_TO_PROTO[status.state],
        phase=status.phase,
        done=status.done,
        total=status.total,
        error=status.error,
        has_result=status.has_result,
        transcript_digest=status.transcript_digest,
        updated_at=status.updated_at,
        approved_by=list(status.approved_by),
        parties=[
            ProtoPartyView(
                party=v.party,
                state=_STATE_TO_PROTO[v.state],
                approved_by=list(v.approved_by),
                reason=v.reason,
            )
            for v in status.parties
        ],
    )


def status_from_proto(message: ProtoJobStatus) -> JobStatus:
    """Deserialise a ``JobStatus``."""
    state = state_from_proto(message.state)
    parties = tuple(
        PartyView(v.party, state_from_proto(v.state), tuple(v.approved_by), v.reason)
        for v in message.parties
    )
    return JobStatus(
        spec=spec_from_proto(message.spec),
        state=state,
        phase=message.phase,
        done=message.done,
        total=message.total,
        error=message.error,
        has_result=message.has_result,
        transcript_digest=message.transcript_digest,
        updated_at=message.updated_at,
        approved_by=tuple(message.approved_by),
        parties=parties,
    )


def result_to_proto(job_id: str, result: ResultInfo) -> ProtoJobResult:
    """Serialise a result's summary and artifact sizes."""
    return ProtoJobResult(
        job_id=job_id,
        summary=scalars_to_proto(result.summary),
        artifact_sizes=dict(result.artifact_sizes),
    )


def result_from_proto(message: ProtoJobResult) -> ResultInfo:
    """Deserialise a result's summary and artifact sizes."""
    from bund.parties.lifecycle.store import ResultInfo

    return ResultInfo(scalars_from_proto(message.summary), dict(message.artifact_sizes))


@dataclass(frozen=True)
class NodeInfo:
    """Who a node is, as it reports itself (its TLS certificate is what authenticates it)."""

    party: str
    role: str
    version: str
    audit_public_key: bytes
    protocols: Mapping[str, str]
    #: The node's signed instance epoch (``bund.parties.authz.Instance``), verified by the caller.
    instance: bytes = b""


def fields_to_json(fields: Mapping[str, JsonScalar]) -> str:
    """Canonical JSON of a flat mapping (for audit record fields on the wire)."""
    return canonical_json(dict(fields)).decode()


#: The largest offset or index a request may name: far above any artifact or log, and below what
#: SQLite's and PostgreSQL's 64-bit signed integers hold once one is added to it.
MAX_POSITION = 2**53


def position(value: int, what: str) -> int:
    """An offset or index from a request, or ``MalformedRequestError`` when it is out of range."""
    if not 0 <= value <= MAX_POSITION:
        raise MalformedRequestError(f"{what} must be between 0 and 2^53, not {value}")
    return value


def job_id(value: str) -> str:
    """A job id from a request: 32 lower-case hex digits."""
    if not is_job_id(value):
        raise MalformedRequestError("job_id must be 32 lower-case hex digits")
    return value


def node_info_to_proto(info: NodeInfo) -> ProtoNodeInfo:
    """Serialise a ``NodeInfo``."""
    return ProtoNodeInfo(
        party=info.party,
        role=info.role,
        version=info.version,
        audit_public_key=info.audit_public_key,
        protocols=dict(info.protocols),
        instance=info.instance,
    )


def node_info_from_proto(message: ProtoNodeInfo) -> NodeInfo:
    """Deserialise a ``NodeInfo``."""
    if len(message.audit_public_key) != 32:
        raise MalformedRequestError("audit_public_key must be 32 raw Ed25519 bytes")
    return NodeInfo(
        party=message.party,
        role=message.role,
        version=message.version,
        audit_public_key=message.audit_public_key,
        protocols=dict(message.protocols),
        instance=message.instance,
    )


@dataclass(frozen=True)
class AuditPage:
    """A slice of a node's audit log, with the log's size and the key that verifies it.

    ``unreadable`` is ``(index, reason)`` when the record after the last one sent is stored but
    cannot be decoded at the node: the regulator names it as the first bad record.
    """

    records: tuple[AuditRecord, ...]
    size: int
    audit_public_key: bytes
    unreadable: tuple[int, str] | None = None


def audit_record_to_proto(record: AuditRecord) -> ProtoAuditRecord:
    """Serialise an ``AuditRecord``."""
    return ProtoAuditRecord(
        index=record.index,
        timestamp=record.timestamp,
        party=record.party,
        event=record.event,
        job_id=record.job_id,
        fields_json=fields_to_json(record.fields),
        prev_hash=record.prev_hash,
        record_hash=record.record_hash,
        signature=record.signature,
    )


def audit_record_from_proto(message: ProtoAuditRecord) -> AuditRecord:
    """Deserialise an ``AuditRecord`` (its signature is checked by the verifier, not here)."""
    from bund.parties.audit import AuditRecord

    try:
        fields = json.loads(message.fields_json)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than any record's
        raise MalformedRequestError("audit record fields are not JSON") from None
    if not isinstance(fields, dict):
        raise MalformedRequestError("audit record fields must be a JSON object")
    return AuditRecord(
        index=message.index,
        timestamp=message.timestamp,
        party=message.party,
        event=message.event,
        job_id=message.job_id,
        fields=fields,
        prev_hash=message.prev_hash,
        record_hash=message.record_hash,
        signature=message.signature,
    )


def audit_page_to_proto(page: AuditPage) -> ProtoAuditPage:
    """Serialise an ``AuditPage``."""
    message = ProtoAuditPage(
        records=[audit_record_to_proto(r) for r in page.records],
        size=page.size,
        audit_public_key=page.audit_public_key,
    )
    if page.unreadable is not None:
        index, reason = page.unreadable
        message.unreadable.CopyFrom(ProtoUnreadable(index=index, reason=reason))
    return message


def audit_page_from_proto(message: ProtoAuditPage) -> AuditPage:
    """Deserialise an ``AuditPage``."""
    return AuditPage(
        records=tuple(audit_record_from_proto(r) for r in message.records),
        size=message.size,
        audit_public_key=message.audit_public_key,
        unreadable=(
            (message.unreadable.index, message.unreadable.reason[:1000])
            if message.HasField("unreadable")
            else None
        ),
    )


def approval_request_to_proto(request: ApprovalRequest) -> ProtoApprovalRequest:
    """Serialise an ``ApprovalRequest`` with the bytes its approver signs."""
    return ProtoApprovalRequest(
        spec=spec_to_proto(request.spec),
        spec_sha256=request.spec.digest(),
        code_version=request.code_version,
        dataset=request.dataset,
        level=request.level,
        dataset_version=request.dataset_version,
        outputs=list(request.outputs),
        learns=dict(request.learns),
        epsilon=format_rational(request.cost.epsilon),
        delta=format_rational(request.cost.delta),
        signing_payload=request.payload(),
    )


def approval_request_from_proto(message: ProtoApprovalRequest, party: str) -> ApprovalRequest:
    """Deserialise an ``ApprovalRequest`` for ``party``, refusing one whose signing bytes differ.

    The approver signs what it rebuilds from the fields it shows, so a node cannot slip other
    bytes under a summary.
    """
    from bund.parties.approvals import ApprovalRequest

    try:
        cost = Budget(parse_rational(message.epsilon), parse_rational(message.delta))
    except (InvalidInputError, ValueError):
        raise MalformedRequestError(
            "the approval request's budget is not an exact rational"
        ) from None
    request = ApprovalRequest(
        spec=spec_from_proto(message.spec),
        party=party,
        code_version=message.code_version,
        dataset=message.dataset,
        level=message.level,
        dataset_version=message.dataset_version,
        outputs=tuple(message.outputs),
        learns=dict(message.learns),
        cost=cost,
    )
    if request.spec.digest() != message.spec_sha256 or request.payload() != message.signing_payload:
        raise MalformedRequestError(
            "the node's approval request does not match its own summary; do not approve it"
        )
    return request


def checkpoint_to_proto(checkpoint: Checkpoint) -> ProtoCheckpoint:
    """Serialise a signed ``Checkpoint``."""
    return ProtoCheckpoint(
        party=checkpoint.party,
        tree_size=checkpoint.tree_size,
        root_hash=checkpoint.root_hash,
        timestamp=checkpoint.timestamp,
        signature=checkpoint.signature,
    )


def checkpoint_from_proto(message: ProtoCheckpoint) -> Checkpoint:
    """Deserialise a ``Checkpoint`` (its signature is judged by ``verify_checkpoint``)."""
    from bund.parties.audit import AuditFormatError, Checkpoint

    try:
        return Checkpoint(
            party=message.party,
            tree_size=message.tree_size,
            root_hash=message.root_hash,
            timestamp=message.timestamp,
            signature=message.signature,
        )
    except AuditFormatError as exc:
        raise MalformedRequestError(f"malformed checkpoint: {exc}") from None


def witnessed_head_to_proto(witnessed: WitnessedHead, seq: int = 0) -> ProtoWitnessedHead:
    """Serialise a ``WitnessedHead`` (with its position in the witness's store)."""
    return ProtoWitnessedHead(
        head=checkpoint_to_proto(witnessed.head),
        witness=witnessed.witness,
        received_at=witnessed.received_at,
        cosignature=witnessed.cosignature,
        seq=seq,
    )


def witnessed_head_from_proto(message: ProtoWitnessedHead) -> WitnessedHead:
    """Deserialise a ``WitnessedHead`` (its signatures are judged by the verifiers)."""
    from bund.parties.audit import AuditFormatError, WitnessedHead, WitnessError

    try:
        return WitnessedHead(
            head=checkpoint_from_proto(message.head),
            witness=message.witness,
            received_at=message.received_at,
            cosignature=message.cosignature,
        )
    except (AuditFormatError, WitnessError) as exc:
        raise MalformedRequestError(f"malformed witnessed head: {exc}") from None


def witness_reply_to_proto(reply: WitnessReply) -> ProtoWitnessReply:
    """Serialise a witness's ``WitnessReply``."""
    return ProtoWitnessReply(
        cosigned=witnessed_head_to_proto(reply.cosigned),
        head=checkpoint_to_proto(reply.head),
        audit_public_key=reply.audit_public_key,
    )


def witness_reply_from_proto(message: ProtoWitnessReply) -> WitnessReply:
    """Deserialise a ``WitnessReply`` (the presenter checks it: ``Witness.present``)."""
    from bund.parties.audit import WitnessReply

    return WitnessReply(
        cosigned=witnessed_head_from_proto(message.cosigned),
        head=checkpoint_from_proto(message.head),
        audit_public_key=message.audit_public_key,
    )


@dataclass(frozen=True)
class WitnessedPage:
    """A page of the heads a node witnessed: ``(seq, head)`` pairs and the largest seq it holds."""

    heads: tuple[tuple[int, WitnessedHead], ...]
    last_seq: int


def witnessed_page_to_proto(page: WitnessedPage) -> ProtoWitnessedPage:
    """Serialise a ``WitnessedPage``."""
    return ProtoWitnessedPage(
        heads=[witnessed_head_to_proto(head, seq) for seq, head in page.heads],
        last_seq=page.last_seq,
    )


def witnessed_page_from_proto(message: ProtoWitnessedPage) -> WitnessedPage:
    """Deserialise a ``WitnessedPage``."""
    return WitnessedPage(
        heads=tuple((m.seq, witnessed_head_from_proto(m)) for m in message.heads),
        last_seq=message.last_seq,
    )


# -- serving (a standing contract's requests) ---------------------------------------------------

#: The most applicants or ids one serving request may carry on the wire.
MAX_SERVING_IDS = 10_000
#: The most bank features one applicant may bring.
MAX_APPLICANT_FEATURES = 1024


def score_request_to_proto(contract_id: str, applicants: Sequence[Applicant]) -> ProtoScoreRequest:
    """Serialise a loan system's request to score ``applicants`` under a contract."""
    return ProtoScoreRequest(
        contract_id=contract_id,
        applicants=[ProtoApplicant(id=a.id, features=dict(a.features)) for a in applicants],
    )


def score_request_from_proto(message: ProtoScoreRequest) -> tuple[str, list[Applicant]]:
    """Deserialise a request to score; the contract id and the applicants, checked in form."""
    from bund.parties.serving.service import Applicant

    if len(message.applicants) > MAX_SERVING_IDS:
        raise MalformedRequestError(f"a request carries at most {MAX_SERVING_IDS} applicants")
    applicants = []
    for a in message.applicants:
        if len(a.features) > MAX_APPLICANT_FEATURES:
            raise MalformedRequestError(
                f"an applicant brings at most {MAX_APPLICANT_FEATURES} features"
            )
        if not all(math.isfinite(v) for v in a.features.values()):
            raise MalformedRequestError("a feature value is not a finite number")
        applicants.append(Applicant(a.id, dict(a.features)))
    return job_id(message.contract_id), applicants


def scored_to_proto(scored: Scored) -> ProtoScored:
    """Serialise the decisions on a request."""
    return ProtoScored(
        contract_id=scored.contract_id,
        nonce=scored.nonce,
        request_sha256=scored.request_sha256,
        decisions=[
            ProtoDecision(id=d.id, decision=d.decision, probability=d.probability)
            if d.probability is not None
            else ProtoDecision(id=d.id, decision=d.decision)
            for d in scored.decisions
        ],
    )


def scored_from_proto(message: ProtoScored) -> Scored:
    """Deserialise the decisions on a request."""
    from bund.parties.serving.service import Decision, Scored

    return Scored(
        contract_id=message.contract_id,
        nonce=message.nonce,
        request_sha256=message.request_sha256,
        decisions=tuple(
            Decision(d.id, d.decision, d.probability if d.HasField("probability") else None)
            for d in message.decisions
        ),
    )


def score_parts_request_to_proto(
    contract_id: str, nonce: bytes, ids: Sequence[str]
) -> ProtoScorePartsRequest:
    """Serialise the bank's request to a provider."""
    return ProtoScorePartsRequest(contract_id=contract_id, nonce=nonce, ids=list(ids))


def score_parts_request_from_proto(
    message: ProtoScorePartsRequest,
) -> tuple[str, bytes, list[str]]:
    """Deserialise the bank's request to a provider: contract id, nonce and ids (in form)."""
    if len(message.ids) > MAX_SERVING_IDS:
        raise MalformedRequestError(f"a request carries at most {MAX_SERVING_IDS} ids")
    return job_id(message.contract_id), message.nonce, list(message.ids)


def answer_to_proto(answer: Answer) -> ProtoAnswer:
    """Serialise a provider's masked answer."""
    return ProtoAnswer(request_sha256=answer.request_sha256, answer=answer.answer)


def answer_from_proto(message: ProtoAnswer) -> Answer:
    """Deserialise a provider's masked answer (its cells are checked by the bank)."""
    from bund.parties.serving.service import Answer

    return Answer(message.request_sha256, message.answer)


def request_proof_to_proto(proof: RequestProof) -> ProtoRequestProof:
    """Serialise a request's inclusion proof."""
    return ProtoRequestProof(
        contract_id=proof.contract_id,
        request_sha256=proof.request_sha256,
        seq=proof.seq,
        root_record=audit_record_to_proto(proof.root_record),
        path=list(proof.path),
    )


def request_proof_from_proto(message: ProtoRequestProof) -> RequestProof:
    """Deserialise a request's inclusion proof (checked by ``verify_request_proof``)."""
    from bund.parties.serving.proofs import RequestProof

    if len(message.path) > 64:
        raise MalformedRequestError("an audit path has at most 64 hashes")
    return RequestProof(
        contract_id=message.contract_id,
        request_sha256=message.request_sha256,
        seq=position(message.seq, "seq"),
        root_record=audit_record_from_proto(message.root_record),
        path=tuple(message.path),
    )
