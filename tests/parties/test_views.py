"""The read commands' JSON documents and record lines, and ``bund --version``."""

from __future__ import annotations

import json
from fractions import Fraction

from typer.testing import CliRunner

from bund.compute.dp.budget import Budget
from bund.parties.audit import AuditRecord, VerificationReport
from bund.parties.cli import app
from bund.parties.ledger import BudgetLine
from bund.parties.lifecycle.store import ResultInfo
from bund.parties.oplog import version
from bund.parties.views import (
    budget_document,
    dumps,
    is_message_record,
    record_document,
    record_line,
    result_document,
    verify_document,
)


def _record(event: str, fields: dict[str, object]) -> AuditRecord:
    return AuditRecord(
        index=7,
        timestamp="2026-11-24T09:30:00.000000Z",
        party="bank",
        event=event,
        job_id="a" * 32,
        fields=fields,  # type: ignore[arg-type]
        prev_hash=bytes(32),
        record_hash=bytes(32),
        signature=bytes(64),
    )


def test_version_prints_the_installed_version() -> None:
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout == f"bund {version()}\n"


def test_a_record_is_one_line_and_one_json_object() -> None:
    record = _record("job_refused", {"reason": "no budget\nleft", "state": "refused"})
    assert record_line(record) == (
        '2026-11-24T09:30:00.000000Z #7 job_refused reason="no budget\\nleft" state=refused'
    )
    doc = json.loads(dumps(record_document(record)))
    assert doc["fields"] == {"reason": "no budget\nleft", "state": "refused"}
    assert doc["index"] == 7 and doc["event"] == "job_refused"
    assert is_message_record(_record("message_sent", {}))
    assert not is_message_record(record) and not is_message_record(_record("protocol_x", {}))


def test_budgets_stay_exact_and_a_nan_is_null() -> None:
    line = BudgetLine("loans", Budget(Fraction(5, 2), Fraction(1, 10**6)), Budget(Fraction(1, 3)))
    [doc] = budget_document([line], {"loans": "restricted-personal"})["datasets"]  # type: ignore[index]
    assert doc["left"] == {"epsilon": "13/6", "delta": "1/1000000"}
    assert doc["spent"] == {"epsilon": "1/3", "delta": "0"}
    result = result_document("j", ResultInfo({"auc": float("nan"), "n": 3}, {"a.csv": 2}))
    assert json.loads(dumps(result))["summary"] == {"auc": None, "n": 3}
    assert result["artifacts"] == [{"name": "a.csv", "bytes": 2, "path": None}]


def test_a_failed_verification_names_its_record_or_why_it_could_not_run() -> None:
    bad = verify_document(VerificationReport(False, 4, 4, "bad signature"), "audit.db")
    assert bad == {
        "ok": False,
        "log": "audit.db",
        "records": 4,
        "first_bad_index": 4,
        "reason": "bad signature",
    }
    unread = verify_document(None, "bank's node", "bank did not answer")
    assert unread["ok"] is False and unread["reason"] == "bank did not answer"
