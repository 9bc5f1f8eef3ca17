"""Per-job approvals: what an approver reviews, the exact bytes their Ed25519 key signs, the check.

An approval binds the job spec's digest, the running code version and the dataset's content
version. Any change to one of them needs a new approval. The approver's CLI rebuilds the signed
bytes from what it shows the person, so nobody signs bytes they were not shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bund.compute.canonical import canonical_json
from bund.compute.dp.budget import Budget, format_epsilon, format_rational
from bund.compute.errors import BundError
from bund.parties.identity import load_audit_signing_key
from bund.parties.jobs import JobSpec

_DOMAIN = b"bund/approval/v1\x00"


class ApprovalError(BundError):
    """An approval is missing, does not verify, or no longer matches the job it was given for."""


@dataclass(frozen=True)
class ApprovalRequest:
    """Everything an approver at one node reviews before signing a job."""

    spec: JobSpec
    party: str
    code_version: str
    dataset: str
    level: str
    dataset_version: str
    outputs: tuple[str, ...]
    learns: Mapping[str, str]
    cost: Budget

    def payload(self) -> bytes:
        """The exact bytes the approver signs: a domain prefix, then canonical JSON (version 1)."""
        doc = {
            "job_id": self.spec.job_id,
            "spec_sha256": self.spec.digest(),
            "party": self.party,
            "code_version": self.code_version,
            "dataset": self.dataset,
            "dataset_version": self.dataset_version,
            "epsilon": format_rational(self.cost.epsilon),
            "delta": format_rational(self.cost.delta),
        }
        return _DOMAIN + canonical_json(doc)

    def summary_lines(self) -> list[str]:
        """A human-readable summary: what is computed, what each party learns, what it costs."""
        spec = self.spec
        lines = [
            f"job {spec.job_id}: protocol {spec.protocol} requested by {spec.requester}",
            f"purpose: {spec.purpose}",
            "participants: " + ", ".join(f"{p.party} ({p.role})" for p in spec.participants),
            f"your dataset: {self.dataset} [{self.level}], version {self.dataset_version[:16]}",
        ]
        bindings = spec.participant(self.party).columns
        if bindings:  # what the protocol calls each of your columns: you approve these too
            lines.append(
                "your columns used: " + ", ".join(f"{k} = {v}" for k, v in bindings.items())
            )
        lines.append(f"releases: {', '.join(self.outputs)}; result to {', '.join(spec.receivers)}")
        lines += [f"  {party} learns {what}" for party, what in sorted(self.learns.items())]
        lines.append(
            "privacy budget charged to your dataset: "
            + (
                "none"
                if self.cost.is_zero
                else f"ε = {format_epsilon(self.cost.epsilon)}, "
                f"δ = {format_epsilon(self.cost.delta)}"
            )
        )
        lines.append(f"code version {self.code_version}; spec sha256 {spec.digest()}")
        return lines


def sign_approval(request: ApprovalRequest, key: Path) -> bytes:
    """The approver's signature over ``request``, made with the Ed25519 key at ``key``.

    The key is read here, on the approver's own machine (the ``bund`` command, or a console
    that its approver runs), and only the signature leaves: to the node, with the operator
    credential's connection.

    Raises:
        IdentityError: ``key`` is not an Ed25519 private key.
    """
    return load_audit_signing_key(key).sign(request.payload())


def verify_approval(request: ApprovalRequest, signature: bytes, key: Ed25519PublicKey) -> None:
    """Raise ``ApprovalError`` unless ``signature`` is the approver's over ``request``."""
    if len(signature) != 64:
        raise ApprovalError("an approval signature is 64 bytes (Ed25519)")
    try:
        key.verify(signature, request.payload())
    except InvalidSignature:
        raise ApprovalError(
            "the approval does not verify with this node's approver key: it was signed by another "
            "key or for another spec, code version or dataset version; approve the job again"
        ) from None
