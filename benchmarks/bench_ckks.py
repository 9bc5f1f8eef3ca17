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

``--quick`` runs N = 8192 only with fewer repeats. There is no ``phe`` reference for CKKS.

Run: ``PYTHONPATH=. .venv/bin/python -m benchmarks.suite ckks [--quick] [--json FILE]``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

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

    start = time.perf_counter()
    secret = CkksContext.create(params)
    row("keygen", 1 / (time.perf_counter() - start), "contexts/s")
    a, b = _values(params.slots), _values(params.slots)
    va, vb = secret.encrypt(a), secret.encrypt(b)
    row("encrypt", _best_rate(lambda: secret.encrypt(a), count, repeats), "vectors/s")
    row("decrypt", _best_rate(va.decrypt, count, repeats), "vectors/s")
    row("add", _best_rate(lambda: va + vb, count, repeats), "ops/s")
    row("multiply_relin", _best_rate(lambda: va * vb, count, repeats), "ops/s")
    row("dot", _best_rate(lambda: va.dot(vb), count, repeats), "ops/s")
    row("rotate", _best_rate(lambda: va.rotate(1), count, repeats), "ops/s")
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
