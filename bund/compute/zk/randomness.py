"""Full-randomness re-randomisation, and the unit check every received ciphertext gets.

Why not the engine's own re-randomisation. ``bund.compute.paillier`` re-randomises with the
key's DJN base: ``c·h_s^r`` for a short ``r``. That is sound when the party that multiplies
trusts ``h_s``, but ``h_s`` is chosen by the key owner, who is the party a re-randomisation must
hide things from. A key owner who publishes an ``h_s`` of small order (``h_s ≡ 1 (mod p²)``,
``h_s ≡ -1 (mod q²)`` passes every public check and has order 2) gets back one of two
ciphertexts for each result, so it can test guesses of how the result was computed (which of
its own ciphertexts, with which scalars). Checking ``h_s`` needs the factors. The evaluator
therefore re-randomises with its own randomness: ``c·r^N mod N²`` with ``r`` uniform in
``Z*_N`` from ``secrets``, each ``r`` used once. Once ``N`` has passed Π^mod
(``gcd(N, φ(N)) = 1``), ``r ↦ r^N`` is a bijection of ``Z*_N`` onto the ``N``-th residues, so
``r^N`` is uniform among them whatever the key owner did, and the output is a fresh encryption
of the same plaintext.

Cost: one 2048-bit exponentiation modulo ``N²`` per ciphertext (11–15 ms at 2048 bits on the
shared development machine, 10–13 times a DJN obfuscation; ``benchmarks/bench_zk.py``), paid
only on what leaves the evaluator: usually a handful of results. :class:`FullRandomness`
computes them in batches on an executor and can hold a pool computed ahead, handing each value
out once.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import gmpy2

from bund.compute.errors import CiphertextNotUnitError, CiphertextRangeError
from bund.compute.executor import Executor, InlineExecutor, split_evenly
from bund.compute.modexp import PrecomputedPool
from bund.compute.paillier import Mpz, Obfuscator, PublicKey
from bund.compute.zk.arith import random_unit, released_gil


def check_unit(c: Mpz, n: Mpz) -> None:
    """Refuse a received ciphertext unless ``0 < c < N²`` and ``gcd(c, N) = 1``.

    Raises:
        CiphertextRangeError: If ``c`` is outside ``(0, N²)``.
        CiphertextNotUnitError: If ``c`` shares a factor with ``N``.

    >>> check_unit(4, 15)
    >>> check_unit(5, 15)
    Traceback (most recent call last):
    ...
    bund.compute.errors.CiphertextNotUnitError: a ciphertext shares a factor with N: it is no ...
    """
    c, n = gmpy2.mpz(c), gmpy2.mpz(n)
    if not 0 < c < n * n:
        raise CiphertextRangeError(
            "a ciphertext is outside (0, N²): the peer sent a corrupt or foreign value"
        )
    if gmpy2.gcd(c, n) != 1:
        raise CiphertextNotUnitError(
            "a ciphertext shares a factor with N: it is no valid ciphertext under this key"
        )


def nth_residues(public_key: PublicKey, count: int) -> list[Mpz]:
    """``count`` values ``r^N mod N²``, each from a fresh uniform ``r ∈ Z*_N`` (``secrets``)."""
    n = public_key.n
    bases = [random_unit(n) for _ in range(count)]
    with released_gil():
        return list(gmpy2.powmod_base_list(bases, n, public_key.n_square)) if bases else []


def rerandomise(c: Mpz, public_key: PublicKey) -> Mpz:
    """``c·r^N mod N²`` for a fresh uniform ``r ∈ Z*_N``: the same plaintext, unlinkable to ``c``.

    Unlike ``Encryptor.rerandomize`` this does not use the key owner's ``h_s``, so it hides
    ``c`` even from a key owner who chose ``h_s`` badly (module docstring).
    """
    (h,) = nth_residues(public_key, 1)
    return gmpy2.mpz(c) * h % public_key.n_square


def _residue_task(public_key: PublicKey, count: int) -> list[Mpz]:
    return nth_residues(public_key, count)


class FullRandomness:
    """A randomness source for a public key whose obfuscators are ``r^N`` with full ``r``.

    It has the interface of ``bund.compute.paillier.RandomnessSource``, so
    ``vector.to_bytes(FullRandomness(public_key))`` re-randomises an evaluator's results with
    its own randomness; ``bund.compute.he`` hands it out as a Paillier public key's
    ``encryptor()``. It can hold a pool (``bund.compute.modexp.PrecomputedPool``): :meth:`refill`
    computes values ahead in executor batches, or :meth:`run_refills` in a thread the node owns,
    and every value is removed under a lock when handed out, so none is used twice; what the pool
    lacks is computed on the spot.

    Args:
        public_key: The key (verify the owner's Π^mod proof first).
        capacity: Most values held in the pool (about 0.8 KB each at 2048 bits); 0 keeps none.
        low_water: :meth:`run_refills` tops the pool up below this (default: half the capacity).
    """

    def __init__(
        self, public_key: PublicKey, capacity: int = 0, low_water: int | None = None
    ) -> None:
        if not isinstance(public_key, PublicKey):
            raise TypeError("FullRandomness draws for a PublicKey")
        if capacity < 0:
            raise ValueError("capacity is at least 0")
        self._public_key = public_key
        self._pool: PrecomputedPool[Mpz] | None = (
            PrecomputedPool(self._compute, capacity, low_water) if capacity else None
        )

    @property
    def public_key(self) -> PublicKey:
        """The key whose ciphertexts this source makes."""
        return self._public_key

    @property
    def capacity(self) -> int:
        """Most values the pool holds (0: no pool)."""
        return 0 if self._pool is None else self._pool.capacity

    def __len__(self) -> int:
        return 0 if self._pool is None else len(self._pool)

    def _compute(self, count: int, executor: Executor | None) -> list[Mpz]:
        executor = executor or InlineExecutor()
        sizes = [len(part) for part in split_evenly(range(count), executor.workers)]
        batches = executor.map(partial(_residue_task, self._public_key), sizes)
        return [h for batch in batches for h in batch]

    def refill(self, count: int | None = None, executor: Executor | None = None) -> int:
        """Compute up to ``count`` values (default: up to capacity) into the pool.

        Returns:
            How many were added.
        """
        return 0 if self._pool is None else self._pool.refill(count, executor)

    def run_refills(self, batch: int = 256) -> None:
        """Keep the pool above its low-water mark until :meth:`close`; run it in a node thread."""
        if self._pool is not None:
            self._pool.run_refills(batch)

    def close(self) -> None:
        """Stop :meth:`run_refills` (after its current round); the source stays usable."""
        if self._pool is not None:
            self._pool.close()

    def residues(self, count: int, executor: Executor | None = None) -> list[Mpz]:
        """``count`` values ``r^N mod N²`` never handed out before (pool first)."""
        if count < 0:
            raise ValueError("count is at least 0")
        if self._pool is None:
            return self._compute(count, executor)
        return self._pool.take(count, executor)

    def obfuscators(self, count: int, executor: Executor | None = None) -> list[Obfuscator]:
        """``count`` pairs ``(r^N mod N², r^N mod N)``, as ``RandomnessSource`` asks."""
        n = self._public_key.n
        return [(h, h % n) for h in self.residues(count, executor)]

    def encrypt_raw(
        self, plaintexts: Sequence[int | Mpz], executor: Executor | None = None
    ) -> list[Mpz]:
        """Textbook encryptions ``(1 + m·N)·r^N mod N²`` of plaintexts in ``[0, N)``.

        Raises:
            ValueError: If a plaintext is outside ``[0, N)``.
        """
        n, n2 = self._public_key.n, self._public_key.n_square
        for m in plaintexts:
            if not 0 <= m < n:
                raise ValueError("a raw plaintext lies in [0, n); encode signed values first")
        residues = self.residues(len(plaintexts), executor)
        return [(1 + m * n) * h % n2 for m, h in zip(plaintexts, residues, strict=True)]

    def rerandomize(
        self, ciphertexts: Sequence[Mpz], executor: Executor | None = None
    ) -> list[Mpz]:
        """Multiply each ciphertext by a fresh ``r^N`` (:func:`rerandomise` in a batch)."""
        n2 = self._public_key.n_square
        residues = self.residues(len(ciphertexts), executor)
        return [gmpy2.mpz(c) * h % n2 for c, h in zip(ciphertexts, residues, strict=True)]


def rerandomise_many(
    ciphertexts: Sequence[Mpz], public_key: PublicKey, executor: Executor | None = None
) -> list[Mpz]:
    """:func:`rerandomise` for many ciphertexts, the exponentiations in executor batches."""
    return FullRandomness(public_key).rerandomize(ciphertexts, executor)
