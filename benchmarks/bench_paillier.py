"""Paillier kernels of ``bund.compute.paillier`` against python-paillier (``phe``), in one run.

Every row times one kernel of Bund's engine and the same kernel of ``phe`` (with gmpy2) on the
same modulus in the same process, and reports ``ratio_vs_phe`` = Bund's rate / phe's rate.
Rates are wall-clock, best of a few runs (``repeats`` in the row), so that the 2-thread rows and
the 1-thread rows are measured alike; on a shared machine the best run is the least disturbed.

Kernels, at 2048 and 3072 bits (``--quick``: one 1024-bit key behind the test-only switch, small
counts, 1 and 2 threads):

- ``keygen``: ``generate_keypair`` vs ``phe.generate_paillier_keypair`` (mean of several, as prime
  search time varies); ``encryptor_table_s`` in the params is the one-off fixed-base table build.
- ``encrypt``: ``Encryptor(public_key).encrypt_raw`` (DJN short randomness, fixed-base table) of
  random plaintexts below ``n`` vs ``PaillierPublicKey.raw_encrypt``; on 1 and 2 threads.
- ``encrypt_pooled_online``: ``ObfuscatorPool.encrypt_raw`` from a full pool (the refill is not
  timed: it costs what ``encrypt`` costs, off the critical path) vs phe's ``raw_encrypt``.
- ``encrypt_key_owner``: ``Encryptor(private_key)`` (CRT modulo p² and q²) vs phe's
  ``raw_encrypt`` (phe has no key-owner path).
- ``decrypt``: ``PrivateKey.decrypt_raw`` (CRT) vs ``PaillierPrivateKey.raw_decrypt``, per
  ciphertext; on 1 and 2 threads.
- ``decrypt_packed_per_value``: ``decrypt_packed`` of ``encrypt_packed`` vectors with 32-bit
  values and headroom for 2^10 additions (43-bit slots), in values/s, vs phe's per-value decrypt.
- ``squeeze_decrypt_per_value``: ``EncryptedVector.squeeze`` (bound 2^42) then
  ``decrypt_packed``, in values/s: packing computed results before decryption.
- ``add``: ciphertext + ciphertext (``add_raw``) vs ``EncryptedNumber + EncryptedNumber``.
- ``mul_scalar``: ciphertext × random signed 32-bit scalar (``mul_raw``) vs
  ``EncryptedNumber * int``.
- ``dot``: ``dot_raw`` (Pippenger buckets, negatives inverted once) with random signed 32-bit
  scalars at 10^3, 10^4 and 10^5 terms, on 1 and 2 threads, in terms/s, vs phe's
  ``sum(x_i * e_i)`` (measured on at most ``phe_terms`` terms: phe's cost per term is flat).

Run: ``PYTHONPATH=. .venv/bin/python -m benchmarks.suite paillier [--quick] [--json FILE]``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import phe

from bund.compute import insecure
from bund.compute import paillier as pl
from bund.compute.encoding import PackingLayout, squeeze_layout
from bund.compute.executor import Executor, InlineExecutor, ThreadExecutor

FAMILY = "paillier"
#: Signed 32-bit scalars for products and dot products.
SCALAR_BITS = 32
#: The packed layout of the packed-decryption row: 32-bit values, 2^10 additions.
PACKING = PackingLayout(value_bits=32, additions=1 << 10)


def _best_rate(fn: Callable[[], object], count: int, repeats: int) -> float:
    """``count`` divided by the fastest of ``repeats`` wall-clock runs of ``fn``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return count / best


def _mean_seconds(fn: Callable[[], object], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _signed_scalars(count: int) -> list[int]:
    half = 1 << (SCALAR_BITS - 1)
    return [secrets.randbelow(2 * half) - half for _ in range(count)]


class _Bench:
    """The measurements for one key size."""

    def __init__(self, bits: int, quick: bool) -> None:
        self.bits = bits
        self.quick = quick
        scale = 2048 / bits
        # Counts at 2048 bits, scaled by key size; quick mode keeps every timing short.
        self.encrypt_count = 150 if quick else int(1000 * scale)
        self.pool_count = 400 if quick else int(2000 * scale)
        self.phe_encrypt_count = 30 if quick else int(100 * scale)
        self.decrypt_count = 60 if quick else int(300 * scale)
        self.phe_decrypt_count = 30 if quick else int(100 * scale)
        self.repeats = 2 if quick else 3
        self.rows: list[dict[str, Any]] = []
        self.public, self.private = pl.generate_keypair(bits)
        start = time.perf_counter()
        self.encryptor = pl.Encryptor(self.public)
        self.table_seconds = time.perf_counter() - start
        self.owner = pl.Encryptor(self.private)
        self.phe_public = pl.to_phe_public_key(self.public)
        self.phe_private = pl.to_phe_private_key(self.private)
        self.plaintexts = [secrets.randbelow(int(self.public.n)) for _ in range(self.encrypt_count)]
        self.ciphertexts = self.encryptor.encrypt_raw(self.plaintexts)

    def add_row(
        self,
        kernel: str,
        rate: float,
        phe_rate: float | None,
        unit: str,
        **params: Any,
    ) -> dict[str, Any]:
        row: dict[str, Any] = {
            "family": FAMILY,
            "kernel": kernel,
            "params": {
                "bits": self.bits,
                "threads": 1,
                **params,
                "insecure_test_key": self.bits < pl.MIN_KEY_BITS,
            },
            "ops_per_s": rate,
            "unit": unit,
            "phe_ops_per_s": phe_rate,
            "ratio_vs_phe": None if phe_rate is None else rate / phe_rate,
        }
        if self.bits < pl.MIN_KEY_BITS:
            row["params"]["note"] = "quick mode: small key behind the test-only switch"
        self.rows.append(row)
        return row

    def keygen(self) -> None:
        runs = 2 if self.quick else (5 if self.bits <= 2048 else 3)
        ours = _mean_seconds(lambda: pl.generate_keypair(self.bits), runs)
        theirs = _mean_seconds(lambda: phe.generate_paillier_keypair(n_length=self.bits), runs)
        self.add_row(
            "keygen",
            1 / ours,
            1 / theirs,
            "keys/s",
            runs=runs,
            encryptor_table_s=self.table_seconds,
        )

    def phe_encrypt(self) -> float:
        ms = self.plaintexts[: self.phe_encrypt_count]
        raw = self.phe_public.raw_encrypt
        return _best_rate(lambda: [raw(m) for m in ms], len(ms), 2)

    def encrypt_rows(self, executors: dict[int, Executor]) -> None:
        phe_rate = self.phe_encrypt()
        one = 0.0
        for threads, executor in executors.items():
            rate = _best_rate(
                partial(self.encryptor.encrypt_raw, self.plaintexts, executor),
                len(self.plaintexts),
                self.repeats,
            )
            one = one or rate
            extra = {"speedup_vs_1_thread": rate / one} if threads > 1 else {}
            self.add_row(
                "encrypt",
                rate,
                phe_rate,
                "ciphertexts/s",
                threads=threads,
                count=len(self.plaintexts),
                **extra,
            )
        owner_rate = _best_rate(
            lambda: self.owner.encrypt_raw(self.plaintexts), len(self.plaintexts), self.repeats
        )
        self.add_row(
            "encrypt_key_owner", owner_rate, phe_rate, "ciphertexts/s", count=len(self.plaintexts)
        )
        count = self.pool_count
        ms = [secrets.randbelow(int(self.public.n)) for _ in range(count)]
        best = 0.0
        for _ in range(self.repeats):
            pool = pl.ObfuscatorPool(self.encryptor, capacity=count)
            pool.refill()
            best = max(best, _best_rate(partial(pool.encrypt_raw, ms), count, 1))
        self.add_row("encrypt_pooled_online", best, phe_rate, "ciphertexts/s", count=count)

    def decrypt_rows(self, executors: dict[int, Executor]) -> None:
        cts = self.ciphertexts[: self.decrypt_count]
        raw = self.phe_private.raw_decrypt
        phe_cts = [int(c) for c in cts[: self.phe_decrypt_count]]
        phe_rate = _best_rate(lambda: [raw(c) for c in phe_cts], len(phe_cts), 2)
        one = 0.0
        for threads, executor in executors.items():
            rate = _best_rate(
                partial(self.private.decrypt_raw, cts, executor), len(cts), self.repeats
            )
            one = one or rate
            extra = {"speedup_vs_1_thread": rate / one} if threads > 1 else {}
            self.add_row(
                "decrypt", rate, phe_rate, "ciphertexts/s", threads=threads, count=len(cts), **extra
            )
        slots = PACKING.slots(self.bits)
        packed_cts = max(4, self.decrypt_count // 3)
        values = [
            secrets.randbelow(2 * PACKING.value_bound + 1) - PACKING.value_bound
            for _ in range(packed_cts * slots)
        ]
        packed = pl.encrypt_packed(self.encryptor, values, PACKING)
        rate = _best_rate(
            lambda: pl.decrypt_packed(self.private, packed), len(values), self.repeats
        )
        self.add_row(
            "decrypt_packed_per_value",
            rate,
            phe_rate,
            "values/s",
            slot_bits=PACKING.slot_bits,
            slots=slots,
            count=len(values),
        )
        bound = PACKING.slot_bound
        width_slots = squeeze_layout(bound, self.bits)[1]
        count = 2 * width_slots
        results = [secrets.randbelow(2 * bound + 1) - bound for _ in range(count)]
        vector = pl.encrypt(self.encryptor, results)
        rate = _best_rate(
            lambda: pl.decrypt_packed(self.private, vector.squeeze(bound), InlineExecutor()),
            count,
            self.repeats,
        )
        self.add_row(
            "squeeze_decrypt_per_value",
            rate,
            phe_rate,
            "values/s",
            slot_bits=PACKING.slot_bits,
            slots=width_slots,
            count=count,
        )

    def homomorphic_rows(self) -> None:
        cts = self.ciphertexts
        pairs = list(zip(cts, cts[1:] + cts[:1], strict=True))
        a, b = [x for x, _ in pairs], [y for _, y in pairs]
        phe_a = [phe.EncryptedNumber(self.phe_public, int(x)) for x in a]
        phe_b = [phe.EncryptedNumber(self.phe_public, int(y)) for y in b]
        repeats = self.repeats
        rate = _best_rate(lambda: pl.add_raw(self.public, a, b), len(a), repeats)
        phe_rate = _best_rate(
            lambda: [x + y for x, y in zip(phe_a, phe_b, strict=True)], len(a), repeats
        )
        self.add_row("add", rate, phe_rate, "ops/s", count=len(a))
        scalars = _signed_scalars(len(cts))
        rate = _best_rate(lambda: pl.mul_raw(self.public, cts, scalars), len(cts), repeats)
        few = min(len(cts), 200 if not self.quick else 50)
        phe_rate = _best_rate(
            lambda: [x * k for x, k in zip(phe_a[:few], scalars[:few], strict=True)], few, 2
        )
        self.add_row("mul_scalar", rate, phe_rate, "ops/s", count=len(cts), scalar_bits=32)

    def dot_rows(self, executors: dict[int, Executor]) -> None:
        sizes = (10**3, 10**4) if self.quick else (10**3, 10**4, 10**5)
        base = self.ciphertexts
        phe_terms = 300 if self.quick else 1000
        phe_numbers = [phe.EncryptedNumber(self.phe_public, int(c)) for c in base[:phe_terms]]
        phe_scalars = _signed_scalars(len(phe_numbers))
        phe_rate = _best_rate(
            lambda: sum(
                (x * k for x, k in zip(phe_numbers, phe_scalars, strict=True)),
                phe.EncryptedNumber(self.phe_public, 1),
            ),
            len(phe_numbers),
            2,
        )
        for terms in sizes:
            cts = [base[i % len(base)] for i in range(terms)]
            scalars = _signed_scalars(terms)
            repeats = 2 if terms >= 10**5 else self.repeats
            one = 0.0
            for threads, executor in executors.items():
                rate = _best_rate(
                    partial(pl.dot_raw, self.public, cts, scalars, executor), terms, repeats
                )
                one = one or rate
                extra = {"speedup_vs_1_thread": rate / one} if threads > 1 else {}
                self.add_row(
                    "dot",
                    rate,
                    phe_rate,
                    "terms/s",
                    threads=threads,
                    terms=terms,
                    scalar_bits=32,
                    phe_terms=len(phe_numbers),
                    **extra,
                )


def _run_size(bits: int, quick: bool) -> list[dict[str, Any]]:
    bench = _Bench(bits, quick)
    with ThreadExecutor(2) as two:
        executors: dict[int, Executor] = {1: InlineExecutor(), 2: two}
        bench.keygen()
        bench.encrypt_rows(executors)
        bench.decrypt_rows(executors)
        bench.homomorphic_rows()
        bench.dot_rows(executors)
    return bench.rows


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure every kernel at 2048 and 3072 bits (quick: 1024 bits, behind the test switch)."""
    if not quick:
        return [row for bits in (2048, 3072) for row in _run_size(bits, quick)]
    was_on = insecure.insecure_test_parameters_enabled()
    insecure.enable_insecure_test_parameters()
    try:
        return _run_size(1024, quick)
    finally:
        if not was_on:
            insecure.disable_insecure_test_parameters()
