"""A job's life between several managers in one process (no gRPC): milliseconds per scenario."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest

from bund.parties.errors import JobStateError, NotAuthorizedError
from bund.parties.lifecycle.events import CLOSE_TAG, Event, Key
from bund.parties.lifecycle.states import JobState, is_terminal
from tests.conftest import wait_until
from tests.integration.fault_protocols import RELAY
from tests.parties.lifecycle_harness import (
    EXCHANGE,
    GATE,
    GATHER,
    Loopback,
    PartySetup,
    spec,
)

ROWS = {"id": [str(i) for i in range(7)]}
PROTOCOLS = {p.name: p for p in (EXCHANGE, GATHER, RELAY)}


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loopback]:
    federation = Loopback(tmp_path, PROTOCOLS)
    yield federation
    federation.close()


def _pair(
    loop: Loopback, tax: PartySetup | None = None, bank: PartySetup | None = None
) -> tuple[str, str]:
    loop.add("bank", bank or PartySetup({"loans": ROWS}), ["tax"])
    loop.add("tax", tax or PartySetup({"filings": {"id": ROWS["id"][:3]}}), ["bank"])
    return "bank", "tax"


def _exchange(**params: str | int | float | bool) -> object:
    return spec(
        "exchange",
        [("bank", "member", "loans"), ("tax", "member", "filings")],
        ["bank", "tax"],
        params,
    )


def test_a_job_runs_closes_and_countersigns_everywhere(loop: Loopback) -> None:
    _pair(loop)
    job = loop.managers["bank"].submit(_exchange(), "bank")  # type: ignore[arg-type]
    for party in ("bank", "tax"):
        assert loop.wait(party, job).state is JobState.SUCCEEDED
    info = loop.managers["bank"].result(job, "bank")
    assert dict(info.summary) == {"mine": 7, "theirs": 3}
    assert set(info.artifact_sizes) == {"x.json", "receipt.json"}
    bank = loop.events("bank", job)
    assert bank[:3] == ["job_submitted", "job_accepted", "job_started"]
    # The closing records come last, then the operator's read of the result (recorded first).
    assert bank[-3:] == ["privacy_receipt", "job_closed", "result_read"]
    tax = loop.events("tax", job)
    assert tax[:3] == ["job_proposed", "job_accepted", "job_started"]
    # The closing went through the same recording path as every message.
    sent = loop.records("bank", job, "message_sent")
    assert [m[Key.TAG] for m in sent] == ["count", CLOSE_TAG]
    (bank_close,) = loop.records("bank", job, "job_closed")
    (tax_close,) = loop.records("tax", job, "job_closed")
    assert bank_close["peer_transcript.tax"] == tax_close[Key.TRANSCRIPT_SHA256]
    assert tax_close["peer_transcript.bank"] == bank_close[Key.TRANSCRIPT_SHA256]
    assert bank_close[Key.MESSAGES] == 2  # the protocol's messages, not the closing
    assert (
        loop.managers["bank"].store.get(job).transcript_digest == bank_close[Key.TRANSCRIPT_SHA256]
    )


def test_a_policy_refusal_ends_the_job_everywhere_before_anything_runs(loop: Loopback) -> None:
    loop.add("bank", PartySetup({"loans": ROWS}), ["tax"])
    loop.add("tax", PartySetup({"filings": ROWS}), [])  # tax does not work with bank
    job = loop.managers["bank"].submit(_exchange(), "bank")  # type: ignore[arg-type]
    status = loop.wait("bank", job)
    assert status.state is JobState.REFUSED
    assert "refused by tax" in status.error and "does not allow jobs with bank" in status.error
    # A party tax does not work with creates no state and no record of the job at tax.
    assert loop.managers["tax"].store.find(job) is None
    assert loop.events("tax", job) == []
    assert "message_sent" not in loop.events("bank", job)
    assert "job_refused_by_peer" in loop.events("bank", job)


def test_the_job_waits_for_the_approver_then_runs(loop: Loopback) -> None:
    _pair(loop, PartySetup({"filings": ROWS}, approvals=True))
    job = loop.managers["bank"].submit(_exchange(), "bank")  # type: ignore[arg-type]
    loop.wait_state("tax", job, JobState.AWAITING_APPROVAL)
    loop.wait_state("bank", job, JobState.ACCEPTED)
    with pytest.raises(NotAuthorizedError):
        loop.managers["tax"].approval_request(job, "bank")  # only tax's own operator
    loop.approve("tax", job)
    assert loop.wait("bank", job).state is JobState.SUCCEEDED
    approved = loop.records("tax", job, "job_approved")
    assert approved and approved[0][Key.STATE] == "awaiting_approval"


def test_a_denial_reaches_the_requester_with_its_reason(loop: Loopback) -> None:
    _pair(loop, PartySetup({"filings": ROWS}, approvals=True))
    job = loop.managers["bank"].submit(_exchange(), "bank")  # type: ignore[arg-type]
    loop.wait_state("tax", job, JobState.AWAITING_APPROVAL)
    loop.managers["tax"].deny(job, "tax", "not covered by our agreement")
    status = loop.wait("bank", job)
    assert status.state is JobState.REFUSED
    assert "not covered by our agreement" in status.error
    with pytest.raises(JobStateError, match="too late"):
        loop.managers["tax"].deny(job, "tax", "again")


def test_an_approval_that_crosses_the_requesters_abort_says_the_job_ended(
    loop: Loopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    _pair(loop, PartySetup({"filings": ROWS}, approvals=True))
    job = loop.managers["bank"].submit(_exchange(), "bank")  # type: ignore[arg-type]
    loop.wait_state("tax", job, JobState.AWAITING_APPROVAL)
    tax = loop.managers["tax"]
    verify = tax.admission.verify

    def abort_then_verify(*args: object) -> object:
        # The bank's abort arrives while tax's node checks the approver's signature.
        tax.abort(job, "bank", "refused by registry")
        return verify(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(tax.admission, "verify", abort_then_verify)
    with pytest.raises(JobStateError, match="was refused meanwhile .*will not run"):
        loop.approve("tax", job)
    status = tax.store.get(job)
    assert status.state is JobState.REFUSED and "refused by registry" in status.error
    assert "job_approved" in loop.events("tax", job)  # the signature given is on record


def test_a_node_stopping_while_its_job_awaits_approval_stops_waiting(loop: Loopback) -> None:
    _pair(loop, PartySetup({"filings": ROWS}, approvals=True))
    bank = loop.managers["bank"]
    job = bank.submit(_exchange(), "bank")  # type: ignore[arg-type]
    loop.wait_state("tax", job, JobState.AWAITING_APPROVAL)
    coordinating = [t for t in threading.enumerate() if t.name.startswith("bund-job-bank_")]
    assert coordinating  # the requester's coordinator waits for tax's approver
    bank.shutdown()
    # Its wait ends now (not at the approval timeout): nothing holds the process at exit.
    wait_until(lambda: not any(t.is_alive() for t in coordinating) or None, 10, "the wait to end")
    assert bank.store.get(job).state is JobState.ACCEPTED  # kept as it was, for the restart


def test_cancelling_while_awaiting_approval_calls_the_job_off_everywhere(loop: Loopback) -> None:
    _pair(loop, PartySetup({"filings": ROWS}, approvals=True))
    job = loop.managers["bank"].submit(_exchange(), "bank")  # type: ignore[arg-type]
    loop.wait_state("tax", job, JobState.AWAITING_APPROVAL)
    loop.wait_state("bank", job, JobState.ACCEPTED)  # the requester accepted its own job
    loop.managers["bank"].cancel(job, "bank", "wrong period")
    assert loop.wait("bank", job).state is JobState.ABORTED
    assert loop.wait("tax", job).state is JobState.REFUSED  # called off before it ran
    (cancelled,) = loop.records("bank", job, "job_cancelled")
    assert cancelled[Key.STATE] == "aborted" and cancelled["from_state"] == "accepted"
    with pytest.raises(JobStateError, match="nothing to cancel"):
        loop.managers["bank"].cancel(job, "bank")


def test_cancelling_a_running_job_aborts_every_role(loop: Loopback) -> None:
    _pair(loop)
    job = loop.managers["bank"].submit(_exchange(gated=True), "bank")  # type: ignore[arg-type]
    loop.wait_state("tax", job, JobState.RUNNING)
    loop.managers["bank"].cancel(job, "bank", "stop")
    for party in ("bank", "tax"):
        status = loop.wait(party, job)
        assert status.state is JobState.ABORTED
        assert loop.managers[party].runner.wait_idle(job, 10.0)
        (closed,) = loop.records(party, job, "job_closed")
        assert closed[Key.OUTCOME] == "aborted"
    GATE.open(job)


def test_a_cut_off_peer_interrupts_the_job_and_it_heals_when_the_peer_returns(
    loop: Loopback,
) -> None:
    _pair(
        loop,
        PartySetup({"filings": ROWS}, budget_epsilon=Fraction(1)),
    )
    relay = spec(
        "relay_test",
        [("bank", "member", "loans"), ("tax", "member", "filings")],
        ["bank"],
        {"rounds": 30, "pause_s": 0.05},  # 1.5 s of rounds left to cut into, even under load
    )
    job = loop.managers["bank"].submit(relay, "bank")
    loop.wait("tax", job, lambda s: s.done >= 3)
    loop.cut("tax")
    loop.wait_state("bank", job, JobState.INTERRUPTED)
    loop.restore("tax")
    for party in ("bank", "tax"):
        assert loop.wait(party, job, timeout=20).state is JobState.SUCCEEDED
    assert loop.managers["bank"].result(job, "bank").summary["sum_of_squares"] == sum(
        k * k for k in range(30)
    )
    assert "job_interrupted" in loop.events("bank", job)
    assert "job_resumed" in loop.events("bank", job)
    # Every round charged once, whatever was replayed.
    line = loop.managers["tax"].ledger.line("filings")
    assert line.spent.epsilon == Fraction(30, 1000)


def test_a_dropped_member_is_left_out_and_named_in_the_closing(loop: Loopback) -> None:
    members = ["h1", "h2", "h3"]
    everyone = ["coord", *members]
    loop.add("coord", PartySetup(), members)
    for m in members:
        rows = {"id": ["x"] * (members.index(m) + 2)}
        loop.add(m, PartySetup({"rows": rows}), [p for p in everyone if p != m])
    loop.cut("h3")
    job = loop.managers["coord"].submit(
        spec(
            "gather",
            [("coord", "coordinator", None), *((m, "member", "rows") for m in members)],
            ["coord"],
        ),
        "coord",
    )
    # h3 never heard of the job: the proposal failed, so the job could not start at all.
    status = loop.wait("coord", job)
    assert status.state is JobState.FAILED and "unreachable" in status.error

    loop.restore("h3")
    job = loop.managers["coord"].submit(
        spec(
            "gather",
            [("coord", "coordinator", None), *((m, "member", "rows") for m in members)],
            ["coord"],
            {"gated": True},
        ),
        "coord",
    )
    for m in members:
        loop.wait_state(m, job, JobState.RUNNING)
    loop.cut("h3")  # gone after the start, before it sent anything: a tolerated drop-out
    GATE.open(job)
    status = loop.wait("coord", job, timeout=20)
    assert status.state is JobState.SUCCEEDED, status.error
    assert dict(loop.managers["coord"].result(job, "coord").summary) == {
        "sum": 2 + 3,
        "answered": 2,
    }
    (closed,) = loop.records("coord", job, "job_closed")
    assert closed[Key.DROPPED] == "h3"
    assert is_terminal(loop.wait("h1", job).state)


def test_only_participants_may_ask_and_only_the_requester_may_start(loop: Loopback) -> None:
    _pair(loop)
    loop.add("registry", PartySetup(), ["bank"])
    job = loop.managers["bank"].submit(_exchange(), "bank")  # type: ignore[arg-type]
    loop.wait("bank", job)
    with pytest.raises(NotAuthorizedError):
        loop.managers["bank"].status(job, "registry")
    with pytest.raises(NotAuthorizedError):
        loop.managers["tax"].start(job, "registry")
    with pytest.raises(NotAuthorizedError):
        loop.managers["bank"].result(job, "tax")


def test_a_job_reserves_at_acceptance_and_pays_once_at_its_start(loop: Loopback) -> None:
    _pair(
        loop,
        PartySetup({"filings": ROWS}, budget_epsilon=Fraction(1)),
        PartySetup({"loans": ROWS}, budget_epsilon=Fraction(1, 2)),
    )
    job = loop.managers["bank"].submit(_exchange(epsilon="1/4"), "bank")  # type: ignore[arg-type]
    assert loop.wait("bank", job).state is JobState.SUCCEEDED
    line = loop.managers["tax"].ledger.line("filings")
    assert (line.spent.epsilon, line.reserved.epsilon) == (Fraction(1, 4), 0)
    assert [e for e in loop.events("tax", job) if e.startswith("budget_")] == [
        "budget_reserved",
        "budget_charged",
    ]
    charged = loop.records("tax", job, Event.BUDGET_CHARGED)
    assert len(charged) == 1 and charged[0][Key.EPSILON] == "1/4"


def test_a_quorum_of_named_approvers_each_signing_on_their_own(loop: Loopback) -> None:
    tax = PartySetup({"filings": ROWS}, approvals=True, approver_names=("ann", "bo", "cy"))
    tax.quorum = 2
    _pair(loop, tax)
    job = loop.managers["bank"].submit(_exchange(), "bank")  # type: ignore[arg-type]
    loop.wait_state("tax", job, JobState.AWAITING_APPROVAL)
    loop.approve("tax", job, "bo")
    status = loop.managers["tax"].store.get(job)
    assert status.state is JobState.AWAITING_APPROVAL and status.approved_by == ("bo",)
    with pytest.raises(JobStateError, match="bo approved job .* already"):
        loop.approve("tax", job, "bo")
    loop.approve("tax", job, "cy")
    assert loop.wait("bank", job).state is JobState.SUCCEEDED
    assert loop.managers["tax"].store.get(job).approved_by == ("bo", "cy")
    approvals = loop.records("tax", job, "job_approved")
    assert [a[Key.APPROVER] for a in approvals] == ["bo", "cy"]
    assert all(a["quorum"] == 2 for a in approvals)


def test_approvals_given_survive_a_restart_of_the_approving_node(loop: Loopback) -> None:
    tax = PartySetup({"filings": ROWS}, approvals=True, approver_names=("ann", "bo"))
    tax.quorum = 2
    _pair(loop, tax)
    job = loop.managers["bank"].submit(_exchange(), "bank")  # type: ignore[arg-type]
    loop.wait_state("tax", job, JobState.AWAITING_APPROVAL)
    loop.approve("tax", job, "ann")
    loop.restart("tax")
    assert loop.managers["tax"].store.get(job).approved_by == ("ann",)
    loop.approve("tax", job, "bo")
    assert loop.wait("bank", job).state is JobState.SUCCEEDED


def test_a_restart_of_the_requester_while_approvals_are_pending_keeps_the_job(
    loop: Loopback,
) -> None:
    """Before: a restart of the requester's node failed every job awaiting approval."""
    _pair(loop, PartySetup({"filings": ROWS}, approvals=True))
    job = loop.managers["bank"].submit(_exchange(), "bank")  # type: ignore[arg-type]
    loop.wait_state("tax", job, JobState.AWAITING_APPROVAL)
    loop.wait_state("bank", job, JobState.ACCEPTED)
    loop.restart("bank")
    loop.approve("tax", job)
    assert loop.wait("bank", job).state is JobState.SUCCEEDED
    assert loop.wait("tax", job).state is JobState.SUCCEEDED
