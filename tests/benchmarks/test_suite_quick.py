"""The benchmark harness runs end to end in quick mode; no timing is asserted, only the output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import suite
from bund.compute import insecure

#: The families run here in quick mode (the others have their own benchmark tests).
FAMILIES = ("paillier", "ou", "ckks", "fed", "ckks_scoring", "vertical_lr", "witness")


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    out = tmp_path_factory.mktemp("bench")
    results = {}
    for family in FAMILIES:
        results[family] = suite.main(family, True, out / f"{family}.json", out)
    return out, results


@pytest.mark.parametrize("family", FAMILIES)
def test_quick_suite_writes_json_and_plot(
    reports: tuple[Path, dict[str, dict]], family: str
) -> None:
    out, results = reports
    report = json.loads((out / f"{family}.json").read_text(encoding="utf-8"))
    assert report["rows"] == json.loads(json.dumps(results[family]["rows"], default=str))
    assert (out / f"{family}.png").stat().st_size > 1000
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["cpu_model"] and machine["python"]
    assert machine["libraries"]["gmpy2"] and machine["libraries"]["tenseal"]
    assert report["parameters"]["quick"] is True and not report["skipped"]
    assert report["rows"]
    for row in report["rows"]:
        assert row["family"] == family
        assert {"kernel", "params", "ops_per_s"} <= row.keys()
        assert row["ops_per_s"] is None or row["ops_per_s"] > 0
        if row["ops_per_s"] is None:
            assert row["bytes"] > 0


def test_paillier_rows_carry_the_phe_ratio(reports: tuple[Path, dict[str, dict]]) -> None:
    rows = reports[1]["paillier"]["rows"]
    kernels = {row["kernel"] for row in rows}
    assert {
        "keygen",
        "encrypt",
        "encrypt_pooled_online",
        "encrypt_key_owner",
        "decrypt",
        "decrypt_packed_per_value",
        "squeeze_decrypt_per_value",
        "add",
        "mul_scalar",
        "dot",
    } <= kernels
    assert {row["params"]["threads"] for row in rows if row["kernel"] == "dot"} == {1, 2}
    for row in rows:
        assert row["ratio_vs_phe"] > 0
        assert row["params"]["insecure_test_key"] is True  # quick mode uses a small key


def test_ou_rows_compare_with_paillier_and_phe(reports: tuple[Path, dict[str, dict]]) -> None:
    rows = {row["kernel"]: row for row in reports[1]["ou"]["rows"]}
    assert {
        "keygen",
        "encrypt_key_owner",
        "encrypt_evaluator",
        "rerandomise",
        "encrypt_pooled_online",
        "add",
        "mul_scalar",
        "matvec_per_term",
        "decrypt",
        "decrypt_packed_per_value",
    } <= set(rows)
    for row in rows.values():
        assert row["ratio_vs_paillier"] > 0 and row["timing"] == "cpu"
    packed = rows["decrypt_packed_per_value"]["params"]
    assert 0 < packed["slots"] < packed["paillier_slots"]  # OU's plaintext space is p, not n


def test_quick_mode_leaves_the_test_switch_as_it_found_it(
    reports: tuple[Path, dict[str, dict]],
) -> None:
    assert not insecure.insecure_test_parameters_enabled()


def test_missing_families_are_skipped_and_unknown_ones_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(suite, "KERNELS", {"psi": "benchmarks.bench_that_does_not_exist"})
    report = suite.main("all", True, None, None)
    assert report["rows"] == [] and "psi" in report["skipped"]
    with pytest.raises(ValueError, match="unknown kernel family"):
        suite.main("gpu", True, None, None)
