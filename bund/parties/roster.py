"""Signed federation documents: the roster of parties and the certificate revocation lists.

The federation CA signs two documents that every node loads and re-reads when they change:

* the **roster** (``roster.json``): each party's name, its role, the SHA-256 fingerprints of the
  node certificates it may present, and its audit public key. A peer is served only if its
  certificate's common name is in the roster, its organisational unit is the listed role and the
  certificate itself is listed. A certificate the CA issued by mistake (``CN=bank, OU=regulator``)
  or one not yet enrolled is refused, even though TLS verified it.
* the **revocation list** (``revocations.json``): serial numbers of certificates that must no
  longer be served, each with its reason and time.

A party's operator CA signs a revocation list of the same form for its operator credentials
(``operators_revoked.json``).

Each document is a JSON object ``{"kind", "body", "signature"}``: the signature is ECDSA P-256
with SHA-256 over ``kind``, a zero byte and the canonical JSON of ``body``; ``body.version`` rises
with every change, and a node never goes back to an older version of a document it has loaded.
This module is pure apart from :class:`WatchedDocument`, which re-reads a file when it changes.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Generic, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import Field, ValidationError

from bund.compute.canonical import canonical_json
from bund.compute.errors import BundError
from bund.parties.schema import StrictModel

log = logging.getLogger("bund.roster")

ROSTER_KIND = "bund/roster/v1"
REVOCATIONS_KIND = "bund/revocations/v1"
#: The largest signed document a node reads (a roster of thousands of parties fits).
MAX_DOCUMENT_BYTES = 4 << 20

_HEX64 = r"^[0-9a-f]{64}$"
_SERIAL = r"^[0-9a-f]{1,40}$"
_PARTY = r"^[a-z][a-z0-9-]{0,62}$"


class SignedDocumentError(BundError):
    """A roster or revocation list is missing, malformed, unsigned, or older than the one held."""


# -- the bodies ---------------------------------------------------------------------------------


class _Member(StrictModel):
    role: Annotated[str, Field(min_length=1, max_length=64)]
    certificates: list[Annotated[str, Field(pattern=_HEX64)]] = Field(max_length=16)
    audit_key: Annotated[str, Field(pattern=_HEX64)]


class _RosterBody(StrictModel):
    federation: Annotated[str, Field(min_length=1, max_length=200)]
    version: Annotated[int, Field(ge=1)]
    issued_at: Annotated[str, Field(min_length=1, max_length=40)]
    parties: dict[Annotated[str, Field(pattern=_PARTY)], _Member]


class _Revoked(StrictModel):
    serial: Annotated[str, Field(pattern=_SERIAL)]
    reason: Annotated[str, Field(max_length=500)]
    revoked_at: Annotated[str, Field(min_length=1, max_length=40)]
    subject: Annotated[str, Field(max_length=200)] = ""


class _RevocationsBody(StrictModel):
    issuer: Annotated[str, Field(min_length=1, max_length=200)]
    version: Annotated[int, Field(ge=1)]
    issued_at: Annotated[str, Field(min_length=1, max_length=40)]
    revoked: list[_Revoked]


@dataclass(frozen=True)
class Member:
    """One party of the roster."""

    name: str
    role: str
    #: SHA-256 fingerprints (hex) of the node certificates the party may present.
    certificates: frozenset[str]
    #: The party's raw 32-byte Ed25519 audit public key.
    audit_key: bytes


@dataclass(frozen=True)
class Roster:
    """Who belongs to the federation, in which role, with which certificates and audit key."""

    federation: str
    version: int
    issued_at: str
    members: Mapping[str, Member] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", MappingProxyType(dict(self.members)))

    def body(self) -> dict[str, object]:
        """The document body that the federation CA signs."""
        return {
            "federation": self.federation,
            "version": self.version,
            "issued_at": self.issued_at,
            "parties": {
                m.name: {
                    "role": m.role,
                    "certificates": sorted(m.certificates),
                    "audit_key": m.audit_key.hex(),
                }
                for m in sorted(self.members.values(), key=lambda m: m.name)
            },
        }


@dataclass(frozen=True)
class Revocation:
    """One revoked certificate: its serial number (lower-case hex), why and when."""

    serial: str
    reason: str
    revoked_at: str
    subject: str = ""


@dataclass(frozen=True)
class RevocationList:
    """Certificates an issuer (the federation CA, or a party's operator CA) has revoked."""

    issuer: str
    version: int
    issued_at: str
    revoked: Mapping[str, Revocation] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "revoked", MappingProxyType(dict(self.revoked)))

    def get(self, serial: int) -> Revocation | None:
        """The revocation of the certificate with this serial number, if it is revoked."""
        return self.revoked.get(serial_hex(serial))

    def body(self) -> dict[str, object]:
        """The document body that the issuer signs."""
        return {
            "issuer": self.issuer,
            "version": self.version,
            "issued_at": self.issued_at,
            "revoked": [
                {"serial": r.serial, "reason": r.reason, "revoked_at": r.revoked_at}
                | ({"subject": r.subject} if r.subject else {})
                for r in sorted(self.revoked.values(), key=lambda r: r.serial)
            ],
        }


def serial_hex(serial: int) -> str:
    """A certificate serial number as the revocation lists write it: lower-case hex."""
    return format(serial, "x")


# -- signing and verifying ----------------------------------------------------------------------


def _signed_bytes(kind: str, body: Mapping[str, object]) -> bytes:
    return kind.encode() + b"\x00" + canonical_json(body)


def sign_document(kind: str, body: Mapping[str, object], key: ec.EllipticCurvePrivateKey) -> bytes:
    """The signed document (JSON bytes) of ``body`` under ``kind``, signed with ``key``."""
    signature = key.sign(_signed_bytes(kind, body), ec.ECDSA(hashes.SHA256()))
    doc = {"kind": kind, "body": body, "signature": base64.b64encode(signature).decode()}
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def _verified_body(
    data: bytes, kind: str, key: ec.EllipticCurvePublicKey, where: str
) -> dict[str, object]:
    if len(data) > MAX_DOCUMENT_BYTES:
        raise SignedDocumentError(f"{where} is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise SignedDocumentError(f"{where} is not JSON") from None
    if not isinstance(doc, dict) or set(doc) != {"kind", "body", "signature"}:
        raise SignedDocumentError(f"{where} is not a signed document (kind, body, signature)")
    if doc["kind"] != kind:
        raise SignedDocumentError(f"{where} is a {doc['kind']!r} document, not {kind!r}")
    body, signature = doc["body"], doc["signature"]
    if not isinstance(body, dict) or not isinstance(signature, str):
        raise SignedDocumentError(f"{where}: body must be an object and signature a string")
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, _signed_bytes(kind, body), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        raise SignedDocumentError(
            f"{where}: the signature does not verify with the issuer's key; it was altered or "
            "signed by another CA: fetch the published copy again"
        ) from None
    return body


def parse_roster(data: bytes, key: ec.EllipticCurvePublicKey, where: str = "roster") -> Roster:
    """Verify and read a signed roster.

    Raises:
        SignedDocumentError: The document is malformed or its signature does not verify.
    """
    try:
        body = _RosterBody.model_validate(_verified_body(data, ROSTER_KIND, key, where))
    except ValidationError as exc:
        raise SignedDocumentError(
            f"{where}: malformed roster body: {exc.errors()[0]['msg']}"
        ) from None
    return Roster(
        body.federation,
        body.version,
        body.issued_at,
        {
            name: Member(name, m.role, frozenset(m.certificates), bytes.fromhex(m.audit_key))
            for name, m in body.parties.items()
        },
    )


def parse_revocations(
    data: bytes, key: ec.EllipticCurvePublicKey, where: str = "revocation list"
) -> RevocationList:
    """Verify and read a signed revocation list.

    Raises:
        SignedDocumentError: The document is malformed or its signature does not verify.
    """
    try:
        raw = _verified_body(data, REVOCATIONS_KIND, key, where)
        body = _RevocationsBody.model_validate(raw)
    except ValidationError as exc:
        raise SignedDocumentError(
            f"{where}: malformed revocation list: {exc.errors()[0]['msg']}"
        ) from None
    return RevocationList(
        body.issuer,
        body.version,
        body.issued_at,
        {r.serial: Revocation(r.serial, r.reason, r.revoked_at, r.subject) for r in body.revoked},
    )


# -- a document a node keeps current -------------------------------------------------------------

D = TypeVar("D", bound=Roster | RevocationList)


class WatchedDocument(Generic[D]):
    """A signed document on disk, re-read whenever the file changes.

    Each :meth:`current` call compares the file's size, modification time and inode with the
    ones last read (one ``stat``); on a change it reads and verifies the file again. A new
    version replaces the one held; a file that no longer verifies, is missing, or holds an older
    version is refused: the node keeps the document it has, logs the refusal and tells
    ``on_refused`` once per change of the file.

    Args:
        path: The file.
        parse: Verifies and reads its bytes (:func:`parse_roster`, :func:`parse_revocations`).
        on_refused: Called with a reason when a changed file is refused.
        on_loaded: Called with the new version when a changed file is loaded.

    Raises:
        SignedDocumentError: At construction, when the file cannot be read or verified.
    """

    def __init__(
        self,
        path: Path,
        parse: Callable[[bytes, str], D],
        on_refused: Callable[[str], None] | None = None,
        on_loaded: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        self._parse: Callable[[bytes, str], D] = parse
        self._on_refused = on_refused
        self._on_loaded = on_loaded
        self._lock = threading.Lock()
        stamp = self._stamp()
        if stamp is None:
            raise SignedDocumentError(f"{path} not found")
        self._stamp_seen: tuple[int, int, int] | None = stamp
        self._doc: D = parse(self._read(), str(path))

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime_ns, st.st_ino

    def _read(self) -> bytes:
        try:
            with self.path.open("rb") as f:
                return f.read(MAX_DOCUMENT_BYTES + 1)
        except OSError as exc:
            raise SignedDocumentError(f"{self.path} cannot be read: {exc}") from None

    def current(self) -> D:
        """The document: re-read first if the file changed since it was last read."""
        stamp = self._stamp()
        if stamp == self._stamp_seen:
            return self._doc
        with self._lock:
            if stamp != self._stamp_seen:
                self._stamp_seen = stamp
                self._reload(stamp)
            return self._doc

    def _reload(self, stamp: tuple[int, int, int] | None) -> None:
        try:
            if stamp is None:
                raise SignedDocumentError(f"{self.path} was removed")
            doc = self._parse(self._read(), str(self.path))
            if doc.version < self._doc.version:
                raise SignedDocumentError(
                    f"{self.path} holds version {doc.version}, older than version "
                    f"{self._doc.version} held: refused"
                )
        except SignedDocumentError as exc:
            log.warning("kept version %d of %s: %s", self._doc.version, self.path, exc)
            if self._on_refused is not None:
                self._on_refused(str(exc))
            return
        changed = doc.version != self._doc.version
        self._doc = doc
        if changed:
            log.info("loaded version %d of %s", doc.version, self.path)
            if self._on_loaded is not None:
                self._on_loaded(doc.version)
