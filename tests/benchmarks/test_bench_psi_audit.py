"""The write-ahead audit overhead row of the PSI benchmark: what it counts, no timing asserted.

The row runs node processes, so its end-to-end test runs with the integration tests; the
relaxed store it compares against is checked here without a node.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import bench_psi
from benchmarks.audit_node import RelaxedSqliteAuditStore
from bund.parties.audit import SqliteAuditStore

_FULL, _OFF = 2, 0  # PRAGMA synchronous values


def _synchronous(store: SqliteAuditStore) -> int:
    [(value,)] = store._db.execute("PRAGMA synchronous").fetchall()
    return int(value)


def test_only_the_benchmark_store_is_relaxed(tmp_path: Path) -> None:
    with SqliteAuditStore(tmp_path / "full.db") as full:
        assert _synchronous(full) == _FULL
    with RelaxedSqliteAuditStore(tmp_path / "off.db") as relaxed:
        assert _synchronous(relaxed) == _OFF
    with SqliteAuditStore(tmp_path / "after.db") as after:  # the product class is untouched
        assert _synchronous(after) == _FULL


@pytest.mark.integration
def test_audit_overhead_row_counts_each_nodes_durable_appends() -> None:
    row = bench_psi.measure_audit_overhead(100, pairs=1, latency_appends=20)
    assert row["kernel"] == "audit_overhead_nodes" and row["params"]["n"] == 100
    assert [r["mode"] for r in row["runs"]] == ["full", "relaxed"]
    assert len(row["job_wall_full_s"]) == len(row["job_wall_relaxed_s"]) == 1
    assert row["append_latency_s"] > 0 and row["append_latency_relaxed_s"] > 0
    assert row["ratio_full_vs_relaxed"] > 0
    for run in row["runs"]:
        assert set(run["parties"]) == {"bank", "tax"}
        for party, audit in run["parties"].items():
            events = audit["events"]
            # Write-ahead: every message both ways, the job's start and end are in the log.
            assert events["message_sent"] == events["message_received"] > 0
            assert events["job_started"] == events["job_closed"] == 1
            assert ("job_submitted" in events) == (party == "bank")
            assert audit["records_of_job"] >= sum(
                events[e] for e in ("message_sent", "message_received", "job_started")
            )
            # Every traced append within the job is one durable commit of one or more records.
            assert 0 < audit["durable_appends"] <= audit["traced_records"]
            assert audit["traced_records"] <= audit["records_of_job"] + audit["records_node_level"]
            assert audit["process_cpu_s"] >= 0 and audit["append_cpu_s"] >= 0
