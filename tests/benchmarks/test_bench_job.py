"""The submit-to-result benchmark runs between two real nodes, pushed and polled."""

from __future__ import annotations

import pytest

from benchmarks import bench_job


@pytest.mark.integration
def test_both_variants_report_every_phase_of_a_job() -> None:
    rows = {row["params"]["variant"]: row for row in bench_job.run(quick=True, samples=1)}
    assert set(rows) == {"push", "poll"}
    for row in rows.values():
        median = row["median_s"]
        assert set(median) == {*bench_job.PHASES, "submit_to_result"}
        assert all(value >= 0 for value in median.values())
        assert median["submit_to_result"] >= median["protocol"]
        assert row["ops_per_s"] > 0 and row["ratio_vs_poll"] > 0
        assert row["durable_append_s"] > 0
        assert row["approval_wait_beyond_durable_writes_s"] == pytest.approx(
            median["approval_wait"] - 2 * row["durable_append_s"]
        )
    assert rows["poll"]["ratio_vs_poll"] == 1.0
