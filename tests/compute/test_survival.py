"""Survival estimates from binned counts against lifelines, and the binning error bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lifelines import KaplanMeierFitter
from lifelines.statistics import multivariate_logrank_test
from scipy import stats as scipy_stats

from bund.compute.dp import survival
from tests.studies import gbsg2


def _counts(times: np.ndarray, events: np.ndarray, upper: float, bins: int) -> np.ndarray:
    """The survival vector of one stratum, as ``bund.compute.dp.stats.contribution`` lays it."""
    out = np.zeros(2 * bins + 1, dtype=np.int64)
    for t, e in zip(times, events, strict=True):
        if t > upper:
            out[2 * bins] += 1
            continue
        slot = max(math.ceil(t * bins / upper) - 1, 0)
        out[slot + (0 if e == 1 else bins)] += 1
    return out


def test_one_bin_per_day_is_lifelines_kaplan_meier_and_its_interval() -> None:
    g = gbsg2()
    upper = int(g.time.max())
    d, c, past = survival.split_counts(_counts(g.time.values, g.cens.values, upper, upper), upper)
    curve = survival.curve(d[0], c[0], int(past[0]))
    kmf = KaplanMeierFitter().fit(g.time, g.cens)
    ends = np.arange(1, upper + 1)
    assert np.abs(curve.survival - kmf.survival_function_at_times(ends).values).max() < 1e-12
    ci = kmf.confidence_interval_survival_function_
    rows = np.searchsorted(ci.index.values, ends, side="right") - 1
    assert np.abs(curve.lower - ci.iloc[rows, 0].values).max() < 1e-9
    assert np.abs(curve.upper - ci.iloc[rows, 1].values).max() < 1e-9


@pytest.mark.parametrize("bins", [3, 7, 30, 88])
def test_wider_bins_overstate_survival_by_at_most_the_stated_bound(bins: int) -> None:
    g = gbsg2()
    upper = int(g.time.max())
    d, c, past = survival.split_counts(_counts(g.time.values, g.cens.values, upper, bins), bins)
    curve = survival.curve(d[0], c[0], int(past[0]))
    edges = np.arange(1, bins + 1) * upper / bins
    exact = KaplanMeierFitter().fit(g.time, g.cens).survival_function_at_times(edges).values
    gap = curve.survival - exact
    assert np.all(gap >= -1e-12)
    assert np.all(gap <= curve.binning_bound + 1e-12)
    assert gap.max() > 0  # the bins do lose something here, and the bound says how much


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 60), st.booleans()), min_size=1, max_size=80),
    st.integers(1, 12),
)
def test_the_bound_holds_on_any_data(records: list[tuple[int, bool]], bins: int) -> None:
    times = np.array([t for t, _ in records], dtype=float)
    events = np.array([int(e) for _, e in records])
    d, c, past = survival.split_counts(_counts(times, events, 60.0, bins), bins)
    curve = survival.curve(d[0], c[0], int(past[0]))
    # The exact estimator with censorings ordered after deaths at equal times, by hand.
    edges = np.arange(1, bins + 1) * 60.0 / bins
    s, exact = 1.0, []
    order = sorted(zip(times, events, strict=True), key=lambda r: (r[0], -r[1]))
    at_risk, k = len(order), 0
    for edge in edges:
        while k < len(order) and order[k][0] <= edge:
            t = order[k][0]
            same = [e for tt, e in order[k:] if tt == t]
            dead = sum(same)
            if dead:
                s *= 1 - dead / at_risk
            at_risk -= len(same)
            k += len(same)
        exact.append(s)
    gap = curve.survival - np.array(exact)
    assert np.all(gap >= -1e-12) and np.all(gap <= curve.binning_bound + 1e-12)


def test_log_rank_across_three_grades_is_lifelines() -> None:
    g = gbsg2()
    upper = int(g.time.max())
    grades = ("I", "II", "III")
    runs = [
        _counts(g.time.values[g.tgrade == k], g.cens.values[g.tgrade == k], upper, upper)
        for k in grades
    ]
    d, c, past = survival.split_counts(np.concatenate(runs), upper)
    at_risk, _ = survival.kaplan_meier(d, c, past)
    test = survival.logrank(d, at_risk)
    ref = multivariate_logrank_test(g.time, g.tgrade, g.cens)
    assert test.df == 2
    assert test.statistic == pytest.approx(ref.test_statistic, rel=1e-10)
    assert test.p_value == pytest.approx(ref.p_value, rel=1e-8)


@pytest.mark.parametrize("df", [1, 2, 3, 6, 11])
def test_chi_square_tail_is_scipys(df: int) -> None:
    for x in (0.01, 0.5, 1.0, 3.84, 10.0, 40.0, 150.0):
        assert survival.chi2_sf(x, df) == pytest.approx(scipy_stats.chi2.sf(x, df), rel=1e-10)
