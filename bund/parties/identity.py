"""Federation CA, party certificates and audit-signing keys.

A federation has one CA (ECDSA P-256). Each party gets an X.509 certificate from it whose subject
common name is the party's name and whose organisational unit is its role; the node's TLS uses that
certificate and peers take the caller's identity from it alone. Each party also has an Ed25519 key
that signs its audit log. Private keys are written 0600 and never leave the party's directory.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bund.compute.errors import BundError

ROLES = ("bank", "tax", "registry", "hospital", "insurer", "regulator")

CA_KEY = "ca.key"
CA_CERT = "ca.pem"
NODE_KEY = "node.key"
NODE_CERT = "node.pem"
AUDIT_KEY = "audit_ed25519.key"
AUDIT_PUB = "audit_ed25519.pub"
APPROVER_KEY = "approver_ed25519.key"
APPROVER_PUB = "approver_ed25519.pub"

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


class IdentityError(BundError):
    """A certificate or key is missing, malformed, or not what the federation issued."""


@dataclass(frozen=True)
class PartyIdentity:
    """Who a certificate says its holder is."""

    name: str
    role: str


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key file readable by its owner only, refusing to overwrite."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise IdentityError(f"{path} already exists; refusing to overwrite a private key") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o644)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_federation(directory: Path, name: str, valid_days: int = 3650) -> Path:
    """Create a federation CA (key 0600 + self-signed certificate) in ``directory``.

    Returns the CA certificate's path.
    """
    if not _NAME.match(name):
        raise IdentityError(f"federation name {name!r}: use lower-case letters, digits and '-'")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"Bund federation {name}"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} federation CA"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(
        directory / CA_KEY,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_public(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return directory / CA_CERT


def make_csr(
    name: str, role: str, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateSigningRequest:
    """A certificate request for party ``name`` in ``role``, signed by the party's own key."""
    if not _NAME.match(name):
        raise IdentityError(f"party name {name!r}: use lower-case letters, digits and '-'")
    if role not in ROLES:
        raise IdentityError(f"role {role!r} is not one of {', '.join(ROLES)}")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )


def sign_csr(
    federation_dir: Path, csr: x509.CertificateSigningRequest, valid_days: int = 730
) -> x509.Certificate:
    """Issue a party certificate from ``csr`` with the federation CA in ``federation_dir``."""
    if not csr.is_signature_valid:
        raise IdentityError("the certificate request's signature does not verify")
    identity = _identity_from_name(csr.subject)
    ca_key = load_private_key(federation_dir / CA_KEY)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise IdentityError(f"{federation_dir / CA_KEY} is not an ECDSA CA key")
    ca_cert = load_certificate(federation_dir / CA_CERT)
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity.name)]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def create_party(federation_dir: Path, name: str, role: str, out_dir: Path) -> PartyIdentity:
    """Make a party's TLS key and certificate and its audit-signing key in ``out_dir``.

    The party's keys are generated here and written 0600; only the certificate request travels
    to the CA. (A CA operator and a party on different machines run the same two steps apart.)
    """
    key = ec.generate_private_key(ec.SECP256R1())
    cert = sign_csr(federation_dir, make_csr(name, role, key))
    _write_private(
        out_dir / NODE_KEY,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_public(out_dir / NODE_CERT, cert.public_bytes(serialization.Encoding.PEM))
    _write_public(out_dir / CA_CERT, (federation_dir / CA_CERT).read_bytes())
    create_signing_key(out_dir / AUDIT_KEY, out_dir / AUDIT_PUB)
    create_signing_key(out_dir / APPROVER_KEY, out_dir / APPROVER_PUB)
    return PartyIdentity(name, role)


def create_signing_key(private_path: Path, public_path: Path) -> ed25519.Ed25519PublicKey:
    """Make an Ed25519 key pair: the private key 0600, the public key beside it.

    Each party has two: the node's audit-signing key, and its approver's key, which a person
    holds (in production on another machine) to sign approvals of jobs.
    """
    key = ed25519.Ed25519PrivateKey.generate()
    _write_private(
        private_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_public(
        public_path,
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    return key.public_key()


def load_certificate(path: Path) -> x509.Certificate:
    """Read a PEM certificate, with a clear error when it is missing or malformed."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise IdentityError(f"certificate {path} not found") from None
    except ValueError:
        raise IdentityError(f"{path} is not a PEM certificate") from None


def load_private_key(path: Path) -> object:
    """Read an unencrypted PEM private key, refusing one readable by group or others."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(f"private key {path} not found") from None
    if mode & 0o077:
        raise IdentityError(f"private key {path} is readable by others; run: chmod 600 {path}")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise IdentityError(f"{path} is not an unencrypted PEM private key") from None


def load_audit_signing_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """Read an Ed25519 private key (a node's audit key or an approver's key)."""
    key = load_private_key(path)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise IdentityError(f"{path} is not an Ed25519 private key")
    return key


def load_audit_public_key(path: Path) -> ed25519.Ed25519PublicKey:
    """Read an Ed25519 public key (PEM): a node's audit key or an approver's key."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise IdentityError(f"public key {path} not found") from None
    except ValueError:
        raise IdentityError(f"{path} is not a PEM public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise IdentityError(f"{path} is not an Ed25519 public key")
    return key


def raw_public_key(key: ed25519.Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def raw_key_id(key: ed25519.Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(raw_public_key(key)).hexdigest()[:16]


def _identity_from_name(subject: x509.Name) -> PartyIdentity:
    cns = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ous = subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if len(cns) != 1 or len(ous) != 1:
        raise IdentityError("a party certificate needs exactly one CN (name) and one OU (role)")
    name, role = str(cns[0].value), str(ous[0].value)
    if not _NAME.match(name) or role not in ROLES:
        raise IdentityError(f"certificate names party {name!r} with role {role!r}: not valid")
    return PartyIdentity(name, role)


@lru_cache(maxsize=256)
def identity_from_pem(pem: bytes) -> PartyIdentity:
    """The party identity in a PEM certificate that TLS has already verified against the CA."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise IdentityError("peer certificate is not a PEM certificate") from None
    return _identity_from_name(cert.subject)
