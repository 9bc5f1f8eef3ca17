"""What a certificate says about its holder, read with ``cryptography.x509`` alone.

:mod:`bund.parties.identity` issues and checks the federation's certificates and re-exports
these; they live apart so that ``bund job status`` can check that its operator credential is one
(``bund.parties.operator_file``) without loading the roster, pydantic or the node.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from bund.compute.errors import BundError

#: Extended key usage that marks an operator credential (a UUID-derived OID, RFC 9562 / X.667).
OPERATOR_USAGE = x509.ObjectIdentifier("2.25.16510484274688882238656126690857142510")


class IdentityError(BundError):
    """A certificate or key is missing, malformed, or not what the federation issued."""


@dataclass(frozen=True)
class CertificateFacts:
    """What a node reads from a client certificate that TLS verified, before it trusts it."""

    #: The subject's common name: a party's name, or an operator's.
    name: str
    #: The subject's organisational unit: a party's role, or ``operator``.
    role: str
    #: The subject's organisation: on an operator credential, the party it operates.
    organisation: str
    serial: int
    #: SHA-256 of the certificate's DER encoding, hex.
    fingerprint: str
    #: Whether the certificate carries the operator extended key usage.
    operator_usage: bool

    def describe(self) -> str:
        """The subject in words, for logs and audit records."""
        of = f" of {self.organisation}" if self.organisation else ""
        return f"{self.name} ({self.role}{of}), serial {self.serial:x}"


@lru_cache(maxsize=1024)
def certificate_facts(pem: bytes) -> CertificateFacts:
    """The facts of a PEM certificate; ``IdentityError`` if it is not a certificate."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise IdentityError("the certificate is not a PEM certificate") from None

    def one(oid: x509.ObjectIdentifier) -> str:
        values = cert.subject.get_attributes_for_oid(oid)
        return str(values[0].value) if len(values) == 1 else ""

    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        operator_usage = OPERATOR_USAGE in usages
    except x509.ExtensionNotFound:
        operator_usage = False
    return CertificateFacts(
        name=one(NameOID.COMMON_NAME),
        role=one(NameOID.ORGANIZATIONAL_UNIT_NAME),
        organisation=one(NameOID.ORGANIZATION_NAME),
        serial=cert.serial_number,
        # SHA-256 of the DER encoding (``serialization``'s import would cost the command 11 ms).
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        operator_usage=operator_usage,
    )
