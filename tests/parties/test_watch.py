"""Pushed job status: watches (bounded, ended at stop) and the participants' wake-ups."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bund.parties.errors import NotAuthorizedError, PeerUnavailableError, TooManyWatchesError
from bund.parties.lifecycle.states import JobState, JobStatus, is_terminal
from tests.parties.lifecycle_harness import EXCHANGE, FAST, Loopback, PartySetup, spec

ROWS = {"id": [str(i) for i in range(7)]}
#: No fallback poll within any test's life: only a push can move a job along.
PUSH_ONLY = dataclasses.replace(FAST, approval_timeout=3600.0, fallback_poll=3600.0)


def _federation(tmp_path: Path, quorum: int = 1, fallback_poll: float = 3600.0) -> Loopback:
    loop = Loopback(
        tmp_path,
        {EXCHANGE.name: EXCHANGE},
        dataclasses.replace(PUSH_ONLY, fallback_poll=fallback_poll),
    )
    loop.add("bank", PartySetup({"loans": ROWS}), ["tax"])
    tax = PartySetup({"filings": ROWS}, approvals=True, approver_names=("ann", "bo"), quorum=quorum)
    loop.add("tax", tax, ["bank"])
    loop.add("registry", PartySetup({"firms": ROWS}), ["bank"])
    return loop


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loopback]:
    federation = _federation(tmp_path)
    yield federation
    federation.close()


def _submit(loop: Loopback) -> str:
    job = spec(
        "exchange", [("bank", "member", "loans"), ("tax", "member", "filings")], ["bank", "tax"]
    )
    job_id = loop.managers["bank"].submit(job, "bank")
    loop.wait_state("tax", job_id, JobState.AWAITING_APPROVAL)
    return job_id


def _never() -> bool:
    return False


def test_a_watch_yields_the_status_then_each_change_until_the_job_ends(loop: Loopback) -> None:
    job_id = _submit(loop)
    watch = loop.managers["bank"].watch(job_id, "bank", "bank operator ann", _never)
    first = next(watch)
    loop.approve("tax", job_id, "ann")
    rest = list(watch)
    assert first.state is JobState.ACCEPTED
    assert rest and is_terminal(rest[-1].state) and rest[-1].state is JobState.SUCCEEDED
    assert all(a != b for a, b in zip([first, *rest], rest, strict=False))
    assert loop.managers["bank"].watches.open_count() == 0


def test_only_the_job_s_participants_may_watch_it(loop: Loopback) -> None:
    job_id = _submit(loop)
    with pytest.raises(NotAuthorizedError):
        loop.managers["bank"].watch(job_id, "registry", "registry", _never)
    assert loop.managers["bank"].watches.open_count() == 0


def test_a_caller_holds_a_bounded_number_of_watches(loop: Loopback) -> None:
    job_id = _submit(loop)
    manager = loop.managers["bank"]
    limit = manager.watches.per_caller
    held = [manager.watch(job_id, "bank", "bank operator ann", _never) for _ in range(limit)]
    for watch in held:
        next(watch)
    with pytest.raises(TooManyWatchesError, match="close one"):
        next(manager.watch(job_id, "bank", "bank operator ann", _never))
    other = manager.watch(job_id, "bank", "bank operator bo", _never)
    assert next(other).spec.job_id == job_id  # the limit is per caller
    held.pop().close()
    again = manager.watch(job_id, "bank", "bank operator ann", _never)
    assert next(again).state is JobState.ACCEPTED
    assert manager.watches.open_count("bank operator ann") == limit


def test_the_node_serves_a_bounded_number_of_watches_in_all(tmp_path: Path) -> None:
    loop = Loopback(
        tmp_path, {EXCHANGE.name: EXCHANGE}, dataclasses.replace(PUSH_ONLY, watch_total=2)
    )
    try:
        loop.add("bank", PartySetup({"loans": ROWS}), ["tax"])
        loop.add("tax", PartySetup({"filings": ROWS}, approvals=True), ["bank"])
        job_id = _submit(loop)
        manager = loop.managers["bank"]
        held = [manager.watch(job_id, "bank", f"bank operator {n}", _never) for n in "ab"]
        for watch in held:
            next(watch)
        with pytest.raises(TooManyWatchesError, match="serves 2 watches"):
            next(manager.watch(job_id, "bank", "bank operator c", _never))
    finally:
        loop.close()


def _follow_in_thread(
    watch: Iterator[JobStatus],
) -> tuple[threading.Thread, threading.Event, list[JobStatus]]:
    seen: list[JobStatus] = []
    started = threading.Event()

    def run() -> None:
        for status in watch:
            seen.append(status)
            started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10.0)
    return thread, started, seen


def test_stopping_the_node_ends_every_open_watch_and_refuses_new_ones(loop: Loopback) -> None:
    job_id = _submit(loop)
    manager = loop.managers["bank"]
    thread, _, seen = _follow_in_thread(manager.watch(job_id, "bank", "bank", _never))
    manager.watches.close()
    thread.join(10.0)
    assert not thread.is_alive()
    assert [s.state for s in seen] == [JobState.ACCEPTED]  # ended, not by the job's end
    with pytest.raises(TooManyWatchesError, match="stopping"):
        next(manager.watch(job_id, "bank", "bank", _never))
    assert manager.watches.open_count() == 0


def test_a_caller_that_goes_away_ends_its_watch(loop: Loopback) -> None:
    job_id = _submit(loop)
    manager = loop.managers["bank"]
    gone = threading.Event()
    thread, _, _ = _follow_in_thread(manager.watch(job_id, "bank", "bank", gone.is_set))
    gone.set()
    manager.watches.wake()
    thread.join(10.0)
    assert not thread.is_alive()
    assert manager.watches.open_count() == 0


def test_the_last_approval_starts_the_job_by_push_without_a_poll(loop: Loopback) -> None:
    # The requester's fallback poll is an hour away: only the participant's push starts it.
    job_id = _submit(loop)
    loop.approve("tax", job_id, "ann")
    assert loop.wait("bank", job_id).state is JobState.SUCCEEDED


def test_each_approval_short_of_the_quorum_reaches_the_requester_by_push(tmp_path: Path) -> None:
    loop = _federation(tmp_path, quorum=2)
    try:
        job_id = _submit(loop)
        loop.approve("tax", job_id, "bo")

        def heard_bo(status: JobStatus) -> bool:
            return any(v.party == "tax" and v.approved_by == ("bo",) for v in status.parties)

        loop.wait("bank", job_id, heard_bo)
        loop.approve("tax", job_id, "ann")
        assert loop.wait("bank", job_id).state is JobState.SUCCEEDED
    finally:
        loop.close()


def test_a_lost_push_is_caught_up_by_the_fallback_poll(tmp_path: Path) -> None:
    loop = _federation(tmp_path, fallback_poll=0.05)
    try:

        def lost(to: str, job_id: str) -> None:
            raise PeerUnavailableError(f"{to} cannot be reached")

        loop.managers["tax"].peers.notify = lost  # type: ignore[method-assign]
        job_id = _submit(loop)
        loop.approve("tax", job_id, "ann")
        assert loop.wait("bank", job_id).state is JobState.SUCCEEDED
    finally:
        loop.close()


def test_a_push_about_a_job_it_did_not_request_is_refused(loop: Loopback) -> None:
    job_id = _submit(loop)
    with pytest.raises(NotAuthorizedError):
        loop.managers["tax"].notified(job_id, "bank")  # tax is not the requester
    with pytest.raises(NotAuthorizedError):
        loop.managers["bank"].notified(job_id, "registry")  # registry takes no part
