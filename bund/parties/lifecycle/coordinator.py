"""The requester's side of a job: propose it, wait for every acceptance, start it, or call it off.

The requester's node admits the job against its own policy while it proposes the spec to every
other participant (each admits it against its own). No protocol message is sent before every
participant accepted, approvals included: only then does the requester tell each to start, and
run its own role. A refusal anywhere calls the job off everywhere it was proposed.

Nothing polls on the fast path: each participant tells the requester when its answer changes
(``NotifyJob``: an approval, the acceptance, a refusal after an approval wait), and a change
of the job here (a participant's abort, the operator's cancel) wakes the wait too; the
coordinator then reads every answer at once, so the job starts as soon as the last approval's
record is durable. A push can be lost (the participant could not reach this node when it
answered, or restarted while telling it), so the wait also reads the answers every
``fallback_poll`` seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from bund.compute.errors import BundError
from bund.parties.jobs import JobSpec, JsonScalar, transcript_digest
from bund.parties.lifecycle.events import Event, Key
from bund.parties.lifecycle.runner import Move
from bund.parties.lifecycle.states import JobState, JobStatus, PartyView, is_terminal
from bund.parties.lifecycle.store import JobStore
from bund.parties.lifecycle.watch import Wakeups

log = logging.getLogger("bund.jobs")


class ProposalPeers(Protocol):
    """The calls a requester makes to the other participants (``parties.client`` implements)."""

    def propose(self, to: str, spec: JobSpec) -> tuple[bool, str]:
        """Ask ``to`` to accept ``spec``; return (accepted, reason)."""
        ...

    def start(self, to: str, job_id: str) -> None:
        """Tell ``to`` that every participant accepted and it may run its role."""
        ...

    def status(self, to: str, job_id: str, timeout: float | None = None) -> JobStatus:
        """``to``'s view of a job."""
        ...


class RoleSlot(Protocol):
    """How the coordinator runs this node's role (``runner.RoleRunner``)."""

    def claim(self, job_id: str) -> bool:
        """Mark the role as running here before it runs."""
        ...

    def release(self, job_id: str) -> None:
        """Give up the claim: the role will not run."""
        ...

    def run_claimed(self, spec: JobSpec, resumed: bool = False) -> None:
        """Run the claimed role in this thread."""
        ...


class _Stopping(Exception):
    """The node stops while the coordinator waits: the job stays as it is, for the restart."""


class Coordinator:
    """Brings a submitted job from proposal to start, at the requester's node.

    Args:
        party: This node's party (the requester).
        peers: Proposes, starts and asks about jobs at the other participants.
        store: This node's job store.
        admit_own: Admits the job against this node's own policy; the refusal's reason, or None.
        roles: Claims and runs this node's role once the job started.
        abort_peer: Tells one peer that the job is off (logs, never raises).
        move_later: Makes a move once the audit store takes its record (liveness retries it).
        approval_timeout: How long to wait for every acceptance, approvals included.
        fallback_poll: How often to ask the peers meanwhile if no push arrives (a push lost
            to a peer's restart or a network fault is caught up within this time).
    """

    def __init__(
        self,
        party: str,
        peers: ProposalPeers,
        store: JobStore,
        admit_own: Callable[[JobSpec], str | None],
        roles: RoleSlot,
        abort_peer: Callable[[str, str, str], None],
        move_later: Callable[[Move], None],
        approval_timeout: float,
        fallback_poll: float = 5.0,
    ) -> None:
        self.party = party
        self._peers = peers
        self._store = store
        self._admit_own = admit_own
        self._roles = roles
        self._abort_peer = abort_peer
        self._move_later = move_later
        self.approval_timeout = approval_timeout
        self.fallback_poll = fallback_poll
        self._wakeups = Wakeups()

    def stop(self) -> None:
        """The node stops: waits for answers end now; a restart resumes coordinating the jobs."""
        self._wakeups.close()

    def wake(self, job_id: str) -> bool:
        """A participant's answer to ``job_id`` changed (or the job did here): read them now.

        Returns False when this node does not wait on the job's answers (nothing to do).
        """
        return self._wakeups.wake(job_id)

    def coordinate(self, spec: JobSpec, again: bool = False) -> None:
        """Admit and propose; start every participant once all accepted; then run our role.

        This node's own admission and the proposals run at once (each loads and hashes its own
        dataset), so a job's set-up costs the slowest party's check, not their sum. The start is
        on record here before any participant is told to start (write-ahead).

        ``again`` after this node restarted: a job admitted here already is not admitted again,
        and proposing it again to a participant that knows it returns that participant's answer,
        so every approval given so far stands.
        """
        self._wakeups.register(spec.job_id)  # before proposing: no push is missed
        try:
            self._coordinate(spec, again)
        except _Stopping:
            log.info("job %s: this node stops; a restart resumes coordinating it", spec.job_id)
        finally:
            self._wakeups.forget(spec.job_id)

    def _coordinate(self, spec: JobSpec, again: bool) -> None:
        others = [p for p in spec.parties if p != self.party]
        admit = self._admit_own
        if again and self._store.get(spec.job_id).state is not JobState.PROPOSED:
            admit = self._admitted_already
        with ThreadPoolExecutor(max_workers=len(others) + 1) as pool:
            own = pool.submit(admit, spec)
            asked = {peer: pool.submit(self._peers.propose, peer, spec) for peer in others}
            answers: dict[str, tuple[bool, str] | BundError] = {}
            for peer, future in asked.items():
                try:
                    answers[peer] = future.result()
                except BundError as exc:
                    answers[peer] = exc
            proposed = [p for p, a in answers.items() if isinstance(a, tuple) and a[0]]
            try:
                own_refusal = own.result()
            except BundError as exc:  # this node could not even record its own answer
                self._fail(spec, proposed, f"could not admit the job here: {exc}")
                return
        try:
            if own_refusal is not None:
                self._call_off(spec, proposed, own_refusal, self.party, own_refusal)
                return
            for peer, answer in answers.items():
                if isinstance(answer, BundError):
                    raise answer
                if not answer[0]:
                    self._note(spec, PartyView(peer, JobState.REFUSED, reason=answer[1]))
                    self._call_off(
                        spec, proposed, f"refused by {peer}: {answer[1]}", peer, answer[1]
                    )
                    return
            heard: list[PartyView] = []
            refusal = self._await_acceptance(spec, others, heard)
            if refusal is not None:
                peer, reason = refusal
                self._call_off(spec, proposed, f"refused by {peer}: {reason}", peer, reason)
                return
            self._store.transition(
                spec.job_id,
                JobState.RUNNING,
                Event.JOB_STARTED,
                {Key.PARTIES: ",".join(spec.parties)},
            )
            claimed = self._roles.claim(spec.job_id)
            try:
                for peer in others:
                    self._peers.start(peer, spec.job_id)
            except BaseException:
                if claimed:
                    self._roles.release(spec.job_id)
                raise
            for view in heard:  # the acceptances that started it, kept once all were told
                self._note(spec, view)
        except BundError as exc:
            self._fail(spec, proposed, f"could not start the job: {exc}")
            return
        if claimed:
            self._roles.run_claimed(spec)

    def _admitted_already(self, spec: JobSpec) -> str | None:
        """This node's earlier answer to its own job (a restart resumes coordinating it)."""
        status = self._store.get(spec.job_id)
        return status.error or status.state.value if is_terminal(status.state) else None

    def _end(self, move: Move) -> None:
        """Make ``move`` now, or once the audit store takes its record."""
        try:
            move.write(self._store)
        except BundError:
            log.exception("job %s: could not record its end here; retrying", move.job_id)
            self._move_later(move)

    def _fail(self, spec: JobSpec, proposed: list[str], why: str) -> None:
        """The job could not be started: it fails here and is called off at the others.

        If this node had recorded the start already, it closes the job (with no message sent),
        so that every record of a start has its closing record.
        """
        job_id = spec.job_id
        state = self._store.get(job_id).state
        if not is_terminal(state):
            fields: dict[str, JsonScalar] = {Key.REASON: why}
            event = Event.JOB_FAILED
            if state is JobState.RUNNING:
                event = Event.JOB_CLOSED
                fields.update(
                    {
                        Key.OUTCOME: JobState.FAILED.value,
                        Key.TRANSCRIPT_SHA256: transcript_digest(job_id, self.party, []),
                        Key.MESSAGES: 0,
                    }
                )
            self._end(Move(job_id, JobState.FAILED, event, fields, why))
        for done in proposed:
            self._abort_peer(done, job_id, why)

    def _call_off(
        self, spec: JobSpec, proposed: list[str], why: str, peer: str, reason: str
    ) -> None:
        """A participant refused: the job is refused here and called off at the others."""
        if not is_terminal(self._store.get(spec.job_id).state):
            fields: dict[str, JsonScalar] = {Key.PEER: peer, Key.REASON: reason}
            self._end(Move(spec.job_id, JobState.REFUSED, Event.JOB_REFUSED_BY_PEER, fields, why))
        for done in proposed:
            if done != peer:
                self._abort_peer(done, spec.job_id, why)

    def _note(self, spec: JobSpec, view: PartyView) -> None:
        """Keep a participant's answer for ``bund job status``; a failure to keep it is logged."""
        try:
            self._store.note_party(spec.job_id, view)
        except Exception:  # noqa: BLE001 - a display aid; the job goes on without it
            log.exception("job %s: could not keep %s's answer", spec.job_id, view.party)

    def _await_acceptance(
        self, spec: JobSpec, others: list[str], heard: list[PartyView]
    ) -> tuple[str, str] | None:
        """Wait until every participant (this one too) accepted; else return (party, why).

        Each answer read is kept for ``bund job status`` at once while the job waits on; those
        of the last round, which end the wait, are left in ``heard`` for the caller to keep
        after the start: a display aid's durable write does not delay the start.
        """
        deadline = time.monotonic() + self.approval_timeout
        pending = [self.party, *others]
        pushed = self._wakeups.register(spec.job_id)
        while pending:
            if self._wakeups.closed:
                raise _Stopping
            pushed.clear()  # a push during the reads below makes the next wait return at once
            heard.clear()
            for party in list(pending):
                if party == self.party:
                    status = self._store.get(spec.job_id)
                else:
                    status = self._peers.status(party, spec.job_id)
                    heard.append(PartyView(party, status.state, status.approved_by, status.error))
                if status.state is JobState.ACCEPTED:
                    pending.remove(party)
                elif is_terminal(status.state):
                    for view in heard:
                        self._note(spec, view)
                    return party, status.error or status.state.value
            if pending:
                for view in heard:
                    self._note(spec, view)
                if time.monotonic() > deadline:
                    return pending[0], (
                        f"no approval within {self.approval_timeout:.0f} s; submit the job again "
                        "once its approver is available"
                    )
                pushed.wait(min(self.fallback_poll, max(0.0, deadline - time.monotonic())))
        return None
