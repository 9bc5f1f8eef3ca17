"""The bundled demo datasets and their identifiers (docs/datasets.md, bund/parties/demo_data.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bund.parties.data import Table, load_csv
from bund.parties.demo_data import (
    DEMO_SEED,
    _org_code_check_char,
    generate_finance,
    generate_health,
    resident_id_check_char,
    uscc_check_char,
    write_demo_data,
)

DEMO_DIR = Path(__file__).resolve().parents[2] / "data" / "demo"
USCC_CHARSET = "0123456789ABCDEFGHJKLMNPQRTUWXY"


def demo(domain: str, name: str) -> Table:
    return load_csv(DEMO_DIR / domain / f"{name}.csv")


# -- identifiers ---------------------------------------------------------------------------------

PUBLISHED_USCCS = (
    "91350100M000100Y43",
    "91330100716105852F",
    "91440300708461136T",
    "91110108551385082Q",
)


@pytest.mark.parametrize("code", PUBLISHED_USCCS)
def test_uscc_check_chars_of_published_codes(code: str) -> None:
    assert uscc_check_char(code[:17]) == code[17]
    assert _org_code_check_char(code[8:16]) == code[16]


@given(
    st.text(USCC_CHARSET, min_size=17, max_size=17),
    st.integers(0, 16),
    st.integers(1, 30),
)
def test_uscc_check_char_detects_every_single_substitution(body: str, pos: int, step: int) -> None:
    changed = USCC_CHARSET[(USCC_CHARSET.index(body[pos]) + step) % 31]
    altered = body[:pos] + changed + body[pos + 1 :]
    assert uscc_check_char(altered) != uscc_check_char(body)


@pytest.mark.parametrize(
    "bad", ["91350100M000100Y", "91350100M000100Y43", "91350100I000100Y4", "9135010m0000100Y4"]
)
def test_uscc_check_char_refuses_bad_bodies(bad: str) -> None:
    with pytest.raises(ValueError, match="17 characters"):
        uscc_check_char(bad)


@pytest.mark.parametrize("number", ["11010519491231002X", "440524188001010014"])
def test_resident_id_check_chars_of_standard_examples(number: str) -> None:
    assert resident_id_check_char(number[:17]) == number[17]


@pytest.mark.parametrize("bad", ["1101051949123100", "1101051949123100X", "１１010519491231002"])
def test_resident_id_check_char_refuses_bad_bodies(bad: str) -> None:
    with pytest.raises(ValueError, match="17 digits"):
        resident_id_check_char(bad)


# -- demo data: reproducible ---------------------------------------------------------------------


def test_shipped_demo_data_regenerates_byte_identical(tmp_path: Path) -> None:
    written = write_demo_data(tmp_path)
    names = sorted(str(p.relative_to(tmp_path)) for p in written)
    assert names == sorted(str(p.relative_to(DEMO_DIR)) for p in DEMO_DIR.rglob("*.csv"))
    assert len(names) == 6
    for path in written:
        assert path.read_bytes() == (DEMO_DIR / path.relative_to(tmp_path)).read_bytes(), path
    assert sum(p.stat().st_size for p in written) < 3_000_000


def test_generators_are_pure_functions_of_the_seed() -> None:
    a, b, c = generate_finance(300, 7), generate_finance(300, 7), generate_finance(300, 8)
    assert a == b and a != c
    assert generate_health(50, 7) == generate_health(50, 7) != generate_health(50, 8)
    with pytest.raises(ValueError, match="n_companies"):
        generate_finance(9, 1)
    with pytest.raises(ValueError, match="n_per_hospital"):
        generate_health(19, 1)
    with pytest.raises(ValueError, match="scale"):
        write_demo_data(Path("unused"), scale=0)


# -- demo data: finance --------------------------------------------------------------------------


def test_finance_overlaps_are_as_documented() -> None:
    ids = {
        n: demo("finance", n).column("company_id")
        for n in ("loan_book", "tax_filings", "business_registry")
    }
    bank, tax, registry = (set(ids[n]) for n in ("loan_book", "tax_filings", "business_registry"))
    assert all(len(set(v)) == len(v) for v in ids.values()), "ids are unique within a table"
    assert all(list(v) == sorted(v) for v in ids.values()), "rows are sorted by id"
    assert len(bank) == 2000
    assert 0.70 <= len(bank & tax) / len(bank) <= 0.80
    assert 0.90 <= len(bank & registry) / len(bank) <= 0.97
    assert tax <= registry, "tax and registry share one jurisdiction"
    assert 1000 <= len(tax - bank) <= 1500
    assert 4500 <= len(registry) <= 4900
    assert {c[2:4] for c in bank - registry} <= {"32", "33"}, (
        "the bank alone lends outside Shanghai"
    )
    assert {c[2:4] for c in registry} == {"31"}
    for code in bank | tax | registry:
        assert len(code) == 18 and code.startswith("91")
        assert uscc_check_char(code[:17]) == code[17]
        assert _org_code_check_char(code[8:16]) == code[16]


def test_finance_columns_and_base_rate() -> None:
    loans = demo("finance", "loan_book")
    assert 0.08 <= loans.numeric("default_12m").mean() <= 0.15
    assert set(loans.numeric("collateral")) == {0.0, 1.0}
    tax = demo("finance", "tax_filings")
    assert set(tax.column("tax_credit_grade")) == {"A", "B", "C", "D", "M"}
    registry = demo("finance", "business_registry")
    assert Counter(registry.column("industry_code")).most_common(1)[0][0] == "F"
    assert np.all(registry.numeric("insured_staff") <= registry.numeric("employees"))
    age = registry.numeric("company_age_years")
    new_style = np.array([c[8:10] == "MA" for c in registry.column("company_id")])
    assert new_style[age < 10.1].all() and not new_style[age > 10.3].any(), "USCC reform of 2015"


BANK_FEATURES = [
    "loan_amount_10k_cny", "term_months", "interest_rate_pct", "collateral",
    "years_as_customer", "overdue_count_12m", "avg_monthly_turnover_10k_cny",
]  # fmt: skip
TAX_FEATURES = [
    "annual_revenue_10k_cny", "vat_paid_10k_cny", "revenue_growth_pct", "invoice_count",
    "filing_delays_12m", "tax_credit_score",
]  # fmt: skip
REGISTRY_FEATURES = [
    "registered_capital_10k_cny", "company_age_years", "employees", "insured_staff",
    "legal_rep_changes_3y", "admin_penalties_3y", "abnormal_operation",
]  # fmt: skip


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    pos, neg = score[y == 1], score[y == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def held_out_auc(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    """Standardise on the training rows, fit L2 logistic regression by gradient descent."""
    mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-12
    z = (x - mean) / std
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(400):
        p = 1.0 / (1.0 + np.exp(-(z[train] @ w + b)))
        w -= 0.5 * (z[train].T @ (p - y[train]) / len(train) + 1e-3 * w)
        b -= 0.5 * float(np.mean(p - y[train]))
    return auc(y[test], z[test] @ w + b)


def joint_vs_bank_auc(tables: dict[str, Table]) -> tuple[float, float]:
    """Join the three parties on company id (what PSI gives), compare bank-only with joint."""
    loans, tax, registry = tables["loan_book"], tables["tax_filings"], tables["business_registry"]
    row = {n: {c: i for i, c in enumerate(tables[n].column("company_id"))} for n in tables}
    common = [
        c
        for c in loans.column("company_id")
        if c in row["tax_filings"] and c in row["business_registry"]
    ]

    def features(table: Table, names: list[str]) -> np.ndarray:
        rows = [row[table.name][c] for c in common]
        return np.column_stack([table.numeric(n)[rows] for n in names])

    y = features(loans, ["default_12m"])[:, 0]
    bank = features(loans, BANK_FEATURES)
    joint = np.hstack([bank, features(tax, TAX_FEATURES), features(registry, REGISTRY_FEATURES)])
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[: len(y) * 7 // 10], order[len(y) * 7 // 10 :]
    return held_out_auc(bank, y, train, test), held_out_auc(joint, y, train, test)


def test_joint_model_beats_the_bank_alone_on_the_shipped_data() -> None:
    tables = {n: demo("finance", n) for n in ("loan_book", "tax_filings", "business_registry")}
    bank_auc, joint_auc = joint_vs_bank_auc(tables)
    assert 0.60 <= bank_auc <= 0.75, bank_auc
    assert joint_auc >= bank_auc + 0.05, (bank_auc, joint_auc)


def test_joint_model_beats_the_bank_alone_at_scale() -> None:
    bank_auc, joint_auc = joint_vs_bank_auc(generate_finance(25_000, seed=DEMO_SEED + 1))
    assert joint_auc >= bank_auc + 0.08, (bank_auc, joint_auc)


# -- demo data: health ---------------------------------------------------------------------------

HOSPITALS = ("hospital_a", "hospital_b", "hospital_c")
CUTOFF = np.datetime64("2025-12-31")


def days(table: Table, column: str) -> np.ndarray:
    return np.array(table.column(column), dtype="datetime64[D]")


def test_health_outcomes_behave_like_censored_survival_data() -> None:
    for name in HOSPITALS:
        t = demo("health", name)
        event, follow_up = t.numeric("event"), t.numeric("follow_up_days")
        assert 0.05 <= event.mean() <= 0.35, name
        assert 365 <= np.median(follow_up) <= 2190, name
        assert follow_up.min() >= 1 and set(event) == {0.0, 1.0}
        end = days(t, "index_date") + follow_up.astype("timedelta64[D]")
        assert np.all(end <= CUTOFF)
        assert (end[event == 0] >= CUTOFF).mean() > 0.5, "most censoring is at the data cut-off"
    pooled = {
        c: np.concatenate([demo("health", n).numeric(c) for n in HOSPITALS])
        for c in ("age", "event")
    }
    assert (
        pooled["event"][pooled["age"] >= 70].mean() > 2 * pooled["event"][pooled["age"] < 55].mean()
    )
    dx = np.concatenate([demo("health", n).column("diagnosis") for n in HOSPITALS])
    assert pooled["event"][dx == "I50"].mean() > 2 * pooled["event"][dx == "I10"].mean()


def test_hospitals_have_different_case_mixes() -> None:
    t = {n: demo("health", n) for n in HOSPITALS}
    assert all(t[n].columns == t["hospital_a"].columns for n in HOSPITALS)
    age = {n: t[n].numeric("age").mean() for n in HOSPITALS}
    assert age["hospital_a"] > age["hospital_c"] > age["hospital_b"]
    assert age["hospital_a"] - age["hospital_b"] > 7

    def share(n: str, prefix: str) -> float:
        return float(np.mean([d.startswith(prefix) for d in t[n].column("diagnosis")]))

    assert share("hospital_a", "I") > 0.85 > share("hospital_b", "I")
    assert share("hospital_c", "E1") > 0.5 > 0.2 > share("hospital_b", "E1")
    hba1c = {n: t[n].numeric("hba1c_pct").mean() for n in HOSPITALS}
    assert hba1c["hospital_c"] > max(hba1c["hospital_a"], hba1c["hospital_b"]) + 0.7
    events = {n: t[n].numeric("event").mean() for n in HOSPITALS}
    assert events["hospital_a"] > events["hospital_b"]


def test_patient_ids_are_valid_and_shared_patients_are_one_person() -> None:
    t = {n: demo("health", n) for n in HOSPITALS}
    records: dict[str, list[tuple[str, np.datetime64, np.datetime64, int]]] = {}
    for name, table in t.items():
        ids = table.column("patient_id")
        assert len(set(ids)) == len(ids)
        ends = days(table, "index_date") + table.numeric("follow_up_days").astype("timedelta64[D]")
        for i, pid in enumerate(ids):
            assert pid.startswith("99") and resident_id_check_char(pid[:17]) == pid[17]
            assert int(pid[16]) % 2 == (table.column("sex")[i] == "M")
            born = np.datetime64(f"{pid[6:10]}-{pid[10:12]}-{pid[12:14]}")
            index = days(table, "index_date")[i]
            assert abs((index - born).astype(int) / 365.25 - float(table.column("age")[i])) <= 1
            records.setdefault(pid, []).append((name, born, ends[i], int(table.column("event")[i])))
    shared = Counter(tuple(sorted(n for n, *_ in r)) for r in records.values() if len(r) > 1)
    assert shared == {
        ("hospital_a", "hospital_b"): 120,
        ("hospital_b", "hospital_c"): 90,
        ("hospital_a", "hospital_c"): 60,
    }
    for pid, recs in records.items():
        deaths = {end for _, _, end, event in recs if event}
        assert len(deaths) <= 1, f"{pid} dies once"
        assert all(end <= d for d in deaths for _, _, end, _ in recs), (
            f"{pid} is seen alive after death"
        )


@pytest.mark.parametrize("applicants", [-1, 10**6])
def test_applicants_out_of_range_are_refused(applicants: int) -> None:
    with pytest.raises(ValueError, match="applicants must be in"):
        generate_finance(200, 1, applicants=applicants)
