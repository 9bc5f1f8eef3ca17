"""Running this node's role of a job: its context, the protocol call, the closing, the result.

A role runs once a job is RUNNING here. The runner builds the role's ``JobContext``, checks that
the dataset and code are still those the job was admitted on, calls the protocol, then closes the
job with every peer: each party sends the others the digest of its transcript under
:data:`~bund.parties.lifecycle.events.CLOSE_TAG`, through the same context and the same recording
path as every protocol message, and records the digests it received (a countersignature). Only
then are the privacy receipt, the closing record and the result written, in that order.

A fault (a silent peer, a missed deadline) interrupts a resumable protocol's job instead of
failing it; the liveness monitor resumes it once the peers answer again.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bund.compute.canonical import canonical_json
from bund.compute.dp.budget import Budget, format_rational
from bund.compute.errors import BundError
from bund.compute.executor import Executor
from bund.parties.approvals import ApprovalRequest
from bund.parties.audit import AuditStoreUnavailableError
from bund.parties.data import DatasetError, Table
from bund.parties.errors import JobStateError, PeerUnavailableError, UnknownJobError
from bund.parties.jobs import (
    AuditSink,
    JobSpec,
    JsonScalar,
    PriorResultError,
    ProtocolDef,
    Result,
    RoleContext,
    TranscriptEntry,
)
from bund.parties.ledger import BudgetExhaustedError, BudgetLedger
from bund.parties.lifecycle.admission import Admission
from bund.parties.lifecycle.events import (
    CLOSE_TAG,
    PEER_TRANSCRIPT_PREFIX,
    PROTOCOL_PREFIX,
    Event,
    Key,
)
from bund.parties.lifecycle.states import IllegalTransitionError, JobState, can_move, is_terminal
from bund.parties.lifecycle.store import JobStore
from bund.parties.resume import ResumeStore
from bund.parties.transport import (
    JobAbortedError,
    JobInterruptedError,
    Mailbox,
    PeerTimeoutError,
    Transport,
)

log = logging.getLogger("bund.jobs")

#: Faults after which a job is interrupted (resumable) rather than failed.
FAULTS = (JobInterruptedError, PeerTimeoutError, PeerUnavailableError)
#: Largest closing message accepted: a party name and a hex digest, as compact JSON.
MAX_CLOSING_BYTES = 512


def encode_closing(party: str, transcript: str) -> bytes:
    """The closing message: this party's name and its transcript digest (canonical JSON)."""
    return canonical_json({"party": party, "transcript_sha256": transcript})


def decode_closing(payload: bytes, peer: str) -> str:
    """The transcript digest in ``peer``'s closing message; ``JobStateError`` if malformed.

    The size is checked before parsing, so no nesting or length can cost more than a glance.
    """
    try:
        if len(payload) > MAX_CLOSING_BYTES:
            raise ValueError
        doc = json.loads(payload)
        value = doc["transcript_sha256"]
        if not isinstance(value, str) or len(value) != 64:
            raise ValueError
        int(value, 16)
    except (ValueError, KeyError, TypeError, RecursionError):
        raise JobStateError(f"{peer} sent a malformed closing message") from None
    return value


def receipt_json(receipt: Mapping[str, JsonScalar]) -> bytes:
    """The ``receipt.json`` a receiver downloads: the canonical bytes of the signed record's fields.

    So a receiver can check the file against the ``privacy_receipt`` record of the audit log.
    """
    return canonical_json(dict(receipt))


@dataclass(frozen=True)
class Move:
    """A move of a job's state and its record, kept until the audit log can take the record."""

    job_id: str
    state: JobState
    event: Event
    fields: Mapping[str, JsonScalar]
    error: str

    def write(self, store: JobStore) -> bool:
        """Make the move, recording it first; False (nothing done) once it no longer applies.

        The store checks the move again under its lock: an abort that lands between the two
        checks ends the job first, and this move no longer applies.
        """
        if not can_move(store.get(self.job_id).state, self.state):
            return False
        try:
            store.transition(self.job_id, self.state, self.event, self.fields, error=self.error)
        except IllegalTransitionError:
            return False
        return True


class LivenessHooks:
    """What the runner tells the liveness monitor and asks it (see ``lifecycle.liveness``)."""

    def role_started(self, job_id: str, parties: tuple[str, ...]) -> None:
        """A role began (or resumed) here: watch its peers."""

    def role_ended(self, job_id: str, state: JobState) -> None:
        """A role stopped here, leaving the job in ``state``."""

    def alive(self, job_id: str, peer: str) -> bool:
        """Whether ``peer`` answered a heartbeat of the job recently."""
        return True

    def closing_patience(self, job_id: str, peer: str, dropouts: frozenset[str]) -> float | None:
        """How long to wait for ``peer``'s closing message (None: the receive timeout)."""
        return None

    def interrupted(self, job_id: str) -> None:
        """A fault interrupted the job here: resume it once every peer answers again."""

    def move_later(self, move: Move) -> None:
        """A move could not be recorded (the audit store refused): make it once it can be."""
        raise AuditStoreUnavailableError(f"job {move.job_id}: nothing can record its move")


class _Recorder:
    """A role's ``MessageSink``: messages to the transcript and the audit log, progress."""

    def __init__(self, audit: AuditSink, store: JobStore, resume: ResumeStore) -> None:
        self._audit = audit
        self._store = store
        self._resume = resume

    def message(
        self,
        job_id: str,
        direction: str,
        peer: str,
        tag: str,
        sha256: str,
        size: int,
        in_transcript: bool = True,
    ) -> None:
        if in_transcript:
            entry = TranscriptEntry(direction, peer, tag, sha256, size)
            self._resume.add_transcript(job_id, entry)
        event = Event.MESSAGE_SENT if direction == "sent" else Event.MESSAGE_RECEIVED
        self._audit.append(
            event, job_id, {Key.PEER: peer, Key.TAG: tag, Key.SHA256: sha256, Key.SIZE: size}
        )

    def replayed(
        self, job_id: str, direction: str, peer: str, tag: str, sha256: str, size: int
    ) -> None:
        self._audit.append(
            Event.MESSAGE_REPLAYED,
            job_id,
            {
                Key.DIRECTION: direction,
                Key.PEER: peer,
                Key.TAG: tag,
                Key.SHA256: sha256,
                Key.SIZE: size,
            },
        )

    def undelivered(self, job_id: str, peer: str, tag: str, sha256: str, size: int) -> None:
        fields: dict[str, JsonScalar] = {
            Key.PEER: peer,
            Key.TAG: tag,
            Key.SHA256: sha256,
            Key.SIZE: size,
        }
        try:
            self._audit.append(Event.MESSAGE_UNDELIVERED, job_id, fields)
        except BundError:  # the delivery's own error is what the role must see
            log.exception("job %s: could not record an undelivered message", job_id)

    def record(self, job_id: str, event: str, fields: Mapping[str, JsonScalar]) -> None:
        self._audit.append(f"{PROTOCOL_PREFIX}{event}", job_id, dict(fields))

    def progress(self, job_id: str, phase: str, done: int, total: int) -> None:
        self._store.progress(job_id, phase, done, total)


@dataclass(frozen=True)
class RunnerPorts:
    """What the runner reaches: this node's stores, mailbox, peers and kernels."""

    audit: AuditSink
    store: JobStore
    resume: ResumeStore
    mailbox: Mailbox
    peers: Transport
    ledger: BudgetLedger
    executor: Executor
    liveness: LivenessHooks
    #: Tell every other participant that the job is off (logs, never raises).
    abort_peers: Callable[[JobSpec, str], None]
    #: The role ended with the job closed here (the node exchanges tree heads; never raises).
    job_closed: Callable[[JobSpec], None] = lambda spec: None


class RoleRunner:
    """Runs this node's role of each job it takes part in, at most once at a time per job."""

    def __init__(
        self,
        party: str,
        admission: Admission,
        ports: RunnerPorts,
        recv_timeout: float,
    ) -> None:
        self.party = party
        self._admission = admission
        self._p = ports
        self._recv_timeout = recv_timeout
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)
        self._running: set[str] = set()

    def wait_idle(self, job_id: str, timeout: float) -> bool:
        """Wait until no role of ``job_id`` runs here; False if one still does after ``timeout``."""
        with self._ended:
            return self._ended.wait_for(lambda: job_id not in self._running, timeout)

    def claim(self, job_id: str) -> bool:
        """Mark the job's role as running here before it runs; False if it already is."""
        with self._lock:
            if job_id in self._running:
                return False
            self._running.add(job_id)
            return True

    def launch(self, spec: JobSpec, submit: Callable[..., object], resumed: bool = False) -> None:
        """Claim the role now and run it through ``submit`` (the node's job pool).

        Claimed before it is queued, so a second start or resume meanwhile is a no-op and
        :meth:`wait_idle` sees a queued role as running.
        """
        if not self.claim(spec.job_id):
            return
        try:
            submit(self.run_claimed, spec, resumed)
        except BaseException:
            self.release(spec.job_id)
            raise

    def release(self, job_id: str) -> None:
        """Give up a claim whose role will not run after all (its start failed)."""
        with self._ended:
            self._running.discard(job_id)
            self._ended.notify_all()

    def run_claimed(self, spec: JobSpec, resumed: bool = False) -> None:
        """Run the role in this thread (from its resume states when ``resumed``); it is claimed."""
        job_id = spec.job_id
        self._p.liveness.role_started(job_id, spec.parties)
        ctx = self._context(spec, resumed)
        try:
            definition = self._admission.protocols[spec.protocol]
            request = self._admission.recheck(spec, self._p.store.admitted(spec.job_id))
            if request is not None and not definition.pays_as_it_goes:
                # Out of the reservation made at acceptance; once, however often it resumes.
                self._p.ledger.charge(spec.job_id, request.dataset, request.cost)
            result = definition.roles[spec.participant(self.party).role](ctx)
            if result is not None and self.party not in spec.receivers:
                raise RuntimeError(f"protocol {spec.protocol} produced a result for a non-receiver")
            transcript = ctx.seal_transcript()
            peer_digests = self._exchange_closing(
                ctx, transcript, definition.dropouts(spec, self.party)
            )
            receipt = self._receipt(spec, definition, request, transcript, ctx.quality)
        except Exception as exc:
            self._fail(spec, ctx, exc)
        else:
            self._succeed(spec, ctx, result, receipt, peer_digests)
        finally:
            self._p.mailbox.forget(job_id)
            state = self._p.store.get(job_id).state
            self._p.liveness.role_ended(job_id, state)
            self.release(job_id)
            if is_terminal(state):
                self._p.job_closed(spec)

    def _context(self, spec: JobSpec, resumed: bool) -> RoleContext:
        job_id = spec.job_id
        loader = self._admission.table_loader(spec.participant(self.party).dataset)

        def table() -> Table:
            if loader is None:
                raise DatasetError(f"{self.party} brings no dataset to job {job_id}")
            return loader()

        return RoleContext(
            spec,
            self.party,
            self._p.peers,
            self._p.mailbox,
            table,
            self._admission.policy.limits,
            _Recorder(self._p.audit, self._p.store, self._p.resume),
            self._recv_timeout,
            states=self._p.resume,
            prior_results=self._prior_result,
            charge=functools.partial(self._charge_part, spec),
            executor=self._p.executor,
            transcript=self._p.resume.transcript(job_id) if resumed else (),
            alive=functools.partial(self._p.liveness.alive, job_id),
        )

    def _exchange_closing(
        self, ctx: RoleContext, transcript: str, dropouts: frozenset[str]
    ) -> dict[str, str]:
        """Send our transcript digest to each peer and collect theirs (countersigned in our log).

        Peers in ``dropouts`` (the role carried on without them) are sent the digest if they are
        reachable and waited for briefly when silent; the others must answer.
        """
        spec = ctx.spec
        payload = encode_closing(self.party, transcript)
        others = [p for p in spec.parties if p != self.party]
        for peer in others:
            try:
                ctx.send(peer, CLOSE_TAG, payload)
            except BundError:
                if peer not in dropouts:
                    raise
        digests: dict[str, str] = {}
        for peer in others:
            patience = self._p.liveness.closing_patience(spec.job_id, peer, dropouts)
            try:
                raw = ctx.recv(peer, CLOSE_TAG, timeout=patience)
            except PeerTimeoutError:
                if peer not in dropouts:
                    raise
                continue
            digests[peer] = decode_closing(raw, peer)
        return digests

    def _succeed(
        self,
        spec: JobSpec,
        ctx: RoleContext,
        result: Result | None,
        receipt: Mapping[str, JsonScalar],
        peer_digests: Mapping[str, str],
    ) -> None:
        """The closing records first, then the result and the state, in one step.

        A standing contract's roles only set it up: it closes their exchange the same way, and
        then stands SERVING with the resume states its roles saved (its masking keys).
        """
        job_id = spec.job_id
        transcript = str(receipt["transcript_sha256"])
        standing = self._admission.protocols[spec.protocol].standing
        state = JobState.SERVING if standing else JobState.SUCCEEDED
        fields: dict[str, JsonScalar] = {
            Key.OUTCOME: state.value,
            Key.TRANSCRIPT_SHA256: transcript,
            Key.MESSAGES: len(ctx.transcript),
            Key.RESULT_TO: ",".join(spec.receivers),
            Key.HOLDS_RESULT: result is not None,
        }
        fields.update({f"{PEER_TRANSCRIPT_PREFIX}{p}": d for p, d in sorted(peer_digests.items())})
        dropped = sorted(set(spec.parties) - {self.party} - set(peer_digests))
        if dropped:
            fields[Key.DROPPED] = ",".join(dropped)
        stored = None
        if result is not None:
            stored = Result(
                result.summary,
                {**result.artifacts, "receipt.json": receipt_json(receipt)},
                result.files,
            )
        try:
            self._p.store.record(job_id, Event.PRIVACY_RECEIPT, receipt)
            self._p.store.transition(
                job_id, state, Event.JOB_CLOSED, fields, transcript=transcript, result=stored
            )
        except Exception as exc:  # noqa: BLE001 - cancelled meanwhile, or the stores failed
            self._fail(spec, ctx, exc)
            return
        if not standing:
            self._p.resume.forget(job_id)

    def _fail(self, spec: JobSpec, ctx: RoleContext, exc: Exception) -> None:
        job_id = spec.job_id
        current = self._p.store.get(job_id).state
        definition = self._admission.protocols[spec.protocol]
        if isinstance(exc, FAULTS) and current in (JobState.RUNNING, JobState.INTERRUPTED):
            if definition.resumable:
                self._interrupt(spec, ctx, current, str(exc))
                return
            exc = JobStateError(f"{exc} ({spec.protocol} cannot resume: submit the job again)")
        self._p.resume.forget(job_id)
        if isinstance(exc, IllegalTransitionError):
            exc = JobAbortedError(f"job {job_id} ended here while its role finished: {exc}")
        if isinstance(exc, BundError):
            reason = str(exc)
        else:
            log.exception("job %s: %s role crashed", job_id, self.party)
            reason = (
                f"internal error in {self.party}'s role; its operator can find it in the node log"
            )
        aborted = isinstance(exc, JobAbortedError)
        state = JobState.ABORTED if aborted else JobState.FAILED
        fields: dict[str, JsonScalar] = {
            Key.OUTCOME: current.value if is_terminal(current) else state.value,
            Key.REASON: reason[:500],
            Key.TRANSCRIPT_SHA256: ctx.transcript_digest(),
            Key.MESSAGES: len(ctx.transcript),
        }
        move = Move(job_id, state, Event.JOB_CLOSED, fields, reason)
        try:
            if is_terminal(current) or not move.write(self._p.store):
                # Ended here already (a cancel, or a peer's abort that landed meanwhile): the
                # role's close is still recorded, with the state the job ended in.
                ended = self._p.store.get(job_id).state
                self._p.store.record(job_id, Event.JOB_CLOSED, {**fields, Key.OUTCOME: ended.value})
        except BundError:
            log.exception("job %s: could not record its end at %s; retrying", job_id, self.party)
            if not is_terminal(current):
                self._p.liveness.move_later(move)
        if not aborted:
            self._p.abort_peers(spec, f"{self.party} failed: {reason}")

    def _interrupt(self, spec: JobSpec, ctx: RoleContext, current: JobState, reason: str) -> None:
        """A fault stopped the role: keep its resume states and inbox, so the job can resume."""
        fields: dict[str, JsonScalar] = {
            Key.REASON: reason[:500],
            Key.TRANSCRIPT_SHA256: ctx.transcript_digest(),
            Key.MESSAGES: len(ctx.transcript),
        }
        job_id = spec.job_id
        log.warning("job %s interrupted at %s: %s", job_id, self.party, reason)
        move = Move(job_id, JobState.INTERRUPTED, Event.JOB_INTERRUPTED, fields, reason)
        try:
            if current is JobState.RUNNING:
                move.write(self._p.store)
            else:
                self._p.store.record(job_id, Event.JOB_INTERRUPTED, fields)
        except BundError:
            log.exception("job %s: could not record its interruption; retrying", job_id)
            self._p.liveness.move_later(move)
            return
        self._p.liveness.interrupted(job_id)

    def _charge_part(self, spec: JobSpec, part: str, cost: Budget) -> None:
        """Charge this party's dataset for one part of a running job (a training round)."""
        dataset = spec.participant(self.party).dataset
        if dataset is None:
            raise BudgetExhaustedError(f"{self.party} brings no dataset to charge in this job")
        self._p.ledger.charge(spec.job_id, dataset, cost, part)

    def _prior_result(self, job_id: str, protocol: str) -> Result:
        """This node's own result of an earlier job that succeeded here with ``protocol``."""
        try:
            status = self._p.store.get(job_id)
        except UnknownJobError:
            status = None
        result = self._p.store.load_full_result(job_id) if status is not None else None
        if (
            status is None
            or result is None
            or status.state is not JobState.SUCCEEDED
            or status.spec.protocol != protocol
        ):
            raise PriorResultError(
                f"{self.party} holds no result of a succeeded {protocol} job {job_id}"
            )
        return result

    def _receipt(
        self,
        spec: JobSpec,
        definition: ProtocolDef,
        request: ApprovalRequest | None,
        transcript: str,
        quality: Mapping[str, int],
    ) -> dict[str, JsonScalar]:
        """This party's privacy receipt: protocol, crypto, what each learned, budget, digest.

        And the data-quality counts its role noted (``quality.<name>``): this party's own
        receipt is the one place they go, since a peer must not learn them.
        """
        receipt: dict[str, JsonScalar] = {
            "protocol": spec.protocol,
            "protocol_version": definition.version,
            "crypto": definition.description,
            "code_version": self._admission.code_version,
            "spec_sha256": spec.digest(),
            "result_to": ",".join(spec.receivers),
            "transcript_sha256": transcript,
        }
        receipt.update(
            {f"learned.{p}": what for p, what in sorted(definition.learns(spec).items())}
        )
        if request is not None:
            receipt.update(
                dataset=request.dataset,
                dataset_version=request.dataset_version,
                level=request.level,
                records=self._admission.table(request.dataset).num_rows,
                epsilon=format_rational(request.cost.epsilon),
                delta=format_rational(request.cost.delta),
            )
        receipt.update({f"quality.{name}": count for name, count in sorted(quality.items())})
        return receipt
