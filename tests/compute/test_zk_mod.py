"""Π^mod: honest Paillier–Blum keys verify; the moduli a cheating key owner would pick do not."""

from __future__ import annotations

import dataclasses
import secrets
import struct
from collections.abc import Iterator

import gmpy2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.compute import insecure
from bund.compute import paillier as pl
from bund.compute.errors import InvalidMessageError, KeySizeError, ProofError, WeakModulusError
from bund.compute.zk import mod
from bund.compute.zk.randomness import rerandomise
from bund.compute.zk.transcript import make_context

CONTEXT = make_context("job-7", "model-holder", "paillier-key")


@pytest.fixture(autouse=True)
def _small_keys_allowed() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()
    yield


@pytest.fixture(scope="module")
def keys() -> tuple[pl.PublicKey, pl.PrivateKey]:
    insecure.enable_insecure_test_parameters()
    try:
        return pl.generate_keypair(512)
    finally:
        insecure.disable_insecure_test_parameters()


@pytest.fixture(scope="module")
def proof(keys: tuple[pl.PublicKey, pl.PrivateKey]) -> mod.ModProof:
    insecure.enable_insecure_test_parameters()
    try:
        return mod.prove_mod(keys[1], CONTEXT)
    finally:
        insecure.disable_insecure_test_parameters()


# --- helpers: primes with a shape, and a cheating prover that knows the factors ---


def _prime(bits: int, residue: int = 3, modulus: int = 4) -> int:
    """A random prime of ``bits`` bits congruent to ``residue`` modulo ``modulus``."""
    while True:
        candidate = secrets.randbits(bits) | (3 << (bits - 2))
        candidate += (residue - candidate) % modulus
        if gmpy2.is_prime(candidate, 40):
            return candidate


def _key_with(n: int) -> pl.PublicKey:
    """A public key for any odd modulus (its h_s plays no part in Π^mod)."""
    return pl.PublicKey(n, 4)


def _tonelli_roots(v: int, p: int) -> list[int]:
    """All square roots of ``v`` modulo the odd prime ``p`` (empty for a non-residue)."""
    v %= p
    if v == 0:
        return [0]
    if pow(v, (p - 1) // 2, p) != 1:
        return []
    q, s = p - 1, 0
    while q % 2 == 0:
        q, s = q // 2, s + 1
    z = 2
    while pow(z, (p - 1) // 2, p) != p - 1:
        z += 1
    m, c, t, r = s, pow(z, q, p), pow(v, q, p), pow(v, (q + 1) // 2, p)
    while t != 1:
        i, t2 = 0, t
        while t2 != 1:
            t2, i = t2 * t2 % p, i + 1
        b = pow(c, 1 << (m - i - 1), p)
        m, c, t, r = i, b * b % p, t * b * b % p, r * b % p
    return sorted({r, p - r})


def _fourth_root(v: int, p: int, e: int) -> int | None:
    """A fourth root of ``v`` modulo ``p^e`` if one exists (``e > 1`` only for p ≡ 3 mod 4)."""
    f = p**e
    if v % p == 0:
        return None
    if p % 4 == 3:
        half = p ** (e - 1) * (p - 1) // 2  # the squares of Z*_{p^e}: a group of odd order
        if pow(v, half, f) != 1:
            return None
        root = pow(v, (half + 1) // 2, f)  # the square root that is itself a square
        return pow(root, (half + 1) // 2, f)
    assert e == 1
    for s in _tonelli_roots(v, p):
        for x in _tonelli_roots(s, p):
            return x
    return None


def _nth_root(y: int, n: int, p: int, e: int) -> int | None:
    """An ``n``-th root of ``y`` modulo ``p^e`` when ``x ↦ x^n`` is a bijection there."""
    order = p ** (e - 1) * (p - 1)
    if gmpy2.gcd(n, order) != 1:
        return None  # roots exist only for a 1/p share of y: a cheater cannot rely on them
    return pow(y, int(gmpy2.invert(n, order)), p**e)


def _crt(residues: list[int], moduli: list[int]) -> int:
    x, m = 0, 1
    for r, f in zip(residues, moduli, strict=True):
        x += m * ((r - x) * int(gmpy2.invert(m, f)) % f)
        m *= f
    return x


def _forge(factors: list[tuple[int, int]], context: bytes = CONTEXT) -> tuple[mod.ModProof, int]:
    """The best a key owner with these prime powers can do: every root that exists, junk else.

    Returns:
        The proof and how many repetitions had a fourth root for some choice of ``(a, b)``.
    """
    moduli = [p**e for p, e in factors]
    n = 1
    for f in moduli:
        n *= f
    public_key = _key_with(n)
    primes = [p for p, _ in factors]
    while True:  # w of Jacobi -1 that is a square modulo some prime and not modulo another
        w = secrets.randbelow(n)
        symbols = {gmpy2.legendre(w, p) for p in primes}
        if gmpy2.jacobi(w, n) == -1 and symbols == {-1, 1}:
            break
    ys = mod.mod_challenges(public_key, w, context, mod.MOD_REPETITIONS)
    pairs = list(zip(factors, moduli, strict=True))
    xs, zs, a_bits, b_bits, rooted = [], [], [], [], 0
    for y in ys:
        x, a_bit, b_bit = secrets.randbelow(n), 0, 0
        for a in (0, 1):
            for b in (0, 1):
                target = (-1) ** a * w**b * y % n
                roots = [_fourth_root(target % f, p, e) for (p, e), f in pairs]
                if all(r is not None for r in roots):
                    x, a_bit, b_bit = _crt([int(r) for r in roots if r is not None], moduli), a, b
        rooted += (x**4 - (-1) ** a_bit * w**b_bit * y) % n == 0
        nth = [_nth_root(int(y) % f, n, p, e) for (p, e), f in pairs]
        junk = [secrets.randbelow(f) for f in moduli]
        z = _crt([j if r is None else r for r, j in zip(nth, junk, strict=True)], moduli)
        xs.append(x)
        zs.append(z)
        a_bits.append(a_bit)
        b_bits.append(b_bit)
    bits = int(gmpy2.mpz(n).bit_length())
    proof = mod.ModProof(bits, w, tuple(xs), tuple(zs), tuple(a_bits), tuple(b_bits))
    return proof, rooted


# --- completeness ---


def test_honest_key_verifies(keys: tuple[pl.PublicKey, pl.PrivateKey], proof: mod.ModProof) -> None:
    public, _ = keys
    assert proof.repetitions == mod.MOD_REPETITIONS == 80
    mod.verify_mod(public, proof, CONTEXT)
    mod.verify_mod(pl.PublicKey.from_bytes(public.to_bytes()), proof, CONTEXT)


def test_keygen_makes_blum_primes_with_coprime_phi() -> None:
    for _ in range(5):
        public, private = pl.generate_keypair(256)
        p, q = private._p, private._q
        assert p % 4 == 3 and q % 4 == 3
        assert gmpy2.gcd(public.n, (p - 1) * (q - 1)) == 1


@settings(max_examples=15, deadline=None)
@given(context=st.binary(max_size=64), other=st.binary(max_size=64))
def test_proof_is_bound_to_its_context(context: bytes, other: bytes) -> None:
    public, private = pl.generate_keypair(256)
    proof = mod.prove_mod(private, context, repetitions=16)
    mod.verify_mod(public, proof, context, min_repetitions=16)
    if other != context:
        with pytest.raises(ProofError):
            mod.verify_mod(public, proof, other, min_repetitions=16)


def test_wire_round_trip(proof: mod.ModProof) -> None:
    data = proof.to_bytes()
    assert data[:4] == b"BZKM" and data[4] == 1
    assert len(data) == 4 + 1 + 2 + 2 + 64 + 80 * (64 + 64 + 1)
    assert mod.ModProof.from_bytes(data) == proof


@pytest.mark.slow
def test_2048_bit_key_verifies() -> None:
    insecure.disable_insecure_test_parameters()
    public, private = pl.generate_keypair(2048)
    proof = mod.prove_mod(private, CONTEXT)
    data = proof.to_bytes()
    assert len(data) == 41_305
    mod.verify_mod(public, mod.ModProof.from_bytes(data), CONTEXT)
    with pytest.raises(ProofError):
        mod.verify_mod(public, proof, make_context("job-8", "model-holder", "paillier-key"))


# --- soundness: replay, tampering, too few repetitions ---


def test_proof_for_another_key_is_refused(proof: mod.ModProof) -> None:
    other, _ = pl.generate_keypair(512)
    with pytest.raises(ProofError):
        mod.verify_mod(other, proof, CONTEXT)


def test_proof_for_another_size_is_refused(proof: mod.ModProof) -> None:
    other, _ = pl.generate_keypair(1024)
    with pytest.raises(ProofError, match="512-bit"):
        mod.verify_mod(other, proof, CONTEXT)


@pytest.mark.parametrize("field", ["w", "xs", "zs", "a_bits", "b_bits"])
def test_tampered_proof_is_refused(
    keys: tuple[pl.PublicKey, pl.PrivateKey], proof: mod.ModProof, field: str
) -> None:
    value = getattr(proof, field)
    if field == "w":
        tampered = dataclasses.replace(proof, w=value + 1)
    else:
        changed = (1 - value[5]) if field.endswith("bits") else value[5] + 1
        tampered = dataclasses.replace(proof, **{field: value[:5] + (changed,) + value[6:]})
    with pytest.raises(ProofError):
        mod.verify_mod(keys[0], tampered, CONTEXT)


def test_too_few_repetitions_are_refused(keys: tuple[pl.PublicKey, pl.PrivateKey]) -> None:
    public, private = keys
    short = mod.prove_mod(private, CONTEXT, repetitions=40)
    with pytest.raises(ProofError, match="40 repetitions"):
        mod.verify_mod(public, short, CONTEXT)
    mod.verify_mod(public, short, CONTEXT, min_repetitions=40)


def test_w_of_jacobi_plus_one_is_refused(
    keys: tuple[pl.PublicKey, pl.PrivateKey], proof: mod.ModProof
) -> None:
    public, _ = keys
    with pytest.raises(ProofError, match="Jacobi"):
        mod.verify_mod(public, dataclasses.replace(proof, w=4), CONTEXT)


# --- soundness: the moduli a cheating key owner would choose ---


def test_the_forger_succeeds_on_an_honest_modulus() -> None:
    """The cheating prover below is competent: on a Paillier–Blum modulus its proof verifies.

    So when it fails on the moduli after this, the modulus is what the verifier caught.
    """
    p, q = _prime(128), _prime(128)
    forged, rooted = _forge([(p, 1), (q, 1)])
    assert rooted == mod.MOD_REPETITIONS
    mod.verify_mod(_key_with(p * q), forged, CONTEXT)


def test_p_dividing_q_minus_1_is_refused() -> None:
    """gcd(N, φ(N)) = p: the honest prover has no proof, and the best forgery fails at z^N."""
    p = _prime(128)
    while True:
        k = secrets.randbits(130) | 1  # odd, so q = 2kp + 1 ≡ 3 (mod 4)
        q = 2 * k * p + 1
        if k % p and gmpy2.is_prime(q, 40):
            break
    n = p * q
    assert gmpy2.gcd(n, (p - 1) * (q - 1)) == p
    mod.check_modulus_shape(n)  # no cheap check sees anything wrong
    bad_private = pl.PrivateKey(_key_with(n), p, q)
    with pytest.raises(ValueError, match="gcd"):
        mod.prove_mod(bad_private, CONTEXT)
    forged, rooted = _forge([(p, 1), (q, 1)])
    assert rooted == mod.MOD_REPETITIONS  # both primes are 3 mod 4: the fourth roots all pass
    with pytest.raises(ProofError, match="N-th root"):
        mod.verify_mod(_key_with(n), forged, CONTEXT)


def test_why_the_nth_root_check_matters() -> None:
    """With p | q - 1, a ciphertext's class modulo the N-th powers survives r^N re-randomisation.

    The key owner computes ``(c mod q)^((q-1)/p) mod q``, which ``r^N`` leaves unchanged, so it
    links what the evaluator returns to the ciphertexts it could have been computed from.
    """
    p = _prime(128)
    while True:
        k = secrets.randbits(130) | 1
        q = 2 * k * p + 1
        if k % p and gmpy2.is_prime(q, 40):
            break
    public = _key_with(p * q)
    c1, c2 = 7, 11

    def fingerprint(c: int) -> int:
        return pow(c % q, (q - 1) // p, q)

    assert fingerprint(c1) != fingerprint(c2)
    for _ in range(20):
        assert fingerprint(rerandomise(c1, public)) == fingerprint(c1)
        assert fingerprint(rerandomise(c2, public)) == fingerprint(c2)


def test_three_prime_modulus_is_refused() -> None:
    factors = [(_prime(96), 1), (_prime(96), 1), (_prime(96), 1)]
    n = factors[0][0] * factors[1][0] * factors[2][0]
    forged, rooted = _forge(factors)
    # Fourth roots of one of ±y, ±wy exist for half the challenges only.
    assert 5 <= rooted <= 70
    with pytest.raises(ProofError, match="fourth root"):
        mod.verify_mod(_key_with(n), forged, CONTEXT)


def test_non_blum_modulus_is_refused() -> None:
    p, q = _prime(128, residue=5, modulus=8), _prime(128)
    n = p * q
    bad_private = pl.PrivateKey(_key_with(n), p, q)
    with pytest.raises(ValueError, match="3 \\(mod 4\\)"):
        mod.prove_mod(bad_private, CONTEXT)
    forged, rooted = _forge([(p, 1), (q, 1)])
    assert 5 <= rooted <= 70  # modulo p ≡ 5 (mod 8) only half the squares have fourth roots
    with pytest.raises(ProofError, match="fourth root"):
        mod.verify_mod(_key_with(n), forged, CONTEXT)


def test_prime_power_times_prime_is_refused() -> None:
    p, q = _prime(100), _prime(100)
    n = p * p * q
    mod.check_modulus_shape(n)  # not a perfect power: only the proof can tell
    forged, rooted = _forge([(p, 2), (q, 1)])
    assert rooted == mod.MOD_REPETITIONS  # fourth roots lift to p², so only z^N catches it
    with pytest.raises(ProofError, match="N-th root"):
        mod.verify_mod(_key_with(n), forged, CONTEXT)


@pytest.mark.parametrize("shape", ["cube", "square", "prime", "small-factor"])
def test_trivial_moduli_are_refused_up_front(proof: mod.ModProof, shape: str) -> None:
    p = _prime(130)
    n = {
        "cube": p**3,
        "square": p * p,
        "prime": _prime(512),
        "small-factor": 1_000_003 * _prime(300),
    }[shape]
    with pytest.raises(WeakModulusError):
        mod.verify_mod(_key_with(n), proof, CONTEXT)


def test_even_and_small_moduli_are_refused() -> None:
    with pytest.raises(WeakModulusError, match="even"):
        mod.check_modulus_shape(2 * _prime(300))
    insecure.disable_insecure_test_parameters()
    with pytest.raises(KeySizeError):
        mod.check_modulus_shape(_prime(256) * _prime(256))


# --- the wire: malformed proofs ---


def test_malformed_encodings_are_refused(proof: mod.ModProof) -> None:
    data = proof.to_bytes()
    header = struct.Struct(">4sBHH")
    bad = [
        data[:-1],
        data + b"\x00",
        b"BZKX" + data[4:],
        data[:4] + b"\x02" + data[5:],
        header.pack(b"BZKM", 1, 512, 0) + data[9:],
        header.pack(b"BZKM", 1, 512, mod.MAX_MOD_REPETITIONS + 1) + data[9:],
        header.pack(b"BZKM", 1, 100, 80) + data[9:],
        data[: 9 + 64 + 128] + b"\x04" + data[9 + 64 + 129 :],
        b"",
    ]
    for message in bad:
        with pytest.raises(InvalidMessageError):
            mod.ModProof.from_bytes(message)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_are_refused_or_round_trip(data: bytes) -> None:
    message = b"BZKM\x01" + data
    try:
        parsed = mod.ModProof.from_bytes(message)
    except InvalidMessageError:
        return
    assert parsed.to_bytes() == message


@settings(max_examples=25, deadline=None)
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_is_refused(
    keys: tuple[pl.PublicKey, pl.PrivateKey], proof: mod.ModProof, position: int, bit: int
) -> None:
    data = bytearray(proof.to_bytes())
    data[position % len(data)] ^= 1 << bit
    with pytest.raises((InvalidMessageError, ProofError)):
        mod.verify_mod(keys[0], mod.ModProof.from_bytes(bytes(data)), CONTEXT)
