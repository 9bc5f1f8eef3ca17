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

``--scheme both`` (and the suite's runs) alternate the two schemes batch by batch, so both meet
the same load: their CPU-second ratio is then fair on a shared machine (``paired`` in the row).

Under Paillier the provider verifies the bank's Π^mod once (``key_proof``, counted in the epoch;
the bank's proving time is ``prove_cpu_seconds``, once per job) and re-randomises each packed
gradient with its own full ``r^N`` (``rerandomise``). Each batch also times, on the same packed
gradient, the re-randomisation the provider used before issue 14, the bank's DJN ``h_s^r``
(``rerandomise_djn``, not part of the epoch), so a row carries the epoch before and after the
change measured in the same run: ``*_before`` = the epoch − ``key_proof`` − ``rerandomise`` +
``rerandomise_djn``.

``--label-dp`` measures the accuracy cost of label DP instead (no encryption: the plaintext
reference ``fit_vertical``, which the protocol equals bit for bit): held-out AUC and KS of the
joint model trained on the bank's labels randomised at each ε (mean and spread over repeated
randomisations, with and without the unbiasing correction), against true labels and the
bank-only model, on the demo generator's data with the demo's training parameters.

Run: ``python -m benchmarks.bench_vertical_lr [--quick] [--rows N] [--scheme paillier|ou|both]
[--label-dp]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import Any

import numpy as np

from bund.compute import he, insecure
from bund.compute import paillier as pl
from bund.compute.dp.mechanisms import RandomizedResponse
from bund.compute.executor import Executor, create_executor
from bund.compute.learn import logistic as lg
from bund.compute.learn.metrics import auc, ks_statistic
from bund.parties.demo_data import DEMO_SEED, generate_finance
from bund.parties.jobs import (
    JobSpec,
    Participant,
    PriorResultError,
    Result,
    new_job_id,
    run_in_memory,
)
from bund.parties.protocols import vertical_lr, vertical_score
from bund.parties.protocols.vertical_alignment import feature_matrix, numeric_features
from bund.parties.protocols.vertical_lr import _masked_bound, mask_layout, max_decryptions

PHASES = ("key", "plaintext", "encrypt", "products", "rerandomise", "network", "decrypt")
#: Timed beside the epoch, not in it: Paillier's proof check and the re-randomisation before.
SHADOW = ("key_proof", "rerandomise_djn")
#: Epochs of the job whose layout the benchmark uses (the protocol's default).
JOB_EPOCHS = lg.TrainConfig().epochs


def cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its finished children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class _Clock:
    """Wall and CPU seconds spent in each phase."""

    def __init__(self) -> None:
        self.wall = dict.fromkeys(PHASES + SHADOW, 0.0)
        self.cpu = dict.fromkeys(PHASES + SHADOW, 0.0)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), cpu_seconds()
        yield
        self.wall[name] += time.perf_counter() - wall
        self.cpu[name] += cpu_seconds() - cpu


class _EpochRun:
    """One scheme's epoch, batch by batch, with its own clock (so two schemes can alternate)."""

    def __init__(self, data: _Data, key_bits: int, scheme: str, ex: Executor) -> None:
        self.data, self.scheme, self.ex = data, scheme, ex
        engine = he.create_scheme(scheme)
        keygen_start = cpu_seconds()
        self.secret = engine.generate_keypair(key_bits)
        self.keygen = cpu_seconds() - keygen_start
        self.clock = _Clock()
        self.sent = 0
        self.slots = 0
        self.wb = np.zeros(data.xb.shape[1])
        self.wp = np.zeros(data.xp.shape[1])
        self.bias = 0.0
        decryptions = max_decryptions(JOB_EPOCHS, len(data.batches), 1)
        context = b"benchmark/vlr-key"
        prove_start = cpu_seconds()
        proof = self.secret.prove_modulus(context) if engine.proves_modulus else b""
        self.prove = cpu_seconds() - prove_start
        with self.clock.phase("key"):
            self.public = engine.public_key_from_bytes(self.secret.public_key.to_bytes())
            self.owner = self.secret.encryptor_for(ex)
            self.capacity = self.public.packing_bits(decryptions)
            self.service = self.secret.decryption_service(decryptions)
            self.provider = self.public.encryptor().pool(capacity=data.xp.shape[1])
        self.djn: pl.ObfuscatorPool | None = None
        if engine.proves_modulus:
            with self.clock.phase("key_proof"):
                self.public.verify_modulus(proof, context)
            self.pl_key = pl.PublicKey.from_bytes(self.public.to_bytes())
            with self.clock.phase("rerandomise_djn"):  # the DJN table the provider built before
                encryptor = pl.Encryptor(self.pl_key)
            self.djn = pl.ObfuscatorPool(encryptor, capacity=data.xp.shape[1])

    def batch(self, batch: Any) -> None:
        """The protocol's calls for one batch, each timed in its phase."""
        d, ex, clock, public = self.data, self.ex, self.clock, self.public
        features = d.xp.shape[1]
        with clock.phase("plaintext"):
            scores = lg.quantize_scores(lg.partial_scores(d.xp[batch], self.wp))
            z = lg.joint_scores(lg.partial_scores(d.xb[batch], self.wb), self.bias, [scores])
            rq = lg.residuals(z, d.y[batch])
        with clock.phase("encrypt"):
            enc = self.owner.encrypt(rq.tolist(), frac_bits=lg.RESIDUAL_FRAC_BITS, executor=ex)
        with clock.phase("network"):
            wire = enc.to_bytes(self.owner)
            got = public.vector_from_bytes(
                wire, frac_bits=lg.RESIDUAL_FRAC_BITS, max_count=len(batch)
            )
        with clock.phase("products"):
            grad = public.matvec(d.xp[batch].T, got, lg.FEATURE_FRAC_BITS, executor=ex)
            mask_bits, width, per = mask_layout(len(batch), self.capacity)
            masks = [secrets.randbits(mask_bits) for _ in range(features)]
            packed = grad.add_plain(masks).squeeze(_masked_bound(len(batch)), self.capacity)
        with clock.phase("rerandomise"):
            self.provider.refill(len(packed), ex)
            wire2 = packed.to_bytes(self.provider)
        if self.djn is not None:  # the same export as before issue 14: the bank's h_s^r
            before = pl.PackedVector.from_bytes(
                self.pl_key, wire2, slot_bits=width, slots=per, count=features,
                bound=_masked_bound(len(batch)), frac_bits=lg.GRADIENT_FRAC_BITS,
            )  # fmt: skip
            with clock.phase("rerandomise_djn"):
                self.djn.refill(len(packed), ex)
                before.to_bytes(self.djn)
        with clock.phase("network"):
            back = public.packed_from_bytes(
                wire2,
                slot_bits=width,
                slots=per,
                count=features,
                bound=_masked_bound(len(batch)),
                frac_bits=lg.GRADIENT_FRAC_BITS,
            )
        with clock.phase("decrypt"):
            masked = self.service.decrypt_packed(back, executor=ex)
        with clock.phase("plaintext"):
            exact = np.asarray([v - m for v, m in zip(masked, masks, strict=True)], dtype=np.int64)
            self.wp = lg.step(self.wp, exact, len(batch), 0.1, 1e-3)
            self.wb = lg.step(self.wb, lg.gradient_ints(d.xb[batch], rq), len(batch), 0.1, 1e-3)
            self.bias = lg.step_bias(self.bias, rq, 0.1)
        self.slots = per
        self.sent += len(wire) + len(wire2) + 8 * len(batch) + features * ((width + 7) // 8)

    def row(self, executor_spec: str, paired: bool) -> dict[str, Any]:
        """The benchmark row: wall and CPU seconds per epoch and each phase's share."""
        d = self.data
        c = self.clock
        wall = sum(c.wall[k] for k in PHASES) + c.wall["key_proof"]
        cpu = sum(c.cpu[k] for k in PHASES) + c.cpu["key_proof"]
        rows = d.xp.shape[0]
        before: dict[str, Any] = {}
        if self.djn is not None:
            old = {
                name: total - clock["key_proof"] - clock["rerandomise"] + clock["rerandomise_djn"]
                for name, total, clock in (("wall", wall, c.wall), ("cpu", cpu, c.cpu))
            }
            before = {
                "seconds_per_epoch_before": old["wall"],
                "cpu_seconds_per_epoch_before": old["cpu"],
                "cpu_ratio_after_before": cpu / old["cpu"],
                "prove_cpu_seconds": self.prove,
                "cpu_key_proof": c.cpu["key_proof"],
                "cpu_rerandomise": c.cpu["rerandomise"],
                "cpu_rerandomise_djn": c.cpu["rerandomise_djn"],
            }
        return {
            "family": "vertical_lr",
            "kernel": "epoch",
            "params": {
                "scheme": self.scheme,
                "rows": rows,
                "bank_features": d.xb.shape[1],
                "provider_features": d.xp.shape[1],
                "key_bits": self.public.bits,
                "batch_size": d.batch_size,
                "executor": executor_spec,
                "slots": self.slots,
                "paired": paired,
            },
            "ops_per_s": rows / wall,
            "seconds_per_epoch": wall,
            "cpu_seconds_per_epoch": cpu,
            "keygen_cpu_seconds": self.keygen,
            **{f"share_{k}": v / wall for k, v in self.clock.wall.items()},
            **{f"cpu_share_{k}": v / cpu for k, v in self.clock.cpu.items()},
            "bytes_per_epoch": self.sent,
            **before,
        }


class _Data:
    """Synthetic standardised features, labels and the epoch's batches."""

    def __init__(self, rows: int, bank_features: int, provider_features: int, batch_size: int):
        rng = np.random.default_rng(0)  # synthetic data only
        self.xb = lg.Standardiser.fit(x := rng.normal(size=(rows, bank_features))).apply(x)
        self.xp = lg.Standardiser.fit(x := rng.normal(size=(rows, provider_features))).apply(x)
        self.y = (rng.random(rows) < 0.12).astype(float)
        self.batch_size = batch_size
        self.batches = lg.epoch_batches(np.arange(rows), batch_size, 0, 0)


def epochs(
    rows: int,
    bank_features: int,
    provider_features: int,
    key_bits: int,
    batch_size: int,
    executor_spec: str,
    schemes: tuple[str, ...] = ("paillier",),
) -> list[dict[str, Any]]:
    """Time one epoch on each of ``schemes``; one row each.

    With several schemes the batches alternate between them (batch 1 on each scheme, then batch
    2 on each, ...), so every scheme meets the same load on a shared machine: the ratio of their
    CPU seconds is then a fair comparison even when the absolute figures drift.
    """
    data = _Data(rows, bank_features, provider_features, batch_size)
    with create_executor(executor_spec) as ex:
        runs = [_EpochRun(data, key_bits, scheme, ex) for scheme in schemes]
        for batch in data.batches:
            for run in runs:
                run.batch(batch)
    return [run.row(executor_spec, paired=len(runs) > 1) for run in runs]


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


#: The demo's training parameters (``bund.parties.demo.CREDIT_WORKFLOW``).
DEMO_TRAINING = lg.TrainConfig(epochs=8, batch_size=256, learning_rate=1.0, lr_decay=0.1, seed=7)


def _joined(universe: int, seed: int) -> tuple[list[lg.IntArray], Any, Any, Any]:
    """The demo generator's bank, tax and registry joined on company id, as training sees them."""
    data = generate_finance(universe, seed)
    tables = [data["loan_book"], data["tax_filings"], data["business_registry"]]
    index = [{c: i for i, c in enumerate(t.column("company_id"))} for t in tables]
    common = sorted(set(index[0]).intersection(*index[1:]))
    y = tables[0].numeric("default_12m")[[index[0][c] for c in common]]
    train, test = lg.split_rows(len(common), 0.3, DEMO_TRAINING.seed)
    blocks = []
    for k, table in enumerate(tables):
        exclude = {"company_id", "default_12m"}
        names, _ = numeric_features(table, exclude)
        raw = feature_matrix(table, names, [index[k][c] for c in common])
        blocks.append(lg.prepare_features(raw, train))
    return blocks, y, train, test


def label_dp(
    universe: int, seed: int, epsilons: tuple[str, ...], repeats: int
) -> list[dict[str, Any]]:
    """Held-out AUC and KS of the joint model trained on randomised labels, per ε.

    One row per ε: the mean and standard deviation over ``repeats`` randomisations, with the
    unbiasing correction (what ``vertical_lr`` does) and without it (training on the randomised
    labels as if true), beside the joint model on true labels and the bank-only model; ``loss``
    is the held-out logistic loss on the true labels (calibration: what the cut-off relies on).
    """
    blocks, y, train, test = _joined(universe, seed)

    def metrics(fit: lg.VerticalFit, own: list[lg.IntArray]) -> tuple[float, float, float]:
        z = lg.predict_scores(own, fit, test)
        return auc(y[test], z), ks_statistic(y[test], lg.sigmoid(z))[0], lg.log_loss(z, y[test])

    exact = metrics(lg.fit_vertical(blocks, y, train, DEMO_TRAINING), blocks)
    alone = metrics(lg.fit_vertical(blocks[:1], y, train, DEMO_TRAINING), blocks[:1])
    rows = []
    for text in epsilons:
        rr = RandomizedResponse.create(Fraction(text))
        corrected = dataclasses.replace(DEMO_TRAINING, label_flip=float(rr.flip))
        runs: dict[str, list[tuple[float, float, float]]] = {"corrected": [], "uncorrected": []}
        for _ in range(repeats):
            noisy = y.copy()
            noisy[train] = rr.apply(y[train].astype(np.int64))
            for name, config in (("corrected", corrected), ("uncorrected", DEMO_TRAINING)):
                runs[name].append(metrics(lg.fit_vertical(blocks, noisy, train, config), blocks))
        row: dict[str, Any] = {
            "family": "vertical_lr",
            "kernel": "label_dp",
            "params": {
                "epsilon": text, "flip": float(rr.flip), "aligned_rows": len(y),
                "train_rows": len(train), "repeats": repeats, "universe": universe, "seed": seed,
            },
            "auc_true_labels": exact[0], "ks_true_labels": exact[1], "loss_true_labels": exact[2],
            "auc_bank_only": alone[0], "ks_bank_only": alone[1], "loss_bank_only": alone[2],
        }  # fmt: skip
        for name, values in runs.items():
            a = np.asarray(values)
            row |= {
                f"auc_{name}_mean": float(a[:, 0].mean()), f"auc_{name}_sd": float(a[:, 0].std()),
                f"ks_{name}_mean": float(a[:, 1].mean()), f"ks_{name}_sd": float(a[:, 1].std()),
                f"loss_{name}_mean": float(a[:, 2].mean()),
            }  # fmt: skip
        rows.append(row)
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """Quick: 2,000 rows × (3 + 30) at 1024 bits; full: 10^4 and 10^5 × (30 + 300) at 2048.

    Each size runs on both schemes, batches alternating (a paired comparison). Then scoring:
    quick 1,000 applicants, full 20,000 (among a universe of 50,000 firms).
    """
    spec = os.environ.get("BUND_BENCH_EXECUTOR", f"thread:{os.cpu_count() or 1}")
    was_on = insecure.insecure_test_parameters_enabled()
    schemes = ("paillier", "ou")
    if not quick:
        rows = [
            row for n in (10_000, 100_000) for row in epochs(n, 30, 300, 2048, 1024, spec, schemes)
        ]
    insecure.enable_insecure_test_parameters()
    try:
        if quick:
            return [*epochs(2_000, 3, 30, 1024, 512, spec, schemes), score(5_000, 1_000)]
        return [*rows, score(50_000, 20_000)]
    finally:
        if not was_on:
            insecure.disable_insecure_test_parameters()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=0, help="one epoch at this many rows only")
    parser.add_argument("--bits", type=int, default=2048)
    parser.add_argument(
        "--label-dp",
        action="store_true",
        help="the accuracy cost of label DP (plaintext reference, demo data) instead of timing",
    )
    parser.add_argument(
        "--scheme",
        choices=[*sorted(he.SCHEMES), "both"],
        default="paillier",
        help="both: Paillier and OU, batches alternating (a paired comparison)",
    )
    args = parser.parse_args()
    spec = os.environ.get("BUND_BENCH_EXECUTOR", f"thread:{os.cpu_count() or 1}")
    if args.label_dp:
        epsilons = ("1/2", "1", "2", "4", "8")
        rows = label_dp(5_000, DEMO_SEED, epsilons, 20) + label_dp(50_000, 1, epsilons, 10)
    elif args.rows:
        schemes = ("paillier", "ou") if args.scheme == "both" else (args.scheme,)
        rows = epochs(args.rows, 30, 300, args.bits, 1024, spec, schemes)
    else:
        rows = run(args.quick)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
