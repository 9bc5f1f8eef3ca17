"""The survival benchmark runs in quick mode and reports ratios against lifelines; no timing."""

from __future__ import annotations

import pytest

from benchmarks import bench_survival


@pytest.mark.slow
def test_quick_survival_benchmark_reports_ratios_against_lifelines() -> None:
    rows = bench_survival.run(quick=True)
    kernels = [row["kernel"] for row in rows]
    assert kernels == ["km_logrank"] * 2 + ["km_16384", "cox"] + ["cox_accuracy"] * 2
    for row in rows:
        assert row["family"] == "survival"
        if row["kernel"] == "cox_accuracy":
            assert row["ops_per_s"] is None
            assert len(row["rmse"]) == len(row["se_sampling"]) == len(row["rmse_vs_sampling"]) == 2
            assert all(r > 0 for r in row["rmse"])
            assert row["params"]["epsilon"] in ("1", "4")
        else:
            assert row["ops_per_s"] > 0 and row["lifelines_ms"] > 0
            assert row["ratio_vs_lifelines"] == pytest.approx(row["ms"] / row["lifelines_ms"], 0.1)
