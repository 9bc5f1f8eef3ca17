"""The regulator's HTML report, opened in headless Chromium: what an officer sees.

The logs are built here, signed by in-memory audit logs, as nodes write them: one clean job
with approvals, budget charges and receipts, one where the tax bureau's log omits a message, one
whose requester put markup into the spec, and one denied. Chromium comes from
``scripts/chromium.sh``; without it the browser tests skip, except in CI (``CI=true``), where
they fail.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bund.parties.audit import AuditLog, JsonScalar, MemoryAuditStore
from bund.parties.jobs import TranscriptEntry, transcript_digest
from bund.parties.lifecycle.events import CLOSE_TAG
from bund.parties.regulator import AuditOutcome, FindingKind, assess, make_pulled_log
from bund.parties.report import render_report, write_report

HOSTILE = '<script>alert("x")</script>'
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@dataclass
class Message:
    sender: str
    receiver: str
    tag: str
    payload: bytes
    dropped_by_receiver: bool = False


@dataclass
class FakeFederation:
    """Parties' audit logs, appended in the order nodes would append them."""

    parties: Sequence[str]
    now: dt.datetime = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
    keys: dict[str, Ed25519PrivateKey] = field(default_factory=dict)
    logs: dict[str, AuditLog] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for party in self.parties:
            self.keys[party] = Ed25519PrivateKey.generate()
            self.logs[party] = AuditLog(MemoryAuditStore(), self.keys[party], party, self.clock)
            self.logs[party].append("node_started", "", {"port": 7443})

    def clock(self) -> str:
        self.now += dt.timedelta(seconds=3)
        return self.now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def append(self, party: str, event: str, job_id: str, **fields: JsonScalar) -> None:
        self.logs[party].append(event, job_id, fields)

    def job(
        self,
        job_id: str,
        parties: Sequence[str],
        messages: Sequence[Message],
        charges: dict[str, tuple[str, str, str, str]],
        purpose: str = "align loan book with tax filings",
        protocol: str = "psi",
    ) -> None:
        """A job that runs to success; ``charges``: party -> (dataset, epsilon, spent, total)."""
        requester, receivers = parties[0], parties[0]
        spec = {
            "protocol": protocol,
            "requester": requester,
            "parties": ",".join(parties),
            "receivers": receivers,
            "purpose": purpose,
            "spec_sha256": hashlib.sha256(job_id.encode()).hexdigest(),
        }
        for party in parties:
            self.append(
                party, "job_submitted" if party == requester else "job_proposed", job_id, **spec
            )
            self.append(party, "job_approved", job_id, approver=f"{party}-approver-key")
            if party in charges:
                dataset, epsilon, spent, total = charges[party]
                self.append(
                    party,
                    "budget_charged",
                    job_id,
                    dataset=dataset,
                    epsilon=epsilon,
                    delta="0",
                    spent=spent,
                    total=total,
                )
            self.append(party, "job_accepted", job_id, spec_sha256=spec["spec_sha256"])
        for party in parties:
            self.append(party, "job_started", job_id)
        transcript: dict[str, list[TranscriptEntry]] = {p: [] for p in parties}
        for m in messages:
            sha, size = hashlib.sha256(m.payload).hexdigest(), len(m.payload)
            self.append(
                m.sender, "message_sent", job_id, peer=m.receiver, tag=m.tag, sha256=sha, size=size
            )
            transcript[m.sender].append(TranscriptEntry("sent", m.receiver, m.tag, sha, size))
            if m.receiver not in self.logs:
                continue  # an outsider: no log of its own
            if not m.dropped_by_receiver:
                self.append(
                    m.receiver,
                    "message_received",
                    job_id,
                    peer=m.sender,
                    tag=m.tag,
                    sha256=sha,
                    size=size,
                )
            transcript[m.receiver].append(TranscriptEntry("received", m.sender, m.tag, sha, size))
        digests = {p: transcript_digest(job_id, p, transcript[p]) for p in parties}
        for party in parties:
            for peer in parties:
                if peer != party:
                    payload = json.dumps({"party": party, "transcript_sha256": digests[party]})
                    sha = hashlib.sha256(payload.encode()).hexdigest()
                    close: dict[str, JsonScalar] = {
                        "tag": CLOSE_TAG,
                        "sha256": sha,
                        "size": len(payload),
                    }
                    self.append(party, "message_sent", job_id, peer=peer, **close)
                    self.append(peer, "message_received", job_id, peer=party, **close)
        for party in parties:
            charged = charges.get(party, ("", "0", "", ""))
            self.append(
                party,
                "privacy_receipt",
                job_id,
                protocol=protocol,
                protocol_version="1",
                dataset=charged[0] or None,
                records=500,
                epsilon=charged[1],
                transcript_sha256=digests[party],
                **{f"learned.{p}": f"what {p} learns" for p in parties},
            )
            self.append(
                party,
                "job_closed",
                job_id,
                outcome="succeeded",
                transcript_sha256=digests[party],
                messages=len(transcript[party]),
                result_to=receivers,
                holds_result=party == receivers,
                **{f"peer_transcript.{p}": digests[p] for p in parties if p != party},
            )
        self.now += dt.timedelta(days=1)

    def outcome(self) -> AuditOutcome:
        pulled = [
            make_pulled_log(
                p, self.logs[p].store.read(), self.keys[p].public_key(), f"{p}.example:7443"
            )
            for p in self.parties
        ]
        return assess(pulled, generated_at="2026-03-09T12:00:00Z")


JOB_CLEAN = "a1" * 16
JOB_OMITTED = "b2" * 16
JOB_HOSTILE = "c3" * 16
JOB_DENIED = "d4" * 16


@pytest.fixture(scope="module")
def outcome() -> AuditOutcome:
    fed = FakeFederation(("bank", "tax"))
    fed.job(
        JOB_CLEAN,
        ("bank", "tax"),
        [
            Message("bank", "tax", "psi/header", b"h1"),
            Message("tax", "bank", "psi/blinded/0", b"b1"),
        ],
        {"bank": ("loan_book", "1/2", "1/2", "3"), "tax": ("tax_filings", "1/4", "1/4", "2")},
    )
    fed.job(
        JOB_OMITTED,
        ("bank", "tax"),
        [
            Message("bank", "tax", "dp/share", b"s1", dropped_by_receiver=True),
            Message("tax", "bank", "dp/share", b"s2"),
        ],
        {"bank": ("loan_book", "1", "3/2", "3"), "tax": ("tax_filings", "1/2", "3/4", "2")},
        protocol="dp_stats",
        purpose="SME default rates by district",
    )
    fed.job(
        JOB_HOSTILE,
        ("bank", "tax"),
        [
            Message("bank", HOSTILE, "psi/header", b"h3"),
            Message("bank", "tax", "psi/header", b"h4"),
        ],
        {"bank": ("loan_book", "1/2", "2", "3")},
        purpose=f"{HOSTILE} <img src=x onerror=alert(1)>",
    )
    fed.append(
        "bank",
        "job_submitted",
        JOB_DENIED,
        protocol="psi",
        requester="bank",
        parties="bank,tax",
        receivers="bank",
        purpose="match customers",
        spec_sha256="ee" * 32,
    )
    fed.append(
        "tax",
        "job_proposed",
        JOB_DENIED,
        protocol="psi",
        requester="bank",
        parties="bank,tax",
        receivers="bank",
        purpose="match customers",
        spec_sha256="ee" * 32,
    )
    fed.append(
        "tax", "job_denied", JOB_DENIED, spec_sha256="ee" * 32, reason="<b>no purpose</b> given"
    )
    fed.append("bank", "job_refused_by_peer", JOB_DENIED, peer="tax", reason="denied")
    return fed.outcome()


def test_outcome_has_the_findings_the_report_must_show(outcome: AuditOutcome) -> None:
    kinds = {(f.kind, f.job_id) for f in outcome.findings}
    assert (FindingKind.MESSAGE_OMITTED, JOB_OMITTED) in kinds
    assert (FindingKind.UNEXPECTED_PARTY, JOB_HOSTILE) in kinds
    assert not [f for f in outcome.findings if f.job_id in (JOB_CLEAN, JOB_DENIED)]
    assert [j.job_id for j in outcome.jobs] == [JOB_CLEAN, JOB_OMITTED, JOB_HOSTILE, JOB_DENIED]
    assert len(outcome.budget) == 5 and len(outcome.receipts) == 6
    (denied,) = [j for j in outcome.jobs if j.job_id == JOB_DENIED]
    assert dict(denied.reasons) == {"tax": "<b>no purpose</b> given", "bank": "denied"}
    (clean,) = [j for j in outcome.jobs if j.job_id == JOB_CLEAN]
    assert not clean.reasons


def test_report_shows_reasons_and_budgets_as_decimals(outcome: AuditOutcome) -> None:
    text = render_report(outcome)
    assert 'tax: refused <span class="reason">(&lt;b&gt;no purpose&lt;/b&gt; given)</span>' in text
    # ε of 1/2, 1/4 and 3/4 read as decimals; the exact rationals stay in the logs.
    assert "ε 0.5" in text and "ε 0.25" in text and "<td>0.75</td>" in text
    assert "1/4" not in text


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_report_is_self_contained_and_escapes_log_text(outcome: AuditOutcome) -> None:
    text = render_report(outcome)
    parser = _Elements()
    parser.feed(text)
    names = [tag for tag, _ in parser.tags]
    assert "script" not in names and "link" not in names and "iframe" not in names
    for tag, attrs in parser.tags:
        for name in ("src", "href"):
            value = attrs.get(name)
            assert value is None or value.startswith(("data:image/png;base64,", "#")), (tag, attrs)
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
    assert "http://" not in text and "https://" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert "&lt;b&gt;no purpose&lt;/b&gt;" in text
    assert sum(tag == "img" for tag in names) == 1


def test_report_without_budget_charges_says_so() -> None:
    fed = FakeFederation(("bank", "tax"))
    fed.job(JOB_CLEAN, ("bank", "tax"), [Message("bank", "tax", "psi/header", b"h")], {})
    text = render_report(fed.outcome())
    assert "No privacy budget charged" in text and "<img" not in text
    assert "No findings" in text


# -- in the browser ---------------------------------------------------------------------------


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed; CI must run scripts/chromium.sh first")
        pytest.skip("chromium is not installed (scripts/chromium.sh installs it)")
    return path


def _run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    profile.mkdir()
    command = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def report(outcome: AuditOutcome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("report") / "report.html"
    write_report(outcome, path)
    yield path


def test_chromium_shows_jobs_parties_findings_and_the_budget_chart(
    report: Path, tmp_path: Path
) -> None:
    run = _run_chromium(tmp_path, "--dump-dom", report.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    assert 'id="verdict"' in dom and "3 errors" in dom
    for job_id in (JOB_CLEAN, JOB_OMITTED, JOB_HOSTILE, JOB_DENIED):
        assert f'id="job-{job_id}"' in dom
    for party in ("bank", "tax"):
        assert f'id="party-{party}"' in dom
        assert f"{party}.example:7443" in dom
    assert "message_omitted" in dom and "unexpected_party" in dom
    assert "tax's log has no message_received" in dom
    assert "bank record " in dom  # the record index of the evidence
    assert "approved" in dom and "denied" in dom
    chart = dom.split('<figure id="budget-chart">', 1)[1].split("</figure>", 1)[0]
    assert 'alt="Chart: privacy budget (epsilon) spent per dataset over time"' in chart
    assert 'src="data:image/png;base64,' in chart
    assert "loan_book" in dom and "tax_filings" in dom
    assert "what tax learns" in dom  # receipts
    # The hostile name and purpose are text, never elements.
    assert "<script" not in dom and "onerror=" not in dom.replace("onerror=alert(1)&gt;", "")
    assert '&lt;script&gt;alert("x")&lt;/script&gt;' in dom
    assert "<img" in dom and dom.count("<img") == 1


def test_chromium_screenshot_renders_the_report(report: Path, tmp_path: Path) -> None:
    png = tmp_path / "report.png"
    run = _run_chromium(
        tmp_path,
        f"--screenshot={png}",
        "--window-size=1280,2600",
        "--hide-scrollbars",
        report.as_uri(),
    )
    assert run.returncode == 0, run.stderr[-2000:]
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 50_000
    keep = os.environ.get("BUND_REPORT_SCREENSHOT")
    if keep:
        shutil.copy(png, keep)
