"""Cox regression from per-bin sums against lifelines' CoxPHFitter, and the vector's sensitivity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lifelines import CoxPHFitter

from bund.compute.learn import cox
from tests.studies import ROSSI_FEATURES, rossi

RANGES = {"fin": (0, 1), "age": (17, 44), "race": (0, 1), "wexp": (0, 1), "mar": (0, 1),
          "paro": (0, 1), "prio": (0, 18)}  # fmt: skip


def _pooled_sums(frame, layout: cox.Layout, beta: np.ndarray) -> cox.Sums:  # type: ignore[no-untyped-def]
    total = sum(
        cox.contribution(
            layout,
            cox.scale_features({f: part[f].values for f in ROSSI_FEATURES}, RANGES),
            part.week.values,
            part.arrest.values,
            52.0,
            beta,
        )
        for part in (frame.iloc[k::3] for k in range(3))
    )
    return cox.Sums.from_vector(layout, total)


def test_newton_on_three_hospitals_sums_is_lifelines_on_the_pooled_table() -> None:
    frame = rossi()
    layout = cox.Layout(len(ROSSI_FEATURES), 52)
    beta = np.zeros(layout.features)
    for _ in range(8):
        e = cox.efron(_pooled_sums(frame, layout, beta), beta)
        beta = cox.newton_step(e, beta, 10.0)
    unit = np.array([2 / (hi - lo) for lo, hi in RANGES.values()])
    ref = CoxPHFitter().fit(frame, "week", "arrest")
    assert np.abs(beta * unit - ref.params_.values).max() < 1e-6
    se = np.sqrt(np.diag(cox.covariance(e))) * unit
    assert np.abs(se - ref.standard_errors_.values).max() < 1e-6
    assert e.log_likelihood == pytest.approx(ref.log_likelihood_, abs=1e-6)
    counts = sum(
        cox.concordance_vector(
            cox.scale_features({f: part[f].values for f in ROSSI_FEATURES}, RANGES),
            part.week.values, part.arrest.values, 52.0, 52, beta, 50,
        )
        for part in (frame.iloc[k::3] for k in range(3))
    )  # fmt: skip
    found = cox.concordance(counts, 52, 50)
    assert abs(found.value - ref.concordance_index_) <= found.tolerance
    assert found.tolerance < 0.03


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-5, 5), min_size=3, max_size=3),
    st.lists(st.floats(-1, 1), min_size=3, max_size=3),
    st.floats(0, 60),
    st.booleans(),
)
def test_one_record_moves_the_vector_by_at_most_the_stated_sensitivity(
    beta: list[float], x: list[float], time: float, died: bool
) -> None:
    layout = cox.Layout(3, 6)
    vector = cox.contribution(layout, np.array([x]), [time], [int(died)], 50.0, np.array(beta))
    assert np.abs(vector).sum() <= layout.sensitivity << cox.FRAC_BITS


def test_risk_sets_below_the_floor_drop_their_deaths() -> None:
    frame = rossi()
    layout = cox.Layout(len(ROSSI_FEATURES), 52)
    sums = _pooled_sums(frame, layout, np.zeros(layout.features))
    assert sums.kept_bins(1) == 52
    at_risk = sums.at_risk()
    cut = int(np.nonzero(at_risk < 400)[0][0])
    assert sums.kept_bins(400) == cut
    kept = cox.efron(sums, np.zeros(layout.features), cut)
    assert kept.deaths == round(sums.dead[:cut, 0].sum())
