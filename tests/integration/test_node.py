"""A node over real mTLS on 127.0.0.1:0: authentication, authorisation, bad input, job flow."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bund.parties.audit import SqliteAuditStore, verify_records
from bund.parties.client import NodeClient, RemoteError, channel_options
from bund.parties.errors import PeerUnavailableError
from bund.parties.follow import follow_job
from bund.parties.identity import load_audit_public_key
from bund.parties.jobs import JobContext, JobSpec, Participant, ProtocolDef, Result
from bund.parties.lifecycle.states import JobState, JobStatus
from bund.parties.protocols import PROTOCOLS
from bund.v1 import job_pb2
from tests.conftest import NodeFactory

BANK_IDS = [f"91310000MA1K{i:06d}" for i in range(0, 60)]
TAX_IDS = [f"91310000MA1K{i:06d}" for i in range(30, 100)]

#: Every RPC of every Bund service.
ALL_RPCS = [
    ("Jobs", m)
    for m in (
        "SubmitJob",
        "GetJobStatus",
        "GetJobResult",
        "ListJobs",
        "ProposeJob",
        "StartJob",
        "AbortJob",
        "Deliver",
    )
] + [("Federation", "GetNodeInfo"), ("Audit", "ReadAuditLog")]


def psi_spec(mode: str = "intersection", receivers: tuple[str, ...] = ("bank",)) -> JobSpec:
    return JobSpec(
        protocol="psi",
        participants=(
            Participant("bank", "member", "loans", {"id": "company_id"}),
            Participant("tax", "member", "filings", {"id": "uscc"}),
        ),
        receivers=receivers,
        purpose="test alignment",
        requester="bank",
        params={"mode": mode},
    )


def start_pair(
    f: NodeFactory,
    bank_allows: tuple[str, ...] = ("tax",),
    tax_allows: tuple[str, ...] = ("bank",),
    tax_protocols: tuple[str, ...] = ("psi",),
) -> None:
    f.start("bank", {"loans": {"company_id": BANK_IDS}}, bank_allows, {"loans": ["psi"]})
    f.start("tax", {"filings": {"uscc": TAX_IDS}}, tax_allows, {"filings": list(tax_protocols)})


def wait_final(client: NodeClient, job_id: str, timeout: float = 60.0) -> JobStatus:
    """Follow ``job_id`` at ``client``'s node until it is terminal (an interruption heals)."""
    return follow_job(client, job_id, timeout=timeout, interval=0.02)


def audit_events(f: NodeFactory, name: str) -> list[tuple[str, str, dict[str, object]]]:
    node = f.nodes[name]
    return [(r.event, r.job_id, dict(r.fields)) for r in node.audit_store.read()]


def health_status(port: int, f: NodeFactory) -> int:
    tls = f.federation.tls("bank")
    creds = grpc.ssl_channel_credentials(
        tls.ca.read_bytes(), tls.key.read_bytes(), tls.cert.read_bytes()
    )
    with grpc.secure_channel(
        f"127.0.0.1:{port}", creds, options=channel_options(1 << 20, "bank")
    ) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status)


def test_psi_job_between_two_nodes_matches_plaintext(node_factory: NodeFactory) -> None:
    start_pair(node_factory)
    with node_factory.client("bank") as bank, node_factory.client("tax") as tax:
        job_id = bank.submit(psi_spec())
        status = wait_final(bank, job_id)
        assert status.state is JobState.SUCCEEDED, status.error
        result = bank.result(job_id)
        expected = sorted(set(BANK_IDS) & set(TAX_IDS))
        assert result.summary["intersection_size"] == len(expected)
        got = result.artifacts["intersection.csv"].decode().split("\n")[1:]
        assert sorted(x for x in got if x) == expected
        # The tax bureau is no receiver: it holds no result, and says where the result went.
        tax_status = wait_final(tax, job_id)
        assert tax_status.state is JobState.SUCCEEDED and not tax_status.has_result
        with pytest.raises(RemoteError) as err:
            tax.result(job_id)
        assert err.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert "bank" in err.value.details
        # Both closed the job with transcript digests and countersigned each other's.
        assert status.transcript_digest and tax_status.transcript_digest
    for me, peer, digest in (
        ("bank", "tax", tax_status.transcript_digest),
        ("tax", "bank", status.transcript_digest),
    ):
        closed = [
            fld
            for ev, jid, fld in audit_events(node_factory, me)
            if ev == "job_closed" and jid == job_id
        ]
        assert len(closed) == 1 and closed[0][f"peer_transcript.{peer}"] == digest
        cfg = node_factory.config(me)
        report = verify_records(
            node_factory.nodes[me].audit_store.read(), load_audit_public_key(cfg.audit_pub)
        )
        assert report.ok, report.reason


def test_sent_and_received_digests_agree_across_logs(node_factory: NodeFactory) -> None:
    start_pair(node_factory)
    with node_factory.client("bank") as bank:
        job_id = bank.submit(psi_spec(receivers=("bank", "tax")))
        assert wait_final(bank, job_id).state is JobState.SUCCEEDED
    with node_factory.client("tax") as tax:
        wait_final(tax, job_id)

    def msgs(me: str, direction: str) -> set[tuple[str, str, int]]:
        return {
            (str(f["tag"]), str(f["sha256"]), int(f["size"]))  # type: ignore[arg-type]
            for ev, jid, f in audit_events(node_factory, me)
            if ev == direction and jid == job_id
        }

    assert msgs("bank", "message_sent") == msgs("tax", "message_received")
    assert msgs("tax", "message_sent") == msgs("bank", "message_received")
    assert msgs("bank", "message_sent")


@pytest.mark.parametrize(
    ("bank_allows", "tax_allows", "tax_protocols", "refuser", "words"),
    [
        (("tax",), ("registry",), ("psi",), "tax", "does not allow jobs with bank"),
        (("tax",), ("bank",), ("vertical_lr",), "tax", "does not allow protocol 'psi'"),
        (("registry",), ("bank",), ("psi",), "bank", "does not allow jobs with tax"),
    ],
)
def test_refused_job_sends_no_protocol_message_and_is_audited(
    node_factory: NodeFactory,
    bank_allows: tuple[str, ...],
    tax_allows: tuple[str, ...],
    tax_protocols: tuple[str, ...],
    refuser: str,
    words: str,
) -> None:
    start_pair(node_factory, bank_allows, tax_allows, tax_protocols)
    with node_factory.client("bank") as bank:
        job_id = bank.submit(psi_spec())
        status = wait_final(bank, job_id)
    assert status.state is JobState.REFUSED
    assert words in status.error
    refusals = [
        f
        for ev, jid, f in audit_events(node_factory, refuser)
        if ev == "job_refused" and jid == job_id
    ]
    if refuser == "tax" and "bank" not in tax_allows:
        # A party the node does not work with leaves no state and no record of its job there,
        # only its count among the refused calls.
        assert refusals == [] and not any(
            jid == job_id for _, jid, _ in audit_events(node_factory, "tax")
        )
        node_factory.nodes["tax"].refusals.flush()
        counted = [f for ev, _, f in audit_events(node_factory, "tax") if ev == "rpc_refused"]
        assert [(c["caller"], c["method"], c["count"]) for c in counted] == [
            ("bank", "bund.v1.Jobs/ProposeJob", 1)
        ]
    else:
        assert len(refusals) == 1 and words in str(refusals[0]["reason"])
    for name in ("bank", "tax"):
        events = [ev for ev, jid, _ in audit_events(node_factory, name) if jid == job_id]
        assert not [e for e in events if e.startswith("message_")], (name, events)
        assert "job_started" not in events


def test_client_without_certificate_is_refused(node_factory: NodeFactory) -> None:
    node = node_factory.start("bank")
    tls = node_factory.federation.tls("bank")
    creds = grpc.ssl_channel_credentials(tls.ca.read_bytes())  # no client certificate
    with grpc.secure_channel(
        f"127.0.0.1:{node.port}", creds, options=channel_options(1 << 20, "bank")
    ) as ch:
        rpc = ch.unary_unary("/bund.v1.Jobs/ListJobs")
        with pytest.raises(grpc.RpcError) as err:
            rpc(job_pb2.ListJobsRequest().SerializeToString(), timeout=10)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE


def test_client_from_another_ca_is_refused(node_factory: NodeFactory) -> None:
    node = node_factory.start("bank")
    fed = node_factory.federation
    intruder = fed.party_dir("intruder")
    creds = grpc.ssl_channel_credentials(
        fed.tls("bank").ca.read_bytes(),
        (intruder / "node.key").read_bytes(),
        (intruder / "node.pem").read_bytes(),
    )
    with grpc.secure_channel(
        f"127.0.0.1:{node.port}", creds, options=channel_options(1 << 20, "bank")
    ) as ch:
        rpc = ch.unary_unary("/bund.v1.Jobs/ListJobs")
        with pytest.raises(grpc.RpcError) as err:
            rpc(job_pb2.ListJobsRequest().SerializeToString(), timeout=10)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert health_status(node.port, node_factory) == health_pb2.HealthCheckResponse.SERVING


def test_client_expecting_another_party_refuses_the_server(node_factory: NodeFactory) -> None:
    node = node_factory.start("bank")
    # The bank's node presents the bank's certificate; a client that wants "tax" must not accept it.
    with NodeClient(
        f"127.0.0.1:{node.port}", "tax", node_factory.federation.tls("tax"), timeout=5
    ) as c:
        with pytest.raises(PeerUnavailableError):
            c.list_jobs()


def test_only_the_operator_submits_and_reads_results(node_factory: NodeFactory) -> None:
    start_pair(node_factory)
    with node_factory.client("bank", as_party="tax") as impostor:
        with pytest.raises(RemoteError) as err:
            impostor.submit(psi_spec())
        assert err.value.code is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(RemoteError) as err:
            impostor.list_jobs()
        assert err.value.code is grpc.StatusCode.PERMISSION_DENIED


def test_audit_log_readable_by_operator_and_regulator_only(node_factory: NodeFactory) -> None:
    node_factory.start("bank")
    with node_factory.client("bank") as own:
        page = own.read_audit()
        assert page.size >= 1 and page.records[0].event == "node_started"
    with node_factory.client("bank", as_party="regulator") as regulator:
        assert regulator.read_audit().size >= 1
    with node_factory.client("bank", as_party="tax") as other:
        with pytest.raises(RemoteError) as err:
            other.read_audit()
        assert err.value.code is grpc.StatusCode.PERMISSION_DENIED


def _raw_call(
    f: NodeFactory,
    port: int,
    service: str,
    method: str,
    payload: bytes,
    as_party: str = "tax",
    max_len: int = 64 << 20,
) -> grpc.StatusCode:
    tls = f.federation.tls(as_party)
    creds = grpc.ssl_channel_credentials(
        tls.ca.read_bytes(), tls.key.read_bytes(), tls.cert.read_bytes()
    )
    with grpc.secure_channel(
        f"127.0.0.1:{port}", creds, options=channel_options(max_len, "bank")
    ) as ch:
        rpc = ch.unary_unary(f"/bund.v1.{service}/{method}")
        try:
            rpc(payload, timeout=20)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK


@pytest.mark.parametrize(("service", "method"), ALL_RPCS)
def test_bad_payloads_get_defined_status_and_node_keeps_serving(
    node_factory: NodeFactory, service: str, method: str
) -> None:
    start_pair(node_factory)
    port = node_factory.nodes["bank"].port
    valid = job_pb2.DeliverRequest(job_id="a" * 32, tag="x", payload=b"p" * 100).SerializeToString()
    garbage = os.urandom(512)
    cases = {
        "garbage": b"\xff\xff\xff\xff" + garbage,
        "truncated": valid[: len(valid) // 2],
        "oversized": b"\x0a" + b"\x00" * (9 << 20),
    }
    for name, payload in cases.items():
        code = _raw_call(node_factory, port, service, method, payload)
        if name == "oversized":
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, (name, code)
        else:
            assert code in {
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.FAILED_PRECONDITION,
            }, (name, code)
    assert health_status(port, node_factory) == health_pb2.HealthCheckResponse.SERVING
    with node_factory.client("bank") as bank:
        job_id = bank.submit(psi_spec())
        assert wait_final(bank, job_id).state is JobState.SUCCEEDED


def test_message_for_a_job_the_sender_is_not_in_is_refused(node_factory: NodeFactory) -> None:
    start_pair(node_factory, bank_allows=("tax", "registry"))
    node_factory.start("registry", {}, ("bank",))
    with node_factory.client("bank") as bank:
        job_id = bank.submit(psi_spec())
        wait_final(bank, job_id)
    with node_factory.client("bank", as_party="registry") as registry:
        with pytest.raises(RemoteError) as err:
            registry.deliver(job_id, "psi/blinded/0", b"\x00" * 32)
        assert err.value.code is grpc.StatusCode.PERMISSION_DENIED


def test_audit_verify_cli_names_first_bad_record(node_factory: NodeFactory, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bund.parties.cli import app

    start_pair(node_factory)
    with node_factory.client("bank") as bank:
        wait_final(bank, bank.submit(psi_spec()))
    cfg = node_factory.config("bank")
    node_factory.stop_all()
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify", "--config", str(cfg.source)])
    assert ok.exit_code == 0, ok.output
    assert "OK" in ok.output
    import sqlite3

    db = sqlite3.connect(cfg.state_dir / "audit.db")
    (target,) = db.execute(
        "SELECT min(idx) FROM audit_records WHERE idx > 0 AND fields LIKE '%psi%'"
    ).fetchone()
    db.execute(
        "UPDATE audit_records SET fields = replace(fields, 'psi', 'pSi') WHERE idx = ?", (target,)
    )
    db.commit()
    db.close()
    bad = runner.invoke(app, ["audit", "verify", "--config", str(cfg.source)])
    assert bad.exit_code == 1
    assert f"record {target}" in bad.output
    store = SqliteAuditStore(cfg.state_dir / "audit.db", read_only=True)
    try:
        assert (
            verify_records(store.read(), load_audit_public_key(cfg.audit_pub)).first_bad_index
            == target
        )
    finally:
        store.close()


def _big_result_role(ctx: JobContext) -> Result | None:
    (peer,) = (p for p in ctx.spec.parties if p != ctx.party)
    ctx.send(peer, "hello", b"x")
    ctx.recv(peer, "hello")
    blob = bytes(range(256)) * (12 * 4096 + 7)  # about 12 MiB: over every message limit
    return (
        Result({"size": len(blob)}, {"blob.bin": blob}) if ctx.party in ctx.spec.receivers else None
    )


def test_results_larger_than_a_message_are_read_in_pages(node_factory: NodeFactory) -> None:
    big = ProtocolDef(
        name="big_result_test",
        version="1",
        roles={"member": _big_result_role},
        outputs=lambda spec: frozenset({"raw"}),
        learns=lambda spec: dict.fromkeys(spec.parties, "a test blob"),
    )
    registry = {**PROTOCOLS, big.name: big}
    node_factory.start(
        "bank", {"loans": {"company_id": BANK_IDS}}, ("tax",), level="public", registry=registry
    )
    node_factory.start(
        "tax", {"filings": {"uscc": TAX_IDS}}, ("bank",), level="public", registry=registry
    )
    spec = JobSpec(
        protocol=big.name,
        participants=(
            Participant("bank", "member", "loans"),
            Participant("tax", "member", "filings"),
        ),
        receivers=("bank",),
        purpose="paging test",
        requester="bank",
    )
    with node_factory.client("bank") as bank:
        job_id = bank.submit(spec)
        assert wait_final(bank, job_id).state is JobState.SUCCEEDED
        result = bank.result(job_id)
    assert result.artifacts["blob.bin"] == bytes(range(256)) * (12 * 4096 + 7)
    assert "receipt.json" in result.artifacts
