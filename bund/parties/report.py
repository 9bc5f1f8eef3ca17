"""``bund audit report``: one self-contained HTML file of what the regulator's audit found.

The file stands alone: CSS inline, the budget chart a PNG inside it (matplotlib's Agg backend, as
a ``data:`` URL), no script and no external URL. A Content-Security-Policy in the page forbids
scripts and every load but ``data:`` images, in case a browser is ever handed markup that
escaping missed. Every string that comes from a party's log (party names, job ids, purposes,
reasons, datasets, finding details) is escaped with :func:`html.escape`: logs come from other
parties and must not inject markup into the regulator's report.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import warnings
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Final

from bund.compute.dp.budget import format_epsilon, parse_rational
from bund.compute.errors import BundError
from bund.parties.audit import JsonScalar

if TYPE_CHECKING:
    from bund.parties.regulator import AuditOutcome, Finding, JobSummary, LoggedEvent, PartyStatus

_CSS: Final = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
       margin: 2rem auto; max-width: 1200px; padding: 0 1rem; color: #1d2430; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #d5dae1; }
table { border-collapse: collapse; width: 100%; margin: .6rem 0; }
th, td { border: 1px solid #d5dae1; padding: .3rem .5rem; text-align: left; vertical-align: top; }
th { background: #f1f3f6; }
code { font: 12px/1.3 "DejaVu Sans Mono", monospace; word-break: break-all; }
ul { margin: 0; padding-left: 1.1rem; }
.meta, .muted { color: #5b6575; } .muted { font-size: 12px; } .reason { color: #8a1c1c; }
.verdict { display: inline-block; padding: .3rem .8rem; border-radius: 4px; font-weight: 600; }
.ok { color: #0f6b2f; } .verdict.ok { background: #e3f4e8; }
.error, .sev-error td:first-child { color: #a1001d; } .verdict.error { background: #fde7ea; }
.warning, .sev-warning td:first-child { color: #8a5a00; }
tr.sev-error { background: #fff3f5; } tr.sev-warning { background: #fffaeb; }
.sev-error td:first-child, .sev-warning td:first-child { font-weight: 700; }
figure { margin: .6rem 0; } figure img { max-width: 100%; border: 1px solid #d5dae1; }
footer { margin-top: 3rem; color: #5b6575; font-size: 12px; }
"""

_CSP: Final = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(value: object) -> str:
    """Text from anywhere, made safe as HTML text or a quoted attribute value."""
    return escape(str(value), quote=True)


def _count(number: int, noun: str, plural: str = "") -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {plural or noun + 's'}"


def _digest(value: str) -> str:
    return f'<code title="{_e(value)}">{_e(value[:16])}…</code>' if value else "—"


def _list(items: Iterable[str]) -> str:
    """A list of already-escaped HTML items, or a dash."""
    rows = [f"<li>{item}</li>" for item in items]
    return f"<ul>{''.join(rows)}</ul>" if rows else "—"


def _table(headers: Sequence[str], rows: Iterable[str], table_id: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _rational(value: JsonScalar) -> Fraction | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    try:
        return Fraction(value)
    except (ValueError, ZeroDivisionError):
        return None


def _time(value: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def _field(fields: Mapping[str, JsonScalar], key: str) -> str:
    value = fields.get(key)
    return "" if value is None else str(value)


def _budget_field(fields: Mapping[str, JsonScalar], key: str) -> str:
    """An exact privacy quantity of a record as a decimal, the exact value after it if needed."""
    text = _field(fields, key)
    try:
        return format_epsilon(parse_rational(text))
    except BundError:
        return text


# -- sections -----------------------------------------------------------------------------------


def _parties(parties: Sequence[PartyStatus]) -> str:
    rows = []
    for p in parties:
        if not p.pulled:
            log = f'<span class="error">not pulled</span>: {_e(p.detail)}'
        elif p.verified:
            log = '<span class="ok">verified</span>'
        else:
            log = f'<span class="error">NOT VERIFIED</span>: {_e(p.detail)}'
        held = (
            f"{p.checkpoints} held by the regulator"
            if p.checkpoints
            else '<span class="warning">none held</span>: truncation and re-signed rewrites '
            "were not checkable"
        )
        if p.witnessed:
            held += (
                f'<div class="muted">{p.witnessed} witnessed by {_e(", ".join(p.witnesses))}</div>'
            )
        elif p.pulled:
            held += (
                '<div class="muted">none witnessed: records since the last audit rest on its '
                "word</div>"
            )
        rows.append(
            f'<tr id="party-{_e(p.party)}"><td>{_e(p.party)}</td><td>{_e(p.address)}</td>'
            f"<td><code>{_e(p.key_id)}</code></td><td>{p.records}</td><td>{log}</td>"
            f"<td>{held}</td></tr>"
        )
    headers = ("Party", "Node", "Audit key held", "Records", "Log", "Tree heads")
    return _table(headers, rows, "parties")


def _findings(findings: Sequence[Finding], jobs: set[str]) -> str:
    if not findings:
        return '<p class="ok">No findings: every log verified and every job reconciled.</p>'
    rows = []
    for f in findings:
        if f.job_id in jobs:
            job = f'<a href="#job-{_e(f.job_id)}"><code>{_e(f.job_id)}</code></a>'
        else:
            job = f"<code>{_e(f.job_id)}</code>" if f.job_id else "whole log"
        records = _list(f"{_e(p)} record {i}" for p, i in sorted(f.indexes.items()))
        parties = _list(
            [_e(p) for p in f.parties]
            + [f'<span class="muted">witness</span> {_e(w)}' for w in f.witnesses]
        )
        rows.append(
            f'<tr class="sev-{_e(f.severity)}"><td>{_e(f.severity)}</td><td>{_e(f.kind)}</td>'
            f"<td>{job}</td><td>{parties}</td><td>{records}</td>"
            f"<td>{_e(f.detail)}</td></tr>"
        )
    headers = ("Severity", "Finding", "Job", "Parties", "Records", "Detail")
    return _table(headers, rows, "findings-table")


def _reconciliation(findings: Sequence[Finding]) -> str:
    if not findings:
        return '<span class="ok">reconciled</span>'
    errors = sum(f.severity == "error" for f in findings)
    kinds = sorted({str(f.kind) for f in findings})
    css = "error" if errors else "warning"
    counts = f"{_count(errors, 'error')}, {_count(len(findings) - errors, 'warning')}"
    return f'<span class="{css}">{counts}</span>{_list(_e(k) for k in kinds)}'


def _states(job: JobSummary) -> str:
    """Each party's state of the job, with the reason where it ended refused, failed or aborted."""
    return _list(
        f"{_e(party)}: {_e(state)}"
        + (
            f' <span class="reason">({_e(job.reasons[party])})</span>'
            if party in job.reasons
            else ""
        )
        for party, state in sorted(job.states.items())
    )


def _jobs(jobs: Sequence[JobSummary], findings: Sequence[Finding]) -> str:
    if not jobs:
        return "<p>No jobs in the pulled logs.</p>"
    rows = []
    for j in jobs:
        parties = _list(
            _e(p) + (' <span class="muted">(requester)</span>' if p == j.requester else "")
            for p in j.parties
        )
        result = (
            f"to {_e(', '.join(j.receivers) or '—')}"
            f'<div class="muted">held by {_e(", ".join(j.holders) or "no one")}</div>'
        )
        approvals = _list(
            f"{_e(a.party)} {_e(a.decision)}"
            + (f" by <code>{_e(a.approver)}</code>" if a.approver else "")
            + (f": {_e(a.reason)}" if a.reason else "")
            for a in j.approvals
        )
        rows.append(
            f'<tr id="job-{_e(j.job_id)}"><td><code>{_e(j.job_id)}</code>'
            f'<div>{_e(j.purpose)}</div><div class="muted">{_e(j.first_seen)}</div></td>'
            f"<td>{_e(j.protocol or '?')}</td><td>{parties}</td><td>{result}</td>"
            f"<td>{_states(j)}</td>"
            f"<td>{approvals}</td>"
            f"<td>{_list(f'{_e(p)}: {_digest(d)}' for p, d in sorted(j.transcripts.items()))}</td>"
            f"<td>{_reconciliation([f for f in findings if f.job_id == j.job_id])}</td></tr>"
        )
    headers = (
        "Job",
        "Protocol",
        "Parties",
        "Result",
        "State at each party",
        "Approvals",
        "Transcript digests",
        "Reconciliation",
    )
    return _table(headers, rows, "jobs-table")


def _mathtext_safe(text: str) -> str:
    """A legend label that matplotlib shows as written (no mathtext, not hidden by ``_``)."""
    text = text.replace("$", r"\$")
    return f" {text}" if text.startswith("_") else text


def budget_chart_png(charges: Sequence[LoggedEvent]) -> bytes | None:
    """A PNG of the epsilon spent on each party's dataset over time, from ``budget_charged``.

    One step line per party and dataset, starting from zero at its first charge, with the
    dataset's total budget dashed in the same colour. Records whose ``spent`` is not an exact
    rational or whose time does not parse are left out of the chart (the table lists them).

    Args:
        charges: ``budget_charged`` records, in time order.

    Returns:
        The PNG, or None when no record can be plotted.
    """
    series: dict[str, list[tuple[dt.datetime, float]]] = {}
    totals: dict[str, float] = {}
    for charge in charges:
        dataset = charge.fields.get("dataset")
        spent, when = _rational(charge.fields.get("spent")), _time(charge.timestamp)
        if not isinstance(dataset, str) or spent is None or when is None:
            continue
        label = f"{charge.party}: {dataset}"
        series.setdefault(label, []).append((when, float(spent)))
        total = _rational(charge.fields.get("total"))
        if total is not None:
            totals[label] = float(total)
    if not series:
        return None
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.4), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    with matplotlib.rc_context({"date.converter": "concise"}):
        for number, (label, points) in enumerate(sorted(series.items())):
            color = f"C{number % 10}"
            times, spent_values = zip(*sorted(points), strict=True)
            axes.step(
                [times[0], *times],
                [0.0, *spent_values],
                where="post",
                marker="o",
                color=color,
                label=_mathtext_safe(label),
            )
            if label in totals:
                axes.axhline(totals[label], color=color, linestyle="--", linewidth=0.9)
    axes.set_ylabel("epsilon spent (dashed: total)")
    axes.set_xlabel("time (UTC)")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize="small")
    out = io.BytesIO()
    with warnings.catch_warnings():
        # DejaVu has no CJK glyphs; a dataset named in Chinese still renders in the table.
        warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
        figure.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()


def _budget(charges: Sequence[LoggedEvent]) -> str:
    if not charges:
        return '<p id="budget-none">No privacy budget charged in the pulled logs.</p>'
    png = budget_chart_png(charges)
    chart = (
        '<figure id="budget-chart"><img alt="Chart: privacy budget (epsilon) spent per dataset '
        f'over time" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        "<figcaption>Epsilon spent per party and dataset over time; dashed: the dataset's "
        "total budget. Exact values below.</figcaption></figure>"
        if png is not None
        else "<p>No budget_charged record carries an exact spent value to plot.</p>"
    )
    rows = []
    for c in charges:
        cost = ", ".join(
            f"{name} {_e(_budget_field(c.fields, key))}"
            for name, key in (("ε", "epsilon"), ("δ", "delta"), ("ρ", "rho"))
            if key in c.fields
        )
        rows.append(
            f"<tr><td>{_e(c.timestamp)}</td><td>{_e(c.party)}</td>"
            f"<td>{_e(_field(c.fields, 'dataset'))}</td><td><code>{_e(c.job_id)}</code></td>"
            f"<td>{cost}</td><td>{_e(_budget_field(c.fields, 'spent'))}</td>"
            f"<td>{_e(_budget_field(c.fields, 'total'))}</td></tr>"
        )
    headers = ("Time", "Party", "Dataset", "Job", "Cost", "Spent (ε)", "Total (ε)")
    return chart + _table(headers, rows, "budget-table")


def _receipts(receipts: Sequence[LoggedEvent]) -> str:
    if not receipts:
        return "<p>No privacy receipts in the pulled logs.</p>"
    rows = []
    for r in receipts:
        f = r.fields
        learned = _list(
            f"{_e(key.removeprefix('learned.'))}: {_e(value)}"
            for key, value in sorted(f.items())
            if key.startswith("learned.")
        )
        dataset = _e(_field(f, "dataset") or "—")
        if "records" in f:
            dataset += f' <span class="muted">({_e(_field(f, "records"))} records)</span>'
        spent = ", ".join(
            f"{name} {_e(_budget_field(f, key))}"
            for name, key in (("ε", "epsilon"), ("δ", "delta"), ("ρ", "rho"), ("spent", "spent"))
            if key in f
        )
        rows.append(
            f"<tr><td>{_e(r.timestamp)}</td><td>{_e(r.party)}</td>"
            f"<td><code>{_e(r.job_id)}</code></td>"
            f"<td>{_e(_field(f, 'protocol'))} {_e(_field(f, 'protocol_version'))}</td>"
            f"<td>{dataset}</td><td>{spent or '—'}</td><td>{learned}</td>"
            f"<td>{_digest(_field(f, 'transcript_sha256'))}</td></tr>"
        )
    headers = ("Time", "Party", "Job", "Protocol", "Dataset", "Budget", "Learned", "Transcript")
    return _table(headers, rows, "receipts-table")


def render_report(outcome: AuditOutcome) -> str:
    """The report as one HTML document (see the module doc for what makes it safe).

    Args:
        outcome: What :func:`bund.parties.regulator.audit_federation` found.

    Returns:
        The HTML text.
    """
    errors = outcome.errors
    warnings_count = len(outcome.findings) - errors
    verdict_css = "error" if errors else "ok"
    jobs = {j.job_id for j in outcome.jobs}
    sections = (
        ("summary", "Parties and their logs", _parties(outcome.parties)),
        ("findings", "Findings", _findings(outcome.findings, jobs)),
        ("jobs", "Jobs", _jobs(outcome.jobs, outcome.findings)),
        ("budget", "Privacy budget spent per dataset", _budget(outcome.budget)),
        ("receipts", "Privacy receipts", _receipts(outcome.receipts)),
    )
    body = "".join(
        f'<section id="{sid}"><h2>{_e(title)}</h2>{content}</section>'
        for sid, title, content in sections
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Bund audit report {_e(outcome.generated_at)}</title>"
        f"<style>{_CSS}</style></head><body>"
        "<header><h1>Bund audit report</h1>"
        f'<p class="meta">Generated {_e(outcome.generated_at)} by the regulator: '
        f"{_count(len(outcome.parties), 'party', 'parties')}, "
        f"{_count(len(outcome.jobs), 'job')}.</p>"
        f'<p id="verdict" class="verdict {verdict_css}">{_count(errors, "error")}, '
        f"{_count(warnings_count, 'warning')}</p></header>"
        f"{body}"
        "<footer><p>A verified log is, byte for byte, records the holder of the party's audit "
        "key signed, in order, none removed, inserted, reordered or altered; without "
        "checkpoints held, records cut off its end and a log re-signed with the party's own key "
        "are not caught by verification alone. Every log is held to the tree heads the "
        "regulator kept and to those its peers witnessed between audits; what a party wrote "
        "since its last exchange of heads is not yet vouched for by anyone else. Clocks are "
        "judged by the witnesses' and the regulator's. Reconciliation compares every party's "
        "records of the same job. docs/governance.md explains every finding and what to do "
        "about it. Every name and text in this report was taken from party logs and is shown "
        "as text.</p></footer></body></html>\n"
    )


def write_report(outcome: AuditOutcome, path: Path) -> None:
    """Write the report to ``path`` (UTF-8), replacing any file there.

    Args:
        outcome: What :func:`bund.parties.regulator.audit_federation` found.
        path: The HTML file to write.
    """
    path.write_text(render_report(outcome), encoding="utf-8")
