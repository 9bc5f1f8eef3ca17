"""Typed mTLS client of a Bund node: operator calls, and the node-to-node calls of a job.

Every call returns domain objects. The channel verifies that the server's certificate was issued
by the federation CA *to the expected party* (the party name is the TLS target name), and presents
the caller's certificate: an operator credential for operator calls (``bund job ...``), or the
node's own certificate for node-to-node calls, which also carry the node's signed instance epoch
(``bund.parties.authz.Instance``) in the metadata of every call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import grpc
from google.protobuf.message import Message

from bund.compute.errors import BundError
from bund.parties import wire
from bund.parties.errors import (
    ANSWERED_BY_NODE,
    ConfigError,
    NotAuthorizedError,
    PeerUnavailableError,
)
from bund.parties.jobspec import JobSpec, Result
from bund.parties.lifecycle.states import JobState, JobStatus
from bund.parties.operator_file import TlsPaths, load_cli_config
from bund.parties.serving.errors import (
    ReplayedRequestError,
    ServingLimitError,
    ServingRefusedError,
)
from bund.parties.transport import JobAbortedError, PayloadTooLargeError, envelope_digest
from bund.v1 import audit_pb2, federation_pb2, job_pb2, serving_pb2

# An operator's call (``bund job status``) loads what is above and no more: the classes below
# come from modules that load the node's (cryptography, pydantic, the protocols), and a call
# that returns one has them loaded by ``wire``'s conversion.
if TYPE_CHECKING:
    from bund.parties.approvals import ApprovalRequest
    from bund.parties.audit import AuditRecord, Checkpoint, WitnessReply
    from bund.parties.config import NodeConfig
    from bund.parties.lifecycle.store import ResultInfo
    from bund.parties.serving.proofs import RequestProof
    from bund.parties.serving.service import Answer, Applicant, Scored

T = TypeVar("T", bound=Message)

_RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
#: Deadline of a wake-up to a requester: a push it misses, its fallback poll catches up.
_NOTIFY_TIMEOUT_S = 5.0


class RemoteError(BundError):
    """A node answered a call with an error status; ``code`` and the node's message are kept."""

    def __init__(self, party: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{party} answered {code.name}: {details}")
        self.party = party
        self.code = code
        self.details = details

    @property
    def not_found(self) -> bool:
        """Whether the node answered NOT_FOUND (for example a job not proposed to it yet)."""
        return self.code is grpc.StatusCode.NOT_FOUND


#: A serving refusal's class by the status the node answered it with.
_SERVING_REFUSALS: dict[grpc.StatusCode, type[BundError]] = {
    grpc.StatusCode.ALREADY_EXISTS: ReplayedRequestError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ServingLimitError,
    grpc.StatusCode.FAILED_PRECONDITION: ServingRefusedError,
    grpc.StatusCode.PERMISSION_DENIED: NotAuthorizedError,
}


def _serving_refusal(exc: RemoteError) -> BundError:
    """A node's refusal of a serving request, as the class it was raised as there."""
    kind = _SERVING_REFUSALS.get(exc.code)
    return exc if kind is None else kind(f"{exc.party}: {exc.details}")


def _answered_by_node(exc: grpc.RpcError) -> bool:
    """Whether the error is one a node answered itself (not a transport failure)."""
    trailing: tuple[tuple[str, str], ...] = (
        tuple(exc.trailing_metadata() or ()) if isinstance(exc, grpc.Call) else ()
    )
    return any(key == ANSWERED_BY_NODE for key, _ in trailing)


#: What gRPC's error details say, and the line that tells the operator what to do (``{who}`` is
#: "PARTY at ADDRESS"): the first match wins.
_TRANSPORT_FAILURES: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("CERTIFICATE_VERIFY_FAILED",),
        "{who}: the node's certificate is not from your federation CA; check [tls] ca",
    ),
    (
        ("Hostname Verification", "No match found for server name", "Peer name"),
        (
            "{who}: the node there is not {party}'s (its certificate names another party); "
            "check the address"
        ),
    ),
    (("Connection refused",), "{who} does not answer: is its node running? (connection refused)"),
    (
        ("errors resolving", "DNS resolution failed", "Domain name not found"),
        "{who}: the host name does not resolve; check the address",
    ),
    (
        ("No route to host", "Network is unreachable", "Connection timed out"),
        "{who} cannot be reached: check the address, the network and its firewall",
    ),
    (
        ("Socket closed", "Connection reset", "handshake"),
        (
            "{who} closed the connection: does it accept your certificate? (check [tls] cert "
            "and key: an operator credential of {party}, or a node certificate on the roster)"
        ),
    ),
)


def transport_failure(
    party: str, address: str, code: grpc.StatusCode, details: str, timeout: float
) -> str:
    """One line that says why ``party``'s node at ``address`` gave no answer, and what to do.

    Read from gRPC's error details: a certificate from another CA, a node of another party at
    the address, connection refused (the node is down), a name that does not resolve, a host
    that cannot be reached, a connection closed in the handshake, or no answer in time.
    """
    who = f"{party} at {address}"
    for needles, line in _TRANSPORT_FAILURES:
        if any(n in details for n in needles):
            return line.format(who=who, party=party)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return (
            f"{who} did not answer within {timeout:g} s: is its node running and reachable? "
            "(DEADLINE_EXCEEDED)"
        )
    return f"{who} does not answer: is its node running? ({code.name}: {details})"


def channel_options(max_message_bytes: int, target_name: str) -> list[tuple[str, int | str]]:
    """GRPC channel options: message limits, expected server identity, keepalive."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.ssl_target_name_override", target_name),
        ("grpc.default_authority", target_name),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]


class NodeClient:
    """Calls to one node over mTLS, with the credential in ``tls``.

    Args:
        address: ``HOST:PORT`` of the node.
        party: The party whose node it must be (its certificate's name).
        tls: The federation CA, and the caller's certificate and key.
        max_message_bytes: The gRPC message limit.
        timeout: The deadline of each call, in seconds.
        instance: A node's signed instance epoch, sent with every call (node-to-node calls).
    """

    def __init__(
        self,
        address: str,
        party: str,
        tls: TlsPaths,
        max_message_bytes: int = 8 << 20,
        timeout: float = 60.0,
        instance: bytes | None = None,
    ) -> None:
        creds = grpc.ssl_channel_credentials(
            root_certificates=tls.ca.read_bytes(),
            private_key=tls.key.read_bytes(),
            certificate_chain=tls.cert.read_bytes(),
        )
        self.address = address
        self.party = party
        self.timeout = timeout
        self._metadata: tuple[tuple[str, bytes], ...] | None = None
        if instance is not None:  # a node's call to a peer: the node has authz loaded
            from bund.parties.authz import INSTANCE_METADATA

            self._metadata = ((INSTANCE_METADATA, instance),)
        self._channel = grpc.secure_channel(
            address, creds, options=channel_options(max_message_bytes, party)
        )

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self,
        service: str,
        method: str,
        request: Message,
        response: type[T],
        timeout: float | None = None,
    ) -> T:
        rpc: Callable[..., bytes] = self._channel.unary_unary(
            f"/bund.v1.{service}/{method}",
            request_serializer=None,
            response_deserializer=None,
        )
        try:
            raw = rpc(
                request.SerializeToString(),
                timeout=timeout or self.timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise self._error(exc, timeout or self.timeout) from None
        out = response()
        out.ParseFromString(raw)
        return out

    def _error(self, exc: grpc.RpcError, timeout: float) -> BundError:
        """The Bund error for a failed call: unreachable, or what the node answered."""
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (exc.details() if isinstance(exc, grpc.Call) else str(exc)) or ""
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            if _answered_by_node(exc):  # the node is up but cannot act now (audit store)
                return PeerUnavailableError(f"{self.party} answered {code.name}: {details}")
            return PeerUnavailableError(
                transport_failure(self.party, self.address, code, details, timeout)
            )
        return RemoteError(self.party, code, details)

    # -- operator calls -------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        """Submit a job to this node (its own operator only); returns the job id."""
        r = self._call(
            "Jobs",
            "SubmitJob",
            job_pb2.SubmitJobRequest(spec=wire.spec_to_proto(spec)),
            job_pb2.SubmitJobResponse,
        )
        return r.job_id

    def status(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """A job's status at this node (also a participant's heartbeat)."""
        r = self._call(
            "Jobs",
            "GetJobStatus",
            job_pb2.GetJobStatusRequest(job_id=job_id),
            job_pb2.GetJobStatusResponse,
            timeout,
        )
        return wire.status_from_proto(r.status)

    def watch(self, job_id: str, timeout: float | None = None) -> Iterator[JobStatus]:
        """A job's status at this node now, then each time it changes there (pushed).

        The stream ends after a terminal status, after the node's longest watch, or when the
        node stops (open it again: its first status is the current one), and at the latest
        after ``timeout`` seconds (the client's deadline; the call's default when None). A
        stream that ends at the deadline ends quietly; errors are raised as by every call
        (``RemoteError`` RESOURCE_EXHAUSTED when the caller holds too many watches).
        """
        rpc = self._channel.unary_stream(
            "/bund.v1.Jobs/WatchJob", request_serializer=None, response_deserializer=None
        )
        limit = max(self.timeout if timeout is None else timeout, 0.001)
        stream = rpc(
            job_pb2.WatchJobRequest(job_id=job_id).SerializeToString(),
            timeout=limit,
            metadata=self._metadata,
        )
        try:
            for raw in stream:
                out = job_pb2.WatchJobResponse()
                out.ParseFromString(raw)
                yield wire.status_from_proto(out.status)
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                return
            raise self._error(exc, limit) from None
        finally:
            stream.cancel()  # type: ignore[no-untyped-call]  # a follower that stopped reading

    def result(self, job_id: str) -> Result:
        """A job's result held at this node, every artifact read whole (in pages)."""
        info = self.result_info(job_id)
        return Result(
            info.summary,
            {
                name: b"".join(self.artifact_pages(job_id, name, size))
                for name, size in info.artifact_sizes.items()
            },
        )

    def result_info(self, job_id: str) -> ResultInfo:
        """A job's result held at this node: its summary and each artifact's size, no bytes."""
        r = self._call(
            "Jobs",
            "GetJobResult",
            job_pb2.GetJobResultRequest(job_id=job_id),
            job_pb2.GetJobResultResponse,
        )
        return wire.result_from_proto(r)

    def artifact_pages(self, job_id: str, name: str, size: int) -> Iterator[bytes]:
        """One artifact of ``size`` bytes (from :meth:`result_info`), page by page, in order.

        A large artifact (PSI's ``intersection.csv`` at 10^8 ids) is never whole in memory when
        the caller writes each page out as it comes.

        Raises:
            RemoteError: DATA_LOSS if the artifact's size changed while it was read.
        """
        offset = 0
        while offset < size:
            page = self._call(
                "Jobs",
                "ReadArtifact",
                job_pb2.ReadArtifactRequest(job_id=job_id, name=name, offset=offset),
                job_pb2.ReadArtifactResponse,
            )
            if not page.data or page.total_size != size:
                raise RemoteError(self.party, grpc.StatusCode.DATA_LOSS, f"artifact {name} changed")
            offset += len(page.data)
            yield page.data

    def list_jobs(self, limit: int = 50, states: Collection[JobState] = ()) -> list[JobStatus]:
        """The newest jobs at this node (only those in ``states``, when given)."""
        request = job_pb2.ListJobsRequest(
            limit=limit, states=[wire.state_to_proto(s) for s in states]
        )
        r = self._call("Jobs", "ListJobs", request, job_pb2.ListJobsResponse)
        return [wire.status_from_proto(s) for s in r.jobs]

    def node_info(self, timeout: float | None = None) -> wire.NodeInfo:
        """Who this node says it is, and the instance epoch it runs."""
        r = self._call(
            "Federation",
            "GetNodeInfo",
            federation_pb2.GetNodeInfoRequest(),
            federation_pb2.GetNodeInfoResponse,
            timeout,
        )
        return wire.node_info_from_proto(r)

    def read_audit(self, start: int = 0, limit: int = 0) -> wire.AuditPage:
        """A page of this node's signed audit log (operator or regulator only)."""
        r = self._call(
            "Audit",
            "ReadAuditLog",
            audit_pb2.ReadAuditLogRequest(start=start, limit=limit),
            audit_pb2.ReadAuditLogResponse,
        )
        return wire.audit_page_from_proto(r)

    def job_log(self, job_id: str) -> list[AuditRecord]:
        """This node's audit records of one job, in log order (its own operator only)."""
        records: list[AuditRecord] = []
        start = 0
        while True:
            r = self._call(
                "Jobs",
                "GetJobLog",
                job_pb2.GetJobLogRequest(job_id=job_id, start=start),
                job_pb2.GetJobLogResponse,
            )
            records += [wire.audit_record_from_proto(x) for x in r.records]
            if r.next_index == 0:
                return records
            if r.next_index <= start:  # a node that pages backwards would never end
                raise RemoteError(self.party, grpc.StatusCode.DATA_LOSS, "job log pages went back")
            start = r.next_index

    def approval_request(self, job_id: str) -> ApprovalRequest:
        """What this node's approver is asked to sign for a job (its own operator only)."""
        r = self._call(
            "Jobs",
            "GetApprovalRequest",
            job_pb2.GetApprovalRequestRequest(job_id=job_id),
            job_pb2.ApprovalRequest,
        )
        return wire.approval_request_from_proto(r, self.party)

    def approve(self, job_id: str, signature: bytes) -> None:
        """Hand the approver's signature to this node."""
        self._call(
            "Jobs",
            "ApproveJob",
            job_pb2.ApproveJobRequest(job_id=job_id, signature=signature),
            job_pb2.ApproveJobResponse,
        )

    def deny(self, job_id: str, reason: str) -> None:
        """Refuse a job at this node."""
        self._call(
            "Jobs",
            "DenyJob",
            job_pb2.DenyJobRequest(job_id=job_id, reason=reason),
            job_pb2.DenyJobResponse,
        )

    def checkpoint(self) -> Checkpoint:
        """A freshly signed checkpoint of this node's audit log (operator or regulator only)."""
        r = self._call(
            "Audit", "GetCheckpoint", audit_pb2.GetCheckpointRequest(), audit_pb2.Checkpoint
        )
        return wire.checkpoint_from_proto(r)

    def witnessed_heads(self, after: int = 0, limit: int = 0) -> wire.WitnessedPage:
        """Heads this node witnessed of other parties, after ``after`` (operator or regulator)."""
        r = self._call(
            "Audit",
            "GetWitnessedHeads",
            audit_pb2.GetWitnessedHeadsRequest(after=after, limit=limit),
            audit_pb2.GetWitnessedHeadsResponse,
        )
        return wire.witnessed_page_from_proto(r)

    # -- a standing contract (serving) -----------------------------------------------------

    def score(
        self, contract_id: str, applicants: Sequence[Applicant], timeout: float | None = None
    ) -> Scored:
        """Score ``applicants`` under a serving contract (the bank's operator, at its node).

        Raises:
            ServingRefusedError: The contract's terms or a provider refused (the message says
                which; ``ServingLimitError`` for a limit, ``ReplayedRequestError`` for a nonce).
            NotAuthorizedError: This operator may not score under the contract.
            RemoteError: Any other refusal, with the node's status and message.
        """
        request = wire.score_request_to_proto(contract_id, applicants)
        try:
            r = self._call("Serving", "Score", request, serving_pb2.ScoreResponse, timeout)
        except RemoteError as exc:
            raise _serving_refusal(exc) from None
        return wire.scored_from_proto(r)

    def prove_request(self, contract_id: str, request_sha256: bytes) -> RequestProof:
        """The node's proof that it took a request, under a root it signed.

        For the node's operator or a regulator; check it with
        ``bund.parties.serving.proofs.verify_request_proof``.
        """
        r = self._call(
            "Serving",
            "ProveRequest",
            serving_pb2.ProveRequestRequest(contract_id=contract_id, request_sha256=request_sha256),
            serving_pb2.RequestProof,
        )
        return wire.request_proof_from_proto(r)

    # -- node-to-node calls ---------------------------------------------------------------

    def score_parts(
        self, contract_id: str, nonce: bytes, ids: Sequence[str], timeout: float | None = None
    ) -> Answer:
        """A provider's masked answer to the bank's request (the bank's node only)."""
        request = wire.score_parts_request_to_proto(contract_id, nonce, ids)
        try:
            r = self._call(
                "Serving", "ScoreParts", request, serving_pb2.ScorePartsResponse, timeout
            )
        except RemoteError as exc:
            raise _serving_refusal(exc) from None
        return wire.answer_from_proto(r)

    def propose(self, spec: JobSpec) -> tuple[bool, str]:
        """Ask this node to accept a job; an error status counts as a refusal with its message."""
        try:
            r = self._call(
                "Jobs",
                "ProposeJob",
                job_pb2.ProposeJobRequest(spec=wire.spec_to_proto(spec)),
                job_pb2.ProposeJobResponse,
            )
        except RemoteError as exc:
            return False, exc.details
        return r.accepted, r.reason

    def start(self, job_id: str) -> None:
        """Tell this node to run its role."""
        self._call(
            "Jobs", "StartJob", job_pb2.StartJobRequest(job_id=job_id), job_pb2.StartJobResponse
        )

    def abort(self, job_id: str, reason: str) -> None:
        """Tell this node the job is off."""
        self._call(
            "Jobs",
            "AbortJob",
            job_pb2.AbortJobRequest(job_id=job_id, reason=reason),
            job_pb2.AbortJobResponse,
        )

    def resume(self, job_id: str) -> None:
        """Resume an interrupted job (as the operator: here and at every participant)."""
        self._call(
            "Jobs",
            "ResumeJob",
            job_pb2.ResumeJobRequest(job_id=job_id),
            job_pb2.ResumeJobResponse,
        )

    def notify(self, job_id: str) -> None:
        """Tell this node (the job's requester) that this node's answer to the job changed."""
        self._call(
            "Jobs",
            "NotifyJob",
            job_pb2.NotifyJobRequest(job_id=job_id),
            job_pb2.NotifyJobResponse,
            _NOTIFY_TIMEOUT_S,
        )

    def cancel(self, job_id: str, reason: str = "") -> None:
        """As this node's operator: cancel a job here and at every participant."""
        self.abort(job_id, reason)

    def deliver(self, job_id: str, tag: str, payload: bytes, timeout: float | None = None) -> bool:
        """Put a message into this node's mailbox; True when it was new there."""
        request = job_pb2.DeliverRequest(
            job_id=job_id, tag=tag, payload=payload, sha256=envelope_digest(job_id, tag, payload)
        )
        r = self._call("Jobs", "Deliver", request, job_pb2.DeliverResponse, timeout)
        return not r.duplicate

    def witness(
        self, head: Checkpoint, audit_public_key: bytes, timeout: float | None = None
    ) -> WitnessReply:
        """Present this party's own tree head to this node as a witness; get its reply."""
        request = audit_pb2.WitnessRequest(
            head=wire.checkpoint_to_proto(head), audit_public_key=audit_public_key
        )
        r = self._call("Audit", "Witness", request, audit_pb2.WitnessResponse, timeout)
        return wire.witness_reply_from_proto(r)


@dataclass
class PeerClients:
    """This node's clients to its peers: the ``PeerControl`` and ``Transport`` of the job manager.

    Delivery retries only on UNAVAILABLE, for up to ``peer_silence_s`` (after which the job is
    interrupted anyway): the receiver's mailbox is idempotent on the payload's digest, so a
    retried message is a no-op there. Every call presents the node's certificate and, when
    given, its signed instance epoch ``instance``.
    """

    config: NodeConfig
    instance: bytes | None = None
    backoff_s: float = 0.2
    max_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        self._clients: dict[tuple[str, str], NodeClient] = {}

    def client(self, party: str) -> NodeClient:
        """A (cached) client to ``party``'s node at its current address."""
        address = self.config.peer_address(party)
        key = (party, address)
        if key not in self._clients:
            self._clients[key] = NodeClient(
                address,
                party,
                self.config.tls,
                self.config.max_message_bytes,
                instance=self.instance,
            )
        return self._clients[key]

    def propose(self, to: str, spec: JobSpec) -> tuple[bool, str]:
        """See ``NodeClient.propose``."""
        return self.client(to).propose(spec)

    def start(self, to: str, job_id: str) -> None:
        """See ``NodeClient.start``."""
        self.client(to).start(job_id)

    def abort(self, to: str, job_id: str, reason: str) -> None:
        """See ``NodeClient.abort``."""
        self.client(to).abort(job_id, reason)

    def status(self, to: str, job_id: str, timeout: float | None = None) -> JobStatus:
        """See ``NodeClient.status``."""
        return self.client(to).status(job_id, timeout)

    def resume(self, to: str, job_id: str) -> None:
        """See ``NodeClient.resume``."""
        self.client(to).resume(job_id)

    def score_parts(
        self, to: str, contract_id: str, nonce: bytes, ids: Sequence[str], timeout: float
    ) -> Answer:
        """See ``NodeClient.score_parts``: once, never retried (a nonce is good once)."""
        return self.client(to).score_parts(contract_id, nonce, ids, timeout)

    def notify(self, to: str, job_id: str) -> None:
        """See ``NodeClient.notify``."""
        self.client(to).notify(job_id)

    def deliver(self, job_id: str, to: str, tag: str, payload: bytes) -> None:
        """Deliver a job message to ``to``, retrying while it is unreachable."""
        limit = self.config.max_message_bytes - 4096
        if len(payload) > limit:
            raise PayloadTooLargeError(
                f"a {len(payload)}-byte message exceeds the {limit}-byte limit; "
                "the protocol must chunk it"
            )
        deadline = time.monotonic() + self.config.peer_silence_s
        delay = self.backoff_s
        while True:
            try:
                # A frozen peer accepts the connection and never answers: bound each attempt.
                self.client(to).deliver(job_id, tag, payload, self.config.peer_silence_s)
                return
            except RemoteError as exc:
                if exc.code is grpc.StatusCode.ABORTED:  # the job ended there: end it here too
                    raise JobAbortedError(str(exc)) from None
                raise
            except PeerUnavailableError:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(2 * delay, self.max_backoff_s)

    def close(self) -> None:
        """Close every channel."""
        for c in self._clients.values():
            c.close()
        self._clients.clear()


def open_operator_client(path: Path, timeout: float = 30.0) -> NodeClient:
    """A client to a party's own node with the operator credential that ``path`` names.

    What a bank's loan system uses to score applicants under a serving contract, given an
    ``operator.toml`` from ``bund operator issue`` (or ``node.toml`` on the node's host)::

        with open_operator_client(Path("loan-system/operator.toml")) as node:
            scored = node.score(contract_id, [Applicant("91310000A", {"revenue": 1.2e6})])
        for decision in scored.decisions:
            ...  # decision.id, decision.decision ("approve", "decline", "refer"), probability

    Keep ``scored.request_sha256``: a regulator checks it against each party's signed root.

    Raises:
        ConfigError: The file is invalid, or the node's port file is missing.
    """
    config, _ = load_cli_config(path)
    address = config.node
    if address is None:
        assert config.port_file is not None  # load_cli_config checks one of them is set
        try:
            address = f"127.0.0.1:{config.port_file.read_text().strip()}"
        except FileNotFoundError:
            raise ConfigError(
                f"the node is not running ({config.port_file} is missing); start it first"
            ) from None
    return NodeClient(address, config.party, config.tls, config.max_message_bytes, timeout)
