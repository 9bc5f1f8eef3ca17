"""Vertical LR benchmark: one training epoch, timed by phase, at the kernel level.

One process plays the bank and one provider in turn, with the same calls the protocol makes
(``bund/parties/protocols/vertical_lr.py``) on synthetic standardised features: per batch, the
provider's partial scores, the bank's residuals (plaintext); ``pl.encrypt`` of the residuals by
the key owner (encryption); the provider's ``pl.matvec`` of its features with the encrypted
residuals, its mask and the squeeze (encrypted products); ``pl.decrypt_packed`` (decryption);
serialisation with re-randomisation and the receiving side's validation (``to_bytes`` /
``from_bytes``: the wire's CPU share, "network"; the bytes are reported, transfer time over a
real link is not included). The bank's own features only add plaintext work, so a run with
30 bank and 300 provider features measures the provider side of 300 features.

Wall-clock seconds per epoch and the share of each phase; ``ops_per_s`` is rows per second.
The executor is ``BUND_BENCH_EXECUTOR`` (default ``thread:<cores>``).

A ``score`` row times ``vertical_score`` (scoring new applicants with a trained model) as a whole
protocol in one process, every role in its own thread over the in-memory transport: PSI alignment
of the applicants with both providers, the providers' masked partial scores, the bank's sum;
``ops_per_s`` is applicants per second.

Run: ``python -m benchmarks.bench_vertical_lr [--quick] [--rows N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bund.compute import insecure
from bund.compute import paillier as pl
from bund.compute.executor import create_executor
from bund.compute.learn import logistic as lg
from bund.parties.demo_data import generate_finance
from bund.parties.jobs import (
    JobSpec,
    Participant,
    PriorResultError,
    Result,
    new_job_id,
    run_in_memory,
)
from bund.parties.protocols import vertical_lr, vertical_score
from bund.parties.protocols.vertical_lr import _masked_bound, mask_layout


def epoch(
    rows: int,
    bank_features: int,
    provider_features: int,
    key_bits: int,
    batch_size: int,
    executor_spec: str,
) -> dict[str, Any]:
    """Time one epoch; returns a benchmark row."""
    rng = np.random.default_rng(0)  # synthetic data only
    xb = lg.Standardiser.fit(x := rng.normal(size=(rows, bank_features))).apply(x)
    xp = lg.Standardiser.fit(x := rng.normal(size=(rows, provider_features))).apply(x)
    y = (rng.random(rows) < 0.12).astype(float)
    public, private = pl.generate_keypair(key_bits)
    owner, provider = pl.Encryptor(private), pl.Encryptor(public)
    wb, wp, bias = np.zeros(bank_features), np.zeros(provider_features), 0.0
    spent = dict.fromkeys(("plaintext", "encrypt", "products", "decrypt", "network"), 0.0)
    sent = 0
    batches = lg.epoch_batches(np.arange(rows), batch_size, 0, 0)
    with create_executor(executor_spec) as ex:
        start = time.perf_counter()
        for batch in batches:
            t0 = time.perf_counter()
            scores = lg.quantize_scores(lg.partial_scores(xp[batch], wp))
            z = lg.joint_scores(lg.partial_scores(xb[batch], wb), bias, [scores])
            rq = lg.residuals(z, y[batch])
            t1 = time.perf_counter()
            enc = pl.encrypt(owner, rq.tolist(), frac_bits=lg.RESIDUAL_FRAC_BITS, executor=ex)
            t2 = time.perf_counter()
            wire = enc.to_bytes(owner)
            got = pl.EncryptedVector.from_bytes(
                public, wire, frac_bits=lg.RESIDUAL_FRAC_BITS, max_count=len(batch)
            )
            t3 = time.perf_counter()
            grad = pl.matvec(xp[batch].T, got, lg.FEATURE_FRAC_BITS, executor=ex)
            mask_bits, width, per = mask_layout(len(batch), key_bits)
            masks = [secrets.randbits(mask_bits) for _ in range(provider_features)]
            packed = grad.add_plain(masks).squeeze(_masked_bound(len(batch)))
            t4 = time.perf_counter()
            wire2 = packed.to_bytes(provider)
            back = pl.PackedVector.from_bytes(
                public,
                wire2,
                slot_bits=width,
                slots=per,
                count=provider_features,
                bound=_masked_bound(len(batch)),
                frac_bits=lg.GRADIENT_FRAC_BITS,
            )
            t5 = time.perf_counter()
            masked = pl.decrypt_packed(private, back, executor=ex)
            t6 = time.perf_counter()
            exact = np.asarray([v - m for v, m in zip(masked, masks, strict=True)], dtype=np.int64)
            wp = lg.step(wp, exact, len(batch), 0.1, 1e-3)
            wb = lg.step(wb, lg.gradient_ints(xb[batch], rq), len(batch), 0.1, 1e-3)
            bias = lg.step_bias(bias, rq, 0.1)
            t7 = time.perf_counter()
            spent["plaintext"] += (t1 - t0) + (t7 - t6)
            spent["encrypt"] += t2 - t1
            spent["network"] += (t3 - t2) + (t5 - t4)
            spent["products"] += t4 - t3
            spent["decrypt"] += t6 - t5
            sent += len(wire) + len(wire2) + 8 * len(batch) + provider_features * ((width + 7) // 8)
        total = time.perf_counter() - start
    return {
        "family": "vertical_lr",
        "kernel": "epoch",
        "params": {
            "rows": rows,
            "bank_features": bank_features,
            "provider_features": provider_features,
            "key_bits": key_bits,
            "batch_size": batch_size,
            "executor": executor_spec,
        },
        "ops_per_s": rows / total,
        "seconds_per_epoch": total,
        **{f"share_{k}": v / total for k, v in spent.items()},
        "bytes_per_epoch": sent,
    }


def score(universe: int, applicants: int) -> dict[str, Any]:
    """Time one ``vertical_score`` job on the demo generator's data (bank, tax, registry).

    The model is trained first on a small universe (512-bit keys: training is not timed here,
    and scoring uses no Paillier key).
    """
    roles = {"bank": "loan_book", "tax": "tax_filings", "registry": "business_registry"}
    ids = {"id": "company_id"}
    limits = {"psi_max_set_size": 10 * universe}
    small = generate_finance(2_000, 1)
    parts = (
        Participant("bank", "label_holder", "loan_book", {**ids, "label": "default_12m"}),
        Participant("tax", "feature_holder", "tax_filings", ids),
        Participant("registry", "feature_holder", "business_registry", ids),
    )
    params = {"key_bits": 512, "epochs": 2, "batch_size": 256, "seed": 1}
    train = JobSpec("vertical_lr", parts, tuple(roles), "benchmark", "bank", params, new_job_id())
    model = run_in_memory(
        train, vertical_lr.DEFINITION, {p: small[t] for p, t in roles.items()}, limits
    )

    def loader(party: str) -> Callable[[str, str], Result]:
        def load(job: str, protocol: str) -> Result:
            result = model[party]
            if job != train.job_id or result is None:
                raise PriorResultError(f"{party} holds no result of job {job}")
            return result

        return load

    big = generate_finance(universe, 2, applicants=applicants)
    tables = {
        "bank": big["applicants"],
        "tax": big["tax_filings"],
        "registry": big["business_registry"],
    }
    scoring = JobSpec(
        "vertical_score",
        (Participant("bank", "label_holder", "applicants", ids), *parts[1:]),
        ("bank",),
        "benchmark",
        "bank",
        {"model_job": train.job_id},
    )
    start = time.perf_counter()
    out = run_in_memory(
        scoring, vertical_score.DEFINITION, tables, limits,
        prior_results={p: loader(p) for p in roles},
    )  # fmt: skip
    total = time.perf_counter() - start
    result = out["bank"]
    assert result is not None
    return {
        "family": "vertical_lr",
        "kernel": "score",
        "params": {
            "applicants": applicants,
            "tax_rows": tables["tax"].num_rows,
            "registry_rows": tables["registry"].num_rows,
        },
        "ops_per_s": applicants / total,
        "seconds": total,
        "scored": result.summary["scored"],
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Quick: 2,000 rows × (3 + 30) features at 1024 bits; full: 10^4 and 10^5 × (30 + 300).

    Then scoring: quick 1,000 applicants, full 20,000 (among a universe of 50,000 firms).
    """
    spec = os.environ.get("BUND_BENCH_EXECUTOR", f"thread:{os.cpu_count() or 1}")
    was_on = insecure.insecure_test_parameters_enabled()
    if not quick:
        rows = [epoch(n, 30, 300, 2048, 1024, spec) for n in (10_000, 100_000)]
    insecure.enable_insecure_test_parameters()
    try:
        if quick:
            return [epoch(2_000, 3, 30, 1024, 512, spec), score(5_000, 1_000)]
        return [*rows, score(50_000, 20_000)]
    finally:
        if not was_on:
            insecure.disable_insecure_test_parameters()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=0, help="one epoch at this many rows only")
    parser.add_argument("--bits", type=int, default=2048)
    args = parser.parse_args()
    spec = os.environ.get("BUND_BENCH_EXECUTOR", f"thread:{os.cpu_count() or 1}")
    if args.rows:
        rows = [epoch(args.rows, 30, 300, args.bits, 1024, spec)]
    else:
        rows = run(args.quick)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
