"""A log as JSON lines: export for a regulator, and strict import that refuses any altered byte.

Each record is one line: the canonical JSON (:func:`bund.compute.canonical.canonical_json`,
version 1) of all its attributes, byte strings as lower-case hex, and a newline.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator
from typing import IO, Final

from bund.compute.canonical import canonical_json
from bund.parties.audit.records import AuditFormatError, AuditRecord, parse_json

_JSONL_KEYS: Final = frozenset(field.name for field in dataclasses.fields(AuditRecord))
_HEX: Final = re.compile(r"(?:[0-9a-f]{2})*")


def _record_line(record: AuditRecord) -> str:
    doc = {
        "event": record.event,
        "fields": record.fields,
        "index": record.index,
        "job_id": record.job_id,
        "party": record.party,
        "prev_hash": record.prev_hash.hex(),
        "record_hash": record.record_hash.hex(),
        "signature": record.signature.hex(),
        "timestamp": record.timestamp,
    }
    return canonical_json(doc).decode("utf-8") + "\n"


def export_jsonl(records: Iterable[AuditRecord], fp: IO[str]) -> None:
    """Write records as JSON lines: one canonical JSON object per line, bytes as lower-case hex.

    The line of a record is exactly what :func:`iter_jsonl` requires, so a regulator's copy can
    be checked byte for byte.

    Args:
        records: The records, in log order.
        fp: A text stream opened for writing, UTF-8.
    """
    for record in records:
        fp.write(_record_line(record))


def _record_from_doc(doc: object) -> AuditRecord:
    if not isinstance(doc, dict):
        raise AuditFormatError("not a JSON object")
    if set(doc) != _JSONL_KEYS:
        missing, extra = sorted(_JSONL_KEYS - set(doc)), sorted(set(doc) - _JSONL_KEYS)
        raise AuditFormatError(
            f"keys differ from the audit format: missing {missing}, extra {extra}"
        )
    raw: dict[str, bytes] = {}
    for name in ("prev_hash", "record_hash", "signature"):
        value = doc[name]
        if not isinstance(value, str) or not _HEX.fullmatch(value):
            raise AuditFormatError(f"{name} is not lower-case hex")
        raw[name] = bytes.fromhex(value)
    return AuditRecord(
        index=doc["index"],
        timestamp=doc["timestamp"],
        party=doc["party"],
        event=doc["event"],
        job_id=doc["job_id"],
        fields=doc["fields"],
        prev_hash=raw["prev_hash"],
        record_hash=raw["record_hash"],
        signature=raw["signature"],
    )


def iter_jsonl(fp: Iterable[str] | Iterable[bytes]) -> Iterator[AuditRecord]:
    """Read records lazily from JSON lines written by :func:`export_jsonl`.

    Parsing is strict: each line must be exactly the line that :func:`export_jsonl` writes for
    the record it holds (key order, no whitespace, lower-case hex, escapes, number form, final
    newline). So no byte of an exported file can change without the change being refused here
    or caught by :func:`~bund.parties.audit.verify_records`.

    Args:
        fp: Lines: a binary stream (preferred: an invalid UTF-8 byte is then reported with its
            line) or a text stream.

    Yields:
        The records, in file order.

    Raises:
        AuditFormatError: A line is malformed; ``index`` is its position (line number - 1).
    """
    position = 0
    try:
        lines: Iterable[str | bytes] = fp
        for position, raw in enumerate(lines):
            where = f"line {position + 1} (record {position})"
            if isinstance(raw, str):
                line = raw
            else:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise AuditFormatError(f"{where}: not UTF-8", position) from None
            try:
                if not line.endswith("\n"):
                    raise AuditFormatError("no final newline (a truncated file?)")
                record = _record_from_doc(parse_json(line[:-1]))
                if _record_line(record) != line:
                    raise AuditFormatError(
                        "not in the canonical form that export writes "
                        "(whitespace, key order, escapes or number form differ)"
                    )
            except AuditFormatError as exc:
                raise AuditFormatError(f"{where}: {exc}", position) from None
            yield record
    except UnicodeDecodeError as exc:  # raised by a text stream, somewhere after `position`
        raise AuditFormatError(
            f"not UTF-8 after line {position}; open the file in binary mode to find the line"
        ) from exc


def read_jsonl(fp: Iterable[str] | Iterable[bytes]) -> list[AuditRecord]:
    """Read every record of an exported log (see :func:`iter_jsonl`).

    Pass ``iter_jsonl(fp)`` to :func:`~bund.parties.audit.verify_records` instead to have a
    malformed line reported as a bad record, after the records before it were verified.

    Args:
        fp: Lines, from a binary or text stream.

    Returns:
        The records, in file order.

    Raises:
        AuditFormatError: A line is malformed; ``index`` is its position.
    """
    return list(iter_jsonl(fp))
