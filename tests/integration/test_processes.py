"""The demo itself: three `bund serve` processes over mTLS, PSI, the credit model, audit checks."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from rich.console import Console

from parties.demo import DEMO_APPLICANTS, PARTIES, run_demo

pytestmark = pytest.mark.integration


def _ids(path: Path, column: str) -> set[str]:
    with path.open(encoding="utf-8", newline="") as f:
        return {row[column].strip() for row in csv.DictReader(f)}


def test_demo_psi_between_node_processes_matches_plaintext(tmp_path: Path) -> None:
    console = Console(record=True, width=120)
    outcome = run_demo(tmp_path / "demo", console)
    bank, tax = PARTIES[0], PARTIES[1]
    expected = _ids(outcome.data_dir / bank.csv, bank.id_column) & _ids(
        outcome.data_dir / tax.csv, tax.id_column
    )
    assert expected, "demo data must overlap"
    assert sorted(outcome.intersection) == sorted(expected)
    assert outcome.summary["intersection_size"] == len(expected)
    # Each node wrote and verified its log; the registry took no part but started and stopped.
    assert set(outcome.audit_records) == {"bank", "tax", "registry"}
    assert all(n >= 2 for n in outcome.audit_records.values())
    text = console.export_text()
    assert "intersection" in text and "verified" in text
    # The credit-model workflow ran after PSI: joint beats bank-only, applicants were scored.
    assert list(outcome.credit) == ["screening", "training", "scoring"]
    training, scoring = outcome.credit["training"], outcome.credit["scoring"]
    assert training["auc"] > training["auc_bank_only"] + 0.05, training  # type: ignore[operator]
    assert scoring["applicants"] == DEMO_APPLICANTS
    assert 0 < scoring["scored"] < DEMO_APPLICANTS  # type: ignore[operator]
    applicants = _ids(outcome.data_dir / "finance" / "applicants.csv", bank.id_column)
    providers = [_ids(outcome.data_dir / p.csv, p.id_column) for p in PARTIES[1:]]
    assert scoring["scored"] == len(applicants.intersection(*providers))
    scores = outcome.root / "bank" / "credit-results" / "scoring" / "scores.csv"
    assert len(scores.read_text().splitlines()) == DEMO_APPLICANTS + 1
    assert "bank only" in text and "joint" in text and "AUC" in text
