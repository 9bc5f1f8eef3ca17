"""The transition table is the single source of a job's life; the events have a reader's meaning."""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Mapping

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bund.parties.audit import AuditLog, MemoryAuditStore
from bund.parties.jobs import JobSpec, JsonScalar, Participant
from bund.parties.lifecycle.events import (
    KINDS,
    LEGACY_STATE_AFTER,
    STATELESS_LIFECYCLE,
    Event,
    EventKind,
    Key,
    state_after,
)
from bund.parties.lifecycle.runner import Move
from bund.parties.lifecycle.states import (
    TRANSITIONS,
    IllegalTransitionError,
    JobState,
    JobStatus,
    can_move,
    is_resumable,
    is_terminal,
)
from bund.parties.lifecycle.store import MemoryJobStore
from bund.parties.regulator import assess, make_pulled_log

KEY = Ed25519PrivateKey.generate()
JOB = "a" * 32


def _clock() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _spec() -> JobSpec:
    return JobSpec(
        protocol="psi",
        participants=(Participant("bank", "member", "loans"), Participant("tax", "member", "tx")),
        receivers=("bank",),
        purpose="测试 lifecycle",
        requester="bank",
        job_id=JOB,
    )


def _path_to(target: JobState) -> list[JobState]:
    """The shortest legal path from PROPOSED to ``target`` (breadth first over the table)."""
    before: dict[JobState, JobState | None] = {JobState.PROPOSED: None}
    queue = deque([JobState.PROPOSED])
    while queue:
        state = queue.popleft()
        for nxt in sorted(TRANSITIONS[state], key=lambda s: s.value):
            if nxt not in before:
                before[nxt] = state
                queue.append(nxt)
    assert target in before, f"{target} cannot be reached from PROPOSED"
    path = [target]
    while (prev := before[path[-1]]) is not None:
        path.append(prev)
    return list(reversed(path))[1:]


@pytest.mark.parametrize("start", list(JobState), ids=lambda s: s.value)
@pytest.mark.parametrize("target", list(JobState), ids=lambda s: s.value)
def test_every_pair_of_states_moves_exactly_when_the_table_allows(
    start: JobState, target: JobState
) -> None:
    store = MemoryAuditStore()
    jobs = MemoryJobStore(AuditLog(store, KEY, "bank", _clock))
    jobs.create(_spec(), Event.JOB_SUBMITTED)
    for step in _path_to(start):
        jobs.transition(JOB, step, Event.JOB_ACCEPTED)
    assert jobs.get(JOB).state is start
    records = len(store)
    if can_move(start, target):
        status = jobs.transition(JOB, target, Event.JOB_FAILED, {Key.REASON: "x"})
        assert status.state is target
        last = store.last()
        assert last is not None and last.fields[Key.STATE] == target.value
        assert len(store) == records + 1
    else:
        with pytest.raises(IllegalTransitionError):
            jobs.transition(JOB, target, Event.JOB_FAILED)
        assert jobs.get(JOB).state is start
        assert len(store) == records  # nothing recorded for a refused move


def test_terminal_resumable_and_reachable() -> None:
    terminal = {s for s in JobState if is_terminal(s)}
    assert terminal == {JobState.SUCCEEDED, JobState.FAILED, JobState.REFUSED, JobState.ABORTED}
    assert [s for s in JobState if is_resumable(s)] == [JobState.INTERRUPTED]
    assert not is_terminal(JobState.INTERRUPTED)  # the watcher heals it by itself
    for state in JobState:
        if state is not JobState.PROPOSED:
            assert _path_to(state)  # every state is reachable
        # and every state can still end: some terminal state is reachable from it
        seen, todo = {state}, [state]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert seen & terminal


def test_a_standing_contract_serves_after_its_set_up_and_ends_like_a_job() -> None:
    """SERVING is entered only from RUNNING (its roles set it up) and left only for an end."""
    into = {s for s in JobState if JobState.SERVING in TRANSITIONS[s]}
    assert into == {JobState.RUNNING}
    assert TRANSITIONS[JobState.SERVING] == {
        JobState.SUCCEEDED,  # expired, or its limits spent
        JobState.ABORTED,  # revoked by any party
        JobState.FAILED,
    }
    assert not is_terminal(JobState.SERVING) and not is_resumable(JobState.SERVING)
    assert state_after(Event.CONTRACT_ENDED, {Key.STATE: "succeeded"}) is JobState.SUCCEEDED
    assert state_after(Event.JOB_CLOSED, {Key.OUTCOME: "serving"}) is JobState.SERVING
    assert state_after(Event.SERVING_REQUEST, {Key.STATE: "running"}) is None


def test_every_event_has_a_meaning_for_the_reader() -> None:
    assert set(KINDS) == set(Event)
    for event, kind in KINDS.items():
        if kind is not EventKind.LIFECYCLE or event in STATELESS_LIFECYCLE:
            continue
        # A record written today names its state; one written before that is read by event.
        assert event is Event.JOB_CLOSED or event in LEGACY_STATE_AFTER, event
    for state in JobState:
        assert state_after(Event.JOB_FAILED, {Key.STATE: state.value}) is state
    assert state_after(Event.JOB_CLOSED, {Key.OUTCOME: "succeeded"}) is JobState.SUCCEEDED
    assert state_after(Event.JOB_APPROVED, {}) is None
    assert state_after(Event.MESSAGE_SENT, {Key.STATE: "running"}) is None
    assert state_after("no_such_event", {}) is None


def _regulator_states(events: list[tuple[Event, Mapping[str, JsonScalar]]]) -> Mapping[str, str]:
    store = MemoryAuditStore()
    log = AuditLog(store, KEY, "bank", _clock)
    for event, fields in events:
        log.append(event, JOB, fields)
    outcome = assess([make_pulled_log("bank", store.read(), KEY.public_key())])
    (job,) = outcome.jobs
    return job.states


def test_the_regulator_reads_a_cancelled_job_as_aborted_old_log_and_new() -> None:
    """The bug: submitted -> awaiting approval -> cancelled used to read "awaiting approval"."""
    spec_fields: dict[str, JsonScalar] = {
        Key.PROTOCOL: "psi",
        Key.REQUESTER: "bank",
        Key.PARTIES: "bank,tax",
        Key.RECEIVERS: "bank",
        Key.PURPOSE: "p",
        Key.SPEC_SHA256: "0" * 64,
    }
    legacy = [
        (Event.JOB_SUBMITTED, spec_fields),
        (Event.JOB_AWAITING_APPROVAL, {}),
        (Event.JOB_CANCELLED, {Key.BY: "bank"}),
    ]
    assert _regulator_states(legacy) == {"bank": "aborted"}
    # Today's store writes the state into every record of the job's life.
    store = MemoryAuditStore()
    jobs = MemoryJobStore(AuditLog(store, KEY, "bank", _clock))
    jobs.create(_spec(), Event.JOB_SUBMITTED, spec_fields)
    jobs.transition(JOB, JobState.AWAITING_APPROVAL, Event.JOB_AWAITING_APPROVAL)
    jobs.transition(JOB, JobState.ABORTED, Event.JOB_CANCELLED, {Key.BY: "bank"})
    outcome = assess([make_pulled_log("bank", store.read(), KEY.public_key())])
    assert outcome.jobs[0].states == {"bank": "aborted"}
    interrupted = [*legacy[:1], (Event.JOB_STARTED, {}), (Event.JOB_INTERRUPTED, {})]
    assert _regulator_states(interrupted) == {"bank": "interrupted"}
    resumed = [*interrupted, (Event.JOB_RESUMED, {Key.BY: "bank"})]
    assert _regulator_states(resumed) == {"bank": "running"}


class _AbortedMeanwhile(MemoryJobStore):
    """A store whose job a peer's abort ends just after a reader saw it running."""

    armed = False

    def get(self, job_id: str) -> JobStatus:
        seen = super().get(job_id)
        if self.armed and seen.state is JobState.RUNNING:
            self.armed = False
            self.transition(job_id, JobState.ABORTED, Event.JOB_ABORTED, error="tax: failed")
        return seen


def test_a_move_that_an_abort_overtook_is_not_made() -> None:
    """A role's failure after an abort landed leaves the job aborted and records nothing more."""
    store = MemoryAuditStore()
    jobs = _AbortedMeanwhile(AuditLog(store, KEY, "bank", _clock))
    jobs.create(_spec(), Event.JOB_SUBMITTED)
    for step in _path_to(JobState.RUNNING):
        jobs.transition(JOB, step, Event.JOB_ACCEPTED)
    jobs.armed = True
    move = Move(JOB, JobState.FAILED, Event.JOB_CLOSED, {Key.REASON: "x"}, "x")
    assert move.write(jobs) is False
    status = jobs.get(JOB)
    assert status.state is JobState.ABORTED and status.error == "tax: failed"
    last = store.last()
    assert last is not None and last.event == Event.JOB_ABORTED
