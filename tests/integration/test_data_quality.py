"""Data-quality counts reach their owner's receipt and log, and nothing any peer receives.

Two in-process nodes run PSI over mTLS on datasets with blank lines, blank ids and repeated ids,
each party with its own distinct counts. Every payload one node sends another (requests, answers
and errors, as the canary test records them) is searched for the counts' names.
"""

from __future__ import annotations

import json
import logging

import pytest

from bund.parties.lifecycle.states import JobState
from tests.conftest import NodeFactory
from tests.integration.test_canary import Sent, install_capture
from tests.integration.test_node import BANK_IDS, TAX_IDS, psi_spec, wait_final

#: Each party's counts: blank lines between rows of its CSV file, blank ids, repeated ids.
COUNTS = {
    "bank": {"blank_lines_skipped": 2, "blank_ids_skipped": 3, "duplicate_ids_dropped": 5},
    "tax": {"blank_lines_skipped": 0, "blank_ids_skipped": 1, "duplicate_ids_dropped": 7},
}
NAMES = (b"quality", b"blank_lines_skipped", b"blank_ids_skipped", b"duplicate_ids_dropped")


def ids(base: list[str], counts: dict[str, int]) -> list[str]:
    """``base`` with blank ids (one padded with spaces) and repeats (one differing by a space)."""
    blanks = ["", "  ", ""][: counts["blank_ids_skipped"]] or []
    repeats = [base[0] + " ", *base[1 : counts["duplicate_ids_dropped"]]]
    return base[:10] + blanks + base[10:] + repeats


def test_quality_counts_reach_the_owners_receipt_and_log_and_no_peer(
    node_factory: NodeFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sent: list[Sent] = []
    install_capture(monkeypatch, sent)
    caplog.set_level(logging.WARNING)
    bank_config = node_factory.write_config(
        "bank", {"loans": {"company_id": ids(BANK_IDS, COUNTS["bank"])}}, ("tax",)
    )
    csv_path = bank_config.parent / "loans.csv"
    lines = csv_path.read_text(encoding="utf-8").split("\n")
    csv_path.write_text("\n".join([*lines[:4], "", "", *lines[4:]]), encoding="utf-8")
    node_factory.run("bank", bank_config)
    node_factory.start("tax", {"filings": {"uscc": ids(TAX_IDS, COUNTS["tax"])}}, ("bank",))

    with node_factory.client("bank") as bank:
        job_id = bank.submit(psi_spec())
        assert wait_final(bank, job_id).state is JobState.SUCCEEDED
        node_factory.wait_closed(job_id)
        result = bank.result(job_id)
    assert result.summary["intersection_size"] == 30

    for party, counts in COUNTS.items():
        (receipt,) = [
            dict(r.fields)
            for r in node_factory.nodes[party].audit_store.read()
            if r.event == "privacy_receipt" and r.job_id == job_id
        ]
        assert {k: v for k, v in receipt.items() if k.startswith("quality.")} == {
            f"quality.{name}": count for name, count in counts.items()
        }, party
    receipt_json = json.loads(result.artifacts["receipt.json"])
    assert receipt_json["quality.duplicate_ids_dropped"] == 5  # the bank's own, in its result
    assert receipt_json["quality.blank_ids_skipped"] == 3

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for party, counts in COUNTS.items():
        for name, count in counts.items():
            line = f"job {job_id}: {party}'s dataset "
            found = [w for w in warnings if w.startswith(line) and f"{name} = {count} " in w]
            assert bool(found) == (count > 0), (party, name)

    between_nodes = [s for s in sent if s.sender != s.receiver]
    assert any(b"psi/header" in s.data for s in between_nodes)  # the capture sees the job
    assert {s.what for s in between_nodes} >= {
        "ProposeJob",
        "StartJob",
        "Deliver",
        "Deliver answer",
    }
    leaks = [(s.sender, s.receiver, s.what, n) for s in between_nodes for n in NAMES if n in s.data]
    assert not leaks
