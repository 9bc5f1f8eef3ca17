"""Federation CA, party certificates, operator credentials and signing keys.

A federation has one CA (ECDSA P-256). Each party gets an X.509 certificate from it whose subject
common name is the party's name and whose organisational unit is its role; the node's TLS uses that
certificate. The CA also signs the federation's roster (who is a party, in which role, with which
certificate and audit key) and its revocation list (``bund.parties.roster``); a peer is served
only when its certificate matches the roster and is not revoked.

Each party has its own **operator CA**, apart from the federation's: it issues the client
certificates of the party's operators and approvers (``OU=operator``, ``O=<party>`` and the
extended key usage :data:`OPERATOR_USAGE`). A node accepts operator calls only with a credential
from its own operator CA, so neither a peer's certificate, nor the node's own, nor one the
federation issued can act as the party's operator. Each party also has an Ed25519 key that signs
its audit log and an approver's Ed25519 key. Private keys are written 0600.
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
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bund.parties import roles, roster
from bund.parties.certificates import OPERATOR_USAGE as OPERATOR_USAGE
from bund.parties.certificates import CertificateFacts as CertificateFacts
from bund.parties.certificates import IdentityError as IdentityError
from bund.parties.certificates import certificate_facts as certificate_facts

ROLES = roles.ROLES

CA_KEY = "ca.key"
CA_CERT = "ca.pem"
NODE_KEY = "node.key"
NODE_CERT = "node.pem"
AUDIT_KEY = "audit_ed25519.key"
AUDIT_PUB = "audit_ed25519.pub"
APPROVER_KEY = "approver_ed25519.key"
APPROVER_PUB = "approver_ed25519.pub"
#: The party's operator CA: it issues operator credentials (keep its key off the node).
OPERATOR_CA_KEY = "operator_ca.key"
OPERATOR_CA_CERT = "operator_ca.pem"
#: Where ``create_party`` puts the party's first operator credential, and its files.
OPERATOR_DIR = "operator"
OPERATOR_KEY = "operator.key"
OPERATOR_CERT = "operator.pem"
#: The federation's signed roster and revocation list, and a party's list of revoked operators.
ROSTER_FILE = "roster.json"
REVOCATIONS_FILE = "revocations.json"
OPERATOR_REVOCATIONS_FILE = "operators_revoked.json"
#: The organisational unit of every operator credential.
OPERATOR_UNIT = "operator"
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


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


def _replace_public(path: Path, data: bytes) -> None:
    """Replace a public file whole (written beside it, then renamed): no reader sees half."""
    staged = path.with_name(path.name + ".tmp")
    _write_public(staged, data)
    staged.replace(path)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _timestamp() -> str:
    return _now().isoformat(timespec="seconds").replace("+00:00", "Z")


def _private_pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _make_ca(subject: x509.Name, valid_days: int) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A new CA key and its self-signed certificate (PEM), which may sign leaf certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
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
    return key, cert.public_bytes(serialization.Encoding.PEM)


def create_federation(directory: Path, name: str, valid_days: int = 3650) -> Path:
    """Create a federation CA (key 0600 + self-signed certificate) in ``directory``.

    Also writes the federation's signed roster (no party yet) and revocation list (empty).
    Returns the CA certificate's path.
    """
    if not _NAME.match(name):
        raise IdentityError(f"federation name {name!r}: use lower-case letters, digits and '-'")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"Bund federation {name}"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} federation CA"),
        ]
    )
    key, cert = _make_ca(subject, valid_days)
    _write_private(directory / CA_KEY, _private_pem(key))
    _write_public(directory / CA_CERT, cert)
    stamp = _timestamp()
    _write_public(
        directory / ROSTER_FILE,
        roster.sign_document(roster.ROSTER_KIND, roster.Roster(name, 1, stamp).body(), key),
    )
    revoked = roster.RevocationList(f"{name} federation", 1, stamp)
    _write_public(
        directory / REVOCATIONS_FILE,
        roster.sign_document(roster.REVOCATIONS_KIND, revoked.body(), key),
    )
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


def create_party(
    federation_dir: Path, name: str, role: str, out_dir: Path, operator: str | None = "admin"
) -> PartyIdentity:
    """Make everything a party needs in ``out_dir``, and enrol it in the federation's roster.

    The node's TLS key and certificate, its audit-signing key, its approver's key, the party's
    operator CA with an empty signed list of revoked operators, and (unless ``operator`` is None)
    a first operator credential for ``operator`` in ``out_dir/operator``. The federation's
    roster, with this party added, and its revocation list are copied beside them.

    The party's keys are generated here and written 0600; only the certificate request travels
    to the CA. (A CA operator and a party on different machines run the same steps apart:
    ``bund federation roster add`` enrols a certificate issued elsewhere.)
    """
    key = ec.generate_private_key(ec.SECP256R1())
    cert = sign_csr(federation_dir, make_csr(name, role, key))
    _write_private(out_dir / NODE_KEY, _private_pem(key))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    _write_public(out_dir / NODE_CERT, cert_pem)
    _write_public(out_dir / CA_CERT, (federation_dir / CA_CERT).read_bytes())
    audit_key = create_signing_key(out_dir / AUDIT_KEY, out_dir / AUDIT_PUB)
    create_signing_key(out_dir / APPROVER_KEY, out_dir / APPROVER_PUB)
    create_operator_ca(out_dir, name)
    if operator is not None:
        issue_operator(out_dir, operator, out_dir / OPERATOR_DIR)
    enrol(federation_dir, name, role, cert_pem, audit_key)
    for file in (ROSTER_FILE, REVOCATIONS_FILE):
        _write_public(out_dir / file, (federation_dir / file).read_bytes())
    return PartyIdentity(name, role)


def create_operator_ca(party_dir: Path, party: str, valid_days: int = 3650) -> Path:
    """Create ``party``'s operator CA in ``party_dir``, and its empty list of revoked operators.

    The CA issues the credentials of the party's operators and approvers; the node trusts it
    for operator calls only. Returns the CA certificate's path.
    """
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, party),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "operator CA"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{party} operator CA"),
        ]
    )
    key, cert = _make_ca(subject, valid_days)
    _write_private(party_dir / OPERATOR_CA_KEY, _private_pem(key))
    _write_public(party_dir / OPERATOR_CA_CERT, cert)
    empty = roster.RevocationList(f"{party} operators", 1, _timestamp())
    _write_public(
        party_dir / OPERATOR_REVOCATIONS_FILE,
        roster.sign_document(roster.REVOCATIONS_KIND, empty.body(), key),
    )
    return party_dir / OPERATOR_CA_CERT


def issue_operator(party_dir: Path, name: str, out_dir: Path, valid_days: int = 365) -> Path:
    """Issue an operator credential for person ``name`` with the operator CA in ``party_dir``.

    Writes ``operator.key`` (0600, made here), ``operator.pem`` and the federation CA's
    certificate (``ca.pem``, which verifies the node) into ``out_dir``; the credential calls the
    party's own node as its operator (submit, approve, deny, cancel, results, audit reads) and
    nothing else. Returns the certificate's path.
    """
    if not _NAME.match(name):
        raise IdentityError(f"operator name {name!r}: use lower-case letters, digits and '-'")
    ca_cert = load_certificate(party_dir / OPERATOR_CA_CERT)
    ca_key = load_private_key(party_dir / OPERATOR_CA_KEY)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise IdentityError(f"{party_dir / OPERATOR_CA_KEY} is not an ECDSA CA key")
    party = str(ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, party),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, OPERATOR_UNIT),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, OPERATOR_USAGE]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(out_dir / OPERATOR_KEY, _private_pem(key))
    _write_public(out_dir / OPERATOR_CERT, cert.public_bytes(serialization.Encoding.PEM))
    _write_public(out_dir / CA_CERT, (party_dir / CA_CERT).read_bytes())
    return out_dir / OPERATOR_CERT


# -- the roster and the revocation lists -----------------------------------------------------


def _ca_key(directory: Path, key_file: str) -> ec.EllipticCurvePrivateKey:
    key = load_private_key(directory / key_file)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IdentityError(f"{directory / key_file} is not an ECDSA CA key")
    return key


def _ca_public_key(cert_path: Path) -> ec.EllipticCurvePublicKey:
    key = load_certificate(cert_path).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise IdentityError(f"{cert_path} does not hold an ECDSA CA key")
    return key


def load_roster(path: Path, ca_cert: Path) -> roster.Roster:
    """Read the roster at ``path``, verified with the federation CA certificate ``ca_cert``."""
    try:
        return roster.parse_roster(path.read_bytes(), _ca_public_key(ca_cert), str(path))
    except FileNotFoundError:
        raise IdentityError(f"roster {path} not found") from None


def load_revocations(path: Path, ca_cert: Path) -> roster.RevocationList:
    """Read the revocation list at ``path``, verified with its issuer's certificate ``ca_cert``."""
    try:
        return roster.parse_revocations(path.read_bytes(), _ca_public_key(ca_cert), str(path))
    except FileNotFoundError:
        raise IdentityError(f"revocation list {path} not found") from None


def enrol(
    federation_dir: Path,
    name: str,
    role: str,
    cert_pem: bytes,
    audit_key: ed25519.Ed25519PublicKey,
) -> roster.Roster:
    """Add party ``name`` in ``role`` with this certificate and audit key to the roster.

    A party already listed in the same role gets the certificate added (a renewal: both serve
    until the old one is removed or revoked) and its audit key replaced. The certificate must be
    the federation's, issued to ``name`` in ``role``. Writes the roster's next version.
    """
    facts = certificate_facts(cert_pem)
    if (facts.name, facts.role) != (name, role):
        raise IdentityError(
            f"the certificate names {facts.name!r} with role {facts.role!r}, not {name!r} "
            f"with role {role!r}"
        )
    if not issued_by(cert_pem, (federation_dir / CA_CERT).read_bytes()):
        raise IdentityError(f"the certificate of {name} was not issued by this federation's CA")
    current = load_roster(federation_dir / ROSTER_FILE, federation_dir / CA_CERT)
    members = dict(current.members)
    old = members.get(name)
    if old is not None and old.role != role:
        raise IdentityError(
            f"{name} is in the roster with role {old.role!r}; remove it first "
            f"(bund federation roster remove {name}) to change its role"
        )
    certificates = (old.certificates if old else frozenset()) | {facts.fingerprint}
    members[name] = roster.Member(name, role, certificates, raw_public_key(audit_key))
    return _write_roster(federation_dir, current, members)


def unenrol(federation_dir: Path, name: str) -> roster.Roster:
    """Remove party ``name`` from the roster (its peers refuse it from their next call)."""
    current = load_roster(federation_dir / ROSTER_FILE, federation_dir / CA_CERT)
    if name not in current.members:
        raise IdentityError(f"{name} is not in the roster")
    members = {n: m for n, m in current.members.items() if n != name}
    return _write_roster(federation_dir, current, members)


def _write_roster(
    federation_dir: Path, current: roster.Roster, members: dict[str, roster.Member]
) -> roster.Roster:
    new = roster.Roster(current.federation, current.version + 1, _timestamp(), members)
    document = roster.sign_document(roster.ROSTER_KIND, new.body(), _ca_key(federation_dir, CA_KEY))
    _replace_public(federation_dir / ROSTER_FILE, document)
    return new


def revoke(
    issuer_dir: Path, target: str, reason: str, *, operators: bool = False
) -> roster.Revocation:
    """Revoke a certificate: add it to the issuer's signed revocation list (its next version).

    Args:
        issuer_dir: The federation's directory (``ca.key``), or with ``operators`` a party's
            directory (``operator_ca.key``).
        target: A certificate file (PEM), or its serial number in hex.
        reason: Why, recorded in the list.
        operators: Revoke one of the party's operator credentials, not a federation certificate.
    """
    key_file, cert_file, list_file = (
        (OPERATOR_CA_KEY, OPERATOR_CA_CERT, OPERATOR_REVOCATIONS_FILE)
        if operators
        else (CA_KEY, CA_CERT, REVOCATIONS_FILE)
    )
    subject = ""
    path = Path(target)
    if path.is_file():
        facts = certificate_facts(path.read_bytes())
        if not issued_by(path.read_bytes(), (issuer_dir / cert_file).read_bytes()):
            raise IdentityError(f"{target} was not issued by {issuer_dir / cert_file}")
        serial, subject = roster.serial_hex(facts.serial), f"{facts.name} ({facts.role})"
    else:
        serial = target.lower().replace(":", "").lstrip("0") or "0"
        if not re.fullmatch(r"[0-9a-f]{1,40}", serial):
            raise IdentityError(f"{target!r} is neither a certificate file nor a hex serial number")
    current = load_revocations(issuer_dir / list_file, issuer_dir / cert_file)
    entry = roster.Revocation(serial, reason[:500], _timestamp(), subject)
    new = roster.RevocationList(
        current.issuer,
        current.version + 1,
        entry.revoked_at,
        {**current.revoked, serial: entry},
    )
    document = roster.sign_document(
        roster.REVOCATIONS_KIND, new.body(), _ca_key(issuer_dir, key_file)
    )
    _replace_public(issuer_dir / list_file, document)
    return entry


def create_signing_key(private_path: Path, public_path: Path) -> ed25519.Ed25519PublicKey:
    """Make an Ed25519 key pair: the private key 0600, the public key beside it.

    Each party has two: the node's audit-signing key, and its approver's key, which a person
    holds (in production on another machine) to sign approvals of jobs.
    """
    key = ed25519.Ed25519PrivateKey.generate()
    _write_private(private_path, _private_pem(key))
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


@lru_cache(maxsize=1024)
def issued_by(pem: bytes, ca_pem: bytes) -> bool:
    """Whether the certificate ``pem`` was signed by the CA certificate ``ca_pem`` directly."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
        if cert.issuer != ca.subject:
            return False
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
