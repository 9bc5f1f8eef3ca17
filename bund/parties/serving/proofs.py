"""A request's inclusion in a party's signed root of request digests, and the regulator's check.

Every ``root_interval_s`` each party of a contract logs a ``serving_root`` record: the RFC 6962
Merkle root (:mod:`bund.compute.merkle`) of the digests of the requests it took since its last
root, in the order it took them (leaf ``i`` is ``SHA-256(0x00 || request digest)``), with the
first request's sequence number and the count. The record is signed and chained like every
record of the log, and witnessed with it (``docs/audit.md``). So to show that it took one
request, a node hands over that record and the request's audit path (:class:`RequestProof`);
whoever holds the request's digest (the loan system keeps it from the answer) and the party's
audit public key checks it alone (:func:`verify_request_proof`), without the rest of the log.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bund.compute.merkle import leaf_hash, verify_inclusion
from bund.parties.audit import AuditRecord
from bund.parties.audit.verify import record_problem
from bund.parties.lifecycle.events import Event, Key
from bund.parties.serving.errors import RequestProofError


@dataclass(frozen=True)
class RequestProof:
    """That a party took one request: the signed root record over it and its audit path."""

    contract_id: str
    request_sha256: bytes
    #: The request's position among the party's requests of the contract, from 0.
    seq: int
    #: The party's signed ``serving_root`` record whose root covers the request.
    root_record: AuditRecord
    #: The RFC 6962 audit path from the request's leaf to that root.
    path: tuple[bytes, ...]


def verify_request_proof(
    proof: RequestProof, request_sha256: bytes, party: str, public_key: Ed25519PublicKey
) -> AuditRecord:
    """Check that ``party`` recorded the request ``request_sha256`` under a root it signed.

    Args:
        proof: As the party's node served it.
        request_sha256: The request's digest as the checker holds it (never the node's word).
        party: Whose log the root record must be.
        public_key: The party's audit public key, as the checker was given it.

    Returns:
        The root record, verified (its ``index`` and ``record_hash`` can be compared with a
        pulled copy of the log, or a witnessed tree head).

    Raises:
        RequestProofError: Naming the first thing that does not verify.
    """
    record = proof.root_record
    problem = record_problem(record, record.index, None, public_key, party)
    if problem is not None:
        raise RequestProofError(f"{party}'s root record does not verify: {problem}")
    if record.event != Event.SERVING_ROOT or record.job_id != proof.contract_id:
        raise RequestProofError(
            f"record {record.index} is a {record.event!r} of {record.job_id!r}, not a "
            f"serving_root of contract {proof.contract_id}"
        )
    first, count, root = (record.fields.get(k) for k in (Key.FIRST_SEQ, Key.COUNT, Key.ROOT_HASH))
    if not (
        isinstance(first, int)
        and isinstance(count, int)
        and isinstance(root, str)
        and not isinstance(first, bool)
        and not isinstance(count, bool)
    ):
        raise RequestProofError(f"root record {record.index} lacks first_seq, count or root_hash")
    if not first <= proof.seq < first + count:
        raise RequestProofError(
            f"request {proof.seq} is not among the requests {first}..{first + count - 1} that "
            f"root record {record.index} covers"
        )
    try:
        root_hash = bytes.fromhex(root)
    except ValueError:
        raise RequestProofError(f"root record {record.index}'s root_hash is not hex") from None
    if not verify_inclusion(
        leaf_hash(request_sha256), proof.seq - first, count, root_hash, proof.path
    ):
        raise RequestProofError(
            f"the request's digest is not request {proof.seq} under root record {record.index}: "
            f"{party} did not record this request there"
        )
    return record
