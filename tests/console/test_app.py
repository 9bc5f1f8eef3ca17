"""The console's app in process (Starlette's TestClient) over a fake node client.

The fake answers the calls the console makes of ``NodeClient`` with domain objects; the signed
audit records come from a real in-memory audit log. The browser tests
(``tests/integration/test_console_browser.py``) drive the same pages against real nodes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.routing import Route
from starlette.testclient import TestClient

from bund.compute.dp.budget import Budget
from bund.parties.approvals import ApprovalRequest, verify_approval
from bund.parties.audit import AuditLog, AuditRecord, MemoryAuditStore
from bund.parties.client import RemoteError
from bund.parties.console.app import PartyAccess, RegulatorAccess, create_app
from bund.parties.console.charts import PNG_MAGIC
from bund.parties.console.live import event_stream
from bund.parties.console.security import CSP, CSRF_COOKIE, Listen, check_listen
from bund.parties.console.server import approver_key_of, make_server
from bund.parties.errors import ConfigError
from bund.parties.jobs import JobSpec, Participant
from bund.parties.lifecycle.states import JobState, JobStatus, PartyView
from bund.parties.lifecycle.store import ResultInfo
from bund.parties.wire import AuditPage

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
JOB_RUN = "a1" * 16
JOB_WAIT = "b2" * 16


def _spec(job_id: str, purpose: str = "align loan book") -> JobSpec:
    return JobSpec(
        protocol="psi",
        participants=(Participant("bank", "member", "loans"), Participant("tax", "member")),
        receivers=("bank",),
        purpose=purpose,
        requester="bank",
        job_id=job_id,
    )


class FakeNode:
    """The calls the console makes of a NodeClient, answered from memory."""

    party = "bank"
    address = "127.0.0.1:1"

    def __init__(self, tmp: Path) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.now = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
        self.log = AuditLog(MemoryAuditStore(), self.key, "bank", self._clock)
        self.statuses = {
            JOB_RUN: JobStatus(
                _spec(JOB_RUN, HOSTILE),
                JobState.RUNNING,
                phase="blind",
                done=3,
                total=10,
                updated_at="2026-03-02T09:00:00Z",
                parties=(PartyView("tax", JobState.ACCEPTED, ("approver",)),),
            ),
            JOB_WAIT: JobStatus(_spec(JOB_WAIT, HOSTILE), JobState.AWAITING_APPROVAL),
        }
        self.approved: list[tuple[str, bytes]] = []
        self.denied: list[tuple[str, str]] = []
        self.request = ApprovalRequest(
            spec=_spec(JOB_WAIT, HOSTILE),
            party="bank",
            code_version="1.0",
            dataset="loans",
            level="confidential",
            dataset_version="ab" * 32,
            outputs=("intersection",),
            learns={"bank": "the common ids", "tax": f"the set size {HOSTILE}"},
            cost=Budget(Fraction(1, 3)),
        )
        for epsilon, spent in (("1/3", "1/3"), ("1/2", "5/6")):
            self.log.append(
                "budget_charged",
                JOB_RUN,
                {
                    "dataset": "loans",
                    "epsilon": epsilon,
                    "delta": "0",
                    "spent": spent,
                    "spent_delta": "0",
                    "reserved": "0",
                    "total": "3",
                    "total_delta": "1/1000000",
                },
            )
        self.log.append("job_submitted", JOB_RUN, {"protocol": "psi", "purpose": HOSTILE})
        self.log.append(
            "message_sent", JOB_RUN, {"peer": "tax", "tag": "psi/header", "sha256": "cd" * 32,
                                      "size": 42},
        )  # fmt: skip
        self.log.append("privacy_receipt", JOB_RUN, {"learned.tax": "the set size"})
        self.records: list[AuditRecord] = list(self.log.store.read())

    def _clock(self) -> str:
        self.now += dt.timedelta(seconds=5)
        return self.now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def list_jobs(self, limit: int = 50, states: object = ()) -> list[JobStatus]:
        wanted = set(states)  # type: ignore[call-overload]
        return [s for s in self.statuses.values() if not wanted or s.state in wanted]

    def status(self, job_id: str, timeout: float | None = None) -> JobStatus:
        if job_id not in self.statuses:
            raise RemoteError("bank", __import__("grpc").StatusCode.NOT_FOUND, "no such job")
        return self.statuses[job_id]

    def job_log(self, job_id: str) -> list[AuditRecord]:
        return [r for r in self.records if r.job_id == job_id]

    def approval_request(self, job_id: str) -> ApprovalRequest:
        return dataclasses.replace(self.request, spec=self.statuses[job_id].spec)

    def approve(self, job_id: str, signature: bytes) -> None:
        self.approved.append((job_id, signature))

    def deny(self, job_id: str, reason: str) -> None:
        self.denied.append((job_id, reason))

    files = {
        "ids.csv": b"id\n1\n",
        "roc.png": PNG_MAGIC + b"a chart",
        "fake.png": b"<svg onload=alert(1)>",
    }

    def result_info(self, job_id: str) -> ResultInfo:
        sizes = {name: len(data) for name, data in self.files.items()}
        return ResultInfo({"matched": 30, "epsilon": "1/3"}, sizes)

    def artifact_pages(self, job_id: str, name: str, size: int) -> Iterator[bytes]:
        data = self.files[name]
        assert size == len(data)
        return (data[i : i + 3] for i in range(0, size, 3))  # small pages: several per file

    def read_audit(self, start: int = 0, limit: int = 0) -> AuditPage:
        raw = self.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return AuditPage(tuple(self.records[start:]), len(self.records), raw)


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    return FakeNode(tmp_path)


@pytest.fixture
def approver_key(tmp_path: Path) -> tuple[Path, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "approver_ed25519.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path, key


def _browser(node: FakeNode, approver: Path | None) -> TestClient:
    party = PartyAccess(node, node.key.public_key(), approver)  # type: ignore[arg-type]
    return TestClient(create_app(party), base_url="http://127.0.0.1")


@pytest.fixture
def browser(node: FakeNode, approver_key: tuple[Path, Ed25519PrivateKey]) -> Iterator[TestClient]:
    with _browser(node, approver_key[0]) as client:
        yield client


PAGES = ("/jobs", f"/jobs/{JOB_RUN}", "/approvals", "/budget", "/audit", f"/jobs/{JOB_RUN}/result")


def _token(browser: TestClient) -> str:
    browser.get("/approvals")
    return browser.cookies[CSRF_COOKIE]


def test_every_page_renders_with_a_strict_csp_and_no_remote_asset(browser: TestClient) -> None:
    for page in PAGES:
        r = browser.get(page)
        assert r.status_code == 200, (page, r.text[-500:])
        assert r.headers["content-security-policy"] == CSP
        assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "http://" not in r.text and "https://" not in r.text, page
        assert "<script>" not in r.text and "<style" not in r.text and " style=" not in r.text
    assert browser.get("/static/console.js").headers["content-type"].startswith("text/javascript")


def test_hostile_purpose_and_reasons_are_escaped_everywhere(browser: TestClient) -> None:
    for page in ("/jobs", f"/jobs/{JOB_RUN}", "/approvals", f"/jobs/{JOB_WAIT}"):
        text = browser.get(page).text
        assert '<script>alert("x")' not in text and "<img src=x" not in text, page
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in text, page


def test_jobs_page_filters_and_marks_running_jobs_live(browser: TestClient) -> None:
    text = browser.get("/jobs").text
    assert f'id="job-{JOB_RUN}"' in text and f'id="job-{JOB_WAIT}"' in text
    assert f'data-live="/jobs/{JOB_RUN}/live"' in text
    text = browser.get("/jobs", params={"state": "awaiting_approval"}).text
    assert f'id="job-{JOB_WAIT}"' in text and f'id="job-{JOB_RUN}"' not in text
    text = browser.get("/jobs", params={"q": JOB_RUN[:6]}).text
    assert f'id="job-{JOB_RUN}"' in text and f'id="job-{JOB_WAIT}"' not in text
    assert "No job matches" in browser.get("/jobs", params={"peer": "insurer"}).text


def test_job_page_shows_answers_life_messages_and_receipt(browser: TestClient) -> None:
    text = browser.get(f"/jobs/{JOB_RUN}").text
    assert 'id="answer-tax"' in text and "approver" in text
    assert "psi/header" in text and "cdcdcdcdcdcdcdcd" in text
    assert "<strong>tax</strong> learns the set size" in text
    assert "blind 3/10" in text
    assert '<figure id="durations"><img alt="Chart: seconds between' in text
    # Before it runs, what each party learns comes from the approval request.
    assert "learns the set size &lt;script&gt;" in browser.get(f"/jobs/{JOB_WAIT}").text


def test_unknown_job_is_an_error_page(browser: TestClient) -> None:
    r = browser.get("/jobs/" + "ee" * 16)
    assert r.status_code == 502 and "no such job" in r.text


def test_approve_signs_here_with_the_approver_key(
    browser: TestClient, node: FakeNode, approver_key: tuple[Path, Ed25519PrivateKey]
) -> None:
    page = browser.get("/approvals").text
    assert "Approve and sign" in page and "privacy budget charged to your dataset" in page
    (digest,) = re.findall(r'name="digest" value="([0-9a-f]{64})"', page)
    assert digest == hashlib.sha256(node.request.payload()).hexdigest()
    token = browser.cookies[CSRF_COOKIE]
    assert f'value="{token}"' in page
    r = browser.post(
        f"/approvals/{JOB_WAIT}/approve",
        data={"csrf": token, "digest": digest},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == f"/jobs/{JOB_WAIT}?done=approved"
    ((job_id, signature),) = node.approved
    assert job_id == JOB_WAIT
    verify_approval(node.approval_request(JOB_WAIT), signature, approver_key[1].public_key())
    assert b"PRIVATE" not in page.encode() and approver_key[0].name not in page


def test_approval_request_changed_since_read_is_not_signed(
    browser: TestClient, node: FakeNode
) -> None:
    token = _token(browser)
    r = browser.post(f"/approvals/{JOB_WAIT}/approve", data={"csrf": token, "digest": "00" * 32})
    assert r.status_code == 502 and "read it again" in r.text
    assert node.approved == []


def test_every_post_needs_the_csrf_token_and_the_console_origin(
    browser: TestClient, node: FakeNode
) -> None:
    app = browser.app
    posts = [r.path for r in app.routes if isinstance(r, Route) and "POST" in (r.methods or ())]  # type: ignore[attr-defined]
    assert len(posts) == 2
    token = _token(browser)
    for path in posts:
        url = path.replace("{job_id}", JOB_WAIT)
        for data, headers in (
            ({"reason": "x", "digest": "0"}, {}),
            ({"csrf": "forged" * 7 + "x", "reason": "x"}, {}),
            ({"csrf": token, "reason": "x"}, {"origin": "http://evil.example"}),
        ):
            r = browser.post(url, data=data, headers=headers)
            assert r.status_code == 403, (url, data, headers)
    assert node.approved == [] and node.denied == []


def test_deny_needs_a_reason_and_sends_it(browser: TestClient, node: FakeNode) -> None:
    token = _token(browser)
    r = browser.post(f"/approvals/{JOB_WAIT}/deny", data={"csrf": token, "reason": " "})
    assert r.status_code == 400 and node.denied == []
    r = browser.post(
        f"/approvals/{JOB_WAIT}/deny",
        data={"csrf": token, "reason": "not in our agreement"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and node.denied == [(JOB_WAIT, "not in our agreement")]


def test_shared_console_offers_no_approval(node: FakeNode) -> None:
    with _browser(node, None) as shared:
        page = shared.get("/approvals").text
        assert "Approve and sign" not in page and 'id="no-approval"' in page
        assert "shared console: no approval" in page
        token = shared.cookies[CSRF_COOKIE]
        r = shared.post(f"/approvals/{JOB_WAIT}/approve", data={"csrf": token, "digest": "0"})
        assert r.status_code == 403 and node.approved == []


def test_budget_page_shows_decimals_rounded_up_and_a_chart(browser: TestClient) -> None:
    text = browser.get("/budget").text
    row = text.split('id="budget-loans"', 1)[1].split("</tr>", 1)[0]
    # spent 5/6 = 0.83333.. reads 0.8334 (never below); left 3 - 5/6 = 13/6 reads 2.167
    assert "<td>3</td>" in row and "0.8334*" in row and "2.167*" in row
    assert "0.8334 is exactly 5/6" in text and "1e-06" in text
    chart = text.split('<figure id="budget-chart">', 1)[1].split("</figure>", 1)[0]
    assert 'src="data:image/png;base64,' in chart
    assert "which verifies" in text


def test_audit_page_verifies_and_names_the_first_bad_record(
    browser: TestClient, node: FakeNode
) -> None:
    text = browser.get("/audit").text
    assert f"Verified now: {len(node.records)} records" in text
    bad = node.records[2]
    node.records[2] = dataclasses.replace(bad, fields={**bad.fields, "purpose": "changed"})
    text = browser.get("/audit").text
    assert "NOT verified: record 2 is the first bad record" in text
    found = browser.get("/audit", params={"event": "message", "job": JOB_RUN[:8]}).text
    assert "1 records match" in found and "psi/header" in found and "budget_charged" not in found


def test_result_page_and_file_download(browser: TestClient) -> None:
    text = browser.get(f"/jobs/{JOB_RUN}/result").text
    assert "0.3334 (exactly 1/3)" in text and "ids.csv" in text
    r = browser.get(f"/jobs/{JOB_RUN}/result/ids.csv")
    assert r.content == b"id\n1\n" and r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == 'attachment; filename="ids.csv"'
    assert r.headers["content-length"] == "5"  # streamed in pages, its size said first
    assert browser.get(f"/jobs/{JOB_RUN}/result/other").status_code == 404
    # A chart the protocol drew is shown; bytes that are not a PNG are only a download.
    (chart,) = re.findall(r'<img alt="Chart: ([^"]+)" src="data:image/png;base64,', text)
    assert chart == "roc.png" and "fake.png" in text


def test_other_hosts_are_refused(node: FakeNode) -> None:
    party = PartyAccess(node, node.key.public_key(), None)  # type: ignore[arg-type]
    with TestClient(create_app(party), base_url="http://rebound.example") as client:
        assert client.get("/jobs").status_code == 400


def test_live_stream_sends_each_change_until_the_end(node: FakeNode) -> None:
    states = iter([JobState.RUNNING, JobState.RUNNING, JobState.SUCCEEDED])

    class Source:
        party = "bank"

        def status(self, job_id: str) -> JobStatus:
            return dataclasses.replace(node.statuses[JOB_RUN], state=next(states))

    events = list(event_stream(Source(), JOB_RUN, timeout=30))
    assert events[0].startswith("retry:")
    assert [e.split("\n")[0] for e in events[1:]] == ["event: status"] * 2
    assert '"state": "succeeded"' in events[-1] and "<script>" in events[-1]  # JSON, set as text


def test_live_stream_reports_an_unknown_job_as_an_error_event(node: FakeNode) -> None:
    events = list(event_stream(node, "ff" * 16, timeout=30))  # type: ignore[arg-type]
    assert events[-1].startswith("event: error") and "no such job" in events[-1]


def test_console_listens_on_loopback_unless_told_and_then_needs_client_certificates(
    tmp_path: Path, node: FakeNode, approver_key: tuple[Path, Ed25519PrivateKey]
) -> None:
    check_listen(Listen("127.0.0.1"), allow_remote=False)
    check_listen(Listen("::1"), allow_remote=False)
    with pytest.raises(ConfigError, match="loopback only"):
        check_listen(Listen("0.0.0.0"), allow_remote=False)  # noqa: S104
    with pytest.raises(ConfigError, match="needs TLS with client certificates"):
        check_listen(Listen("192.0.2.7"), allow_remote=True)
    with pytest.raises(ConfigError, match="together"):
        check_listen(Listen("127.0.0.1", cert=tmp_path / "c.pem"), allow_remote=False)
    files = [tmp_path / n for n in ("c.pem", "k.pem", "ca.pem")]
    for f in files:
        f.write_text("x")
    party = PartyAccess(node, node.key.public_key(), approver_key[0])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="holds no approver key"):
        make_server(Listen("192.0.2.7", 0, *files), True, party=party)
    with pytest.raises(ConfigError, match="drop --approver-key"):
        approver_key_of(approver_key[0], None, shared=True)
    assert approver_key_of(None, approver_key[0], shared=True) is None
    assert approver_key_of(None, tmp_path / "absent.key", shared=False) is None


def test_regulator_console_runs_an_audit_and_offers_the_report(tmp_path: Path) -> None:
    from tests.integration.test_report import HOSTILE as REPORT_HOSTILE
    from tests.integration.test_report import JOB_HOSTILE, FakeFederation, Message

    fed = FakeFederation(("bank", "tax"))
    fed.job(
        JOB_HOSTILE,
        ("bank", "tax"),
        [Message("bank", "tax", "psi/header", b"h"), Message("tax", "bank", "psi/x", b"y",
                                                            dropped_by_receiver=True)],
        {"bank": ("loan_book", "1/2", "1/2", "3")},
        purpose=REPORT_HOSTILE,
    )  # fmt: skip
    runs: list[object] = []

    def audit(config: object) -> object:
        runs.append(config)
        return fed.outcome()

    regulator = RegulatorAccess(object(), audit)  # type: ignore[arg-type]
    with TestClient(create_app(regulator=regulator), base_url="http://127.0.0.1") as client:
        assert 'id="no-audit"' in client.get("/regulator").text
        assert client.get("/regulator/report").status_code == 404
        assert client.get("/jobs").status_code == 404  # no party pages here
        token = client.cookies[CSRF_COOKIE]
        assert client.post("/regulator/audit", data={}).status_code == 403 and not runs
        text = client.post("/regulator/audit", data={"csrf": token}).text
        assert len(runs) == 1
        assert "message_omitted" in text and 'id="party-tax"' in text
        assert "<script>alert" not in text and "&lt;script&gt;" in text
        assert 'src="data:image/png;base64,' in text
        report = client.get("/regulator/report")
        assert report.headers["content-disposition"].startswith('attachment; filename="bund-audit')
        assert "Bund audit report" in report.text
