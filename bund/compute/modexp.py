"""Modular-arithmetic kernels shared by the additively homomorphic engines (Paillier, OU).

Both engines compute in a multiplicative group modulo an integer (``n²`` for Paillier, ``n`` for
Okamoto–Uchiyama), and their costly steps are the same group operations on gmpy2 integers:

- **Multi-exponentiation** ``Π b_i^{x_i} mod N`` (dot products and matrix-vector products of a
  plaintext matrix with ciphertexts) by the Pippenger bucket method: for 32-bit scalars and
  ``10^4`` terms about four multiplications per term instead of about forty. Negative scalars go
  to a second product that is inverted once at the end, so no exponent is ever ``N - |x|``.
  A matrix with many rows shares its bases: their window powers and inverses are computed once,
  and each row is one bucket pass over signed digits (:func:`matvec_mod`).
- **Element-wise powers** with negative exponents inverted in one batch (Montgomery's trick).
- **Fixed-base comb tables** ``T[i][d] = base^(d·256^i)``: a power of a fixed base costs one
  multiplication per byte of the exponent.
- **Squeezing** ``Π c_i^(2^(i·w))`` by Horner's rule, which packs computed results.
- **A pool of precomputed randomisers** (:class:`PrecomputedPool`), each handed out once.

Every kernel that an executor runs enters a gmpy2 context with ``allow_release_gil`` so threads
share the work. gmpy2 is not constant-time: these kernels only ever see public values
(ciphertexts, a party's own plaintext scalars), never a secret exponent.
"""

from __future__ import annotations

import numbers
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeAlias, TypeVar

import gmpy2
import numpy

from bund.compute.executor import Executor, InlineExecutor, split_evenly

#: gmpy2 ships no type stubs; ``Mpz`` marks where a ``gmpy2.mpz`` is meant.
Mpz: TypeAlias = Any
#: ``T[i][d] = base^(d·256^i) mod modulus`` (see :func:`comb_table`).
CombTable: TypeAlias = tuple[tuple[Mpz, ...], ...]

T = TypeVar("T")

ONE = gmpy2.mpz(1)


def released_gil() -> Any:
    """A fresh gmpy2 context in which big-integer operations release the GIL.

    gmpy2 contexts are per thread; entering this one changes nothing outside the ``with`` block.
    """
    return gmpy2.context(allow_release_gil=True)


def comb_table(base: Mpz, rows: int, modulus: Mpz) -> CombTable:
    """``T[i][d] = base^(d·256^i) mod modulus`` for ``d`` in 0..255 and ``i < rows``."""
    table = []
    g = gmpy2.mpz(base) % modulus
    for _ in range(rows):
        row = [ONE, g]
        for _ in range(254):
            row.append(row[-1] * g % modulus)
        table.append(tuple(row))
        g = row[-1] * g % modulus
    return tuple(table)


def comb_power(table: CombTable, digits: bytes, modulus: Mpz) -> Mpz:
    """``Π T[i][digits[i]]``: the base raised to the little-endian base-256 number ``digits``."""
    acc = table[0][digits[0]]
    for row, d in zip(table[1:], digits[1:], strict=True):
        acc = acc * row[d] % modulus
    return acc


def as_ints(values: Sequence[int] | Any, what: str) -> list[int]:
    """Python ints from a sequence or a numpy integer array; refuse floats and bools."""
    tolist = getattr(values, "tolist", None)
    items = tolist() if callable(tolist) else list(values)
    for item in items:
        if isinstance(item, bool | numpy.bool_) or not isinstance(item, numbers.Integral):
            raise TypeError(f"{what} are integers (fixed-point encode them first), not {item!r}")
    return [int(x) for x in items]


def batch_invert(values: Sequence[Mpz], modulus: Mpz) -> list[Mpz]:
    """Invert every value with one modular inversion and three multiplications each."""
    if not values:
        return []
    prefix = [gmpy2.mpz(values[0])]
    for v in values[1:]:
        prefix.append(prefix[-1] * v % modulus)
    inv = gmpy2.invert(prefix[-1], modulus)
    out = [ONE] * len(values)
    for i in range(len(values) - 1, 0, -1):
        out[i] = inv * prefix[i - 1] % modulus
        inv = inv * values[i] % modulus
    out[0] = inv
    return out


def window_bits(count: int, exponent_bits: int) -> int:
    """Bucket window minimising ``ceil(b/w)·(count + 2^(w+1))`` multiplications."""
    return min(range(1, 17), key=lambda w: -(-exponent_bits // w) * (count + (1 << (w + 1))))


def multi_exp(bases: Sequence[Mpz], exponents: Sequence[int], modulus: Mpz) -> Mpz:
    """``Π bases[i]^exponents[i] mod modulus`` for positive exponents (Pippenger buckets)."""
    if not bases:
        return ONE
    bits = max(exponents).bit_length()
    width = window_bits(len(bases), bits)
    mask = (1 << width) - 1
    packed = numpy.array(exponents, dtype=numpy.uint64) if bits <= 64 else None
    result: Mpz = None
    for window in range(-(-bits // width) - 1, -1, -1):
        if result is not None:
            result = gmpy2.powmod(result, 1 << width, modulus)
        buckets: list[Mpz] = [None] * (mask + 1)
        shift = window * width
        if packed is not None:
            digits = ((packed >> numpy.uint64(shift)) & numpy.uint64(mask)).tolist()
        else:
            digits = [(e >> shift) & mask for e in exponents]
        for base, d in zip(bases, digits, strict=True):
            if d:
                current = buckets[d]
                buckets[d] = base if current is None else current * base % modulus
        running: Mpz = None
        total: Mpz = None
        for d in range(mask, 0, -1):
            bucket = buckets[d]
            if bucket is not None:
                running = bucket if running is None else running * bucket % modulus
            if running is not None:
                total = running if total is None else total * running % modulus
        if total is not None:
            result = total if result is None else result * total % modulus
    return ONE if result is None else result


def _multi_exp_task(task: tuple[Mpz, Sequence[Mpz], Sequence[int]]) -> Mpz:
    modulus, bases, exponents = task
    with released_gil():
        return multi_exp(bases, exponents, modulus)


def _signed_tasks(
    bases: Sequence[Mpz], scalars: Sequence[int], modulus: Mpz, chunks: int
) -> tuple[list[tuple[Mpz, list[Mpz], list[int]]], int]:
    """Multi-exponentiation tasks, positive terms first, then the negative ones negated.

    Returns:
        The tasks (at least one per sign) and the index of the first negative task.
    """
    tasks: list[tuple[Mpz, list[Mpz], list[int]]] = []
    for sign in (1, -1):
        indices = [i for i, k in enumerate(scalars) if sign * k > 0]
        parts = split_evenly(indices, chunks) or [[]]
        tasks.extend(
            (modulus, [bases[i] for i in part], [sign * scalars[i] for i in part]) for part in parts
        )
        if sign == 1:
            boundary = len(tasks)
    return tasks, boundary


def _combine_signed(results: Sequence[Mpz], boundary: int, modulus: Mpz) -> Mpz:
    positive, negative = ONE, ONE
    for index, value in enumerate(results):
        if index < boundary:
            positive = positive * value % modulus
        else:
            negative = negative * value % modulus
    if negative == 1:
        return positive
    return positive * gmpy2.invert(negative, modulus) % modulus


def dot_mod(
    modulus: Mpz,
    bases: Sequence[Mpz],
    scalars: Sequence[int] | Any,
    executor: Executor | None = None,
) -> Mpz:
    """``Π b_i^{x_i} mod modulus`` for signed scalars (Pippenger; negatives inverted once).

    Args:
        modulus: The group's modulus.
        bases: Units modulo ``modulus`` (validated ciphertexts).
        scalars: Integers ``x_i`` (a list or a numpy integer array); zero terms are skipped.
        executor: Where the batches run (default inline).

    Raises:
        ValueError: If the lengths differ.
        TypeError: If a scalar is not an integer.
    """
    ks = as_ints(scalars, "scalars")
    if len(ks) != len(bases):
        raise ValueError(f"{len(bases)} ciphertexts but {len(ks)} scalars")
    executor = executor or InlineExecutor()
    tasks, boundary = _signed_tasks(bases, ks, modulus, executor.workers)
    return _combine_signed(executor.map(_multi_exp_task, tasks), boundary, modulus)


def matvec_mod(
    modulus: Mpz,
    matrix: Sequence[Sequence[int]] | Any,
    bases: Sequence[Mpz],
    executor: Executor | None = None,
) -> list[Mpz]:
    """Row-wise products ``[Π_j b_j^{M_ij} mod modulus]_i`` of an integer matrix with bases.

    With many rows (a matrix-vector product) the bases are shared: each is raised once to
    ``2^(w·k)`` for every window ``k`` and inverted (one batch), so every row is a single
    bucket pass over signed ``w``-bit digits, about ``bits/w`` multiplications a term with no
    squarings and no separate product of the negative terms (``w`` = 10 for 20-bit entries and
    10^3 terms: 3 multiplications a term instead of 3.75). With few rows each row is its own
    Pippenger product, split across the executor's workers. A cost model picks the method.

    Args:
        modulus: The group's modulus.
        matrix: Rows of integers (nested lists or a 2-D numpy integer array), each as long as
            ``bases``.
        bases: Units modulo ``modulus`` (validated ciphertexts).
        executor: Where the batches run; rows (and, with few rows, parts of rows) run in parallel.

    Raises:
        ValueError: If a row's length differs from the number of bases.
    """
    rows = [as_ints(row, "matrix entries") for row in matrix]
    for index, row in enumerate(rows):
        if len(row) != len(bases):
            raise ValueError(f"row {index} has {len(row)} entries for {len(bases)} ciphertexts")
    executor = executor or InlineExecutor()
    largest = max((abs(x) for row in rows for x in row), default=0)
    width = _shared_window(len(rows), len(bases), largest.bit_length())
    if width is not None and largest < 1 << 62:
        return _matvec_shared(modulus, numpy.array(rows, dtype=numpy.int64), bases, width, executor)
    chunks = max(1, executor.workers // max(1, len(rows)))
    tasks: list[tuple[Mpz, list[Mpz], list[int]]] = []
    spans: list[tuple[int, int, int]] = []
    for row in rows:
        row_tasks, boundary = _signed_tasks(bases, row, modulus, chunks)
        spans.append((len(tasks), len(tasks) + len(row_tasks), boundary))
        tasks.extend(row_tasks)
    results = executor.map(_multi_exp_task, tasks)
    return [
        _combine_signed(results[start:end], boundary, modulus) for start, end, boundary in spans
    ]


def _shared_window(rows: int, terms: int, bits: int) -> int | None:
    """The signed window of a shared-base product, or None when per-row Pippenger is cheaper.

    Costs in multiplications: shared, ``rows·(terms·k + 2^w)`` plus the bases' inverses
    (``3·terms·k``) and powers (``terms·(k−1)·w`` squarings in C, counted a quarter each) with
    ``k = ⌈(bits+1)/w⌉`` signed windows; Pippenger, ``rows·⌈bits/w'⌉·(terms + 2^(w'+2))`` (two
    bucket sets: positive and negative terms).
    """
    if rows == 0 or terms == 0 or bits == 0:
        return None

    def shared(w: int) -> int:
        k = -(-(bits + 1) // w)
        return rows * (terms * k + (1 << w)) + terms * (k - 1) * w // 4 + 3 * terms * k

    width = min(range(2, 17), key=shared)
    alone = window_bits(terms, bits)
    pippenger = rows * -(-bits // alone) * (terms + (1 << (alone + 2)))
    return width if shared(width) < pippenger else None


def _signed_digits(matrix: numpy.ndarray[Any, Any], width: int) -> list[numpy.ndarray[Any, Any]]:
    """Signed base-``2^width`` digits in ``[-2^(width-1), 2^(width-1))``, lowest window first."""
    half, mask = 1 << (width - 1), (1 << width) - 1
    digits: list[numpy.ndarray[Any, Any]] = []
    rest = matrix
    while not digits or rest.any():
        digit = ((rest + half) & mask) - half
        digits.append(digit)
        rest = (rest - digit) >> width
    return digits


def _shared_task(task: tuple[Mpz, Sequence[Mpz], Sequence[Mpz], list[list[int]], int]) -> list[Mpz]:
    """One bucket pass per row over the shared (base, inverse) pairs and each row's digits."""
    modulus, powers, inverses, digit_rows, half = task
    out: list[Mpz] = []
    with released_gil():
        for digits in digit_rows:
            buckets: list[Mpz] = [None] * (half + 1)
            for base, inverse, d in zip(powers, inverses, digits, strict=True):
                if d > 0:
                    current = buckets[d]
                    buckets[d] = base if current is None else current * base % modulus
                elif d < 0:
                    current = buckets[-d]
                    buckets[-d] = inverse if current is None else current * inverse % modulus
            running: Mpz = None
            total: Mpz = None
            for d in range(half, 0, -1):
                bucket = buckets[d]
                if bucket is not None:
                    running = bucket if running is None else running * bucket % modulus
                if running is not None:
                    total = running if total is None else total * running % modulus
            out.append(ONE if total is None else total)
    return out


def _matvec_shared(
    modulus: Mpz,
    matrix: numpy.ndarray[Any, Any],
    bases: Sequence[Mpz],
    width: int,
    executor: Executor,
) -> list[Mpz]:
    """:func:`matvec_mod` with the bases' window powers and inverses computed once for all rows."""
    digits = _signed_digits(matrix, width)
    with released_gil():
        powers = [list(bases)]
        for _ in digits[1:]:
            powers.append(list(gmpy2.powmod_base_list(powers[-1], 1 << width, modulus)))
        flat = [b for window in powers for b in window]
        inverses = batch_invert(flat, modulus)
    rows = numpy.concatenate(digits, axis=1).tolist()
    parts = split_evenly(rows, executor.workers)
    half = 1 << (width - 1)
    tasks = [(modulus, flat, inverses, list(part), half) for part in parts]
    return [c for part in executor.map(_shared_task, tasks) for c in part]


def _mul_task(task: tuple[Mpz, Sequence[Mpz], Sequence[int]]) -> list[Mpz]:
    modulus, bases, scalars = task
    with released_gil():
        negatives = [i for i, k in enumerate(scalars) if k < 0]
        inverses = batch_invert([bases[i] for i in negatives], modulus)
        values = list(bases)
        for i, inverse in zip(negatives, inverses, strict=True):
            values[i] = inverse
        return [gmpy2.powmod(c, abs(k), modulus) for c, k in zip(values, scalars, strict=True)]


def mul_mod(
    modulus: Mpz,
    bases: Sequence[Mpz],
    scalars: Sequence[int] | Any,
    executor: Executor | None = None,
) -> list[Mpz]:
    """Element-wise ``b_i^{k_i} mod modulus``; negative ``k_i`` through batch inversion.

    Raises:
        ValueError: If the lengths differ.
        TypeError: If a scalar is not an integer.
    """
    ks = as_ints(scalars, "scalars")
    if len(ks) != len(bases):
        raise ValueError(f"{len(bases)} ciphertexts but {len(ks)} scalars")
    executor = executor or InlineExecutor()
    parts = zip(
        split_evenly(bases, executor.workers), split_evenly(ks, executor.workers), strict=True
    )
    tasks = [(modulus, values, part) for values, part in parts]
    return [c for part in executor.map(_mul_task, tasks) for c in part]


def squeeze_mod(modulus: Mpz, bases: Sequence[Mpz], width: int) -> Mpz:
    """``Π b_i^(2^(i·width)) mod modulus`` by Horner's rule (packs computed results).

    Raises:
        ValueError: If ``bases`` is empty.
    """
    if not bases:
        raise ValueError("nothing to squeeze")
    shift = gmpy2.mpz(1) << width
    with released_gil():
        acc = bases[-1]
        for c in reversed(bases[:-1]):
            acc = gmpy2.powmod(acc, shift, modulus) * c % modulus
    return acc


class PrecomputedPool(Generic[T]):
    """Values computed ahead by ``make(count, executor)``; each is handed out exactly once.

    Values are removed under a lock as they are handed out, so no two ciphertexts ever share
    randomness; when the pool runs short the missing values are computed on the spot. Refilling
    is driven by the caller (:meth:`refill` between phases, or :meth:`run_refills` in a thread
    the node owns), so the compute layer starts no threads.

    Args:
        make: Computes ``count`` fresh values, on ``executor`` when given.
        capacity: Most values held.
        low_water: :meth:`run_refills` tops the pool up when it falls below this (default: half).
    """

    def __init__(
        self,
        make: Callable[[int, Executor | None], list[T]],
        capacity: int = 10_000,
        low_water: int | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity is at least 1")
        low = capacity // 2 if low_water is None else low_water
        if not 0 <= low <= capacity:
            raise ValueError("low_water lies in [0, capacity]")
        self._make = make
        self._capacity = capacity
        self._low_water = low
        self._values: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False

    @property
    def capacity(self) -> int:
        """Most values the pool holds."""
        return self._capacity

    def __len__(self) -> int:
        return len(self._values)

    def refill(self, count: int | None = None, executor: Executor | None = None) -> int:
        """Compute up to ``count`` values (default: up to capacity) outside the lock; add them.

        Returns:
            How many values were added (fewer if other refills filled the pool meanwhile).
        """
        with self._cond:
            room = self._capacity - len(self._values)
        want = room if count is None else min(count, room)
        if want <= 0:
            return 0
        fresh = self._make(want, executor)
        with self._cond:
            room = self._capacity - len(self._values)
            self._values.extend(fresh[:room])
            return min(room, len(fresh))

    def take(self, count: int, executor: Executor | None = None) -> list[T]:
        """Hand out ``count`` values, removing them; compute any the pool lacks on the spot."""
        if count < 0:
            raise ValueError("count is at least 0")
        with self._cond:
            take = min(count, len(self._values))
            popleft = self._values.popleft
            out = [popleft() for _ in range(take)]
            if len(self._values) < self._low_water:
                self._cond.notify_all()
        if take < count:
            out.extend(self._make(count - take, executor))
        return out

    def run_refills(self, batch: int = 256) -> None:
        """Keep the pool above its low-water mark until :meth:`close`; run it in a node thread.

        Args:
            batch: Values computed per round; smaller rounds react faster to :meth:`close`.
        """
        if batch < 1:
            raise ValueError("batch is at least 1")
        while True:
            with self._cond:
                while not self._closed and len(self._values) >= max(self._low_water, 1):
                    self._cond.wait()
                if self._closed:
                    return
            while not self._closed and self.refill(batch) > 0:
                pass

    def close(self) -> None:
        """Stop :meth:`run_refills` (after its current round); the pool stays usable."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
