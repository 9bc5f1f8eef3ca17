"""Zero-knowledge proofs and full re-randomisation (``bund.compute.zk``) against DJN obfuscation.

One run, one key size (2048 bits; ``--quick``: 1024 bits behind the test-only switch), every row
a wall-clock time per operation, best of a few runs (``repeats`` in the row), and
``cost_vs_djn``: that time over the time of the baseline, one DJN obfuscation of one ciphertext
(``Encryptor(public_key).rerandomize``, a fixed-base table lookup of ``h_s^r``), measured in the
same run on the same key. Size rows carry ``bytes`` and ``bytes_vs_ciphertext`` (over one
``2K``-byte ciphertext).

- ``djn_obfuscate``: the baseline, per ciphertext.
- ``rerandomise_full``: ``c·r^N mod N²`` with a fresh full ``r`` (``FullRandomness.rerandomize``),
  per ciphertext, on 1 and 2 threads.
- ``mod_prove`` / ``mod_verify`` / ``mod_proof``: Π^mod with 80 repetitions, per proof.
- ``prm_setup``: ``generate_ring_pedersen`` (two safe primes; mean of a few, as prime search
  varies); ``prm_prove`` / ``prm_verify`` / ``prm_proof``: Π^prm with 80 repetitions.
- ``enc_prove`` / ``enc_verify`` / ``enc_proof``: Π^enc per ciphertext (ℓ = 64, ε = 160,
  c = 80), a 2048-bit Paillier key against 2048-bit ring-Pedersen parameters; the 2-thread rows
  use ``prove_enc_many`` / ``verify_enc_many`` on a thread executor.

Run: ``PYTHONPATH=. .venv/bin/python -m benchmarks.bench_zk [--quick] [--json FILE]`` (about a
minute; ``--quick`` a few seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bund.compute import insecure
from bund.compute import paillier as pl
from bund.compute.executor import ThreadExecutor
from bund.compute.zk import enc, mod, prm
from bund.compute.zk.randomness import FullRandomness
from bund.compute.zk.transcript import make_context

FAMILY = "zk"
_CONTEXT = make_context("bench", "zk")


def _best_seconds(fn: Callable[[], object], count: int, repeats: int) -> float:
    """Seconds per operation: the fastest of ``repeats`` runs of ``fn`` (``count`` operations)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / count


class _Bench:
    def __init__(self, bits: int, quick: bool) -> None:
        self.bits = bits
        self.quick = quick
        self.repeats = 2 if quick else 3
        self.count = 20 if quick else 60
        self.rows: list[dict[str, Any]] = []
        self.public, self.private = pl.generate_keypair(bits)
        self.encryptor = pl.Encryptor(self.public)
        plaintexts = [secrets.randbelow(1 << 64) for _ in range(self.count)]
        self.ciphertexts = self.encryptor.encrypt_raw(plaintexts)
        self.baseline = _best_seconds(
            lambda: self.encryptor.rerandomize(self.ciphertexts), self.count, self.repeats
        )
        self.ciphertext_bytes = 2 * ((bits + 7) // 8)

    def add_row(self, kernel: str, seconds: float, unit: str, **params: Any) -> None:
        self.rows.append(
            {
                "family": FAMILY,
                "kernel": kernel,
                "params": {
                    "bits": self.bits,
                    "threads": 1,
                    **params,
                    "insecure_test_key": self.bits < pl.MIN_KEY_BITS,
                },
                "ops_per_s": 1 / seconds,
                "unit": unit,
                "seconds_per_op": seconds,
                "cost_vs_djn": seconds / self.baseline,
            }
        )

    def add_size(self, kernel: str, size: int, **params: Any) -> None:
        self.rows.append(
            {
                "family": FAMILY,
                "kernel": kernel,
                "params": {"bits": self.bits, **params},
                "ops_per_s": None,
                "unit": "bytes",
                "bytes": size,
                "bytes_vs_ciphertext": size / self.ciphertext_bytes,
            }
        )

    def rerandomisation(self, two: ThreadExecutor) -> None:
        self.add_row("djn_obfuscate", self.baseline, "ciphertexts/s", repeats=self.repeats)
        source = FullRandomness(self.public)
        one = _best_seconds(lambda: source.rerandomize(self.ciphertexts), self.count, self.repeats)
        self.add_row("rerandomise_full", one, "ciphertexts/s", repeats=self.repeats)
        both = _best_seconds(
            lambda: source.rerandomize(self.ciphertexts, two), self.count, self.repeats
        )
        self.add_row(
            "rerandomise_full",
            both,
            "ciphertexts/s",
            threads=2,
            repeats=self.repeats,
            speedup_vs_1_thread=one / both,
        )

    def modulus_proof(self) -> None:
        proof = mod.prove_mod(self.private, _CONTEXT)
        seconds = _best_seconds(lambda: mod.prove_mod(self.private, _CONTEXT), 1, self.repeats)
        self.add_row("mod_prove", seconds, "proofs/s", repetitions=proof.repetitions)
        seconds = _best_seconds(
            lambda: mod.verify_mod(self.public, proof, _CONTEXT), 1, self.repeats
        )
        self.add_row("mod_verify", seconds, "proofs/s", repetitions=proof.repetitions)
        self.add_size("mod_proof", len(proof.to_bytes()), repetitions=proof.repetitions)

    def parameters_proof(self) -> prm.RingPedersenParams:
        setups = 2 if self.quick else 3
        start = time.perf_counter()
        secrets_made = [prm.generate_ring_pedersen(self.bits) for _ in range(setups)]
        self.add_row(
            "prm_setup", (time.perf_counter() - start) / setups, "setups/s", mean_of=setups
        )
        ring = secrets_made[-1]
        proof = prm.prove_prm(ring, _CONTEXT)
        seconds = _best_seconds(lambda: prm.prove_prm(ring, _CONTEXT), 1, self.repeats)
        self.add_row("prm_prove", seconds, "proofs/s", repetitions=proof.repetitions)
        seconds = _best_seconds(
            lambda: prm.verify_prm(ring.params, proof, _CONTEXT), 1, self.repeats
        )
        self.add_row("prm_verify", seconds, "proofs/s", repetitions=proof.repetitions)
        self.add_size("prm_proof", len(proof.to_bytes()), repetitions=proof.repetitions)
        self.add_size("prm_parameters", len(ring.params.to_bytes()))
        return ring.params

    def range_proof(self, ring: prm.RingPedersenParams, two: ThreadExecutor) -> None:
        cts = self.ciphertexts[: max(4, self.count // 3)]
        params = enc.DEFAULT_ENC_PARAMETERS
        shape = {
            "ell": params.ell,
            "epsilon": params.epsilon,
            "challenge_bits": params.challenge_bits,
        }
        proofs = enc.prove_enc_many(self.private, cts, ring, _CONTEXT)
        one = _best_seconds(
            lambda: enc.prove_enc_many(self.private, cts, ring, _CONTEXT), len(cts), self.repeats
        )
        self.add_row("enc_prove", one, "ciphertexts/s", **shape)
        both = _best_seconds(
            lambda: enc.prove_enc_many(self.private, cts, ring, _CONTEXT, executor=two),
            len(cts),
            self.repeats,
        )
        self.add_row(
            "enc_prove", both, "ciphertexts/s", threads=2, speedup_vs_1_thread=one / both, **shape
        )
        one = _best_seconds(
            lambda: enc.verify_enc_many(self.public, cts, ring, proofs, _CONTEXT),
            len(cts),
            self.repeats,
        )
        self.add_row("enc_verify", one, "ciphertexts/s", **shape)
        both = _best_seconds(
            lambda: enc.verify_enc_many(self.public, cts, ring, proofs, _CONTEXT, executor=two),
            len(cts),
            self.repeats,
        )
        self.add_row(
            "enc_verify", both, "ciphertexts/s", threads=2, speedup_vs_1_thread=one / both, **shape
        )
        self.add_size("enc_proof", len(proofs[0].to_bytes()), **shape)


def _run_size(bits: int, quick: bool) -> list[dict[str, Any]]:
    bench = _Bench(bits, quick)
    with ThreadExecutor(2) as two:
        bench.rerandomisation(two)
        bench.modulus_proof()
        ring = bench.parameters_proof()
        bench.range_proof(ring, two)
    return bench.rows


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure every row at 2048 bits (quick: 1024 bits, behind the test-only switch)."""
    if not quick:
        return _run_size(2048, quick)
    was_on = insecure.insecure_test_parameters_enabled()
    insecure.enable_insecure_test_parameters()
    try:
        return _run_size(1024, quick)
    finally:
        if not was_on:
            insecure.disable_insecure_test_parameters()


def _print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="zk proofs and re-randomisation vs DJN obfuscation")
    for column in ("kernel", "params", "per op", "rate", "vs DJN"):
        table.add_column(column, justify="left" if column in ("kernel", "params") else "right")
    for row in rows:
        params = " ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in row["params"].items()
            if k not in ("insecure_test_key", "bits")
        )
        if row["ops_per_s"] is None:
            per_op, rate = f"{row['bytes']:,} B", ""
            ratio = f"{row['bytes_vs_ciphertext']:.1f}× a ciphertext"
        else:
            per_op = f"{row['seconds_per_op'] * 1e3:,.2f} ms"
            rate = f"{row['ops_per_s']:,.1f} {row['unit']}"
            ratio = f"{row['cost_vs_djn']:,.1f}×"
        table.add_row(row["kernel"], params, per_op, rate, ratio)
    Console(width=160).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1024-bit test keys, small counts")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write a JSON report")
    args = parser.parse_args()
    from benchmarks.suite import machine_info

    machine = machine_info()
    started = time.perf_counter()
    rows = run(args.quick)
    machine["load_average_at_end"] = list(os.getloadavg())
    _print_table(rows)
    if args.json:
        report = {
            "machine": machine,
            "parameters": {
                "kernel": FAMILY,
                "quick": args.quick,
                "wall_s": time.perf_counter() - started,
            },
            "rows": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
