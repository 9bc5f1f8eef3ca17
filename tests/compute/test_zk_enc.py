"""Π^enc: in-range weights verify; out-of-range, tampered, replayed and foreign proofs do not."""

from __future__ import annotations

import dataclasses
import pickle
import struct
from collections.abc import Iterator

import gmpy2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.compute import insecure
from bund.compute import paillier as pl
from bund.compute.errors import (
    CiphertextNotUnitError,
    CiphertextRangeError,
    InvalidMessageError,
    ProofError,
)
from bund.compute.executor import ThreadExecutor
from bund.compute.zk import enc, prm
from bund.compute.zk.arith import random_signed, random_unit
from bund.compute.zk.randomness import FullRandomness
from bund.compute.zk.transcript import make_context

CONTEXT = make_context("job-7", "model-holder", "weights")
PARAMS = enc.DEFAULT_ENC_PARAMETERS
ELL, EPS, CH = PARAMS.ell, PARAMS.epsilon, PARAMS.challenge_bits


class Setup:
    """A model holder's key and an evaluator's ring-Pedersen parameters, made once."""

    def __init__(self, bits: int) -> None:
        self.public, self.private = pl.generate_keypair(bits)
        self.encryptor = pl.Encryptor(self.public)
        self.ring = prm.generate_ring_pedersen(bits).params

    def encrypt(self, k: int) -> gmpy2.mpz:
        (c,) = self.encryptor.encrypt_raw([k % self.public.n])
        return c


@pytest.fixture(autouse=True)
def _small_keys_allowed() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()
    yield


@pytest.fixture(scope="module")
def setup() -> Setup:
    insecure.enable_insecure_test_parameters()
    try:
        return Setup(512)
    finally:
        insecure.disable_insecure_test_parameters()


@pytest.fixture(scope="module")
def weight(setup: Setup) -> tuple[gmpy2.mpz, enc.EncProof]:
    insecure.enable_insecure_test_parameters()
    try:
        c = setup.encrypt(-123_456_789)
        return c, enc.prove_enc(setup.private, c, setup.ring, CONTEXT)
    finally:
        insecure.disable_insecure_test_parameters()


def _forge(setup: Setup, k: int, context: bytes = CONTEXT) -> tuple[gmpy2.mpz, enc.EncProof]:
    """A prover that runs the protocol honestly for any ``k``, skipping the range check."""
    n, n2 = setup.public.n, setup.public.n_square
    nhat, s, t = setup.ring.n, setup.ring.s, setup.ring.t
    rho = random_unit(n)
    c = (1 + k % n * n) * gmpy2.powmod(rho, n, n2) % n2
    alpha = random_signed((1 << (ELL + EPS)) - (1 << (ELL + CH)))
    mu = random_signed((1 << ELL) * nhat)
    r = random_unit(n)
    gamma = random_signed((1 << (ELL + EPS)) * nhat)
    s_value = gmpy2.powmod(s, k, nhat) * gmpy2.powmod(t, mu, nhat) % nhat
    a_value = (1 + alpha % n * n) * gmpy2.powmod(r, n, n2) % n2
    c_value = gmpy2.powmod(s, alpha, nhat) * gmpy2.powmod(t, gamma, nhat) % nhat
    e = enc.enc_challenge(setup.public, c, setup.ring, context, PARAMS, (s_value, a_value, c_value))
    proof = enc.EncProof(
        setup.public.bits,
        setup.ring.bits,
        PARAMS,
        s_value,
        a_value,
        c_value,
        alpha + e * k,
        r * gmpy2.powmod(rho, e, n) % n,
        gamma + e * mu,
    )
    return c, proof


# --- parameters ---


def test_default_parameters_and_their_bounds() -> None:
    assert (ELL, EPS, CH) == (64, 160, 80)
    assert PARAMS.honest_bound == 2**64
    assert PARAMS.verified_bound == 2**225
    assert PARAMS.statistical_bits == 80


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((64, 100, 80), ValueError),  # only 20 bits of statistical slack
        ((0, 160, 80), ValueError),
        ((64, 160, 0), ValueError),
        ((64, 5000, 80), ValueError),
        ((True, 160, 80), TypeError),
    ],
)
def test_unsound_parameters_are_refused(args: tuple[int, int, int], error: type) -> None:
    with pytest.raises(error):
        enc.EncParameters(*args)


# --- completeness ---


@settings(max_examples=30, deadline=None)
@given(k=st.integers(min_value=-(2**64), max_value=2**64))
def test_any_weight_in_range_verifies(setup: Setup, k: int) -> None:
    c = setup.encrypt(k)
    proof = enc.prove_enc(setup.private, c, setup.ring, CONTEXT)
    enc.verify_enc(setup.public, c, setup.ring, enc.EncProof.from_bytes(proof.to_bytes()), CONTEXT)


def test_the_range_ends_always_verify(setup: Setup) -> None:
    """α is narrowed by 2^(ℓ+c), so |z1| ≤ 2^(ℓ+ε) even at k = ±2^ℓ: perfect completeness."""
    for k in (2**ELL, -(2**ELL), 0):
        c = setup.encrypt(k)
        for _ in range(10):
            proof = enc.prove_enc(setup.private, c, setup.ring, CONTEXT)
            assert abs(proof.z1) <= 2 ** (ELL + EPS)
            enc.verify_enc(setup.public, c, setup.ring, proof, CONTEXT)


def test_textbook_and_key_owner_ciphertexts_verify(setup: Setup) -> None:
    (textbook,) = FullRandomness(setup.public).encrypt_raw([42])
    (owner,) = pl.Encryptor(setup.private).encrypt_raw([setup.public.n - 42])
    for c in (textbook, owner):
        proof = enc.prove_enc(setup.private, c, setup.ring, CONTEXT)
        enc.verify_enc(setup.public, c, setup.ring, proof, CONTEXT)


def test_wire_layout(weight: tuple[gmpy2.mpz, enc.EncProof]) -> None:
    _, proof = weight
    data = proof.to_bytes()
    assert data[:5] == b"BZKE\x01"
    assert struct.unpack(">5H", data[5:15]) == (512, 512, 64, 160, 80)
    assert len(data) == 15 + 64 + 128 + 64 + 29 + 64 + 93
    assert enc.EncProof.from_bytes(data) == proof


def test_many_in_executor_batches(setup: Setup) -> None:
    weights = [3, -(2**63), 2**64, 0, 77, -5]
    cts = [setup.encrypt(k) for k in weights]
    with ThreadExecutor(2) as executor:
        proofs = enc.prove_enc_many(setup.private, cts, setup.ring, CONTEXT, executor=executor)
        enc.verify_enc_many(setup.public, cts, setup.ring, proofs, CONTEXT, executor=executor)
        _, forged = _forge(setup, 5)
        proofs[4] = forged
        with pytest.raises(ProofError, match="ciphertext 4"):
            enc.verify_enc_many(setup.public, cts, setup.ring, proofs, CONTEXT, executor=executor)
    with pytest.raises(InvalidMessageError):
        enc.verify_enc_many(setup.public, cts, setup.ring, proofs[:-1], CONTEXT)


@pytest.mark.slow
def test_2048_bit_weights_verify() -> None:
    insecure.disable_insecure_test_parameters()
    big = Setup(2048)
    for k in (2**64, -1, 987_654_321):
        c = big.encrypt(k)
        proof = enc.prove_enc(big.private, c, big.ring, CONTEXT)
        data = proof.to_bytes()
        assert len(data) == 1_609
        enc.verify_enc(big.public, c, big.ring, enc.EncProof.from_bytes(data), CONTEXT)
    with pytest.raises(ValueError, match="outside"):
        enc.prove_enc(big.private, big.encrypt(2**64 + 1), big.ring, CONTEXT)
    with pytest.raises(ProofError):
        enc.verify_enc(big.public, c, big.ring, proof, make_context("job-8", "model-holder"))


# --- soundness: the range ---


def test_prover_refuses_a_weight_just_outside_the_range(setup: Setup) -> None:
    for k in (2**ELL + 1, -(2**ELL) - 1, 2**200):
        with pytest.raises(ValueError, match="outside"):
            enc.prove_enc(setup.private, setup.encrypt(k), setup.ring, CONTEXT)


def test_forger_is_competent_in_range(setup: Setup) -> None:
    """The cheating prover below is the honest algorithm without its check: in range, it passes."""
    c, proof = _forge(setup, 2**ELL)
    enc.verify_enc(setup.public, c, setup.ring, proof, CONTEXT)


@pytest.mark.parametrize(
    "k",
    [
        2 ** (ELL + EPS) + 1,  # just above what any accepted proof can carry...
        -(2 ** (ELL + EPS)) - 1,
        PARAMS.verified_bound + 1,  # ...and just above the extractor's bound 2^(ℓ+ε+1)
        2**1000,
    ],
)
def test_weight_above_the_slack_adjusted_bound_is_refused(setup: Setup, k: int) -> None:
    """|e·k| > 2^(ℓ+ε) + |α| for every e ≠ 0, so z1 leaves its range (e = 0: chance 2^-81)."""
    for _ in range(5):
        c, proof = _forge(setup, k)
        with pytest.raises(ProofError, match="z1 is outside"):
            enc.verify_enc(setup.public, c, setup.ring, proof, CONTEXT)


def test_the_slack_is_real(setup: Setup) -> None:
    """What the verifier does not learn: k = 2^104 passes a proof for |k| ≤ 2^64.

    z1 = α + e·k stays in ±2^(ℓ+ε) unless α lies within |e·k| ≤ 2^(ℓ+ε-40) of its ends, a
    chance of about 2^-40. The verifier learns |k| < 2^(ℓ+ε+1) (``verified_bound``), not 2^ℓ.
    """
    k = 2 ** (ELL + EPS - CH - 40)
    assert k.bit_length() == 105 and k > PARAMS.honest_bound
    for _ in range(5):
        c, proof = _forge(setup, k)
        enc.verify_enc(setup.public, c, setup.ring, proof, CONTEXT)


# --- soundness: binding to the statement and the transcript ---


@pytest.mark.parametrize("field", ["S", "A", "C", "z1", "z2", "z3"])
def test_tampered_field_is_refused(
    setup: Setup, weight: tuple[gmpy2.mpz, enc.EncProof], field: str
) -> None:
    c, proof = weight
    tampered = dataclasses.replace(proof, **{field: getattr(proof, field) + 1})
    with pytest.raises(ProofError):
        enc.verify_enc(setup.public, c, setup.ring, tampered, CONTEXT)


def test_every_flipped_byte_is_refused(
    setup: Setup, weight: tuple[gmpy2.mpz, enc.EncProof]
) -> None:
    c, proof = weight
    data = proof.to_bytes()
    for position in range(len(data)):
        for mask in (0x01, 0x80):
            message = bytearray(data)
            message[position] ^= mask
            with pytest.raises((InvalidMessageError, ProofError)):
                enc.verify_enc(
                    setup.public, c, setup.ring, enc.EncProof.from_bytes(bytes(message)), CONTEXT
                )


def test_replay_under_another_job_is_refused(
    setup: Setup, weight: tuple[gmpy2.mpz, enc.EncProof]
) -> None:
    c, proof = weight
    for context in (
        make_context("job-8", "model-holder", "weights"),
        make_context("job-7", "evaluator", "weights"),
        b"",
    ):
        with pytest.raises(ProofError, match="Paillier equation"):
            enc.verify_enc(setup.public, c, setup.ring, proof, context)


def test_proof_for_another_ciphertext_is_refused(
    setup: Setup, weight: tuple[gmpy2.mpz, enc.EncProof]
) -> None:
    _, proof = weight
    with pytest.raises(ProofError):
        enc.verify_enc(setup.public, setup.encrypt(-123_456_789), setup.ring, proof, CONTEXT)


def test_proof_for_another_key_is_refused(
    setup: Setup, weight: tuple[gmpy2.mpz, enc.EncProof]
) -> None:
    c, proof = weight
    other, _ = pl.generate_keypair(512)
    with pytest.raises(ProofError):
        enc.verify_enc(other, c % other.n_square, setup.ring, proof, CONTEXT)


def test_proof_for_other_ring_pedersen_parameters_is_refused(
    setup: Setup, weight: tuple[gmpy2.mpz, enc.EncProof]
) -> None:
    c, proof = weight
    other = prm.generate_ring_pedersen(512).params
    with pytest.raises(ProofError):
        enc.verify_enc(setup.public, c, other, proof, CONTEXT)


def test_proof_with_other_parameters_is_refused(
    setup: Setup, weight: tuple[gmpy2.mpz, enc.EncProof]
) -> None:
    c, proof = weight
    wider = enc.EncParameters(ell=96, epsilon=160, challenge_bits=80)
    with pytest.raises(ProofError, match="made with"):
        enc.verify_enc(setup.public, c, setup.ring, proof, CONTEXT, parameters=wider)
    cheap = enc.EncParameters(ell=64, epsilon=100, challenge_bits=40)
    other = enc.prove_enc(setup.private, c, setup.ring, CONTEXT, parameters=cheap)
    enc.verify_enc(setup.public, c, setup.ring, other, CONTEXT, parameters=cheap)
    with pytest.raises(ProofError, match="made with"):
        enc.verify_enc(setup.public, c, setup.ring, other, CONTEXT)


def test_received_values_are_checked_units(
    setup: Setup, weight: tuple[gmpy2.mpz, enc.EncProof]
) -> None:
    c, proof = weight
    n = setup.public.n
    p = int(setup.private._p)
    with pytest.raises(CiphertextNotUnitError):
        enc.verify_enc(setup.public, p * 7, setup.ring, proof, CONTEXT)
    with pytest.raises(CiphertextRangeError):
        enc.verify_enc(setup.public, setup.public.n_square, setup.ring, proof, CONTEXT)
    for field, value in (("A", p), ("z2", n), ("S", 0), ("C", setup.ring.n)):
        with pytest.raises(ProofError, match="unit"):
            enc.verify_enc(
                setup.public, c, setup.ring, dataclasses.replace(proof, **{field: value}), CONTEXT
            )
    huge = dataclasses.replace(proof, z3=(1 << (ELL + EPS + 1)) * setup.ring.n + 1)
    with pytest.raises(ProofError, match="z3"):
        enc.verify_enc(setup.public, c, setup.ring, huge, CONTEXT)


# --- the wire ---


def test_malformed_proofs_are_refused(weight: tuple[gmpy2.mpz, enc.EncProof]) -> None:
    data = weight[1].to_bytes()
    body = data[15:]
    for message in (
        data[:-1],
        data + b"\x00",
        b"BZKP" + data[4:],
        data[:4] + b"\x00" + data[5:],
        data[:5] + struct.pack(">5H", 512, 512, 64, 100, 80) + body,  # 20-bit slack
        data[:5] + struct.pack(">5H", 512, 512, 0, 160, 80) + body,
        data[:5] + struct.pack(">5H", 512, 100, 64, 160, 80) + body,
        b"BZKE\x01",
    ):
        with pytest.raises(InvalidMessageError):
            enc.EncProof.from_bytes(message)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_are_refused_or_round_trip(data: bytes) -> None:
    message = b"BZKE\x01" + data
    try:
        parsed = enc.EncProof.from_bytes(message)
    except InvalidMessageError:
        return
    assert parsed.to_bytes() == message


@pytest.mark.parametrize("ell", [1, 16, 62, 64, 126, 200])
def test_weight_exponent_has_one_length_for_every_weight(ell: int) -> None:
    """The prover raises s to k + shift with powm_sec: same bit length whatever k's sign or size."""
    params = enc.EncParameters(ell=ell, epsilon=160, challenge_bits=80)
    shift = enc._exponent_shift(params)
    lengths = {(k + shift).bit_length() for k in (-(2**ell), -1, 0, 1, 2**ell)}
    assert len(lengths) == 1 and lengths.pop() % 64 == 0


def test_prover_state_never_pickles(setup: Setup) -> None:
    """Its factors cannot reach a worker process (prove on inline or thread executors)."""
    with pytest.raises(TypeError, match="never leaves"):
        pickle.dumps(enc._Prover(setup.private))
