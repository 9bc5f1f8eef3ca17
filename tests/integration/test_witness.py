"""Witness cosigning between real nodes: what a party rewrites after the regulator's last pull
contradicts a head its peer witnessed; a node's clock is judged by its peers' and the regulator's;
a log corrupt mid-way is sealed and named at its first bad record.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from bund.parties import node as node_module
from bund.parties.audit import (
    AuditLog,
    AuditRecord,
    MemoryAuditStore,
    SqliteAuditStore,
    WitnessedHead,
    verify_cosignature,
)
from bund.parties.cli import app
from bund.parties.client import RemoteError
from bund.parties.identity import load_audit_public_key, raw_public_key
from bund.parties.lifecycle.events import Event, Key
from bund.parties.lifecycle.states import JobState
from bund.parties.regulator import (
    AuditOutcome,
    Finding,
    FindingKind,
    Severity,
    assess,
    audit_federation,
    load_held_checkpoints,
    load_regulator_config,
    make_pulled_log,
)
from bund.parties.report import render_report
from tests.conftest import Federation, NodeFactory, wait_until
from tests.integration.test_node import BANK_IDS, TAX_IDS, psi_spec, wait_final
from tests.integration.test_regulator import (
    protocol_message,
    resign,
    signing_key,
    with_fields,
    write_regulator_config,
)

FAST = "witness_interval_s = 0.2"


def now(shift: dt.timedelta = dt.timedelta()) -> str:
    moment = dt.datetime.now(dt.UTC) + shift
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def start_pair(factory: NodeFactory, audit: str = FAST) -> None:
    factory.start(
        "bank", {"loans": {"company_id": BANK_IDS}}, ["tax"], {"loans": ["psi"]}, audit=audit
    )
    factory.start(
        "tax", {"filings": {"uscc": TAX_IDS}}, ["bank"], {"filings": ["psi"]}, audit=audit
    )


def audit(factory: NodeFactory, federation: Federation) -> AuditOutcome:
    addresses = {name: f"127.0.0.1:{node.port}" for name, node in factory.nodes.items()}
    path = write_regulator_config(factory.workdir / "regulator.toml", federation, addresses)
    return audit_federation(load_regulator_config(path))


def run_psi(factory: NodeFactory) -> str:
    with factory.client("bank") as bank:
        job_id = bank.submit(psi_spec())
        assert wait_final(bank, job_id).state is JobState.SUCCEEDED
    factory.wait_closed(job_id)
    return job_id


def heads_held(factory: NodeFactory, witness: str, of: str) -> list[WitnessedHead]:
    exchange = factory.nodes[witness].witness
    assert exchange is not None
    return [h for _, h in exchange.witness.held(0, 10_000)[0] if h.head.party == of]


def errors(outcome: AuditOutcome, kind: FindingKind) -> list[Finding]:
    return [f for f in outcome.findings if f.kind is kind and f.severity is Severity.ERROR]


def replace_log(db: Path, records: list[AuditRecord]) -> None:
    """What the operator of a stopped node can do with its audit.db: write another log in it."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with SqliteAuditStore(db) as store:
        for record in records:
            store.append(record)


def _change_intersection_size(records: list[AuditRecord], job_id: str) -> int:
    finished = next(r for r in records if r.job_id == job_id and r.event == "protocol_psi.finished")
    records[finished.index] = with_fields(finished, intersection_size=3)
    return finished.index


def _delete_result_read(records: list[AuditRecord], job_id: str) -> int:
    read = next(
        r
        for r in records
        if r.job_id == job_id and r.event == Event.RESULT_READ and r.fields[Key.ARTIFACT] == ""
    )
    records.remove(read)
    return read.index


@pytest.mark.parametrize("rewrite", [_change_intersection_size, _delete_result_read])
def test_a_tail_rewritten_after_the_regulators_pull_contradicts_a_peers_witnessed_head(
    node_factory: NodeFactory,
    federation: Federation,
    rewrite: Callable[[list[AuditRecord], str], int],
) -> None:
    start_pair(node_factory)
    first = audit(node_factory, federation)
    assert first.errors == 0, first.findings
    (pulled,) = [p for p in first.parties if p.party == "bank"]
    job_id = run_psi(node_factory)
    with node_factory.client("bank") as bank:
        assert bank.result(job_id).summary["intersection_size"] == 30  # the operator reads it
    bank_log = node_factory.nodes["bank"].audit_store
    last_read = max(r.index for r in bank_log.read() if r.event == Event.RESULT_READ)
    # The periodic exchange (a standing job would have no close) puts it before tax.
    wait_until(
        lambda: (
            any(h.head.tree_size > last_read for h in heads_held(node_factory, "tax", "bank"))
            or None
        ),
        30,
        "tax to witness a head of bank's log covering the result read",
    )

    # The bank's operator rewrites a record written after the regulator's last pull and
    # re-signs the log with the bank's own audit key.
    cfg = node_factory.config("bank")
    node_factory.nodes.pop("bank").stop(grace=0.5)
    db = cfg.state_dir / "audit.db"
    with SqliteAuditStore(db, read_only=True) as store:
        records = store.read()
    changed = rewrite(records, job_id)
    assert changed >= pulled.records  # written after the regulator's last pull
    replace_log(db, resign(records, signing_key(federation, "bank")))
    verified = CliRunner().invoke(app, ["audit", "verify", "--config", str(cfg.source)])
    assert verified.exit_code == 0, verified.output  # the chain alone cannot tell
    node_factory.run("bank", cfg.source or Path())

    second = audit(node_factory, federation)
    (rewritten,) = errors(second, FindingKind.LOG_REWRITTEN)
    assert rewritten.parties == ("bank",) and rewritten.witnesses == ("tax",)
    # Records below the regulator's checkpoint of the first pull are vouched for (that head may
    # be a record or two short of the pull: a witness exchange can append in between).
    regulator_state = load_regulator_config(node_factory.workdir / "regulator.toml").state_dir
    (held,) = load_held_checkpoints(regulator_state)["bank"][:1]
    assert held.tree_size <= rewritten.indexes["bank"] <= changed
    assert "held by tax (witnessed" in rewritten.detail
    assert "first one no matching head vouches for" in rewritten.detail
    # Tax is the witness, not a suspect; the regulator's own checkpoint still matched.
    assert not [f for f in second.findings if f.severity is Severity.ERROR and "tax" in f.parties]


def test_nodes_witness_each_other_and_only_their_peers(
    node_factory: NodeFactory, federation: Federation
) -> None:
    start_pair(node_factory, audit="witness_interval_s = 3600")
    run_psi(node_factory)  # the closing exchange, whatever the interval
    for witness, party in (("tax", "bank"), ("bank", "tax")):
        held = heads_held(node_factory, witness, party)
        closed = max(
            r.index
            for r in node_factory.nodes[party].audit_store.read()
            if r.event == Event.JOB_CLOSED
        )
        assert max(h.head.tree_size for h in held) > closed
        key = load_audit_public_key(federation.party_dir(witness) / "audit_ed25519.pub")
        assert all(verify_cosignature(h, key) for h in held)
    registry_key = signing_key(federation, "registry")
    registry_log = AuditLog(MemoryAuditStore(), registry_key, "registry", now)
    registry_log.append(Event.NODE_STARTED)
    head = registry_log.checkpoint()
    raw = raw_public_key(registry_key.public_key())
    with node_factory.client("bank", as_party="registry") as registry:
        with pytest.raises(RemoteError) as err:  # not one of bank's peers
            registry.witness(head, raw)
        assert err.value.code is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(RemoteError) as err:  # the witnessed heads are the regulator's
            registry.witnessed_heads()
        assert err.value.code is grpc.StatusCode.PERMISSION_DENIED
    bank_head = node_factory.nodes["bank"].audit.checkpoint()
    with node_factory.client("tax", as_party="registry") as registry:
        with pytest.raises(RemoteError) as err:  # a head is presented by its own party only
            registry.witness(bank_head, raw)
        assert err.value.code is grpc.StatusCode.PERMISSION_DENIED
    with node_factory.client("bank", as_party="regulator") as regulator:
        page = regulator.witnessed_heads()
        assert page.heads and {h.head.party for _, h in page.heads} == {"tax"}
        assert page.last_seq == page.heads[-1][0]
    outcome = audit(node_factory, federation)
    assert outcome.errors == 0, outcome.findings
    assert {(p.party, p.witnesses) for p in outcome.parties} == {
        ("bank", ("tax",)),
        ("tax", ("bank",)),
    }
    html = render_report(outcome)
    assert "witnessed by tax" in html and "witnessed by bank" in html


def slow_by_a_day() -> str:
    return now(-dt.timedelta(days=1))


def test_a_node_whose_clock_runs_a_day_slow_is_named_and_softens_nothing(
    node_factory: NodeFactory, federation: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patched:
        patched.setattr(node_module, "_utc_clock", slow_by_a_day)
        node_factory.start(
            "bank", {"loans": {"company_id": BANK_IDS}}, ["tax"], {"loans": ["psi"]}, audit=FAST
        )
    node_factory.start(
        "tax", {"filings": {"uscc": TAX_IDS}}, ["bank"], {"filings": ["psi"]}, audit=FAST
    )
    job_id = run_psi(node_factory)
    outcome = audit(node_factory, federation)
    skews = errors(outcome, FindingKind.CLOCK_SKEW)
    by_regulator = [f for f in skews if not f.witnesses]
    assert [f.parties for f in by_regulator] == [("bank",)], skews
    assert "regulator's clock" in by_regulator[0].detail
    by_witnesses = {(f.parties, f.witnesses) for f in skews if f.witnesses}
    assert by_witnesses == {(("bank", "tax"), ("tax",)), (("tax", "bank"), ("bank",))}

    # The bank deletes its message_sent and its job_closed and re-signs its log. Its clock no
    # longer keeps those findings warnings: "settled" is the regulator's clock at the pull.
    logs = {party: list(records) for party, records in outcome.logs.items()}
    sent = protocol_message(logs["bank"], job_id, "message_sent")
    logs["bank"] = [
        r
        for r in logs["bank"]
        if r != sent and not (r.job_id == job_id and r.event == "job_closed")
    ]
    key = signing_key(federation, "bank")
    logs["bank"] = resign(logs["bank"], key)
    later = now(dt.timedelta(minutes=6))  # the regulator pulls six minutes after the job
    pulled = [
        make_pulled_log(
            party, records, signing_key(federation, party).public_key(), pulled_at=later
        )
        for party, records in logs.items()
    ]
    judged = assess(pulled)
    omitted = [f for f in judged.findings if f.kind is FindingKind.MESSAGE_OMITTED]
    missing = [f for f in judged.findings if f.kind is FindingKind.CLOSE_MISSING]
    assert omitted and missing, judged.findings
    assert all(f.severity is Severity.ERROR for f in omitted + missing), judged.findings
    assert judged.errors > 0


CORRUPTIONS = {
    "altered": "UPDATE audit_records SET job_id = 'elsewhere' WHERE idx = ?",
    "undecodable": "UPDATE audit_records SET fields = fields || ' ' WHERE idx = ?",
}


@pytest.fixture(params=sorted(CORRUPTIONS))
def corruption(request: pytest.FixtureRequest) -> Iterator[str]:
    yield CORRUPTIONS[request.param]


def test_a_log_corrupt_mid_way_is_sealed_and_named_at_its_first_bad_record(
    node_factory: NodeFactory, federation: Federation, corruption: str
) -> None:
    start_pair(node_factory, audit="witness_interval_s = 3600")
    run_psi(node_factory)
    cfg = node_factory.config("bank")
    node_factory.nodes.pop("bank").stop(grace=0.5)
    with SqliteAuditStore(cfg.state_dir / "audit.db", read_only=True) as store:
        bad = len(store) // 2
    db = sqlite3.connect(cfg.state_dir / "audit.db")
    db.execute(corruption, (bad,))
    db.commit()
    db.close()
    bank = node_factory.run("bank", cfg.source or Path())  # its last record still verifies
    sealed = wait_until(lambda: bank.audit.sealed, 30, "the bank's log to be sealed")
    assert sealed.first_bad_index == bad
    size = len(bank.audit_store)
    with node_factory.client("bank") as client:
        with pytest.raises(RemoteError) as err:  # nothing that must be recorded is done
            client.submit(psi_spec())
    assert err.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert f"record {bad}" in err.value.details
    assert len(bank.audit_store) == size

    outcome = audit(node_factory, federation)
    assert not [f for f in outcome.findings if f.kind is FindingKind.PULL_FAILED]
    (invalid,) = errors(outcome, FindingKind.LOG_INVALID)
    assert invalid.parties == ("bank",) and dict(invalid.indexes) == {"bank": bad}
    (status,) = [p for p in outcome.parties if p.party == "bank"]
    assert status.pulled and status.first_bad_index == bad
