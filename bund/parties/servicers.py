"""Thin gRPC servicers: parse -> call the domain -> serialise, inside one error translator.

Requests arrive as raw bytes and are parsed here (``wire.parse``), so garbage gets
INVALID_ARGUMENT rather than a transport-level failure. The caller's identity comes only from the
verified TLS certificate, and every call passes the node's one :class:`~bund.parties.authz.Gate`
first: who the caller is (an operator of this party, or a peer on the federation's roster, not
revoked), whether the RPC allows it (each :class:`Method` declares its :class:`Access`), and for a
peer acting on a job, that it takes part in the job and is the run of its node that this node
works with. Each call is recorded in the audit log by method, caller and status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from bund.parties import wire
from bund.parties.audit import AuditRecord, Checkpoint, Witness
from bund.parties.authz import INSTANCE_METADATA, Access, Caller, Gate
from bund.parties.errors import NotAuthorizedError, rpc_error_translator
from bund.parties.identity import PartyIdentity
from bund.parties.jobs import AuditSink, JobSpec
from bund.parties.lifecycle.events import Event
from bund.parties.lifecycle.manager import JobManager
from bund.parties.lifecycle.store import JobStore
from bund.parties.rpc_audit import RefusalTally
from bund.parties.serving.service import ServingService
from bund.v1 import audit_pb2, federation_pb2, job_pb2, serving_pb2

log = logging.getLogger("bund.rpc")

#: Largest artifact page per ReadArtifact call: far below any message limit.
ARTIFACT_PAGE = 1 << 20

#: RPCs recorded in the audit log only when they fail (polled often, change nothing). A witness
#: exchange is kept in the witness store instead: recorded, it would grow an idle log each time.
_QUIET = frozenset({"GetJobStatus", "ListJobs", "GetNodeInfo", "Witness"})


def client_certificate(context: grpc.ServicerContext) -> bytes | None:
    """The caller's certificate (PEM), as TLS verified it against one of the node's CAs."""
    pems: object = context.auth_context().get("x509_pem_cert") or []
    return bytes(pems[0]) if isinstance(pems, list) and len(pems) == 1 else None


def instance_of(context: grpc.ServicerContext) -> bytes | None:
    """The caller's signed instance epoch from the call's metadata, if it sent one."""
    for key, value in context.invocation_metadata() or ():
        if key == INSTANCE_METADATA and isinstance(value, bytes):
            return value
    return None


Handler = Callable[[Any, PartyIdentity], Message]


@dataclass(frozen=True)
class Method:
    """One RPC: its request type, the domain call behind it, and who may call it.

    Attributes:
        request: The request message type.
        call: The domain call; it gets the caller as a :class:`~bund.parties.authz.Caller`.
        access: Who may call it.
        job: For a call about a job, the job's spec from the request (a peer must take part).
        reads_only: A peer may call it without its instance epoch (it changes nothing).
        quiet: A call that succeeds needs no ``rpc`` record: the domain records it itself,
            before it acts (a request to a standing contract).
    """

    request: type[Message]
    call: Handler
    access: Access = Access.ANY
    job: Callable[[Any], JobSpec] | None = None
    reads_only: bool = False
    quiet: bool = False


def make_generic_handler(
    service: str,
    methods: Mapping[str, Method],
    audit: AuditSink,
    gate: Gate,
    refusals: RefusalTally,
) -> grpc.GenericRpcHandler[bytes, bytes]:
    """A handler for ``service`` that parses, authorises, translates errors and audits.

    A call that succeeds is recorded one by one (except the quiet reads); a refused or failed
    one is counted in ``refusals``, which records the counts per interval, so a flood of bad
    calls costs bounded disk.
    """

    def wrap(name: str, method: Method) -> grpc.RpcMethodHandler[bytes, bytes]:
        def behavior(raw: bytes, context: grpc.ServicerContext) -> bytes:
            who: Caller | None = None
            code = grpc.StatusCode.OK
            started = time.monotonic()
            pem = client_certificate(context)
            try:
                with rpc_error_translator(context, f"{service}/{name}"):
                    who = gate.identify(pem)
                    request = wire.parse(method.request, raw)
                    spec = method.job(request) if method.job and who.operator is None else None
                    instance = instance_of(context)
                    gate.authorise(who, method.access, spec, instance, method.reads_only)
                    return method.call(request, who).SerializeToString()
            except Exception:
                code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
                raise
            finally:
                if code is not grpc.StatusCode.OK:
                    caller = who.name if who else gate.describe(pem)
                    refusals.note(caller, f"{service}/{name}", code.name)
                elif name not in _QUIET and not method.quiet:
                    try:
                        audit.append(
                            Event.RPC,
                            "",
                            {
                                "method": f"{service}/{name}",
                                "caller": who.name if who else gate.describe(pem),
                                **({"operator": who.operator} if who and who.operator else {}),
                                "code": code.name,
                                "request_bytes": len(raw),
                                "ms": round((time.monotonic() - started) * 1000, 1),
                            },
                        )
                    except Exception:
                        log.exception("could not audit %s/%s", service, name)

        return grpc.unary_unary_rpc_method_handler(behavior)

    return grpc.method_handlers_generic_handler(
        service, {name: wrap(name, m) for name, m in methods.items()}
    )


def job_methods(manager: JobManager, default_list_limit: int = 50) -> dict[str, Method]:
    """The Jobs service over a ``JobManager``."""

    def job(r: Any) -> JobSpec:
        return manager.store.get(wire.job_id(r.job_id)).spec

    def proposed(r: job_pb2.ProposeJobRequest) -> JobSpec:
        return wire.spec_from_proto(r.spec)

    def submit(r: job_pb2.SubmitJobRequest, who: PartyIdentity) -> Message:
        return job_pb2.SubmitJobResponse(
            job_id=manager.submit(wire.spec_from_proto(r.spec), who.name)
        )

    def status(r: job_pb2.GetJobStatusRequest, who: PartyIdentity) -> Message:
        return job_pb2.GetJobStatusResponse(
            status=wire.status_to_proto(manager.status(wire.job_id(r.job_id), who.name))
        )

    def result(r: job_pb2.GetJobResultRequest, who: PartyIdentity) -> Message:
        job_id = wire.job_id(r.job_id)
        return wire.result_to_proto(job_id, manager.result(job_id, who.name))

    def read_artifact(r: job_pb2.ReadArtifactRequest, who: PartyIdentity) -> Message:
        limit = min(r.limit or ARTIFACT_PAGE, ARTIFACT_PAGE)
        offset = wire.position(r.offset, "offset")
        data, total = manager.read_artifact(wire.job_id(r.job_id), who.name, r.name, offset, limit)
        return job_pb2.ReadArtifactResponse(data=data, total_size=total)

    def list_jobs(r: job_pb2.ListJobsRequest, who: PartyIdentity) -> Message:
        states = frozenset(wire.state_from_proto(s) for s in r.states) or None
        jobs = manager.list(who.name, r.limit or default_list_limit, states)
        return job_pb2.ListJobsResponse(jobs=[wire.status_to_proto(s) for s in jobs])

    def propose(r: job_pb2.ProposeJobRequest, who: PartyIdentity) -> Message:
        accepted, reason = manager.propose(wire.spec_from_proto(r.spec), who.name, who.role)
        return job_pb2.ProposeJobResponse(accepted=accepted, reason=reason)

    def start(r: job_pb2.StartJobRequest, who: PartyIdentity) -> Message:
        manager.start(wire.job_id(r.job_id), who.name)
        return job_pb2.StartJobResponse()

    def abort(r: job_pb2.AbortJobRequest, who: PartyIdentity) -> Message:
        manager.abort(wire.job_id(r.job_id), who.name, r.reason[:1000])
        return job_pb2.AbortJobResponse()

    def resume(r: job_pb2.ResumeJobRequest, who: PartyIdentity) -> Message:
        manager.resume_job(wire.job_id(r.job_id), who.name)
        return job_pb2.ResumeJobResponse()

    def deliver(r: job_pb2.DeliverRequest, who: PartyIdentity) -> Message:
        fresh = manager.deliver(
            wire.job_id(r.job_id), who.name, r.tag, r.payload, r.sha256, who.role
        )
        return job_pb2.DeliverResponse(duplicate=not fresh)

    def approval_request(r: job_pb2.GetApprovalRequestRequest, who: PartyIdentity) -> Message:
        return wire.approval_request_to_proto(
            manager.approval_request(wire.job_id(r.job_id), who.name)
        )

    def approve(r: job_pb2.ApproveJobRequest, who: PartyIdentity) -> Message:
        manager.approve(wire.job_id(r.job_id), who.name, r.signature)
        return job_pb2.ApproveJobResponse()

    def deny(r: job_pb2.DenyJobRequest, who: PartyIdentity) -> Message:
        manager.deny(wire.job_id(r.job_id), who.name, r.reason[:1000])
        return job_pb2.DenyJobResponse()

    op, peer, either = Access.OPERATOR, Access.PEER, Access.OPERATOR_OR_PEER
    return {
        "GetApprovalRequest": Method(job_pb2.GetApprovalRequestRequest, approval_request, op),
        "ApproveJob": Method(job_pb2.ApproveJobRequest, approve, op),
        "DenyJob": Method(job_pb2.DenyJobRequest, deny, op),
        "SubmitJob": Method(job_pb2.SubmitJobRequest, submit, op),
        "GetJobStatus": Method(job_pb2.GetJobStatusRequest, status, either, job, reads_only=True),
        "GetJobResult": Method(job_pb2.GetJobResultRequest, result, op),
        "ReadArtifact": Method(job_pb2.ReadArtifactRequest, read_artifact, op),
        "ListJobs": Method(job_pb2.ListJobsRequest, list_jobs, op),
        "ProposeJob": Method(job_pb2.ProposeJobRequest, propose, peer, proposed),
        "StartJob": Method(job_pb2.StartJobRequest, start, peer, job),
        "AbortJob": Method(job_pb2.AbortJobRequest, abort, either, job),
        "ResumeJob": Method(job_pb2.ResumeJobRequest, resume, either, job),
        "Deliver": Method(job_pb2.DeliverRequest, deliver, peer, job),
    }


def job_log_methods(
    manager: JobManager, read: Callable[[str, int], tuple[Sequence[AuditRecord], int]]
) -> dict[str, Method]:
    """The Jobs service's ``GetJobLog``: one job's audit records, to this node's operators only.

    ``read(job_id, start)`` returns a page of the job's records and where the next begins
    (``bund.parties.oplog.job_records``); a job unknown here is NOT_FOUND.
    """

    def job_log(r: job_pb2.GetJobLogRequest, who: PartyIdentity) -> Message:
        job_id = wire.job_id(r.job_id)
        manager.store.get(job_id)
        records, following = read(job_id, wire.position(r.start, "start"))
        return job_pb2.GetJobLogResponse(
            records=[wire.audit_record_to_proto(x) for x in records], next_index=following
        )

    return {"GetJobLog": Method(job_pb2.GetJobLogRequest, job_log, Access.OPERATOR)}


def federation_methods(info: wire.NodeInfo) -> dict[str, Method]:
    """The Federation service: who this node is."""

    def get_info(r: federation_pb2.GetNodeInfoRequest, who: PartyIdentity) -> Message:
        return wire.node_info_to_proto(info)

    return {"GetNodeInfo": Method(federation_pb2.GetNodeInfoRequest, get_info, Access.ANY)}


def audit_methods(
    party: str,
    read: Callable[[int, int], wire.AuditPage],
    checkpoint: Callable[[], Checkpoint],
    page_size: int = 1000,
    witness: Witness | None = None,
    peers: Callable[[], Collection[str]] = frozenset,
) -> dict[str, Method]:
    """The Audit service: the signed log, and witness cosigning.

    This node's operator and regulators may read the log and the heads this node witnessed;
    the parties in ``peers`` present their own tree heads to ``witness``.
    """

    def allowed(who: PartyIdentity) -> None:
        if who.name != party and who.role != "regulator":
            raise NotAuthorizedError(
                "only this node's operator or a regulator may read its audit log"
            )

    def get_checkpoint(r: audit_pb2.GetCheckpointRequest, who: PartyIdentity) -> Message:
        allowed(who)
        return wire.checkpoint_to_proto(checkpoint())

    def read_log(r: audit_pb2.ReadAuditLogRequest, who: PartyIdentity) -> Message:
        allowed(who)
        limit = min(r.limit or page_size, page_size)
        return wire.audit_page_to_proto(read(wire.position(r.start, "start"), limit))

    def witness_head(r: audit_pb2.WitnessRequest, who: PartyIdentity) -> Message:
        head = wire.checkpoint_from_proto(r.head)
        if witness is None or head.party != who.name or who.name not in peers():
            raise NotAuthorizedError(
                f"{party} witnesses the tree heads of its peers only, each presented by its own "
                "party: name the party in [peers], the peers file or the policy's counterparties"
            )
        return wire.witness_reply_to_proto(witness.answer(head, r.audit_public_key, who.name))

    def witnessed_heads(r: audit_pb2.GetWitnessedHeadsRequest, who: PartyIdentity) -> Message:
        allowed(who)
        if witness is None:
            return audit_pb2.GetWitnessedHeadsResponse()
        limit = min(r.limit or page_size, page_size)
        heads, last = witness.held(wire.position(r.after, "after"), limit)
        return wire.witnessed_page_to_proto(wire.WitnessedPage(tuple(heads), last))

    auditors = Access.OPERATOR_OR_REGULATOR
    return {
        "ReadAuditLog": Method(audit_pb2.ReadAuditLogRequest, read_log, auditors),
        "GetCheckpoint": Method(audit_pb2.GetCheckpointRequest, get_checkpoint, auditors),
        "Witness": Method(audit_pb2.WitnessRequest, witness_head, Access.PEER),
        "GetWitnessedHeads": Method(audit_pb2.GetWitnessedHeadsRequest, witnessed_heads, auditors),
    }


def serving_methods(serving: ServingService, jobs: JobStore) -> dict[str, Method]:
    """The Serving service: a loan system's Score, a bank's ScoreParts, and request proofs.

    A request is recorded by the serving side itself before its answer leaves (and a refused
    one with why), so Score and ScoreParts add no ``rpc`` record of their own.
    """

    def contract(r: serving_pb2.ScorePartsRequest) -> JobSpec:
        return jobs.get(wire.job_id(r.contract_id)).spec

    def score(r: serving_pb2.ScoreRequest, who: PartyIdentity) -> Message:
        contract_id, applicants = wire.score_request_from_proto(r)
        operator = who.operator if isinstance(who, Caller) and who.operator else who.name
        return wire.scored_to_proto(serving.score(contract_id, applicants, operator))

    def score_parts(r: serving_pb2.ScorePartsRequest, who: PartyIdentity) -> Message:
        contract_id, nonce, ids = wire.score_parts_request_from_proto(r)
        return wire.answer_to_proto(serving.score_parts(contract_id, nonce, ids, who.name))

    def prove(r: serving_pb2.ProveRequestRequest, who: PartyIdentity) -> Message:
        proof = serving.prove(wire.job_id(r.contract_id), r.request_sha256)
        return wire.request_proof_to_proto(proof)

    return {
        "Score": Method(serving_pb2.ScoreRequest, score, Access.OPERATOR, quiet=True),
        "ScoreParts": Method(
            serving_pb2.ScorePartsRequest, score_parts, Access.PEER, contract, quiet=True
        ),
        "ProveRequest": Method(
            serving_pb2.ProveRequestRequest, prove, Access.OPERATOR_OR_REGULATOR
        ),
    }
