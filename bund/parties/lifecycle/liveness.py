"""Liveness: heartbeats, deadlines, healing of interrupted jobs, and recovery after a restart.

While a role runs, a watcher asks each peer every ``heartbeat_interval`` how the job stands there.
A peer silent for ``peer_silence`` interrupts the job (resumable), unless the protocol carries on
without that peer (a federated round's drop-out); a peer that ended the job ends it here; a job
past ``job_deadline`` is aborted. An interrupted job heals by itself: once every peer answers
again, it resumes (at most :data:`AUTO_RESUMES` times; then only an operator does). After a
restart, the jobs this node was running are interrupted and resumed from their resume states,
and the jobs it had submitted but not started fail, since nobody is left to coordinate them.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from bund.compute.errors import BundError
from bund.parties.jobs import JobSpec, JsonScalar, ProtocolDef, transcript_digest
from bund.parties.lifecycle.events import Event, Key
from bund.parties.lifecycle.runner import LivenessHooks, Move
from bund.parties.lifecycle.states import NOT_STARTED, JobState, JobStatus, is_terminal
from bund.parties.lifecycle.store import JobStore
from bund.parties.resume import ResumeStore
from bund.parties.transport import Mailbox

log = logging.getLogger("bund.jobs")

#: How often a node resumes one job by itself after faults it saw (then an operator must).
AUTO_RESUMES = 3


class StatusPeers(Protocol):
    """The one call liveness makes to peers: their view of a job (``PeerControl.status``)."""

    def status(self, to: str, job_id: str, timeout: float | None = None) -> JobStatus:
        """``to``'s view of a job."""
        ...


@dataclass(frozen=True)
class LivenessTiming:
    """How often peers are asked, how long silence and jobs may last."""

    heartbeat_interval: float = 5.0
    peer_silence: float = 60.0
    job_deadline: float = 7 * 86_400.0
    unstarted_expiry: float = 90_000.0

    @property
    def heartbeat_timeout(self) -> float:
        """How long one heartbeat may take: a busy peer is slow, not silent."""
        return min(self.peer_silence / 2, max(self.heartbeat_interval, 2.0))


class Liveness(LivenessHooks):
    """Watches the running jobs of one node and heals the interrupted ones.

    Args:
        party: This node's party.
        protocols: The protocols this node runs (which peers each may lose, and whether it
            resumes).
        store: This node's job store.
        mailbox: This node's mailbox (interrupting or aborting it wakes a waiting role).
        peers: Asks a peer how a job stands there.
        resume_job: Resumes an interrupted job here and asks every peer to (``job_id, caller``).
        abort_peers: Tells every other participant that a job is off (logs, never raises).
        resume: This node's resume store (a restart reads the transcripts it kept).
        timing: Heartbeat interval, peer silence and job deadline.
    """

    def __init__(
        self,
        party: str,
        protocols: Mapping[str, ProtocolDef],
        store: JobStore,
        mailbox: Mailbox,
        peers: StatusPeers,
        resume_job: Callable[[str, str], None],
        abort_peers: Callable[[JobSpec, str], None],
        resume: ResumeStore,
        timing: LivenessTiming,
    ) -> None:
        self.party = party
        self._protocols = protocols
        self._store = store
        self._mailbox = mailbox
        self._peers = peers
        self._resume_job = resume_job
        self._abort_peers = abort_peers
        self._resume = resume
        self.timing = timing
        self._lock = threading.Lock()
        #: Running jobs: when each started here, and when each peer last answered a heartbeat.
        self._started: dict[str, float] = {}
        self._last_seen: dict[str, dict[str, float]] = {}
        self._beating: set[tuple[str, str]] = set()
        #: Interrupted jobs to resume once their peers answer again, and how often each was.
        self._healing: set[str] = set()
        self._healed: dict[str, int] = {}
        self._resumed_at: dict[str, float] = {}
        #: Moves whose record the audit store refused, tried again at every tick until it takes
        #: them: a job is never left half-way because its audit store was briefly down.
        self._unrecorded: list[Move] = []
        self._stopping = threading.Event()
        self._beats = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bund-heartbeat")
        self._watcher = threading.Thread(target=self._watch, name="bund-watch", daemon=True)
        self._watcher.start()

    # -- what the runner tells and asks (LivenessHooks) -----------------------------------------

    def role_started(self, job_id: str, parties: tuple[str, ...]) -> None:
        """A role began (or resumed) here: watch its peers from now."""
        now = time.monotonic()
        with self._lock:
            self._started.setdefault(job_id, now)
            self._last_seen[job_id] = dict.fromkeys(parties, now)

    def role_ended(self, job_id: str, state: JobState) -> None:
        """A role stopped here: stop watching it; forget it once the job has ended."""
        with self._lock:
            self._last_seen.pop(job_id, None)
            if state is not JobState.RUNNING:
                self._started.pop(job_id, None)
            if is_terminal(state):
                self._healed.pop(job_id, None)
                self._resumed_at.pop(job_id, None)

    def alive(self, job_id: str, peer: str) -> bool:
        """Whether ``peer`` answered a heartbeat of ``job_id`` within ``peer_silence``."""
        with self._lock:
            seen = self._last_seen.get(job_id, {}).get(peer)
        return seen is None or time.monotonic() - seen < self.timing.peer_silence

    def closing_patience(self, job_id: str, peer: str, dropouts: frozenset[str]) -> float | None:
        """Wait briefly for a silent drop-out's closing message; the receive timeout otherwise."""
        if peer not in dropouts or self.alive(job_id, peer):
            return None
        return self.timing.heartbeat_interval

    def interrupted(self, job_id: str) -> None:
        """Resume the job once every peer answers again, unless it healed too often already."""
        with self._lock:
            if self._healed.get(job_id, 0) < AUTO_RESUMES:
                self._healing.add(job_id)

    def move_later(self, move: Move) -> None:
        """Make ``move`` (record, then state) at the next tick the audit store accepts it."""
        with self._lock:
            self._unrecorded.append(move)

    def _retry_unrecorded(self) -> None:
        with self._lock:
            pending, self._unrecorded = self._unrecorded, []
        for move in pending:
            try:
                made = move.write(self._store)
            except BundError:
                with self._lock:
                    self._unrecorded.append(move)  # still refused: try at the next tick
                continue
            log.info("job %s: recorded its %s now", move.job_id, move.state.value)
            if made and move.state is JobState.INTERRUPTED:
                self.interrupted(move.job_id)

    def resumed(self, job_id: str) -> None:
        """The job resumed here: heartbeat answers to questions asked before now are stale."""
        with self._lock:
            self._resumed_at[job_id] = time.monotonic()

    # -- the watcher ----------------------------------------------------------------------------

    def _watch(self) -> None:
        """Every heartbeat interval: enforce job deadlines and ask each peer how the job stands."""
        interval = self.timing.heartbeat_interval
        tick = time.monotonic()
        while not self._stopping.wait(interval):
            now = time.monotonic()
            stalled, tick = now - tick > 2 * interval + 1, now
            with self._lock:
                running = list(self._last_seen)
                if stalled:  # this node was frozen or starved, not its peers: start afresh
                    for seen in self._last_seen.values():
                        for peer in seen:
                            seen[peer] = now
            for job_id in running:
                try:
                    self._check_job(job_id)
                except Exception:  # noqa: BLE001 - the watcher must outlive any one job
                    log.exception("heartbeat check of job %s failed", job_id)
            with self._lock:
                healing = list(self._healing)
                self._healing.clear()
            for job_id in healing:  # off the watcher's thread: a peer may be slow to answer
                self._beats.submit(self._heal, job_id)
            self._retry_unrecorded()
            try:
                self._expire_unstarted()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one job
                log.exception("could not expire unstarted jobs")

    def _check_job(self, job_id: str) -> None:
        now = time.monotonic()
        started = self._started.get(job_id, now)
        deadline = self.timing.job_deadline
        if now - started > deadline:
            self._mailbox.abort(
                job_id,
                f"DEADLINE_EXCEEDED: the job ran longer than this node's job deadline of "
                f"{deadline:.0f} s (job_deadline_s)",
            )
            return
        with self._lock:
            seen = dict(self._last_seen.get(job_id, {}))
        spec = self._store.get(job_id).spec
        tolerated = self._protocols[spec.protocol].dropouts(spec, self.party)
        silence = self.timing.peer_silence
        for peer in spec.parties:
            if peer == self.party or peer in tolerated:
                continue
            silent = now - seen.get(peer, now)
            if silent > silence:
                self._mailbox.interrupt(
                    job_id,
                    f"DEADLINE_EXCEEDED: {peer} has not answered a heartbeat for {silent:.0f} s "
                    f"(peer_silence_s = {silence:.0f}); the job is interrupted and "
                    f"resumes with `bund job resume {job_id}` once {peer} is back",
                )
                return
            with self._lock:
                if (job_id, peer) in self._beating:
                    continue  # the last heartbeat to this peer has not come back yet
                self._beating.add((job_id, peer))
            self._beats.submit(self._heartbeat, job_id, peer)

    def _heartbeat(self, job_id: str, peer: str) -> None:
        """Ask ``peer`` for its view of the job; note that it answered, follow where it ended.

        An answer to a question asked before this node last resumed the job is stale (the peer
        was asked to resume too), so only its proof of life counts.
        """
        asked = time.monotonic()
        try:
            status = self._peers.status(peer, job_id, timeout=self.timing.heartbeat_timeout)
        except BundError:
            return  # silence: the watcher interrupts the job once it lasts peer_silence
        finally:
            with self._lock:
                self._beating.discard((job_id, peer))
        with self._lock:
            if job_id in self._last_seen:
                self._last_seen[job_id][peer] = time.monotonic()
            stale = asked < self._resumed_at.get(job_id, 0.0)
        if stale:
            return
        if status.state is JobState.INTERRUPTED:
            self._mailbox.interrupt(job_id, f"{peer} interrupted the job: {status.error}")
        elif status.state in (JobState.FAILED, JobState.ABORTED, JobState.REFUSED):
            self._mailbox.abort(
                job_id, f"{peer} ended the job {status.state.value}: {status.error}"
            )

    def _heal(self, job_id: str) -> None:
        """Resume an interrupted job by itself once every peer answers and none has ended it."""
        try:
            status = self._store.get(job_id)
            if status.state is not JobState.INTERRUPTED:
                return
            for peer in status.spec.parties:
                if peer == self.party:
                    continue
                try:
                    theirs = self._peers.status(peer, job_id, timeout=self.timing.heartbeat_timeout)
                except BundError:
                    with self._lock:  # still unreachable: ask again at the next heartbeat
                        self._healing.add(job_id)
                    return
                if is_terminal(theirs.state):
                    return  # a peer ended the job: only an operator can decide what next
            with self._lock:
                self._healed[job_id] = self._healed.get(job_id, 0) + 1
            log.info("every peer of job %s answers again: resuming it", job_id)
            self._resume_job(job_id, self.party)
        except Exception:  # noqa: BLE001 - a pool task: log what would otherwise vanish
            log.exception("could not heal job %s", job_id)

    def _expire_unstarted(self) -> None:
        """Fail every job still waiting to start after ``unstarted_expiry`` (it holds budget).

        A counterparty that proposes and never starts, or a requester that vanished, would
        otherwise keep a reservation here for ever.
        """
        now = dt.datetime.now(dt.UTC)
        limit = dt.timedelta(seconds=self.timing.unstarted_expiry)
        for status in self._store.unfinished():
            if status.state not in NOT_STARTED:
                continue
            since = dt.datetime.fromisoformat(status.updated_at)
            if now - since < limit:
                continue
            why = (
                f"expired: not started {self.timing.unstarted_expiry:.0f} s after it was last "
                "moved here (unstarted_expiry_s)"
            )
            move = Move(
                status.spec.job_id, JobState.FAILED, Event.JOB_EXPIRED, {Key.REASON: why}, why
            )
            try:
                move.write(self._store)
            except BundError:
                self.move_later(move)

    # -- restart -------------------------------------------------------------------------------

    def recover(self, submit: Callable[..., object]) -> None:
        """After a restart: resume the jobs this node was running, fail those it was starting.

        A job that was running here is interrupted by the restart and resumed from its resume
        states (its peers are asked to resume too); one whose protocol cannot resume fails. An
        interrupted job is healed as usual once its peers answer. (A job this node had submitted
        but not started is coordinated again by the manager.) ``submit`` runs a task on the
        node's pool (peers may be slow to answer).
        """
        for status in self._store.unfinished():
            spec = status.spec
            job_id = spec.job_id
            resumable = self._protocols[spec.protocol].resumable
            if status.state is JobState.RUNNING and not resumable:
                why = f"this node restarted, and {spec.protocol} cannot resume: submit again"
                seen = self._resume.transcript(job_id)
                fields: dict[str, JsonScalar] = {
                    Key.OUTCOME: JobState.FAILED.value,
                    Key.REASON: why,
                    Key.TRANSCRIPT_SHA256: transcript_digest(job_id, self.party, seen),
                    Key.MESSAGES: len(seen),
                }
                self._store.transition(job_id, JobState.FAILED, Event.JOB_CLOSED, fields, error=why)
                self._resume.forget(job_id)
                submit(self._abort_peers, spec, why)
            elif status.state is JobState.RUNNING:
                self._store.transition(
                    job_id,
                    JobState.INTERRUPTED,
                    Event.JOB_INTERRUPTED,
                    {Key.REASON: "node restarted"},
                    error="this node restarted",
                )
                submit(self._resume_after_restart, job_id)
            elif status.state is JobState.INTERRUPTED:
                self.interrupted(job_id)

    def _resume_after_restart(self, job_id: str) -> None:
        """Resume a job the restart interrupted (a pool task: peers may be slow to answer)."""
        try:
            self._resume_job(job_id, self.party)
        except BundError as exc:
            log.warning("could not resume job %s after a restart: %s", job_id, exc)

    def stop(self) -> None:
        """Stop the watcher and the heartbeats."""
        self._stopping.set()
        self._watcher.join()
        self._beats.shutdown(wait=False, cancel_futures=True)
