"""The face of the lifecycle that the RPC servicers call: one method per request a node takes.

Each method checks who may ask (the node's own operator, the job's requester, a participant),
then hands the work to the part of the lifecycle that owns it: admission judges, the store moves
the job's state, the coordinator brings a submitted job to its start, the runner runs a role,
liveness watches and heals. Nothing here blocks on a peer in the caller's thread: proposals, starts
and roles run on the node's job pool.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bund.compute.errors import BundError
from bund.compute.executor import Executor, InlineExecutor
from bund.parties.approvals import ApprovalRequest
from bund.parties.data import Table
from bund.parties.errors import JobStateError, NotAuthorizedError
from bund.parties.jobs import (
    AuditSink,
    InvalidJobSpecError,
    JobSpec,
    JsonScalar,
    ProtocolDef,
    new_job_id,
)
from bund.parties.ledger import BudgetLedger
from bund.parties.lifecycle.admission import Admission
from bund.parties.lifecycle.coordinator import Coordinator
from bund.parties.lifecycle.events import CLOSE_TAG, Event, Key
from bund.parties.lifecycle.liveness import Liveness, LivenessTiming
from bund.parties.lifecycle.runner import MAX_CLOSING_BYTES, RoleRunner, RunnerPorts
from bund.parties.lifecycle.states import (
    NOT_STARTED,
    IllegalTransitionError,
    JobState,
    JobStatus,
    PartyView,
    is_resumable,
    is_terminal,
)
from bund.parties.lifecycle.store import JobNote, JobStore, ResultInfo
from bund.parties.lifecycle.watch import Watches
from bund.parties.policy import Policy, PolicyFileError
from bund.parties.resume import ResumeStore
from bund.parties.transport import (
    EquivocationError,
    JobAbortedError,
    Mailbox,
    MessagePlan,
    Transport,
    digest,
    envelope_digest,
)

log = logging.getLogger("bund.jobs")


class PeerControl(Transport, Protocol):
    """Calls to other nodes that the job lifecycle makes (``parties.client`` implements it)."""

    def propose(self, to: str, spec: JobSpec) -> tuple[bool, str]:
        """Ask ``to`` to accept ``spec``; return (accepted, reason)."""
        ...

    def start(self, to: str, job_id: str) -> None:
        """Tell ``to`` that every participant accepted and it may run its role."""
        ...

    def abort(self, to: str, job_id: str, reason: str) -> None:
        """Tell ``to`` that the job is off."""
        ...

    def status(self, to: str, job_id: str, timeout: float | None = None) -> JobStatus:
        """``to``'s view of a job (participants may read each other's status)."""
        ...

    def resume(self, to: str, job_id: str) -> None:
        """Ask ``to`` to resume its role of an interrupted job."""
        ...

    def notify(self, to: str, job_id: str) -> None:
        """Tell the requester ``to`` that this node's answer to a job changed (a wake-up)."""
        ...


@dataclass(frozen=True)
class LifecycleTiming:
    """How long a node waits for what, and how many jobs it runs at once."""

    recv_timeout: float = 300.0
    approval_timeout: float = 86_400.0
    heartbeat_interval: float = 5.0
    peer_silence: float = 60.0
    job_deadline: float = 7 * 86_400.0
    unstarted_expiry: float = 90_000.0
    max_workers: int = 16
    #: The requester reads its participants' answers this often when no push arrives.
    fallback_poll: float = 5.0
    #: Open job watches (``WatchJob``): per caller, in all, and the longest one, in seconds.
    watch_per_caller: int = 8
    watch_total: int = 16
    watch_longest: float = 300.0


@dataclass(frozen=True)
class NodeStores:
    """What a node keeps on disk for its jobs: the audit log, jobs, resume states, budgets."""

    audit: AuditSink
    jobs: JobStore
    resume: ResumeStore
    ledger: BudgetLedger


class JobManager:
    """Runs the lifecycle of every job this node takes part in.

    Args:
        party: This node's party.
        protocols: The protocols this node runs, by name.
        policy: This node's policy.
        tables: A loader per catalogued dataset.
        stores: The audit log, job store, resume store and ledger.
        mailbox: Where peers' messages wait for their roles.
        peers: Calls to the other nodes.
        approvers: This node's approvers by name, each with their public key.
        code_version: The running code's version.
        timing: Timeouts, heartbeats and pool size.
        executor: Where heavy kernel batches run (inline by default).
        on_job_closed: Called when this node's role of a job ends with the job closed (the node
            exchanges tree heads with the job's peers); must not raise.
    """

    def __init__(
        self,
        party: str,
        protocols: Mapping[str, ProtocolDef],
        policy: Policy,
        tables: Mapping[str, Callable[[], Table]],
        stores: NodeStores,
        mailbox: Mailbox,
        peers: PeerControl,
        approvers: Mapping[str, Ed25519PublicKey],
        code_version: str,
        timing: LifecycleTiming = LifecycleTiming(),
        executor: Executor | None = None,
        on_job_closed: Callable[[JobSpec], None] = lambda spec: None,
    ) -> None:
        self.party = party
        self.audit = stores.audit
        self.store = stores.jobs
        self.resume = stores.resume
        self.ledger = stores.ledger
        self.mailbox = mailbox
        self.peers = peers
        self.executor = executor if executor is not None else InlineExecutor()
        self.admission = Admission(
            party, protocols, policy, tables, stores.ledger, approvers, code_version
        )
        self._pool = ThreadPoolExecutor(  # named by party: nodes may share a process
            max_workers=timing.max_workers, thread_name_prefix=f"bund-job-{party}"
        )
        self.liveness = Liveness(
            party,
            protocols,
            self.store,
            mailbox,
            peers,
            self.resume_job,
            self._abort_peers,
            self.resume,
            LivenessTiming(
                timing.heartbeat_interval,
                timing.peer_silence,
                timing.job_deadline,
                timing.unstarted_expiry,
            ),
        )
        self.runner = RoleRunner(
            party,
            self.admission,
            RunnerPorts(
                audit=self.audit,
                store=self.store,
                resume=self.resume,
                mailbox=mailbox,
                peers=peers,
                ledger=self.ledger,
                executor=self.executor,
                liveness=self.liveness,
                abort_peers=self._abort_peers,
                job_closed=on_job_closed,
            ),
            timing.recv_timeout,
        )
        self.store.add_listener(self._release_when_ended)
        self.coordinator = Coordinator(
            party,
            peers,
            self.store,
            self._admit_own,
            self.runner,
            self._abort_peer,
            self.liveness.move_later,
            timing.approval_timeout,
            timing.fallback_poll,
        )
        self.watches = Watches(
            self.store, timing.watch_per_caller, timing.watch_total, timing.watch_longest
        )
        self._notices = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bund-notify")
        self.store.add_listener(self._wake_coordinator)
        self.store.add_observer(self._tell_requester)

    def _wake_coordinator(self, status: JobStatus) -> None:
        """A job moved here (an abort, a cancel, this node's own approval): re-read its answers."""
        self.coordinator.wake(status.spec.job_id)

    def _tell_requester(self, note: JobNote) -> None:
        """Push this node's changed answer to the job's requester (``NotifyJob``), off-thread.

        Sent after an approval that leaves the quorum short, and after the job was accepted
        or refused following an approval wait: the answers the requester waits on. An answer
        given in the proposal's reply needs no push, and a denial tells the requester itself
        (``AbortJob``). A push that fails is logged: the requester's fallback poll reads it.
        """
        status, event = note.status, note.event
        requester = status.spec.requester
        if requester == self.party or not status.approved_by:
            return
        quorum = note.fields.get("quorum")
        partial = event is Event.JOB_APPROVED and (
            isinstance(quorum, int) and len(status.approved_by) < quorum
        )
        if partial or event in (Event.JOB_ACCEPTED, Event.JOB_REFUSED):
            self._notices.submit(self._notify_requester, requester, status.spec.job_id)

    def _notify_requester(self, requester: str, job_id: str) -> None:
        try:
            self.peers.notify(requester, job_id)
        except BundError as exc:
            log.info("could not tell %s about job %s (its poll will): %s", requester, job_id, exc)

    def _release_when_ended(self, status: JobStatus) -> None:
        """Release what an ended job still holds of the budget (all of it if it never started)."""
        if is_terminal(status.state):
            self.ledger.release(status.spec.job_id, f"the job {status.state.value}")

    def reload(
        self,
        policy: Policy,
        tables: Mapping[str, Callable[[], Table]],
        approvers: Mapping[str, Ed25519PublicKey],
        digests: Mapping[str, str],
    ) -> None:
        """Take a new policy and dataset catalogue (validated by the caller) without a restart.

        Refused, with the old policy kept, when a dataset's new budget is below what is spent
        and reserved on it. Jobs already accepted keep what they were admitted on: their
        reservation, and the approval payload their start is checked against. The reload is
        audited (``policy_reloaded``) with the digests of the files it read, before it applies.

        Raises:
            PolicyFileError: A budget below what is spent and reserved, or approvals required
                with no approver.
        """
        if policy.approvals_required and not approvers:
            raise PolicyFileError("approvals are required, but the new policy names no approver")
        for name, entry in policy.datasets.items():
            line = self.ledger.line(name)
            held = line.spent + line.reserved
            if not held.fits_within(entry.budget):
                raise PolicyFileError(
                    f"the new budget of dataset {name!r} ({entry.budget}) is below what is spent "
                    f"and reserved on it ({held}); the old policy stays"
                )
        fields: dict[str, JsonScalar] = {f"{k}_sha256": v for k, v in sorted(digests.items())}
        fields[Key.DATASET] = ",".join(sorted(policy.datasets))
        self.audit.append(Event.POLICY_RELOADED, "", fields)
        self.admission.policy = policy
        self.admission.tables = tables
        self.admission.approvers = dict(approvers)
        self.ledger.set_limits({n: d.budget_limits for n, d in policy.datasets.items()})
        log.info("policy reloaded: %s", ", ".join(f"{k} {v[:12]}" for k, v in digests.items()))

    @property
    def policy(self) -> Policy:
        """This node's policy."""
        return self.admission.policy

    # -- admission, shared by the requester and the participants -------------------------------

    def _admit(self, spec: JobSpec, request: ApprovalRequest | None) -> None:
        """After the checks: wait for this node's approver, or accept now."""
        if request is not None and self.admission.needs_approval(request):
            self.store.transition(
                spec.job_id,
                JobState.AWAITING_APPROVAL,
                Event.JOB_AWAITING_APPROVAL,
                {
                    Key.DATASET: request.dataset,
                    Key.DATASET_VERSION: request.dataset_version,
                    Key.SPEC_SHA256: spec.digest(),
                },
            )
        else:
            self._accept(spec, request)

    def _accept(self, spec: JobSpec, request: ApprovalRequest | None) -> None:
        """Reserve the budget and accept the job, keeping what it was accepted on."""
        fields = self.admission.commit(spec, request)
        admitted = None if request is None else request.payload()
        self.store.transition(
            spec.job_id, JobState.ACCEPTED, Event.JOB_ACCEPTED, fields, admitted=admitted
        )

    def _refuse(self, job_id: str, reason: str) -> None:
        self.store.transition(
            job_id, JobState.REFUSED, Event.JOB_REFUSED, {Key.REASON: reason}, error=reason
        )

    def _admit_own(self, spec: JobSpec) -> str | None:
        """The requester's own admission; the reason when its own policy refuses the job."""
        try:
            self._admit(spec, self.admission.check(spec, None))
        except BundError as exc:
            self._refuse(spec.job_id, str(exc))
            return str(exc)
        return None

    @staticmethod
    def _spec_fields(spec: JobSpec) -> dict[str, JsonScalar]:
        return {
            Key.PROTOCOL: spec.protocol,
            Key.REQUESTER: spec.requester,
            Key.PARTIES: ",".join(spec.parties),
            Key.RECEIVERS: ",".join(spec.receivers),
            Key.PURPOSE: spec.purpose,
            Key.SPEC_SHA256: spec.digest(),
        }

    def _operator_only(self, caller: str, what: str) -> None:
        if caller != self.party:
            raise NotAuthorizedError(
                f"only {self.party}'s own operator may {what} at this node (caller: {caller})"
            )

    def _participant(self, job_id: str, caller: str) -> JobStatus:
        """The job's status, if ``caller`` is this node's operator or one of its participants."""
        status = self.store.get(job_id)
        if caller != self.party and caller not in status.spec.parties:
            raise NotAuthorizedError(f"{caller} takes no part in job {job_id}")
        return status

    # -- operator -> own node ---------------------------------------------------------------

    def submit(self, spec: JobSpec, caller: str) -> str:
        """Accept a job from this node's operator, check it, and start proposing it to the peers."""
        self._operator_only(caller, "submit jobs")
        if spec.job_id:
            raise InvalidJobSpecError("leave job_id empty in a submission: the node assigns it")
        if spec.requester != self.party:
            raise InvalidJobSpecError(f"requester must be this node's party {self.party!r}")
        self.admission.check_bindings(spec)  # the requester's own bindings, before anything
        spec = dataclasses.replace(spec, job_id=new_job_id())
        self.store.create(spec, Event.JOB_SUBMITTED, self._spec_fields(spec))
        self._pool.submit(self.coordinator.coordinate, spec)
        return spec.job_id

    def approval_request(self, job_id: str, caller: str) -> ApprovalRequest:
        """What this node's approver is asked to sign for a job awaiting approval."""
        self._operator_only(caller, "read approval requests")
        status = self.store.get(job_id)
        if status.state is not JobState.AWAITING_APPROVAL:
            raise JobStateError(f"job {job_id} is {status.state.value}; it awaits no approval")
        request = self.admission.approval_request(status.spec)
        if request is None:
            raise JobStateError(
                f"{self.party} brings no dataset to job {job_id}; nothing to approve"
            )
        return request

    def approve(self, job_id: str, caller: str, signature: bytes) -> None:
        """Record one approver's signature over the job; accept it once the quorum approved.

        Each approval is kept (and audited) as it comes, so approvals already given survive a
        restart of this node; the job is accepted, and its budget reserved, with the last one
        the policy's quorum needs.
        """
        request = self.approval_request(job_id, caller)
        approver, fields = self.admission.verify(request, signature)
        quorum = self.admission.quorum(request)
        approved = self.store.approve(job_id, approver, {**fields, "quorum": quorum})
        if len(approved) < quorum:
            return
        try:
            self._accept(request.spec, request)
        except BundError as exc:
            ended = self.store.get(job_id)
            if is_terminal(ended.state):  # called off meanwhile (a peer refused, a cancel)
                raise JobStateError(
                    f"job {job_id} was {ended.state.value} meanwhile ({ended.error}); "
                    "the approval is on record, but the job will not run"
                ) from None
            self._refuse(job_id, str(exc))
            raise

    def deny(self, job_id: str, caller: str, reason: str) -> None:
        """Refuse a job at this node's approver's word; the requester learns the reason."""
        self._operator_only(caller, "deny jobs")
        status = self.store.get(job_id)
        if status.state not in NOT_STARTED:
            raise JobStateError(f"job {job_id} is {status.state.value}; too late to deny it")
        why = f"denied by {self.party}'s approver: {reason}"
        self.store.transition(
            job_id,
            JobState.REFUSED,
            Event.JOB_DENIED,
            {Key.SPEC_SHA256: status.spec.digest(), Key.REASON: reason[:500]},
            error=why,
        )
        if status.spec.requester != self.party:
            self._abort_peer(status.spec.requester, job_id, why)

    def cancel(self, job_id: str, caller: str, reason: str = "") -> None:
        """This node's operator calls a job off: stop the role here and tell every participant.

        The audit log here records who cancelled and why (``job_cancelled``); each peer's log
        records the abort it received from this party (``job_aborted``).
        """
        self._operator_only(caller, "cancel jobs")
        status = self.store.get(job_id)
        if is_terminal(status.state):
            raise JobStateError(f"job {job_id} is {status.state.value} already; nothing to cancel")
        why = f"cancelled by {self.party}'s operator" + (f": {reason}" if reason else "")
        self.store.transition(
            job_id,
            JobState.ABORTED,
            Event.JOB_CANCELLED,
            {Key.BY: self.party, "from_state": status.state.value, Key.REASON: reason[:500]},
            error=why,
        )
        self.mailbox.abort(job_id, why)
        if is_resumable(status.state):
            self.resume.forget(job_id)
        self._abort_peers(status.spec, why)

    def status(self, job_id: str, caller: str) -> JobStatus:
        """A job's status, for this node's operator or a participant."""
        return self._participant(job_id, caller)

    def watch(
        self, job_id: str, caller: str, label: str, gone: Callable[[], bool]
    ) -> Iterator[JobStatus]:
        """A job's status now and at each change, for whoever may read it (see ``status``).

        ``label`` names the caller for the watch limits (an operator by name, a peer by party);
        ``gone`` turns true when the caller went away (wake ``watches`` then).
        """
        self._participant(job_id, caller)  # refused before a watch slot is taken
        return self.watches.follow(label, job_id, lambda: self.status(job_id, caller), gone)

    def notified(self, job_id: str, caller: str) -> None:
        """A participant says its answer to a job this node requested changed: read it now."""
        status = self._participant(job_id, caller)
        if status.spec.requester != self.party:
            raise NotAuthorizedError(f"{self.party} did not request job {job_id}")
        self.coordinator.wake(job_id)

    def result(self, job_id: str, caller: str) -> ResultInfo:
        """A job's result (summary, artifact sizes) for this node's operator, at a receiver.

        The read is recorded before the result is served; if it cannot be, nothing is served.
        """
        info = self._readable_result(job_id, caller)
        self.store.record(job_id, Event.RESULT_READ, {Key.BY: caller, Key.ARTIFACT: ""})
        return info

    def _readable_result(self, job_id: str, caller: str) -> ResultInfo:
        """The result's summary, after checking that ``caller`` may read it now."""
        if caller != self.party:
            raise NotAuthorizedError("only this node's own operator may read its results")
        status = self.store.get(job_id)
        if self.party not in status.spec.receivers:
            raise JobStateError(
                f"{self.party} is not a receiver of job {job_id}; its result went to "
                f"{', '.join(status.spec.receivers)}"
            )
        if status.state is not JobState.SUCCEEDED:
            raise JobStateError(f"job {job_id} is {status.state.value}; no result yet")
        result = self.store.load_result(job_id)
        if result is None:
            raise JobStateError(f"job {job_id} succeeded but holds no result here")
        return result

    def read_artifact(
        self, job_id: str, caller: str, name: str, offset: int, limit: int
    ) -> tuple[bytes, int]:
        """A page of one of a result's artifacts, for this node's operator (recorded first)."""
        self._readable_result(job_id, caller)
        if limit <= 0 or offset < 0:
            raise JobStateError("read an artifact with a positive page size from offset >= 0")
        data, total = self.store.read_artifact(job_id, name, offset, limit)
        self.store.record(
            job_id,
            Event.RESULT_READ,
            {Key.BY: caller, Key.ARTIFACT: name, Key.OFFSET: offset, Key.BYTES: len(data)},
        )
        return data, total

    def list(
        self, caller: str, limit: int = 50, states: frozenset[JobState] | None = None
    ) -> list[JobStatus]:
        """The newest jobs (in ``states``, when given), for this node's operator."""
        if caller != self.party:
            raise NotAuthorizedError("only this node's own operator may list its jobs")
        return self.store.newest(max(1, min(limit, 1000)), states)

    # -- requester node -> participant nodes -----------------------------------------------

    def propose(
        self, spec: JobSpec, caller: str, caller_role: str | None = None
    ) -> tuple[bool, str]:
        """A requester asks this node to take part; check and answer (approval may follow)."""
        if caller != spec.requester:
            raise NotAuthorizedError(
                f"{caller} proposed a job whose requester is {spec.requester}; refused"
            )
        if self.party not in spec.parties:
            raise NotAuthorizedError(f"{self.party} takes no part in this job")
        if not spec.job_id:
            raise InvalidJobSpecError("a proposed job must carry its job_id")
        # Before anything is stored: a party this node does not work with creates no state.
        self.policy.check_counterparty(caller, caller_role)
        known = self.store.find(spec.job_id)
        if known is not None:  # proposed again by a requester that restarted: the same answer
            if known.spec.digest() != spec.digest():
                raise JobStateError(f"job {spec.job_id} is known here with another spec")
            if known.state in (JobState.REFUSED, JobState.FAILED, JobState.ABORTED):
                return False, known.error
            return True, ""
        self.store.create(spec, Event.JOB_PROPOSED, self._spec_fields(spec))
        try:
            self._admit(spec, self.admission.check(spec, caller_role))
        except BundError as exc:
            self._refuse(spec.job_id, str(exc))
            return False, str(exc)
        return True, ""

    def start(self, job_id: str, caller: str) -> None:
        """The requester says everyone accepted: run this node's role."""
        status = self.store.get(job_id)
        if caller != status.spec.requester:
            raise NotAuthorizedError(
                f"only the requester {status.spec.requester} may start job {job_id}"
            )
        if status.state is not JobState.ACCEPTED:
            raise JobStateError(f"job {job_id} is {status.state.value}, not accepted; cannot start")
        self.store.transition(job_id, JobState.RUNNING, Event.JOB_STARTED, {Key.BY: caller})
        self.runner.launch(status.spec, self._pool.submit)

    def abort(self, job_id: str, caller: str, reason: str) -> None:
        """A participant calls the job off; wake this node's role if it waits.

        The node's own operator calling it cancels the job everywhere (:meth:`cancel`). Called
        off before it ran, the job was refused; once running, it was aborted.
        """
        if caller == self.party:
            self.cancel(job_id, caller, reason)
            return
        status = self._participant(job_id, caller)
        self.mailbox.abort(job_id, f"{caller}: {reason}")
        fields: dict[str, JsonScalar] = {Key.BY: caller, Key.REASON: reason[:500]}
        while not is_terminal(status.state):
            state = JobState.REFUSED if status.state in NOT_STARTED else JobState.ABORTED
            if status.spec.requester == self.party:
                # The caller's answer, for ``bund job status``: its abort may end the job here
                # before the coordinator's next poll would have heard it.
                self.store.note_party(job_id, PartyView(caller, state, reason=reason[:500]))
            try:
                self.store.transition(
                    job_id, state, Event.JOB_ABORTED, fields, error=f"{caller}: {reason}"
                )
            except IllegalTransitionError:  # it moved meanwhile (started, or its role ended it)
                status = self.store.get(job_id)
                continue
            if is_resumable(status.state):
                self.resume.forget(job_id)
            return
        self.store.record(job_id, Event.JOB_ABORTED, fields)

    def deliver(
        self,
        job_id: str,
        caller: str,
        tag: str,
        payload: bytes,
        sha256: bytes,
        caller_role: str | None = None,
    ) -> bool:
        """Put a peer's message into this node's mailbox; True when it is new."""
        status = self.store.get(job_id)
        if caller not in status.spec.parties or caller == self.party:
            raise NotAuthorizedError(f"{caller} takes no part in job {job_id}; message refused")
        self.policy.check_counterparty(caller, caller_role)
        bound = hmac.compare_digest(envelope_digest(job_id, tag, payload), sha256)
        note: dict[str, JsonScalar] = {
            Key.PEER: caller,
            Key.TAG: tag,
            Key.SHA256: digest(payload).hex(),
            Key.SIZE: len(payload),
        }
        if status.state in (JobState.SUCCEEDED, JobState.SERVING) and bound:
            # A peer resumed (or re-sent) after this node closed: its messages change nothing.
            self.store.record(job_id, Event.MESSAGE_AFTER_CLOSE, note)
            return False
        if status.state in (JobState.FAILED, JobState.ABORTED, JobState.REFUSED):
            # Why it ended, for the sender's role: it may send before this node's abort reaches
            # it, and then ends aborted with the cause rather than failed on a refused message.
            raise JobAbortedError(
                f"job {job_id} ended at {self.party} ({status.state.value}): {status.error}"
            )
        if status.state not in (JobState.ACCEPTED, JobState.RUNNING, JobState.INTERRUPTED):
            raise JobStateError(f"job {job_id} is {status.state.value}; it takes no messages")
        if not bound:
            why = (
                f"the message's digest does not bind it to job {job_id} and tag {tag!r}: it was "
                "altered, or moved from another job or slot; refused"
            )
            self.store.record(
                job_id, Event.MESSAGE_REFUSED, {Key.PEER: caller, Key.TAG: tag, Key.WHY: why}
            )
            raise JobStateError(why)
        try:
            fresh = self.mailbox.put(job_id, caller, tag, payload, self._plan(status.spec))
        except EquivocationError as exc:
            self.store.record(job_id, Event.EQUIVOCATION, note)
            self._abort_everywhere(status.spec, f"{caller} equivocated: {exc}")
            raise
        if not fresh:
            self.store.record(job_id, Event.MESSAGE_DUPLICATE, note)
        return fresh

    def _plan(self, spec: JobSpec) -> MessagePlan:
        """What one peer may send this node in ``spec``: the protocol's plan and the closing."""
        plan = self.admission.protocols[spec.protocol].plan(spec, self.party, self.policy.limits)
        tags = None if plan.tags is None else (*plan.tags, re.escape(CLOSE_TAG))
        return MessagePlan(plan.max_messages + 1, plan.max_bytes + MAX_CLOSING_BYTES, tags)

    def resume_job(self, job_id: str, caller: str) -> None:
        """Run an interrupted job's role again from its resume states.

        This node's operator (or its restart) also asks every other participant to resume; a
        participant asking resumes only this node's role. A running job is left as it is.
        """
        status = self._participant(job_id, caller)
        if status.state is JobState.RUNNING:
            return
        if not is_resumable(status.state):
            raise JobStateError(
                f"job {job_id} is {status.state.value}; only an interrupted job can be resumed"
            )
        if not self.admission.protocols[status.spec.protocol].resumable:
            raise JobStateError(f"{status.spec.protocol} cannot resume: submit the job again")
        self.liveness.resumed(job_id)
        self.mailbox.reopen(job_id, self.resume.inbox(job_id))
        try:
            self.store.transition(
                job_id, JobState.RUNNING, Event.JOB_RESUMED, {Key.BY: caller}, error=""
            )
        except IllegalTransitionError:
            if self.store.get(job_id).state is JobState.RUNNING:
                return  # resumed meanwhile (a heal and a peer's request crossed): nothing to do
            raise
        if caller == self.party:
            for peer in status.spec.parties:
                if peer != self.party:
                    try:
                        self.peers.resume(peer, job_id)
                    except BundError as exc:
                        log.warning("could not ask %s to resume job %s: %s", peer, job_id, exc)
        self.runner.launch(status.spec, self._pool.submit, resumed=True)

    # -- calling jobs off -------------------------------------------------------------------

    def _abort_everywhere(self, spec: JobSpec, why: str) -> None:
        """Abort a job here and tell every other participant (a protocol violation was seen)."""
        self.mailbox.abort(spec.job_id, why)
        if not is_terminal(self.store.get(spec.job_id).state):
            self.store.transition(
                spec.job_id,
                JobState.ABORTED,
                Event.JOB_ABORTED,
                {Key.BY: self.party, Key.REASON: why[:500]},
                error=why,
            )
        self._abort_peers(spec, why)

    def _abort_peers(self, spec: JobSpec, why: str) -> None:
        """Tell every other participant that the job is off."""
        for peer in spec.parties:
            if peer != self.party:
                self._abort_peer(peer, spec.job_id, why)

    def _abort_peer(self, peer: str, job_id: str, reason: str) -> None:
        try:
            self.peers.abort(peer, job_id, reason)
        except BundError as exc:
            log.warning("could not tell %s to abort job %s: %s", peer, job_id, exc)

    # -- the node's own life ----------------------------------------------------------------

    def recover(self) -> None:
        """After a restart: resume, heal or fail what this node was doing (see liveness).

        A reservation whose job ended (or is unknown here) while the node could not release it
        is released now.
        """
        for job_id in self.ledger.reserved_jobs():
            status = self.store.find(job_id)
            if status is None or is_terminal(status.state):
                why = "the job ended" if status else "the job is not known here"
                self.ledger.release(job_id, f"{why} (released after a restart)")
        for status in self.store.unfinished():
            if status.spec.requester == self.party and status.state in NOT_STARTED:
                # Approvals given here and at the peers are kept: carry on where it stood.
                self._pool.submit(self.coordinator.coordinate, status.spec, True)
        self.liveness.recover(self._pool.submit)

    def shutdown(self) -> None:
        """Stop taking work and wait for running roles to finish or fail."""
        self.coordinator.stop()
        self.watches.close()
        self.liveness.stop()
        self._notices.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.executor.close()
