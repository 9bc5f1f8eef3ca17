"""The synthetic demo datasets: inclusive finance and health, drawn from a seed.

``generate_finance`` (a bank's SME loan book, tax filings, business-registry records) and
``generate_health`` (three hospitals' patients) are seeded, pure functions of their arguments;
``write_demo_data`` writes both as the CSV files a demo node serves (the shipped ``data/demo``,
or a larger set through ``bund data generate``). The identifiers they draw are valid Unified
Social Credit Codes and resident-id-like numbers, so ``uscc_check_char`` and
``resident_id_check_char`` live here too. ``docs/datasets.md`` describes every column, the
overlaps between parties and how the labels are generated.

Demo data only: the demo, ``bund data generate``, tests and benchmarks import this module; a
node reads its datasets through ``bund.parties.data``. The numpy generator here is seeded for
reproducibility, never for secrecy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bund.parties.data import Table, write_csv

DEMO_SEED = 20261124
"""The seed of the shipped demo CSVs under ``data/demo``."""

DEMO_COMPANIES_PER_SCALE = 5000
"""Companies in the finance universe per unit of ``write_demo_data``'s ``scale``."""

DEMO_PATIENTS_PER_SCALE = 1500
"""Patient records per hospital per unit of ``write_demo_data``'s ``scale``."""

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


# -- identifiers ---------------------------------------------------------------------------------

_USCC_CHARSET = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # GB 32100-2015: no I, O, S, V, Z
_USCC_WEIGHTS = tuple(pow(3, i, 31) for i in range(17))  # 1, 3, 9, 27, 19, 26, 16, ...
_ORG_CODE_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)  # GB 11714-1997
_RESIDENT_ID_WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))  # 7, 9, 10, 5, 8, 4, ...


def uscc_check_char(code17: str) -> str:
    """The 18th character of a Unified Social Credit Code (统一社会信用代码), per GB 32100-2015.

    Each of the 17 characters has its index in ``0-9A-Y`` without I, O, S, V, Z as its value;
    the check value is ``31 - (sum of value * 3**i mod 31) mod 31``, with 31 written as ``0``.

    Args:
        code17: the first 17 characters of the code.

    Returns:
        The check character.

    Raises:
        ValueError: if ``code17`` is not 17 characters of the code's alphabet.

    >>> uscc_check_char("91350100M000100Y4")
    '3'
    """
    if len(code17) != 17 or any(c not in _USCC_CHARSET for c in code17):
        raise ValueError(f"a USCC body is 17 characters of {_USCC_CHARSET}, not {code17!r}")
    total = sum(_USCC_CHARSET.index(c) * w for c, w in zip(code17, _USCC_WEIGHTS, strict=True))
    return _USCC_CHARSET[-total % 31]


def _org_code_check_char(body8: str) -> str:
    """The 9th character of an organisation code (GB 11714-1997), USCC characters 9 to 17."""
    total = sum(int(c, 36) * w for c, w in zip(body8, _ORG_CODE_WEIGHTS, strict=True))
    check = -total % 11
    return "X" if check == 10 else str(check)


def resident_id_check_char(id17: str) -> str:
    """The 18th character of a resident identity number (GB 11643-1999, ISO 7064 MOD 11-2).

    Args:
        id17: the first 17 digits: region, birth date ``YYYYMMDD``, sequence number.

    Returns:
        The check character, a digit or ``X``.

    Raises:
        ValueError: if ``id17`` is not 17 digits.

    >>> resident_id_check_char("11010519491231002")
    'X'
    """
    if len(id17) != 17 or not id17.isascii() or not id17.isdigit():
        raise ValueError(f"a resident id body is 17 digits, not {id17!r}")
    total = sum(int(c) * w for c, w in zip(id17, _RESIDENT_ID_WEIGHTS, strict=True))
    return "10X98765432"[total % 11]


# -- formatting helpers for the generators -------------------------------------------------------


def _fixed(values: FloatArray, decimals: int) -> list[str]:
    return [f"{v:.{decimals}f}" for v in values]


def _ints(values: npt.NDArray[np.generic]) -> list[str]:
    return [str(int(v)) for v in values]


def _sigmoid(x: FloatArray) -> FloatArray:
    return 1.0 / (1.0 + np.exp(-x))


# -- finance demo --------------------------------------------------------------------------------

# Registration districts: Shanghai (the registry's and tax bureau's jurisdiction) and a few
# Yangtze-delta neighbours where the bank also lends. Weights are roughly firm counts.
_SHANGHAI_DISTRICTS = {
    "310101": 6, "310104": 5, "310105": 4, "310106": 6, "310107": 4, "310109": 3, "310110": 4,
    "310112": 9, "310113": 6, "310114": 8, "310115": 18, "310116": 4, "310117": 8, "310118": 6,
    "310120": 6, "310151": 3,
}  # fmt: skip
_NEIGHBOUR_DISTRICTS = ("320505", "320506", "320583", "330106", "330212")
_NEIGHBOUR_SHARE = 0.06
_BANK_SHARE = 0.40
_TAX_SHARE_OF_BANK_CUSTOMERS = 0.80
_TAX_SHARE_OF_OTHERS = 0.45
_SNAPSHOT_YEAR = 2025.99  # features are as of 2025-12-31

# GB/T 4754-2017 sections common among SMEs: share of firms, default log-odds offset.
_INDUSTRIES = {
    "A": (0.02, 0.40),  # agriculture, forestry, animal husbandry and fishery
    "C": (0.22, 0.00),  # manufacturing
    "E": (0.07, 0.35),  # construction
    "F": (0.30, 0.10),  # wholesale and retail trade
    "G": (0.05, 0.10),  # transport, storage and post
    "H": (0.06, 0.45),  # accommodation and catering
    "I": (0.10, -0.30),  # information transmission, software and IT services
    "K": (0.02, 0.50),  # real estate
    "L": (0.09, 0.00),  # leasing and business services
    "M": (0.05, -0.30),  # scientific research and technical services
    "R": (0.02, 0.20),  # culture, sports and entertainment
}


def _company_ids(
    rng: np.random.Generator, districts: Sequence[str], founded: FloatArray
) -> list[str]:
    """Unique USCCs ``91`` + district + organisation code + check character.

    Firms founded after the USCC reform (late 2015) get a new-style ``MA...`` organisation code,
    older ones an 8-digit legacy code; both carry their GB 11714 check character.
    """
    ids: list[str] = []
    seen: set[str] = set()
    for district, year in zip(districts, founded, strict=True):
        while True:
            if year >= 2015.8:
                body = "MA" + "".join(_USCC_CHARSET[i] for i in rng.integers(0, 31, 6))
            else:
                body = "".join(str(d) for d in rng.integers(0, 10, 8))
            code17 = f"91{district}{body}{_org_code_check_char(body)}"
            code = code17 + uscc_check_char(code17)
            if code not in seen:
                break
        seen.add(code)
        ids.append(code)
    return ids


def generate_finance(n_companies: int, seed: int, applicants: int = 0) -> dict[str, Table]:
    """The inclusive-finance demo: a bank's SME loan book, tax filings and registry records.

    A universe of ``n_companies`` firms, each with a hidden financial health, is drawn; the bank
    lends to 40% of them, the tax bureau holds filings of ~80% of the bank's Shanghai borrowers
    and ~45% of other Shanghai firms (those that authorised bank-tax data sharing), the registry
    holds every Shanghai firm (94% of the universe). The bank's 12-month default label follows a
    logistic model of the hidden health, which tax and registry features reflect far better than
    the bank's own, so a joint model beats a bank-only one. ``docs/datasets.md`` has the details.

    Args:
        n_companies: size of the firm universe (at least 10).
        seed: the generator seed; equal arguments give equal tables.
        applicants: if positive, also an ``applicants`` table: that many firms that are not yet
            the bank's borrowers, with the loan book's columns but no label (to score); the
            other tables are the same as without it.

    Returns:
        ``{"loan_book", "tax_filings", "business_registry"}`` tables (and ``applicants``), rows
        sorted by company id.

    Raises:
        ValueError: if ``n_companies`` is below 10, or ``applicants`` is negative or more than
            the firms outside the loan book.

    >>> tables = generate_finance(200, seed=1)
    >>> sorted(tables), tables["loan_book"].num_rows
    (['business_registry', 'loan_book', 'tax_filings'], 80)
    """
    if n_companies < 10:
        raise ValueError(f"n_companies must be at least 10, not {n_companies}")
    # Synthetic demo data, not a key or a DP noise path: numpy's seeded PRNG is the right tool.
    rng = np.random.default_rng(seed)
    n = n_companies

    # The universe: location, industry, age, size s and hidden financial health h.
    shanghai = rng.random(n) >= _NEIGHBOUR_SHARE
    sh_codes, sh_weights = zip(*_SHANGHAI_DISTRICTS.items(), strict=True)
    districts = np.where(
        shanghai,
        rng.choice(sh_codes, n, p=np.array(sh_weights) / sum(sh_weights)),
        rng.choice(_NEIGHBOUR_DISTRICTS, n),
    )
    sections = list(_INDUSTRIES)
    industry = rng.choice(len(sections), n, p=[_INDUSTRIES[s][0] for s in sections])
    age = np.clip(np.exp(np.log(7.0) + 0.75 * rng.standard_normal(n)), 0.2, 35.0)
    size = rng.standard_normal(n)
    health = rng.standard_normal(n)
    company_id = np.array(_company_ids(rng, list(districts), _SNAPSHOT_YEAR - age))

    # Who holds whom.
    bank = np.zeros(n, dtype=bool)
    bank[rng.choice(n, round(_BANK_SHARE * n), replace=False)] = True
    tax_share = np.where(bank, _TAX_SHARE_OF_BANK_CUSTOMERS, _TAX_SHARE_OF_OTHERS)
    tax = shanghai & (rng.random(n) < tax_share)
    registry = shanghai

    # Registry: capital, staff, and compliance events driven by health.
    capital = np.exp(np.log(100.0) + 0.9 * size + 0.7 * rng.standard_normal(n))
    staff = np.exp(np.log(15.0) + 0.9 * size + 0.5 * rng.standard_normal(n))
    employees = np.maximum(1, np.round(staff)).astype(np.int64)
    insured = rng.binomial(employees, _sigmoid(1.0 + 0.9 * health))
    rep_changes = rng.poisson(np.exp(-1.6 - 0.5 * health))
    penalties = rng.poisson(np.exp(-1.8 - 0.8 * health))
    abnormal = rng.random(n) < _sigmoid(-3.2 - 1.3 * health)

    # Tax: revenue, growth, filing behaviour and the bureau's credit evaluation.
    revenue = np.exp(np.log(500.0) + 1.0 * size + 0.3 * health + 0.5 * rng.standard_normal(n))
    growth = 4.0 + 14.0 * health + 15.0 * rng.standard_normal(n)
    vat = revenue * 0.025 * np.exp(0.1 * health + 0.3 * rng.standard_normal(n))
    invoices = np.round(np.exp(np.log(300.0) + 0.9 * size + 0.4 * rng.standard_normal(n)))
    delays = rng.poisson(np.exp(-1.2 - 0.8 * health))
    score = np.clip(
        np.round(82.0 + 8.0 * health + 4.0 * rng.standard_normal(n) - 4.0 * delays), 0, 100
    )
    grade = np.select([age < 1.0, score >= 90, score >= 70, score >= 40], ["M", "A", "B", "C"], "D")

    # Bank: the loan, the relationship and what the bank sees of the firm's health.
    collateral = rng.random(n) < _sigmoid(-0.3 + 0.6 * size)
    loan = np.exp(np.log(150.0) + 0.7 * size + 0.5 * rng.standard_normal(n))
    term = rng.choice([6, 12, 24, 36], n, p=[0.10, 0.50, 0.25, 0.15])
    bank_view = 0.5 * health + rng.standard_normal(n)
    rate = np.clip(
        4.2 - 0.35 * bank_view - 0.5 * collateral + 0.3 * rng.standard_normal(n), 3.0, 8.0
    )
    tenure = np.minimum(age, rng.exponential(4.0, n))
    overdue = rng.poisson(np.exp(-1.8 - 0.8 * health))
    turnover = revenue / 12.0 * rng.uniform(0.2, 0.9, n)

    # The label: default (90+ days past due) within 12 months, from the hidden health.
    industry_offset = np.array([_INDUSTRIES[s][1] for s in sections])[industry]
    logit = -3.2 - 1.8 * health + industry_offset + 0.5 * (age < 2.0) + 0.4 * rng.standard_normal(n)
    default = rng.random(n) < _sigmoid(logit)

    def table(name: str, mask: npt.NDArray[np.bool_], columns: dict[str, list[str]]) -> Table:
        rows = np.flatnonzero(mask)
        rows = rows[np.argsort(company_id[rows], kind="stable")]
        data = {"company_id": company_id[rows].tolist()} | {
            k: [v[i] for i in rows] for k, v in columns.items()
        }
        return Table.from_columns(name, data)

    bank_columns = {
        "loan_amount_10k_cny": _fixed(loan, 1),
        "term_months": _ints(term),
        "interest_rate_pct": _fixed(rate, 2),
        "collateral": _ints(collateral),
        "years_as_customer": _fixed(tenure, 1),
        "overdue_count_12m": _ints(overdue),
        "avg_monthly_turnover_10k_cny": _fixed(turnover, 1),
    }
    extra: dict[str, Table] = {}
    if applicants:
        # Drawn after everything else, so the other tables are the same with or without them.
        outside = np.flatnonzero(~bank)
        if not 0 < applicants <= len(outside):
            raise ValueError(f"applicants must be in [0, {len(outside)}], not {applicants}")
        chosen = np.zeros(n, dtype=bool)
        chosen[rng.choice(outside, applicants, replace=False)] = True
        extra["applicants"] = table("applicants", chosen, bank_columns)
    return {
        "loan_book": table("loan_book", bank, bank_columns | {"default_12m": _ints(default)}),
        "tax_filings": table("tax_filings", tax, {
            "annual_revenue_10k_cny": _fixed(revenue, 1),
            "vat_paid_10k_cny": _fixed(vat, 2),
            "revenue_growth_pct": _fixed(growth, 1),
            "invoice_count": _ints(invoices),
            "filing_delays_12m": _ints(delays),
            "tax_credit_score": _ints(score),
            "tax_credit_grade": grade.tolist(),
        }),
        "business_registry": table("business_registry", registry, {
            "industry_code": [sections[i] for i in industry],
            "registered_capital_10k_cny": _fixed(capital, 1),
            "company_age_years": _fixed(age, 1),
            "employees": _ints(employees),
            "insured_staff": _ints(insured),
            "legal_rep_changes_3y": _ints(rep_changes),
            "admin_penalties_3y": _ints(penalties),
            "abnormal_operation": _ints(abnormal),
        }),
    } | extra  # fmt: skip


# -- health demo ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Diagnosis:
    """An ICD-10 category: its log hazard ratio and its shifts of the vitals and labs."""

    log_hr: float
    sbp: float = 0.0
    hr: float = 0.0
    bmi: float = 0.0
    hba1c: float = 0.0
    ldl: float = 0.0
    egfr: float = 0.0


_DIAGNOSES = {
    "I10": _Diagnosis(0.10, sbp=18.0, bmi=1.5),  # essential hypertension
    "I21": _Diagnosis(0.80, hr=6.0, ldl=0.3),  # acute myocardial infarction
    "I25": _Diagnosis(0.40, sbp=5.0, ldl=-0.5),  # chronic ischaemic heart disease (on statins)
    "I48": _Diagnosis(0.35, hr=14.0),  # atrial fibrillation and flutter
    "I50": _Diagnosis(1.00, sbp=-6.0, hr=10.0, egfr=-12.0),  # heart failure
    "E10": _Diagnosis(0.30, bmi=-1.5, hba1c=2.6),  # type 1 diabetes
    "E11": _Diagnosis(0.30, bmi=2.5, hba1c=2.0, egfr=-6.0),  # type 2 diabetes
    "E03": _Diagnosis(0.00, hr=-6.0, ldl=0.4),  # other hypothyroidism
    "E66": _Diagnosis(0.15, sbp=6.0, bmi=8.0, hba1c=0.4),  # obesity
    "N18": _Diagnosis(0.80, sbp=8.0, egfr=-45.0),  # chronic kidney disease
    "J44": _Diagnosis(0.60, hr=8.0, bmi=-1.5),  # chronic obstructive pulmonary disease
    "J18": _Diagnosis(0.50, hr=12.0),  # pneumonia, organism unspecified
    "K80": _Diagnosis(-0.10),  # cholelithiasis
    "M17": _Diagnosis(-0.10, bmi=2.0),  # gonarthrosis (knee osteoarthritis)
}


@dataclass(frozen=True)
class _CaseMix:
    """Who a hospital treats: age distribution, share of men, diagnosis shares."""

    age_mean: float
    age_sd: float
    male_share: float
    diagnoses: Mapping[str, float]


_DIAGNOSIS_SHIFTS = ("log_hr", "sbp", "hr", "bmi", "hba1c", "ldl", "egfr")

_CASE_MIXES = {
    "hospital_a": _CaseMix(  # tertiary cardiology centre: older, sicker, more men
        66.0, 11.0, 0.62,
        {"I25": 0.30, "I50": 0.20, "I48": 0.15, "I10": 0.12, "I21": 0.13, "E11": 0.05, "N18": 0.05},
    ),
    "hospital_b": _CaseMix(  # general community hospital: broad mix, younger
        55.0, 16.0, 0.48,
        {"I10": 0.28, "E11": 0.15, "J44": 0.10, "J18": 0.10, "I25": 0.08, "K80": 0.09,
         "M17": 0.12, "N18": 0.04, "E03": 0.04},
    ),
    "hospital_c": _CaseMix(  # diabetes and endocrine centre
        58.0, 12.0, 0.52,
        {"E11": 0.55, "E10": 0.05, "E66": 0.10, "E03": 0.08, "N18": 0.08, "I10": 0.10,
         "I25": 0.04},
    ),
}  # fmt: skip

# Patients recorded by two hospitals (as a share of n_per_hospital); the first hospital of each
# pair holds the record that determines the patient's survival.
_SHARED_PATIENTS = (("hospital_b", "hospital_a", 0.08), ("hospital_c", "hospital_a", 0.04),
                    ("hospital_b", "hospital_c", 0.06))  # fmt: skip
_HEALTH_DRAW_ORDER = ("hospital_b", "hospital_c", "hospital_a")  # primaries before secondaries
_EPOCH = np.datetime64("2019-01-01", "D")
_INDEX_DAYS = int((np.datetime64("2025-01-01", "D") - _EPOCH).astype(int))  # index 2019-2024
_STUDY_END = int((np.datetime64("2025-12-31", "D") - _EPOCH).astype(int))  # data cut-off
_WEIBULL_SHAPE = 1.2
_WEIBULL_SCALE_DAYS = 32.6 * 365.25  # 5-year survival 90% at linear predictor 0
_LOSS_TO_FOLLOW_UP_MEAN_DAYS = 15.0 * 365.25
_SYNTHETIC_REGION = "99"  # no province uses 99, so no synthetic id can be a real person's


@dataclass(frozen=True)
class _Cohort:
    """One hospital's records while they are drawn; days count from ``_EPOCH``."""

    patient_id: list[str]
    male: npt.NDArray[np.bool_]
    birth: IntArray
    index: IntArray
    death: FloatArray


def _patient_ids(
    rng: np.random.Generator, birth: IntArray, male: npt.NDArray[np.bool_], seen: set[str]
) -> list[str]:
    """Unique resident-id-like numbers: synthetic region, birth date, sex-parity sequence, check."""
    births = np.datetime_as_string(_EPOCH + birth.astype("timedelta64[D]")).tolist()
    ids: list[str] = []
    for born, is_male in zip(births, male, strict=True):
        while True:
            region = _SYNTHETIC_REGION + f"{int(rng.integers(0, 10_000)):04d}"
            sequence = 2 * int(rng.integers(0, 500)) + int(is_male)  # odd for men
            id17 = f"{region}{born.replace('-', '')}{sequence:03d}"
            pid = id17 + resident_id_check_char(id17)
            if pid not in seen:
                break
        seen.add(pid)
        ids.append(pid)
    return ids


def _draw_records(
    rng: np.random.Generator,
    mix: _CaseMix,
    n: int,
    shared: list[tuple[_Cohort, IntArray]],
    seen: set[str],
) -> tuple[_Cohort, dict[str, list[str]]]:
    """A hospital's ``n`` records: the first ones are patients whose primary record is elsewhere."""
    k = sum(len(rows) for _, rows in shared)
    own = n - k
    male = rng.random(n) < mix.male_share
    index = rng.integers(0, _INDEX_DAYS, n)
    birth = np.zeros(n, dtype=np.int64)
    death = np.full(n, np.inf)
    start = 0
    pids: list[str] = []
    for other, rows in shared:
        end = start + len(rows)
        male[start:end] = other.male[rows]
        birth[start:end] = other.birth[rows]
        death[start:end] = other.death[rows]
        # A second record falls between the patient's 18th birthday and death.
        first = np.maximum(0.0, other.birth[rows] + 18 * 365.25)
        last = np.minimum(other.death[rows], _INDEX_DAYS)
        index[start:end] = np.floor(rng.uniform(first, last)).astype(np.int64)
        pids += [other.patient_id[i] for i in rows]
        start = end
    target_age = np.clip(rng.normal(mix.age_mean, mix.age_sd, own), 18.0, 98.0)
    birth[k:] = index[k:] - np.floor((target_age + rng.random(own)) * 365.25).astype(np.int64)
    pids += _patient_ids(rng, birth[k:], male[k:], seen)
    age = np.floor((index - birth) / 365.25)

    codes: list[str] = rng.choice(list(mix.diagnoses), n, p=list(mix.diagnoses.values())).tolist()
    dx = [_DIAGNOSES[c] for c in codes]
    shift = {f: np.array([getattr(d, f) for d in dx]) for f in _DIAGNOSIS_SHIFTS}
    diabetic = shift["hba1c"] >= 2.0
    sbp = np.clip(118.0 + 0.45 * (age - 45.0) + shift["sbp"] + rng.normal(0.0, 14.0, n), 85, 220)
    hr = np.clip(74.0 + shift["hr"] + rng.normal(0.0, 10.0, n), 40, 160)
    bmi = np.clip(23.8 + shift["bmi"] + rng.normal(0.0, 3.2, n), 15.0, 50.0)
    hba1c = np.clip(
        5.4 + 0.01 * (age - 45.0) + shift["hba1c"] + rng.normal(0.0, np.where(diabetic, 1.2, 0.4)),
        4.0,
        15.0,
    )
    ldl = np.clip(2.9 + shift["ldl"] + rng.normal(0.0, 0.75, n), 0.8, 7.0)
    egfr = np.clip(
        120.0 - 0.9 * (age - 20.0) + shift["egfr"] + rng.normal(0.0, 12.0, n), 5.0, 150.0
    )

    # Weibull proportional hazards: S(t | x) = exp(-(t / scale) ** shape * exp(lp)).
    lp = (0.055 * (age - 60.0) + 0.25 * male + shift["log_hr"] + 0.12 * (hba1c - 6.0)
          + 0.10 * (ldl - 2.8) + 0.004 * (sbp - 130.0) - 0.012 * (egfr - 80.0))  # fmt: skip
    survival = _WEIBULL_SCALE_DAYS * (rng.exponential(1.0, n) * np.exp(-lp)) ** (
        1.0 / _WEIBULL_SHAPE
    )
    death[k:] = index[k:] + survival[k:]
    censor = np.minimum(_STUDY_END, index + rng.exponential(_LOSS_TO_FOLLOW_UP_MEAN_DAYS, n))
    event = death <= censor
    follow_up = np.maximum(1, np.ceil(np.minimum(death, censor) - index))

    cohort = _Cohort(pids, male, birth, index, death)
    columns = {
        "patient_id": pids,
        "index_date": np.datetime_as_string(_EPOCH + index.astype("timedelta64[D]")).tolist(),
        "age": _ints(age),
        "sex": ["M" if m else "F" for m in male],
        "systolic_bp_mmhg": _ints(np.round(sbp)),
        "heart_rate_bpm": _ints(np.round(hr)),
        "bmi_kg_m2": _fixed(bmi, 1),
        "hba1c_pct": _fixed(hba1c, 1),
        "ldl_mmol_l": _fixed(ldl, 2),
        "egfr_ml_min_1_73m2": _ints(np.round(egfr)),
        "diagnosis": codes,
        "follow_up_days": _ints(follow_up),
        "event": _ints(event),
    }
    return cohort, columns


def generate_health(n_per_hospital: int, seed: int) -> dict[str, Table]:
    """The health demo: three hospitals' patient records with one schema and different case mixes.

    ``hospital_a`` is a tertiary cardiology centre (older, sicker), ``hospital_b`` a general
    community hospital, ``hospital_c`` a diabetes and endocrine centre. Some patients are recorded
    by two hospitals under the same id (8% of n for B and A, 6% for B and C, 4% for C and A), and
    die at most once. Death follows a Weibull proportional-hazards model of age, sex, diagnosis
    and labs, censored at the data cut-off (2025-12-31) and by loss to follow-up.
    ``docs/datasets.md`` has the details.

    Args:
        n_per_hospital: records per hospital (at least 20).
        seed: the generator seed; equal arguments give equal tables.

    Returns:
        ``{"hospital_a", "hospital_b", "hospital_c"}`` tables, rows sorted by patient id.

    Raises:
        ValueError: if ``n_per_hospital`` is below 20.

    >>> tables = generate_health(100, seed=1)
    >>> sorted(tables), tables["hospital_a"].num_rows
    (['hospital_a', 'hospital_b', 'hospital_c'], 100)
    """
    if n_per_hospital < 20:
        raise ValueError(f"n_per_hospital must be at least 20, not {n_per_hospital}")
    # Synthetic demo data, not a key or a DP noise path: numpy's seeded PRNG is the right tool.
    rng = np.random.default_rng(seed)
    # Which records of a primary hospital reappear in a secondary one; no patient is in all three.
    own_rows = {name: list(range(n_per_hospital)) for name in _CASE_MIXES}
    links: dict[str, list[tuple[str, IntArray]]] = {name: [] for name in _CASE_MIXES}
    for primary, secondary, share in _SHARED_PATIENTS:
        count = round(share * n_per_hospital)
        split = len(own_rows[primary]) - count
        rows, own_rows[primary] = own_rows[primary][split:], own_rows[primary][:split]
        links[secondary].append((primary, np.array(rows, dtype=np.int64)))
        del own_rows[secondary][:count]
    cohorts: dict[str, _Cohort] = {}
    tables: dict[str, Table] = {}
    seen: set[str] = set()
    for name in _HEALTH_DRAW_ORDER:
        shared = [(cohorts[p], rows) for p, rows in links[name]]
        cohorts[name], columns = _draw_records(rng, _CASE_MIXES[name], n_per_hospital, shared, seen)
        order = np.argsort(columns["patient_id"], kind="stable")
        tables[name] = Table.from_columns(
            name, {k: [v[i] for i in order] for k, v in columns.items()}
        )
    return {name: tables[name] for name in _CASE_MIXES}


def write_demo_data(out_dir: Path, scale: int = 1, seed: int = DEMO_SEED) -> list[Path]:
    """Write the finance and health demo datasets as CSV files.

    ``out_dir/finance/{loan_book,tax_filings,business_registry}.csv`` come from
    ``generate_finance(5000 * scale, seed)`` and ``out_dir/health/hospital_{a,b,c}.csv`` from
    ``generate_health(1500 * scale, seed)``. The shipped ``data/demo`` is ``scale=1`` with the
    default seed; ``bund data generate --scale N --out DIR`` makes larger ones.

    Args:
        out_dir: the directory to write into (created if needed); existing files are replaced.
        scale: a multiple of the shipped size.
        seed: the generator seed.

    Returns:
        The paths written.

    Raises:
        ValueError: if ``scale`` is below 1.
    """
    if scale < 1:
        raise ValueError(f"scale must be at least 1, not {scale}")
    datasets = {
        "finance": generate_finance(DEMO_COMPANIES_PER_SCALE * scale, seed),
        "health": generate_health(DEMO_PATIENTS_PER_SCALE * scale, seed),
    }
    return [
        write_csv(table, out_dir / domain / f"{name}.csv")
        for domain, tables in datasets.items()
        for name, table in tables.items()
    ]
