"""Π^enc: a Paillier key owner proves a ciphertext under its own key encrypts a small value.

Statement: ``K = (1 + N)^k · ρ^N mod N²`` with ``|k| ≤ 2^ℓ``, proved to a verifier who made
ring-Pedersen parameters ``(N̂, s, t)`` (:mod:`bund.compute.zk.prm`). This is the Paillier part of
"Paillier Encryption in Range ZK" of Canetti, Gennaro, Goldfeder, Makriyannis, Peled, *UC
Non-Interactive, Proactive, Threshold ECDSA with Identifiable Aborts* (ePrint 2021/060),
Fig. 14; Bund has no elliptic curve, so the group order ``q`` of the paper is gone: the
challenge range is a parameter of its own.

Use in Bund: a model holder encrypts its fixed-point weights under its own key and proves each
is at most ``2^ℓ`` in magnitude, so an evaluator that computes ``Σ w_i·x_i`` on its data knows the
model holder cannot have chosen weights that spread the evaluator's features over separate bit
ranges of one result (``w_i = 2^(40·i)`` would let one decryption read every ``x_i``).

The protocol (``ℓ``, ``ε``, challenge bits ``c`` from :class:`EncParameters`):

1. The prover samples ``α ∈ ±(2^(ℓ+ε) - 2^(ℓ+c))``, ``μ ∈ ±2^ℓ·N̂``, ``r ∈ Z*_N``,
   ``γ ∈ ±2^(ℓ+ε)·N̂`` and sends ``S = s^k t^μ mod N̂``, ``A = (1+N)^α r^N mod N²``,
   ``C = s^α t^γ mod N̂``.
2. The challenge ``e ∈ [-2^c, 2^c)`` is hashed from ``N``, the key id, ``(N̂, s, t)``, the
   context, the parameters, ``K``, ``S``, ``A`` and ``C``.
3. The prover sends ``z1 = α + e·k``, ``z2 = r·ρ^e mod N``, ``z3 = γ + e·μ``.

The verifier checks ``|z1| ≤ 2^(ℓ+ε)``, ``(1+N)^z1 · z2^N = A·K^e (mod N²)`` and
``s^z1 · t^z3 = C·S^e (mod N̂)`` (and that every value is a unit in its range, with
``|z3| ≤ 2^(ℓ+ε+1)·N̂``, which only bounds its work). The paper samples ``α`` in
``±2^(ℓ+ε)``; here the range is narrowed by ``2^(ℓ+c)`` so that ``|z1| ≤ 2^(ℓ+ε)`` always holds
for an honest prover (perfect completeness instead of a failure rate of ``2^(c-ε)``), at a
statistical distance of at most ``2^(c-ε)`` from the paper's distribution.

What the verifier learns: the slack. Soundness (CGGMP21, Fig. 14; knowledge extraction from two
answers ``z1, z1'`` to challenges ``e ≠ e'``, under the strong RSA assumption for the verifier's
``N̂``) yields ``k = (z1 - z1')/(e - e')``, so ``|k| ≤ 2^(ℓ+ε+1)``, not ``2^ℓ``: the verifier is
sure only that the plaintext is below ``2^(ℓ+ε+1)`` (:attr:`EncParameters.verified_bound`). An
honest prover needs ``|k| ≤ 2^ℓ``; a cheating one can get a value up to about ``2^(ℓ+ε-c)``
accepted with high probability, and nothing above ``2^(ℓ+ε+1)``. A protocol must size its
headroom for the verified bound. The prover's side: the proof is statistically zero-knowledge,
at distance about ``2^(c-ε)`` (``ε - c`` is the statistical slack, 80 bits by default), if the
verifier's ``s`` lies in ``<t>`` — check its Π^prm proof first.

Defaults: ``ℓ = 64`` (Bund's fixed-point weights), ``c = 80`` (soundness error ``2^-80`` per
proof, as Π^mod and Π^prm with 80 repetitions; with Fiat–Shamir, a cheater needs about ``2^80``
hash evaluations), ``ε = c + 80 = 160``. The verified bound is then ``2^225``. A larger ``c``
buys soundness at the price of slack, one for one.

Wire layout (version 1, big-endian; ``K = ceil(bits(N)/8)``, ``K̂ = ceil(bits(N̂)/8)``, signed
values two's complement): ``b"BZKE" | version:u8 | bits(N):u16 | bits(N̂):u16 | ℓ:u16 | ε:u16 |
c:u16 | S:K̂ | A:2K | C:K̂ | z1:⌈(ℓ+ε+2)/8⌉ | z2:K | z3:⌈(bits(N̂)+ℓ+ε+2)/8⌉`` — 1,609 bytes at
2048 bits with the defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import NoReturn

import gmpy2

from bund.compute.errors import InvalidMessageError, ProofError
from bund.compute.executor import Executor, InlineExecutor, split_evenly
from bund.compute.paillier import Mpz, PrivateKey, PublicKey
from bund.compute.zk.arith import (
    crt,
    private_factors,
    random_signed,
    random_unit,
    released_gil,
    secret_power,
    signed_secret_power,
)
from bund.compute.zk.codec import Reader, Writer, byte_width, signed_width
from bund.compute.zk.prm import RingPedersenParams
from bund.compute.zk.randomness import check_unit
from bund.compute.zk.transcript import Transcript

#: Fewest bits of statistical slack ``ε - c`` accepted by :class:`EncParameters`.
MIN_STATISTICAL_BITS = 40
#: Largest ``ℓ`` or ``ε`` accepted (bounds the sizes a received proof can declare).
MAX_RANGE_BITS = 2048
#: Largest challenge size accepted.
MAX_CHALLENGE_BITS = 256

_MAGIC = b"BZKE"
_PROTOCOL = "bund/zk/enc/v1"
_WHAT = "Paillier range proof"


@dataclass(frozen=True)
class EncParameters:
    """The range and slack of Π^enc: the protocol fixes them, and a proof names them.

    Attributes:
        ell: An honest prover's plaintexts satisfy ``|k| ≤ 2^ell``.
        epsilon: Slack: masks ``α`` are ``ell + epsilon`` bits.
        challenge_bits: ``c``: challenges lie in ``[-2^c, 2^c)``; soundness error ``2^-c``.
    """

    ell: int = 64
    epsilon: int = 160
    challenge_bits: int = 80

    def __post_init__(self) -> None:
        for name in ("ell", "epsilon", "challenge_bits"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} is an int")
        if not 1 <= self.ell <= MAX_RANGE_BITS or not 1 <= self.epsilon <= MAX_RANGE_BITS:
            raise ValueError(f"ell and epsilon lie in [1, {MAX_RANGE_BITS}]")
        if not 1 <= self.challenge_bits <= MAX_CHALLENGE_BITS:
            raise ValueError(f"challenge_bits lies in [1, {MAX_CHALLENGE_BITS}]")
        if self.epsilon - self.challenge_bits < MIN_STATISTICAL_BITS:
            raise ValueError(
                f"epsilon - challenge_bits is the statistical slack: at least "
                f"{MIN_STATISTICAL_BITS} bits"
            )

    @property
    def honest_bound(self) -> int:
        """``2^ell``: the largest magnitude an honest prover proves."""
        return 1 << self.ell

    @property
    def verified_bound(self) -> int:
        """``2^(ell+epsilon+1)``: what an accepted proof guarantees about ``|k|``."""
        return 1 << (self.ell + self.epsilon + 1)

    @property
    def statistical_bits(self) -> int:
        """``epsilon - challenge_bits``: the prover's statistical zero-knowledge slack."""
        return self.epsilon - self.challenge_bits


#: The protocol's default parameters (module docstring).
DEFAULT_ENC_PARAMETERS = EncParameters()


def _exponent_shift(parameters: EncParameters) -> int:
    """``2^W + 2^ℓ``, with ``W + 1`` the smallest whole number of 64-bit limbs above ``ℓ + 2``.

    For ``|k| ≤ 2^ℓ``, ``k + shift`` lies in ``[2^W, 2^W + 2^(ℓ+1)]`` and ``2^(ℓ+1) < 2^W``, so
    it always has exactly ``W + 1`` bits.
    """
    width = 64 * ((parameters.ell + 3 + 63) // 64) - 1
    return (1 << width) + (1 << parameters.ell)


def _z1_width(parameters: EncParameters) -> int:
    return signed_width(parameters.ell + parameters.epsilon + 1)


def _z3_width(parameters: EncParameters, nhat_bits: int) -> int:
    return signed_width(parameters.ell + parameters.epsilon + 1 + nhat_bits)


@dataclass(frozen=True)
class EncProof:
    """A non-interactive Π^enc proof for one ciphertext.

    Attributes:
        n_bits: Bit length of the prover's Paillier modulus ``N``.
        nhat_bits: Bit length of the verifier's ``N̂``.
        parameters: ``ℓ``, ``ε`` and ``c``.
        S: ``s^k t^μ mod N̂``.
        A: ``(1+N)^α r^N mod N²``.
        C: ``s^α t^γ mod N̂``.
        z1: ``α + e·k``.
        z2: ``r·ρ^e mod N``.
        z3: ``γ + e·μ``.
    """

    n_bits: int
    nhat_bits: int
    parameters: EncParameters
    S: Mpz
    A: Mpz
    C: Mpz
    z1: Mpz
    z2: Mpz
    z3: Mpz

    def to_bytes(self) -> bytes:
        """Serialise (layout in the module docstring)."""
        k, khat = byte_width(self.n_bits), byte_width(self.nhat_bits)
        params = self.parameters
        return (
            Writer(_MAGIC)
            .u16(self.n_bits)
            .u16(self.nhat_bits)
            .u16(params.ell)
            .u16(params.epsilon)
            .u16(params.challenge_bits)
            .uint(self.S, khat)
            .uint(self.A, 2 * k)
            .uint(self.C, khat)
            .sint(self.z1, _z1_width(params))
            .uint(self.z2, k)
            .sint(self.z3, _z3_width(params, self.nhat_bits))
            .finish()
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> EncProof:
        """Parse a received proof; values are range-checked by :func:`verify_enc`.

        Raises:
            InvalidMessageError: If the layout, version, sizes or parameters are malformed.
        """
        reader = Reader(data, _MAGIC, _WHAT)
        n_bits, nhat_bits = reader.modulus_bits(), reader.modulus_bits()
        ell, epsilon, challenge_bits = reader.u16(), reader.u16(), reader.u16()
        try:
            params = EncParameters(ell, epsilon, challenge_bits)
        except ValueError as err:
            raise InvalidMessageError(f"a {_WHAT} declares invalid parameters: {err}") from None
        k, khat = byte_width(n_bits), byte_width(nhat_bits)
        s_value, a_value, c_value = reader.uint(khat), reader.uint(2 * k), reader.uint(khat)
        z1 = reader.sint(_z1_width(params))
        z2 = reader.uint(k)
        z3 = reader.sint(_z3_width(params, nhat_bits))
        reader.end()
        return cls(n_bits, nhat_bits, params, s_value, a_value, c_value, z1, z2, z3)


def enc_challenge(
    public_key: PublicKey,
    ciphertext: Mpz,
    setup: RingPedersenParams,
    context: bytes,
    parameters: EncParameters,
    commitments: tuple[Mpz, Mpz, Mpz],
) -> Mpz:
    """The challenge ``e`` for first messages ``(S, A, C)``, as prover and verifier derive it."""
    k, khat = byte_width(public_key.bits), byte_width(setup.bits)
    transcript = Transcript(_PROTOCOL)
    transcript.append_int("n", public_key.n, k)
    transcript.append_bytes("key-id", public_key.key_id)
    transcript.append_int("nhat", setup.n, khat)
    transcript.append_int("s", setup.s, khat)
    transcript.append_int("t", setup.t, khat)
    transcript.append_bytes("params-id", setup.params_id)
    transcript.append_bytes("context", context)
    transcript.append_int("ell", parameters.ell, 2)
    transcript.append_int("epsilon", parameters.epsilon, 2)
    transcript.append_int("challenge-bits", parameters.challenge_bits, 2)
    transcript.append_int("K", ciphertext, 2 * k)
    s_value, a_value, c_value = commitments
    transcript.append_int("S", s_value, khat)
    transcript.append_int("A", a_value, 2 * k)
    transcript.append_int("C", c_value, khat)
    return gmpy2.mpz(transcript.challenge_signed("e", parameters.challenge_bits))


class _Prover:
    """A key owner's constants for proving many ciphertexts (kept in this process)."""

    __slots__ = (
        "d_p",
        "d_q",
        "n_mod_p2",
        "n_mod_q2",
        "p",
        "p2",
        "p2_inv_q2",
        "p_inv_q",
        "private_key",
        "public_key",
        "q",
        "q2",
    )

    def __init__(self, private_key: PrivateKey) -> None:
        p, q = private_factors(private_key)
        self.private_key = private_key
        self.public_key = private_key.public_key
        n = self.public_key.n
        self.p, self.q = p, q
        self.p2, self.q2 = p * p, q * q
        self.p_inv_q = gmpy2.invert(p, q)
        self.p2_inv_q2 = gmpy2.invert(self.p2, self.q2)
        d = gmpy2.invert(n, (p - 1) * (q - 1))
        self.d_p, self.d_q = d % (p - 1), d % (q - 1)
        # Z*_{p²} has order p(p-1), so r^N mod p² = r^(N mod p(p-1)) mod p².
        self.n_mod_p2, self.n_mod_q2 = n % (p * (p - 1)), n % (q * (q - 1))

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "a range-proof prover holds the key's factors and never leaves the process: prove "
            "with an inline or thread executor"
        )

    def randomness_of(self, ciphertext: Mpz) -> Mpz:
        """``ρ`` with ``K = (1+N)^m ρ^N``: ``K ≡ ρ^N (mod N)``, and ``x ↦ x^N`` inverts by ``d``."""
        rho_p = secret_power(ciphertext, self.d_p, self.p)
        rho_q = secret_power(ciphertext, self.d_q, self.q)
        return crt(rho_p, rho_q, self.p, self.q, self.p_inv_q)

    def nth_power(self, r: Mpz) -> Mpz:
        """``r^N mod N²`` by CRT modulo ``p²`` and ``q²``."""
        hp = secret_power(r, self.n_mod_p2, self.p2)
        hq = secret_power(r, self.n_mod_q2, self.q2)
        return crt(hp, hq, self.p2, self.q2, self.p2_inv_q2)

    def power_mod_n(self, rho: Mpz, e: Mpz) -> Mpz:
        """``ρ^e mod N`` for a secret ``ρ`` and a public signed ``e``, by CRT."""
        rp = secret_power(rho, e % (self.p - 1) + self.p - 1, self.p)
        rq = secret_power(rho, e % (self.q - 1) + self.q - 1, self.q)
        return crt(rp, rq, self.p, self.q, self.p_inv_q)

    def prove(
        self,
        ciphertext: Mpz,
        setup: RingPedersenParams,
        context: bytes,
        parameters: EncParameters,
    ) -> EncProof:
        public_key = self.public_key
        n, n2 = public_key.n, public_key.n_square
        check_unit(ciphertext, n)
        (m,) = self.private_key.decrypt_raw([ciphertext])
        k = m if m <= n // 2 else m - n
        if abs(k) > parameters.honest_bound:
            raise ValueError(
                f"the ciphertext's plaintext is outside ±2^{parameters.ell}: no range proof "
                "exists for it (re-encode the value or widen ell)"
            )
        rho = self.randomness_of(ciphertext)
        ell, eps, c = parameters.ell, parameters.epsilon, parameters.challenge_bits
        nhat, s, t = setup.n, setup.s, setup.t
        alpha = random_signed((1 << (ell + eps)) - (1 << (ell + c)))
        mu = random_signed((1 << ell) * nhat)
        r = random_unit(n)
        gamma = random_signed((1 << (ell + eps)) * nhat)
        s_inv, t_inv = gmpy2.invert(s, nhat), gmpy2.invert(t, nhat)
        # s^k as s^(k + shift) · s^-shift: the secret exponent always has the same bit length,
        # so the time of powm_sec shows neither the sign nor the size of the weight.
        shift = _exponent_shift(parameters)
        s_value = (
            secret_power(s, k + shift, nhat)
            * gmpy2.powmod(s_inv, shift, nhat)
            * signed_secret_power(t, t_inv, mu, nhat)
            % nhat
        )
        a_value = (1 + alpha % n * n) * self.nth_power(r) % n2
        c_value = (
            signed_secret_power(s, s_inv, alpha, nhat)
            * signed_secret_power(t, t_inv, gamma, nhat)
            % nhat
        )
        e = enc_challenge(
            public_key, ciphertext, setup, context, parameters, (s_value, a_value, c_value)
        )
        z1 = alpha + e * k
        z2 = r * self.power_mod_n(rho, e) % n
        z3 = gamma + e * mu
        return EncProof(
            public_key.bits, setup.bits, parameters, s_value, a_value, c_value, z1, z2, z3
        )


def _check_context(context: bytes) -> None:
    if not isinstance(context, bytes):
        raise TypeError("the context is bytes (make_context)")


def prove_enc(
    private_key: PrivateKey,
    ciphertext: Mpz,
    setup: RingPedersenParams,
    context: bytes,
    *,
    parameters: EncParameters = DEFAULT_ENC_PARAMETERS,
) -> EncProof:
    """Prove that ``ciphertext``, under the prover's own key, encrypts ``k`` with ``|k| ≤ 2^ℓ``.

    The key owner needs neither ``k`` nor the encryption randomness: it decrypts ``k`` and
    recovers ``ρ = (K mod N)^(N^-1 mod φ(N)) mod N``, so any ciphertext of its key can be proved,
    DJN-encrypted ones included.

    Args:
        private_key: The prover's Paillier key.
        ciphertext: ``K``, under ``private_key.public_key``.
        setup: The verifier's ring-Pedersen parameters, whose Π^prm proof the caller has
            verified (otherwise the commitments may leak ``k``).
        context: What the proof is for (job id, role; see ``make_context``).
        parameters: ``ℓ``, ``ε``, ``c`` (the protocol's, as the verifier will expect).

    Raises:
        ValueError: If the plaintext is outside ``±2^ℓ`` (no proof exists for it).
        InvalidCiphertextError: If ``ciphertext`` is not a unit in ``(0, N²)``.

    >>> from bund.compute import insecure, paillier
    >>> from bund.compute.zk.prm import generate_ring_pedersen
    >>> insecure.enable_insecure_test_parameters()
    >>> public, private = paillier.generate_keypair(512)
    >>> setup = generate_ring_pedersen(512).params
    >>> (weight,) = paillier.Encryptor(public).encrypt_raw([12345])
    >>> context = b"job-1/model-holder"
    >>> wire = prove_enc(private, weight, setup, context).to_bytes()
    >>> verify_enc(public, weight, setup, EncProof.from_bytes(wire), context)
    >>> insecure.disable_insecure_test_parameters()
    """
    _check_context(context)
    return _Prover(private_key).prove(gmpy2.mpz(ciphertext), setup, context, parameters)


def _prove_batch(
    prover: _Prover,
    setup: RingPedersenParams,
    context: bytes,
    parameters: EncParameters,
    ciphertexts: Sequence[Mpz],
) -> list[EncProof]:
    with released_gil():
        return [prover.prove(c, setup, context, parameters) for c in ciphertexts]


def prove_enc_many(
    private_key: PrivateKey,
    ciphertexts: Sequence[Mpz],
    setup: RingPedersenParams,
    context: bytes,
    *,
    parameters: EncParameters = DEFAULT_ENC_PARAMETERS,
    executor: Executor | None = None,
) -> list[EncProof]:
    """:func:`prove_enc` for every ciphertext, in executor batches.

    The private key stays in this process: use an inline or thread executor (a process pool
    refuses, as the key does not pickle).
    """
    _check_context(context)
    executor = executor or InlineExecutor()
    prover = _Prover(private_key)
    cts = [gmpy2.mpz(c) for c in ciphertexts]
    batches = split_evenly(cts, executor.workers)
    results = executor.map(partial(_prove_batch, prover, setup, context, parameters), batches)
    return [proof for batch in results for proof in batch]


def _fail(message: str) -> ProofError:
    return ProofError(f"the {_WHAT} does not verify: {message}; refuse the ciphertext")


def verify_enc(
    public_key: PublicKey,
    ciphertext: Mpz,
    setup: RingPedersenParams,
    proof: EncProof,
    context: bytes,
    *,
    parameters: EncParameters = DEFAULT_ENC_PARAMETERS,
) -> None:
    """Verify that ``ciphertext`` encrypts a value of magnitude below ``2^(ℓ+ε+1)``.

    Args:
        public_key: The prover's Paillier key (its Π^mod proof verified).
        ciphertext: ``K`` as received (checked to be a unit here).
        setup: The verifier's own ring-Pedersen parameters.
        proof: The prover's proof.
        context: The context the prover must have used (job id, role).
        parameters: The protocol's ``ℓ``, ``ε``, ``c``; a proof made with others is refused.

    Raises:
        InvalidCiphertextError: If ``ciphertext`` is not a unit in ``(0, N²)``.
        ProofError: If the proof does not verify.
    """
    if not isinstance(proof, EncProof):
        raise TypeError("verify_enc checks an EncProof")
    _check_context(context)
    ciphertext = gmpy2.mpz(ciphertext)
    n, n2 = public_key.n, public_key.n_square
    nhat, s, t = setup.n, setup.s, setup.t
    check_unit(ciphertext, n)
    if proof.parameters != parameters:
        raise _fail(f"it was made with {proof.parameters}, the protocol fixes {parameters}")
    if proof.n_bits != public_key.bits or proof.nhat_bits != setup.bits:
        raise _fail("it is for moduli of other sizes")
    if not 0 < proof.A < n2 or gmpy2.gcd(proof.A, n) != 1:
        raise _fail("A is not a unit modulo N²")
    if not 0 < proof.z2 < n or gmpy2.gcd(proof.z2, n) != 1:
        raise _fail("z2 is not a unit modulo N")
    for name, value in (("S", proof.S), ("C", proof.C)):
        if not 0 < value < nhat or gmpy2.gcd(value, nhat) != 1:
            raise _fail(f"{name} is not a unit modulo N̂")
    ell, eps = parameters.ell, parameters.epsilon
    if abs(proof.z1) > 1 << (ell + eps):
        raise _fail(f"z1 is outside ±2^{ell + eps}, so the plaintext is not in range")
    if abs(proof.z3) > (1 << (ell + eps + 1)) * nhat:
        raise _fail("z3 is outside its range")
    e = enc_challenge(
        public_key, ciphertext, setup, context, parameters, (proof.S, proof.A, proof.C)
    )
    with released_gil():
        left = (1 + proof.z1 % n * n) * gmpy2.powmod(proof.z2, n, n2) % n2
        right = proof.A * gmpy2.powmod(ciphertext, e, n2) % n2
        if left != right:
            raise _fail(
                "the Paillier equation fails (another ciphertext, key or context, or a "
                "tampered proof)"
            )
        left = gmpy2.powmod(s, proof.z1, nhat) * gmpy2.powmod(t, proof.z3, nhat) % nhat
        right = proof.C * gmpy2.powmod(proof.S, e, nhat) % nhat
    if left != right:
        raise _fail("the commitment equation fails (other parameters, or a tampered proof)")


def _verify_batch(
    public_key: PublicKey,
    setup: RingPedersenParams,
    context: bytes,
    parameters: EncParameters,
    pairs: Sequence[tuple[int, Mpz, EncProof]],
) -> list[tuple[int, str] | None]:
    out: list[tuple[int, str] | None] = []
    for index, ciphertext, proof in pairs:
        try:
            verify_enc(public_key, ciphertext, setup, proof, context, parameters=parameters)
        except ProofError as err:
            out.append((index, str(err)))
        else:
            out.append(None)
    return out


def verify_enc_many(
    public_key: PublicKey,
    ciphertexts: Sequence[Mpz],
    setup: RingPedersenParams,
    proofs: Sequence[EncProof],
    context: bytes,
    *,
    parameters: EncParameters = DEFAULT_ENC_PARAMETERS,
    executor: Executor | None = None,
) -> None:
    """:func:`verify_enc` for every ciphertext with its proof, in executor batches.

    Raises:
        InvalidMessageError: If there is not exactly one proof per ciphertext.
        InvalidCiphertextError: If a ciphertext is not a unit in ``(0, N²)``.
        ProofError: Naming the first ciphertext whose proof fails.
    """
    _check_context(context)
    if len(proofs) != len(ciphertexts):
        raise InvalidMessageError(
            f"{len(ciphertexts)} ciphertexts came with {len(proofs)} range proofs"
        )
    executor = executor or InlineExecutor()
    items = [(i, gmpy2.mpz(c), p) for i, (c, p) in enumerate(zip(ciphertexts, proofs, strict=True))]
    batches = split_evenly(items, executor.workers)
    results = executor.map(partial(_verify_batch, public_key, setup, context, parameters), batches)
    for outcome in (o for batch in results for o in batch):
        if outcome is not None:
            index, message = outcome
            raise ProofError(f"ciphertext {index}: {message}")
