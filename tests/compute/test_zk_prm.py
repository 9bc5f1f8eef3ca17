"""Ring-Pedersen parameters and Π^prm: honest setups verify; s outside <t> is caught and matters."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import secrets
import struct
from collections.abc import Iterator

import gmpy2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.compute import insecure
from bund.compute import paillier as pl
from bund.compute.errors import (
    InvalidKeyError,
    InvalidMessageError,
    KeySizeError,
    ProofError,
    WeakModulusError,
)
from bund.compute.zk import enc, prm
from bund.compute.zk.transcript import make_context

CONTEXT = make_context("job-7", "evaluator", "ring-pedersen")


@pytest.fixture(autouse=True)
def _small_keys_allowed() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()
    yield


@pytest.fixture(scope="module")
def secret() -> prm.RingPedersenSecret:
    insecure.enable_insecure_test_parameters()
    try:
        return prm.generate_ring_pedersen(512)
    finally:
        insecure.disable_insecure_test_parameters()


@pytest.fixture(scope="module")
def proof(secret: prm.RingPedersenSecret) -> prm.PrmProof:
    return prm.prove_prm(secret, CONTEXT)


def _primes(secret: prm.RingPedersenSecret) -> tuple[int, int]:
    return int(secret._p), int(secret._q)


def _outside(secret: prm.RingPedersenSecret) -> prm.RingPedersenParams:
    """The same N̂ and t with s' = -t^λ: a non-residue modulo both primes, so s' ∉ <t>."""
    params = secret.params
    return prm.RingPedersenParams(params.n, params.n - params.s, params.t)


def _forge(params: prm.RingPedersenParams, context: bytes = CONTEXT) -> tuple[prm.PrmProof, int]:
    """A prover without log_t(s): it guesses each challenge bit and prepares for the guess.

    Returns:
        The proof and how many of its guesses were right.
    """
    n, s, t = params.n, params.s, params.t
    guesses = [secrets.randbelow(2) for _ in range(prm.PRM_REPETITIONS)]
    responses = [gmpy2.mpz(secrets.randbelow(int(n))) for _ in guesses]
    s_inv = gmpy2.invert(s, n)
    commitments = tuple(
        gmpy2.powmod(t, z, n) * (s_inv if g else 1) % n
        for z, g in zip(responses, guesses, strict=True)
    )
    bits = prm.prm_challenges(params, commitments, context)
    right = sum(g == e for g, e in zip(guesses, bits, strict=True))
    return prm.PrmProof(params.bits, commitments, tuple(responses)), right


# --- setup ---


def test_generated_parameters_have_the_promised_shape(secret: prm.RingPedersenSecret) -> None:
    params = secret.params
    p, q = _primes(secret)
    for prime in (p, q):
        assert gmpy2.is_prime(prime) and gmpy2.is_prime((prime - 1) // 2)  # safe primes
        assert prime.bit_length() == 256 and prime >> 254 == 3
    assert params.n == p * q and params.bits == 512
    assert gmpy2.jacobi(params.t, p) == 1 and gmpy2.jacobi(params.t, q) == 1  # t is a square
    assert params.t % p != 1 and params.t % q != 1
    assert gmpy2.powmod(params.t, secret._lam, params.n) == params.s


def test_safe_primes_have_exact_size() -> None:
    for bits in (32, 64, 200):
        p = prm.random_safe_prime(bits)
        assert p.bit_length() == bits and gmpy2.is_prime(p) and gmpy2.is_prime((p - 1) // 2)
    with pytest.raises(ValueError):
        prm.random_safe_prime(31)


def test_small_and_odd_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        prm.generate_ring_pedersen(513)
    insecure.disable_insecure_test_parameters()
    with pytest.raises(KeySizeError):
        prm.generate_ring_pedersen(1024)


def test_secret_never_serialises(secret: prm.RingPedersenSecret) -> None:
    assert "<secret>" in repr(secret) and str(secret._lam) not in repr(secret)
    for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError):
            attempt(secret)
    assert not hasattr(secret, "to_bytes")


def test_secret_refuses_parameters_it_does_not_open(secret: prm.RingPedersenSecret) -> None:
    p, q = _primes(secret)
    with pytest.raises(ValueError, match="s = t"):
        prm.RingPedersenSecret(_outside(secret), p, q, secret._lam)


def test_parameters_round_trip(secret: prm.RingPedersenSecret) -> None:
    data = secret.params.to_bytes()
    assert data[:5] == b"BZKR\x01" and len(data) == 5 + 2 + 3 * 64
    assert prm.RingPedersenParams.from_bytes(data) == secret.params
    assert prm.RingPedersenParams.from_bytes(data).params_id == secret.params.params_id


@pytest.mark.parametrize("which", ["s-one", "t-minus-one", "s-not-unit", "t-zero", "n-even"])
def test_malformed_parameters_are_refused(secret: prm.RingPedersenSecret, which: str) -> None:
    params = secret.params
    n, s, t = int(params.n), int(params.s), int(params.t)
    p, _ = _primes(secret)
    values = {
        "s-one": (n, 1, t),
        "t-minus-one": (n, s, n - 1),
        "s-not-unit": (n, p, t),
        "t-zero": (n, s, 0),
        "n-even": (n + 1, s, t),
    }[which]
    data = struct.pack(">4sBH", b"BZKR", 1, 512) + b"".join(v.to_bytes(64, "big") for v in values)
    with pytest.raises((InvalidKeyError, InvalidMessageError)):
        prm.RingPedersenParams.from_bytes(data)


def test_weak_modulus_is_refused() -> None:
    p = prm.random_safe_prime(256)
    data = struct.pack(">4sBH", b"BZKR", 1, 512) + b"".join(
        v.to_bytes(64, "big") for v in (int(p * p), 4, 9)
    )
    with pytest.raises(WeakModulusError):
        prm.RingPedersenParams.from_bytes(data)


# --- completeness ---


def test_honest_parameters_verify(secret: prm.RingPedersenSecret, proof: prm.PrmProof) -> None:
    assert proof.repetitions == prm.PRM_REPETITIONS == 80
    params = prm.RingPedersenParams.from_bytes(secret.params.to_bytes())
    prm.verify_prm(params, prm.PrmProof.from_bytes(proof.to_bytes()), CONTEXT)


def test_proof_round_trip(proof: prm.PrmProof) -> None:
    data = proof.to_bytes()
    assert data[:5] == b"BZKP\x01" and len(data) == 5 + 4 + 2 * 80 * 64
    assert prm.PrmProof.from_bytes(data) == proof


@pytest.mark.slow
def test_2048_bit_parameters_verify() -> None:
    insecure.disable_insecure_test_parameters()
    secret = prm.generate_ring_pedersen(2048)
    proof = prm.prove_prm(secret, CONTEXT)
    data = proof.to_bytes()
    assert len(data) == 40_969
    params = prm.RingPedersenParams.from_bytes(secret.params.to_bytes())
    prm.verify_prm(params, prm.PrmProof.from_bytes(data), CONTEXT)
    with pytest.raises(ProofError):
        prm.verify_prm(params, proof, make_context("job-8", "evaluator", "ring-pedersen"))


# --- soundness ---


def _valid_repetitions(params: prm.RingPedersenParams, proof: prm.PrmProof) -> int:
    """How many repetitions satisfy t^z = A·s^e on their own."""
    n, s, t = params.n, params.s, params.t
    bits = prm.prm_challenges(params, proof.commitments, CONTEXT)
    return sum(
        gmpy2.powmod(t, z, n) == a * (s if e else 1) % n
        for a, z, e in zip(proof.commitments, proof.responses, bits, strict=True)
    )


@pytest.mark.parametrize("honest", [True, False])
def test_guessing_prover_passes_exactly_its_right_guesses(
    secret: prm.RingPedersenSecret, honest: bool
) -> None:
    """The forger is right half the time, with s in <t> or not: 80 repetitions stop it."""
    params = secret.params if honest else _outside(secret)
    forged, right = _forge(params)
    assert _valid_repetitions(params, forged) == right
    assert 15 <= right <= 65
    with pytest.raises(ProofError):
        prm.verify_prm(params, forged, CONTEXT)


def test_s_outside_t_is_refused(secret: prm.RingPedersenSecret) -> None:
    bad = _outside(secret)
    prm.validate_ring_pedersen(bad)  # the cheap checks see nothing wrong
    forged, right = _forge(bad)
    assert _valid_repetitions(bad, forged) == right < prm.PRM_REPETITIONS
    with pytest.raises(ProofError, match="outside <t>"):
        prm.verify_prm(bad, forged, CONTEXT)


def test_why_s_must_lie_in_t(secret: prm.RingPedersenSecret) -> None:
    """With s = -t^λ, the verifier reads k mod 2 off every range proof's commitment S.

    Legendre(S, p̂) = Legendre(-1, p̂)^k · Legendre(t, p̂)^(λk+μ) = (-1)^k.
    """
    p, _ = _primes(secret)
    public, private = pl.generate_keypair(512)
    encryptor = pl.Encryptor(public)
    for params, leaks in ((_outside(secret), True), (secret.params, False)):
        for k in (1, 2, 12345, 2**40):
            (c,) = encryptor.encrypt_raw([k])
            proof = enc.prove_enc(private, c, params, CONTEXT)
            parity = 0 if gmpy2.legendre(proof.S, p) == 1 else 1
            assert (parity == k % 2) if leaks else (parity == 0)


def test_proof_for_other_parameters_is_refused(proof: prm.PrmProof) -> None:
    other = prm.generate_ring_pedersen(512)
    with pytest.raises(ProofError):
        prm.verify_prm(other.params, proof, CONTEXT)


def test_replayed_under_another_context_is_refused(
    secret: prm.RingPedersenSecret, proof: prm.PrmProof
) -> None:
    with pytest.raises(ProofError):
        prm.verify_prm(secret.params, proof, make_context("job-8", "evaluator", "ring-pedersen"))


@pytest.mark.parametrize("field", ["commitments", "responses"])
def test_tampered_proof_is_refused(
    secret: prm.RingPedersenSecret, proof: prm.PrmProof, field: str
) -> None:
    values = getattr(proof, field)
    tampered = dataclasses.replace(proof, **{field: values[:3] + (values[3] + 1,) + values[4:]})
    with pytest.raises(ProofError):
        prm.verify_prm(secret.params, tampered, CONTEXT)


def test_too_few_repetitions_are_refused(secret: prm.RingPedersenSecret) -> None:
    short = prm.prove_prm(secret, CONTEXT, repetitions=20)
    with pytest.raises(ProofError, match="20 repetitions"):
        prm.verify_prm(secret.params, short, CONTEXT)
    prm.verify_prm(secret.params, short, CONTEXT, min_repetitions=20)


def test_values_out_of_range_are_refused(
    secret: prm.RingPedersenSecret, proof: prm.PrmProof
) -> None:
    n = secret.params.n
    for tampered in (
        dataclasses.replace(proof, commitments=(0,) + proof.commitments[1:]),
        dataclasses.replace(proof, responses=(n,) + proof.responses[1:]),
    ):
        with pytest.raises(ProofError, match="range"):
            prm.verify_prm(secret.params, tampered, CONTEXT)


# --- the wire ---


def test_malformed_proofs_are_refused(proof: prm.PrmProof) -> None:
    data = proof.to_bytes()
    for message in (
        data[:-1],
        data + b"\x00",
        b"BZKM" + data[4:],
        data[:4] + b"\x09" + data[5:],
        struct.pack(">4sBHH", b"BZKP", 1, 512, 0) + data[9:],
        struct.pack(">4sBHH", b"BZKP", 1, 512, prm.MAX_PRM_REPETITIONS + 1) + data[9:],
        struct.pack(">4sBHH", b"BZKP", 1, 9000, 80) + data[9:],
    ):
        with pytest.raises(InvalidMessageError):
            prm.PrmProof.from_bytes(message)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_are_refused_or_round_trip(data: bytes) -> None:
    for magic, parse in (
        (b"BZKP", prm.PrmProof.from_bytes),
        (b"BZKR", prm.RingPedersenParams.from_bytes),
    ):
        message = magic + b"\x01" + data
        try:
            parsed = parse(message)
        except (InvalidMessageError, InvalidKeyError, KeySizeError):
            continue
        assert parsed.to_bytes() == message


@settings(max_examples=25, deadline=None)
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_is_refused(
    secret: prm.RingPedersenSecret, proof: prm.PrmProof, position: int, bit: int
) -> None:
    data = bytearray(proof.to_bytes())
    data[position % len(data)] ^= 1 << bit
    with pytest.raises((InvalidMessageError, ProofError)):
        prm.verify_prm(secret.params, prm.PrmProof.from_bytes(bytes(data)), CONTEXT)
