"""Jobs end, one way or another: cancel, deadlines, frozen peers, restarts (issue 9)."""

from __future__ import annotations

import dataclasses
import time

import pytest
from typer.testing import CliRunner

from bund.parties.cli import app
from bund.parties.client import NodeClient, RemoteError
from bund.parties.follow import follow_job
from bund.parties.jobs import JobContext, JobSpec, Participant, ProtocolDef, Result
from bund.parties.lifecycle.states import JobState
from bund.parties.protocols import PROTOCOLS
from bund.parties.transport import envelope_digest
from bund.v1 import job_pb2
from tests.conftest import NodeFactory
from tests.integration.fault_protocols import RELAY
from tests.integration.test_node import BANK_IDS, TAX_IDS, audit_events, wait_final


def _busy_role(ctx: JobContext) -> Result | None:
    """The requester computes for up to a minute, reporting progress; the other waits for it."""
    (peer,) = (p for p in ctx.spec.parties if p != ctx.party)
    if ctx.party == ctx.spec.requester:
        for i in range(1200):
            ctx.progress("busy", i, 1200)
            time.sleep(0.05)
        ctx.send(peer, "done", b"1")
    else:
        ctx.recv(peer, "done")
    return Result({"finished": True}) if ctx.party in ctx.spec.receivers else None


BUSY = ProtocolDef(
    name="busy_test",
    version="1",
    roles={"member": _busy_role},
    outputs=lambda spec: frozenset({"raw"}),
    learns=lambda spec: dict.fromkeys(spec.parties, "nothing"),
)


def busy_spec() -> JobSpec:
    return JobSpec(
        protocol=BUSY.name,
        participants=(
            Participant("bank", "member", "loans"),
            Participant("tax", "member", "filings"),
        ),
        receivers=("bank",),
        purpose="lifecycle test",
        requester="bank",
    )


def wait_busy(client: NodeClient, job_id: str) -> None:
    """Follow the job at ``client``'s node until the requester's busy phase has started."""
    status = follow_job(
        client, job_id, until=lambda s: s.phase == "busy", timeout=30, interval=0.02
    )
    assert status.phase == "busy", f"job {job_id} ended {status.state.value}: {status.error}"


def start_busy_pair(f: NodeFactory) -> None:
    registry = {**PROTOCOLS, BUSY.name: BUSY}
    f.start("bank", {"loans": {"id": BANK_IDS}}, ("tax",), level="public", registry=registry)
    f.start("tax", {"filings": {"id": TAX_IDS}}, ("bank",), level="public", registry=registry)


def test_cancel_by_a_participant_stops_the_work_everywhere(node_factory: NodeFactory) -> None:
    start_busy_pair(node_factory)
    with node_factory.client("bank") as bank, node_factory.client("tax") as tax:
        job_id = bank.submit(busy_spec())
        wait_busy(bank, job_id)
        tax.cancel(job_id, "wrong period")
        # The requester was computing, not waiting: it stops at its next progress report.
        for client in (bank, tax):
            status = wait_final(client, job_id, timeout=10)
            assert status.state is JobState.ABORTED
            assert "cancelled by tax's operator: wrong period" in status.error
        with pytest.raises(RemoteError, match="nothing to cancel"):
            tax.cancel(job_id)
    node_factory.wait_closed(job_id)
    tax_log = audit_events(node_factory, "tax")
    assert ("job_cancelled", job_id) in [(e, j) for e, j, _ in tax_log]
    cancelled = next(f for e, j, f in tax_log if e == "job_cancelled" and j == job_id)
    assert cancelled["by"] == "tax" and cancelled["reason"] == "wrong period"
    bank_log = audit_events(node_factory, "bank")
    aborted = next(f for e, j, f in bank_log if e == "job_aborted" and j == job_id)
    assert aborted["by"] == "tax"
    for log in (bank_log, tax_log):
        closed = next(f for e, j, f in log if e == "job_closed" and j == job_id)
        assert closed["outcome"] == "aborted"


def test_only_a_participant_operator_cancels(node_factory: NodeFactory) -> None:
    start_busy_pair(node_factory)
    with node_factory.client("bank") as bank, node_factory.client("bank", "tax") as stranger:
        job_id = bank.submit(busy_spec())
        wait_busy(bank, job_id)
        # tax's certificate at bank's node is a peer, not bank's operator: an abort from a
        # participant is allowed, but it is recorded as tax's abort, not as a cancel by bank.
        stranger.cancel(job_id, "peer says stop")
        status = wait_final(bank, job_id, timeout=10)
        assert status.state is JobState.ABORTED
        assert status.error.startswith("tax: ")


def test_cli_cancel_and_resume(node_factory: NodeFactory) -> None:
    start_busy_pair(node_factory)
    config = str(node_factory.config("tax").source)
    runner = CliRunner()
    with node_factory.client("bank") as bank:
        job_id = bank.submit(busy_spec())
        wait_busy(bank, job_id)
        # Resuming a running job changes nothing.
        r = runner.invoke(app, ["job", "resume", job_id, "--config", config, "--no-wait"])
        assert r.exit_code == 0, r.output
        assert "running" in r.output
        r = runner.invoke(app, ["job", "cancel", job_id, "--config", config, "--reason", "test"])
        assert r.exit_code == 0, r.output
        assert f"cancelled job {job_id}" in r.output
        assert wait_final(bank, job_id, timeout=10).state is JobState.ABORTED
        # Only an interrupted job can be resumed; the CLI says why and exits non-zero.
        r = runner.invoke(app, ["job", "resume", job_id, "--config", config])
        assert r.exit_code == 1
        assert "only an interrupted job can be resumed" in r.output


def test_replay_is_a_noop_equivocation_aborts_and_a_moved_message_is_refused(
    node_factory: NodeFactory,
) -> None:
    start_busy_pair(node_factory)
    with node_factory.client("bank") as bank, node_factory.client("tax", "bank") as to_tax:
        first, second = bank.submit(busy_spec()), bank.submit(busy_spec())
        for job in (first, second):
            wait_busy(bank, job)
        assert to_tax.deliver(first, "probe", b"one") is True
        assert to_tax.deliver(first, "probe", b"one") is False  # a replay: no-op
        # The same message moved to the other job: its digest binds it to the first job.
        binding = envelope_digest(first, "probe", b"one")
        moved = job_pb2.DeliverRequest(job_id=second, tag="probe", payload=b"one", sha256=binding)
        with pytest.raises(RemoteError, match="moved from another job"):
            to_tax._call("Jobs", "Deliver", moved, job_pb2.DeliverResponse)
        assert bank.status(second).state is JobState.RUNNING
        # Different content in a used slot: equivocation ends the job everywhere.
        with pytest.raises(RemoteError, match="different payload"):
            to_tax.deliver(first, "probe", b"two")
        with node_factory.client("tax") as tax:
            for client in (bank, tax):
                status = wait_final(client, first, timeout=10)
                assert status.state is JobState.ABORTED and "equivocated" in status.error
        bank.cancel(second)
    events = {(e, j): f for e, j, f in audit_events(node_factory, "tax")}
    assert events[("message_duplicate", first)]["tag"] == "probe"
    assert events[("message_refused", second)]["peer"] == "bank"
    assert events[("equivocation", first)]["peer"] == "bank"


def test_a_message_for_a_job_that_succeeded_here_is_ignored_not_refused(
    node_factory: NodeFactory,
) -> None:
    """A peer that resumes after this node closed the job re-sends what it sent: a no-op here."""
    registry = {**PROTOCOLS, RELAY.name: RELAY}
    node_factory.start("bank", {"loans": {"id": BANK_IDS}}, ("tax",), level="public",
                       registry=registry)  # fmt: skip
    node_factory.start("tax", {"filings": {"id": TAX_IDS}}, ("bank",), level="public",
                       registry=registry, budget_epsilon="1")  # fmt: skip
    spec = dataclasses.replace(busy_spec(), protocol=RELAY.name, params={"rounds": 3})
    with node_factory.client("bank") as bank, node_factory.client("tax", "bank") as to_tax:
        job_id = bank.submit(spec)
        assert wait_final(bank, job_id).state is JobState.SUCCEEDED
        node_factory.wait_closed(job_id)
        assert to_tax.deliver(job_id, "x/0", b"late") is False
        bad = job_pb2.DeliverRequest(job_id=job_id, tag="x/0", payload=b"late", sha256=bytes(32))
        with pytest.raises(RemoteError, match="takes no messages"):
            to_tax._call("Jobs", "Deliver", bad, job_pb2.DeliverResponse)
    events = [(e, f.get("tag")) for e, j, f in audit_events(node_factory, "tax") if j == job_id]
    assert ("message_after_close", "x/0") in events
