"""The serving benchmark runs end to end in quick mode between node processes; no timing asserted.

It starts three node processes and trains a model, so it runs with the integration tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import suite

pytestmark = pytest.mark.integration


def test_quick_serving_benchmark_reports_latency_throughput_and_its_baseline(
    tmp_path: Path,
) -> None:
    report = suite.main("serving", True, tmp_path / "serving.json", tmp_path)
    assert not report["skipped"] and (tmp_path / "serving.png").stat().st_size > 1000
    rows = json.loads((tmp_path / "serving.json").read_text(encoding="utf-8"))["rows"]
    by_kind: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_kind.setdefault(str(row["kernel"]), []).append(row)
    assert set(by_kind) == {"latency", "throughput", "vertical_score_job"}
    for kind in by_kind:
        assert [r["params"]["batch" if kind != "vertical_score_job" else "applicants"]  # type: ignore[index]
                for r in by_kind[kind]] == [1, 10, 100]  # fmt: skip
    for row in by_kind["latency"]:
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]  # type: ignore[operator]
        assert row["ratio_vs_job"] > 0  # type: ignore[operator]
    assert all(r["ops_per_s"] > 0 for r in rows)  # type: ignore[operator]
