"""The shared group kernels: both matrix-vector methods agree with plain arithmetic."""

from __future__ import annotations

import gmpy2
import numpy as np
import pytest

from bund.compute import modexp
from bund.compute.executor import ProcessExecutor, ThreadExecutor

#: A prime modulus: every nonzero base is a unit (the kernels invert).
MODULUS = gmpy2.next_prime(gmpy2.mpz(1) << 521)


def _reference(matrix: list[list[int]], bases: list[int]) -> list[int]:
    out = []
    for row in matrix:
        acc = gmpy2.mpz(1)
        for b, x in zip(bases, row, strict=True):
            acc = acc * gmpy2.powmod(b, x, MODULUS) % MODULUS
        out.append(int(acc))
    return out


@pytest.mark.parametrize(
    ("rows", "terms", "bits"),
    [(1, 50, 19), (3, 200, 19), (12, 64, 19), (40, 300, 20), (30, 40, 40), (8, 30, 70)],
)
def test_matvec_methods_agree_with_plain_powers(rows: int, terms: int, bits: int) -> None:
    rng = np.random.default_rng(rows * terms)
    bases = [int(b) for b in rng.integers(2, 1 << 62, size=terms)]
    half = 1 << (bits - 1)
    width = (bits + 7) // 8
    matrix = [
        [int.from_bytes(rng.bytes(width), "big") % (2 * half) - half for _ in range(terms)]
        for _ in range(rows)
    ]
    matrix[0][: terms // 2] = [0] * (terms // 2)  # zero terms are skipped by both methods
    expected = _reference(matrix, bases)
    with ThreadExecutor(2) as ex:
        assert [int(c) for c in modexp.matvec_mod(MODULUS, matrix, bases, ex)] == expected
    assert [int(c) for c in modexp.matvec_mod(MODULUS, matrix, bases)] == expected


def test_the_cost_model_picks_shared_bases_for_many_rows_only() -> None:
    assert modexp._shared_window(300, 1024, 19) == 10  # vertical LR's matrix-vector product
    assert modexp._shared_window(1, 1024, 19) is None  # a dot product: per-row Pippenger
    assert modexp._shared_window(0, 1024, 19) is None
    zero = [[0, 0, 0]] * 10
    assert modexp.matvec_mod(MODULUS, zero, [2, 3, 5]) == [1] * 10


def test_shared_bases_run_on_a_process_pool() -> None:
    rng = np.random.default_rng(5)
    bases = [int(b) for b in rng.integers(2, 1 << 62, size=64)]
    matrix = rng.integers(-(1 << 19), 1 << 19, size=(12, 64)).tolist()
    assert modexp._shared_window(12, 64, 19) is not None
    with ProcessExecutor(2) as ex:
        got = modexp.matvec_mod(MODULUS, matrix, bases, ex)
    assert [int(c) for c in got] == _reference(matrix, bases)
