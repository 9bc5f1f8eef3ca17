"""The regulator pulls both logs of a real PSI job over mTLS, verifies and reconciles them.

One job runs once per module; the tampering tests then alter copies of the pulled records, with
and without re-signing the chain with the party's own audit key, and check that the regulator
names the kind, the job, the parties and the record.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bund.compute.merkle import chain_hash
from bund.parties.audit import (
    GENESIS_HASH,
    SIGNING_DOMAIN,
    AuditLog,
    AuditRecord,
    Checkpoint,
    JsonScalar,
    MemoryAuditStore,
)
from bund.parties.client import NodeClient, RemoteError
from bund.parties.errors import ConfigError
from bund.parties.identity import load_audit_public_key, load_audit_signing_key
from bund.parties.lifecycle.events import CLOSE_TAG
from bund.parties.lifecycle.states import JobState
from bund.parties.regulator import (
    AuditOutcome,
    Finding,
    FindingKind,
    Severity,
    assess,
    audit_federation,
    load_regulator_config,
    log_findings,
    make_pulled_log,
    pull_log,
    reconcile,
    report_command,
)
from tests.conftest import Federation, NodeFactory
from tests.integration.test_node import psi_spec, start_pair, wait_final

Logs = dict[str, list[AuditRecord]]


@dataclass(frozen=True)
class Audited:
    factory: NodeFactory
    job_id: str
    config: Path
    outcome: AuditOutcome

    def logs(self) -> Logs:
        return {party: list(records) for party, records in self.outcome.logs.items()}


def write_regulator_config(
    path: Path,
    federation: Federation,
    addresses: Mapping[str, str],
    keys: Mapping[str, str] | None = None,
    cert_of: str = "regulator",
) -> Path:
    """A regulator.toml; ``keys`` maps a party to the party whose audit key is configured."""
    tls = federation.tls(cert_of)
    lines = [
        "[tls]",
        f'ca = "{tls.ca.as_posix()}"',
        f'cert = "{tls.cert.as_posix()}"',
        f'key = "{tls.key.as_posix()}"',
        "[federation]",
        f'revocations = "{(federation.ca_dir / "revocations.json").as_posix()}"',
        "[limits]",
        "timeout_s = 10",
    ]
    for party, address in addresses.items():
        key_of = (keys or {}).get(party, party)
        pub = federation.party_dir(key_of) / "audit_ed25519.pub"
        lines += [f"[parties.{party}]", f'address = "{address}"', f'audit_public_key = "{pub}"']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def audited(federation: Federation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Audited]:
    workdir = tmp_path_factory.mktemp("regulator")
    factory = NodeFactory(federation, workdir)
    try:
        start_pair(factory)
        with factory.client("bank") as bank:
            job_id = bank.submit(psi_spec())
            assert wait_final(bank, job_id).state is JobState.SUCCEEDED
        factory.wait_closed(job_id)
        addresses = {n: f"127.0.0.1:{node.port}" for n, node in factory.nodes.items()}
        config = write_regulator_config(workdir / "regulator.toml", federation, addresses)
        outcome = audit_federation(load_regulator_config(config))
        yield Audited(factory, job_id, config, outcome)
    finally:
        factory.stop_all()


def signing_key(federation: Federation, party: str) -> Ed25519PrivateKey:
    return load_audit_signing_key(federation.party_dir(party) / "audit_ed25519.key")


def resign(records: Sequence[AuditRecord], key: Ed25519PrivateKey) -> list[AuditRecord]:
    """Rewrite a log as its party could: renumber, rechain and re-sign every record."""
    out, prev = [], GENESIS_HASH
    for position, record in enumerate(records):
        unsigned = dataclasses.replace(
            record, index=position, prev_hash=prev, record_hash=b"", signature=b""
        )
        record_hash = chain_hash(prev, unsigned.leaf_hash())
        out.append(
            dataclasses.replace(
                unsigned, record_hash=record_hash, signature=key.sign(SIGNING_DOMAIN + record_hash)
            )
        )
        prev = record_hash
    return out


def with_fields(record: AuditRecord, **changes: JsonScalar) -> AuditRecord:
    return dataclasses.replace(record, fields={**record.fields, **changes})


def find(records: Sequence[AuditRecord], job_id: str, event: str, **fields: object) -> AuditRecord:
    return next(
        r
        for r in records
        if r.job_id == job_id
        and r.event == event
        and all(r.fields.get(k) == v for k, v in fields.items())
    )


def protocol_message(records: Sequence[AuditRecord], job_id: str, event: str) -> AuditRecord:
    return next(
        r
        for r in records
        if r.job_id == job_id and r.event == event and r.fields["tag"] != CLOSE_TAG
    )


def of_kind(findings: Sequence[Finding], kind: FindingKind) -> list[Finding]:
    return [f for f in findings if f.kind is kind]


# -- over the network -------------------------------------------------------------------------


def test_regulator_pulls_both_logs_over_mtls_and_finds_nothing(audited: Audited) -> None:
    outcome = audited.outcome
    assert outcome.findings == ()
    assert [(p.party, p.pulled, p.verified) for p in outcome.parties] == [
        ("bank", True, True),
        ("tax", True, True),
    ]
    for status in outcome.parties:
        assert status.records == len(outcome.logs[status.party]) > 5
    (job,) = outcome.jobs
    assert job.job_id == audited.job_id and job.protocol == "psi"
    assert job.parties == ("bank", "tax") and job.receivers == ("bank",)
    assert dict(job.states) == {"bank": "succeeded", "tax": "succeeded"}
    assert job.holders == ("bank",) and set(job.transcripts) == {"bank", "tax"}
    assert len(outcome.receipts) == 2


def test_audit_service_refuses_a_non_regulator_certificate(
    audited: Audited, federation: Federation, tmp_path: Path
) -> None:
    port = audited.factory.nodes["bank"].port
    key = load_audit_public_key(federation.party_dir("bank") / "audit_ed25519.pub")
    with NodeClient(f"127.0.0.1:{port}", "bank", federation.tls("registry")) as registry:
        with pytest.raises(RemoteError) as err:
            pull_log(registry, key)
    assert err.value.code is grpc.StatusCode.PERMISSION_DENIED
    with NodeClient(f"127.0.0.1:{port}", "bank", federation.tls("regulator")) as regulator:
        assert pull_log(regulator, key, page_size=7).verification.ok  # type: ignore[union-attr]
    config = write_regulator_config(
        tmp_path / "r.toml", federation, {"bank": f"127.0.0.1:{port}"}, cert_of="registry"
    )
    with pytest.raises(ConfigError, match="role 'registry'.*regulator"):
        load_regulator_config(config)


def test_the_configured_key_is_trusted_never_the_nodes_and_dead_nodes_are_named(
    audited: Audited, federation: Federation, tmp_path: Path
) -> None:
    addresses = {n: f"127.0.0.1:{node.port}" for n, node in audited.factory.nodes.items()}
    addresses["registry"] = "127.0.0.1:1"  # nothing listens there
    config = write_regulator_config(tmp_path / "r.toml", federation, addresses, {"bank": "tax"})
    outcome = audit_federation(load_regulator_config(config))
    kinds = {(f.kind, f.parties, tuple(f.indexes.items())) for f in outcome.findings}
    assert (FindingKind.KEY_MISMATCH, ("bank",), ()) in kinds
    assert (FindingKind.LOG_INVALID, ("bank",), (("bank", 0),)) in kinds
    assert (FindingKind.PULL_FAILED, ("registry",), ()) in kinds
    assert all(f.severity is Severity.ERROR for f in outcome.findings)
    assert [p.verified for p in outcome.parties] == [False, False, True]  # bank, registry, tax


def test_report_command_writes_the_report_and_exits_zero(
    audited: Audited, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.html"
    assert report_command(audited.config, out) == 0
    assert audited.job_id in out.read_text(encoding="utf-8")
    printed = capsys.readouterr().out
    assert "0 errors, 0 warnings" in printed and "verified" in printed
    assert report_command(tmp_path / "missing.toml", out) == 2


# -- tampering, on copies of the pulled records -----------------------------------------------


def test_deleted_message_received_is_flagged_omitted_with_the_senders_index(
    audited: Audited, federation: Federation
) -> None:
    logs, job = audited.logs(), audited.job_id
    received = protocol_message(logs["tax"], job, "message_received")
    sent = find(logs["bank"], job, "message_sent", tag=received.fields["tag"])
    logs["tax"].remove(received)

    def check(findings: Sequence[Finding]) -> None:
        omitted = of_kind(findings, FindingKind.MESSAGE_OMITTED)
        assert len(omitted) == 1, findings
        assert omitted[0].severity is Severity.ERROR and omitted[0].job_id == job
        assert omitted[0].parties == ("bank", "tax")
        assert dict(omitted[0].indexes) == {"bank": sent.index}
        assert "tax's log has no message_received" in omitted[0].detail

    # As deleted: tax's chain breaks where the record was, and reconciliation names the message.
    tax = make_pulled_log("tax", logs["tax"], signing_key(federation, "tax").public_key())
    assert tax.verification is not None and tax.verification.first_bad_index == received.index
    check(reconcile(logs))
    # Re-signed by tax, the chain verifies; reconciliation still catches it, and tax's own
    # transcript digest no longer matches its message records.
    logs["tax"] = resign(logs["tax"], signing_key(federation, "tax"))
    tax = make_pulled_log("tax", logs["tax"], signing_key(federation, "tax").public_key())
    assert tax.verification is not None and tax.verification.ok
    findings = reconcile(logs)
    check(findings)
    (inconsistent,) = of_kind(findings, FindingKind.TRANSCRIPT_INCONSISTENT)
    assert inconsistent.parties == ("tax",)


def test_digest_changed_and_log_resigned_is_a_digest_mismatch(
    audited: Audited, federation: Federation
) -> None:
    logs, job = audited.logs(), audited.job_id
    sent = protocol_message(logs["bank"], job, "message_sent")
    received = find(logs["tax"], job, "message_received", tag=sent.fields["tag"])
    logs["bank"][sent.index] = with_fields(sent, sha256="00" * 32)
    logs["bank"] = resign(logs["bank"], signing_key(federation, "bank"))
    pulled = make_pulled_log("bank", logs["bank"], signing_key(federation, "bank").public_key())
    assert pulled.verification is not None and pulled.verification.ok
    findings = reconcile(logs)
    (mismatch,) = of_kind(findings, FindingKind.DIGEST_MISMATCH)
    assert mismatch.severity is Severity.ERROR and mismatch.job_id == job
    assert mismatch.parties == ("bank", "tax")
    assert dict(mismatch.indexes) == {"bank": sent.index, "tax": received.index}
    (inconsistent,) = of_kind(findings, FindingKind.TRANSCRIPT_INCONSISTENT)
    assert inconsistent.parties == ("bank",)


def test_equivocating_peer_transcript_is_flagged(audited: Audited, federation: Federation) -> None:
    logs, job = audited.logs(), audited.job_id
    bank_close = find(logs["bank"], job, "job_closed")
    tax_close = find(logs["tax"], job, "job_closed")
    logs["bank"][bank_close.index] = with_fields(bank_close, **{"peer_transcript.tax": "ab" * 32})
    logs["bank"] = resign(logs["bank"], signing_key(federation, "bank"))
    (mismatch,) = reconcile(logs)
    assert mismatch.kind is FindingKind.TRANSCRIPT_MISMATCH and mismatch.job_id == job
    assert mismatch.parties == ("bank", "tax")
    assert dict(mismatch.indexes) == {"bank": bank_close.index, "tax": tax_close.index}


Mutation = Callable[[Logs, str], None]


def _drop_job_at_tax(logs: Logs, job: str) -> None:
    logs["tax"] = [r for r in logs["tax"] if r.job_id != job]


def _message_to_outsider(logs: Logs, job: str) -> None:
    sent = protocol_message(logs["bank"], job, "message_sent")
    logs["bank"].insert(sent.index + 1, with_fields(sent, peer="registry"))


def _other_spec_at_tax(logs: Logs, job: str) -> None:
    proposed = find(logs["tax"], job, "job_proposed")
    logs["tax"][proposed.index] = with_fields(proposed, spec_sha256="cd" * 32)


def _tax_holds_result(logs: Logs, job: str) -> None:
    closed = find(logs["tax"], job, "job_closed")
    logs["tax"][closed.index] = with_fields(closed, holds_result=True)


def _tax_never_closed(logs: Logs, job: str) -> None:
    closed = find(logs["tax"], job, "job_closed")
    logs["tax"].remove(closed)


def an_hour_later(logs: Logs) -> dict[str, str]:
    """Each log pulled an hour after the last record of any, by the regulator's clock."""
    last = max(dt.datetime.fromisoformat(r.timestamp) for rs in logs.values() for r in rs)
    when = (last + dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    return dict.fromkeys(logs, when)


@pytest.mark.parametrize(
    ("mutate", "party", "kind", "parties"),
    [
        (_drop_job_at_tax, "tax", FindingKind.JOB_MISSING, ("tax", "bank")),
        (_message_to_outsider, "bank", FindingKind.UNEXPECTED_PARTY, ("bank", "registry")),
        (_other_spec_at_tax, "tax", FindingKind.SPEC_MISMATCH, ("bank", "tax")),
        (_tax_holds_result, "tax", FindingKind.RESULT_OUTSIDE_RECEIVERS, ("tax",)),
        (_tax_never_closed, "tax", FindingKind.CLOSE_MISSING, ("tax", "bank")),
    ],
)
def test_resigned_rewrites_are_caught_by_reconciliation(
    audited: Audited,
    federation: Federation,
    mutate: Mutation,
    party: str,
    kind: FindingKind,
    parties: tuple[str, ...],
) -> None:
    logs = audited.logs()
    mutate(logs, audited.job_id)
    logs[party] = resign(logs[party], signing_key(federation, party))
    # The regulator pulled the logs an hour after the job: whatever is missing now is missing.
    findings = reconcile(logs, an_hour_later(logs))
    found = of_kind(findings, kind)
    assert len(found) == 1, findings
    assert found[0].severity is Severity.ERROR
    assert found[0].job_id == audited.job_id and found[0].parties == parties
    assert found[0].indexes


def test_a_job_in_flight_gives_warnings_not_errors(audited: Audited) -> None:
    """Snapshots taken mid-job: tax recorded a receipt that the bank had not recorded yet."""
    logs, job = audited.logs(), audited.job_id
    received = protocol_message(logs["tax"], job, "message_received")
    sent = find(logs["bank"], job, "message_sent", tag=received.fields["tag"])
    logs["bank"] = logs["bank"][: sent.index]
    logs["tax"] = logs["tax"][: received.index + 1]
    # Both pulled at once, right after tax received the message (by the regulator's clock).
    findings = reconcile(logs, dict.fromkeys(logs, received.timestamp))
    assert {f.kind for f in findings} == {FindingKind.MESSAGE_OMITTED, FindingKind.CLOSE_MISSING}
    assert all(f.severity is Severity.WARNING for f in findings), findings


def _flip_body(records: list[AuditRecord], at: int) -> None:
    records[at] = with_fields(records[at], tampered=True)


def _flip_signature(records: list[AuditRecord], at: int) -> None:
    sig = bytearray(records[at].signature)
    sig[5] ^= 0x01
    records[at] = dataclasses.replace(records[at], signature=bytes(sig))


def _reorder(records: list[AuditRecord], at: int) -> None:
    records[at], records[at + 1] = records[at + 1], records[at]


def _insert(records: list[AuditRecord], at: int) -> None:
    forged = resign(records[: at + 1], Ed25519PrivateKey.generate())[at]
    records.insert(at, forged)


def _delete(records: list[AuditRecord], at: int) -> None:
    del records[at]


@pytest.mark.parametrize("tamper", [_flip_body, _flip_signature, _reorder, _insert, _delete])
def test_tampered_log_fails_verification_naming_party_and_first_bad_index(
    audited: Audited, federation: Federation, tamper: Callable[[list[AuditRecord], int], None]
) -> None:
    records = audited.logs()["tax"]
    at = len(records) // 2
    tamper(records, at)
    pulled = make_pulled_log("tax", records, signing_key(federation, "tax").public_key())
    (finding,) = log_findings(pulled)
    assert finding.kind is FindingKind.LOG_INVALID and finding.severity is Severity.ERROR
    assert finding.parties == ("tax",) and dict(finding.indexes) == {"tax": at}
    assert f"record {at}" in finding.detail
    bank = make_pulled_log(
        "bank", audited.outcome.logs["bank"], signing_key(federation, "bank").public_key()
    )
    (status, _) = assess([pulled, bank], generated_at="2026-01-01T00:00:00Z").parties
    assert not status.verified and status.first_bad_index == at


def checkpoint_of(records: Sequence[AuditRecord], key: Ed25519PrivateKey, party: str) -> Checkpoint:
    store = MemoryAuditStore()
    for record in records:
        store.append(record)
    return AuditLog(store, key, party, lambda: "2026-11-24T09:30:00.000000Z").checkpoint()


def test_checkpoints_catch_rewrites_truncation_and_equivocation(
    audited: Audited, federation: Federation
) -> None:
    key = signing_key(federation, "bank")
    original = audited.logs()["bank"]
    held = checkpoint_of(original, key, "bank")
    sent = protocol_message(original, audited.job_id, "message_sent")
    rewritten = list(original)
    rewritten[sent.index] = with_fields(sent, sha256="00" * 32)
    rewritten = resign(rewritten, key)

    def findings(
        records: Sequence[AuditRecord], checkpoints: Sequence[Checkpoint]
    ) -> list[Finding]:
        return log_findings(make_pulled_log("bank", records, key.public_key()), checkpoints)

    assert findings(original, [held]) == []
    assert findings(rewritten, []) == []  # the chain alone cannot tell
    (finding,) = findings(rewritten, [held])
    assert finding.kind is FindingKind.LOG_REWRITTEN and finding.parties == ("bank",)
    assert finding.indexes["bank"] <= sent.index
    (finding,) = findings(original[:-3], [held])
    assert finding.kind is FindingKind.LOG_TRUNCATED
    assert dict(finding.indexes) == {"bank": len(original) - 3}
    other = checkpoint_of(rewritten, key, "bank")
    (finding,) = findings(original, [held, other])
    assert finding.kind is FindingKind.EQUIVOCATION and "equivocated" in finding.detail


def test_checkpoints_served_by_nodes_catch_a_rewrite_on_the_next_audit(
    node_factory: NodeFactory, federation: Federation
) -> None:
    from bund.parties.audit import SqliteAuditStore
    from bund.parties.regulator import CHECKPOINTS_FILE, load_held_checkpoints

    start_pair(node_factory)
    with node_factory.client("bank") as bank:
        job_id = bank.submit(psi_spec())
        assert wait_final(bank, job_id).state is JobState.SUCCEEDED
    node_factory.wait_closed(job_id)

    def audit() -> AuditOutcome:
        addresses = {n: f"127.0.0.1:{node.port}" for n, node in node_factory.nodes.items()}
        path = write_regulator_config(
            node_factory.workdir / "regulator.toml", federation, addresses
        )
        return audit_federation(load_regulator_config(path))

    first = audit()
    assert first.errors == 0, first.findings
    state = node_factory.workdir / "regulator-state"
    assert set(load_held_checkpoints(state)) == {"bank", "tax"}
    assert (state / CHECKPOINTS_FILE).read_text().count("\n") == 2

    # The bank rewrites an old record and re-signs its whole chain with its own key: the chain
    # verifies, and reconciliation has nothing to compare that record with.
    cfg = node_factory.config("bank")
    node_factory.nodes.pop("bank").stop(grace=0.5)
    db = cfg.state_dir / "audit.db"
    with SqliteAuditStore(db, read_only=True) as store:
        records = store.read()
    started = next(i for i, r in enumerate(records) if r.event == "node_started")
    records[started] = with_fields(records[started], version="0.0.0-backdated")
    rewritten = resign(records, signing_key(federation, "bank"))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with SqliteAuditStore(db) as store:
        for record in rewritten:
            store.append(record)
    node_factory.run("bank", cfg.source or Path())

    second = audit()
    kinds = {(f.kind, f.parties) for f in second.findings if f.severity is Severity.ERROR}
    assert (FindingKind.LOG_REWRITTEN, ("bank",)) in kinds, second.findings
    assert not [f for f in second.findings if "tax" in f.parties and f.severity is Severity.ERROR]
