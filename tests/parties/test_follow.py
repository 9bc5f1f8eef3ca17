"""Following a job (bund/parties/follow.py) against a scripted node: no network, no clock."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
import pytest

from bund.parties.client import RemoteError
from bund.parties.follow import FollowTimeoutError, follow_job, in_state, status_changes
from bund.parties.jobs import JobSpec, Participant
from bund.parties.lifecycle.states import JobState, JobStatus

JOB = "0f" * 16
SPEC = JobSpec(
    "psi",
    (Participant("bank", "member"), Participant("tax", "member")),
    ("bank",),
    "test",
    "bank",
    job_id=JOB,
)
NOT_FOUND = RemoteError("tax", grpc.StatusCode.NOT_FOUND, f"no job {JOB}")


class ScriptedNode:
    """Answers each status call with the next item of its script (a state, or an error to raise).

    The last item repeats once the script is spent, as a node's answer does.
    """

    party = "tax"

    def __init__(self, script: Iterable[JobState | JobStatus | Exception]) -> None:
        self.script = list(script)
        self.calls = 0

    def status(self, job_id: str) -> JobStatus:
        assert job_id == JOB
        item = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        if isinstance(item, Exception):
            raise item
        return item if isinstance(item, JobStatus) else JobStatus(SPEC, item)


def follow(node: ScriptedNode, **kwargs: object) -> JobStatus:
    return follow_job(node, JOB, interval=0, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "end", [JobState.SUCCEEDED, JobState.FAILED, JobState.REFUSED, JobState.ABORTED]
)
def test_follows_until_a_terminal_state_and_asks_no_more(end: JobState) -> None:
    node = ScriptedNode([JobState.PROPOSED, JobState.RUNNING, end, JobState.RUNNING])
    assert follow(node).state is end
    assert node.calls == 3


def test_interrupted_is_not_terminal_the_follow_goes_on_until_the_job_heals() -> None:
    node = ScriptedNode([JobState.RUNNING, JobState.INTERRUPTED, JobState.RUNNING,
                         JobState.SUCCEEDED])  # fmt: skip
    seen: list[JobState] = []
    status = follow(node, on_update=lambda s: seen.append(s.state))
    assert status.state is JobState.SUCCEEDED
    assert seen == [JobState.RUNNING, JobState.INTERRUPTED, JobState.RUNNING, JobState.SUCCEEDED]


def test_until_stops_at_the_state_asked_for_or_earlier_at_a_terminal_one() -> None:
    waiting = ScriptedNode([JobState.PROPOSED, JobState.AWAITING_APPROVAL, JobState.SUCCEEDED])
    assert follow(waiting, until=in_state(JobState.AWAITING_APPROVAL)).state is (
        JobState.AWAITING_APPROVAL
    )
    refused = ScriptedNode([JobState.PROPOSED, JobState.REFUSED])
    assert follow(refused, until=in_state(JobState.AWAITING_APPROVAL)).state is JobState.REFUSED
    interrupted = ScriptedNode([JobState.RUNNING, JobState.INTERRUPTED, JobState.SUCCEEDED])
    assert follow(interrupted, until=in_state(JobState.INTERRUPTED)).state is JobState.INTERRUPTED


def test_until_sees_progress_not_only_states() -> None:
    script = [JobStatus(SPEC, JobState.RUNNING, "round", done, 10) for done in range(10)]
    node = ScriptedNode(script)
    assert follow(node, until=lambda s: s.done >= 4).done == 4
    assert node.calls == 5


def test_on_update_sees_each_change_once() -> None:
    running = JobStatus(SPEC, JobState.RUNNING, "blind", 1, 4)
    further = JobStatus(SPEC, JobState.RUNNING, "blind", 2, 4)
    node = ScriptedNode([running, running, running, further, further, JobState.SUCCEEDED])
    seen: list[JobStatus] = []
    follow(node, on_update=seen.append)
    assert seen == [running, further, JobStatus(SPEC, JobState.SUCCEEDED)]
    assert node.calls == 6


def test_not_found_is_a_proposal_on_its_way_until_the_node_knows_the_job() -> None:
    node = ScriptedNode([NOT_FOUND, NOT_FOUND, JobState.AWAITING_APPROVAL, JobState.SUCCEEDED])
    assert follow(node).state is JobState.SUCCEEDED
    # Once the node knew the job, NOT_FOUND is an error, not a proposal on its way.
    vanished = ScriptedNode([JobState.RUNNING, NOT_FOUND])
    with pytest.raises(RemoteError) as caught:
        follow(vanished)
    assert caught.value.not_found


def test_not_found_past_the_grace_is_raised() -> None:
    node = ScriptedNode([NOT_FOUND, JobState.SUCCEEDED])
    with pytest.raises(RemoteError, match="NOT_FOUND"):
        follow(node, not_found_grace=0)
    assert node.calls == 1


def test_other_errors_are_raised_at_once() -> None:
    denied = RemoteError("tax", grpc.StatusCode.PERMISSION_DENIED, "not a participant")
    node = ScriptedNode([denied, JobState.SUCCEEDED])
    with pytest.raises(RemoteError, match="PERMISSION_DENIED"):
        follow(node)


def test_timeout_names_the_job_the_node_and_the_last_state() -> None:
    with pytest.raises(FollowTimeoutError) as caught:
        follow(ScriptedNode([JobState.RUNNING]), timeout=0)
    assert caught.value.last == JobStatus(SPEC, JobState.RUNNING)
    assert f"job {JOB} is still running at tax after 0 s" in str(caught.value)
    assert f"bund job status {JOB} --watch" in str(caught.value)


def test_a_node_that_never_knows_the_job_answers_not_found_at_the_timeout() -> None:
    node = ScriptedNode([NOT_FOUND])
    with pytest.raises(RemoteError, match="NOT_FOUND"):
        follow(node, timeout=0)
    assert node.calls == 1


def test_status_changes_ends_after_a_terminal_status() -> None:
    node = ScriptedNode([JobState.RUNNING, JobState.ABORTED, JobState.RUNNING])
    states = [s.state for s in status_changes(node, JOB, timeout=60, interval=0)]
    assert states == [JobState.RUNNING, JobState.ABORTED]
