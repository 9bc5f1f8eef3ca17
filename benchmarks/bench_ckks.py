"""CKKS kernels through ``bund.compute.ckks`` (TenSEAL) at N = 8192 and 16384.

Rates are wall-clock, best of ``repeats`` runs of ``count`` operations each, on full vectors of
``N/2`` slots with the default coefficient moduli of ``bund.compute.ckks`` (scale 2^40):

- ``keygen``: ``CkksContext.create`` with relinearisation and Galois keys (contexts/s).
- ``encrypt`` / ``decrypt``: one vector of ``N/2`` reals (vectors/s).
- ``add``: ciphertext + ciphertext.
- ``multiply_relin``: ciphertext × ciphertext, relinearised and rescaled (TenSEAL does both).
- ``dot``: encrypted inner product of two full vectors (a multiplication and log2(N/2)
  rotations).
- ``rotate``: one slot rotation with the Galois keys.
- Sizes (``bytes`` instead of a rate): ``ciphertext_bytes`` (a serialised fresh vector),
  ``public_context_bytes`` (public and relinearisation keys), ``galois_keys_bytes``.

Each timed row also carries ``tenseal_ops_per_s``: the same operation on raw TenSEAL (a context
of the same parameters, made here; the rotation through ``sealapi`` as Bund does it, with one
evaluator), timed alike in the same run, and ``ratio_vs_tenseal`` = Bund's rate / TenSEAL's
(below 1: what Bund's wrapper adds). ``--quick`` runs N = 8192 only with fewer repeats.

Run: ``PYTHONPATH=. .venv/bin/python -m benchmarks.suite ckks [--quick] [--json FILE]``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import tenseal as ts
import tenseal.sealapi as sealapi

from bund.compute.ckks import CkksContext, CkksParameters

FAMILY = "ckks"


def _best_rate(fn: Callable[[], object], count: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(count):
            fn()
        best = min(best, time.perf_counter() - start)
    return count / best


def _values(count: int) -> list[float]:
    return [secrets.randbelow(2_000_001) / 1_000_000 - 1.0 for _ in range(count)]


def _run_degree(degree: int, quick: bool) -> list[dict[str, Any]]:
    params = CkksParameters.for_degree(degree)
    repeats = 2 if quick else 5
    count = 3 if quick else 10
    base: dict[str, Any] = {
        "N": degree,
        "slots": params.slots,
        "coeff_mod_bits": list(params.coeff_mod_bit_sizes),
        "scale_bits": params.global_scale_bits,
    }
    rows: list[dict[str, Any]] = []

    def row(kernel: str, rate: float | None, unit: str, **extra: Any) -> None:
        rows.append(
            {
                "family": FAMILY,
                "kernel": kernel,
                "params": {**base, "count": count, "repeats": repeats},
                "ops_per_s": rate,
                "unit": unit,
                **extra,
            }
        )

    raw = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
    )
    raw.global_scale = 2.0**params.global_scale_bits
    start = time.perf_counter()
    raw.generate_galois_keys()
    raw_keygen = 1 / (time.perf_counter() - start)
    start = time.perf_counter()
    secret = CkksContext.create(params)
    keygen = 1 / (time.perf_counter() - start)

    def timed(
        kernel: str, ours: Callable[[], object], theirs: Callable[[], object], unit: str
    ) -> None:
        rate, reference = _best_rate(ours, count, repeats), _best_rate(theirs, count, repeats)
        row(kernel, rate, unit, tenseal_ops_per_s=reference, ratio_vs_tenseal=rate / reference)

    row(
        "keygen",
        keygen,
        "contexts/s",
        tenseal_ops_per_s=raw_keygen,
        ratio_vs_tenseal=keygen / raw_keygen,
    )
    a, b = _values(params.slots), _values(params.slots)
    va, vb = secret.encrypt(a), secret.encrypt(b)
    ra, rb = ts.ckks_vector(raw, a), ts.ckks_vector(raw, b)
    evaluator = sealapi.Evaluator(raw.seal_context().data)
    galois = raw.galois_keys().data

    def raw_rotate() -> object:
        out = sealapi.Ciphertext()
        evaluator.rotate_vector(ra.ciphertext()[0], 1, galois, out)
        return out

    timed("encrypt", lambda: secret.encrypt(a), lambda: ts.ckks_vector(raw, a), "vectors/s")
    timed("decrypt", va.decrypt, ra.decrypt, "vectors/s")
    timed("add", lambda: va + vb, lambda: ra + rb, "ops/s")
    timed("multiply_relin", lambda: va * vb, lambda: ra * rb, "ops/s")
    timed("dot", lambda: va.dot(vb), lambda: ra.dot(rb), "ops/s")
    timed("rotate", lambda: va.rotate(1), raw_rotate, "ops/s")
    with_galois = len(secret.serialize(galois_keys=True))
    without = len(secret.serialize(galois_keys=False))
    row("ciphertext_bytes", None, "bytes", bytes=len(va.serialize()))
    row("public_context_bytes", None, "bytes", bytes=without)
    row("galois_keys_bytes", None, "bytes", bytes=with_galois - without)
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure the CKKS kernels at N = 8192 and 16384 (quick: 8192 only)."""
    degrees = (8192,) if quick else (8192, 16384)
    return [row for degree in degrees for row in _run_degree(degree, quick)]
