"""Vertical LR benchmark: one training epoch, timed by phase, at the kernel level, on either scheme.

One process plays the bank and one provider in turn, with the same calls the protocol makes
(``bund/parties/protocols/vertical_lr.py``, through ``bund.compute.he``) on synthetic standardised
features, under the job's scheme (``--scheme paillier|ou``): the provider's check of the bank's
public key (``key``, once per job); per batch, the provider's partial scores and the bank's
residuals (plaintext); the key owner's encryption of the residuals (``encrypt``); the provider's
``matvec`` of its features with the encrypted residuals, its mask and the squeeze into packed
slots (``products``); the provider's re-randomisation of its packed gradient with its own
randomness (``rerandomise``: under OU ``u^n`` with ``u`` uniform in ``Z*_n``); serialisation and
the receiving side's validation of every ciphertext (``network``: the wire's CPU share; the bytes
are reported, transfer time over a real link is not included); the bank's decryption through its
decryption service (``decrypt``; under OU the range guard). The packed layout is the protocol's:
capacity ``public_key.packing_bits(max_decryptions(10 epochs, batches, 1 provider))``, so OU packs
fewer gradients a ciphertext (``slots`` in the row). The bank's own features only add plaintext
work, so a run with 30 bank and 300 provider features measures the provider side of 300.

Each row has wall and **CPU** seconds per epoch (``time.process_time`` of this process, every
thread, plus its children's CPU time for process executors) and each phase's share of both; on
the shared 2-core machine CPU seconds are the figure to compare. ``ops_per_s`` is rows per wall
second. The executor is ``BUND_BENCH_EXECUTOR`` (default ``thread:<cores>``).

A ``score`` row times ``vertical_score`` (scoring new applicants with a trained model) as a whole
protocol in one process, every role in its own thread over the in-memory transport: PSI alignment
of the applicants with both providers, the providers' masked partial scores, the bank's sum;
``ops_per_s`` is applicants per second.

Run: ``python -m benchmarks.bench_vertical_lr [--quick] [--rows N] [--scheme paillier|ou]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from bund.compute import he, insecure
from bund.compute.executor import create_executor
from bund.compute.learn import logistic as lg
from bund.parties.data import generate_finance
from bund.parties.jobs import (
    JobSpec,
    Participant,
    PriorResultError,
    Result,
    new_job_id,
    run_in_memory,
)
from bund.parties.protocols import vertical_lr, vertical_score
from bund.parties.protocols.vertical_lr import _masked_bound, mask_layout, max_decryptions

PHASES = ("key", "plaintext", "encrypt", "products", "rerandomise", "network", "decrypt")
#: Epochs of the job whose layout the benchmark uses (the protocol's default).
JOB_EPOCHS = lg.TrainConfig().epochs


def cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its finished children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class _Clock:
    """Wall and CPU seconds spent in each phase."""

    def __init__(self) -> None:
        self.wall = dict.fromkeys(PHASES, 0.0)
        self.cpu = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), cpu_seconds()
        yield
        self.wall[name] += time.perf_counter() - wall
        self.cpu[name] += cpu_seconds() - cpu


def epoch(
    rows: int,
    bank_features: int,
    provider_features: int,
    key_bits: int,
    batch_size: int,
    executor_spec: str,
    scheme: str = "paillier",
) -> dict[str, Any]:
    """Time one epoch on ``scheme``; returns a benchmark row."""
    rng = np.random.default_rng(0)  # synthetic data only
    xb = lg.Standardiser.fit(x := rng.normal(size=(rows, bank_features))).apply(x)
    xp = lg.Standardiser.fit(x := rng.normal(size=(rows, provider_features))).apply(x)
    y = (rng.random(rows) < 0.12).astype(float)
    engine = he.create_scheme(scheme)
    keygen_start = cpu_seconds()
    secret = engine.generate_keypair(key_bits)
    keygen = cpu_seconds() - keygen_start
    wb, wp, bias = np.zeros(bank_features), np.zeros(provider_features), 0.0
    clock = _Clock()
    sent = 0
    batches = lg.epoch_batches(np.arange(rows), batch_size, 0, 0)
    decryptions = max_decryptions(JOB_EPOCHS, len(batches), 1)
    with create_executor(executor_spec) as ex:
        start_wall, start_cpu = time.perf_counter(), cpu_seconds()
        with clock.phase("key"):
            public = engine.public_key_from_bytes(secret.public_key.to_bytes())  # validated
            owner = secret.encryptor_for(ex)
            capacity = public.packing_bits(decryptions)
            service = secret.decryption_service(decryptions)
            provider = public.encryptor().pool(capacity=provider_features)
        slots = 0
        for batch in batches:
            with clock.phase("plaintext"):
                scores = lg.quantize_scores(lg.partial_scores(xp[batch], wp))
                z = lg.joint_scores(lg.partial_scores(xb[batch], wb), bias, [scores])
                rq = lg.residuals(z, y[batch])
            with clock.phase("encrypt"):
                enc = owner.encrypt(rq.tolist(), frac_bits=lg.RESIDUAL_FRAC_BITS, executor=ex)
            with clock.phase("network"):
                wire = enc.to_bytes(owner)
                got = public.vector_from_bytes(
                    wire, frac_bits=lg.RESIDUAL_FRAC_BITS, max_count=len(batch)
                )
            with clock.phase("products"):
                grad = public.matvec(xp[batch].T, got, lg.FEATURE_FRAC_BITS, executor=ex)
                mask_bits, width, per = mask_layout(len(batch), capacity)
                masks = [secrets.randbits(mask_bits) for _ in range(provider_features)]
                packed = grad.add_plain(masks).squeeze(_masked_bound(len(batch)), capacity)
            with clock.phase("rerandomise"):
                provider.refill(len(packed), ex)
                wire2 = packed.to_bytes(provider)
            with clock.phase("network"):
                back = public.packed_from_bytes(
                    wire2,
                    slot_bits=width,
                    slots=per,
                    count=provider_features,
                    bound=_masked_bound(len(batch)),
                    frac_bits=lg.GRADIENT_FRAC_BITS,
                )
            with clock.phase("decrypt"):
                masked = service.decrypt_packed(back, executor=ex)
            with clock.phase("plaintext"):
                exact = np.asarray(
                    [v - m for v, m in zip(masked, masks, strict=True)], dtype=np.int64
                )
                wp = lg.step(wp, exact, len(batch), 0.1, 1e-3)
                wb = lg.step(wb, lg.gradient_ints(xb[batch], rq), len(batch), 0.1, 1e-3)
                bias = lg.step_bias(bias, rq, 0.1)
            slots = per
            sent += len(wire) + len(wire2) + 8 * len(batch)
            sent += provider_features * ((width + 7) // 8)
        wall, cpu = time.perf_counter() - start_wall, cpu_seconds() - start_cpu
    return {
        "family": "vertical_lr",
        "kernel": "epoch",
        "params": {
            "scheme": scheme,
            "rows": rows,
            "bank_features": bank_features,
            "provider_features": provider_features,
            "key_bits": key_bits,
            "batch_size": batch_size,
            "executor": executor_spec,
            "slots": slots,
        },
        "ops_per_s": rows / wall,
        "seconds_per_epoch": wall,
        "cpu_seconds_per_epoch": cpu,
        "keygen_cpu_seconds": keygen,
        **{f"share_{k}": v / wall for k, v in clock.wall.items()},
        **{f"cpu_share_{k}": v / cpu for k, v in clock.cpu.items()},
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
    """Quick: 2,000 rows × (3 + 30) at 1024 bits; full: 10^4 and 10^5 × (30 + 300) at 2048.

    Each size runs on both schemes, Paillier then OU. Then scoring: quick 1,000 applicants,
    full 20,000 (among a universe of 50,000 firms).
    """
    spec = os.environ.get("BUND_BENCH_EXECUTOR", f"thread:{os.cpu_count() or 1}")
    was_on = insecure.insecure_test_parameters_enabled()
    schemes = ("paillier", "ou")
    if not quick:
        rows = [
            epoch(n, 30, 300, 2048, 1024, spec, scheme)
            for n in (10_000, 100_000)
            for scheme in schemes
        ]
    insecure.enable_insecure_test_parameters()
    try:
        if quick:
            epochs = [epoch(2_000, 3, 30, 1024, 512, spec, scheme) for scheme in schemes]
            return [*epochs, score(5_000, 1_000)]
        return [*rows, score(50_000, 20_000)]
    finally:
        if not was_on:
            insecure.disable_insecure_test_parameters()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=0, help="one epoch at this many rows only")
    parser.add_argument("--bits", type=int, default=2048)
    parser.add_argument("--scheme", choices=sorted(he.SCHEMES), default="paillier")
    args = parser.parse_args()
    spec = os.environ.get("BUND_BENCH_EXECUTOR", f"thread:{os.cpu_count() or 1}")
    if args.rows:
        rows = [epoch(args.rows, 30, 300, args.bits, 1024, spec, args.scheme)]
    else:
        rows = run(args.quick)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
