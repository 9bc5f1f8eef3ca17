"""Who may call what at a node: the one place every RPC's caller is identified and authorised.

A caller is one of two kinds, told apart by the CA that issued its TLS client certificate:

* **an operator** of this node's party: a credential from the party's own operator CA
  (``OU=operator``, ``O=<party>``, the operator extended key usage), not revoked by the party.
  Only operators submit, list, read results and artifacts, read and answer approval requests,
  cancel and resume at the operator's word, and read the audit log as the party.
* **a peer**: another party's node, with a certificate from the federation CA whose common name
  and organisational unit match the federation's signed roster (name and role both), whose
  certificate is itself listed there, and which the federation has not revoked. A peer acting on
  a job must be one of the job's participants, and must present its node's signed instance
  epoch; see :class:`InstancePins`.

A certificate with this node's own party name is never a peer (a node never calls itself), and
the federation's certificates are never operators: so ``CN=bank, OU=regulator`` cannot act as
the bank's operator, and nor can the node's own certificate or the federation operator's.

:class:`Gate` does both steps for the servicers: :meth:`Gate.identify` from the certificate, and
:meth:`Gate.authorise` against what the RPC allows (:class:`Access`) and the job it concerns.
Nothing here touches gRPC: the servicers hand over the certificate and the metadata bytes.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bund.compute.canonical import canonical_json
from bund.parties.errors import NotAuthorizedError
from bund.parties.identity import (
    OPERATOR_UNIT,
    IdentityError,
    PartyIdentity,
    certificate_facts,
    issued_by,
)
from bund.parties.jobs import JobSpec, JsonScalar
from bund.parties.lifecycle.events import Event, Key
from bund.parties.roster import RevocationList, Roster, WatchedDocument

log = logging.getLogger("bund.authz")

#: The gRPC metadata key that carries a node's signed instance epoch on every call it makes.
INSTANCE_METADATA = "bund-instance-bin"
_INSTANCE_DOMAIN = b"bund/instance/v1\x00"
_MAX_INSTANCE_BYTES = 512


class Access(Enum):
    """Who may call an RPC."""

    #: This node's operators only (a credential from the party's operator CA).
    OPERATOR = "operator"
    #: Another party's node only.
    PEER = "peer"
    #: This node's operators, or another party's node taking part in the job.
    OPERATOR_OR_PEER = "operator or peer"
    #: This node's operators, or a regulator's certificate.
    OPERATOR_OR_REGULATOR = "operator or regulator"
    #: Any caller the node identifies (an operator, or a peer on the roster).
    ANY = "any"


@dataclass(frozen=True)
class Caller(PartyIdentity):
    """The party a call acts as (``name``, ``role``), and the operator behind it, if any.

    For an operator call, ``name`` and ``role`` are this node's own party and role and
    ``operator`` is the person's name from their credential; for a peer, they are the peer's
    name and role from its certificate and ``operator`` is None.
    """

    operator: str | None = None
    #: SHA-256 of the caller's certificate (hex).
    fingerprint: str = ""

    @property
    def label(self) -> str:
        """The caller in words, for logs and audit records."""
        return self.name if self.operator is None else f"{self.name} operator {self.operator}"


class DuplicateInstanceError(NotAuthorizedError):
    """A second node with a party's identity called while the party's node runs elsewhere."""


# -- instance epochs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """A node's signed statement of one run: its party, a fresh random epoch and its start time.

    A node makes one at each start (:meth:`create`), signs it with its audit key and sends it
    with every call to a peer (metadata :data:`INSTANCE_METADATA`); its ``GetNodeInfo`` answer
    carries it too. Wire layout: the 64-byte Ed25519 signature, then the canonical JSON of
    ``{"party", "epoch", "started_at"}``; the signature covers a domain prefix and that JSON.
    """

    party: str
    #: 32 lower-case hex digits, drawn from ``secrets`` at the node's start.
    epoch: str
    started_at: str
    signature: bytes

    @staticmethod
    def _document(party: str, epoch: str, started_at: str) -> bytes:
        return canonical_json({"party": party, "epoch": epoch, "started_at": started_at})

    @classmethod
    def create(cls, party: str, key: Ed25519PrivateKey, started_at: str) -> Instance:
        """A fresh epoch for ``party``, signed with its audit key."""
        epoch = secrets.token_hex(16)
        signature = key.sign(_INSTANCE_DOMAIN + cls._document(party, epoch, started_at))
        return cls(party, epoch, started_at, signature)

    def encode(self) -> bytes:
        """The statement's wire bytes."""
        return self.signature + self._document(self.party, self.epoch, self.started_at)

    @classmethod
    def decode(cls, data: bytes, key: Ed25519PublicKey) -> Instance:
        """Read and verify a statement with the party's audit key; ``NotAuthorizedError`` if bad."""
        if not 64 < len(data) <= _MAX_INSTANCE_BYTES:
            raise NotAuthorizedError("the caller's instance epoch is malformed")
        signature, document = data[:64], data[64:]
        try:
            key.verify(signature, _INSTANCE_DOMAIN + document)
            doc = json.loads(document)
        except (InvalidSignature, ValueError):
            raise NotAuthorizedError(
                "the caller's instance epoch does not verify with its audit key in the roster"
            ) from None
        if not isinstance(doc, dict) or set(doc) != {"party", "epoch", "started_at"}:
            raise NotAuthorizedError("the caller's instance epoch is malformed")
        party, epoch, started_at = doc["party"], doc["epoch"], doc["started_at"]
        if not all(isinstance(v, str) for v in (party, epoch, started_at)) or len(epoch) != 32:
            raise NotAuthorizedError("the caller's instance epoch is malformed")
        return cls(party, epoch, started_at, signature)


#: Records a security event in the node's audit log: (event, job id, fields).
Record = Callable[[str, str, dict[str, JsonScalar]], object]
#: Asks the node at ``party``'s configured address which epoch it runs; None when no answer.
Probe = Callable[[str], str | None]


class InstancePins:
    """Which run of each peer this node works with, per job: a second live instance is refused.

    The first call about a job from a peer pins the epoch it presents to that (peer, job); the
    latest epoch seen from each peer is kept too and stands in for jobs not pinned yet. A call
    with the pinned epoch passes at once. A call with another epoch is judged by the node that
    answers at the peer's configured address (``probe``), the party's node by this node's own
    directory:

    * it answers with the caller's epoch: the peer restarted, or moved; the new epoch is pinned
      (``peer_instance_changed``);
    * it answers with another epoch: the caller is a second node holding the party's identity;
      the call is refused and recorded (``duplicate_instance``), and the same epoch is refused
      without asking again for ``refuse_for`` seconds;
    * nothing answers: the newer run is accepted (a restart on a new address is the usual cause)
      and recorded as unverified.

    Limits: a duplicate is only told apart while the party's node answers at its address, and a
    second node that copies the live node's epoch statement (it holds the same keys) cannot be
    told apart at all: that is a stolen key, which revocation answers.
    """

    def __init__(
        self,
        probe: Probe,
        record: Record,
        refuse_for: float = 5.0,
        max_pins: int = 65_536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._record = record
        self._refuse_for = refuse_for
        self._max_pins = max_pins
        self._clock = clock
        self._lock = threading.Lock()
        self._pins: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._latest: dict[str, str] = {}
        self._refused: dict[tuple[str, str], float] = {}

    def _pin(self, peer: str, job_id: str, epoch: str) -> None:
        self._pins[(peer, job_id)] = epoch
        self._pins.move_to_end((peer, job_id))
        while len(self._pins) > self._max_pins:
            self._pins.popitem(last=False)
        self._latest[peer] = epoch

    def admit(self, peer: str, job_id: str, instance: Instance) -> None:
        """Let a call from ``peer``'s run ``instance`` about ``job_id`` through, or refuse it.

        Raises:
            DuplicateInstanceError: Another run of ``peer`` answers at its address.
        """
        epoch = instance.epoch
        with self._lock:
            pinned = self._pins.get((peer, job_id)) or self._latest.get(peer)
            if pinned == epoch:
                self._pin(peer, job_id, epoch)
                return
            if self._refused.get((peer, epoch), 0.0) > self._clock():
                raise self._duplicate(peer)
            known = pinned is not None and self._latest.get(peer) == epoch
            if known:  # a job still pinned to the run before a restart, already confirmed
                self._pin(peer, job_id, epoch)
        if known:
            self._changed(peer, job_id, pinned, instance, verified=True)
            return
        answer = self._probe(peer)  # outside the lock: a peer may take a while to answer
        with self._lock:
            if answer is not None and answer != epoch:
                now = self._clock()
                self._refused = {k: t for k, t in self._refused.items() if t > now}
                self._refused[(peer, epoch)] = now + self._refuse_for
                fields: dict[str, JsonScalar] = {
                    Key.PEER: peer,
                    "job": job_id,
                    "epoch": epoch,
                    "started_at": instance.started_at,
                    "answering_epoch": answer,
                    "pinned_epoch": pinned or "",
                    "instance": instance.encode().hex(),
                }
                refused = True
            else:
                self._pin(peer, job_id, epoch)
                refused = False
        if refused:
            self._record(Event.DUPLICATE_INSTANCE, "", fields)
            log.warning("refused a second instance of %s (epoch %s), job %s", peer, epoch, job_id)
            raise self._duplicate(peer)
        if pinned is not None:
            self._changed(peer, job_id, pinned, instance, verified=answer == epoch)

    def _changed(
        self, peer: str, job_id: str, pinned: str | None, instance: Instance, verified: bool
    ) -> None:
        self._record(
            Event.PEER_INSTANCE_CHANGED,
            "",
            {
                Key.PEER: peer,
                "job": job_id,
                "from_epoch": pinned or "",
                "epoch": instance.epoch,
                "started_at": instance.started_at,
                "verified": verified,
            },
        )

    @staticmethod
    def _duplicate(peer: str) -> DuplicateInstanceError:
        return DuplicateInstanceError(
            f"another node of {peer} is running and answers at {peer}'s address: this is a "
            f"second instance of {peer}; its calls are refused (stop it, or revoke the "
            "certificate if it was copied)"
        )


# -- the gate -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustAnchors:
    """What a node checks callers against, each kept current from its file."""

    #: The federation CA's certificate (PEM): it issues the nodes' certificates.
    federation_ca: bytes
    #: This party's operator CA's certificate (PEM): it issues the operators' credentials.
    operator_ca: bytes
    roster: WatchedDocument[Roster]
    revocations: WatchedDocument[RevocationList]
    operator_revocations: WatchedDocument[RevocationList]


class Gate:
    """Identifies and authorises every caller of a node's RPCs.

    Args:
        party: This node's party.
        role: Its role.
        anchors: The CAs, roster and revocation lists.
        pins: The instance epochs of peers, per job.
    """

    def __init__(self, party: str, role: str, anchors: TrustAnchors, pins: InstancePins) -> None:
        self.party = party
        self.role = role
        self.anchors = anchors
        self.pins = pins

    @staticmethod
    def describe(pem: bytes | None) -> str:
        """The subject a certificate claims, for the audit record of a refused call."""
        if not pem:
            return "?"
        try:
            return certificate_facts(pem).describe()
        except IdentityError:
            return "?"

    def identify(self, pem: bytes | None) -> Caller:
        """Who presents the TLS client certificate ``pem`` (already verified by TLS).

        Raises:
            NotAuthorizedError: The certificate is not an operator credential of this party,
                nor a peer's on the roster, or it is revoked; the message says which and why.
        """
        if not pem:
            raise NotAuthorizedError("no client certificate: connect with your credential")
        try:
            facts = certificate_facts(pem)
        except IdentityError as exc:
            raise NotAuthorizedError(f"client certificate refused: {exc}") from None
        anchors = self.anchors
        if issued_by(pem, anchors.operator_ca):
            if (
                not facts.operator_usage
                or facts.role != OPERATOR_UNIT
                or facts.organisation != self.party
            ):
                raise NotAuthorizedError(
                    f"{facts.describe()} is not an operator credential of {self.party}"
                )
            revoked = anchors.operator_revocations.current().get(facts.serial)
            if revoked is not None:
                raise NotAuthorizedError(
                    f"operator credential {facts.describe()} was revoked by {self.party} on "
                    f"{revoked.revoked_at}: {revoked.reason}"
                )
            return Caller(self.party, self.role, facts.name, facts.fingerprint)
        if not issued_by(pem, anchors.federation_ca) or facts.operator_usage:
            raise NotAuthorizedError(
                f"{facts.describe()} was issued neither to a node by the federation CA nor to "
                f"an operator by {self.party}'s operator CA"
            )
        member = anchors.roster.current().members.get(facts.name)
        if member is None:
            raise NotAuthorizedError(
                f"{facts.name} is not in the federation's roster; the federation enrols a party "
                "with `bund federation roster add`"
            )
        if member.role != facts.role:
            raise NotAuthorizedError(
                f"the certificate says {facts.name} has role {facts.role!r}, but the federation's "
                f"roster lists {facts.name} as {member.role!r}: refused"
            )
        if facts.fingerprint not in member.certificates:
            raise NotAuthorizedError(
                f"{facts.describe()} is not one of {facts.name}'s certificates in the roster"
            )
        revoked = anchors.revocations.current().get(facts.serial)
        if revoked is not None:
            raise NotAuthorizedError(
                f"certificate {facts.describe()} was revoked by the federation on "
                f"{revoked.revoked_at}: {revoked.reason}"
            )
        if facts.name == self.party:
            raise NotAuthorizedError(
                f"a node certificate of {self.party} itself: operators call with an operator "
                f"credential (bund operator issue), and a node never calls itself; is a second "
                f"node running with {self.party}'s certificate?"
            )
        return Caller(facts.name, facts.role, None, facts.fingerprint)

    def authorise(
        self,
        caller: Caller,
        access: Access,
        spec: JobSpec | None,
        instance: bytes | None,
        reads_only: bool = False,
    ) -> None:
        """Refuse a call that ``caller`` may not make.

        Args:
            caller: From :meth:`identify`.
            access: Who the RPC allows.
            spec: The job the call is about, if any.
            instance: The caller's signed instance epoch from the call's metadata, if sent.
            reads_only: The call only reads (a status): a peer may make it without an epoch.

        Raises:
            NotAuthorizedError: Naming the rule, or ``DuplicateInstanceError``.
        """
        if access is Access.OPERATOR and caller.operator is None:
            raise NotAuthorizedError(
                f"only {self.party}'s operators may make this call, with a credential from "
                f"{self.party}'s operator CA (caller: {caller.label})"
            )
        if access is Access.PEER and caller.operator is not None:
            raise NotAuthorizedError("an operator credential cannot make a node-to-node call")
        if (
            access is Access.OPERATOR_OR_REGULATOR
            and caller.operator is None
            and caller.role != "regulator"
        ):
            raise NotAuthorizedError(
                f"only {self.party}'s operators or a regulator may make this call "
                f"(caller: {caller.label})"
            )
        if caller.operator is not None or spec is None:
            return
        if caller.name not in spec.parties:
            raise NotAuthorizedError(f"{caller.name} takes no part in job {spec.job_id}; refused")
        if instance is None:
            if reads_only:
                return
            raise NotAuthorizedError(
                f"{caller.name}'s call carries no instance epoch ({INSTANCE_METADATA}): every "
                "node sends its signed epoch with each call about a job"
            )
        member = self.anchors.roster.current().members.get(caller.name)
        try:
            if member is None:
                raise ValueError(caller.name)
            key = Ed25519PublicKey.from_public_bytes(member.audit_key)
        except ValueError:
            raise NotAuthorizedError(
                f"the roster holds no valid audit key of {caller.name}"
            ) from None
        statement = Instance.decode(instance, key)
        if statement.party != caller.name:
            raise NotAuthorizedError(
                f"the instance epoch names {statement.party!r}, not the caller {caller.name!r}"
            )
        self.pins.admit(caller.name, spec.job_id, statement)
