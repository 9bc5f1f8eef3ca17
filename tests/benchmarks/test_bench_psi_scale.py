"""The PSI-at-scale benchmarks run end to end at toy sizes; no timing is asserted."""

from __future__ import annotations

import pytest

from benchmarks import bench_psi, bench_psi_unbalanced, suite


def test_unbalanced_rows_state_the_ceiling_fraction_and_the_filter_size() -> None:
    assert suite.KERNELS["psi_unbalanced"] == "benchmarks.bench_psi_unbalanced"
    setup, query = bench_psi_unbalanced.measure(2_000, (100,), 500)
    assert setup["kernel"] == "setup_holder" and setup["params"] == {"n": 2_000}
    assert 0 < setup["fraction_of_ceiling"] and setup["offline_ceiling_ids_per_s"] > 0
    assert 4 < setup["filter_bytes_per_id"] < 10 and setup["peak_rss_mib"] > 0
    assert query["kernel"] == "query" and query["params"] == {"n": 2_000, "q": 100}
    assert query["holder_cpu_s"] > 0 and query["querier_cpu_s"] > 0


@pytest.mark.slow
def test_the_bucketed_row_reports_each_members_peak_memory() -> None:
    row = bench_psi.measure_protocol(3_000, 500, bucketed=True, bucket_points=1_024)
    assert row["kernel"] == "bucketed_intersection_two_receivers"
    assert set(row["party_peak_rss_mib"]) == {"bank", "tax"}
    assert row["fraction_of_ceiling"] > 0 and row["params"]["overlap"] == 1_500
    assert row["params"]["bucket_points"] == 1_024
