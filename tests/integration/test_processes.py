"""The demo itself: `bund serve` processes over mTLS, finance then health jobs, audit checks.

The demo runs once for this module; each test checks one part of what it released against the
plaintext demo data.
"""

from __future__ import annotations

import csv
import dataclasses
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from bund.compute import insecure
from bund.compute.learn import fed
from bund.compute.learn.risk_model import model_from_columns
from bund.parties.data import load_csv
from bund.parties.demo import (
    COHORT_FLOOR,
    COHORT_QUERY,
    COX_PARAMS,
    DEMO_APPLICANTS,
    FED_PARAMS,
    HOSPITALS,
    INSURER,
    LOGRANK_QUERY,
    PARTIES,
    SURVIVAL_QUERY,
    DemoOutcome,
    cox_spec,
    dp_spec,
    run_demo,
)
from bund.parties.jobs import run_in_memory
from bund.parties.protocols import ckks_scoring, cox_ph, dp_stats

pytestmark = pytest.mark.integration

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoOutcome, str]:
    """Run the whole demo once: its outcome and everything it printed."""
    console = Console(record=True, width=120)
    outcome = run_demo(tmp_path_factory.mktemp("demo") / "demo", console)
    return outcome, console.export_text()


def _ids(path: Path, column: str) -> set[str]:
    with path.open(encoding="utf-8", newline="") as f:
        return {row[column].strip() for row in csv.DictReader(f)}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_demo_psi_between_node_processes_matches_plaintext(demo: tuple[DemoOutcome, str]) -> None:
    outcome, text = demo
    bank, tax = PARTIES[0], PARTIES[1]
    expected = _ids(outcome.data_dir / bank.csv, bank.id_column) & _ids(
        outcome.data_dir / tax.csv, tax.id_column
    )
    assert expected, "demo data must overlap"
    assert sorted(outcome.intersection) == sorted(expected)
    assert outcome.summary["intersection_size"] == len(expected)
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


def test_every_demo_node_log_verified_and_reconciled(demo: tuple[DemoOutcome, str]) -> None:
    outcome, text = demo
    names = {p.name for p in (*PARTIES, *HOSPITALS, INSURER)}
    # Each node wrote and verified its log; the registry took no part in PSI but in the workflow.
    assert set(outcome.audit_records) == names
    assert all(n >= 2 for n in outcome.audit_records.values())
    assert text.count("all logs verified and reconciled") == 2  # finance, then health
    for report in ("finance-report.html", "health-report.html"):
        assert (outcome.root / "regulator" / report).stat().st_size > 0


def test_demo_dp_cohort_table_is_noisy_truth_above_the_floor(
    demo: tuple[DemoOutcome, str],
) -> None:
    outcome, _ = demo
    rows = _rows(outcome.health_results / "cohort" / "result.csv")
    diagnoses = str(COHORT_QUERY["categories"]).split("|")
    sexes = str(COHORT_QUERY["categories2"]).split("|")
    assert [(r["diagnosis"], r["sex"]) for r in rows] == [(d, s) for d in diagnoses for s in sexes]
    exact = dict.fromkeys(((d, s) for d in diagnoses for s in sexes), 0)
    for hospital in HOSPITALS:
        for r in _rows(outcome.data_dir / hospital.csv):
            key = (r["diagnosis"], r["sex"])
            if int(r["age"]) >= 65 and key in exact:
                exact[key] += 1
    (noise,) = dp_stats.plan(dp_spec(COHORT_QUERY, "check")).noises()  # every hospital's draw
    band = noise.half_width(1 - 1e-9)  # a cell's noise exceeds it with probability 1e-9
    suppressed = 0
    for r in rows:
        truth = exact[(r["diagnosis"], r["sex"])]
        if r["count"] == "suppressed":
            suppressed += 1
            assert truth < COHORT_FLOOR + band, r
        else:
            assert int(r["count"]) >= COHORT_FLOOR, r
            assert abs(int(r["count"]) - truth) <= band, (r, truth)
    assert outcome.health["cohort"]["suppressed_cells"] == suppressed
    assert outcome.health["cohort"]["epsilon"] == COHORT_QUERY["epsilon"]


def test_demo_kaplan_meier_curve_is_a_png(demo: tuple[DemoOutcome, str]) -> None:
    outcome, _ = demo
    assert (outcome.health_results / "survival" / "survival.png").read_bytes()[:8] == PNG_MAGIC
    rows = _rows(outcome.health_results / "survival" / "result.csv")
    assert len(rows) == SURVIVAL_QUERY["bins"]
    released = [float(r["survival"]) for r in rows if r["survival"] != "suppressed"]
    assert released and all(0 <= s <= 1 for s in released)


def test_demo_log_rank_counts_each_sexs_deaths_within_the_noise(
    demo: tuple[DemoOutcome, str],
) -> None:
    outcome, text = demo
    summary = outcome.health["logrank"]
    assert summary["logrank_df"] == 1 and 0 <= summary["logrank_p_value"] <= 1  # type: ignore[operator]
    bins, upper = int(LOGRANK_QUERY["bins"]), int(str(LOGRANK_QUERY["upper"]))  # type: ignore[call-overload]
    (noise,) = dp_stats.plan(dp_spec(LOGRANK_QUERY, "check")).noises()
    band = bins * noise.half_width(1 - 1e-9)  # each bin's deaths carry one summed draw
    for sex in str(LOGRANK_QUERY["categories2"]).split("|"):
        deaths = sum(
            1
            for h in HOSPITALS
            for r in _rows(outcome.data_dir / h.csv)
            if r["sex"] == sex and r["event"] == "1" and float(r["follow_up_days"]) <= upper
        )
        assert abs(float(summary[f"logrank_observed_{sex}"]) - deaths) <= band  # type: ignore[arg-type]
    rows = _rows(outcome.health_results / "logrank" / "result.csv")
    assert [r["stratum"] for r in rows] == ["F"] * bins + ["M"] * bins
    assert "DP log-rank test by sex" in text


def test_demo_cox_model_is_the_noise_off_model_within_its_stated_noise(
    demo: tuple[DemoOutcome, str],
) -> None:
    """The demo's noisy one-step model between node processes against the same step noise-off."""
    outcome, text = demo
    summary = outcome.health["cox"]
    parts = (COX_PARAMS["epsilon"], COX_PARAMS["concordance_epsilon"])
    assert Fraction(str(summary["epsilon"])) == sum(Fraction(str(e)) for e in parts)
    assert (outcome.health_results / "cox" / "hazard_ratios.png").read_bytes()[:8] == PNG_MAGIC
    noisy = _rows(outcome.health_results / "cox" / "coefficients.csv")
    insecure.enable_insecure_test_parameters()  # the conftest fixture turns it off again
    spec = cox_spec()
    spec = dataclasses.replace(spec, params={**spec.params, "noise": "off"})
    tables = {h.name: load_csv(outcome.data_dir / h.csv) for h in HOSPITALS}
    exact = run_in_memory(spec, cox_ph.DEFINITION, tables)[INSURER.name]
    assert exact is not None
    reference = _rows_of(exact.artifacts["coefficients.csv"])
    assert [r["covariate"] for r in noisy] == [r["covariate"] for r in reference]
    for got, want in zip(noisy, reference, strict=True):
        se_noise = float(got["se_noise"])
        assert 0 < se_noise <= float(got["se"])
        assert abs(float(got["coef"]) - float(want["coef"])) <= 5 * se_noise, (got, want)
        assert float(got["hr_lower_95"]) < float(got["hazard_ratio"]) < float(got["hr_upper_95"])
    assert "DP Cox model" in text and "hazard_ratios.png" in text


def _rows_of(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(data.decode().splitlines()))


def test_demo_encrypted_scores_match_the_plaintext_model(demo: tuple[DemoOutcome, str]) -> None:
    outcome, _ = demo
    summary = outcome.health["scoring"]
    patients = load_csv(outcome.data_dir / HOSPITALS[1].csv)
    scores = {
        r["patient_id"]: float(r["score"])
        for r in _rows(outcome.health_results / "scoring" / "scores.csv")
    }
    assert len(scores) == summary["patients"] == patients.num_rows
    assert all(0 <= s <= 1 for s in scores.values())
    model = model_from_columns(
        load_csv(outcome.data_dir / INSURER.csv).data, ckks_scoring.DEMO_FEATURES
    )
    x = np.column_stack([patients.numeric(f) for f in ckks_scoring.DEMO_FEATURES])
    expected = dict(zip(patients.column("patient_id"), model.scores(x).tolist(), strict=True))
    assert scores.keys() == expected.keys()
    bound = float(summary["score_error_bound"])  # type: ignore[arg-type]
    assert 0 < bound <= ckks_scoring.DEFAULT_TOLERANCE["logistic"]
    # scores.csv rounds each released score to 6 decimals: half a unit more.
    assert max(abs(scores[p] - expected[p]) for p in scores) <= bound + 5e-7


def test_demo_federated_training_charges_the_accountants_epsilon(
    demo: tuple[DemoOutcome, str],
) -> None:
    outcome, _ = demo
    summary = outcome.health["training"]
    assert summary["rounds_run"] == FED_PARAMS["rounds"] == 3
    history = _rows(outcome.health_results / "training" / "history.csv")
    assert [int(h["round"]) for h in history if h["kind"] == "train"] == [0, 1, 2]
    curves = outcome.health_results / "training" / "training_curves.png"
    assert curves.read_bytes()[:8] == PNG_MAGIC
    steps = 3 * int(FED_PARAMS["local_steps"])  # type: ignore[arg-type]
    rate, sigma = float(FED_PARAMS["sample_rate"]), float(FED_PARAMS["noise_multiplier"])  # type: ignore[arg-type]
    accountant = fed.epsilon_bound(fed.epsilon_spent(sigma, rate, steps, 1e-5, "rdp"))
    assert 3 < accountant < 4
    evaluations = 3 * Fraction(str(FED_PARAMS["eval_epsilon"]))  # one per trained model
    for hospital in HOSPITALS:
        assert Fraction(str(summary[f"epsilon_training_{hospital.name}"])) == accountant
        assert Fraction(str(summary[f"epsilon_{hospital.name}"])) == accountant + evaluations
    # history.csv is for people: ε as a decimal, rounded up (the summary keeps it exact).
    last = Fraction(history[-1]["epsilon"])
    assert "/" not in history[-1]["epsilon"]
    assert 0 <= last - (accountant + evaluations) < Fraction(1, 100)
    evaluated = [h for h in history if h["auc"]]
    assert [int(h["round"]) for h in evaluated] == [1, 2, 3]
    for h in evaluated:  # noisy, but a held-out AUC and log-loss with their noise bands
        assert 0 <= float(h["auc"]) <= 1 and 0 < float(h["auc_band"]) < 0.15
        assert 0 < float(h["log_loss"]) < 1 and 0 < float(h["log_loss_band"]) < 0.1
