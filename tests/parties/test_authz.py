"""The roster, revocation lists and instance epochs, without nodes."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
from collections.abc import Mapping
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding

from bund.parties import identity, roster
from bund.parties.authz import DuplicateInstanceError, Instance, InstancePins
from bund.parties.errors import NotAuthorizedError
from bund.parties.identity import IdentityError
from bund.parties.roster import SignedDocumentError, WatchedDocument
from tests.conftest import Federation

KEY = ed25519.Ed25519PrivateKey.generate()
PEM = Encoding.PEM


def instance(epoch_of: str = "bank") -> Instance:
    return Instance.create(epoch_of, KEY, "2026-01-01T00:00:00Z")


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, object]]] = []

    def __call__(self, event: str, job_id: str, fields: Mapping[str, object]) -> None:
        self.records.append((event, dict(fields)))


class Probe:
    """What the node at the peer's address answers: an epoch, or None (unreachable)."""

    def __init__(self, answer: str | None) -> None:
        self.answer = answer
        self.calls = 0

    def __call__(self, party: str) -> str | None:
        self.calls += 1
        return self.answer


# -- instance epochs -----------------------------------------------------------------------------


def test_an_instance_statement_round_trips_and_refuses_tampering() -> None:
    statement = instance()
    assert len(statement.epoch) == 32 and statement.epoch != instance().epoch
    wire = statement.encode()
    assert Instance.decode(wire, KEY.public_key()) == statement
    with pytest.raises(NotAuthorizedError, match="does not verify"):
        Instance.decode(wire.replace(b"bank", b"tax!"), KEY.public_key())
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    with pytest.raises(NotAuthorizedError, match="does not verify"):
        Instance.decode(wire, other)
    with pytest.raises(NotAuthorizedError, match="malformed"):
        Instance.decode(wire[:40], KEY.public_key())


def test_the_first_run_is_pinned_and_a_second_live_run_is_refused() -> None:
    real, twin = instance(), instance()
    probe, record = Probe(real.epoch), Recorder()
    now = [0.0]
    pins = InstancePins(probe, record, refuse_for=5.0, clock=lambda: now[0])
    pins.admit("bank", "job1", real)
    pins.admit("bank", "job1", real)
    assert probe.calls == 1  # the first contact is checked at the bank's address, once
    with pytest.raises(DuplicateInstanceError, match="second instance of bank"):
        pins.admit("bank", "job1", twin)
    with pytest.raises(DuplicateInstanceError):
        pins.admit("bank", "job2", twin)  # a new job too: it is checked against the latest run
    assert probe.calls == 2  # refused again without asking the bank again
    ((event, fields),) = record.records
    assert event == "duplicate_instance"
    assert fields["epoch"] == twin.epoch and fields["answering_epoch"] == real.epoch
    assert fields["pinned_epoch"] == real.epoch and fields["job"] == "job1"
    now[0] = 10.0
    with pytest.raises(DuplicateInstanceError):
        pins.admit("bank", "job1", twin)
    assert probe.calls == 3  # asked again once the refusal ran out
    pins.admit("bank", "job1", real)  # the real run goes on


def test_a_restart_is_accepted_and_re_pins_every_job() -> None:
    old, new = instance(), instance()
    probe, record = Probe(old.epoch), Recorder()
    pins = InstancePins(probe, record)
    pins.admit("bank", "job1", old)
    pins.admit("bank", "job2", old)
    probe.answer = new.epoch  # the bank restarted: its address answers with the new run
    pins.admit("bank", "job1", new)
    calls = probe.calls
    pins.admit("bank", "job2", new)  # the latest run: no need to ask again
    assert probe.calls == calls
    changed = [f for e, f in record.records if e == "peer_instance_changed"]
    assert [(f["job"], f["from_epoch"], f["epoch"], f["verified"]) for f in changed] == [
        ("job1", old.epoch, new.epoch, True),
        ("job2", old.epoch, new.epoch, True),
    ]
    with pytest.raises(DuplicateInstanceError):
        pins.admit("bank", "job1", old)  # the old run came back while the new one answers


def test_an_unreachable_address_accepts_the_newer_run_unverified() -> None:
    old, new = instance(), instance()
    probe, record = Probe(None), Recorder()
    pins = InstancePins(probe, record)
    pins.admit("bank", "job1", old)
    pins.admit("bank", "job1", new)
    (event, fields) = record.records[-1]
    assert event == "peer_instance_changed" and fields["verified"] is False


# -- signed documents ----------------------------------------------------------------------------

CA = ec.generate_private_key(ec.SECP256R1())


def _roster(version: int, names: tuple[str, ...] = ("bank",)) -> bytes:
    members = {n: roster.Member(n, n, frozenset({"ab" * 32}), b"\x01" * 32) for n in names}
    body = roster.Roster("test", version, "2026-01-01T00:00:00Z", members).body()
    return roster.sign_document(roster.ROSTER_KIND, body, CA)


def test_a_roster_verifies_only_unaltered_and_with_its_issuers_key() -> None:
    data = _roster(3, ("bank", "tax"))
    parsed = roster.parse_roster(data, CA.public_key())
    assert parsed.version == 3 and set(parsed.members) == {"bank", "tax"}
    assert parsed.members["tax"].certificates == frozenset({"ab" * 32})
    doc = json.loads(data)
    doc["body"]["parties"]["tax"]["role"] = "regulator"
    with pytest.raises(SignedDocumentError, match="signature does not verify"):
        roster.parse_roster(json.dumps(doc).encode(), CA.public_key())
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(SignedDocumentError, match="signature does not verify"):
        roster.parse_roster(data, other)
    with pytest.raises(SignedDocumentError, match="not 'bund/roster/v1'"):
        revoked = roster.RevocationList("test", 1, "2026-01-01T00:00:00Z").body()
        roster.parse_roster(
            roster.sign_document(roster.REVOCATIONS_KIND, revoked, CA), CA.public_key()
        )


def test_a_watched_document_takes_newer_versions_and_keeps_its_own_otherwise(
    tmp_path: Path,
) -> None:
    path = tmp_path / "roster.json"
    path.write_bytes(_roster(2))
    refused: list[str] = []
    loaded: list[int] = []

    def parse(data: bytes, where: str) -> roster.Roster:
        return roster.parse_roster(data, CA.public_key(), where)

    doc = WatchedDocument(path, parse, refused.append, loaded.append)
    assert doc.current().version == 2

    def replace(data: bytes) -> None:
        staged = tmp_path / "staged"
        staged.write_bytes(data)
        os.replace(staged, path)

    replace(_roster(3, ("bank", "tax")))
    assert doc.current().version == 3 and "tax" in doc.current().members and loaded == [3]
    replace(_roster(1))  # an older version: a rollback
    assert doc.current().version == 3 and "older than version 3" in refused[-1]
    replace(b"{}")
    assert doc.current().version == 3 and "not a signed document" in refused[-1]
    path.unlink()
    assert doc.current().version == 3 and "removed" in refused[-1]
    assert len(refused) == 3  # once per change of the file, not once per call
    with pytest.raises(SignedDocumentError, match="not found"):
        WatchedDocument(tmp_path / "missing.json", parse)


# -- the federation's files ----------------------------------------------------------------------


def test_party_init_enrols_the_party_in_the_signed_roster(federation: Federation) -> None:
    current = identity.load_roster(
        federation.ca_dir / identity.ROSTER_FILE, federation.ca_dir / identity.CA_CERT
    )
    bank = current.members["bank"]
    facts = identity.certificate_facts((federation.party_dir("bank") / "node.pem").read_bytes())
    assert bank.role == "bank" and bank.certificates == frozenset({facts.fingerprint})
    audit = identity.load_audit_public_key(federation.party_dir("bank") / identity.AUDIT_PUB)
    assert bank.audit_key == identity.raw_public_key(audit)
    assert current.members["hospital-a"].role == "hospital"


def test_a_certificate_s_fingerprint_is_the_sha256_of_its_der_encoding(
    federation: Federation,
) -> None:
    # What every roster holds, whichever version of Bund wrote it: a rewrite of the computation
    # must not change a byte of it.
    pem = (federation.party_dir("bank") / "node.pem").read_text()
    der = ssl.PEM_cert_to_DER_cert(pem)
    facts = identity.certificate_facts(pem.encode())
    assert facts.fingerprint == hashlib.sha256(der).hexdigest()


def test_operator_credentials_are_marked_and_bound_to_their_party(federation: Federation) -> None:
    pem = federation.operator_tls("tax").cert.read_bytes()
    facts = identity.certificate_facts(pem)
    assert (facts.role, facts.organisation, facts.operator_usage) == ("operator", "tax", True)
    tax_ca = (federation.party_dir("tax") / identity.OPERATOR_CA_CERT).read_bytes()
    bank_ca = (federation.party_dir("bank") / identity.OPERATOR_CA_CERT).read_bytes()
    fed_ca = (federation.ca_dir / identity.CA_CERT).read_bytes()
    assert identity.issued_by(pem, tax_ca)
    assert not identity.issued_by(pem, bank_ca) and not identity.issued_by(pem, fed_ca)
    node = identity.certificate_facts((federation.party_dir("tax") / "node.pem").read_bytes())
    assert not node.operator_usage


def test_enrol_revoke_and_remove(tmp_path: Path) -> None:
    fed = tmp_path / "fed"
    identity.create_federation(fed, "x")
    identity.create_party(fed, "bank", "bank", tmp_path / "bank")
    identity.create_party(fed, "tax", "tax", tmp_path / "tax")
    bank_pem = (tmp_path / "bank" / "node.pem").read_bytes()
    audit = identity.load_audit_public_key(tmp_path / "bank" / identity.AUDIT_PUB)
    with pytest.raises(IdentityError, match="not 'tax' with role 'tax'"):
        identity.enrol(fed, "tax", "tax", bank_pem, audit)
    key = ec.generate_private_key(ec.SECP256R1())
    as_regulator = identity.sign_csr(fed, identity.make_csr("bank", "regulator", key))
    with pytest.raises(IdentityError, match="remove it first"):
        identity.enrol(fed, "bank", "regulator", as_regulator.public_bytes(PEM), audit)
    serial = identity.certificate_facts(bank_pem).serial
    entry = identity.revoke(fed, format(serial, "X"), "test")
    assert entry.serial == format(serial, "x")
    revoked = identity.load_revocations(fed / identity.REVOCATIONS_FILE, fed / identity.CA_CERT)
    assert revoked.version == 2 and revoked.get(serial) is not None
    with pytest.raises(IdentityError, match="neither a certificate file nor a hex serial"):
        identity.revoke(fed, "not-a-serial", "test")
    with pytest.raises(IdentityError, match="was not issued by"):
        identity.revoke(fed, str(tmp_path / "tax" / "operator" / "operator.pem"), "test")
    after = identity.unenrol(fed, "tax")
    assert set(after.members) == {"bank"} and after.version == 4
