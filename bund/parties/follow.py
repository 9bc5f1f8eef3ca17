"""Following a job until it ends: the one loop that the CLI, the demo, workflows and tests share.

A job changes state at each participant's node on that node's own schedule. ``status_changes``
yields one node's view of a job each time it changes; ``follow_job`` reads those changes until
the caller's condition holds or the job is terminal, and hands each one to ``on_update`` (a
progress bar, say) on the way. A node client (``NodeClient``) pushes the changes over the
node's ``WatchJob`` stream, so a follower hears of a change as soon as it is recorded; a stream
the node ends (its longest watch, or a restart) is opened again, its first status being the
current one. A source that cannot watch (a view of a peer, a test double), a node that does not
serve ``WatchJob``, or one at its limit of watches, is asked every ``interval`` seconds instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

from bund.compute.errors import BundError
from bund.parties.client import RemoteError
from bund.parties.lifecycle.states import JobState, JobStatus, is_terminal

#: What ``follow_job`` waits for besides a terminal state: a condition on the latest status.
Until = Callable[[JobStatus], bool]
#: Called with each new status as it is seen (the first one included).
OnUpdate = Callable[[JobStatus], None]


class StatusSource(Protocol):
    """A node that answers for a job's status: a ``NodeClient``, or a view of one peer."""

    @property
    def party(self) -> str:
        """The party whose node answers."""
        ...

    def status(self, job_id: str) -> JobStatus:
        """That node's view of ``job_id``; ``RemoteError`` NOT_FOUND if it does not know it."""
        ...


@runtime_checkable
class WatchSource(StatusSource, Protocol):
    """A node that also pushes a job's status as it changes (``NodeClient.watch``)."""

    def watch(self, job_id: str, timeout: float | None = None) -> Iterator[JobStatus]:
        """The job's status now, then at each change, for up to ``timeout`` seconds."""
        ...


#: What a node answers when it cannot serve a watch now: the follower asks instead.
_WATCH_UNSERVED = frozenset({"UNIMPLEMENTED", "RESOURCE_EXHAUSTED"})


class FollowTimeoutError(BundError):
    """A job did not reach what its follower waited for in time.

    Attributes:
        job_id: the job.
        party: the node that was asked.
        last: the last status that node gave.
    """

    def __init__(self, job_id: str, party: str, timeout: float, last: JobStatus) -> None:
        super().__init__(
            f"job {job_id} is still {last.state.value} at {party} after {timeout:.0f} s; "
            f"follow it with `bund job status {job_id} --watch`, or cancel it"
        )
        self.job_id = job_id
        self.party = party
        self.last = last


def in_state(*states: JobState) -> Until:
    """An ``until`` condition for ``follow_job``: the job is in one of ``states``.

    >>> from bund.parties.jobs import JobSpec, Participant
    >>> spec = JobSpec("psi", (Participant("bank", "member"),), ("bank",), "doc", "bank")
    >>> in_state(JobState.INTERRUPTED)(JobStatus(spec, JobState.RUNNING))
    False
    """
    wanted = frozenset(states)
    return lambda status: status.state in wanted


def status_changes(
    source: StatusSource,
    job_id: str,
    *,
    timeout: float,
    interval: float = 0.2,
    not_found_grace: float | None = None,
) -> Iterator[JobStatus]:
    """Yield ``source``'s view of ``job_id``, first as it is and then each time it changes.

    The sequence ends after a terminal status (the job cannot change again), or without one once
    ``timeout`` seconds have passed; it yields at least one status or raises.

    Args:
        source: the node to ask.
        job_id: the job.
        timeout: how long to follow, in seconds.
        interval: seconds between two questions to the node, when it is asked rather than
            watched (and between two watches of a job it does not know yet).
        not_found_grace: how long the node may answer NOT_FOUND before it first knows the job
            (the requester's proposal may not have reached it yet); None: up to ``timeout``.
            Once the node knew the job, NOT_FOUND is an error.

    Raises:
        RemoteError: NOT_FOUND past the grace, or any other error status of the node.
        PeerUnavailableError: If the node cannot be reached.
    """
    start = time.monotonic()
    deadline = start + timeout
    known_by = deadline if not_found_grace is None else min(deadline, start + not_found_grace)
    follow = _Follow(job_id, deadline, known_by, interval)
    if isinstance(source, WatchSource):
        yield from follow.pushed(source)
    if not follow.ended:
        yield from follow.asked(source)


class _Follow:
    """One follow's state, shared by its pushed and its asked phase."""

    def __init__(self, job_id: str, deadline: float, known_by: float, interval: float) -> None:
        self.job_id = job_id
        self.deadline = deadline
        self.known_by = known_by
        self.interval = interval
        self.last: JobStatus | None = None
        self.ended = False

    def _seen(self, status: JobStatus) -> bool:
        """Whether ``status`` is new (then it is the last); ends the follow at a terminal one."""
        if status == self.last:
            return False
        self.last = status
        self.ended = is_terminal(status.state)
        return True

    def _not_found_yet(self, exc: RemoteError) -> bool:
        """Whether a NOT_FOUND may still be a proposal on its way (else it is raised)."""
        return exc.not_found and self.last is None and time.monotonic() < self.known_by

    def _over(self) -> bool:
        """Before the node knows the job, only its NOT_FOUND past the grace ends the follow."""
        return self.last is not None and time.monotonic() >= self.deadline

    def pushed(self, source: WatchSource) -> Iterator[JobStatus]:
        """Follow over the node's watch stream; return early (not ended) to be asked instead."""
        while not self.ended:
            fresh = False
            try:
                for status in source.watch(self.job_id, max(self.deadline - time.monotonic(), 0)):
                    if self._seen(status):
                        fresh = True
                        yield status
                        if self.ended:
                            return
            except RemoteError as exc:
                if exc.code.name in _WATCH_UNSERVED:
                    return
                if not self._not_found_yet(exc):
                    raise
            if self._over():
                self.ended = True
                return
            if not fresh:  # not known yet, or a stream ended at once: do not spin
                time.sleep(self.interval)

    def asked(self, source: StatusSource) -> Iterator[JobStatus]:
        """Follow by asking the node every ``interval`` seconds."""
        while True:
            try:
                status = source.status(self.job_id)
            except RemoteError as exc:
                if not self._not_found_yet(exc):
                    raise
            else:
                if self._seen(status):
                    yield status
                    if self.ended:
                        return
            if self._over():
                return
            time.sleep(self.interval)


def follow_job(
    source: StatusSource,
    job_id: str,
    *,
    until: Until | None = None,
    timeout: float = 3600.0,
    on_update: OnUpdate | None = None,
    interval: float = 0.2,
    not_found_grace: float | None = None,
) -> JobStatus:
    """Follow ``job_id`` at one node until ``until`` holds or the job is terminal.

    By default that is a terminal state: succeeded, failed, refused or aborted. An interrupted
    job is followed on, because its node resumes it by itself. With ``until`` the follow also
    stops at a terminal state (nothing can change after it), so a caller that waits for a
    particular state checks the state it gets back.

    Args:
        source: the node to ask (``NodeClient``, or anything with ``party`` and ``status``).
        job_id: the job.
        until: a condition on the status, e.g. ``in_state(JobState.AWAITING_APPROVAL)``.
        timeout: the longest wait, in seconds.
        on_update: called with each new status, in order, before the conditions are checked.
        interval: seconds between two questions to the node.
        not_found_grace: how long a NOT_FOUND answer is taken for a proposal still on its way;
            None: up to ``timeout``; 0 when the node must already know the job.

    Returns:
        The status that ended the follow.

    Raises:
        FollowTimeoutError: If neither happened within ``timeout``.
        RemoteError: If the node refused to answer, or did not know the job within the grace.
        PeerUnavailableError: If the node cannot be reached.

    >>> from bund.parties.jobs import JobSpec, Participant
    >>> spec = JobSpec("psi", (Participant("bank", "member"),), ("bank",), "doc", "bank")
    >>> class Node:  # answers with one state after another
    ...     party = "bank"
    ...     def __init__(self, *states): self.states = iter(states)
    ...     def status(self, job_id): return JobStatus(spec, next(self.states))
    >>> follow_job(Node(JobState.RUNNING, JobState.INTERRUPTED, JobState.SUCCEEDED), "j",
    ...            interval=0).state
    <JobState.SUCCEEDED: 'succeeded'>
    >>> follow_job(Node(JobState.PROPOSED, JobState.AWAITING_APPROVAL), "j", interval=0,
    ...            until=in_state(JobState.AWAITING_APPROVAL)).state
    <JobState.AWAITING_APPROVAL: 'awaiting_approval'>
    """
    changes = status_changes(
        source, job_id, timeout=timeout, interval=interval, not_found_grace=not_found_grace
    )
    last: JobStatus | None = None
    for last in changes:
        if on_update is not None:
            on_update(last)
        if is_terminal(last.state) or (until is not None and until(last)):
            return last
    assert last is not None, "status_changes yields at least one status or raises"
    raise FollowTimeoutError(job_id, source.party, timeout, last)
