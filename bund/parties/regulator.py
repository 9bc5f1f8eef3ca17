"""The regulator: pull every party's signed audit log, verify it, reconcile the logs, report.

A regulator holds a certificate with role ``regulator`` and, for every party, the address of its
node and its audit public key, handed over out of band and written into ``regulator.toml``. It
never trusts the key a node reports about itself: a node that reports another key is flagged, and
its log is verified with the configured key all the same.

Each layer can be used alone:

* :func:`pull_log` pages through one node's ``Audit/ReadAuditLog`` over mTLS (only a regulator
  certificate, or the node's own operator, may call it) and verifies the chain with
  :func:`bund.parties.audit.verify_records`; :func:`make_pulled_log` verifies records obtained any
  other way (an export, a test).
* :func:`log_findings` turns one log's verification, and the checkpoints the regulator holds for
  that party (:func:`bund.parties.audit.check_log_against_checkpoints`), into findings.
* :func:`reconcile` is pure: it compares the logs of all parties, job by job. Every message must
  appear with the same digest in the sender's and the receiver's log, every participant must
  close the job, and the transcript digest each party reports to its peers must be the one it
  recorded, and the one its own message records hash to.

:func:`audit_federation` runs them for every configured party and returns an
:class:`AuditOutcome`, which :func:`bund.parties.report.write_report` renders as one HTML file.
``docs/governance.md`` explains every finding kind and what to do about it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import json
import os
import socket
import ssl
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import Field
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bund.compute.errors import BundError
from bund.parties.audit import (
    AuditFormatError,
    AuditRecord,
    Checkpoint,
    CheckpointReport,
    JsonScalar,
    LogFault,
    VerificationReport,
    WitnessedHead,
    check_log_against_checkpoints,
    verify_checkpoint,
    verify_cosignature,
    verify_records,
)
from bund.parties.client import NodeClient, RemoteError
from bund.parties.config import TlsPaths
from bund.parties.durable import replace_file
from bund.parties.errors import ConfigError
from bund.parties.identity import (
    IdentityError,
    certificate_facts,
    identity_from_pem,
    load_audit_public_key,
    load_revocations,
    raw_key_id,
    raw_public_key,
)
from bund.parties.jobs import TranscriptEntry, transcript_digest
from bund.parties.lifecycle.events import (
    CLOSE_TAG,
    MESSAGE_DIRECTIONS,
    PEER_TRANSCRIPT_PREFIX,
    SPEC_EVENTS,
    Event,
    Key,
    state_after,
)
from bund.parties.lifecycle.states import JobState
from bund.parties.roster import RevocationList
from bund.parties.schema import (
    Name,
    PeerAddress,
    PositiveNumber,
    StrictModel,
    parse_file,
    read_toml,
)
from bund.parties.schema import Text as NonEmpty

#: The fields of a spec record that the report shows.
_SPEC_FIELDS: Final = (Key.PROTOCOL, Key.REQUESTER, Key.PARTIES, Key.RECEIVERS, Key.PURPOSE)
#: How far a party's log must reach past an event before a record it lacks counts as omitted
#: rather than not yet written. The logs are pulled one after another, each party's clock is its
#: own, and a pull appends an ``rpc`` record to the log, so a second pull settles the question.
SETTLE_TIME: Final = dt.timedelta(minutes=5)
#: The largest difference allowed between a party's clock and a witness's or the regulator's
#: (``[limits] max_clock_skew_s``).
MAX_CLOCK_SKEW: Final = dt.timedelta(seconds=120)
#: How often the nodes exchange signed tree heads (``[limits] witness_interval_s``, as the
#: nodes' ``[audit] witness_interval_s``).
WITNESS_INTERVAL: Final = dt.timedelta(seconds=300)
#: Outcomes of a close after which every message must have arrived and every peer's transcript
#: been countersigned: a job that succeeded, or a standing contract's set-up, which then serves.
_CLOSED_WELL: Final = frozenset({JobState.SUCCEEDED.value, JobState.SERVING.value})


class Severity(StrEnum):
    """How much a finding matters."""

    #: The logs contradict each other or the signatures: evidence of loss or tampering.
    ERROR = "error"
    #: Something the regulator could not check, or that an ordinary failure can explain.
    WARNING = "warning"


class FindingKind(StrEnum):
    """What a finding is about; ``docs/governance.md`` says what to do about each."""

    PULL_FAILED = "pull_failed"
    KEY_MISMATCH = "key_mismatch"
    LOG_INCOMPLETE = "log_incomplete"
    LOG_INVALID = "log_invalid"
    CHECKPOINT_INVALID = "checkpoint_invalid"
    EQUIVOCATION = "equivocation"
    LOG_REWRITTEN = "log_rewritten"
    LOG_TRUNCATED = "log_truncated"
    MALFORMED_RECORD = "malformed_record"
    SPEC_MISSING = "spec_missing"
    SPEC_MISMATCH = "spec_mismatch"
    UNEXPECTED_PARTY = "unexpected_party"
    JOB_MISSING = "job_missing"
    NOT_RECONCILED = "not_reconciled"
    MESSAGE_OMITTED = "message_omitted"
    DIGEST_MISMATCH = "digest_mismatch"
    CLOSE_MISSING = "close_missing"
    CLOSE_DUPLICATED = "close_duplicated"
    OUTCOME_MISMATCH = "outcome_mismatch"
    TRANSCRIPT_MISMATCH = "transcript_mismatch"
    DROPPED_OUT = "dropped_out"
    TRANSCRIPT_INCONSISTENT = "transcript_inconsistent"
    RESULT_OUTSIDE_RECEIVERS = "result_outside_receivers"
    CERTIFICATE_REVOKED = "certificate_revoked"
    CLOCK_SKEW = "clock_skew"
    CLOCK_REGRESSED = "clock_regressed"
    WITNESS_INVALID = "witness_invalid"
    UNWITNESSED = "unwitnessed"


_CHECKPOINT_KINDS: Final[Mapping[LogFault, FindingKind]] = MappingProxyType(
    {
        LogFault.CHECKPOINT: FindingKind.CHECKPOINT_INVALID,
        LogFault.EQUIVOCATION: FindingKind.EQUIVOCATION,
        LogFault.REWRITTEN: FindingKind.LOG_REWRITTEN,
        LogFault.TRUNCATED: FindingKind.LOG_TRUNCATED,
    }
)


@dataclass(frozen=True)
class Finding:
    """One thing the regulator found wrong, or could not check.

    Every string in a finding may come from a party's log: escape it before rendering.

    Attributes:
        severity: :attr:`Severity.ERROR` or :attr:`Severity.WARNING`.
        kind: What it is about.
        job_id: The job concerned, or ``""`` for a finding about a whole log.
        parties: The parties involved; for a message, sender first.
        detail: What was found, in words, naming the records.
        indexes: For each party whose log holds the evidence, the index of the record.
        witnesses: The parties whose witnessed tree heads are the evidence, if any.
    """

    severity: Severity
    kind: FindingKind
    job_id: str
    parties: tuple[str, ...]
    detail: str
    indexes: Mapping[str, int] = field(default_factory=dict)
    witnesses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "indexes", MappingProxyType(dict(self.indexes)))


# -- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditedParty:
    """A party whose log the regulator pulls.

    Attributes:
        name: The party's name; its node's certificate must carry it.
        address: ``HOST:PORT`` of its node.
        audit_public_key: The party's audit key as the regulator was given it.
    """

    name: str
    address: str
    audit_public_key: Ed25519PublicKey


@dataclass(frozen=True)
class RegulatorConfig:
    """Everything :func:`audit_federation` needs, as read from ``regulator.toml``.

    Attributes:
        tls: The regulator's CA, certificate (role ``regulator``) and key.
        parties: The parties to audit, by name.
        timeout_s: Deadline of each call to a node.
        max_message_bytes: gRPC message limit; a page of the log must fit in it.
        state_dir: Where the regulator keeps every checkpoint it was given
            (``checkpoints.jsonl``) and every witnessed head it collected (``witnessed.jsonl``).
        max_clock_skew: The largest difference allowed between two parties' clocks.
        witness_interval: How often the nodes exchange tree heads.
    """

    tls: TlsPaths
    parties: Mapping[str, AuditedParty]
    timeout_s: float = 60.0
    max_message_bytes: int = 8 << 20
    state_dir: Path | None = None
    #: The federation's revocation list: every party's served certificate is checked against it.
    revocations: RevocationList | None = None
    max_clock_skew: dt.timedelta = MAX_CLOCK_SKEW
    witness_interval: dt.timedelta = WITNESS_INTERVAL


class _RegulatorTls(StrictModel):
    ca: NonEmpty = Field(default="ca.pem", description="the federation CA certificate")
    cert: NonEmpty = Field(default="node.pem", description="the regulator's certificate")
    key: NonEmpty = Field(default="node.key", description="its private key")


class _RegulatorLimits(StrictModel):
    noun: ClassVar[str] = "limit"

    timeout_s: PositiveNumber = Field(default=60.0, description="deadline of each call")
    max_message_bytes: PositiveNumber = Field(
        default=8 << 20, description="gRPC message limit; a page of a log must fit in it"
    )
    max_clock_skew_s: PositiveNumber = Field(
        default=MAX_CLOCK_SKEW.total_seconds(),
        description="the largest difference allowed between a party's clock and a witness's or "
        "the regulator's",
    )
    witness_interval_s: PositiveNumber = Field(
        default=WITNESS_INTERVAL.total_seconds(),
        description="the nodes' [audit] witness_interval_s: records older than it (plus the "
        "skew) must have been witnessed",
    )


class _RegulatorFederation(StrictModel):
    revocations: NonEmpty = Field(
        default="revocations.json", description="the federation's signed revocation list"
    )


class _Audited(StrictModel):
    address: PeerAddress = Field(description="where the party's node listens")
    audit_public_key: NonEmpty = Field(description="the party's audit key (PEM), handed over")


class RegulatorFile(StrictModel):
    """``regulator.toml`` as written: parsed by :func:`load_regulator_config`."""

    tls: _RegulatorTls = Field(default_factory=_RegulatorTls)
    federation: _RegulatorFederation = Field(default_factory=_RegulatorFederation)
    state_dir: NonEmpty = Field(
        default="regulator-state",
        description="keeps every checkpoint the parties signed and every head they witnessed",
    )
    limits: _RegulatorLimits = Field(default_factory=_RegulatorLimits)
    parties: dict[Name, _Audited] = Field(default_factory=dict)


def load_regulator_config(path: Path) -> RegulatorConfig:
    """Read ``regulator.toml``; paths in it are relative to the file.

    ::

        state_dir = "regulator-state"  # optional: keeps the checkpoints and witnessed heads

        [tls]                         # like a node's: the regulator's own certificate
        ca = "ca.pem"
        cert = "regulator.pem"        # issued with role "regulator"
        key = "regulator.key"

        state_dir = "regulator-state"  # optional: keeps every checkpoint the parties signed

        [federation]                  # optional; the federation's signed revocation list
        revocations = "revocations.json"

        [limits]                      # optional
        timeout_s = 60
        max_message_bytes = 8388608
        max_clock_skew_s = 120        # clocks further apart than this are a finding
        witness_interval_s = 300      # as the nodes' [audit] witness_interval_s

        [parties.bank]
        address = "bank.example:7443"
        audit_public_key = "keys/bank_audit_ed25519.pub"   # PEM, handed over by the bank

    Args:
        path: The file.

    Returns:
        The configuration, with every audit public key loaded.

    Raises:
        ConfigError: The file is missing or malformed (each error naming the file, the dotted
            key and the nearest known key), a key cannot be read, or the certificate is not a
            regulator's; the message names what to fix.
    """
    file = parse_file(
        RegulatorFile, read_toml(path, "regulator configuration", ConfigError), path, ConfigError
    )
    base = path.parent
    tls = TlsPaths(ca=base / file.tls.ca, cert=base / file.tls.cert, key=base / file.tls.key)
    for name, item in (("ca", tls.ca), ("cert", tls.cert), ("key", tls.key)):
        if not item.is_file():
            raise ConfigError(f"{path}: tls.{name}: {item} not found")
    try:
        who = identity_from_pem(tls.cert.read_bytes())
    except IdentityError as exc:
        raise ConfigError(f"{path}: tls.cert: {exc}") from None
    if who.role != "regulator":
        raise ConfigError(
            f"{path}: tls.cert is {who.name}'s, with role {who.role!r}: the audit service "
            "answers only regulators; use a certificate issued with role 'regulator'"
        )
    if not file.parties:
        raise ConfigError(f'{path}: no [parties.NAME] with address = "HOST:PORT" to audit')
    parties: dict[str, AuditedParty] = {}
    for name, entry in sorted(file.parties.items()):
        try:
            key = load_audit_public_key(base / entry.audit_public_key)
        except IdentityError as exc:
            raise ConfigError(f"{path}: parties.{name}.audit_public_key: {exc}") from None
        parties[name] = AuditedParty(name, entry.address, key)
    try:
        revocations = load_revocations(base / file.federation.revocations, tls.ca)
    except BundError as exc:
        raise ConfigError(f"{path}: federation.revocations: {exc}") from None
    limits = file.limits
    return RegulatorConfig(
        tls,
        MappingProxyType(parties),
        limits.timeout_s,
        int(limits.max_message_bytes),
        base / file.state_dir,
        revocations,
        dt.timedelta(seconds=limits.max_clock_skew_s),
        dt.timedelta(seconds=limits.witness_interval_s),
    )


# -- the certificates the parties serve -----------------------------------------------------


def served_certificate(address: str, party: str, tls: TlsPaths, timeout: float) -> bytes:
    """The certificate (PEM) that ``party``'s node presents in a TLS handshake at ``address``.

    The handshake is made as gRPC's would be (the regulator's certificate, the federation CA,
    ``party`` as the expected name, ALPN ``h2``) and closed at once.

    Raises:
        OSError: The node cannot be reached, or the handshake fails.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca))
    context.load_cert_chain(str(tls.cert), str(tls.key))
    context.set_alpn_protocols(["h2"])
    host, _, port = address.rpartition(":")
    with (
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=party) as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    if der is None:
        raise OSError(f"{party} presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der).encode()


def certificate_findings(party: str, pem: bytes, revocations: RevocationList) -> list[Finding]:
    """A ``certificate_revoked`` finding when the certificate ``party`` serves is revoked."""
    facts = certificate_facts(pem)
    revoked = revocations.get(facts.serial)
    if revoked is None:
        return []
    return [
        Finding(
            Severity.ERROR,
            FindingKind.CERTIFICATE_REVOKED,
            "",
            (party,),
            f"{party}'s node serves certificate serial {revoked.serial} ({facts.name}, "
            f"{facts.role}), which the federation revoked on {revoked.revoked_at}: "
            f"{revoked.reason}",
        )
    ]


# -- checkpoints the regulator holds --------------------------------------------------------

CHECKPOINTS_FILE = "checkpoints.jsonl"
#: The heads the regulator collected from the witnesses, every one it judged valid.
WITNESSED_FILE = "witnessed.jsonl"
#: How far the regulator has read each witness's store (its last ``seq``).
WITNESS_CURSORS_FILE = "witness_cursors.json"


def _checkpoint_doc(checkpoint: Checkpoint) -> dict[str, object]:
    return {
        "party": checkpoint.party,
        "tree_size": checkpoint.tree_size,
        "root_hash": checkpoint.root_hash.hex(),
        "timestamp": checkpoint.timestamp,
        "signature": checkpoint.signature.hex(),
    }


def _checkpoint_from(doc: Mapping[str, object]) -> Checkpoint:
    return Checkpoint(
        party=doc["party"],  # type: ignore[arg-type]
        tree_size=doc["tree_size"],  # type: ignore[arg-type]
        root_hash=bytes.fromhex(doc["root_hash"]),  # type: ignore[arg-type]
        timestamp=doc["timestamp"],  # type: ignore[arg-type]
        signature=bytes.fromhex(doc["signature"]),  # type: ignore[arg-type]
    )


def _read_lines(path: Path, what: str) -> Iterator[Mapping[str, object]]:
    if not path.exists():
        return
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                doc = json.loads(line)
                if not isinstance(doc, dict):
                    raise TypeError
            except (ValueError, TypeError):
                raise ConfigError(f"{path} line {number} is not {what}") from None
            yield doc


def _append_lines(path: Path, docs: Iterable[Mapping[str, object]]) -> None:
    """Append JSON lines durably: flushed and synced before returning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def load_held_checkpoints(state_dir: Path) -> dict[str, list[Checkpoint]]:
    """Every checkpoint this regulator was given, by party (none when it has kept none)."""
    held: dict[str, list[Checkpoint]] = {}
    path = state_dir / CHECKPOINTS_FILE
    for number, doc in enumerate(_read_lines(path, "a checkpoint record"), 1):
        try:
            cp = _checkpoint_from(doc)
        except (ValueError, KeyError, TypeError, BundError):
            raise ConfigError(f"{path} line {number} is not a checkpoint record") from None
        held.setdefault(cp.party, []).append(cp)
    return held


def keep_checkpoint(state_dir: Path, checkpoint: Checkpoint) -> None:
    """Append a checkpoint to the regulator's own store (durably: flushed and synced)."""
    _append_lines(state_dir / CHECKPOINTS_FILE, [_checkpoint_doc(checkpoint)])


def load_witnessed(state_dir: Path) -> list[WitnessedHead]:
    """Every witnessed head this regulator collected and kept (none when it has kept none)."""
    kept = []
    path = state_dir / WITNESSED_FILE
    for number, doc in enumerate(_read_lines(path, "a witnessed head"), 1):
        try:
            kept.append(
                WitnessedHead(
                    head=_checkpoint_from(doc),
                    witness=doc["witness"],  # type: ignore[arg-type]
                    received_at=doc["received_at"],  # type: ignore[arg-type]
                    cosignature=bytes.fromhex(doc["cosignature"]),  # type: ignore[arg-type]
                )
            )
        except (ValueError, KeyError, TypeError, BundError):
            raise ConfigError(f"{path} line {number} is not a witnessed head") from None
    return kept


def keep_witnessed(state_dir: Path, heads: Iterable[WitnessedHead]) -> None:
    """Append witnessed heads to the regulator's own store (durably)."""
    _append_lines(
        state_dir / WITNESSED_FILE,
        (
            {
                **_checkpoint_doc(h.head),
                "witness": h.witness,
                "received_at": h.received_at,
                "cosignature": h.cosignature.hex(),
            }
            for h in heads
        ),
    )


def load_witness_cursors(state_dir: Path) -> dict[str, int]:
    """How far the regulator read each witness's store: the last ``seq`` it was given."""
    path = state_dir / WITNESS_CURSORS_FILE
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or not all(type(v) is int for v in doc.values()):
            raise TypeError
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not a map of witness to last seq") from None
    return {str(k): int(v) for k, v in doc.items()}


def keep_witness_cursors(state_dir: Path, cursors: Mapping[str, int]) -> None:
    """Replace the cursors file atomically (written beside it, synced, renamed over it)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    document = json.dumps(dict(sorted(cursors.items()))) + "\n"
    replace_file(state_dir / WITNESS_CURSORS_FILE, document.encode())


# -- pulling and verifying one log ----------------------------------------------------------


def _regulator_now() -> str:
    """The regulator's clock, RFC 3339 UTC to the microsecond."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class PulledLog:
    """One party's log as the regulator pulled it, and whether it verifies.

    Attributes:
        party: The party, as the regulator's configuration names it.
        address: Where it was pulled from.
        public_key: The party's audit key from the regulator's configuration.
        records: The records received, in order.
        reported_size: How many records the node said its log held when the pull began.
        reported_key: The raw audit public key the node reported (trusted for nothing).
        verification: The chain and signatures checked with ``public_key``; ``None`` when the
            pull failed.
        error: Why the pull failed, or ``""``.
        pulled_at: When the pull began, by the regulator's clock (RFC 3339 UTC): what
            "settled" is judged by, and the time the party's fresh head is compared with.
        fresh_head: The head the node signed for this audit, just before the pull, if any.
        head_refused: Why the node refused to sign one, or ``""``.
        unreadable: ``(index, reason)`` of a stored record the node could not decode; the
            records received end before it.
    """

    party: str
    address: str
    public_key: Ed25519PublicKey
    records: tuple[AuditRecord, ...]
    reported_size: int
    reported_key: bytes
    verification: VerificationReport | None
    error: str = ""
    pulled_at: str = ""
    fresh_head: Checkpoint | None = None
    head_refused: str = ""
    unreadable: tuple[int, str] | None = None

    @property
    def key_matches(self) -> bool:
        """Whether the node reported the key the regulator was given for it."""
        return hmac.compare_digest(self.reported_key, raw_public_key(self.public_key))

    def readable(self) -> Iterator[AuditRecord]:
        """The records received, then the node's unreadable record as an error at its index."""
        yield from self.records
        if self.unreadable is not None:
            index, reason = self.unreadable
            raise AuditFormatError(f"the node cannot read record {index}: {reason}", index)


def make_pulled_log(
    party: str,
    records: Iterable[AuditRecord],
    public_key: Ed25519PublicKey,
    address: str = "",
    reported_size: int | None = None,
    reported_key: bytes | None = None,
    pulled_at: str | None = None,
    fresh_head: Checkpoint | None = None,
    head_refused: str = "",
    unreadable: tuple[int, str] | None = None,
) -> PulledLog:
    """Verify records of ``party``'s log (however obtained) with the key the regulator holds.

    Args:
        party: The party whose log it is; every record must name it.
        records: The log from record 0, in order.
        public_key: The party's audit key as the regulator was given it.
        address: Where the records came from, for the report.
        reported_size: The size the source claimed; the number of records when omitted.
        reported_key: The raw key the source claimed; ``public_key`` when omitted.
        pulled_at: When the regulator obtained them, by its own clock; now when omitted.
        fresh_head: The head the party signed for this audit, if any.
        head_refused: Why the party's node refused to sign one, if it did.
        unreadable: ``(index, reason)`` of a record the source could not decode; ``records``
            end before it.

    Returns:
        The log and its verification report.
    """
    kept = tuple(records)
    log = PulledLog(
        party=party,
        address=address,
        public_key=public_key,
        records=kept,
        reported_size=len(kept) if reported_size is None else reported_size,
        reported_key=raw_public_key(public_key) if reported_key is None else reported_key,
        verification=None,
        pulled_at=_regulator_now() if pulled_at is None else pulled_at,
        fresh_head=fresh_head,
        head_refused=head_refused,
        unreadable=unreadable,
    )
    return dataclasses.replace(log, verification=verify_records(log.readable(), public_key, party))


def pull_log(
    client: NodeClient,
    public_key: Ed25519PublicKey,
    page_size: int = 0,
    fresh_head: Checkpoint | None = None,
    head_refused: str = "",
) -> PulledLog:
    """Pull a node's whole audit log over mTLS, page by page, and verify it.

    The pull stops at the size the node reported on the first page: records appended meanwhile
    (the pull's own ``rpc`` records, say) wait for the next pull. A node that stops sending
    before that size is reported by :func:`log_findings` as ``log_incomplete``; one that names
    a stored record it cannot decode is reported as ``log_invalid`` at that record.

    Args:
        client: A client to the party's node, made with the regulator's certificate; its
            ``party`` is the name the node's certificate must carry.
        public_key: The party's audit key as the regulator was given it, never the node's word.
        page_size: Records per call; 0 lets the node choose.
        fresh_head: The head the node signed for this audit just before, if any.
        head_refused: Why it refused to sign one, if it did.

    Returns:
        The log, verified with ``public_key``.

    Raises:
        RemoteError: The node refused (PERMISSION_DENIED for a certificate that is neither the
            node's operator nor a regulator).
        PeerUnavailableError: The node cannot be reached.
        BundError: The node sent records that cannot be decoded.
    """
    pulled_at = _regulator_now()
    page = client.read_audit(0, page_size)
    size, reported_key = page.size, page.audit_public_key
    records = list(page.records)
    while len(records) < size and page.unreadable is None:
        page = client.read_audit(len(records), page_size)
        if not page.records and page.unreadable is None:
            break
        records.extend(page.records)
    return make_pulled_log(
        client.party,
        records,
        public_key,
        client.address,
        size,
        reported_key,
        pulled_at,
        fresh_head,
        head_refused,
        page.unreadable,
    )


def log_findings(
    log: PulledLog,
    checkpoints: Sequence[Checkpoint] = (),
    witnessed: Sequence[WitnessedHead] = (),
    max_skew: dt.timedelta = MAX_CLOCK_SKEW,
) -> list[Finding]:
    """What is wrong with one party's log on its own: pull, key, chain, heads held, clock.

    Args:
        log: The pulled log.
        checkpoints: Checkpoints of this party's log that the regulator holds.
        witnessed: Heads of this party's log that other parties witnessed (already checked by
            :func:`judge_witnessed`). With these and the checkpoints, a log truncated, or
            rewritten and re-signed with the party's own key, is caught, naming who holds the
            contradicting head.
        max_skew: The largest difference allowed between the party's clock and the regulator's.

    Returns:
        Findings about the log, with ``job_id`` ``""``.
    """
    party, found = log.party, []

    def flag(
        kind: FindingKind, detail: str, index: int | None = None, witnesses: Sequence[str] = ()
    ) -> None:
        indexes = {} if index is None else {party: index}
        found.append(Finding(Severity.ERROR, kind, "", (party,), detail, indexes, tuple(witnesses)))

    if log.verification is None:
        flag(FindingKind.PULL_FAILED, f"{party}'s log at {log.address} was not pulled: {log.error}")
        return found
    if not log.key_matches:
        flag(
            FindingKind.KEY_MISMATCH,
            f"{party}'s node reports audit key {log.reported_key.hex()[:16]}..., not the key "
            f"{raw_key_id(log.public_key)} the regulator was given for {party}; its log was "
            "verified with the given key",
        )
    if len(log.records) < log.reported_size and log.unreadable is None:
        flag(
            FindingKind.LOG_INCOMPLETE,
            f"{party}'s node reported {log.reported_size} records but sent {len(log.records)}",
            len(log.records),
        )
    report = log.verification
    if not report.ok:
        flag(
            FindingKind.LOG_INVALID,
            f"{party}'s log fails verification at record {report.first_bad_index}: "
            f"{report.reason}; records from there on are not evidence the party signed",
            report.first_bad_index,
        )
    elif log.head_refused:
        flag(
            FindingKind.PULL_FAILED,
            f"{party}'s node refused to sign a tree head for this audit ({log.head_refused}); "
            "its log was pulled and verified, but without a fresh head a truncation since "
            "this audit cannot be caught at the next one",
        )
    found.extend(_held_head_findings(log, checkpoints, witnessed, max_skew))
    found.extend(_clock_findings(log, report.count, max_skew))
    return found


def _checkable(log: PulledLog, head: WitnessedHead, max_skew: dt.timedelta) -> bool:
    """Whether a witnessed head can be held against this pull, or is newer than it."""
    if head.head.tree_size <= len(log.records):
        return True
    if len(log.records) < log.reported_size or log.unreadable is not None:
        return False  # the regulator did not get the records it covers
    signed = _when(head.head.timestamp)
    if log.fresh_head is not None:
        fresh = _when(log.fresh_head.timestamp)
        # Signed, by the party's own clock, no earlier than the head signed for this pull.
        return not (signed is not None and fresh is not None and signed >= fresh)
    received, pulled = _when(head.received_at), _when(log.pulled_at)
    return received is None or pulled is None or received < pulled - max_skew


def _held_head_findings(
    log: PulledLog,
    checkpoints: Sequence[Checkpoint],
    witnessed: Sequence[WitnessedHead],
    max_skew: dt.timedelta,
) -> list[Finding]:
    """The log against every head held of it: the regulator's checkpoints and the witnesses'.

    Two heads of one size with different roots are an ``equivocation``; the log is then held
    to the head of each size received first, so that the rewrite which followed is named too.
    """
    party = log.party
    heads = [w for w in witnessed if w.head.party == party and _checkable(log, w, max_skew)]
    if not checkpoints and not heads:
        return []
    holders: dict[Checkpoint, list[str]] = {}
    witnesses_of: dict[Checkpoint, set[str]] = {}
    first_seen: dict[Checkpoint, dt.datetime] = {}
    for checkpoint in checkpoints:
        holders.setdefault(checkpoint, []).append("the regulator")
        first_seen[checkpoint] = _when(checkpoint.timestamp) or dt.datetime.max.replace(
            tzinfo=dt.UTC
        )
    for w in heads:
        holders.setdefault(w.head, []).append(
            f"{w.witness} (witnessed {w.received_at} by its clock)"
        )
        witnesses_of.setdefault(w.head, set()).add(w.witness)
        received = _when(w.received_at) or dt.datetime.max.replace(tzinfo=dt.UTC)
        first_seen[w.head] = min(first_seen.get(w.head, received), received)

    def check(held_heads: Iterable[Checkpoint]) -> tuple[LogFault, CheckpointReport] | None:
        try:
            report = check_log_against_checkpoints(
                log.readable(), held_heads, log.public_key, party
            )
        except AuditFormatError:
            return None  # reported as log_invalid already
        fault = report.fault
        return None if fault is None or fault is LogFault.RECORD else (fault, report)

    found = []
    result = check(holders)
    if result is not None and result[0] is LogFault.EQUIVOCATION:
        found.append(result)
        earliest: dict[int, Checkpoint] = {}
        for head in sorted(holders, key=lambda c: first_seen[c]):
            earliest.setdefault(head.tree_size, head)
        result = check(earliest.values())
    if result is not None:
        found.append(result)
    findings = []
    for fault, held in found:
        involved = held.checkpoints
        who = sorted({h for c in involved for h in holders.get(c, [])})
        index = held.first_bad_index
        detail = held.reason + (f"; held by {', '.join(who)}" if who else "")
        if fault is LogFault.REWRITTEN and index is not None:
            detail += f"; record {index} is the first one no matching head vouches for"
        findings.append(
            Finding(
                Severity.ERROR,
                _CHECKPOINT_KINDS[fault],
                "",
                (party,),
                detail,
                {} if index is None else {party: index},
                tuple(sorted({name for c in involved for name in witnesses_of.get(c, ())})),
            )
        )
    return findings


def _clock_findings(log: PulledLog, count: int, max_skew: dt.timedelta) -> list[Finding]:
    """The party's clock: monotonic in its log, and near the regulator's at the pull."""
    party, found = log.party, []
    previous: tuple[dt.datetime, AuditRecord] | None = None
    for record in log.records[:count]:
        when = _when(record.timestamp)
        if when is None:
            continue
        if previous is not None and when < previous[0]:
            found.append(
                Finding(
                    Severity.ERROR,
                    FindingKind.CLOCK_REGRESSED,
                    "",
                    (party,),
                    f"{party}'s record {record.index} is timed {record.timestamp}, before "
                    f"record {previous[1].index} ({previous[1].timestamp}): a node never writes "
                    "a time earlier than its last, so the log was altered or written by a "
                    "modified node",
                    {party: record.index},
                )
            )
            break
        previous = (when, record)
    head = log.fresh_head
    signed, pulled = (None, None) if head is None else (_when(head.timestamp), _when(log.pulled_at))
    if head is not None and signed is not None and pulled is not None:
        skew = abs(signed - pulled)
        if skew > max_skew:
            found.append(
                Finding(
                    Severity.ERROR,
                    FindingKind.CLOCK_SKEW,
                    "",
                    (party,),
                    f"{party}'s node signed its head for this audit at {head.timestamp} by its "
                    f"clock, when the regulator's clock read {log.pulled_at}: {_span(skew)} "
                    f"apart, more than the {_span(max_skew)} allowed; its record times are not "
                    "evidence of when things happened",
                )
            )
    return found


def _span(delta: dt.timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds >= 7200:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.3f} s"


def judge_witnessed(
    heads: Iterable[WitnessedHead],
    keys: Mapping[str, Ed25519PublicKey],
    max_skew: dt.timedelta = MAX_CLOCK_SKEW,
) -> tuple[list[WitnessedHead], list[Finding]]:
    """Check heads that witnesses hold: cosigned by the witness, signed by the party, in time.

    Pure. A head whose cosignature does not verify with the witness's audit key, or whose own
    signature does not verify with the party's, is left out (``witness_invalid``,
    ``checkpoint_invalid``). For each party and witness, the largest difference between a
    head's time (the party's clock) and its time of receipt (the witness's clock) beyond
    ``max_skew`` is a ``clock_skew`` naming both: one of the two clocks is wrong.

    Args:
        heads: Witnessed heads, as collected from the witnesses.
        keys: Every configured party's audit key; heads of or by other parties are ignored.
        max_skew: The largest difference allowed between two clocks.

    Returns:
        The heads that verify, and the findings.
    """
    valid: list[WitnessedHead] = []
    found: list[Finding] = []
    invalid: dict[tuple[FindingKind, str, str], int] = {}
    worst: dict[tuple[str, str], tuple[dt.timedelta, WitnessedHead, int]] = {}
    for w in heads:
        party, witness = w.head.party, w.witness
        if party not in keys or witness not in keys or party == witness:
            continue
        if not verify_cosignature(w, keys[witness]):
            kind = FindingKind.WITNESS_INVALID
        elif not verify_checkpoint(w.head, keys[party]):
            kind = FindingKind.CHECKPOINT_INVALID
        else:
            valid.append(w)
            signed, received = _when(w.head.timestamp), _when(w.received_at)
            if signed is not None and received is not None:
                skew = abs(signed - received)
                before = worst.get((party, witness))
                count = 1 + (0 if before is None else before[2])
                if before is None or skew > before[0]:
                    worst[(party, witness)] = (skew, w, count)
                else:
                    worst[(party, witness)] = (before[0], before[1], count)
            continue
        invalid[(kind, party, witness)] = invalid.get((kind, party, witness), 0) + 1
    for (kind, party, witness), count in sorted(invalid.items()):
        what = (
            "is not countersigned with its audit key"
            if kind is FindingKind.WITNESS_INVALID
            else f"is not signed with {party}'s audit key"
        )
        found.append(
            Finding(
                Severity.ERROR,
                kind,
                "",
                (witness,) if kind is FindingKind.WITNESS_INVALID else (party,),
                f"{count} head(s) of {party}'s log that {witness} says it witnessed {what}: "
                f"{witness}'s witness store was altered, or a key was replaced; they were left "
                "out",
                witnesses=(witness,),
            )
        )
    for (party, witness), (skew, w, count) in sorted(worst.items()):
        if skew > max_skew:
            found.append(
                Finding(
                    Severity.ERROR,
                    FindingKind.CLOCK_SKEW,
                    "",
                    (party, witness),
                    f"{w.describe()}: the head's time and its receipt are {_span(skew)} apart "
                    f"(the worst of {count} heads), more than the {_span(max_skew)} allowed; "
                    f"{party}'s clock or {witness}'s is wrong (the regulator's own comparison "
                    "with each party's clock says which)",
                    witnesses=(witness,),
                )
            )
    return valid, found


def unwitnessed_finding(
    log: PulledLog,
    heads: Iterable[tuple[int, str]],
    window: dt.timedelta,
    since: str,
) -> Finding | None:
    """The first record of a log that no one else held a head of in time, if it is old enough.

    A record written at ``t`` must be covered (a head of a larger size) by a head some other
    party received by ``t + window`` (the exchange interval plus the clock skew allowed): only
    then does a later rewrite of it contradict a witness. A party whose node does not exchange
    its heads (its peers are down, or it withholds them) leaves its records unprotected; this
    warns about it. Records younger than ``window`` at the pull, and records written before
    ``since`` (when witnessing began), are not judged.

    Args:
        log: The pulled log.
        heads: ``(tree_size, time received)`` of every head of this log held by a witness or
            the regulator.
        window: How soon a record must be witnessed.
        since: When witnessing began (the earliest receipt of any witnessed head).

    Returns:
        An ``unwitnessed`` warning naming the first such record, or None.
    """
    start, pulled = _when(since), _when(log.pulled_at)
    if start is None or pulled is None or log.verification is None:
        return None
    received = sorted((when, size) for size, at in heads if (when := _when(at)) is not None)
    covered, j = 0, 0
    for record in log.records[: log.verification.count]:
        written = _when(record.timestamp)
        if written is None or written < start:
            continue
        deadline = written + window
        if deadline > pulled:
            break
        while j < len(received) and received[j][0] <= deadline:
            covered = max(covered, received[j][1])
            j += 1
        if covered <= record.index:
            return Finding(
                Severity.WARNING,
                FindingKind.UNWITNESSED,
                "",
                (log.party,),
                f"{log.party}'s records from {record.index} (written {record.timestamp} by its "
                f"clock) were not witnessed within {_span(window)}: no other party held a head "
                "covering them in time, so a rewrite of them would contradict no one; check "
                f"that {log.party}'s node exchanges tree heads with its peers",
                {log.party: record.index},
            )
    return None


# -- reconciliation -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Message:
    record: AuditRecord
    direction: str
    peer: str
    tag: str
    sha256: str
    size: int


@dataclass(frozen=True)
class _Spec:
    record: AuditRecord
    requester: str
    parties: tuple[str, ...]
    receivers: tuple[str, ...]
    digest: str


def _text(record: AuditRecord, key: str) -> str | None:
    value = record.fields.get(key)
    return value if isinstance(value, str) else None


def _names(text: str) -> tuple[str, ...]:
    return tuple(name for name in text.split(",") if name)


def _when(timestamp: str) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


class _JobReconciler:
    """Reconciles the records of one job across the logs of all pulled parties."""

    def __init__(
        self,
        job_id: str,
        views: Mapping[str, Sequence[AuditRecord]],
        pulled_at: Mapping[str, dt.datetime | None],
    ) -> None:
        self.job_id = job_id
        self.views = views
        self.pulled = frozenset(pulled_at)
        self.pulled_at = pulled_at
        self.found: list[Finding] = []
        self.messages: dict[str, list[_Message]] = {}  # with other participants: reconciled
        self.recorded: dict[str, list[_Message]] = {}  # every readable one: the transcript
        self.closes: dict[str, AuditRecord] = {}
        self.started = False
        #: Per sender, the (receiver, tag, sha256) of messages it recorded and then could not
        #: deliver: a sender records before it delivers, so these have no receiver's record.
        self.undelivered: dict[str, set[tuple[str, str, str]]] = {}
        #: Parties whose last record of the job ended it before it started (a refusal).
        self.ended_unstarted: set[str] = set()

    def flag(
        self,
        kind: FindingKind,
        parties: Sequence[str],
        detail: str,
        indexes: Mapping[str, int] | None = None,
        severity: Severity = Severity.ERROR,
    ) -> None:
        self.found.append(
            Finding(severity, kind, self.job_id, tuple(parties), detail, indexes or {})
        )

    def malformed(self, party: str, record: AuditRecord, what: str) -> None:
        self.flag(
            FindingKind.MALFORMED_RECORD,
            [party],
            f"{party}'s {record.event} record {record.index} {what}; it was left out of the "
            "reconciliation",
            {party: record.index},
        )

    def run(self) -> list[Finding]:
        participants = self.check_specs()
        self.read_records(participants)
        present = self.check_presence(participants)
        self.check_messages(present)
        self.check_closes(participants, present)
        return self.found

    def check_specs(self) -> _Spec | None:
        """Every party's admission record, and that all were shown the same spec."""
        specs: dict[str, _Spec] = {}
        for party, records in self.views.items():
            record = next((r for r in records if r.event in SPEC_EVENTS), None)
            if record is None:
                self.flag(
                    FindingKind.SPEC_MISSING,
                    [party],
                    f"{party}'s log has records of the job (from record {records[0].index}) but "
                    "no job_submitted or job_proposed record saying what it agreed to",
                    {party: records[0].index},
                )
                continue
            requester, names, receivers, digest = (
                _text(record, key) for key in ("requester", "parties", "receivers", "spec_sha256")
            )
            if requester is None or names is None or receivers is None or digest is None:
                self.malformed(party, record, "lacks requester, parties, receivers or spec_sha256")
                continue
            specs[party] = _Spec(record, requester, _names(names), _names(receivers), digest)
        if len({spec.digest for spec in specs.values()}) > 1:
            shown = "; ".join(f"{p}: {s.digest[:16]}..." for p, s in sorted(specs.items()))
            self.flag(
                FindingKind.SPEC_MISMATCH,
                sorted(specs),
                f"the parties recorded different specs for the job ({shown})",
                {p: s.record.index for p, s in specs.items()},
            )
        if not specs:
            return None
        # The requester's own record (job_submitted) when its log was pulled.
        return next((s for p, s in sorted(specs.items()) if s.requester == p), specs[min(specs)])

    def read_records(self, spec: _Spec | None) -> None:
        """Collect each party's messages and closing record; flag strangers."""
        members = None if spec is None else set(spec.parties)
        for party, records in self.views.items():
            if members is not None and party not in members:
                self.flag(
                    FindingKind.UNEXPECTED_PARTY,
                    [party],
                    f"{party}'s log has records of the job (from record {records[0].index}), but "
                    f"the job's spec names only {', '.join(sorted(members))}",
                    {party: records[0].index},
                )
            messages = self.messages.setdefault(party, [])
            recorded = self.recorded.setdefault(party, [])
            states = [st for r in records if (st := state_after(r.event, r.fields)) is not None]
            started_here = any(r.event == Event.JOB_STARTED for r in records)
            if states and states[-1] is JobState.REFUSED and not started_here:
                self.ended_unstarted.add(party)
            for record in records:
                if record.event in MESSAGE_DIRECTIONS:
                    message = self.read_message(party, record)
                    if message is None:
                        continue
                    recorded.append(message)
                    if message.peer == party or (
                        members is not None and message.peer not in members
                    ):
                        self.flag(
                            FindingKind.UNEXPECTED_PARTY,
                            [party, message.peer],
                            f"{party}'s {record.event} record {record.index} (tag "
                            f"{message.tag!r}) names peer {message.peer!r}, who is not another "
                            "participant of the job",
                            {party: record.index},
                        )
                        continue
                    messages.append(message)
                elif record.event == Event.MESSAGE_UNDELIVERED:
                    peer, tag, sha256 = (_text(record, k) for k in (Key.PEER, Key.TAG, Key.SHA256))
                    if peer is not None and tag is not None and sha256 is not None:
                        self.undelivered.setdefault(party, set()).add((peer, tag, sha256))
                elif record.event == Event.JOB_STARTED:
                    self.started = True
                elif record.event == Event.JOB_CLOSED:
                    if party in self.closes:
                        self.flag(
                            FindingKind.CLOSE_DUPLICATED,
                            [party],
                            f"{party} closed the job twice (records {self.closes[party].index} "
                            f"and {record.index}); the first is reconciled",
                            {party: record.index},
                        )
                    elif _text(record, "transcript_sha256") is None:
                        self.malformed(party, record, "has no transcript_sha256")
                    else:
                        self.closes[party] = record

    def read_message(self, party: str, record: AuditRecord) -> _Message | None:
        peer, tag, sha256 = (_text(record, key) for key in ("peer", "tag", "sha256"))
        size = record.fields.get("size")
        if peer is None or tag is None or sha256 is None or type(size) is not int:
            self.malformed(party, record, "lacks a peer, tag, sha256 or integer size")
            return None
        return _Message(record, MESSAGE_DIRECTIONS[Event(record.event)], peer, tag, sha256, size)

    def check_presence(self, spec: _Spec | None) -> set[str]:
        """Who must have a record of the job; flag those whose log has none."""
        # party -> (witness, index of the witness's record, what that record shows)
        expected: dict[str, tuple[str, int, str]] = {}
        for party, records in sorted(self.views.items()):
            for record in records:
                peer = _text(record, "peer") if record.event == Event.JOB_REFUSED_BY_PEER else None
                if peer is not None:
                    expected.setdefault(peer, (party, record.index, "records its refusal"))
            for m in self.messages[party]:
                expected.setdefault(m.peer, (party, m.record.index, f"records a message {m.tag!r}"))
        if spec is not None:
            witness = min(self.views)
            index = self.views[witness][0].index
            if self.started:
                for member in spec.parties:
                    why = "names it a participant of the job, which started"
                    expected.setdefault(member, (witness, index, why))
            expected.setdefault(spec.requester, (witness, index, "names it the requester"))
        for party, (witness, index, why) in sorted(expected.items()):
            if party in self.views:
                continue
            if party in self.pulled:
                self.flag(
                    FindingKind.JOB_MISSING,
                    [party, witness],
                    f"{party}'s log has no record of the job, but {witness}'s log {why} "
                    f"(record {index})",
                    {witness: index},
                )
            else:
                self.flag(
                    FindingKind.NOT_RECONCILED,
                    [party],
                    f"{party} takes part in the job but its log was not pulled; its side of the "
                    "job is not reconciled",
                    severity=Severity.WARNING,
                )
        return set(self.views)

    def check_messages(self, present: set[str]) -> None:
        """Each message in the sender's log and the receiver's, with the same digest and size."""
        channels: dict[tuple[str, str, str], tuple[list[_Message], list[_Message]]] = {}
        for party in sorted(present):
            for m in self.messages[party]:
                sender, receiver = (party, m.peer) if m.direction == "sent" else (m.peer, party)
                sent, received = channels.setdefault((sender, receiver, m.tag), ([], []))
                (sent if m.direction == "sent" else received).append(m)
        for (sender, receiver, tag), (sent, received) in sorted(channels.items()):
            if sender not in present or receiver not in present:
                continue  # flagged as job_missing or not_reconciled already
            for s, r in zip(sent, received, strict=False):
                if (s.sha256, s.size) != (r.sha256, r.size):
                    self.flag(
                        FindingKind.DIGEST_MISMATCH,
                        [sender, receiver],
                        f"message {tag!r} from {sender} to {receiver}: {sender}'s message_sent "
                        f"(record {s.record.index}) has sha256 {s.sha256[:16]}... and {s.size} "
                        f"bytes, {receiver}'s message_received (record {r.record.index}) has "
                        f"{r.sha256[:16]}... and {r.size} bytes",
                        {sender: s.record.index, receiver: r.record.index},
                    )
            for s in sent[len(received) :]:
                if (receiver, tag, s.sha256) in self.undelivered.get(sender, set()):
                    continue  # the sender's own log says it never arrived
                outcome = self.outcome(receiver)
                severity = Severity.ERROR if outcome in _CLOSED_WELL else Severity.WARNING
                why = (
                    f"{receiver} closed the job as {outcome}, so it must have taken the message"
                    if severity is Severity.ERROR
                    else f"the job did not succeed at {receiver} ({outcome or 'not closed'}), "
                    "so it may never have taken the message"
                )
                self.flag(
                    FindingKind.MESSAGE_OMITTED,
                    [sender, receiver],
                    f"message {tag!r} from {sender} to {receiver}: {receiver}'s log has no "
                    f"message_received for {sender}'s message_sent (record {s.record.index}); "
                    f"{why}",
                    {sender: s.record.index},
                    severity,
                )
            for r in received[len(sent) :]:
                # The sender records first, but its log may have been pulled before it did.
                done = sender in self.closes or self.settled(sender, r.record.timestamp)
                self.flag(
                    FindingKind.MESSAGE_OMITTED,
                    [sender, receiver],
                    f"message {tag!r} from {sender} to {receiver}: {sender}'s log has no "
                    f"message_sent for {receiver}'s message_received (record {r.record.index})"
                    + ("" if done else f"; {sender} may not have recorded it yet: pull again"),
                    {receiver: r.record.index},
                    Severity.ERROR if done else Severity.WARNING,
                )

    def settled(self, party: str, since: str) -> bool:
        """Whether ``party``'s log was pulled more than :data:`SETTLE_TIME` after ``since``.

        Judged by the regulator's clock (when it pulled the log), never by the party's own
        record times: a party whose clock runs slow cannot keep a record it lacks unsettled.
        """
        pulled, then = self.pulled_at.get(party), _when(since)
        return pulled is not None and then is not None and pulled - then > SETTLE_TIME

    def outcome(self, party: str) -> str | None:
        close = self.closes.get(party)
        return None if close is None else _text(close, "outcome")

    def check_closes(self, spec: _Spec | None, present: set[str]) -> None:
        """Every participant closed; closes agree, countersign each other, match the messages."""
        if self.started and spec is not None:
            for party in sorted(present & set(spec.parties)):
                if party in self.closes or party in self.ended_unstarted:
                    continue  # closed, or called off here before its start reached it
                others = sorted(set(self.closes) - {party})
                if others:
                    done = all(self.settled(party, self.closes[p].timestamp) for p in others)
                    self.flag(
                        FindingKind.CLOSE_MISSING,
                        [party, *others],
                        f"{party}'s log has no job_closed record, though {', '.join(others)} "
                        "closed the job"
                        + ("" if done else f"; {party} may not have closed it yet: pull again"),
                        {p: self.closes[p].index for p in others},
                        Severity.ERROR if done else Severity.WARNING,
                    )
                else:
                    self.flag(
                        FindingKind.CLOSE_MISSING,
                        [party],
                        f"{party}'s log has no job_closed record, nor has any other party's: "
                        "the job may still be running; pull again later",
                        severity=Severity.WARNING,
                    )
        outcomes = {p: self.outcome(p) for p in sorted(self.closes)}
        if len(set(outcomes.values())) > 1:
            self.flag(
                FindingKind.OUTCOME_MISMATCH,
                sorted(outcomes),
                "the parties closed the job with different outcomes: "
                + ", ".join(f"{p} {o}" for p, o in outcomes.items()),
                {p: c.index for p, c in self.closes.items()},
                Severity.WARNING,
            )
        for party, close in sorted(self.closes.items()):
            self.check_transcript(party, close)
            self.check_countersignatures(party, close, spec)
            if spec is not None and close.fields.get("holds_result") is True:
                if party not in spec.receivers:
                    self.flag(
                        FindingKind.RESULT_OUTSIDE_RECEIVERS,
                        [party],
                        f"{party}'s job_closed (record {close.index}) says it holds the result, "
                        f"but the spec sends the result only to {', '.join(spec.receivers)}",
                        {party: close.index},
                    )

    def check_transcript(self, party: str, close: AuditRecord) -> None:
        """A party's transcript digest must be the hash of its own message records."""
        entries = [
            TranscriptEntry(m.direction, m.peer, m.tag, m.sha256, m.size)
            for m in self.recorded.get(party, [])
            if m.record.index < close.index and m.tag != CLOSE_TAG
        ]
        recorded = _text(close, "transcript_sha256")
        computed = transcript_digest(self.job_id, party, entries)
        if recorded is not None and not hmac.compare_digest(recorded, computed):
            self.flag(
                FindingKind.TRANSCRIPT_INCONSISTENT,
                [party],
                f"{party}'s job_closed (record {close.index}) reports transcript "
                f"{recorded[:16]}..., but its {len(entries)} message records of the job hash to "
                f"{computed[:16]}...: its log does not show the messages it closed the job on",
                {party: close.index},
            )

    def check_countersignatures(self, party: str, close: AuditRecord, spec: _Spec | None) -> None:
        """Each peer digest in a party's close must be the peer's own transcript digest."""
        reported = {
            key.removeprefix(PEER_TRANSCRIPT_PREFIX): value
            for key, value in close.fields.items()
            if key.startswith(PEER_TRANSCRIPT_PREFIX)
        }
        dropped = set(str(close.fields.get("dropped", "")).split(",")) - {""}
        if spec is not None and self.outcome(party) in _CLOSED_WELL:
            for peer in sorted(set(spec.parties) - {party} - set(reported)):
                if peer in dropped:  # the protocol carries on without drop-outs, by design
                    self.flag(
                        FindingKind.DROPPED_OUT,
                        [party, peer],
                        f"{party} closed the job as {self.outcome(party)} (record {close.index}) "
                        f"without {peer}, which it records as dropped out",
                        {party: close.index},
                        Severity.WARNING,
                    )
                    continue
                self.flag(
                    FindingKind.TRANSCRIPT_MISMATCH,
                    [party, peer],
                    f"{party} closed the job as {self.outcome(party)} (record {close.index}) "
                    f"without countersigning {peer}'s transcript digest",
                    {party: close.index},
                )
        for peer, digest in sorted(reported.items()):
            theirs = self.closes.get(peer)
            own = None if theirs is None else _text(theirs, "transcript_sha256")
            if theirs is None or own is None:
                continue  # no close to compare with: flagged as close_missing or not_reconciled
            if not isinstance(digest, str) or not hmac.compare_digest(digest, own):
                self.flag(
                    FindingKind.TRANSCRIPT_MISMATCH,
                    [party, peer],
                    f"{party}'s job_closed (record {close.index}) says {peer} reported transcript "
                    f"{str(digest)[:16]}..., but {peer}'s own job_closed (record {theirs.index}) "
                    f"records {own[:16]}...: one of them recorded something other than what was "
                    "exchanged",
                    {party: close.index, peer: theirs.index},
                )


def reconcile(
    logs: Mapping[str, Sequence[AuditRecord]], pulled_at: Mapping[str, str] | None = None
) -> list[Finding]:
    """Compare the logs of all parties, job by job; pure but for the default ``pulled_at``.

    For every job: each party recorded the job's spec, and the same one; no party outside the
    spec has records of it or exchanges messages in it; every party that must know the job
    (the requester; every participant once the job started; a peer that messages or refusals
    name) has records of it; every ``message_sent`` by A to B with (tag, sha256, size) appears
    as ``message_received`` from A in B's log, and the reverse; every participant of a started
    job closed it, with the same outcome; each ``peer_transcript.<p>`` in a close equals p's own
    ``transcript_sha256``, and that digest is the hash of p's own message records
    (:func:`bund.parties.jobs.transcript_digest`); only receivers hold the result.

    Logs are snapshots taken one after another, so a job may be in flight in one and finished
    in the next. A missing record that a job still running explains is a warning; it becomes
    an error once the log that lacks it was pulled more than :data:`SETTLE_TIME` after the
    evidence, by the regulator's clock, or the party closed the job without it.

    Args:
        logs: Each pulled party's records, in log order; a party missing here is not audited
            (its jobs are flagged ``not_reconciled``).
        pulled_at: When the regulator pulled each party's log, RFC 3339 UTC by the regulator's
            own clock; a party missing here, or every party when None, at the current time.

    Returns:
        Findings, job by job in the order the jobs first appear.

    >>> reconcile({"bank": [], "tax": []})
    []
    """
    by_job: dict[str, dict[str, list[AuditRecord]]] = {}
    first_seen: dict[str, str] = {}
    now = dt.datetime.now(dt.UTC)
    when = {party: _when((pulled_at or {}).get(party, "")) or now for party in logs}
    for party in sorted(logs):
        for record in logs[party]:
            if record.job_id:
                by_job.setdefault(record.job_id, {}).setdefault(party, []).append(record)
                seen = first_seen.setdefault(record.job_id, record.timestamp)
                first_seen[record.job_id] = min(seen, record.timestamp)
    found: list[Finding] = []
    for job_id in sorted(by_job, key=lambda j: (first_seen[j], j)):
        found.extend(_JobReconciler(job_id, by_job[job_id], when).run())
    return found


# -- what the report shows --------------------------------------------------------------------


@dataclass(frozen=True)
class PartyStatus:
    """One configured party's log, in a line.

    Attributes:
        party: The party.
        address: Its node's address.
        key_id: :func:`bund.parties.identity.raw_key_id` of the audit key the regulator holds.
        pulled: Whether the log was pulled.
        records: Records received.
        verified: Whether every record verified with the held key (and the node reported it).
        first_bad_index: The first record that failed verification, if any.
        checkpoints: How many of the party's checkpoints the regulator holds.
        detail: Why it failed to pull or verify; ``""`` when it verified.
        witnessed: How many heads of its log other parties witnessed (and the regulator holds).
        witnesses: Who witnessed them.
    """

    party: str
    address: str
    key_id: str
    pulled: bool
    records: int
    verified: bool
    first_bad_index: int | None
    checkpoints: int
    detail: str
    witnessed: int = 0
    witnesses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Approval:
    """A data owner's approver approving or denying a job, as that party's log records it."""

    party: str
    decision: str
    approver: str
    reason: str
    index: int
    timestamp: str


@dataclass(frozen=True)
class JobSummary:
    """A job as the pulled logs show it (spec from the requester's record when available).

    Attributes:
        job_id: The job.
        protocol: Its protocol.
        requester: Who submitted it.
        parties: Its participants.
        receivers: Who the spec sends the result to.
        purpose: The stated purpose.
        first_seen: Timestamp of its first record in any log.
        states: Each party's state of the job from its own log (``succeeded``, ``refused``...).
        transcripts: Each party's transcript digest from its ``job_closed``.
        holders: Parties whose ``job_closed`` says they hold the result.
        approvals: Approvals and denials recorded for it.
    """

    job_id: str
    protocol: str
    requester: str
    parties: tuple[str, ...]
    receivers: tuple[str, ...]
    purpose: str
    first_seen: str
    states: Mapping[str, str]
    transcripts: Mapping[str, str]
    holders: tuple[str, ...]
    approvals: tuple[Approval, ...]
    #: Why the job ended refused, failed or aborted at a party, as its log says.
    reasons: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class LoggedEvent:
    """A record the report lists as it is (``budget_charged``, ``privacy_receipt``).

    Attributes:
        party: Whose log holds it.
        job_id: The job it concerns.
        index: Its index in that log.
        timestamp: When that party recorded it.
        fields: Its fields, as recorded.
    """

    party: str
    job_id: str
    index: int
    timestamp: str
    fields: Mapping[str, JsonScalar]


@dataclass(frozen=True)
class AuditOutcome:
    """Everything one audit found, for :func:`bund.parties.report.write_report`.

    Attributes:
        generated_at: When the audit ran (RFC 3339 UTC).
        parties: Each configured party's log status.
        logs: The records pulled from each party.
        jobs: Every job seen, in the order they first appear.
        budget: Every ``budget_charged`` record, in time order.
        receipts: Every ``privacy_receipt`` record, in time order.
        findings: Everything found wrong, errors first.
    """

    generated_at: str
    parties: tuple[PartyStatus, ...]
    logs: Mapping[str, tuple[AuditRecord, ...]]
    jobs: tuple[JobSummary, ...]
    budget: tuple[LoggedEvent, ...]
    receipts: tuple[LoggedEvent, ...]
    findings: tuple[Finding, ...]

    @property
    def errors(self) -> int:
        """How many findings are errors."""
        return sum(f.severity is Severity.ERROR for f in self.findings)


#: The ends whose reason the report shows.
_ENDED_BADLY = frozenset({JobState.REFUSED, JobState.FAILED, JobState.ABORTED})


def _jobs(logs: Mapping[str, Sequence[AuditRecord]]) -> tuple[JobSummary, ...]:
    by_job: dict[str, list[tuple[str, AuditRecord]]] = {}
    for party in sorted(logs):
        for record in logs[party]:
            if record.job_id:
                by_job.setdefault(record.job_id, []).append((party, record))
    jobs = []
    for job_id, rows in by_job.items():
        specs = [r for _, r in rows if r.event in SPEC_EVENTS]
        spec = next(
            (r for r in specs if r.event == Event.JOB_SUBMITTED), specs[0] if specs else None
        )
        told = {k: "" if spec is None else _text(spec, k) or "" for k in _SPEC_FIELDS}
        states: dict[str, str] = {}
        reasons: dict[str, str] = {}
        transcripts: dict[str, str] = {}
        holders: list[str] = []
        approvals = []
        for party, r in rows:
            state = state_after(r.event, r.fields)
            if state is not None:
                states[party] = state.value.replace("_", " ")
                reasons.pop(party, None)
                if state in _ENDED_BADLY and _text(r, Key.REASON):
                    reasons[party] = _text(r, Key.REASON) or ""
            if r.event == Event.JOB_CLOSED:
                transcripts[party] = _text(r, Key.TRANSCRIPT_SHA256) or ""
                if r.fields.get(Key.HOLDS_RESULT) is True:
                    holders.append(party)
            if r.event in (Event.JOB_APPROVED, Event.JOB_DENIED):
                approvals.append(
                    Approval(
                        party,
                        "approved" if r.event == Event.JOB_APPROVED else "denied",
                        _text(r, "approver") or "",
                        _text(r, "reason") or "",
                        r.index,
                        r.timestamp,
                    )
                )
        jobs.append(
            JobSummary(
                job_id=job_id,
                protocol=told[Key.PROTOCOL],
                requester=told[Key.REQUESTER],
                parties=_names(told[Key.PARTIES]),
                receivers=_names(told[Key.RECEIVERS]),
                purpose=told[Key.PURPOSE],
                first_seen=min(r.timestamp for _, r in rows),
                states=MappingProxyType(states),
                transcripts=MappingProxyType(transcripts),
                holders=tuple(holders),
                approvals=tuple(approvals),
                reasons=MappingProxyType(reasons),
            )
        )
    return tuple(sorted(jobs, key=lambda j: (j.first_seen, j.job_id)))


def _events(logs: Mapping[str, Sequence[AuditRecord]], event: str) -> tuple[LoggedEvent, ...]:
    found = [
        LoggedEvent(party, r.job_id, r.index, r.timestamp, r.fields)
        for party in sorted(logs)
        for r in logs[party]
        if r.event == event
    ]
    return tuple(sorted(found, key=lambda e: (e.timestamp, e.party, e.index)))


def _utcnow() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def assess(
    pulled: Sequence[PulledLog],
    checkpoints: Mapping[str, Sequence[Checkpoint]] | None = None,
    generated_at: str | None = None,
    witnessed: Sequence[WitnessedHead] = (),
    findings: Sequence[Finding] = (),
    max_skew: dt.timedelta = MAX_CLOCK_SKEW,
    witness_interval: dt.timedelta = WITNESS_INTERVAL,
) -> AuditOutcome:
    """Judge pulled logs: each on its own (:func:`log_findings`), then all together.

    Pure apart from the default ``generated_at``.

    Args:
        pulled: One log per configured party, failed pulls included.
        checkpoints: Checkpoints the regulator holds, by party.
        generated_at: The audit's time; now when omitted.
        witnessed: Heads that witnesses hold of the parties' logs, already checked by
            :func:`judge_witnessed` (kept from earlier audits, and collected now).
        findings: Findings made while collecting (:func:`judge_witnessed`, a witness store
            that could not be read, a revoked certificate a party serves), reported with the rest.
        max_skew: The largest difference allowed between two parties' clocks.
        witness_interval: How often the nodes exchange tree heads: a record older than this
            (plus ``max_skew``) that no one else held a head of is an ``unwitnessed`` warning.

    Returns:
        The outcome, findings sorted errors first, then as found.
    """
    held = checkpoints or {}
    found: list[Finding] = list(findings)
    of_party: dict[str, list[WitnessedHead]] = {}
    for w in witnessed:
        of_party.setdefault(w.head.party, []).append(w)
    statuses = []
    for log in pulled:
        mine = of_party.get(log.party, [])
        own = log_findings(log, held.get(log.party, ()), mine, max_skew)
        found.extend(own)
        report = log.verification
        statuses.append(
            PartyStatus(
                party=log.party,
                address=log.address,
                key_id=raw_key_id(log.public_key),
                pulled=report is not None,
                records=len(log.records),
                verified=not own,
                first_bad_index=None if report is None else report.first_bad_index,
                checkpoints=len(held.get(log.party, ())),
                detail="; ".join(f.detail for f in own),
                witnessed=len(mine),
                witnesses=tuple(sorted({w.witness for w in mine})),
            )
        )
    receipts = [when for w in witnessed if (when := _when(w.received_at)) is not None]
    if receipts:  # witnessing runs in this federation: every party's records must be witnessed
        since = min(receipts).isoformat().replace("+00:00", "Z")
        for log in pulled:
            heads = [(w.head.tree_size, w.received_at) for w in of_party.get(log.party, [])]
            heads += [(c.tree_size, c.timestamp) for c in held.get(log.party, ())]
            late = unwitnessed_finding(log, heads, witness_interval + max_skew, since)
            if late is not None:
                found.append(late)
    readable = [log for log in pulled if log.verification is not None]
    logs = {log.party: log.records for log in readable}
    found.extend(reconcile(logs, {log.party: log.pulled_at for log in readable}))
    found.sort(key=lambda f: f.severity is not Severity.ERROR)
    return AuditOutcome(
        generated_at=generated_at or _utcnow(),
        parties=tuple(statuses),
        logs=MappingProxyType(logs),
        jobs=_jobs(logs),
        budget=_events(logs, Event.BUDGET_CHARGED),
        receipts=_events(logs, Event.PRIVACY_RECEIPT),
        findings=tuple(found),
    )


def pull_witnessed(
    client: NodeClient, after: int = 0
) -> tuple[list[WitnessedHead], int, Finding | None]:
    """Collect the heads a party's node witnessed of others, after the regulator's cursor.

    Args:
        client: A client to the witness's node, made with the regulator's certificate.
        after: The last ``seq`` collected from it at an earlier audit (0 for none).

    Returns:
        The heads (only those in the witness's own name), the new cursor, and a finding when
        the store holds fewer heads than the cursor (it was reset or replaced: collected again
        from the start), when it names another witness, or when it could not be read.
    """
    witness = client.party
    note = None
    try:
        page = client.witnessed_heads(after)
        if page.last_seq < after:
            note = Finding(
                Severity.ERROR,
                FindingKind.WITNESS_INVALID,
                "",
                (witness,),
                f"{witness}'s witness store holds heads up to seq {page.last_seq}, but gave "
                f"heads up to {after} at an earlier audit: it was reset or replaced; the heads "
                "kept from earlier audits are still checked. Ask why",
                witnesses=(witness,),
            )
            after = 0
            page = client.witnessed_heads(0)
        collected = list(page.heads)
        while collected and collected[-1][0] < page.last_seq:
            page = client.witnessed_heads(collected[-1][0])
            if not page.heads:
                break
            collected.extend(page.heads)
    except BundError as exc:
        return (
            [],
            after,
            Finding(
                Severity.WARNING,
                FindingKind.WITNESS_INVALID,
                "",
                (witness,),
                f"the heads {witness} witnessed of other parties could not be collected: {exc}; "
                "the other parties' logs were held to the heads collected earlier only",
                witnesses=(witness,),
            ),
        )
    heads = [h for _, h in collected if h.witness == witness]
    if len(heads) < len(collected) and note is None:
        note = Finding(
            Severity.ERROR,
            FindingKind.WITNESS_INVALID,
            "",
            (witness,),
            f"{witness}'s node served {len(collected) - len(heads)} head(s) in another "
            "witness's name; they were left out",
            witnesses=(witness,),
        )
    return heads, max([after, *(seq for seq, _ in collected)]), note


def audit_federation(
    config: RegulatorConfig,
    checkpoints: Mapping[str, Sequence[Checkpoint]] | None = None,
) -> AuditOutcome:
    """Pull every configured party's log over mTLS, verify each, and reconcile them all.

    A party that cannot be pulled is a ``pull_failed`` finding; the others are still audited.
    The certificate each party's node serves is checked against the federation's revocation
    list (``certificate_revoked``).
    From every party it also collects the heads its node witnessed of the others
    (:func:`pull_witnessed`) and holds each party's log to every head anyone holds of it.

    Args:
        config: The regulator's configuration.
        checkpoints: Checkpoints of each party's log that the regulator holds. When None, they
            come from ``config.state_dir``: every checkpoint kept by earlier audits, plus a
            fresh one that each party signs now (asked for before its log is pulled, so the
            pulled log covers it) and that is kept for the next audit; and so do the witnessed
            heads: those kept by earlier audits, plus those collected now (kept too).

    Returns:
        The outcome, ready for :func:`bund.parties.report.write_report`.
    """
    collect = checkpoints is None
    state = config.state_dir if collect else None
    held: dict[str, list[Checkpoint]] = (
        load_held_checkpoints(state)
        if state is not None
        else {p: list(cps) for p, cps in (checkpoints or {}).items()}
    )
    kept = load_witnessed(state) if state is not None else []
    cursors = load_witness_cursors(state) if state is not None else {}
    collected: list[WitnessedHead] = []
    notes: list[Finding] = []
    pulled = []
    found: list[Finding] = []
    for party in config.parties.values():
        if config.revocations is not None:
            try:
                pem = served_certificate(party.address, party.name, config.tls, config.timeout_s)
                found.extend(certificate_findings(party.name, pem, config.revocations))
            except (OSError, BundError):
                pass  # an unreachable node is a pull_failed finding below
        client = NodeClient(
            party.address, party.name, config.tls, config.max_message_bytes, config.timeout_s
        )
        try:
            with client:
                fresh, refused = None, ""
                if collect:
                    try:
                        fresh = client.checkpoint()
                    except RemoteError as exc:  # the log is still pulled: it may say why
                        refused = exc.details
                    else:
                        held.setdefault(party.name, []).append(fresh)
                        if state is not None:
                            keep_checkpoint(state, fresh)
                pulled.append(pull_log(client, party.audit_public_key, 0, fresh, refused))
                heads, cursors[party.name], note = pull_witnessed(
                    client, cursors.get(party.name, 0)
                )
                collected.extend(heads)
                notes.extend([] if note is None else [note])
        except BundError as exc:
            pulled.append(
                PulledLog(
                    party.name, party.address, party.audit_public_key, (), 0, b"", None, str(exc)
                )
            )
    known = set(kept)
    keys = {name: p.audit_public_key for name, p in config.parties.items()}
    valid, judged = judge_witnessed(
        [h for h in collected if h not in known], keys, config.max_clock_skew
    )
    if state is not None:
        keep_witnessed(state, valid)
        keep_witness_cursors(state, cursors)
    return assess(
        pulled,
        held,
        witnessed=[*kept, *valid],
        findings=[*found, *notes, *judged],
        max_skew=config.max_clock_skew,
        witness_interval=config.witness_interval,
    )


def report_command(config: Path, out: Path) -> int:
    """``bund audit report``: audit every party, print a summary, write the HTML report.

    Args:
        config: ``regulator.toml``.
        out: Where to write the report.

    Returns:
        0 when nothing is wrong, 1 when any finding is an error, 2 when the audit could not
        run (configuration, or the report could not be written).
    """
    from bund.parties.report import write_report  # the report module renders this module's types

    console, err = Console(), Console(stderr=True)
    try:
        outcome = audit_federation(load_regulator_config(config))
        write_report(outcome, out)
    except (BundError, OSError) as exc:
        err.print(Text.assemble(("error: ", "bold red"), str(exc)))
        return 2
    table = Table(title=f"Audit of {len(outcome.parties)} parties, {len(outcome.jobs)} jobs")
    for column in ("party", "records", "log", "findings"):
        table.add_column(column)
    for status in outcome.parties:
        mine = sum(status.party in f.parties for f in outcome.findings)
        state = ("verified", "green") if status.verified else ("NOT VERIFIED", "bold red")
        table.add_row(Text(status.party), str(status.records), Text(*state), str(mine))
    console.print(table)
    for finding in outcome.findings:
        style = "red" if finding.severity is Severity.ERROR else "yellow"
        job = f" job {finding.job_id}" if finding.job_id else ""
        console.print(
            Text.assemble((f"{finding.severity}: {finding.kind}{job}: ", style), finding.detail)
        )
    warnings = len(outcome.findings) - outcome.errors
    console.print(Text(f"{outcome.errors} errors, {warnings} warnings; report written to {out}"))
    return 1 if outcome.errors else 0
