"""``bund console`` in headless Chromium, against real nodes over mTLS: what a person sees.

The bank's node needs its approver's signature for every job; the bank's console runs with the
approver's key on "this machine". A job is submitted (as ``bund job submit`` does), appears as
pending, is approved in the browser, runs to success while the job page follows it live, and its
result, the budget it charged and the verified audit log are opened; another job is denied in the
browser, and a third fails and shows its reason. Every page is screenshotted into
``$BUND_CONSOLE_SCREENSHOTS`` (or the test's temporary directory). Chromium and its driver come
from Debian (``scripts/chromium.sh``); without them the tests skip, except in CI, where they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest

from bund.compute.dp.budget import Budget
from bund.compute.errors import BundError
from bund.parties import identity
from bund.parties.config import TlsPaths
from bund.parties.console.app import PartyAccess
from bund.parties.console.security import Listen
from bund.parties.console.server import ConsoleServer, make_server
from bund.parties.jobs import JobContext, JobSpec, Participant, ProtocolDef, Result
from bund.parties.lifecycle.states import JobState
from bund.parties.protocols import PROTOCOLS
from tests.conftest import Federation, NodeFactory, wait_until
from tests.integration.test_governance import approve, wait_state
from tests.integration.test_node import BANK_IDS, TAX_IDS
from tests.integration.test_report import CHROMIUM_FLAGS, _chromium

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
FAILURE = "the tax filings extract for 2025 is missing; load it and submit the job again"


def _count_role(ctx: JobContext) -> Result | None:
    """Each member sends its row count; the receiver gets the sum and a small file."""
    (peer,) = (p for p in ctx.spec.parties if p != ctx.party)
    ctx.progress("counting", 1, 2)
    ctx.send(peer, "count", str(ctx.table().num_rows).encode())
    total = ctx.table().num_rows + int(ctx.recv(peer, "count"))
    ctx.progress("counting", 2, 2)
    if ctx.party not in ctx.spec.receivers:
        return None
    return Result({"total": total, "epsilon": "1/3"}, {"counts.csv": f"total\n{total}\n".encode()})


def _failing_role(ctx: JobContext) -> Result | None:
    raise BundError(FAILURE)


def _protocol(name: str, role: object, cost: str) -> ProtocolDef:
    return ProtocolDef(
        name=name,
        version="1",
        roles={"member": role},  # type: ignore[dict-item]
        outputs=lambda spec: frozenset({"dp_aggregate"}),
        learns=lambda spec: dict.fromkeys(spec.parties, "the total count of both tables"),
        cost=lambda spec, party: Budget(Fraction(cost)),
    )


COUNT = _protocol("console_count_test", _count_role, "1/3")
FAIL = _protocol("console_fail_test", _failing_role, "0")
REGISTRY = {**PROTOCOLS, COUNT.name: COUNT, FAIL.name: FAIL}


def _spec(protocol: str, purpose: str) -> JobSpec:
    return JobSpec(
        protocol=protocol,
        participants=(
            Participant("bank", "member", "loans"),
            Participant("tax", "member", "filings"),
        ),
        receivers=("bank",),
        purpose=purpose,
        requester="bank",
    )


def _chromedriver() -> str:
    path = shutil.which("chromedriver")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromedriver is not installed; CI must run scripts/chromium.sh first")
        pytest.skip("chromedriver is not installed (scripts/chromium.sh installs it)")
    return path


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where the screenshots go: $BUND_CONSOLE_SCREENSHOTS, or the test's own directory."""
    out = Path(os.environ.get("BUND_CONSOLE_SCREENSHOTS") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium fetch a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = _chromium()
    for flag in (*CHROMIUM_FLAGS, "--window-size=1280,1100", f"--user-data-dir={tmp_path / 'p'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=_chromedriver()))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def console(node_factory: NodeFactory) -> Iterator[ConsoleServer]:
    """The bank's nodes (the bank needs its approver), and the bank approver's console."""
    f = node_factory
    for name, dataset, ids, other, approvals in (
        ("bank", "loans", BANK_IDS, "tax", True),
        ("tax", "filings", TAX_IDS, "bank", False),
    ):
        f.start(
            name, {dataset: {"id": ids}}, (other,), level="internal", approvals=approvals,
            registry=REGISTRY, budget_epsilon="3",
        )  # fmt: skip
    client = f.client("bank")
    party = PartyAccess(
        client,
        identity.load_audit_public_key(f.config("bank").audit_pub),
        f.federation.party_dir("bank") / identity.APPROVER_KEY,
    )
    server = make_server(Listen("127.0.0.1", 0), allow_remote=False, party=party)
    server.start()
    yield server
    server.stop()
    client.close()


def _open(driver: WebDriver, server: ConsoleServer, path: str) -> None:
    driver.get(server.url.rstrip("/") + path)


def _text(driver: WebDriver, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def _shot(driver: WebDriver, shots: Path, name: str) -> None:
    path = shots / f"{name}.png"
    assert driver.save_screenshot(str(path)), path
    assert path.read_bytes().startswith(b"\x89PNG")


def _no_alert(driver: WebDriver) -> None:
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.accept()


def _until(driver: WebDriver, what: str, check: object, timeout: float = 60) -> None:
    """Wait for ``check``; on a timeout, say what the browser shows instead."""
    try:
        # The job page reloads itself as the job moves on: an element may go stale meanwhile.
        ignored = (NoSuchElementException, StaleElementReferenceException)
        wait = WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=ignored)
        wait.until(check)  # type: ignore[arg-type]
    except TimeoutException:
        shown = driver.find_element(By.TAG_NAME, "main").text[:2000]
        raise AssertionError(
            f"no {what} after {timeout} s at {driver.current_url}: {shown}"
        ) from None


def _pending(driver: WebDriver, server: ConsoleServer, job_id: str) -> None:
    """Open the approvals page until the job is listed (its proposal takes a moment)."""

    def listed() -> bool | None:
        _open(driver, server, "/approvals")
        return bool(driver.find_elements(By.ID, f"pending-{job_id}")) or None

    wait_until(listed, 60, f"job {job_id} to await approval in the console", interval=0.3)


def test_approve_in_the_browser_watch_it_succeed_open_result_budget_and_audit(
    console: ConsoleServer, node_factory: NodeFactory, browser: WebDriver, shots: Path
) -> None:
    with node_factory.client("bank") as bank:
        job_id = bank.submit(_spec(COUNT.name, f"SME counts {HOSTILE}"))
    _pending(browser, console, job_id)
    article = _text(browser, f"#pending-{job_id}")
    assert f"purpose: SME counts {HOSTILE}" in article  # shown as text, never as markup
    assert "bank learns the total count of both tables" in article
    assert "privacy budget charged to your dataset: ε = 0.3334 (exactly 1/3)" in article
    assert not browser.find_elements(By.CSS_SELECTOR, "main img")
    _no_alert(browser)
    _shot(browser, shots, "approvals")

    browser.find_element(By.CSS_SELECTOR, f"#pending-{job_id} .approve-button").click()
    _until(browser, "the job page", lambda d: f"/jobs/{job_id}" in d.current_url)
    _until(browser, "the notice", lambda d: _text(d, "#notice") == "Done: approved.")
    # The page follows the job by itself (its script reloads it as the state changes).
    _until(browser, "the job to succeed", lambda d: _text(d, "#state") == "succeeded")
    assert _text(browser, "#purpose") == f"SME counts {HOSTILE}"
    assert "bank learns the total count of both tables" in _text(browser, "#learns")
    assert "count" in _text(browser, "#messages")  # by tag, size and digest
    assert "privacy_receipt" in _text(browser, "#phases")
    answers = _text(browser, "#answers")
    assert "bank (here) succeeded approver" in answers and "tax accepted" in answers
    _no_alert(browser)
    _shot(browser, shots, "job")

    browser.find_element(By.CSS_SELECTOR, "#has-result a").click()
    _until(browser, "the result page", lambda d: d.current_url.endswith("/result"))
    summary = _text(browser, "#summary")
    assert f"total {len(BANK_IDS) + len(TAX_IDS)}" in summary and "0.3334 (exactly 1/3)" in summary
    assert "counts.csv" in _text(browser, "#files")
    _shot(browser, shots, "result")

    _open(browser, console, "/budget")
    loans = _text(browser, "#budget-loans")
    assert loans.split()[:6] == ["loans", "ε", "3", "0.3334*", "0", "2.667*"], loans
    chart = browser.find_element(By.CSS_SELECTOR, "#budget-chart img")
    assert chart.get_attribute("src").startswith("data:image/png;base64,")
    assert browser.execute_script("return arguments[0].naturalWidth", chart) > 300
    _shot(browser, shots, "budget")

    _open(browser, console, "/audit")
    browser.find_element(By.ID, "verify-now").click()
    _until(browser, "the verdict", lambda d: "Verified now" in _text(d, "#verdict"))
    search = browser.find_element(By.CSS_SELECTOR, "#search input[name=job]")
    search.send_keys(job_id)
    browser.find_element(By.CSS_SELECTOR, "#search button").click()
    _until(browser, "the search", lambda d: "job_closed" in _text(d, "#records"))
    assert "budget_charged" in _text(browser, "#records")
    _shot(browser, shots, "audit")

    _open(browser, console, "/jobs")
    assert "succeeded" in _text(browser, f"#job-{job_id}")
    _no_alert(browser)
    _shot(browser, shots, "jobs")


def test_deny_in_the_browser_and_a_failed_job_shows_its_reason(
    console: ConsoleServer, node_factory: NodeFactory, browser: WebDriver, shots: Path
) -> None:
    with node_factory.client("bank") as bank:
        denied = bank.submit(_spec(COUNT.name, "count every customer"))
        _pending(browser, console, denied)
        reason = browser.find_element(By.CSS_SELECTOR, f"#pending-{denied} input[name=reason]")
        reason.send_keys(f"not covered by our agreement {HOSTILE}")
        browser.find_element(By.CSS_SELECTOR, f"#pending-{denied} .deny-button").click()
        _until(browser, "the job page", lambda d: f"/jobs/{denied}" in d.current_url)
        _until(browser, "the refusal", lambda d: _text(d, "#state") == "refused")
        assert f"not covered by our agreement {HOSTILE}" in _text(browser, "#reason")
        _no_alert(browser)
        _shot(browser, shots, "job-denied")
        assert bank.status(denied).state is JobState.REFUSED

        failed = bank.submit(_spec(FAIL.name, "a job that fails"))
        wait_state(bank, failed, JobState.AWAITING_APPROVAL)
        approve(node_factory, "bank", failed)  # as `bund job approve` does
        _open(browser, console, f"/jobs/{failed}")
        _until(browser, "the job to fail", lambda d: _text(d, "#state") == "failed", 60)
        assert FAILURE in _text(browser, "#reason")
        _shot(browser, shots, "job-failed")
        _open(browser, console, "/jobs?state=failed")
        rows = browser.find_elements(By.CSS_SELECTOR, "#jobs-table tbody tr")
        assert [r.get_attribute("id") for r in rows] == [f"job-{failed}"]


def test_bund_console_command_serves_a_party_on_loopback_and_refuses_elsewhere(
    node_factory: NodeFactory,
) -> None:
    import subprocess
    import sys
    import urllib.request

    from typer.testing import CliRunner

    from bund.parties.cli import app
    from tests.conftest import REPO_ROOT

    node_factory.start("bank", {"loans": {"id": BANK_IDS}}, ("tax",))
    config = str(node_factory.config("bank").source)
    refused = CliRunner().invoke(app, ["console", "--config", config, "--host", "0.0.0.0"])  # noqa: S104
    assert refused.exit_code == 1 and "loopback only" in refused.output
    both = CliRunner().invoke(app, ["console", "--config", config, "--regulator", config])
    assert both.exit_code == 1 and "give --config" in both.output
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "bund.parties.cli", "console", "--config", config]
    with subprocess.Popen(
        [*command, "--port", "0"], stdout=subprocess.PIPE, text=True, env=env
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("bund console at http://127.0.0.1:"), line
            url = line.split()[3]
            with urllib.request.urlopen(url + "jobs", timeout=30) as page:  # noqa: S310
                text = page.read().decode()
                assert page.headers["content-security-policy"].startswith("default-src 'none'")
            assert "Jobs at bank's node" in text and "shared console: no approval" in text
        finally:
            process.terminate()
            process.wait(timeout=30)


def test_console_off_loopback_serves_tls_only_to_operator_credentials(
    federation: Federation, node_factory: NodeFactory
) -> None:
    """The TLS a non-loopback console requires, served here on loopback to test the handshake."""
    import ssl
    import urllib.error
    import urllib.request

    node_factory.start("bank", {"loans": {"id": BANK_IDS}}, ("tax",))
    bank = federation.party_dir("bank")
    client = node_factory.client("bank")
    party = PartyAccess(client, identity.load_audit_public_key(bank / identity.AUDIT_PUB), None)
    listen = Listen(
        "127.0.0.1", 0, bank / identity.NODE_CERT, bank / identity.NODE_KEY,
        bank / identity.OPERATOR_CA_CERT,
    )  # fmt: skip
    server = make_server(listen, allow_remote=False, party=party)
    server.start()
    try:
        assert server.url.startswith("https://127.0.0.1:")

        def context(credential: TlsPaths | None) -> ssl.SSLContext:
            ctx = ssl.create_default_context(cafile=str(bank / identity.CA_CERT))
            ctx.check_hostname = False  # the node certificate names the party, not 127.0.0.1
            if credential is not None:
                ctx.load_cert_chain(str(credential.cert), str(credential.key))
            return ctx

        url = server.url + "jobs"
        with urllib.request.urlopen(url, context=context(federation.operator_tls("bank"))) as r:  # noqa: S310
            assert r.status == 200 and "Jobs at bank" in r.read().decode()
        for stranger in (None, federation.tls("bank"), federation.operator_tls("tax")):
            with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
                with urllib.request.urlopen(url, context=context(stranger), timeout=30) as r:  # noqa: S310
                    r.read()
    finally:
        server.stop()
        client.close()
