"""Π^mod: a Paillier key owner proves its modulus is a Paillier–Blum modulus (CGGMP21, Fig. 16).

Statement: ``N = p·q`` for two primes ``p ≡ q ≡ 3 (mod 4)`` with ``gcd(N, φ(N)) = 1``, in zero
knowledge of ``p`` and ``q``. Canetti, Gennaro, Goldfeder, Makriyannis, Peled, *UC
Non-Interactive, Proactive, Threshold ECDSA with Identifiable Aborts* (ePrint 2021/060),
Fig. 16 ("Paillier-Blum Modulus ZK"), made non-interactive with :mod:`bund.compute.zk.transcript`.

Why an evaluator wants it: Bund's re-randomisation multiplies by ``r^N``, which hides a
ciphertext completely only if ``x ↦ x^N`` permutes ``Z*_N``, i.e. ``gcd(N, φ(N)) = 1``. A key owner
who picked ``p | q - 1`` would leave a component of order ``p`` that ``r^N`` cannot reach, and a
modulus with three or more factors, or a prime power, breaks the other assumptions the protocols
make of a Paillier key.

The protocol, ``m`` repetitions (80 by default: soundness error ``2^-80``):

1. The prover picks ``w`` in ``Z_N`` with Jacobi symbol ``(w/N) = -1``.
2. Challenges ``y_1..y_m`` uniform in ``Z_N``, hashed from ``N``, the key id, the context, ``m``
   and ``w`` (:func:`mod_challenges`).
3. For each ``i`` the prover sends ``z_i = y_i^(N^-1 mod φ(N)) mod N`` (an ``N``-th root) and
   ``x_i``, a fourth root of ``y'_i = (-1)^a_i · w^b_i · y_i mod N`` for the unique bits
   ``a_i, b_i`` that make ``y'_i`` a square modulo both primes.

The verifier refuses even ``N``, prime ``N``, perfect powers and small factors up front
(:func:`check_modulus_shape`), then checks ``(w/N) = -1`` and, for every ``i``, ``z_i^N = y_i`` and
``x_i^4 = (-1)^a_i w^b_i y_i (mod N)``. For a modulus that is not Paillier–Blum, each repetition
fails with probability at least 1/2 (CGGMP21, Fig. 16): fourth roots of one of ``±y, ±wy``
exist for every ``y`` only when ``N`` has exactly two prime factors, both ``3 mod 4``, and every
``y`` has an ``N``-th root only when ``gcd(N, φ(N)) = 1``. With Fiat–Shamir the soundness becomes
computational: a cheating prover must try about ``2^m`` hashes. The proof is statistically
zero-knowledge (the roots it reveals are those of random challenges).

Wire layout (version 1, big-endian, ``K = ceil(bits/8)``): ``b"BZKM" | version:u8 | bits:u16 |
m:u16 | w:K bytes | m × (x_i:K bytes | z_i:K bytes | a_i + 2·b_i:u8)``. About 41 KB at 2048
bits and ``m = 80``.
"""

from __future__ import annotations

from dataclasses import dataclass

import gmpy2

from bund.compute.errors import InvalidMessageError, ProofError, WeakModulusError
from bund.compute.paillier import Mpz, PrivateKey, PublicKey, validate_modulus
from bund.compute.zk.arith import (
    crt,
    private_factors,
    random_unit,
    released_gil,
    secret_power,
)
from bund.compute.zk.codec import Reader, Writer, byte_width
from bund.compute.zk.transcript import Transcript

#: Repetitions by default: soundness error ``2^-80``.
MOD_REPETITIONS = 80
#: Most repetitions a received proof may carry (bounds the verifier's work).
MAX_MOD_REPETITIONS = 256

_MAGIC = b"BZKM"
_PROTOCOL = "bund/zk/mod/v1"
_WHAT = "Paillier–Blum modulus proof"


@dataclass(frozen=True)
class ModProof:
    """A non-interactive Π^mod proof for one modulus.

    Attributes:
        bits: Bit length of the modulus it is for.
        w: The prover's element of Jacobi symbol -1.
        xs: Fourth roots ``x_i``.
        zs: ``N``-th roots ``z_i``.
        a_bits: The sign bits ``a_i``.
        b_bits: The ``w`` bits ``b_i``.
    """

    bits: int
    w: Mpz
    xs: tuple[Mpz, ...]
    zs: tuple[Mpz, ...]
    a_bits: tuple[int, ...]
    b_bits: tuple[int, ...]

    def __post_init__(self) -> None:
        count = len(self.xs)
        if not 1 <= count <= MAX_MOD_REPETITIONS:
            raise ValueError(f"a proof has 1 to {MAX_MOD_REPETITIONS} repetitions")
        if not len(self.zs) == len(self.a_bits) == len(self.b_bits) == count:
            raise ValueError("every repetition has one x, one z, one a and one b")
        if any(bit not in (0, 1) for bit in self.a_bits + self.b_bits):
            raise ValueError("a_i and b_i are bits")

    @property
    def repetitions(self) -> int:
        """How many repetitions the proof carries (its soundness error is ``2^-repetitions``)."""
        return len(self.xs)

    def to_bytes(self) -> bytes:
        """Serialise (layout in the module docstring)."""
        k = byte_width(self.bits)
        out = Writer(_MAGIC).u16(self.bits).u16(self.repetitions).uint(self.w, k)
        for x, z, a, b in zip(self.xs, self.zs, self.a_bits, self.b_bits, strict=True):
            out.uint(x, k).uint(z, k).u8(a | b << 1)
        return out.finish()

    @classmethod
    def from_bytes(cls, data: bytes) -> ModProof:
        """Parse a received proof; values are range-checked against the key by :func:`verify_mod`.

        Raises:
            InvalidMessageError: If the layout, version, sizes or flags are wrong.
        """
        reader = Reader(data, _MAGIC, _WHAT)
        bits = reader.modulus_bits()
        count = reader.u16()
        if not 1 <= count <= MAX_MOD_REPETITIONS:
            raise InvalidMessageError(
                f"a {_WHAT} carries 1 to {MAX_MOD_REPETITIONS} repetitions, not {count}"
            )
        k = byte_width(bits)
        w = reader.uint(k)
        xs, zs, a_bits, b_bits = [], [], [], []
        for _ in range(count):
            xs.append(reader.uint(k))
            zs.append(reader.uint(k))
            flags = reader.u8()
            if flags > 3:
                raise InvalidMessageError(f"a {_WHAT} has a flag byte above 3")
            a_bits.append(flags & 1)
            b_bits.append(flags >> 1)
        reader.end()
        return cls(bits, w, tuple(xs), tuple(zs), tuple(a_bits), tuple(b_bits))


def check_modulus_shape(n: Mpz) -> None:
    """Refuse moduli that need no proof to refuse: wrong size, even, prime, powers, small factors.

    Raises:
        KeySizeError: If the size is refused (``bund.compute.paillier.check_key_size``).
        WeakModulusError: If ``n`` is even, a perfect power, prime, or has a factor below 2^20.
    """
    n = gmpy2.mpz(n)
    validate_modulus(n)
    if gmpy2.is_power(n):
        raise WeakModulusError("the peer's Paillier modulus is a perfect power: refuse the key")
    if gmpy2.is_prime(n, 32):
        raise WeakModulusError("the peer's Paillier modulus is prime: refuse the key")


def mod_challenges(public_key: PublicKey, w: Mpz, context: bytes, repetitions: int) -> list[Mpz]:
    """The challenges ``y_1..y_m`` in ``Z_N`` that prover and verifier derive for a proof.

    Bound to the modulus, its key id, the context, the number of repetitions and ``w``.
    """
    n = public_key.n
    k = byte_width(public_key.bits)
    transcript = Transcript(_PROTOCOL)
    transcript.append_int("n", n, k)
    transcript.append_bytes("key-id", public_key.key_id)
    transcript.append_bytes("context", context)
    transcript.append_int("repetitions", repetitions, 2)
    transcript.append_int("w", w, k)
    return [gmpy2.mpz(y) for y in transcript.challenge_ints_below("y", n, repetitions)]


def _check_factors(n: Mpz, p: Mpz, q: Mpz) -> None:
    if p == q or p * q != n:
        raise ValueError("p and q are two different primes whose product is the modulus")
    for prime in (p, q):
        if prime % 4 != 3 or not gmpy2.is_prime(prime, 32):
            raise ValueError("a Paillier–Blum modulus has two primes ≡ 3 (mod 4)")
    if gmpy2.gcd(n, (p - 1) * (q - 1)) != 1:
        raise ValueError("gcd(N, φ(N)) ≠ 1: this modulus has no Paillier–Blum proof")


def _random_jacobi_minus_one(n: Mpz) -> Mpz:
    """A uniform ``w`` in ``Z_N`` with Jacobi symbol -1 (half the units have it)."""
    while True:
        w = random_unit(n)
        if gmpy2.jacobi(w, n) == -1:
            return w


def _pick_signs(y: Mpz, w: Mpz, p: Mpz, q: Mpz) -> tuple[int, int]:
    """The bits ``(a, b)`` that make ``(-1)^a·w^b·y`` a square modulo ``p`` and ``q``.

    ``-1`` is a non-residue modulo both primes (they are ``3 mod 4``) and ``w`` modulo exactly
    one (its Jacobi symbol is -1). So ``b = 1`` exactly when ``y`` is a square modulo one prime
    only, which gives ``w^b·y`` the same residuosity modulo both, and ``a = 1`` exactly when that
    is non-residue; a zero residue counts as a square.
    """
    yp, yq = gmpy2.legendre(y, p), gmpy2.legendre(y, q)
    b = 1 if yp * yq == -1 else 0
    symbol = yp * gmpy2.legendre(w, p) ** b if yp else yq * gmpy2.legendre(w, q) ** b
    return (1 if symbol < 0 else 0), b


def prove_mod(
    private_key: PrivateKey, context: bytes, *, repetitions: int = MOD_REPETITIONS
) -> ModProof:
    """Prove that the key's modulus is a Paillier–Blum modulus.

    Args:
        private_key: The key owner's key.
        context: What the proof is for, from the job spec (:func:`~bund.compute.zk.transcript.
            make_context` of the job id and the role); the verifier must pass the same.
        repetitions: ``m``; the verifier refuses fewer than it asks for (80 by default).

    Returns:
        The proof; send :meth:`ModProof.to_bytes` with the public key.

    Raises:
        ValueError: If the key's primes are not ``3 mod 4`` or ``gcd(N, φ(N)) ≠ 1`` (no proof
            exists), or ``repetitions`` is out of range.

    >>> from bund.compute import insecure, paillier
    >>> insecure.enable_insecure_test_parameters()
    >>> public, private = paillier.generate_keypair(512)
    >>> proof = prove_mod(private, b"job-1/model-holder")
    >>> verify_mod(public, ModProof.from_bytes(proof.to_bytes()), b"job-1/model-holder")
    >>> insecure.disable_insecure_test_parameters()
    """
    if not isinstance(context, bytes):
        raise TypeError("the context is bytes (make_context)")
    if not 1 <= repetitions <= MAX_MOD_REPETITIONS:
        raise ValueError(f"repetitions lies in [1, {MAX_MOD_REPETITIONS}]")
    p, q = private_factors(private_key)
    public_key = private_key.public_key
    n = public_key.n
    _check_factors(n, p, q)
    d = gmpy2.invert(n, (p - 1) * (q - 1))
    p_inv_q = gmpy2.invert(p, q)
    # For p ≡ 3 (mod 4), v^((p+1)/4) is the square root of a square v that is itself a square,
    # so applying it twice gives a fourth root.
    fourth_p = pow((p + 1) // 4, 2, p - 1)
    fourth_q = pow((q + 1) // 4, 2, q - 1)
    w = _random_jacobi_minus_one(n)
    ys = mod_challenges(public_key, w, context, repetitions)
    signs = [_pick_signs(y, w, p, q) for y in ys]
    targets = [(-1) ** a * w**b * y % n for y, (a, b) in zip(ys, signs, strict=True)]
    d_p, d_q = d % (p - 1), d % (q - 1)
    with released_gil():
        zs = tuple(crt(secret_power(y, d_p, p), secret_power(y, d_q, q), p, q, p_inv_q) for y in ys)
        xs = tuple(
            crt(secret_power(v, fourth_p, p), secret_power(v, fourth_q, q), p, q, p_inv_q)
            for v in targets
        )
    return ModProof(
        public_key.bits,
        w,
        xs,
        zs,
        tuple(a for a, _ in signs),
        tuple(b for _, b in signs),
    )


def verify_mod(
    public_key: PublicKey,
    proof: ModProof,
    context: bytes,
    *,
    min_repetitions: int = MOD_REPETITIONS,
) -> None:
    """Verify a peer's Π^mod proof before using its public key.

    Args:
        public_key: The peer's key (already parsed by ``PublicKey.from_bytes``).
        proof: The proof that came with it.
        context: The same context the prover used (job id, role).
        min_repetitions: Fewest repetitions accepted (80: soundness error ``2^-80``).

    Raises:
        KeySizeError: If the modulus size is refused.
        WeakModulusError: If the modulus is even, prime, a perfect power or has a small factor.
        ProofError: If the proof does not verify; the key must not be used.
    """
    if not isinstance(proof, ModProof):
        raise TypeError("verify_mod checks a ModProof")
    if not isinstance(context, bytes):
        raise TypeError("the context is bytes (make_context)")
    if min_repetitions < 1:
        raise ValueError("min_repetitions is at least 1")
    n = public_key.n
    check_modulus_shape(n)
    if proof.bits != public_key.bits:
        raise ProofError(f"the {_WHAT} is for a {proof.bits}-bit modulus, not this key's")
    if proof.repetitions < min_repetitions:
        raise ProofError(
            f"the {_WHAT} has {proof.repetitions} repetitions, fewer than the {min_repetitions} "
            "required"
        )
    if not 0 < proof.w < n or gmpy2.jacobi(proof.w, n) != -1:
        raise ProofError(f"the {_WHAT}'s w is not an element of Jacobi symbol -1")
    if any(not 0 <= v < n for v in proof.xs + proof.zs):
        raise ProofError(f"the {_WHAT} has a root outside [0, N)")
    ys = mod_challenges(public_key, proof.w, context, proof.repetitions)
    w = proof.w
    for index, (x, y, a, b) in enumerate(
        zip(proof.xs, ys, proof.a_bits, proof.b_bits, strict=True)
    ):
        x2 = x * x % n
        if x2 * x2 % n != (-1) ** a * w**b * y % n:
            raise ProofError(
                f"the {_WHAT} fails at repetition {index} (fourth root): the modulus is not a "
                "product of two primes ≡ 3 (mod 4), or the proof is for another key or context; "
                "refuse the key"
            )
    with released_gil():
        powers = gmpy2.powmod_base_list(list(proof.zs), n, n)
    for index, (power, y) in enumerate(zip(powers, ys, strict=True)):
        if power != y:
            raise ProofError(
                f"the {_WHAT} fails at repetition {index} (N-th root): gcd(N, φ(N)) ≠ 1, or "
                "the proof is for another key or context; refuse the key"
            )
