"""The CLI start-up benchmark runs every command against a real node, with its breakdown."""

from __future__ import annotations

import pytest

from benchmarks import bench_cli


@pytest.mark.integration
def test_every_command_runs_and_the_status_breakdown_adds_up() -> None:
    rows = {row["kernel"]: row for row in bench_cli.run(quick=True, samples=1)}
    assert set(rows) == {"interpreter", "help", "job_status", "job_list"}
    for row in rows.values():
        assert row["params"]["tree"] == "this"
        assert row["median_wall_s"] >= row["min_wall_s"] > 0 and row["median_cpu_s"] > 0
    status = rows["job_status"]
    assert sum(status["breakdown_s"].values()) == pytest.approx(status["median_wall_s"])
    assert status["breakdown_s"]["interpreter"] == rows["interpreter"]["median_wall_s"]
    assert status["modules_loaded"] > 100
