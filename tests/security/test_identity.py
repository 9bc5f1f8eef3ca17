"""Identity is more than a common name: each attack of issue 15 (item 5), played between nodes.

* a federation certificate ``CN=bank, OU=regulator`` cannot act as the bank's operator, nor can the
  bank's own node certificate, nor one the federation issues as if it were a bank operator;
* a tax certificate with ``OU=bank`` (not the tax's role in the roster) cannot abort a job;
* a second node running with the bank's certificate is detected, audited, and its abort refused,
  while the real bank's job completes;
* a certificate the federation revoked is refused, and the regulator names it;
* an approver approves from a workstation holding only the approver key and an operator
  credential (no node key).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from bund.parties import identity
from bund.parties.cli import app
from bund.parties.client import NodeClient, RemoteError
from bund.parties.config import TlsPaths
from bund.parties.errors import PeerUnavailableError
from bund.parties.follow import follow_job
from bund.parties.jobs import JobSpec, Participant
from bund.parties.lifecycle.states import JobState
from bund.parties.node import create_node
from bund.parties.protocols import PROTOCOLS
from bund.parties.regulator import FindingKind, audit_federation, load_regulator_config
from tests.conftest import Federation, NodeFactory
from tests.integration.test_node import BANK_IDS, TAX_IDS, audit_events, wait_final
from tests.integration.test_regulator import write_regulator_config
from tests.parties.lifecycle_harness import EXCHANGE, GATE

REGISTRY = {**PROTOCOLS, EXCHANGE.name: EXCHANGE}


def exchange_spec() -> JobSpec:
    """A job whose roles wait until the test opens its gate."""
    return JobSpec(
        protocol=EXCHANGE.name,
        participants=(
            Participant("bank", "member", "loans"),
            Participant("tax", "member", "filings"),
        ),
        receivers=("bank",),
        purpose="identity test",
        requester="bank",
        params={"gated": True},
    )


def start_pair(f: NodeFactory, approvals: bool = False) -> None:
    f.start("bank", {"loans": {"id": BANK_IDS}}, ("tax",), level="public", registry=REGISTRY)
    f.start(
        "tax",
        {"filings": {"id": TAX_IDS}},
        ("bank",),
        level="public",
        registry=REGISTRY,
        approvals=approvals,
    )


def running_job(f: NodeFactory) -> str:
    """Submit a gated job at the bank and wait until it runs at the tax bureau."""
    with f.client("bank") as bank, f.client("tax") as tax:
        job_id = bank.submit(exchange_spec())
        status = follow_job(
            tax, job_id, until=lambda s: s.state is JobState.RUNNING, timeout=30, interval=0.02
        )
        assert status.state is JobState.RUNNING, status.error
    return job_id


def finish(f: NodeFactory, job_id: str) -> None:
    """Open the job's gate and check it succeeds at both nodes."""
    GATE.open(job_id)
    for name in ("bank", "tax"):
        with f.client(name) as client:
            status = wait_final(client, job_id)
            assert status.state is JobState.SUCCEEDED, (name, status.error)


def forged_credential(
    federation: Federation,
    out: Path,
    cn: str,
    ou: str,
    organisation: str | None = None,
    operator_usage: bool = False,
) -> TlsPaths:
    """A client certificate the federation CA signs with any subject (a CA's mistake)."""
    ca_key = identity.load_private_key(federation.ca_dir / "ca.key")
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = identity.load_certificate(federation.ca_dir / "ca.pem")
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou)]
    if organisation is not None:
        names.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
    names.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    if operator_usage:
        usages.append(identity.OPERATOR_USAGE)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(names))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "node.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (out / "node.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return TlsPaths(ca=federation.ca_dir / "ca.pem", cert=out / "node.pem", key=out / "node.key")


def refused(call: object) -> RemoteError:
    """Run ``call`` and return the PERMISSION_DENIED it must raise."""
    assert callable(call)
    with pytest.raises(RemoteError) as err:
        call()
    assert err.value.code is grpc.StatusCode.PERMISSION_DENIED, err.value
    return err.value


@pytest.fixture
def own_federation(tmp_path: Path) -> Iterator[Federation]:
    """A federation of its own, for tests that revoke certificates."""
    root = tmp_path / "own-federation"
    identity.create_federation(root / "ca", "own")
    for name, role in (("bank", "bank"), ("tax", "tax"), ("regulator", "regulator")):
        identity.create_party(root / "ca", name, role, root / name)
    yield Federation(root)


# -- operators --------------------------------------------------------------------------------


def test_only_the_partys_own_operator_credentials_make_operator_calls(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    start_pair(node_factory)
    fed = node_factory.federation
    address = f"127.0.0.1:{node_factory.port('bank')}"
    as_regulator = forged_credential(fed, tmp_path / "r", "bank", "regulator")
    as_fed_operator = forged_credential(
        fed, tmp_path / "o", "admin", identity.OPERATOR_UNIT, "bank", operator_usage=True
    )
    callers = {
        "CN=bank,OU=regulator from the federation CA": as_regulator,
        "bank's own node certificate": fed.tls("bank"),
        "an 'operator of bank' the federation issued": as_fed_operator,
        "the regulator's certificate": fed.tls("regulator"),
    }
    for what, tls in callers.items():
        with NodeClient(address, "bank", tls, timeout=10) as client:
            error = refused(functools.partial(client.submit, exchange_spec()))
            assert "bank" in error.details, what
            refused(client.list_jobs)
    # The federation CA's own certificate and key, presented as a client credential.
    ca_as_client = TlsPaths(fed.ca_dir / "ca.pem", fed.ca_dir / "ca.pem", fed.ca_dir / "ca.key")
    with NodeClient(address, "bank", ca_as_client, timeout=10) as client:
        with pytest.raises((RemoteError, PeerUnavailableError)) as err:
            client.submit(exchange_spec())
        if isinstance(err.value, RemoteError):
            assert err.value.code is grpc.StatusCode.PERMISSION_DENIED
    # Another party's operator credential is not even accepted by TLS at the bank.
    with NodeClient(address, "bank", fed.operator_tls("tax"), timeout=10) as client:
        with pytest.raises(PeerUnavailableError):
            client.list_jobs()
    # The bank's own operator credential works, and nothing above was submitted.
    with node_factory.client("bank") as operator:
        assert operator.list_jobs() == []
    node_factory.nodes["bank"].refusals.flush()  # refused calls are recorded as counts
    denied = [
        f
        for e, _, f in audit_events(node_factory, "bank")
        if e == "rpc_refused" and f["code"] == "PERMISSION_DENIED"
    ]
    assert any("bank (regulator)" in str(f["caller"]) for f in denied)


def test_an_operator_credential_cannot_make_node_to_node_calls(node_factory: NodeFactory) -> None:
    start_pair(node_factory)
    job_id = running_job(node_factory)
    with node_factory.client("bank") as operator:
        refused(lambda: operator.deliver(job_id, "count", b"1"))
        refused(lambda: operator.start(job_id))
    finish(node_factory, job_id)


# -- peers: the roster -------------------------------------------------------------------------


def test_a_tax_certificate_with_role_bank_cannot_abort_a_job(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    start_pair(node_factory)
    job_id = running_job(node_factory)
    forged = forged_credential(node_factory.federation, tmp_path / "t", "tax", "bank")
    instance = node_factory.nodes["tax"].peers.instance  # even with the tax node's epoch
    address = f"127.0.0.1:{node_factory.port('bank')}"
    with NodeClient(address, "bank", forged, timeout=10, instance=instance) as impostor:
        error = refused(lambda: impostor.abort(job_id, "forged"))
        assert "roster lists tax as 'tax'" in error.details
        refused(lambda: impostor.status(job_id))
    # A certificate with the right name and role that the roster does not list is refused too.
    unlisted = forged_credential(node_factory.federation, tmp_path / "u", "tax", "tax")
    with NodeClient(address, "bank", unlisted, timeout=10, instance=instance) as impostor:
        error = refused(lambda: impostor.abort(job_id, "unlisted"))
        assert "not one of tax's certificates in the roster" in error.details
    finish(node_factory, job_id)


def test_a_peer_outside_the_job_cannot_touch_it(node_factory: NodeFactory) -> None:
    start_pair(node_factory)
    node_factory.start("registry", {}, ("bank", "tax"), registry=REGISTRY)
    job_id = running_job(node_factory)
    with node_factory.client("tax", as_party="registry") as registry:
        error = refused(lambda: registry.abort(job_id, "not mine"))
        assert f"registry takes no part in job {job_id}" in error.details
        refused(lambda: registry.status(job_id))
    finish(node_factory, job_id)


# -- peers: instance epochs --------------------------------------------------------------------


def test_a_second_node_with_the_banks_certificate_is_refused_and_audited(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    start_pair(node_factory)
    job_id = running_job(node_factory)
    real = node_factory.nodes["bank"]
    config = real.config
    twin = create_node(
        dataclasses.replace(
            config, state_dir=tmp_path / "twin", audit_store=str(tmp_path / "twin-audit.db")
        ),
        REGISTRY,
    )
    try:
        assert twin.peers.instance != real.peers.instance
        with pytest.raises(RemoteError) as err:
            twin.peers.abort("tax", job_id, "the twin says stop")
        assert err.value.code is grpc.StatusCode.PERMISSION_DENIED
        assert "second instance of bank" in err.value.details
        with pytest.raises(RemoteError):  # refused again, without asking the bank again
            twin.peers.abort("tax", job_id, "the twin insists")
    finally:
        twin.stop(grace=1.0)
    duplicates = [f for e, _, f in audit_events(node_factory, "tax") if e == "duplicate_instance"]
    assert duplicates, "tax recorded no duplicate instance"
    real_epoch = next(
        f["epoch"] for e, _, f in audit_events(node_factory, "bank") if e == "node_started"
    )
    assert {f["peer"] for f in duplicates} == {"bank"}
    assert {f["job"] for f in duplicates} == {job_id}
    assert {f["answering_epoch"] for f in duplicates} == {real_epoch}
    assert all(f["epoch"] != real_epoch for f in duplicates)
    finish(node_factory, job_id)
    aborts = [e for e, j, _ in audit_events(node_factory, "tax") if j == job_id]
    assert "job_aborted" not in aborts


def test_a_restarted_node_is_accepted_with_its_new_epoch(node_factory: NodeFactory) -> None:
    start_pair(node_factory)
    with node_factory.client("bank") as bank:
        first = bank.submit(exchange_spec())
    GATE.open(first)
    with node_factory.client("bank") as bank:
        assert wait_final(bank, first).state is JobState.SUCCEEDED
    config_path = node_factory.config("bank").source
    assert config_path is not None
    node_factory.nodes.pop("bank").stop(grace=1.0)
    node_factory.run("bank", config_path, REGISTRY)
    job_id = running_job(node_factory)
    finish(node_factory, job_id)
    changed = [f for e, _, f in audit_events(node_factory, "tax") if e == "peer_instance_changed"]
    assert changed and changed[-1]["peer"] == "bank"
    assert not [e for e, _, _ in audit_events(node_factory, "tax") if e == "duplicate_instance"]


# -- revocation ----------------------------------------------------------------------------------


def test_a_revoked_certificate_is_refused_and_the_regulator_names_it(
    own_federation: Federation, tmp_path: Path
) -> None:
    factory = NodeFactory(own_federation, tmp_path / "nodes")
    try:
        start_pair(factory)
        job_id = running_job(factory)
        finish(factory, job_id)
        tax_cert = own_federation.party_dir("tax") / "node.pem"
        entry = identity.revoke(own_federation.ca_dir, str(tax_cert), "key left on a laptop")
        with factory.client("bank", as_party="tax") as tax_node:
            error = refused(lambda: tax_node.status(job_id))
            assert "revoked by the federation" in error.details
            assert "key left on a laptop" in error.details
        loaded = [f for e, _, f in audit_events(factory, "bank") if e == "trust_list_loaded"]
        assert loaded and loaded[-1]["version"] == 2
        addresses = {n: f"127.0.0.1:{node.port}" for n, node in factory.nodes.items()}
        regulator = write_regulator_config(tmp_path / "r.toml", own_federation, addresses)
        outcome = audit_federation(load_regulator_config(regulator))
        (finding,) = [f for f in outcome.findings if f.kind is FindingKind.CERTIFICATE_REVOKED]
        assert finding.parties == ("tax",)
        assert entry.serial in finding.detail and "key left on a laptop" in finding.detail
    finally:
        factory.stop_all()


def test_a_revoked_operator_credential_is_refused(
    own_federation: Federation, tmp_path: Path
) -> None:
    factory = NodeFactory(own_federation, tmp_path / "nodes")
    try:
        start_pair(factory)
        bank_dir = own_federation.party_dir("bank")
        identity.issue_operator(bank_dir, "mallory", tmp_path / "mallory")
        mallory = TlsPaths(
            tmp_path / "mallory" / "ca.pem",
            tmp_path / "mallory" / "operator.pem",
            tmp_path / "mallory" / "operator.key",
        )
        address = f"127.0.0.1:{factory.port('bank')}"
        with NodeClient(address, "bank", mallory, timeout=10) as client:
            assert client.list_jobs() == []
            identity.revoke(bank_dir, str(mallory.cert), "left the bank", operators=True)
            error = refused(client.list_jobs)
            assert "revoked by bank" in error.details and "left the bank" in error.details
        with factory.client("bank") as admin:  # the other operators carry on
            assert admin.list_jobs() == []
    finally:
        factory.stop_all()


# -- approvers -----------------------------------------------------------------------------------


def test_an_approver_approves_from_a_workstation_without_the_node_key(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    start_pair(node_factory, approvals=True)
    tax_dir = node_factory.federation.party_dir("tax")
    station = tmp_path / "workstation"
    runner = CliRunner()
    issued = runner.invoke(
        app,
        ["operator", "issue", "alice", "--party", str(tax_dir), "--out", str(station),
         "--node", f"127.0.0.1:{node_factory.port('tax')}"],
    )  # fmt: skip
    assert issued.exit_code == 0, issued.output
    shutil.copy(tax_dir / identity.APPROVER_KEY, station / identity.APPROVER_KEY)
    (station / identity.APPROVER_KEY).chmod(0o600)
    config = station / "operator.toml"
    config.write_text(
        config.read_text().replace("# approver_key", "approver_key"), encoding="utf-8"
    )
    assert sorted(p.name for p in station.iterdir()) == [
        "approver_ed25519.key",
        "ca.pem",
        "operator.key",
        "operator.pem",
        "operator.toml",
    ]
    with node_factory.client("bank") as bank:
        job_id = bank.submit(exchange_spec())
        with node_factory.client("tax") as tax:
            follow_job(
                tax,
                job_id,
                until=lambda s: s.state is JobState.AWAITING_APPROVAL,
                timeout=30,
                interval=0.02,
            )
        r = runner.invoke(app, ["job", "approve", job_id, "--config", str(config), "--yes"])
        assert r.exit_code == 0, r.output
        assert f"approved job {job_id}" in r.output
        GATE.open(job_id)
        assert wait_final(bank, job_id).state is JobState.SUCCEEDED
    approved = next(
        f for e, j, f in audit_events(node_factory, "tax") if e == "job_approved" and j == job_id
    )
    assert approved["approver"]
    rpc = next(
        f
        for e, _, f in audit_events(node_factory, "tax")
        if e == "rpc" and f["method"] == "bund.v1.Jobs/ApproveJob"
    )
    assert rpc["operator"] == "alice" and rpc["code"] == "OK"


def test_an_operator_verifies_the_nodes_log_from_a_workstation(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    start_pair(node_factory)
    bank_dir = node_factory.federation.party_dir("bank")
    station = tmp_path / "workstation"
    runner = CliRunner()
    issued = runner.invoke(
        app,
        ["operator", "issue", "olga", "--party", str(bank_dir), "--out", str(station),
         "--node", f"127.0.0.1:{node_factory.port('bank')}"],
    )  # fmt: skip
    assert issued.exit_code == 0, issued.output
    config = str(station / "operator.toml")
    key = str(bank_dir / identity.AUDIT_PUB)
    r = runner.invoke(app, ["audit", "verify", "--config", config, "--key", key])
    assert r.exit_code == 0 and "chain and signatures verify (bank's node)" in r.output, r.output
    r = runner.invoke(app, ["audit", "verify", "--config", config])
    assert r.exit_code == 1 and "give --key" in r.output
    wrong = str(node_factory.federation.party_dir("tax") / identity.AUDIT_PUB)
    r = runner.invoke(app, ["audit", "verify", "--config", config, "--key", wrong])
    assert r.exit_code == 1 and "record 0" in r.output, r.output
