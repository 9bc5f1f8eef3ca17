"""Risk scoring that holds against a deviating model holder (``paillier_scoring``) vs CKKS.

Both protocols score the health demo's patients with the same logistic model, in one run, as
whole protocols over the in-memory transport (``run_in_memory``; no network): ``ckks_scoring``
(the hospital's CKKS key, for an insurer it trusts) and ``paillier_scoring`` (the insurer's
Paillier key with Π^mod, Π^prm and a Π^enc per weight; the hospital adds its own noise and a
fresh ``r^N`` per patient and decrypts nothing). Rows:

- ``ckks_scoring`` and ``paillier_scoring``: patients per CPU-second for ``patients`` patients,
  end to end (key generation and proofs included), and ``ratio_to_ckks``;
- ``paillier_setup``: CPU seconds of the per-job part (the hospital's safe primes and Π^prm, the
  insurer's key, Π^mod and the range proofs, their verification);
- ``paillier_per_patient``: CPU milliseconds per patient beyond the setup, most of it ``r^N``.

Times are CPU seconds (``os.times``: this process, whose threads run both roles, and the CKKS
sandbox workers it waits for), so other work on the machine does not count.

``--quick`` runs 64 patients at 1024 bits behind the test-only switch (a harness check, not a
measurement); the full run takes 600 patients at 2048 bits.
Run: ``PYTHONPATH=. .venv/bin/python -m benchmarks.suite paillier_scoring [--quick] [--json F]``.
"""

from __future__ import annotations

import os
from typing import Any

from bund.compute import insecure
from bund.parties.data import Table
from bund.parties.demo_data import generate_health
from bund.parties.jobs import JobSpec, Participant, run_in_memory
from bund.parties.protocols import ckks_scoring as cs
from bund.parties.protocols import paillier_scoring as ps

FAMILY = "paillier_scoring"


def _spec(protocol: str, features: str, extra: dict[str, Any]) -> JobSpec:
    return JobSpec(
        protocol=protocol,
        participants=(
            Participant("hospital", "feature_holder", "patients", {"id": "patient_id"}),
            Participant("insurer", "model_holder", "model"),
        ),
        receivers=("insurer",),
        purpose="benchmark",
        requester="insurer",
        params={"features": features, **extra},
    )


def _timed(spec: JobSpec, definition: Any, tables: dict[str, Table]) -> float:
    """CPU seconds of both roles (this process's threads and the CKKS sandbox workers)."""
    before = os.times()
    run_in_memory(spec, definition, tables, recv_timeout=3600)
    after = os.times()
    return sum(
        getattr(after, f) - getattr(before, f)
        for f in ("user", "system", "children_user", "children_system")
    )


def run(quick: bool) -> list[dict[str, Any]]:
    """End-to-end rates of both scoring protocols on the same patients, in one run."""
    bits, patients = (1024, 64) if quick else (2048, 600)
    if quick:
        insecure.enable_insecure_test_parameters()
    try:
        data = generate_health(patients, 5)
        tables = {
            "hospital": data["hospital_a"],
            "insurer": cs.make_demo_model(data["hospital_b"], "logistic"),
        }
        features = ",".join(cs.DEMO_FEATURES)
        ckks_s = _timed(
            _spec("ckks_scoring", features, {"model": "logistic"}), cs.DEFINITION, tables
        )
        small = {
            "hospital": Table.from_columns(
                "p", {k: v[:2] for k, v in tables["hospital"].data.items()}
            ),
            "insurer": tables["insurer"],
        }
        setup_s = _timed(
            _spec("paillier_scoring", features, {"key_bits": bits}), ps.DEFINITION, small
        )
        paillier_s = _timed(
            _spec("paillier_scoring", features, {"key_bits": bits}), ps.DEFINITION, tables
        )
    finally:
        if quick:
            insecure.disable_insecure_test_parameters()
    params = {"patients": patients, "key_bits": bits, "features": len(cs.DEMO_FEATURES)}
    per_patient = max(paillier_s - setup_s, 0.0) / (patients - 2)

    def row(kernel: str, value: float, unit: str, **extra: Any) -> dict[str, Any]:
        return {
            "family": FAMILY,
            "kernel": kernel,
            "params": params,
            "ops_per_s": value,
            "unit": unit,
            **extra,
        }

    return [
        row("ckks_scoring", patients / ckks_s, "patients/s"),
        row(
            "paillier_scoring",
            patients / paillier_s,
            "patients/s",
            ratio_to_ckks=ckks_s / paillier_s,
        ),
        row("paillier_setup", setup_s, "s"),
        row("paillier_per_patient", per_patient * 1000, "ms"),
    ]
