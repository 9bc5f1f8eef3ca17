"""Okamoto–Uchiyama against Paillier against python-paillier (``phe``), in one run.

Each row times one kernel of ``bund.compute.ou`` and the same kernel of ``bund.compute.paillier``
and of ``phe`` (with gmpy2), on keys of the same modulus size in the same process, and reports
``ops_per_s`` (OU), ``paillier_ops_per_s``, ``phe_ops_per_s``, ``ratio_vs_paillier`` and
``ratio_vs_phe`` (OU's rate divided by theirs). Rates are **CPU-time** rates
(``time.process_time``, best of a few runs, one thread): the development machine's two cores are
shared, and CPU seconds move less than wall seconds under other people's load.

Kernels (``--quick``: 1024-bit keys behind the test-only switch, small counts):

- ``keygen``: mean of a few key generations (OU's primes are a third of the modulus).
- ``encrypt_key_owner``: the key owner's encryption (OU: ``g^m·h^r``, 256-bit ``r``, CRT tables;
  Paillier: DJN with CRT tables) of 24-bit signed residuals, vs ``phe``'s ``encrypt``.
- ``encrypt_evaluator``: a non-owner's encryption (OU: ``g^m·u^n`` with ``u`` uniform in ``Z*_n``;
  Paillier: DJN fixed-base table), and ``rerandomise``: one fresh randomiser times a ciphertext.
- ``encrypt_pooled_online``: encryption from a full pool (the refill is not timed).
- ``add``: ciphertext + ciphertext; ``mul_scalar``: ciphertext × signed 32-bit scalar.
- ``matvec_per_term``: the vertical LR shape, 300 features × 1,024 rows of 20-bit features times
  24-bit encrypted residuals (Pippenger per row), in terms/s; ``phe``: ``Σ x·[[r]]`` per term.
- ``decrypt``: per ciphertext; ``decrypt_packed_per_value``: per value through the decryption
  service (OU: the range guard, with 40 + log2(10^6) bits of headroom), 95-bit slots (the masked
  gradient of a 1,024-row batch); ``slots`` is in the params: OU packs fewer values a ciphertext.

Run: ``PYTHONPATH=. .venv/bin/python -m benchmarks.suite ou [--quick] [--json FILE]``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import phe

from bund.compute import he, insecure, ou
from bund.compute import paillier as pl

FAMILY = "ou"
#: Decryptions the packed row's guard is sized for (a long vertical LR job).
DECRYPTIONS = 10**6
#: Slot bound of the packed row: a 1,024-row batch's masked gradient (95-bit slots).
SLOT_BOUND = (1 << 94) - 1
QUICK_NOTE = "quick mode: small key behind the test-only switch"


def _best_cpu_rate(fn: Callable[[], object], count: int, repeats: int) -> float:
    """``count`` divided by the least CPU time of ``repeats`` runs of ``fn``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return count / max(best, 1e-9)


def _mean_cpu_seconds(fn: Callable[[], object], repeats: int) -> float:
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats


def _signed(count: int, bits: int) -> list[int]:
    half = 1 << (bits - 1)
    return [secrets.randbelow(2 * half) - half for _ in range(count)]


class _Bench:
    """The measurements for one modulus size."""

    def __init__(self, bits: int, quick: bool) -> None:
        self.bits, self.quick = bits, quick
        self.repeats = 2 if quick else 3
        self.count = 100 if quick else 400
        self.phe_count = 20 if quick else 60
        self.rows: list[dict[str, Any]] = []
        self.ou_public, self.ou_private = ou.generate_keypair(bits)
        self.pl_public, self.pl_private = pl.generate_keypair(bits)
        self.ou_owner, self.ou_enc = ou.Encryptor(self.ou_private), ou.Encryptor(self.ou_public)
        self.pl_owner, self.pl_enc = pl.Encryptor(self.pl_private), pl.Encryptor(self.pl_public)
        self.phe_public = pl.to_phe_public_key(self.pl_public)
        self.phe_private = pl.to_phe_private_key(self.pl_private)
        self.residuals = _signed(self.count, 25)
        self.ou_cts = self.ou_owner.encrypt_raw(self.residuals)
        self.pl_cts = self.pl_owner.encrypt_raw([r % self.pl_public.n for r in self.residuals])
        self.phe_cts = [phe.EncryptedNumber(self.phe_public, int(c)) for c in self.pl_cts]

    def add_row(
        self,
        kernel: str,
        rates: tuple[float, float | None, float | None],
        unit: str,
        **params: Any,
    ) -> None:
        ours, paillier, theirs = rates
        self.rows.append(
            {
                "family": FAMILY,
                "kernel": kernel,
                "params": {"bits": self.bits, "threads": 1, **params},
                "ops_per_s": ours,
                "unit": unit,
                "timing": "cpu",
                "paillier_ops_per_s": paillier,
                "phe_ops_per_s": theirs,
                "ratio_vs_paillier": None if paillier is None else ours / paillier,
                "ratio_vs_phe": None if theirs is None else ours / theirs,
                **({"note": QUICK_NOTE} if self.quick else {}),
            }
        )

    def rate(self, fn: Callable[[], object], count: int) -> float:
        return _best_cpu_rate(fn, count, self.repeats)

    def keygen(self) -> None:
        runs, bits = (2 if self.quick else 4), self.bits
        self.add_row(
            "keygen",
            (
                1 / _mean_cpu_seconds(lambda: ou.generate_keypair(bits), runs),
                1 / _mean_cpu_seconds(lambda: pl.generate_keypair(bits), runs),
                1 / _mean_cpu_seconds(lambda: phe.generate_paillier_keypair(n_length=bits), runs),
            ),
            "keys/s",
            runs=runs,
        )

    def encryption(self) -> None:
        values, few = self.residuals, self.residuals[: self.phe_count]
        n = self.pl_public.n
        phe_rate = self.rate(lambda: [self.phe_public.encrypt(v) for v in few], len(few))
        owner = (
            self.rate(lambda: self.ou_owner.encrypt_raw(values), len(values)),
            self.rate(lambda: self.pl_owner.encrypt_raw([v % n for v in values]), len(values)),
            phe_rate,
        )
        self.add_row("encrypt_key_owner", owner, "ciphertexts/s", value_bits=25)
        some = values[: self.count // 4]
        evaluator = (
            self.rate(lambda: self.ou_enc.encrypt_raw(some), len(some)),
            self.rate(lambda: self.pl_enc.encrypt_raw([v % n for v in some]), len(some)),
            phe_rate,
        )
        self.add_row("encrypt_evaluator", evaluator, "ciphertexts/s", value_bits=25)
        cts, pcts = self.ou_cts[: len(some)], self.pl_cts[: len(some)]
        rerandomise = (
            self.rate(lambda: self.ou_enc.rerandomize(cts), len(cts)),
            self.rate(lambda: self.pl_enc.rerandomize(pcts), len(pcts)),
            None,
        )
        self.add_row("rerandomise", rerandomise, "ciphertexts/s")
        ou_pool = ou.ObfuscatorPool(self.ou_enc, capacity=len(values) * self.repeats)
        pl_pool = pl.ObfuscatorPool(self.pl_enc, capacity=len(values) * self.repeats)
        ou_pool.refill()
        pl_pool.refill()
        pooled = (
            self.rate(lambda: ou_pool.encrypt_raw(values), len(values)),
            self.rate(lambda: pl_pool.encrypt_raw([v % n for v in values]), len(values)),
            phe_rate,
        )
        self.add_row("encrypt_pooled_online", pooled, "ciphertexts/s", value_bits=25)

    def arithmetic(self) -> None:
        a, b = self.ou_cts, self.ou_cts[1:] + self.ou_cts[:1]
        pa, pb = self.pl_cts, self.pl_cts[1:] + self.pl_cts[:1]
        xa, xb = self.phe_cts, self.phe_cts[1:] + self.phe_cts[:1]
        add = (
            self.rate(lambda: ou.add_raw(self.ou_public, a, b), len(a)),
            self.rate(lambda: pl.add_raw(self.pl_public, pa, pb), len(pa)),
            self.rate(lambda: [x + y for x, y in zip(xa, xb, strict=True)], len(xa)),
        )
        self.add_row("add", add, "ops/s")
        ks = _signed(len(a), 32)
        few = self.phe_count
        mul = (
            self.rate(lambda: ou.mul_raw(self.ou_public, a, ks), len(a)),
            self.rate(lambda: pl.mul_raw(self.pl_public, pa, ks), len(pa)),
            self.rate(lambda: [x * k for x, k in zip(xa[:few], ks[:few], strict=True)], few),
        )
        self.add_row("mul_scalar", mul, "ops/s", scalar_bits=32)

    def matvec(self) -> None:
        rows, terms = (30, 256) if self.quick else (300, 1024)
        rng = np.random.default_rng(0)  # synthetic features only
        features = rng.integers(-(5 << 16), 5 << 16, size=(rows, terms))
        residuals = rng.integers(-(1 << 24), 1 << 24, size=terms).tolist()
        ou_vec = ou.encrypt(self.ou_owner, residuals)
        pl_vec = pl.encrypt(self.pl_owner, residuals)
        phe_terms = 200 if self.quick else 600
        xs = features[0, :phe_terms].tolist()
        numbers = [self.phe_cts[i % len(self.phe_cts)] for i in range(len(xs))]
        zero = phe.EncryptedNumber(self.phe_public, 1)
        repeats = 1 if not self.quick else 2
        product = (
            _best_cpu_rate(lambda: ou.matvec(features, ou_vec), features.size, repeats),
            _best_cpu_rate(lambda: pl.matvec(features, pl_vec), features.size, repeats),
            self.rate(
                lambda: sum((x * e for x, e in zip(xs, numbers, strict=True)), zero), len(xs)
            ),
        )
        self.add_row(
            "matvec_per_term",
            product,
            "terms/s",
            rows=rows,
            terms=terms,
            scalar_bits=20,
            phe_terms=len(xs),
        )

    def decryption(self) -> None:
        cts, pcts = self.ou_cts, self.pl_cts
        few = [int(c) for c in pcts[: self.phe_count]]
        phe_rate = self.rate(lambda: [self.phe_private.raw_decrypt(c) for c in few], len(few))
        decrypt = (
            self.rate(lambda: self.ou_private.decrypt_raw(cts), len(cts)),
            self.rate(lambda: self.pl_private.decrypt_raw(pcts), len(pcts)),
            phe_rate,
        )
        self.add_row("decrypt", decrypt, "ciphertexts/s")
        rates: list[float] = []
        slots: list[int] = []
        for scheme in ("ou", "paillier"):
            secret = he.create_scheme(scheme).generate_keypair(self.bits)
            public = secret.public_key
            capacity = public.packing_bits(DECRYPTIONS)
            count = 8 * (capacity // (SLOT_BOUND.bit_length() + 1))
            values = [secrets.randbelow(SLOT_BOUND) for _ in range(count)]
            packed = secret.encryptor().encrypt(values).squeeze(SLOT_BOUND, capacity)
            service = secret.decryption_service(DECRYPTIONS)
            rates.append(self.rate(partial(service.decrypt_packed, packed), count))
            slots.append(packed.layout[1])
        self.add_row(
            "decrypt_packed_per_value",
            (rates[0], rates[1], phe_rate),
            "values/s",
            slot_bits=SLOT_BOUND.bit_length() + 1,
            slots=slots[0],
            paillier_slots=slots[1],
        )


def _run_size(bits: int, quick: bool) -> list[dict[str, Any]]:
    bench = _Bench(bits, quick)
    bench.keygen()
    bench.encryption()
    bench.arithmetic()
    bench.matvec()
    bench.decryption()
    return bench.rows


def run(quick: bool) -> list[dict[str, Any]]:
    """Every kernel at 2048 bits (quick: 1024 bits, behind the test-only switch)."""
    if not quick:
        return _run_size(2048, quick)
    was_on = insecure.insecure_test_parameters_enabled()
    insecure.enable_insecure_test_parameters()
    try:
        return _run_size(1024, quick)
    finally:
        if not was_on:
            insecure.disable_insecure_test_parameters()
