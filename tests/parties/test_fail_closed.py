"""Governance that fails closed, in process: write-ahead auditing, reserved budgets, bounded state.

Each test plays one situation of the governance issue between managers wired in one process
(tests/parties/lifecycle_harness.py); tests/security/test_fail_closed_nodes.py plays the same
against nodes over mTLS.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest

from bund.compute.dp.budget import Budget
from bund.parties.audit import AuditStoreUnavailableError
from bund.parties.errors import JobStateError
from bund.parties.jobs import InvalidJobSpecError, JobSpec, Participant
from bund.parties.ledger import BudgetExhaustedError, BudgetLedger
from bund.parties.lifecycle.events import Event, Key
from bund.parties.lifecycle.runner import decode_closing
from bund.parties.lifecycle.states import JobState
from bund.parties.transport import MessageBudgetExceededError, envelope_digest
from tests.parties.lifecycle_harness import (
    EXCHANGE,
    FAST,
    GATE,
    ROUNDS,
    Loopback,
    PartySetup,
    spec,
)
from tests.parties.test_governance_units import _Audit

ROWS = {"id": [str(i) for i in range(7)]}
PROTOCOLS = {p.name: p for p in (EXCHANGE, ROUNDS)}


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loopback]:
    federation = Loopback(tmp_path, PROTOCOLS)
    yield federation
    federation.close()


def _exchange(**params: str | int | float | bool) -> JobSpec:
    return spec(
        "exchange",
        [("bank", "member", "loans"), ("tax", "member", "filings")],
        ["bank", "tax"],
        params,
    )


def _pair(loop: Loopback, tax: PartySetup | None = None) -> None:
    loop.add("bank", PartySetup({"loans": ROWS}, budget_epsilon=Fraction(1)), ["tax"])
    loop.add("tax", tax or PartySetup({"filings": ROWS}, budget_epsilon=Fraction(1)), ["bank"])


# -- 1. no action without its audit record ---------------------------------------------------


def test_a_submission_during_an_audit_outage_is_refused_and_leaves_nothing(
    loop: Loopback,
) -> None:
    _pair(loop)
    loop.audits["bank"].down()
    with pytest.raises(AuditStoreUnavailableError):
        loop.managers["bank"].submit(_exchange(), "bank")
    assert loop.managers["bank"].store.newest(10) == []
    assert len(loop.audits["bank"]) == 0


def test_a_result_is_served_only_once_its_read_is_on_record(loop: Loopback) -> None:
    _pair(loop)
    job = loop.managers["bank"].submit(_exchange(), "bank")
    assert loop.wait("bank", job).state is JobState.SUCCEEDED
    loop.audits["bank"].down()
    with pytest.raises(AuditStoreUnavailableError):
        loop.managers["bank"].result(job, "bank")
    with pytest.raises(AuditStoreUnavailableError):
        loop.managers["bank"].read_artifact(job, "bank", "x.json", 0, 10)
    loop.audits["bank"].up()
    assert loop.managers["bank"].read_artifact(job, "bank", "x.json", 0, 10) == (b"{}", 2)
    (read,) = loop.records("bank", job, Event.RESULT_READ)
    assert (read[Key.ARTIFACT], read[Key.OFFSET], read[Key.BYTES]) == ("x.json", 0, 2)


def test_a_send_is_on_record_before_it_leaves(loop: Loopback) -> None:
    _pair(loop)
    job = loop.managers["bank"].submit(_exchange(gated=True), "bank")
    loop.wait_state("tax", job, JobState.RUNNING)
    loop.audits["bank"].refuse = lambda record: record.event == "message_sent"
    GATE.open(job)
    status = loop.wait("bank", job)
    assert status.state is JobState.FAILED and "audit store is down" in status.error
    # The message that could not be recorded never reached tax.
    assert "message_received" not in loop.events("tax", job)


def test_a_refused_closing_record_leaves_no_result_and_the_job_fails(loop: Loopback) -> None:
    """Before: the job ended SUCCEEDED with a readable result and no privacy_receipt."""
    _pair(loop)
    loop.audits["bank"].refuse = lambda record: record.event == "privacy_receipt"
    job = loop.managers["bank"].submit(_exchange(), "bank")
    status = loop.wait("bank", job)
    assert status.state is JobState.FAILED and not status.has_result
    assert "privacy_receipt" not in loop.events("bank", job)
    with pytest.raises(JobStateError, match="no result"):
        loop.managers["bank"].result(job, "bank")


def test_an_end_the_log_refused_is_recorded_once_the_log_is_back(loop: Loopback) -> None:
    _pair(loop)
    job = loop.managers["bank"].submit(_exchange(gated=True), "bank")
    loop.wait_state("tax", job, JobState.RUNNING)
    loop.audits["tax"].down()
    GATE.open(job)
    assert loop.managers["tax"].runner.wait_idle(job, 10)
    assert loop.managers["tax"].store.get(job).state is JobState.RUNNING  # nothing half-written
    loop.audits["tax"].up()
    status = loop.wait("tax", job)  # the watcher makes the move once the log takes its record
    assert status.state in (JobState.FAILED, JobState.ABORTED)
    assert "job_closed" in loop.events("tax", job)


# -- 3. budgets reserved, not burned -----------------------------------------------------------


def test_a_refused_job_charges_nobody_and_releases_every_reservation(loop: Loopback) -> None:
    """Before: six refused jobs burned the other hospitals' whole budget."""
    loop.add(
        "insurer", PartySetup({"claims": ROWS}, budget_epsilon=Fraction(5)), ["h1", "h2", "h3"]
    )
    loop.add(
        "h1", PartySetup({"patients": ROWS}, budget_epsilon=Fraction(1)), ["insurer", "h2", "h3"]
    )
    loop.add(
        "h2", PartySetup({"patients": ROWS}, budget_epsilon=Fraction(1)), ["insurer", "h1", "h3"]
    )
    loop.add("h3", PartySetup({"patients": ROWS}), ["h1", "h2"])  # h3 refuses the insurer

    def rounds(*hospitals: str) -> JobSpec:
        members = [("insurer", "member", "claims"), *((h, "member", "patients") for h in hospitals)]
        return spec("rounds", members, ["insurer"], {"rounds": 1, "unit": "1/2"})

    for _ in range(6):
        job = loop.managers["insurer"].submit(rounds("h1", "h2", "h3"), "insurer")
        assert loop.wait("insurer", job).state is JobState.REFUSED
        for h in ("h1", "h2"):
            assert loop.wait(h, job).state is JobState.REFUSED
    for h in ("h1", "h2"):
        line = loop.managers[h].ledger.line("patients")
        assert (line.spent.epsilon, line.reserved.epsilon) == (0, 0)
        released = [r for r in loop.audits[h].read() if r.event == "budget_released"]
        assert len(released) == 6 and all(r.fields[Key.EPSILON] == "1/2" for r in released)
    # The budget is all there for the job that is allowed.
    job = loop.managers["insurer"].submit(rounds("h1", "h2"), "insurer")
    assert loop.wait("insurer", job).state is JobState.SUCCEEDED
    assert loop.managers["h1"].ledger.line("patients").spent.epsilon == Fraction(1, 2)


def test_cancelling_before_the_start_releases_the_reservation(loop: Loopback) -> None:
    _pair(loop, PartySetup({"filings": ROWS}, budget_epsilon=Fraction(1), approvals=True))
    job = loop.managers["bank"].submit(_exchange(epsilon="1/4"), "bank")
    loop.wait_state("tax", job, JobState.AWAITING_APPROVAL)
    loop.wait_state("bank", job, JobState.ACCEPTED)
    assert loop.managers["bank"].ledger.line("loans").reserved.epsilon == Fraction(1, 4)
    loop.managers["bank"].cancel(job, "bank", "wrong period")
    loop.wait("bank", job)
    assert loop.managers["bank"].ledger.line("loans").reserved.epsilon == 0
    assert loop.managers["bank"].ledger.line("loans").spent.epsilon == 0
    (released,) = loop.records("bank", job, Event.BUDGET_RELEASED)
    assert released[Key.REASON] == "the job aborted"


def test_a_plan_pays_as_it_goes_and_the_unused_part_is_released(loop: Loopback) -> None:
    loop.add("a", PartySetup({"d": ROWS}, budget_epsilon=Fraction(1)), [])
    job = loop.managers["a"].submit(
        spec("rounds", [("a", "member", "d")], ["a"], {"rounds": 4, "run": 2, "unit": "1/10"}),
        "a",
    )
    assert loop.wait("a", job).state is JobState.SUCCEEDED
    line = loop.managers["a"].ledger.line("d")
    assert (line.spent.epsilon, line.reserved.epsilon) == (Fraction(2, 10), 0)
    assert [r[Key.EPSILON] for r in loop.records("a", job, Event.BUDGET_RELEASED)] == ["1/5"]


def test_a_role_charging_beyond_its_approved_plan_is_refused(loop: Loopback) -> None:
    loop.add("a", PartySetup({"d": ROWS}, budget_epsilon=Fraction(1)), [])
    job = loop.managers["a"].submit(
        spec("rounds", [("a", "member", "d")], ["a"], {"rounds": 2, "run": 3, "unit": "1/10"}),
        "a",
    )
    status = loop.wait("a", job)
    assert status.state is JobState.FAILED and "beyond its approved plan" in status.error
    line = loop.managers["a"].ledger.line("d")
    assert (line.spent.epsilon, line.reserved.epsilon) == (Fraction(2, 10), 0)


def test_caps_per_job_and_per_requester_stop_a_differencing_pair(loop: Loopback) -> None:
    """The same cohort with and without a target costs ε each time; the requester cap ends it."""
    loop.add("bank", PartySetup({"loans": ROWS}, budget_epsilon=Fraction(5)), ["tax"])
    tax = PartySetup(
        {"filings": ROWS},
        budget_epsilon=Fraction(5),
        max_epsilon_per_job=Fraction(1, 2),
        max_epsilon_per_requester=Fraction(1),
    )
    loop.add("tax", tax, ["bank"])
    too_big = loop.managers["bank"].submit(_exchange(epsilon="3/4"), "bank")
    status = loop.wait("bank", too_big)
    assert status.state is JobState.REFUSED and "max_epsilon_per_job" in status.error
    for _ in range(2):  # with and without the target: each pays
        job = loop.managers["bank"].submit(_exchange(epsilon="1/2"), "bank")
        assert loop.wait("bank", job).state is JobState.SUCCEEDED
    third = loop.managers["bank"].submit(_exchange(epsilon="1/2"), "bank")
    status = loop.wait("bank", third)
    assert status.state is JobState.REFUSED and "max_epsilon_per_requester" in status.error
    assert loop.managers["tax"].ledger.line("filings").spent.epsilon == 1


def test_concurrent_reservations_never_overspend(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "b.db", {"d": Budget(Fraction(3))}, _Audit())
    won: list[bool] = []

    def reserve(i: int) -> None:
        try:
            ledger.reserve(f"{i:032x}", "d", "bank", Budget(Fraction(1, 7)))
            won.append(True)
        except BudgetExhaustedError:
            won.append(False)

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert won.count(True) == 21 and ledger.line("d").reserved.epsilon == 3
    ledger.release(f"{0:032x}", "test")
    assert ledger.line("d").remaining.epsilon == Fraction(1, 7)


# -- 4. bounded state ---------------------------------------------------------------------------


def test_a_job_proposed_and_never_started_expires_and_releases(tmp_path: Path) -> None:
    loop = Loopback(tmp_path, PROTOCOLS, dataclasses.replace(FAST, unstarted_expiry=0.3))
    try:
        _pair(loop)
        proposal = dataclasses.replace(_exchange(epsilon="1/4"), job_id="c" * 32)
        # A counterparty proposes and never starts.
        assert loop.managers["tax"].propose(proposal, "bank") == (True, "")
        assert loop.managers["tax"].ledger.line("filings").reserved.epsilon == Fraction(1, 4)
        status = loop.wait("tax", proposal.job_id)
        assert status.state is JobState.FAILED and "expired" in status.error
        assert loop.managers["tax"].ledger.line("filings").reserved.epsilon == 0
        assert "job_expired" in loop.events("tax", proposal.job_id)
    finally:
        loop.close()


def test_messages_beyond_the_plan_or_under_unused_tags_are_refused(loop: Loopback) -> None:
    """Before: 4,000 messages of 60 KiB under unused tags grew a node's memory by 237 MiB."""
    loop.add("bank", PartySetup({"loans": ROWS}), ["tax"])
    limits = {"job_max_messages": 100, "job_max_bytes": 1 << 20}
    loop.add("tax", PartySetup({"filings": ROWS}, limits=limits), ["bank"])
    job = loop.managers["bank"].submit(_exchange(gated=True), "bank")
    loop.wait_state("tax", job, JobState.RUNNING)
    tax = loop.managers["tax"]
    payload = b"x" * 60_000
    sent = 0
    with pytest.raises(MessageBudgetExceededError, match="exceed the job's plan"):
        for i in range(4_000):
            tag = f"junk/{i}"
            tax.deliver(job, "bank", tag, payload, envelope_digest(job, tag, payload))
            sent += 1
    assert sent == (1 << 20) // 60_000  # the bytes of the plan, not a message more
    loop.managers["bank"].cancel(job, "bank")
    GATE.open(job)


def test_a_spec_too_large_to_store_is_refused_before_anything(loop: Loopback) -> None:
    with pytest.raises(InvalidJobSpecError, match="at most"):
        JobSpec(
            protocol="exchange",
            participants=(Participant("bank", "member", "loans"),),
            receivers=("bank",),
            purpose="p",
            requester="bank",
            params={f"p{i}": "x" * 4000 for i in range(100)},
        )


# -- 6. small holes -----------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"[" * 100_000, b"[" * 400, b'{"transcript_sha256": 1}'])
def test_a_malformed_closing_message_is_a_named_refusal_not_an_internal_error(
    payload: bytes,
) -> None:
    """Before: deeply nested JSON in a closing message ended in a generic internal error."""
    with pytest.raises(JobStateError, match="tax sent a malformed closing message"):
        decode_closing(payload, "tax")
