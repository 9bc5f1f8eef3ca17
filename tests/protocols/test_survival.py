"""Survival curves and the log-rank test across three hospitals, against lifelines.

GBSG2 (686 breast-cancer patients followed up to 2,659 days) split over three hospitals; the
insurer's ``dp_stats`` survival query, stratified by hormone therapy, at one bin per day: with
noise off every released figure is lifelines' on the pooled patients.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping

import numpy as np
import pytest
from lifelines import KaplanMeierFitter, NelsonAalenFitter
from lifelines.statistics import logrank_test

from bund.compute import insecure
from bund.parties.data import Table
from bund.parties.jobs import JobSpec, Participant, Result, run_in_memory
from bund.parties.protocols import dp_stats
from tests.studies import HOSPITALS, gbsg2, split

DAYS = 2659


@pytest.fixture
def noise_off() -> None:
    insecure.enable_insecure_test_parameters()


def spec(**params: str | int) -> JobSpec:
    query: dict[str, str | int] = {
        "kind": "survival", "column": "time", "event": "cens", "lower": "0",
        "upper": str(DAYS), "bins": DAYS, "epsilon": "1", "min_cell": 1,
        "column2": "horTh", "categories2": "no|yes",
    }  # fmt: skip
    query.update(params)
    return JobSpec(
        protocol="dp_stats",
        participants=(
            *(Participant(h, "contributor", "gbsg2") for h in HOSPITALS),
            Participant("insurer", "analyst"),
        ),
        receivers=("insurer",),
        purpose="Recurrence-free survival by hormone therapy",
        requester="insurer",
        params=query,
    )


def run(job: JobSpec, tables: Mapping[str, Table] | None = None) -> Result:
    result = run_in_memory(job, dp_stats.DEFINITION, tables or split(gbsg2()))["insurer"]
    assert result is not None
    return result


def rows(result: Result) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(result.artifacts["result.csv"].decode())))


@pytest.mark.usefixtures("noise_off")
def test_daily_curves_and_log_rank_are_lifelines_on_the_pooled_study() -> None:
    g = gbsg2()
    result = run(spec(noise="off"))
    table = rows(result)
    assert len(table) == 2 * DAYS  # 7.3 years, one bin a day: beyond the old 2,048-bin cap
    for group in ("no", "yes"):
        sub = g[g.horTh == group]
        kmf = KaplanMeierFitter().fit(sub.time, sub.cens)
        naf = NelsonAalenFitter(nelson_aalen_smoothing=False).fit(sub.time, sub.cens)
        shown = [r for r in table if r["stratum"] == group and r["survival"] != "suppressed"]
        assert len(shown) > 1500  # rows with nobody left at risk are suppressed
        ends = np.array([float(r["end"]) for r in shown])

        def column(name: str, shown: list[dict[str, str]] = shown) -> np.ndarray:
            return np.array([float(r[name]) for r in shown])

        # Released to 6 decimals: equal up to that rounding.
        tol = 5.1e-7
        assert np.abs(column("survival") - kmf.survival_function_at_times(ends).values).max() < tol
        ci = kmf.confidence_interval_survival_function_
        at = np.searchsorted(ci.index.values, ends, side="right") - 1
        assert np.abs(column("survival_lower") - ci.iloc[at, 0].values).max() < tol
        assert np.abs(column("survival_upper") - ci.iloc[at, 1].values).max() < tol
        hazard = naf.cumulative_hazard_at_times(ends).values
        assert np.abs(column("cumulative_hazard") - hazard).max() < tol
        at_risk = [int((sub.time >= e).sum()) for e in ends[:50]]
        assert [int(r["at_risk"]) for r in shown[:50]] == at_risk
    ref = logrank_test(
        g.time[g.horTh == "no"], g.time[g.horTh == "yes"],
        g.cens[g.horTh == "no"], g.cens[g.horTh == "yes"],
    )  # fmt: skip
    s = result.summary
    assert s["logrank_df"] == 1
    assert s["logrank_statistic"] == pytest.approx(ref.test_statistic, abs=1e-6)
    assert s["logrank_p_value"] == pytest.approx(ref.p_value, rel=1e-5)
    assert "at the end of their bin" in str(s["discretisation"])
    assert result.artifacts["survival.png"].startswith(b"\x89PNG")


@pytest.mark.usefixtures("noise_off")
def test_followed_past_the_horizon_is_counted_apart_from_the_last_bin() -> None:
    g = gbsg2()
    result = run(spec(noise="off", upper="1825", bins=5, min_cell=1))  # yearly, five years
    for group in ("no", "yes"):
        sub = g[g.horTh == group]
        last = [r for r in rows(result) if r["stratum"] == group][-1]
        inside = sub[(sub.time > 1460) & (sub.time <= 1825)]
        assert int(last["censored"]) == int((inside.cens == 0).sum())
        assert result.summary[f"past_horizon_{group}"] == int((sub.time > 1825).sum())


@pytest.mark.usefixtures("noise_off")
def test_16384_daily_bins_run_in_one_job() -> None:
    result = run(spec(noise="off", upper="16384", bins=16384, column2=None, categories2=None))
    assert len(rows(result)) == 16384 and result.summary["cells"] == 2 * 16384 + 1


def test_the_noisy_curve_lies_within_its_band() -> None:
    """Yearly bins at ε = 1: the band (Greenwood + noise) covers the exact curve at each year."""
    g = gbsg2()
    covered, total = 0, 0
    for _ in range(4):
        result = run(spec(upper="2555", bins=7, min_cell=5))
        for group in ("no", "yes"):
            sub = g[g.horTh == group]
            exact = KaplanMeierFitter().fit(sub.time, sub.cens)
            for r in rows(result):
                if r["stratum"] != group or r["survival"] == "suppressed":
                    continue
                s = float(exact.survival_function_at_times([float(r["end"])]).values[0])
                bound = float(r["binning_bound"])
                covered += float(r["survival_lower"]) - bound <= s <= float(r["survival_upper"])
                total += 1
    assert total >= 40 and covered / total >= 0.95
