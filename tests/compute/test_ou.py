"""Okamoto–Uchiyama engine: laws, packing, validation, the decryption guard and the CCA attack."""

from __future__ import annotations

import copy
import pickle
import struct
import threading
from collections.abc import Iterator

import gmpy2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.compute import insecure, ou
from bund.compute.encoding import PackingLayout
from bund.compute.errors import (
    CiphertextNotUnitError,
    CiphertextRangeError,
    EncodingOverflowError,
    ExponentMismatchError,
    InvalidCiphertextError,
    InvalidKeyError,
    InvalidMessageError,
    KeyIdMismatchError,
    KeySizeError,
    WeakModulusError,
)
from bund.compute.executor import InlineExecutor, ProcessExecutor, ThreadExecutor

BITS = 512
#: Signed values well inside the ~169-bit plaintext space of a 512-bit key, after the laws.
VALUES = st.integers(min_value=-(2**60), max_value=2**60)
SCALARS = st.integers(min_value=-(2**40), max_value=2**40)
LAWS = settings(max_examples=40, deadline=None)


class Keys:
    """One key pair and its encryptors, made once for the module."""

    def __init__(self, bits: int) -> None:
        insecure.enable_insecure_test_parameters()
        self.public, self.private = ou.generate_keypair(bits)
        self.encryptor = ou.Encryptor(self.public)
        self.owner = ou.Encryptor(self.private)
        insecure.disable_insecure_test_parameters()


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(BITS)


@pytest.fixture(scope="module")
def other_keys() -> Keys:
    return Keys(BITS)


@pytest.fixture(autouse=True)
def _small_keys_allowed() -> Iterator[None]:
    """Most tests use 512-bit keys: they need the test-only switch (the conftest resets it)."""
    insecure.enable_insecure_test_parameters()
    yield


# --- key generation and the size rule ---


def test_small_keys_are_refused_without_the_switch() -> None:
    insecure.disable_insecure_test_parameters()
    with pytest.raises(KeySizeError, match="2048"):
        ou.generate_keypair(1024)


def test_the_switch_admits_small_keys_but_not_tiny_or_huge_ones() -> None:
    for bits in (256, 511, 8200):
        with pytest.raises(KeySizeError):
            ou.generate_keypair(bits)
    with pytest.raises(TypeError):
        ou.generate_keypair(2048.0)  # type: ignore[arg-type]


def test_keygen_2048_bits_round_trip() -> None:
    insecure.disable_insecure_test_parameters()
    public, private = ou.generate_keypair(2048)
    assert public.bits == 2048 and public.p_bits == 683 and private.plaintext_bits == 683
    assert public.max_plaintext_bits == 681
    values = [2**680 - 1, -(2**680), 0, 12345]
    assert ou.decrypt(private, ou.encrypt(ou.Encryptor(private), values)) == values
    assert ou.PublicKey.from_bytes(public.to_bytes()) == public


def test_key_structure(keys: Keys) -> None:
    public, private = keys.public, keys.private
    p, q = int(private._p), int(private._q)
    assert p * p * q == public.n and public.bits == BITS
    assert p.bit_length() == public.p_bits and q.bit_length() == BITS - 2 * public.p_bits
    assert gmpy2.gcd(p * q, (p - 1) * (q - 1)) == 1  # u^n re-randomises fully
    assert gmpy2.powmod(public.g, p - 1, p * p) != 1
    assert public.h == gmpy2.powmod(public.g, public.n, public.n)
    with pytest.raises(ValueError, match="p²q"):
        ou.PrivateKey(public, p, q + 2)
    with pytest.raises(ValueError, match="gcd"):
        # q ≡ 1 (mod p): the modulus a key owner who wanted to see past u^n would choose.
        k = 2
        while not gmpy2.is_prime(k * p + 1):
            k += 2
        bad_q = k * p + 1
        n = p * p * bad_q
        g = 2
        ou.PrivateKey(ou.PublicKey(n, g, gmpy2.powmod(g, n, n)), p, bad_q)


# --- homomorphic laws ---


@LAWS
@given(a=VALUES, b=VALUES)
def test_sum_of_encryptions_decrypts_to_the_sum(keys: Keys, a: int, b: int) -> None:
    x = ou.encrypt(keys.owner, [a])
    y = ou.encrypt(keys.encryptor, [b])
    assert ou.decrypt(keys.private, x + y) == [a + b]
    assert ou.decrypt(keys.private, x.add_plain([b])) == [a + b]


@LAWS
@given(a=VALUES, k=SCALARS)
def test_scalar_times_encryption_decrypts_to_the_product(keys: Keys, a: int, k: int) -> None:
    x = ou.encrypt(keys.owner, [a, -a])
    assert ou.decrypt(keys.private, x.mul([k, k])) == [a * k, -a * k]


@LAWS
@given(pairs=st.lists(st.tuples(VALUES, SCALARS), min_size=1, max_size=12))
def test_dot_product_equals_the_plaintext_one(keys: Keys, pairs: list[tuple[int, int]]) -> None:
    values, scalars = [a for a, _ in pairs], [k for _, k in pairs]
    vector = ou.encrypt(keys.owner, values)
    assert ou.decrypt(keys.private, vector.dot(scalars)) == [sum(a * k for a, k in pairs)]


@LAWS
@given(
    values=st.lists(st.integers(-(2**24), 2**24), min_size=1, max_size=20),
    data=st.data(),
)
def test_matvec_equals_numpy(keys: Keys, values: list[int], data: st.DataObject) -> None:
    row = st.lists(st.integers(-(2**19), 2**19), min_size=len(values), max_size=len(values))
    matrix = np.array(data.draw(st.lists(row, min_size=1, max_size=5)), dtype=np.int64)
    vector = ou.encrypt(keys.owner, values, frac_bits=24)
    product = ou.matvec(matrix, vector, matrix_frac_bits=16)
    assert product.frac_bits == 40
    assert ou.decrypt(keys.private, product) == (matrix @ np.array(values)).tolist()


def test_products_with_many_negatives_zero_scalars_and_a_thread_pool(keys: Keys) -> None:
    values = list(range(-60, 60))
    scalars = [(-1) ** i * i for i in range(120)]
    vector = ou.encrypt(keys.owner, values)
    with ThreadExecutor(3) as ex:
        encrypted = ou.encrypt(keys.encryptor, values, executor=ex)
        assert ou.decrypt(keys.private, encrypted, executor=ex) == values
        assert ou.decrypt(keys.private, vector.mul(scalars, executor=ex)) == [
            v * k for v, k in zip(values, scalars, strict=True)
        ]
        inline = vector.dot(scalars, executor=InlineExecutor())
        threaded = vector.dot(scalars, executor=ex)
        assert ou.decrypt(keys.private, threaded) == ou.decrypt(keys.private, inline)
    assert ou.decrypt(keys.private, vector.dot([0] * 120)) == [0]


def test_adding_many_plaintexts_takes_the_comb_table_path(keys: Keys) -> None:
    values = [(-1) ** i * ((1 << 94) - i) for i in range(100)]  # 100 ≥ 8 per byte × 12 bytes
    vector = ou.encrypt(keys.owner, list(range(100)))
    assert ou.decrypt(keys.private, vector.add_plain(values)) == [
        i + v for i, v in enumerate(values)
    ]


def test_overflow_and_bad_arguments(keys: Keys, other_keys: Keys) -> None:
    limit = 1 << keys.public.max_plaintext_bits
    with pytest.raises(EncodingOverflowError):
        ou.encrypt(keys.owner, [limit])
    with pytest.raises(EncodingOverflowError):
        ou.encrypt(keys.encryptor, [-limit])
    with pytest.raises(EncodingOverflowError):
        ou.encrypt(keys.owner, [1]).add_plain([limit])
    big = ou.encrypt(keys.owner, [limit - 1])
    with pytest.raises(EncodingOverflowError, match="overflowed"):
        ou.decrypt(keys.private, big.mul([2]))  # 2^170 - 2 lifts to below -2^169
    with pytest.raises(TypeError):
        ou.encrypt(keys.owner, [1.5])
    with pytest.raises(ValueError, match="different public keys"):
        _ = ou.encrypt(keys.owner, [1]) + ou.encrypt(other_keys.owner, [1])
    with pytest.raises(ValueError, match="frac_bits"):
        _ = ou.encrypt(keys.owner, [1], frac_bits=8) + ou.encrypt(keys.owner, [1])
    with pytest.raises(ValueError, match="another key"):
        ou.decrypt(other_keys.private, ou.encrypt(keys.owner, [1]))


def test_owner_and_evaluator_ciphertexts_are_alike_and_rerandomise(keys: Keys) -> None:
    owner = ou.encrypt(keys.owner, [7] * 20)
    public = ou.encrypt(keys.encryptor, [7] * 20)
    assert len(set(owner.ciphertexts) | set(public.ciphertexts)) == 40
    fresh = public.rerandomized(keys.encryptor)
    assert set(fresh.ciphertexts).isdisjoint(public.ciphertexts)
    assert ou.decrypt(keys.private, fresh) == [7] * 20
    assert ou.random_bits(2048) == 256 and ou.random_bits(3072) == 384


# --- packing ---


@LAWS
@given(values=st.lists(st.integers(-(2**30) + 1, 2**30 - 1), min_size=1, max_size=25))
def test_packing_round_trips_and_slots_stay_independent(keys: Keys, values: list[int]) -> None:
    layout = PackingLayout(value_bits=30, additions=4, scalar_bits=3)
    capacity = keys.public.packing_bits(16)
    packed = ou.encrypt_packed(keys.owner, values, layout, capacity)
    assert packed.slots == capacity // layout.slot_bits
    assert ou.decrypt_packed(keys.private, packed) == values
    total = (packed + packed + packed).mul_scalar(-2)
    assert ou.decrypt_packed(keys.private, total) == [-6 * v for v in values]
    with pytest.raises(EncodingOverflowError):
        total.mul_scalar(8)


@LAWS
@given(values=st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=30))
def test_squeezing_packs_results_before_decryption(keys: Keys, values: list[int]) -> None:
    vector = ou.encrypt(keys.encryptor, values)
    capacity = keys.public.packing_bits(100)
    squeezed = vector.squeeze(2**40, capacity)
    assert squeezed.slots == capacity // 42
    assert ou.decrypt_packed(keys.private, squeezed) == values
    assert ou.DecryptionService(keys.private, 100).decrypt_packed(squeezed) == values


def test_packing_refuses_more_than_the_plaintext_space(keys: Keys) -> None:
    layout = PackingLayout(value_bits=30)
    with pytest.raises(EncodingOverflowError):
        ou.encrypt_packed(keys.owner, [2**30], layout, 100)
    with pytest.raises(ValueError, match="capacity_bits"):
        ou.encrypt_packed(keys.owner, [1], layout, keys.public.p_bits)
    with pytest.raises(ValueError, match="capacity_bits"):
        ou.encrypt(keys.owner, [1]).squeeze(1, keys.public.p_bits)
    with pytest.raises(EncodingOverflowError, match="no plaintext room"):
        keys.public.packing_bits(2**200)
    squeezed = ou.encrypt(keys.owner, [1, 2, 3]).squeeze(2**10, 110)
    with pytest.raises(ValueError, match="do not fit"):
        ou.PackedVector(keys.public, squeezed.ciphertexts, 100, 2, 3, 1)


# --- the decryption guard and the chosen-ciphertext attack ---


def _attack_ciphertext(public: ou.PublicKey, m: int) -> int:
    """What a deviating provider sends instead of its gradient: a bare ``g^M`` (it knows ``M``)."""
    return int(gmpy2.powmod(public.g, m, public.n))


def _layout(keys: Keys, decryptions: int) -> tuple[int, int, int]:
    """The protocol's packed layout: slot width, slots, slot bound (vertical_lr's shape)."""
    bound = (1 << 90) - 1
    capacity = keys.public.packing_bits(decryptions)
    return 91, capacity // 91, bound


def test_the_factoring_attack_works_without_the_guard(keys: Keys) -> None:
    public, private = keys.public, keys.private
    for shift in (0, 7, 100):
        m = (1 << (public.p_bits + shift)) + 12345  # certainly ≥ p, which the attacker can't see
        c = _attack_ciphertext(public, m)
        decrypted = int(private.decrypt_raw([c])[0])  # a bank that returned raw decryptions
        factor = gmpy2.gcd(m - decrypted, public.n)
        assert factor == private._p and public.n % (factor * factor) == 0


def test_the_guard_refuses_the_attack_and_retires_the_key(keys: Keys) -> None:
    public = keys.public
    width, slots, bound = _layout(keys, 1000)
    service = ou.DecryptionService(keys.private, max_decryptions=1000)
    honest = ou.encrypt(keys.encryptor, [5, -6]).add_plain([1 << 80, 1 << 80])
    squeezed = honest.squeeze(bound, keys.public.packing_bits(1000))
    assert service.decrypt_packed(squeezed) == [(1 << 80) + 5, (1 << 80) - 6]
    m = (1 << (public.p_bits + 3)) + 999
    attack = ou.PackedVector(public, (_attack_ciphertext(public, m),), width, slots, slots, bound)
    with pytest.raises(ou.DecryptionRangeError, match="retired"):
        service.decrypt_packed(attack)
    assert service.retired
    with pytest.raises(ou.KeyRetiredError):
        service.decrypt_packed(squeezed)  # even an honest ciphertext: the key is retired
    assert issubclass(ou.DecryptionRangeError, InvalidCiphertextError)


@LAWS
@given(m=st.integers(min_value=0, max_value=2**520))
def test_the_guard_releases_only_in_range_values(keys: Keys, m: int) -> None:
    service = ou.DecryptionService(keys.private, max_decryptions=10)
    bound = 1 << 60
    vector = ou.EncryptedVector(keys.public, (_attack_ciphertext(keys.public, m),))
    if m <= bound:
        assert service.decrypt(vector, bound) == [m]
    else:
        # Out of range: m itself if m < p, else m mod p, which lands within ±2^60 with
        # probability about 2^61/p (2^-110 at this key size): the guard refuses.
        with pytest.raises(ou.DecryptionRangeError):
            service.decrypt(vector, bound)
        assert service.retired


def test_the_guard_refuses_ranges_without_headroom_and_counts(keys: Keys) -> None:
    service = ou.DecryptionService(keys.private, max_decryptions=4)
    room = keys.private.plaintext_bits - 1 - service.headroom_bits
    assert service.headroom_bits == 42
    vector = ou.encrypt(keys.owner, [1, 2])
    with pytest.raises(EncodingOverflowError, match="headroom"):
        service.decrypt(vector, 1 << room)
    assert not service.retired  # a declaration error, nothing was decrypted
    assert service.decrypt(vector, (1 << (room - 1)) - 1) == [1, 2]
    assert service.used == 2
    with pytest.raises(ou.DecryptionLimitError):
        service.decrypt(ou.encrypt(keys.owner, [1, 2, 3]), 10)
    assert service.retired
    with pytest.raises(ValueError):
        ou.DecryptionService(keys.private, 0)
    with pytest.raises(ValueError):
        ou.DecryptionService(keys.private, 4, used=5)


# --- obfuscator pool ---


def test_pool_values_are_never_reused(keys: Keys) -> None:
    pool = ou.ObfuscatorPool(keys.encryptor, capacity=32)
    assert pool.refill() == 32 and len(pool) == 32 and pool.refill() == 0
    taken = pool.obfuscators(20) + pool.obfuscators(20)  # 8 computed on the spot
    assert len(pool) == 0 and len(set(taken)) == 40
    cts = pool.encrypt_raw([5] * 10)
    assert len(set(cts)) == 10
    assert ou.decrypt(keys.private, ou.EncryptedVector(keys.public, tuple(cts))) == [5] * 10
    with pytest.raises(TypeError):
        ou.ObfuscatorPool(object())  # type: ignore[arg-type]


def test_pool_hands_out_each_value_once_across_threads(keys: Keys) -> None:
    pool = ou.ObfuscatorPool(keys.owner, capacity=120)
    pool.refill()
    results: list[list[int]] = [[] for _ in range(4)]

    def take(slot: int) -> None:
        for _ in range(6):
            results[slot].extend(pool.obfuscators(5))

    threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    values = [h for batch in results for h in batch]
    assert len(values) == 120 and len(set(values)) == 120 and len(pool) == 0


def test_background_refills_are_driven_by_the_caller(keys: Keys) -> None:
    pool = ou.ObfuscatorPool(keys.owner, capacity=32, low_water=16)
    worker = threading.Thread(target=pool.run_refills, kwargs={"batch": 8})
    worker.start()

    def wait_full() -> None:
        for _ in range(2000):
            if len(pool) == 32:
                return
            threading.Event().wait(0.005)
        raise AssertionError(f"the refiller left the pool at {len(pool)} of 32")

    try:
        wait_full()
        pool.obfuscators(20)
        wait_full()
    finally:
        pool.close()
        worker.join(timeout=10)
    assert not worker.is_alive()


# --- wire layout and validation of what a peer sends ---


def _key_bytes(n: int, g: int, h: int, bits: int | None = None) -> bytes:
    bits = bits or n.bit_length()
    k = (bits + 7) // 8
    body = b"".join(x.to_bytes(k, "big") for x in (n, g, h))
    return b"BNOK" + struct.pack(">BH", 1, bits) + body


def _prime(bits: int, seed: int) -> int:
    return int(gmpy2.next_prime((1 << (bits - 1)) + seed * 1_000_003))


def test_public_key_round_trips(keys: Keys) -> None:
    data = keys.public.to_bytes()
    assert len(data) == 7 + 3 * BITS // 8 and data[:4] == b"BNOK"
    assert ou.PublicKey.from_bytes(data) == keys.public


def test_each_kind_of_invalid_key_has_its_own_exception(keys: Keys) -> None:
    n, g, h = int(keys.public.n), int(keys.public.g), int(keys.public.h)
    p = int(keys.private._p)
    square = _prime(257, 1) ** 2  # 513 bits

    def powered(base: int) -> int:
        return int(gmpy2.powmod(base, n, n))

    cases: list[tuple[bytes, type[Exception]]] = [
        (_key_bytes(n + 1, g, h), WeakModulusError),  # even
        (_key_bytes(square, 2, 4), WeakModulusError),  # a square
        (_key_bytes(1009 * _prime(BITS - 8, 2), 2, 4), WeakModulusError),  # small factor
        (_key_bytes(n, 1, h), ou.InvalidGeneratorError),  # out of (1, n)
        (_key_bytes(n, n - 1, powered(n - 1)), ou.InvalidGeneratorError),  # -1
        (_key_bytes(n, 3 * p, powered(3 * p)), ou.InvalidGeneratorError),  # not a unit
        (_key_bytes(n, g, h * g % n), ou.InvalidGeneratorError),  # h ≠ g^n
        (_key_bytes(n, g, 0), ou.InvalidGeneratorError),
        (_key_bytes(n, g, h)[:-1], InvalidMessageError),
        (b"BNPK" + _key_bytes(n, g, h)[4:], InvalidMessageError),  # a Paillier key's magic
        (_key_bytes(n, g, h, bits=BITS + 8), InvalidMessageError),
    ]
    for data, error in cases:
        with pytest.raises(error):
            ou.PublicKey.from_bytes(data)
    assert issubclass(ou.InvalidGeneratorError, InvalidKeyError)
    insecure.disable_insecure_test_parameters()
    with pytest.raises(KeySizeError):
        ou.PublicKey.from_bytes(keys.public.to_bytes())


def test_ciphertext_vector_round_trips_and_is_rerandomised(keys: Keys) -> None:
    vector = ou.encrypt(keys.owner, [1, -2, 3], frac_bits=8)
    data = vector.to_bytes(keys.encryptor)
    assert data[:4] == b"BNOC" and len(data) == 5 + 16 + 2 + 4 + 3 * BITS // 8
    back = ou.EncryptedVector.from_bytes(keys.public, data, frac_bits=8, max_count=3)
    assert back.ciphertexts == vector.ciphertexts and not back.fresh
    computed = back + back
    sent = ou.EncryptedVector.from_bytes(
        keys.public, computed.to_bytes(keys.encryptor), frac_bits=8, max_count=3
    )
    assert set(sent.ciphertexts).isdisjoint(computed.ciphertexts)
    assert ou.decrypt(keys.private, sent) == [2, -4, 6]
    parts = sent.split(2)
    assert [len(x) for x in parts] == [2, 1]


def test_each_kind_of_invalid_ciphertext_has_its_own_exception(
    keys: Keys, other_keys: Keys
) -> None:
    public = keys.public
    n = int(public.n)
    good = [int(c) for c in keys.owner.encrypt_raw([1, 2])]

    def message(cts: list[int], frac_bits: int = 0) -> bytes:
        return ou.encode_ciphertexts(public, cts, frac_bits)

    def decode(data: bytes, frac_bits: int = 0, max_count: int = 10) -> list[int]:
        return ou.decode_ciphertexts(public, data, frac_bits=frac_bits, max_count=max_count)

    assert decode(message(good)) == good
    for bad in (0, n, n + 5):
        with pytest.raises(CiphertextRangeError, match="ciphertext 1"):
            decode(message([good[0], bad]))
    with pytest.raises(CiphertextNotUnitError):
        decode(message([int(keys.private._p) * 5, good[1]]))
    with pytest.raises(CiphertextNotUnitError):
        decode(message([good[0], int(keys.private._q) * 3]))
    foreign = ou.encode_ciphertexts(other_keys.public, other_keys.owner.encrypt_raw([1]))
    with pytest.raises(KeyIdMismatchError):
        decode(foreign)
    with pytest.raises(ExponentMismatchError):
        decode(message(good, frac_bits=16))
    with pytest.raises(InvalidMessageError):
        decode(message(good)[:-1])
    with pytest.raises(InvalidMessageError):
        decode(message(good), max_count=1)
    with pytest.raises(InvalidMessageError):
        decode(b"BNPC" + message(good)[4:])
    with pytest.raises(InvalidMessageError, match="ciphertexts"):
        ou.PackedVector.from_bytes(public, message(good), slot_bits=40, slots=2, count=2, bound=1)


# --- secrets stay home ---


def test_secret_keys_never_serialise(keys: Keys) -> None:
    private = keys.private
    for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError):
            attempt(private)
    for holder in (keys.owner, ou.DecryptionService(private, 1)):
        with pytest.raises(TypeError):
            pickle.dumps(holder)
    assert str(private._p) not in repr(private) and not hasattr(private, "to_bytes")
    restored = pickle.loads(pickle.dumps(keys.encryptor))
    cts = restored.encrypt_raw([9])
    assert ou.decrypt(private, ou.EncryptedVector(keys.public, tuple(cts))) == [9]


def test_resume_state_round_trip_and_refusals(keys: Keys, other_keys: Keys) -> None:
    saved = keys.private.export_for_resume()
    restored = ou.PrivateKey.from_resume_state(saved)
    assert ou.decrypt(restored, ou.encrypt(keys.owner, [-3])) == [-3]
    public_part = keys.public.to_bytes()
    wrong = public_part + other_keys.private.export_for_resume()[len(public_part) :]
    for bad in (saved[:-1], saved[:3], wrong):
        with pytest.raises(InvalidKeyError):
            ou.PrivateKey.from_resume_state(bad)


def test_process_executor_runs_public_kernels_and_refuses_private_keys(keys: Keys) -> None:
    values = list(range(10))
    vector = ou.encrypt(keys.owner, values)
    with ProcessExecutor(2) as ex:
        assert ou.decrypt(keys.private, vector.dot(values, executor=ex)) == [
            sum(v * v for v in values)
        ]
        cts = keys.encryptor.encrypt_raw([4, 5, 6], executor=ex)
        assert ou.decrypt(keys.private, ou.EncryptedVector(keys.public, tuple(cts))) == [4, 5, 6]
        # The key owner's encryptor runs inline instead of pickling its factors.
        assert ou.decrypt(keys.private, ou.encrypt(keys.owner, [7], executor=ex)) == [7]
        with pytest.raises(TypeError, match="never leaves"):
            ou.decrypt(keys.private, vector, executor=ex)
