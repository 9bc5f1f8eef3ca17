"""The requester's side of a job: propose it, wait for every acceptance, start it, or call it off.

The requester's node admits the job against its own policy while it proposes the spec to every
other participant (each admits it against its own). No protocol message is sent before every
participant accepted, approvals included: only then does the requester tell each to start, and
run its own role. A refusal anywhere calls the job off everywhere it was proposed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from bund.compute.errors import BundError
from bund.parties.jobs import JobSpec
from bund.parties.lifecycle.events import Event, Key
from bund.parties.lifecycle.states import JobState, JobStatus, is_terminal
from bund.parties.lifecycle.store import JobStore

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


class Coordinator:
    """Brings a submitted job from proposal to start, at the requester's node.

    Args:
        party: This node's party (the requester).
        peers: Proposes, starts and asks about jobs at the other participants.
        store: This node's job store.
        admit_own: Admits the job against this node's own policy; the refusal's reason, or None.
        run_role: Runs this node's role once the job started.
        abort_peer: Tells one peer that the job is off (logs, never raises).
        approval_timeout: How long to wait for every acceptance, approvals included.
        poll_interval: How often to ask the peers meanwhile.
    """

    def __init__(
        self,
        party: str,
        peers: ProposalPeers,
        store: JobStore,
        admit_own: Callable[[JobSpec], str | None],
        run_role: Callable[[JobSpec], None],
        abort_peer: Callable[[str, str, str], None],
        approval_timeout: float,
        poll_interval: float = 0.2,
    ) -> None:
        self.party = party
        self._peers = peers
        self._store = store
        self._admit_own = admit_own
        self._run_role = run_role
        self._abort_peer = abort_peer
        self.approval_timeout = approval_timeout
        self.poll_interval = poll_interval

    def coordinate(self, spec: JobSpec) -> None:
        """Admit and propose; start every participant once all accepted; then run our role.

        This node's own admission and the proposals run at once (each loads and hashes its own
        dataset), so a job's set-up costs the slowest party's check, not their sum.
        """
        others = [p for p in spec.parties if p != self.party]
        with ThreadPoolExecutor(max_workers=len(others) + 1) as pool:
            own = pool.submit(self._admit_own, spec)
            asked = {peer: pool.submit(self._peers.propose, peer, spec) for peer in others}
            own_refusal = own.result()
            answers: dict[str, tuple[bool, str] | BundError] = {}
            for peer, future in asked.items():
                try:
                    answers[peer] = future.result()
                except BundError as exc:
                    answers[peer] = exc
        proposed = [p for p, a in answers.items() if isinstance(a, tuple) and a[0]]
        try:
            if own_refusal is not None:
                self._call_off(spec, proposed, own_refusal, self.party, own_refusal)
                return
            for peer, answer in answers.items():
                if isinstance(answer, BundError):
                    raise answer
                if not answer[0]:
                    self._call_off(
                        spec, proposed, f"refused by {peer}: {answer[1]}", peer, answer[1]
                    )
                    return
            refusal = self._await_acceptance(spec, others)
            if refusal is not None:
                peer, reason = refusal
                self._call_off(spec, proposed, f"refused by {peer}: {reason}", peer, reason)
                return
            for peer in others:
                self._peers.start(peer, spec.job_id)
            self._store.transition(
                spec.job_id,
                JobState.RUNNING,
                Event.JOB_STARTED,
                {Key.PARTIES: ",".join(spec.parties)},
            )
        except BundError as exc:
            self._fail(spec, proposed, f"could not start the job: {exc}")
            return
        self._run_role(spec)

    def _fail(self, spec: JobSpec, proposed: list[str], why: str) -> None:
        """The job could not be started: it fails here and is called off at the others."""
        try:
            if not is_terminal(self._store.get(spec.job_id).state):
                self._store.transition(
                    spec.job_id, JobState.FAILED, Event.JOB_FAILED, {Key.REASON: why}, error=why
                )
        except BundError:
            log.exception("job %s: could not record that it failed to start", spec.job_id)
        for done in proposed:
            self._abort_peer(done, spec.job_id, why)

    def _call_off(
        self, spec: JobSpec, proposed: list[str], why: str, peer: str, reason: str
    ) -> None:
        """A participant refused: the job is refused here and called off at the others."""
        if not is_terminal(self._store.get(spec.job_id).state):
            self._store.transition(
                spec.job_id,
                JobState.REFUSED,
                Event.JOB_REFUSED_BY_PEER,
                {Key.PEER: peer, Key.REASON: reason},
                error=why,
            )
        for done in proposed:
            if done != peer:
                self._abort_peer(done, spec.job_id, why)

    def _await_acceptance(self, spec: JobSpec, others: list[str]) -> tuple[str, str] | None:
        """Wait until every participant (this one too) accepted; else return (party, why)."""
        deadline = time.monotonic() + self.approval_timeout
        pending = [self.party, *others]
        pause = threading.Event()
        while pending:
            for party in list(pending):
                status = (
                    self._store.get(spec.job_id)
                    if party == self.party
                    else self._peers.status(party, spec.job_id)
                )
                if status.state is JobState.ACCEPTED:
                    pending.remove(party)
                elif is_terminal(status.state):
                    return party, status.error or status.state.value
            if pending:
                if time.monotonic() > deadline:
                    return pending[0], (
                        f"no approval within {self.approval_timeout:.0f} s; submit the job again "
                        "once its approver is available"
                    )
                pause.wait(self.poll_interval)
        return None
