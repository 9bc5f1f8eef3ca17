"""The zk benchmark runs end to end in quick mode; only its output is checked, never a timing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmarks import bench_zk
from bund.compute import insecure

KERNELS = {
    "djn_obfuscate",
    "rerandomise_full",
    "mod_prove",
    "mod_verify",
    "prm_setup",
    "prm_prove",
    "prm_verify",
    "enc_prove",
    "enc_verify",
}
SIZES = {"mod_proof", "prm_proof", "prm_parameters", "enc_proof"}


def test_quick_run_reports_every_row_against_the_djn_baseline() -> None:
    rows = bench_zk.run(quick=True)
    assert not insecure.insecure_test_parameters_enabled()  # restored after the run
    timed = [r for r in rows if r["ops_per_s"] is not None]
    sized = [r for r in rows if r["ops_per_s"] is None]
    assert {r["kernel"] for r in timed} == KERNELS
    assert {r["kernel"] for r in sized} == SIZES
    for row in timed:
        assert row["family"] == "zk" and row["params"]["bits"] == 1024
        assert row["params"]["insecure_test_key"] is True
        assert row["ops_per_s"] > 0 and row["cost_vs_djn"] > 0
    (baseline,) = [r for r in timed if r["kernel"] == "djn_obfuscate"]
    assert baseline["cost_vs_djn"] == 1
    sizes = {r["kernel"]: r["bytes"] for r in sized}
    assert sizes["enc_proof"] == 841 and sizes["prm_parameters"] == 391
    assert sizes["mod_proof"] == 4 + 1 + 4 + 128 + 80 * (2 * 128 + 1)


def test_command_line_writes_a_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "zk.json"
    monkeypatch.setattr(sys, "argv", ["bench_zk", "--quick", "--json", str(out)])
    bench_zk.main()
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["parameters"]["quick"] is True and report["machine"]["cores"] >= 1
    assert {r["kernel"] for r in report["rows"]} == KERNELS | SIZES
