"""What the read commands print for programs (``--json``) and a job's records as lines.

Each ``*_document`` function builds the JSON document of one command; its keys are stable
(``docs/deploy.md`` lists them): new keys may be added, none is renamed or removed without a
release note. Exact quantities stay exact: a privacy budget is a rational as text (``"5/2"``),
never a float. A non-finite number in a result's summary is ``null`` (JSON has no NaN).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bund.compute.dp.budget import Budget, format_rational
from bund.compute.errors import BundError
from bund.parties.jobspec import JsonScalar
from bund.parties.lifecycle.events import KINDS, Event, EventKind
from bund.parties.lifecycle.states import JobStatus

# ``bund job status --json`` and ``bund job list --json`` load what is above and no more.
if TYPE_CHECKING:
    from bund.parties.approvals import ApprovalRequest
    from bund.parties.audit import AuditRecord, VerificationReport
    from bund.parties.ledger import BudgetLine
    from bund.parties.lifecycle.store import ResultInfo

#: Record kinds ``bund job logs`` leaves out unless asked for all (one per message).
MESSAGE_KINDS = frozenset({EventKind.MESSAGE, EventKind.MESSAGE_NOTE})


def dumps(document: object) -> str:
    """A document as one line of JSON (UTF-8 text kept, keys in the order built)."""
    return json.dumps(document, ensure_ascii=False, allow_nan=False)


def _scalar(value: JsonScalar) -> JsonScalar:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def status_document(status: JobStatus) -> dict[str, object]:
    """``bund job status --json``; each entry of ``bund job list --json``'s ``jobs``."""
    spec = status.spec
    return {
        "job_id": spec.job_id,
        "protocol": spec.protocol,
        "requester": spec.requester,
        "purpose": spec.purpose,
        "participants": [
            {"party": p.party, "role": p.role, "dataset": p.dataset} for p in spec.participants
        ],
        "receivers": list(spec.receivers),
        "state": status.state.value,
        "phase": status.phase,
        "done": status.done,
        "total": status.total,
        "error": status.error,
        "has_result": status.has_result,
        "transcript_sha256": status.transcript_digest,
        "updated_at": status.updated_at,
        "approved_by": list(status.approved_by),
        "parties": [
            {
                "party": v.party,
                "state": v.state.value,
                "approved_by": list(v.approved_by),
                "reason": v.reason,
            }
            for v in status.parties
        ],
    }


def pending_document(
    pending: Sequence[tuple[JobStatus, ApprovalRequest]],
) -> dict[str, object]:
    """``bund job pending --json``: each job awaiting approval here, with what it asks."""
    return {
        "jobs": [
            {
                **status_document(status),
                "dataset": request.dataset,
                "level": request.level,
                "dataset_version": request.dataset_version,
                "outputs": list(request.outputs),
                "learns": dict(sorted(request.learns.items())),
                "epsilon": format_rational(request.cost.epsilon),
                "delta": format_rational(request.cost.delta),
                "code_version": request.code_version,
            }
            for status, request in pending
        ]
    }


def list_document(statuses: Sequence[JobStatus]) -> dict[str, object]:
    """``bund job list --json``: the newest jobs first."""
    return {"jobs": [status_document(s) for s in statuses]}


def result_document(
    job_id: str, result: ResultInfo, written: Mapping[str, Path] | None = None
) -> dict[str, object]:
    """``bund job result --json``: the summary, and each artifact's size and where it went."""
    return {
        "job_id": job_id,
        "summary": {k: _scalar(v) for k, v in result.summary.items()},
        "artifacts": [
            {
                "name": name,
                "bytes": size,
                "path": str(written[name]) if written and name in written else None,
            }
            for name, size in result.artifact_sizes.items()
        ],
    }


def _budget(b: Budget) -> dict[str, str]:
    return {"epsilon": format_rational(b.epsilon), "delta": format_rational(b.delta)}


def budget_document(lines: Sequence[BudgetLine], levels: Mapping[str, str]) -> dict[str, object]:
    """``bund budget show --json``: each dataset's budget, exact (rationals as text)."""
    return {
        "datasets": [
            {
                "dataset": line.dataset,
                "level": levels.get(line.dataset),
                "total": _budget(line.total),
                "spent": _budget(line.spent),
                "reserved": _budget(line.reserved),
                "left": _budget(line.remaining),
            }
            for line in lines
        ]
    }


def verify_document(
    report: VerificationReport | None, log: str, error: str = ""
) -> dict[str, object]:
    """``bund audit verify --json``: whether the log verifies, and its first bad record."""
    return {
        "ok": report is not None and report.ok,
        "log": log,
        "records": report.count if report is not None else 0,
        "first_bad_index": report.first_bad_index if report is not None else None,
        "reason": error if report is None else report.reason,
    }


def shown_value(key: str, value: object) -> str:
    """A summary value for people: an exact privacy cost ("155081/62500") also as a decimal.

    >>> shown_value("epsilon", "1/3"), shown_value("auc", 0.75)
    ('0.3334 (exactly 1/3)', '0.75')
    """
    if isinstance(value, str) and ("epsilon" in key or "delta" in key) and "/" in value:
        from bund.compute.dp.budget import format_epsilon, parse_rational

        try:
            return format_epsilon(parse_rational(value))
        except BundError:
            return value
    return str(value)


def record_document(record: AuditRecord) -> dict[str, object]:
    """One record of ``bund job logs --json`` (one JSON object per line)."""
    return {
        "index": record.index,
        "time": record.timestamp,
        "party": record.party,
        "event": record.event,
        "job_id": record.job_id,
        "fields": {k: _scalar(v) for k, v in record.fields.items()},
    }


def record_line(record: AuditRecord) -> str:
    """One record as a line: ``TIME #INDEX EVENT key=value ...``, every value one token."""
    from bund.parties.oplog import pairs

    text = f"{record.timestamp} #{record.index} {record.event}"
    fields = pairs(record.fields)
    return f"{text} {fields}" if fields else text


def is_message_record(record: AuditRecord) -> bool:
    """Whether ``record`` is about one message (sent, received, refused...), not the job's life."""
    try:
        return KINDS.get(Event(record.event)) in MESSAGE_KINDS
    except ValueError:
        return False
