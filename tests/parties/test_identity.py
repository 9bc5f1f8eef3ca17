"""Federation CA and party certificates: names, roles, key files, refusals."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from bund.parties import identity
from bund.parties.identity import IdentityError
from tests.conftest import Federation


def test_party_certificate_carries_name_and_role(federation: Federation) -> None:
    pem = (federation.party_dir("hospital-a") / "node.pem").read_bytes()
    assert identity.identity_from_pem(pem) == identity.PartyIdentity("hospital-a", "hospital")
    cert = x509.load_pem_x509_certificate(pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["hospital-a"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku and ExtendedKeyUsageOID.SERVER_AUTH in eku
    ca = x509.load_pem_x509_certificate((federation.ca_dir / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)


@pytest.mark.parametrize("name", ["ca/ca.key", "bank/node.key", "bank/audit_ed25519.key"])
def test_private_keys_are_owner_only(federation: Federation, name: str) -> None:
    mode = stat.S_IMODE((federation.root / name).stat().st_mode)
    assert mode == 0o600


def test_keys_are_never_overwritten(federation: Federation) -> None:
    with pytest.raises(IdentityError, match="already exists"):
        identity.create_party(federation.ca_dir, "bank", "bank", federation.party_dir("bank"))


def test_unknown_role_and_bad_name_are_refused(federation: Federation, tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="role"):
        identity.create_party(federation.ca_dir, "x", "wizard", tmp_path / "x")
    with pytest.raises(IdentityError, match="name"):
        identity.create_party(federation.ca_dir, "Bad Name", "bank", tmp_path / "y")


def test_world_readable_private_key_is_refused(federation: Federation, tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_bytes((federation.party_dir("bank") / "audit_ed25519.key").read_bytes())
    key.chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        identity.load_audit_signing_key(key)


def test_audit_keys_load_and_match(federation: Federation) -> None:
    d = federation.party_dir("bank")
    private = identity.load_audit_signing_key(d / "audit_ed25519.key")
    public = identity.load_audit_public_key(d / "audit_ed25519.pub")
    assert identity.raw_public_key(private.public_key()) == identity.raw_public_key(public)
