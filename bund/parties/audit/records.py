"""One record of an audit log: what it holds, what its fields may be, and the bytes it hashes.

A record holds who did what (event, job, flat scalar fields such as a message's sha256, size, tag
and peer) and never payload content: :class:`AuditRecord` refuses nested values and bytes. Its
``body`` is canonical JSON (:func:`bund.compute.canonical.canonical_json`, version 1) of every
attribute except ``record_hash`` and ``signature``, with byte strings as lower-case hex; its leaf
hash is RFC 6962's over that body (:func:`bund.compute.merkle.leaf_hash`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from bund.compute.canonical import canonical_json
from bund.compute.errors import BundError
from bund.compute.merkle import HASH_SIZE, leaf_hash

JsonScalar = str | int | float | bool | None

#: Bytes in an Ed25519 signature.
SIGNATURE_SIZE: Final = 64
#: ``prev_hash`` of record 0.
GENESIS_HASH: Final = bytes(HASH_SIZE)
#: Prefix of every signed record hash, so an audit signature is never valid in another context.
SIGNING_DOMAIN: Final = b"bund/audit/v1\x00"

_TIMESTAMP: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")
_SCALAR_TYPES: Final = (str, int, float, bool, type(None))


class AuditFormatError(BundError, ValueError):
    """An audit record, file or database that cannot be read as the audit format.

    Attributes:
        index: Position in the log (0-based) of the record that could not be read, when known.
    """

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


def is_timestamp(value: object) -> bool:
    """Whether ``value`` is an RFC 3339 UTC time as the log writes it (``...T09:30:00.000Z``)."""
    return isinstance(value, str) and _TIMESTAMP.fullmatch(value) is not None


def parse_timestamp(value: str) -> dt.datetime:
    """An RFC 3339 UTC time as the log writes it, as an aware ``datetime`` (to the microsecond).

    Timestamps are compared as times, never as text: ``...:00Z`` sorts after ``...:00.5Z``.

    Raises:
        ValueError: ``value`` is not such a time (:func:`is_timestamp`).

    >>> parse_timestamp("2026-11-24T09:30:00.5Z") < parse_timestamp("2026-11-24T09:30:01Z")
    True
    """
    if not is_timestamp(value):
        raise ValueError(f"not an RFC 3339 UTC time such as 2026-11-24T09:30:00.000000Z: {value!r}")
    return dt.datetime.fromisoformat(value)


def check_text(name: str, value: object) -> None:
    """Refuse ``value`` unless it is a string that UTF-8 can encode (no lone surrogate).

    Raises:
        AuditFormatError: It is not, naming ``name``.
    """
    if not isinstance(value, str):
        raise AuditFormatError(f"audit {name} must be a string, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise AuditFormatError(f"audit {name} is not valid Unicode (lone surrogate)") from None


def frozen_fields(fields: object) -> Mapping[str, JsonScalar]:
    """Check that ``fields`` is a flat mapping of JSON scalars; return a read-only sorted copy.

    Raises:
        AuditFormatError: It is not a mapping, a key is not text, or a value is nested, bytes or
            a non-finite number.
    """
    if not isinstance(fields, Mapping):
        raise AuditFormatError(f"audit fields must be a mapping, not {type(fields).__name__}")
    checked: dict[str, JsonScalar] = {}
    for key, value in fields.items():
        check_text("field name", key)
        if type(value) not in _SCALAR_TYPES:
            raise AuditFormatError(
                f"audit field {key!r} is {type(value).__name__}: fields hold flat JSON scalars "
                "(str, int, float, bool, None) only; record a payload's sha256 and size, "
                "never its content"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise AuditFormatError(f"audit field {key!r} is {value}: JSON has no such number")
        if isinstance(value, str):
            check_text(f"field {key!r}", value)
        checked[key] = value
    return MappingProxyType(dict(sorted(checked.items())))


def _refuse_constant(name: str) -> object:
    raise AuditFormatError(f"{name} is not a JSON number")


def parse_json(text: str) -> object:
    """Parse stored or exported JSON, refusing ``NaN`` and the infinities.

    Raises:
        AuditFormatError: ``text`` is not JSON.
    """
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except AuditFormatError:
        raise
    except ValueError as exc:  # JSONDecodeError, or an integer with too many digits
        raise AuditFormatError(f"not JSON ({exc})") from None


def parse_fields(text: str) -> Mapping[str, JsonScalar]:
    """Fields from their stored JSON, refused unless it is byte-for-byte canonical.

    Raises:
        AuditFormatError: ``text`` is not JSON, not flat fields, or not canonical.
    """
    fields = frozen_fields(parse_json(text))
    if canonical_json(dict(fields)) != text.encode("utf-8"):
        raise AuditFormatError("fields are not in canonical JSON form")
    return fields


@dataclass(frozen=True)
class AuditRecord:
    """One signed record of a party's audit log.

    Construction checks types only, so that a record read from a file or a peer can be
    represented and then judged by :func:`~bund.parties.audit.verify_records`; hash and
    signature sizes are checked there.

    Attributes:
        index: Position in the log, from 0.
        timestamp: RFC 3339 UTC time the log appended it (``2026-11-24T09:30:00.000000Z``).
        party: The party whose log this is.
        event: What happened (``job_submitted``, ``message_sent``, ``job_closed``, ``rpc``...).
        job_id: The job it concerns, or ``""``.
        fields: Flat JSON scalars (never payload content); kept as a read-only mapping in key
            order, so a record reads back the same from every store.
        prev_hash: ``record_hash`` of the record before it (32 zero bytes for record 0).
        record_hash: ``SHA-256(0x02 || prev_hash || leaf_hash)``.
        signature: Ed25519 signature over ``SIGNING_DOMAIN || record_hash``.

    Raises:
        AuditFormatError: An attribute of the wrong type, or a field that is not a JSON scalar.
    """

    index: int
    timestamp: str
    party: str
    event: str
    job_id: str
    fields: Mapping[str, JsonScalar]
    prev_hash: bytes
    record_hash: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if type(self.index) is not int or self.index < 0:
            raise AuditFormatError(f"audit record index must be an int >= 0, not {self.index!r}")
        for name in ("timestamp", "party", "event", "job_id"):
            check_text(name, getattr(self, name))
        for name in ("prev_hash", "record_hash", "signature"):
            if type(getattr(self, name)) is not bytes:
                raise AuditFormatError(f"audit record {name} must be bytes")
        object.__setattr__(self, "fields", frozen_fields(self.fields))

    def body(self) -> bytes:
        """The canonical bytes that the leaf hash covers: everything but hash and signature."""
        return canonical_json(
            {
                "event": self.event,
                "fields": self.fields,
                "index": self.index,
                "job_id": self.job_id,
                "party": self.party,
                "prev_hash": self.prev_hash.hex(),
                "timestamp": self.timestamp,
            }
        )

    def leaf_hash(self) -> bytes:
        """``SHA-256(0x00 || body)``: this record's leaf in the RFC 6962 tree of the log."""
        return leaf_hash(self.body())
