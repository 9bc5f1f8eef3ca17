"""The node's job lines (text and JSON), their rate limit, and one job's records."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bund.parties.audit import AuditLog, MemoryAuditStore
from bund.parties.config import LoggingConfig
from bund.parties.jobs import JobSpec, Participant
from bund.parties.lifecycle.events import Event, Key
from bund.parties.lifecycle.states import JobState
from bund.parties.lifecycle.store import MemoryJobStore
from bund.parties.oplog import (
    JobLog,
    JsonFormatter,
    TextFormatter,
    configure_logging,
    job_records,
    text_value,
)

KEY = Ed25519PrivateKey.generate()
T0 = dt.datetime(2026, 11, 24, 9, 30, tzinfo=dt.UTC)


def _spec(n: int) -> JobSpec:
    return JobSpec(
        protocol="psi",
        participants=(
            Participant("bank", "member", "loans", {"id": "company_id"}),
            Participant("tax", "member", "filings", {"id": "uscc"}),
        ),
        receivers=("bank",),
        purpose="test",
        requester="bank",
        params={"mode": "cardinality"},
        job_id=f"{n:032x}",
    )


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class Lines(logging.Handler):
    """Keeps the records a logger gets."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def fields(self) -> list[dict[str, object]]:
        return [dict(r.bund) for r in self.records]  # type: ignore[attr-defined]


@pytest.fixture
def lines() -> Iterator[Lines]:
    logger = logging.getLogger("test.bund.jobs")
    handler = Lines()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)


def _store(clock: Clock, lines: Lines, every: float = 30.0) -> tuple[MemoryJobStore, AuditLog]:
    audit = AuditLog(MemoryAuditStore(), KEY, "bank", lambda: "2026-11-24T09:30:00.000000Z")
    store = MemoryJobStore(audit)
    store.add_observer(JobLog("bank", every, clock, logging.getLogger("test.bund.jobs")))
    return store, audit


def test_a_job_gets_a_line_per_lifecycle_record_with_protocol_peers_and_durations(
    lines: Lines,
) -> None:
    clock = Clock()
    store, _ = _store(clock, lines)
    job = _spec(1).job_id
    store.create(_spec(1), Event.JOB_SUBMITTED)
    store.transition(job, JobState.ACCEPTED, Event.JOB_ACCEPTED)
    clock.advance(2)
    store.transition(job, JobState.RUNNING, Event.JOB_STARTED, {Key.BY: "bank"})
    clock.advance(3)
    store.transition(job, JobState.FAILED, Event.JOB_FAILED, {Key.REASON: "tax\nleft"})
    store.record(job, Event.JOB_CLOSED, {Key.OUTCOME: "failed", Key.REASON: "tax\nleft"})
    got = lines.fields()
    assert [f["event"] for f in got] == [
        "job_submitted",
        "job_accepted",
        "job_started",
        "job_failed",
        "job_closed",
    ]
    for f in got:
        assert (f["job_id"], f["protocol"], f["peers"], f["role"]) == (
            job,
            "psi",
            ["tax"],
            "member",
        )
    assert got[2]["by"] == "bank" and got[2]["since_start_s"] == 0
    assert got[3]["state"] == "failed" and got[3]["reason"] == "tax\nleft"
    assert got[4]["outcome"] == "failed" and got[4]["since_start_s"] == 3
    assert "since_start_s" not in got[0] and "since_submit_s" in got[0]
    assert [r.levelno for r in lines.records][-2:] == [logging.WARNING, logging.WARNING]
    # The text line is one line, whatever a peer put in the reason.
    failed = lines.records[3].getMessage()
    assert "\n" not in failed
    assert failed.startswith(f"job {job} failed: protocol=psi role=member peers=tax state=failed ")
    assert 'reason="tax\\nleft"' in failed


def test_progress_is_logged_per_phase_at_its_end_and_at_most_once_per_interval(
    lines: Lines,
) -> None:
    clock = Clock()
    store, _ = _store(clock, lines, every=10)
    job = _spec(1).job_id
    store.create(_spec(1), Event.JOB_SUBMITTED)
    store.transition(job, JobState.ACCEPTED, Event.JOB_ACCEPTED)
    store.transition(job, JobState.RUNNING, Event.JOB_STARTED)
    for done in range(1, 101):  # a hundred updates within the interval: the first, the last
        store.progress(job, "blind", done, 100)
        clock.advance(0.01)
    store.progress(job, "match", 1, 50)  # a new phase
    clock.advance(10)
    store.progress(job, "match", 2, 50)  # the interval passed
    store.progress(job, "match", 3, 50)
    progress = [f for f in lines.fields() if f["event"] == "progress"]
    assert [(f["phase"], f["done"], f["total"]) for f in progress] == [
        ("blind", 1, 100),
        ("blind", 100, 100),
        ("match", 1, 50),
        ("match", 2, 50),
    ]


def test_json_lines_carry_the_job_fields_as_keys_and_text_lines_one_line_each() -> None:
    record = logging.LogRecord(
        "bund.jobs", logging.INFO, __file__, 1, "job %s started", ("j",), None
    )
    record.bund = {"job_id": "j", "event": "job_started", "peers": ["tax"], "state": "running"}
    doc = json.loads(JsonFormatter().format(record))
    assert doc["logger"] == "bund.jobs" and doc["level"] == "INFO"
    assert doc["message"] == "job j started" and doc["peers"] == ["tax"]
    assert doc["time"].endswith("Z")
    text = TextFormatter().format(record)
    assert text.endswith(" bund.jobs INFO job j started") and text[:4].isdigit()


def test_configure_logging_writes_json_lines_at_the_level_asked() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging(LoggingConfig(format="json", level="WARNING"), out)
        logging.getLogger("bund.test").info("not shown")
        logging.getLogger("bund.test").warning("shown %d", 1)
    finally:
        root.handlers[:], root.level = saved
    [line] = out.getvalue().splitlines()
    assert json.loads(line)["message"] == "shown 1"


def test_a_value_is_one_token_and_cannot_drive_a_terminal() -> None:
    assert text_value("bank") == "bank" and text_value(["a", "b"]) == "a,b"
    assert text_value("") == '""' and text_value(None) == "null" and text_value(True) == "true"
    assert text_value("a\x1b[2Jb\u202e") == '"a\\u001b[2Jb\\u202e"'
    assert text_value("交集 大小") == '"交集 大小"'


def test_job_records_pages_one_jobs_records_from_its_first() -> None:
    store = MemoryAuditStore()
    log = AuditLog(store, KEY, "bank", lambda: "2026-11-24T09:30:00.000000Z")
    a, b = "a" * 32, "b" * 32
    log.append("node_started", "", {})
    log.append("job_proposed", a, {"state": "proposed"})  # a job before the one asked for
    for i in range(5):
        log.append("rpc", "", {"n": i})
    log.append("job_submitted", b, {"state": "proposed"})
    for i in range(7):
        log.append("message_sent", b if i % 2 == 0 else a, {"n": i})
    log.append("job_closed", b, {"state": "succeeded"})
    first, following = job_records(store, b, limit=3, page=2)
    assert [r.event for r in first] == ["job_submitted", "message_sent", "message_sent"]
    rest, end = job_records(store, b, following, limit=10, page=2)
    assert end == 0
    assert [r.event for r in rest] == ["message_sent", "message_sent", "job_closed"]
    assert {r.job_id for r in first + rest} == {b}
    assert job_records(store, "c" * 32) == ([], 0)
    assert job_records(store, b, 10**9) == ([], 0)
    with pytest.raises(ValueError, match="at least 1"):
        job_records(store, b, limit=0)
