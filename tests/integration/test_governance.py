"""Governance at the nodes: approvals, classification, cohort floor, budgets, receipts.

Every refusal must happen before any protocol message is sent, and be in the audit log.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from bund.compute.dp.budget import Budget
from bund.parties import identity
from bund.parties.cli import app
from bund.parties.client import NodeClient, RemoteError
from bund.parties.follow import follow_job, in_state
from bund.parties.jobs import JobContext, JobSpec, Participant, ProtocolDef, Result
from bund.parties.lifecycle.states import JobState
from bund.parties.protocols import PROTOCOLS
from tests.conftest import NodeFactory
from tests.integration.test_node import BANK_IDS, TAX_IDS, audit_events, psi_spec, start_pair


def wait_state(client: NodeClient, job_id: str, *states: JobState, timeout: float = 30) -> JobState:
    """Follow the job at ``client``'s node until it is in one of ``states``; fail at another end.

    A participant may not know the job until it is proposed: follow_job asks again.
    """
    status = follow_job(client, job_id, until=in_state(*states), timeout=timeout, interval=0.02)
    assert status.state in states, f"job {job_id} ended {status.state.value}: {status.error}"
    return status.state


def no_protocol_messages(f: NodeFactory, job_id: str) -> None:
    for name in f.nodes:
        events = [ev for ev, jid, _ in audit_events(f, name) if jid == job_id]
        assert not [e for e in events if e.startswith("message_")], (name, events)
        assert "job_started" not in events, (name, events)


def approve(f: NodeFactory, name: str, job_id: str) -> None:
    with f.client(name) as c:
        request = c.approval_request(job_id)
        key = identity.load_audit_signing_key(f.federation.party_dir(name) / "approver_ed25519.key")
        c.approve(job_id, key.sign(request.payload()))


def start_approving_pair(f: NodeFactory) -> None:
    f.start(
        "bank", {"loans": {"company_id": BANK_IDS}}, ("tax",), {"loans": ["psi"]}, approvals=True
    )
    f.start("tax", {"filings": {"uscc": TAX_IDS}}, ("bank",), {"filings": ["psi"]}, approvals=True)


def test_job_runs_only_after_every_data_owner_approved(node_factory: NodeFactory) -> None:
    start_approving_pair(node_factory)
    with node_factory.client("bank") as bank, node_factory.client("tax") as tax:
        job_id = bank.submit(psi_spec())
        wait_state(tax, job_id, JobState.AWAITING_APPROVAL)
        wait_state(bank, job_id, JobState.AWAITING_APPROVAL)
        request = tax.approval_request(job_id)
        text = "\n".join(request.summary_lines())
        assert "bank learns which of its own ids tax also holds" in text
        assert "tax learns the size of bank's set; nothing else" in text
        assert "privacy budget charged to your dataset: none" in text
        approve(node_factory, "tax", job_id)
        # The tax bureau has accepted; the bank's own approver has not: nothing may run.
        wait_state(tax, job_id, JobState.ACCEPTED)
        assert bank.status(job_id).state is JobState.AWAITING_APPROVAL
        no_protocol_messages(node_factory, job_id)
        approve(node_factory, "bank", job_id)
        assert wait_state(bank, job_id, JobState.SUCCEEDED, JobState.FAILED) is JobState.SUCCEEDED
        result = bank.result(job_id)
    receipt = json.loads(result.artifacts["receipt.json"])
    assert receipt["protocol"] == "psi" and receipt["dataset"] == "loans"
    assert receipt["epsilon"] == "0" and receipt["records"] == len(BANK_IDS)
    for name in ("bank", "tax"):
        events = [ev for ev, jid, _ in audit_events(node_factory, name) if jid == job_id]
        assert "job_approved" in events and "privacy_receipt" in events
        assert events.index("job_approved") < events.index("job_started")


def test_approval_signed_for_another_spec_is_refused(node_factory: NodeFactory) -> None:
    start_approving_pair(node_factory)
    with node_factory.client("bank") as bank, node_factory.client("tax") as tax:
        first = bank.submit(psi_spec())
        second = bank.submit(psi_spec("cardinality"))
        wait_state(tax, first, JobState.AWAITING_APPROVAL)
        wait_state(tax, second, JobState.AWAITING_APPROVAL)
        key = identity.load_audit_signing_key(
            node_factory.federation.party_dir("tax") / "approver_ed25519.key"
        )
        signature_for_first = key.sign(tax.approval_request(first).payload())
        with pytest.raises(RemoteError) as err:
            tax.approve(second, signature_for_first)
        assert err.value.code is grpc.StatusCode.PERMISSION_DENIED
        assert "approve the job again" in err.value.details
        wrong_key = identity.load_audit_signing_key(
            node_factory.federation.party_dir("bank") / "approver_ed25519.key"
        )
        with pytest.raises(RemoteError):
            tax.approve(first, wrong_key.sign(tax.approval_request(first).payload()))
        assert tax.status(second).state is JobState.AWAITING_APPROVAL
    no_protocol_messages(node_factory, second)


def _cli(*args: str) -> str:
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, r.output
    return r.output


def test_pending_lists_what_awaits_approval_and_status_shows_each_answer(
    node_factory: NodeFactory,
) -> None:
    start_approving_pair(node_factory)
    bank_config = str(node_factory.config("bank").source)
    tax_config = str(node_factory.config("tax").source)
    with node_factory.client("bank") as bank, node_factory.client("tax") as tax:
        job_id = bank.submit(psi_spec())
        wait_state(tax, job_id, JobState.AWAITING_APPROVAL)
        (pending,) = json.loads(_cli("job", "pending", "--config", tax_config, "--json"))["jobs"]
        assert pending["job_id"] == job_id and pending["dataset"] == "filings"
        assert pending["learns"]["bank"] and pending["epsilon"] == "0"
        text = _cli("job", "pending", "--config", tax_config)
        assert f"bund job approve {job_id}" in text and "purpose:" in text
        # The bank's node has heard the tax bureau's answer: awaiting its approval.
        status = follow_job(
            bank, job_id, until=lambda s: bool(s.parties), timeout=30, interval=0.02
        )
        assert [(v.party, v.state) for v in status.parties] == [("tax", JobState.AWAITING_APPROVAL)]
        approve(node_factory, "tax", job_id)
        status = follow_job(
            bank,
            job_id,
            until=lambda s: any(v.state is JobState.ACCEPTED for v in s.parties),
            timeout=30,
            interval=0.02,
        )
        assert [(v.party, v.approved_by) for v in status.parties] == [("tax", ("approver",))]
        doc = json.loads(_cli("job", "status", job_id, "--config", bank_config, "--json"))
        assert doc["parties"] == [
            {"party": "tax", "state": "accepted", "approved_by": ["approver"], "reason": ""}
        ]
        assert "tax: accepted, approved by approver" in _cli(
            "job", "status", job_id, "--config", bank_config
        )
        assert json.loads(_cli("job", "pending", "--config", tax_config, "--json"))["jobs"] == []
        approve(node_factory, "bank", job_id)
        assert wait_state(bank, job_id, JobState.SUCCEEDED) is JobState.SUCCEEDED
        assert bank.status(job_id).approved_by == ("approver",)


def test_denied_job_is_refused_everywhere_before_any_message(node_factory: NodeFactory) -> None:
    start_approving_pair(node_factory)
    with node_factory.client("bank") as bank, node_factory.client("tax") as tax:
        job_id = bank.submit(psi_spec())
        wait_state(tax, job_id, JobState.AWAITING_APPROVAL)
        tax.deny(job_id, "purpose not covered by our data-sharing agreement")
        assert wait_state(bank, job_id, JobState.REFUSED) is JobState.REFUSED
        status = bank.status(job_id)
        assert "data-sharing agreement" in status.error
        # Who denied, and why, as the requester's operator sees it.
        (view,) = status.parties
        assert view.party == "tax" and view.state is JobState.REFUSED
        assert "data-sharing agreement" in view.reason
    no_protocol_messages(node_factory, job_id)
    denied = [f for ev, jid, f in audit_events(node_factory, "tax") if ev == "job_denied"]
    assert denied and "agreement" in str(denied[0]["reason"])


def test_unapproved_job_times_out_refused(node_factory: NodeFactory) -> None:
    start_approving_pair(node_factory)
    node_factory.nodes["bank"].manager.coordinator.approval_timeout = 1.0
    with node_factory.client("bank") as bank:
        job_id = bank.submit(psi_spec())
        approve(node_factory, "bank", job_id)
        assert wait_state(bank, job_id, JobState.REFUSED) is JobState.REFUSED
        assert "no approval within" in bank.status(job_id).error
    no_protocol_messages(node_factory, job_id)


def test_restricted_personal_data_never_reveals_which_ids(node_factory: NodeFactory) -> None:
    node_factory.start("bank", {"loans": {"company_id": BANK_IDS}}, ("tax",))
    node_factory.start(
        "tax",
        {"filings": {"uscc": TAX_IDS}},
        ("bank",),
        level="restricted-personal",
        budget_epsilon="1",
    )
    with node_factory.client("bank") as bank:
        job_id = bank.submit(psi_spec("intersection"))
        assert wait_state(bank, job_id, JobState.REFUSED) is JobState.REFUSED
        assert "never releases intersection" in bank.status(job_id).error
        # An exact count of a padded set is one candidate's membership (issue 14.3): refused.
        exact = bank.submit(psi_spec("cardinality"))
        assert wait_state(bank, exact, JobState.REFUSED) is JobState.REFUSED
        assert "only with noise" in bank.status(exact).error
        noisy = psi_spec("cardinality")
        noisy = dataclasses.replace(noisy, params={**noisy.params, "epsilon": "1/2"})
        ok = bank.submit(noisy)
        assert wait_state(bank, ok, JobState.SUCCEEDED, JobState.FAILED) is JobState.SUCCEEDED
    no_protocol_messages(node_factory, job_id)
    refusals = [f for ev, jid, f in audit_events(node_factory, "tax") if ev == "job_refused"]
    assert refusals and "restricted-personal" in str(refusals[0]["reason"])


def test_cohort_below_floor_is_refused(node_factory: NodeFactory) -> None:
    node_factory.start("bank", {"loans": {"company_id": BANK_IDS}}, ("tax",))
    node_factory.start("tax", {"filings": {"uscc": TAX_IDS[:3]}}, ("bank",))  # floor is 5
    with node_factory.client("bank") as bank:
        job_id = bank.submit(psi_spec())
        assert wait_state(bank, job_id, JobState.REFUSED) is JobState.REFUSED
        assert "cohort floor" in bank.status(job_id).error
    no_protocol_messages(node_factory, job_id)


def test_counterparty_with_the_wrong_role_is_refused(node_factory: NodeFactory) -> None:
    start_pair(node_factory)
    # The regulator's certificate carries role "regulator": even with the name allowed, a
    # proposal from it is refused because the bank's policy allows "tax" in role "tax" only.
    node = node_factory.nodes["bank"]
    with pytest.raises(Exception, match="only in role"):
        node.manager.policy.check_counterparty("tax", "regulator")


def _counting_role(ctx: JobContext) -> Result | None:
    """A test protocol: each member sends its row count; receivers get the sum."""
    (peer,) = (p for p in ctx.spec.parties if p != ctx.party)
    ctx.send(peer, "count", str(ctx.table().num_rows).encode())
    total = ctx.table().num_rows + int(ctx.recv(peer, "count"))
    return Result({"total": total}) if ctx.party in ctx.spec.receivers else None


COUNTING = ProtocolDef(
    name="dp_count_test",
    version="1",
    roles={"member": _counting_role},
    outputs=lambda spec: frozenset({"dp_aggregate"}),
    learns=lambda spec: dict.fromkeys(spec.parties, "the total count"),
    cost=lambda spec, party: Budget.parse("1/2"),
)


def test_budget_is_charged_exactly_and_exhaustion_refuses_before_any_message(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    registry = {**PROTOCOLS, COUNTING.name: COUNTING}
    budget = 'budget_epsilon = "1"'
    for name, ds, other in (("bank", "loans", "tax"), ("tax", "filings", "bank")):
        node_factory.start(
            name, {ds: {"id": BANK_IDS}}, (other,), level="internal", registry=registry
        )
        policy = node_factory.workdir / name / "policy.toml"
        policy.write_text(
            policy.read_text().replace('level = "internal"', f'level = "internal"\n{budget}')
        )
    # Restart both so they read the budgets.
    for name in ("bank", "tax"):
        cfg = node_factory.config(name)
        node_factory.nodes.pop(name).stop(grace=0.5)
        node_factory.run(name, cfg.source or Path(), registry)
    spec = JobSpec(
        protocol=COUNTING.name,
        participants=(
            Participant("bank", "member", "loans"),
            Participant("tax", "member", "filings"),
        ),
        receivers=("bank",),
        purpose="budget test",
        requester="bank",
    )
    with node_factory.client("bank") as bank:
        for _ in range(2):
            job_id = bank.submit(spec)
            state = wait_state(bank, job_id, JobState.SUCCEEDED, JobState.FAILED, JobState.REFUSED)
            assert state is JobState.SUCCEEDED, bank.status(job_id).error
        third = bank.submit(spec)
        assert wait_state(bank, third, JobState.REFUSED) is JobState.REFUSED
        error = bank.status(third).error
        assert "epsilon=0, delta=0 of its privacy budget left" in error and "epsilon=1/2" in error
    no_protocol_messages(node_factory, third)
    charges = [f for ev, _, f in audit_events(node_factory, "tax") if ev == "budget_charged"]
    assert [c["spent"] for c in charges] == ["1/2", "1"]
    assert node_factory.nodes["tax"].manager.ledger.line("filings").remaining == Budget()


def test_data_changed_after_approval_needs_a_new_approval(node_factory: NodeFactory) -> None:
    from bund.parties.data import Table

    start_approving_pair(node_factory)
    with node_factory.client("bank") as bank, node_factory.client("tax") as tax:
        job_id = bank.submit(psi_spec())
        wait_state(tax, job_id, JobState.AWAITING_APPROVAL)
        wait_state(bank, job_id, JobState.AWAITING_APPROVAL)
        approve(node_factory, "tax", job_id)
        # The tax bureau's data changes after its approver signed (a reload, a new extract).
        changed = Table.from_columns("filings", {"uscc": [*TAX_IDS, "91310000MA1K999999"]})
        node_factory.nodes["tax"].manager.admission.tables = {"filings": lambda: changed}
        approve(node_factory, "bank", job_id)
        state = wait_state(tax, job_id, JobState.FAILED, JobState.SUCCEEDED, JobState.ABORTED)
        assert state is JobState.FAILED
        assert "changed since this job was approved" in tax.status(job_id).error
    sent = [ev for ev, jid, _ in audit_events(node_factory, "tax") if jid == job_id]
    assert "message_sent" not in sent
