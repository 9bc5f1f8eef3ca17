"""The multi-party PSI benchmark's harness runs at a small size; no timing is asserted."""

from __future__ import annotations

from benchmarks import bench_psi_multi


def test_rows_of_the_kernels_and_of_each_role() -> None:
    kernels = bench_psi_multi.measure_kernels(300)
    assert {r["kernel"] for r in kernels} >= {"okvs_encode", "okvs_decode", "ceiling_leader"}
    assert all(r["family"] == "psi_multi" and r["ops_per_s"] > 0 for r in kernels)
    row = bench_psi_multi.measure_protocol(400, 3)
    assert row["params"] == {"n": 400, "members": 3, "overlap": 200}
    assert set(row["party_cpu_s"]) == {"bank", "tax", "registry", "insurer"}
    assert row["leader_rate_per_core"] > 0 and row["member_rate_per_core"] > 0
    reference = bench_psi_multi.measure_two_party(400)
    assert reference["kernel"] == "two_party_ecdh_psi" and reference["rate_per_core"] > 0
