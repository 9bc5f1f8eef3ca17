"""Arithmetic shared by the proofs: uniform sampling from ``secrets``, CRT, the key's factors."""

from __future__ import annotations

import secrets
from typing import Any

import gmpy2

from bund.compute.paillier import Mpz, PrivateKey


def released_gil() -> Any:
    """A gmpy2 context in which big-integer operations release the GIL (thread-local, scoped).

    Kernels run inside it so that a thread executor spreads them over cores, as
    ``bund.compute.paillier`` does.
    """
    return gmpy2.context(allow_release_gil=True)


def secret_power(base: Mpz, exponent: Mpz, modulus: Mpz) -> Mpz:
    """``base^exponent mod modulus`` by GMP's side-channel-resistant ``mpz_powm_sec``.

    For any power where the base, the exponent or the modulus is secret: its running time and
    memory access depend on the sizes of the operands only, not on their bits. ``exponent``
    must be positive and ``modulus`` odd (``gmpy2`` raises ``ValueError`` otherwise).
    """
    return gmpy2.powmod_sec(gmpy2.mpz(base) % modulus, exponent, modulus)


def signed_secret_power(base: Mpz, base_inverse: Mpz, exponent: Mpz, modulus: Mpz) -> Mpz:
    """``base^exponent mod modulus`` for a secret signed ``exponent`` (:func:`secret_power`).

    The sign chooses between ``base`` and its (public) inverse, so the running time shows the
    sign and the length of ``exponent``: use it only for uniformly random masks, whose sign and
    length say nothing about the secret they mask.
    """
    if exponent == 0:
        return gmpy2.mpz(1)
    return secret_power(base if exponent > 0 else base_inverse, abs(exponent), modulus)


def random_unit(n: Mpz) -> Mpz:
    """A uniform element of ``Z*_n``, from ``secrets``."""
    while True:
        r = gmpy2.mpz(secrets.randbelow(int(n) - 1) + 1)
        if gmpy2.gcd(r, n) == 1:
            return r


def random_signed(bound: int | Mpz) -> Mpz:
    """A uniform integer in ``[-bound, bound]``, from ``secrets``."""
    bound = int(bound)
    return gmpy2.mpz(secrets.randbelow(2 * bound + 1) - bound)


def crt(residue_p: Mpz, residue_q: Mpz, p: Mpz, q: Mpz, p_inv_q: Mpz) -> Mpz:
    """The ``x mod p·q`` with ``x ≡ residue_p (mod p)`` and ``x ≡ residue_q (mod q)`` (Garner)."""
    return residue_p + p * ((residue_q - residue_p) * p_inv_q % q)


def private_factors(private_key: PrivateKey) -> tuple[Mpz, Mpz]:
    """The primes ``p < q`` of a Paillier private key.

    ``PrivateKey`` keeps them to ``bund.compute.paillier``; a proof of the modulus's structure
    and the key owner's range proofs are the only other code that needs them, and none of it lets
    them reach a proof's encoding (the tests search every encoding for them).
    """
    if not isinstance(private_key, PrivateKey):
        raise TypeError("the prover holds a Paillier PrivateKey")
    return private_key._p, private_key._q
