"""What the console's pages show, read from a node's audit records: pure functions over values.

A party's budget lines and its budget history come from the ``budget_*`` records of its own
signed log (each carries the dataset's line after the change, exact); a job's lifecycle, its
messages and its privacy receipt come from the job's records (``bund job logs``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from bund.compute.dp.budget import format_decimal, format_rational, shown_exactly
from bund.compute.errors import BundError
from bund.parties.audit import AuditRecord, JsonScalar
from bund.parties.lifecycle.events import MESSAGE_DIRECTIONS, Event, Key
from bund.parties.regulator import LoggedEvent
from bund.parties.views import is_message_record

#: Records that move a dataset's budget line; each carries the whole line after it.
BUDGET_EVENTS = frozenset({Event.BUDGET_RESERVED, Event.BUDGET_CHARGED, Event.BUDGET_RELEASED})


@dataclass(frozen=True)
class Amount:
    """An exact quantity, and the decimal people read (rounded up; starred when not exact)."""

    exact: Fraction

    @property
    def decimal(self) -> str:
        """``format_decimal`` of the value, never below it."""
        return format_decimal(self.exact)

    @property
    def rounded(self) -> bool:
        """Whether the decimal is not the exact value (the page notes the exact one)."""
        return not shown_exactly(self.exact)

    @property
    def rational(self) -> str:
        """The exact value as text (``"1/3"``)."""
        return format_rational(self.exact)


@dataclass(frozen=True)
class BudgetRow:
    """One dataset's privacy budget as its latest ``budget_*`` record left it."""

    dataset: str
    total: Amount
    spent: Amount
    reserved: Amount
    left: Amount
    total_delta: Amount
    spent_delta: Amount
    as_of: str


def _rational(fields: Mapping[str, JsonScalar], key: str) -> Fraction | None:
    value = fields.get(key)
    if not isinstance(value, str | int) or isinstance(value, bool):
        return None
    try:
        return Fraction(value)
    except (ValueError, ZeroDivisionError):
        return None


def budget_rows(records: Iterable[AuditRecord]) -> list[BudgetRow]:
    """Each dataset's budget line after its latest reservation, charge or release.

    Records whose amounts are not exact rationals are skipped (the audit page shows them as
    they are).
    """
    latest: dict[str, AuditRecord] = {}
    for record in records:
        dataset = record.fields.get(Key.DATASET)
        if record.event in BUDGET_EVENTS and isinstance(dataset, str):
            latest[dataset] = record
    rows = []
    for dataset, record in sorted(latest.items()):
        f = record.fields
        total, spent = _rational(f, Key.TOTAL), _rational(f, Key.SPENT)
        reserved = _rational(f, "reserved") or Fraction(0)
        if total is None or spent is None:
            continue
        rows.append(
            BudgetRow(
                dataset=dataset,
                total=Amount(total),
                spent=Amount(spent),
                reserved=Amount(reserved),
                left=Amount(max(total - spent - reserved, Fraction(0))),
                total_delta=Amount(_rational(f, Key.TOTAL_DELTA) or Fraction(0)),
                spent_delta=Amount(_rational(f, Key.SPENT_DELTA) or Fraction(0)),
                as_of=record.timestamp,
            )
        )
    return rows


def budget_history(records: Iterable[AuditRecord]) -> list[LoggedEvent]:
    """The ``budget_charged`` records, as the regulator's report charts them over time."""
    return [
        LoggedEvent(r.party, r.job_id, r.index, r.timestamp, r.fields)
        for r in records
        if r.event == Event.BUDGET_CHARGED
    ]


@dataclass(frozen=True)
class Step:
    """A record of a job's life at this node, and the time since the one before."""

    index: int
    timestamp: str
    event: str
    fields: Mapping[str, JsonScalar]
    after_s: float | None


@dataclass(frozen=True)
class MessageRow:
    """One message of a job, by tag, size and digest (never its content)."""

    direction: str
    peer: str
    tag: str
    size: str
    sha256: str
    timestamp: str


@dataclass(frozen=True)
class JobRecords:
    """A job's records at this node, read for people."""

    steps: tuple[Step, ...]
    messages: tuple[MessageRow, ...]
    receipt: Mapping[str, JsonScalar] | None
    learns: Mapping[str, str]


def _seconds(start: str, end: str) -> float | None:
    import datetime as dt

    try:
        a = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = dt.datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (b - a).total_seconds()


def job_records(records: Sequence[AuditRecord]) -> JobRecords:
    """Split ``bund job logs``' records of one job into its life, its messages and its receipt."""
    steps: list[Step] = []
    messages: list[MessageRow] = []
    receipt: Mapping[str, JsonScalar] | None = None
    for record in records:
        if is_message_record(record):
            try:
                direction = MESSAGE_DIRECTIONS.get(Event(record.event), record.event)
            except ValueError:
                direction = record.event
            f = record.fields
            messages.append(
                MessageRow(
                    direction,
                    str(f.get(Key.PEER, "")),
                    str(f.get(Key.TAG, "")),
                    str(f.get(Key.SIZE, "")),
                    str(f.get(Key.SHA256, "")),
                    record.timestamp,
                )
            )
            continue
        after = _seconds(steps[-1].timestamp, record.timestamp) if steps else None
        steps.append(Step(record.index, record.timestamp, record.event, record.fields, after))
        if record.event == Event.PRIVACY_RECEIPT:
            receipt = record.fields
    learns = {
        key.removeprefix("learned."): str(value)
        for key, value in sorted((receipt or {}).items())
        if key.startswith("learned.")
    }
    return JobRecords(tuple(steps), tuple(messages), receipt, learns)


def search_records(
    records: Iterable[AuditRecord], job: str = "", event: str = "", limit: int = 500
) -> tuple[list[AuditRecord], int]:
    """The records whose job id starts with ``job`` and whose event contains ``event``.

    Returns:
        The last ``limit`` matches (newest last) and how many matched in all.
    """
    job, event = job.strip(), event.strip().lower()
    found = [
        r for r in records if r.job_id.startswith(job) and (not event or event in r.event.lower())
    ]
    return found[-limit:], len(found)


class ConsoleError(BundError):
    """The console cannot do what was asked (a missing key, a changed approval request)."""
