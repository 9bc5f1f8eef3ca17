"""Paillier engine: algebraic laws, packing, pool, wire validation, key rules, phe interop."""

from __future__ import annotations

import copy
import pickle
import struct
import threading
from collections.abc import Iterator

import gmpy2
import numpy as np
import phe
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.compute import insecure
from bund.compute import paillier as pl
from bund.compute.encoding import FixedPoint, PackingLayout
from bund.compute.errors import (
    CiphertextNotUnitError,
    CiphertextRangeError,
    EncodingOverflowError,
    ExponentMismatchError,
    InvalidBaseError,
    InvalidCiphertextError,
    InvalidKeyError,
    InvalidMessageError,
    KeyIdMismatchError,
    KeySizeError,
    WeakModulusError,
)
from bund.compute.executor import InlineExecutor, ProcessExecutor, ThreadExecutor

BITS = 512
#: Signed values well inside the plaintext space of a 512-bit key (|v| < n/3 after the laws).
VALUES = st.integers(min_value=-(2**120), max_value=2**120)
SCALARS = st.integers(min_value=-(2**40), max_value=2**40)
LAWS = settings(max_examples=40, deadline=None)


class Keys:
    """One key pair and its encryptors, made once for the module."""

    def __init__(self, bits: int) -> None:
        insecure.enable_insecure_test_parameters()
        self.public, self.private = pl.generate_keypair(bits)
        self.encryptor = pl.Encryptor(self.public)
        self.owner = pl.Encryptor(self.private)
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


def _keys(keys: Keys) -> tuple[pl.PublicKey, pl.PrivateKey, pl.Encryptor]:
    return keys.public, keys.private, keys.encryptor


# --- key generation and the size rule ---


def test_small_keys_are_refused_without_the_switch() -> None:
    insecure.disable_insecure_test_parameters()
    with pytest.raises(KeySizeError, match="2048"):
        pl.generate_keypair(1024)
    with pytest.raises(KeySizeError):
        pl.check_key_size(2046)
    pl.check_key_size(2048)


def test_the_switch_admits_small_keys_but_not_tiny_or_huge_ones() -> None:
    pl.check_key_size(512)
    with pytest.raises(KeySizeError):
        pl.check_key_size(128)
    with pytest.raises(KeySizeError):
        pl.check_key_size(pl.MAX_KEY_BITS + 2)


def test_keygen_arguments() -> None:
    with pytest.raises(ValueError, match="even"):
        pl.generate_keypair(513)
    with pytest.raises(TypeError):
        pl.generate_keypair(512.0)  # type: ignore[arg-type]


def test_keygen_2048_bits_round_trip() -> None:
    insecure.disable_insecure_test_parameters()
    public, private = pl.generate_keypair(2048)
    assert public.bits == 2048
    assert public.random_bytes == 128  # r has half the key's bits
    p, q = private._p, private._q
    assert p % 4 == 3 and q % 4 == 3 and p.bit_length() == q.bit_length() == 1024
    vector = pl.encrypt(pl.Encryptor(public), [0, 1, -1, 2**100])
    assert pl.decrypt(private, vector) == [0, 1, -1, 2**100]


def test_key_structure(keys: Keys) -> None:
    public, private, _ = _keys(keys)
    assert public.bits == BITS and public.n & 1
    assert len(public.key_id) == pl.KEY_ID_BYTES
    # h_s is an n-th residue: it decrypts to 0.
    assert private.decrypt_raw([public.hs]) == [0]


# --- algebraic laws ---


@LAWS
@given(a=VALUES, b=VALUES)
def test_sum_of_encryptions_decrypts_to_the_sum(keys: Keys, a: int, b: int) -> None:
    public, private, enc = _keys(keys)
    ea, eb = pl.encrypt(enc, [a]), pl.encrypt(keys.owner, [b])
    assert pl.decrypt(private, ea + eb) == [a + b]
    assert pl.decrypt(private, ea.add_plain([b])) == [a + b]


@LAWS
@given(a=VALUES, k=SCALARS)
def test_scalar_times_encryption_decrypts_to_the_product(keys: Keys, a: int, k: int) -> None:
    _, private, enc = _keys(keys)
    assert pl.decrypt(private, pl.encrypt(enc, [a]).mul([k])) == [k * a]


@LAWS
@given(
    pairs=st.lists(st.tuples(VALUES, st.integers(-(2**32) + 1, 2**32 - 1)), min_size=1, max_size=40)
)
def test_dot_product_equals_the_plaintext_one(keys: Keys, pairs: list[tuple[int, int]]) -> None:
    _, private, enc = _keys(keys)
    values, scalars = [v for v, _ in pairs], [k for _, k in pairs]
    dot = pl.encrypt(enc, values).dot(scalars)
    assert pl.decrypt(private, dot) == [sum(v * k for v, k in pairs)]


@LAWS
@given(
    values=st.lists(VALUES, min_size=1, max_size=12),
    data=st.data(),
)
def test_matvec_equals_the_plaintext_one(
    keys: Keys, values: list[int], data: st.DataObject
) -> None:
    _, private, enc = _keys(keys)
    rows = data.draw(
        st.lists(
            st.lists(SCALARS, min_size=len(values), max_size=len(values)), min_size=1, max_size=4
        )
    )
    product = pl.matvec(rows, pl.encrypt(enc, values))
    assert pl.decrypt(private, product) == [
        sum(k * v for k, v in zip(row, values, strict=True)) for row in rows
    ]


def test_element_wise_products_with_many_negative_scalars(keys: Keys) -> None:
    _, private, enc = _keys(keys)
    values = list(range(-20, 20))
    scalars = [(-1) ** i * (i + 3) for i in range(40)]
    out = pl.encrypt(enc, values).mul(scalars)
    assert pl.decrypt(private, out) == [v * k for v, k in zip(values, scalars, strict=True)]


def test_dot_product_with_large_inputs_and_zero_scalars(keys: Keys) -> None:
    _, private, enc = _keys(keys)
    values = [(-1) ** i * (i * 7919 + 1) for i in range(300)]
    scalars = [0 if i % 5 == 0 else (-1) ** (i // 3) * (i * 104729 % (2**32)) for i in range(300)]
    dot = pl.encrypt(enc, values).dot(scalars)
    assert pl.decrypt(private, dot) == [sum(v * k for v, k in zip(values, scalars, strict=True))]
    assert pl.decrypt(private, pl.encrypt(enc, values).dot([0] * 300)) == [0]
    wide = [2**100 + 3, -(2**70), 5]  # scalars beyond 64 bits take the pure-Python digit path
    assert pl.decrypt(private, pl.encrypt(enc, [7, 11, -13]).dot(wide)) == [
        7 * wide[0] + 11 * wide[1] - 13 * 5
    ]


def test_fixed_point_exponents_add_under_products(keys: Keys) -> None:
    _, private, enc = _keys(keys)
    fx = FixedPoint(16)
    vector = pl.encrypt(enc, fx.encode_many([1.5, -2.25]), frac_bits=16)
    dot = vector.dot(FixedPoint(8).encode_many([2.0, 1.0]), scalar_frac_bits=8)
    assert dot.frac_bits == 24
    assert FixedPoint(24).decode_many(pl.decrypt(private, dot)) == [0.75]
    with pytest.raises(ValueError, match="frac_bits"):
        _ = vector + pl.encrypt(enc, [1, 2])


def test_overflow_of_the_plaintext_space_is_detected(keys: Keys) -> None:
    public, private, enc = _keys(keys)
    big = public.n // 3 - 1
    with pytest.raises(EncodingOverflowError):
        pl.encrypt(enc, [big + 1])
    doubled = pl.encrypt(enc, [big]).mul([2])
    with pytest.raises(EncodingOverflowError):
        pl.decrypt(private, doubled)


def test_numpy_integers_are_accepted_and_floats_refused(keys: Keys) -> None:
    _, private, enc = _keys(keys)
    vector = pl.encrypt(enc, np.array([3, -4], dtype=np.int64))
    assert pl.decrypt(private, vector.dot([np.int32(2), np.int64(1)])) == [2]
    assert pl.decrypt(private, pl.matvec(np.array([[1, 1], [2, -1]]), vector)) == [-1, 10]
    for bad in ([1.5, 2], [True, 2], np.array([1.0, 2.0])):
        with pytest.raises(TypeError):
            vector.mul(bad)


def test_bad_arguments_are_builtin_errors(keys: Keys, other_keys: Keys) -> None:
    public, private, enc = _keys(keys)
    vector = pl.encrypt(enc, [1, 2])
    with pytest.raises(ValueError):
        vector.dot([1, 2, 3])
    with pytest.raises(ValueError):
        enc.encrypt_raw([public.n])
    with pytest.raises(ValueError, match="another key"):
        pl.decrypt(other_keys.private, vector)
    with pytest.raises(ValueError, match="different public keys"):
        _ = vector + pl.encrypt(other_keys.encryptor, [1, 2])


def test_key_owner_encryption_looks_like_public_encryption(keys: Keys) -> None:
    public, private, _ = _keys(keys)
    assert keys.owner.is_key_owner and not keys.encryptor.is_key_owner
    a, b = keys.owner.encrypt_raw([7, 7])
    assert a != b and 0 < a < public.n_square
    assert private.decrypt_raw([a, b]) == [7, 7]


# --- packing ---


@LAWS
@given(
    a=st.lists(st.integers(-(2**20) + 1, 2**20 - 1), min_size=1, max_size=60),
    data=st.data(),
)
def test_packed_slots_are_independent(keys: Keys, a: list[int], data: st.DataObject) -> None:
    _, private, enc = _keys(keys)
    b = data.draw(st.lists(st.integers(-(2**20) + 1, 2**20 - 1), min_size=len(a), max_size=len(a)))
    k = data.draw(st.integers(-(2**8) + 1, 2**8 - 1))
    layout = PackingLayout(value_bits=20, additions=2, scalar_bits=8)
    pa, pb = pl.encrypt_packed(enc, a, layout), pl.encrypt_packed(enc, b, layout)
    assert len(pa.ciphertexts) == -(-len(a) // layout.slots(BITS))
    assert pl.decrypt_packed(private, pa) == a
    assert pl.decrypt_packed(private, (pa + pb).mul_scalar(k)) == [
        k * (x + y) for x, y in zip(a, b, strict=True)
    ]


def test_packing_refuses_values_and_operations_beyond_its_headroom(keys: Keys) -> None:
    _, private, enc = _keys(keys)
    layout = PackingLayout(value_bits=10, additions=2)
    with pytest.raises(EncodingOverflowError, match="value 1 needs 11 bits"):
        pl.encrypt_packed(enc, [1, 1024], layout)
    packed = pl.encrypt_packed(enc, [1023, -1023], layout)
    twice = packed + packed
    assert pl.decrypt_packed(private, twice) == [2046, -2046]
    with pytest.raises(EncodingOverflowError, match="overflow"):
        _ = twice + packed
    with pytest.raises(EncodingOverflowError):
        packed.mul_scalar(3)


@LAWS
@given(values=st.lists(st.integers(-(2**60), 2**60), min_size=1, max_size=30))
def test_squeezing_packs_results_before_decryption(keys: Keys, values: list[int]) -> None:
    _, private, enc = _keys(keys)
    vector = pl.encrypt(enc, values).mul([3] * len(values))
    squeezed = vector.squeeze(3 * 2**60)
    assert len(squeezed.ciphertexts) < len(values) or len(values) <= squeezed.slots
    assert pl.decrypt_packed(private, squeezed) == [3 * v for v in values]


def test_packed_vectors_travel_as_bytes(keys: Keys) -> None:
    public, private, enc = _keys(keys)
    squeezed = pl.encrypt(enc, [5, -6, 7]).mul([2, 2, 2]).squeeze(14)
    data = squeezed.to_bytes(enc)
    layout = {"slot_bits": squeezed.slot_bits, "slots": squeezed.slots, "count": 3, "bound": 14}
    received = pl.PackedVector.from_bytes(public, data, **layout)
    assert set(received.ciphertexts).isdisjoint(squeezed.ciphertexts)  # re-randomised
    assert pl.decrypt_packed(private, received) == [10, -12, 14]
    with pytest.raises(InvalidMessageError):
        pl.PackedVector.from_bytes(public, data, **{**layout, "count": 3 * squeezed.slots + 1})
    with pytest.raises(ValueError):
        pl.PackedVector(public, squeezed.ciphertexts, 64, BITS // 64, 3, 1)  # too wide


# --- obfuscator pool ---


def test_pool_values_are_never_reused(keys: Keys) -> None:
    pool = pl.ObfuscatorPool(keys.encryptor, capacity=64)
    assert pool.refill() == 64 and len(pool) == 64
    assert pool.refill() == 0
    taken = pool.obfuscators(40) + pool.obfuscators(40)  # 24 computed on the spot
    assert len(pool) == 0
    assert len({h for h, _ in taken}) == 80
    cts = pool.encrypt_raw([5] * 30)
    assert len(set(cts)) == 30
    assert keys.private.decrypt_raw(cts) == [5] * 30


def test_pool_hands_out_each_value_once_across_threads(keys: Keys) -> None:
    pool = pl.ObfuscatorPool(keys.encryptor, capacity=200)
    pool.refill()
    results: list[list[pl.Obfuscator]] = [[] for _ in range(4)]

    def take(slot: int) -> None:
        for _ in range(10):
            results[slot].extend(pool.obfuscators(5))

    threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    values = [h for batch in results for h, _ in batch]
    assert len(values) == 200 and len(set(values)) == 200 and len(pool) == 0


def test_background_refills_are_driven_by_the_caller(keys: Keys) -> None:
    pool = pl.ObfuscatorPool(keys.encryptor, capacity=32, low_water=16)
    worker = threading.Thread(target=pool.run_refills, kwargs={"batch": 8})
    worker.start()

    def wait_full() -> None:
        for _ in range(2000):
            if len(pool) == 32:
                return
            threading.Event().wait(0.005)
        raise AssertionError(f"the refiller left the pool at {len(pool)} of 32")

    try:
        wait_full()  # an empty pool is below low water: the refiller fills it
        pool.obfuscators(20)  # 12 left, below low water again: the refiller wakes
        wait_full()
    finally:
        pool.close()
        worker.join(timeout=10)
    assert not worker.is_alive()


def test_pool_arguments() -> None:
    with pytest.raises(TypeError):
        pl.ObfuscatorPool(object())  # type: ignore[arg-type]


# --- wire layout and validation of what a peer sends ---


def test_public_key_round_trips_and_is_validated(keys: Keys) -> None:
    data = keys.public.to_bytes()
    assert len(data) == 7 + 3 * BITS // 8
    assert pl.PublicKey.from_bytes(data) == keys.public


def _key_bytes(n: int, hs: int, bits: int | None = None) -> bytes:
    bits = bits or n.bit_length()
    k = (bits + 7) // 8
    return b"BNPK" + struct.pack(">BH", 1, bits) + n.to_bytes(k, "big") + hs.to_bytes(2 * k, "big")


def _prime(bits: int, seed: int) -> int:
    return int(gmpy2.next_prime((1 << (bits - 1)) + seed * 1_000_003))


def test_each_kind_of_invalid_key_has_its_own_exception(keys: Keys) -> None:
    n, hs = int(keys.public.n), int(keys.public.hs)
    p = _prime(256, 1)
    cases: list[tuple[bytes, type[Exception]]] = [
        (_key_bytes(n + 1, hs), WeakModulusError),  # even
        (_key_bytes(p * p, 5), WeakModulusError),  # a square
        (_key_bytes(1009 * _prime(BITS - 10, 2), 5), WeakModulusError),  # small factor
        (_key_bytes(n, 1), InvalidBaseError),
        (_key_bytes(n, n * n - 1), InvalidBaseError),
        (_key_bytes(n, 0), InvalidBaseError),
        (_key_bytes(n, int(keys.private._p) * 3), InvalidBaseError),  # not a unit
        (_key_bytes(n, hs)[:-1], InvalidMessageError),
        (b"XXXX" + _key_bytes(n, hs)[4:], InvalidMessageError),
        (_key_bytes(n, hs, bits=BITS + 8), InvalidMessageError),
    ]
    for data, error in cases:
        with pytest.raises(error):
            pl.PublicKey.from_bytes(data)
    assert issubclass(WeakModulusError, InvalidKeyError)
    assert issubclass(InvalidBaseError, InvalidKeyError)


def test_small_peer_keys_are_refused_without_the_switch(keys: Keys) -> None:
    data = keys.public.to_bytes()
    insecure.disable_insecure_test_parameters()
    with pytest.raises(KeySizeError):
        pl.PublicKey.from_bytes(data)
    with pytest.raises(KeySizeError):
        pl.from_phe_public_key(phe.PaillierPublicKey(int(keys.public.n)))


def test_ciphertext_vector_round_trips_and_is_rerandomised(keys: Keys) -> None:
    public, private, enc = _keys(keys)
    vector = pl.encrypt(enc, [1, -2, 3], frac_bits=8)
    assert vector.fresh
    data = vector.to_bytes(enc)
    back = pl.EncryptedVector.from_bytes(public, data, frac_bits=8, max_count=3)
    assert back.ciphertexts == vector.ciphertexts and not back.fresh
    computed = back + back
    sent = pl.EncryptedVector.from_bytes(public, computed.to_bytes(enc), frac_bits=8, max_count=3)
    assert set(sent.ciphertexts).isdisjoint(computed.ciphertexts)
    assert pl.decrypt(private, sent) == [2, -4, 6]


def test_each_kind_of_invalid_ciphertext_has_its_own_exception(
    keys: Keys, other_keys: Keys
) -> None:
    public, _, enc = _keys(keys)
    n, n2 = int(public.n), int(public.n_square)
    good = list(enc.encrypt_raw([1, 2]))

    def message(cts: list[int], frac_bits: int = 0) -> bytes:
        return pl.encode_ciphertexts(public, cts, frac_bits)

    def decode(data: bytes, frac_bits: int = 0, max_count: int = 10) -> list[int]:
        return pl.decode_ciphertexts(public, data, frac_bits=frac_bits, max_count=max_count)

    assert decode(message(good)) == good
    for bad in (0, n2, n2 + 5):  # all fit the fixed width: n² < 2^(2·bits)
        with pytest.raises(CiphertextRangeError, match="ciphertext 1"):
            decode(message([good[0], bad]))
    with pytest.raises(CiphertextNotUnitError):
        decode(message([good[0], n]))
    with pytest.raises(CiphertextNotUnitError):
        decode(message([int(keys.private._q) * 5, good[1]]))
    foreign = pl.encode_ciphertexts(other_keys.public, other_keys.encryptor.encrypt_raw([1]))
    with pytest.raises(KeyIdMismatchError):
        decode(foreign)
    with pytest.raises(ExponentMismatchError):
        decode(message(good, frac_bits=16))
    with pytest.raises(InvalidMessageError):
        decode(message(good)[:-1])
    with pytest.raises(InvalidMessageError):
        decode(message(good), max_count=1)
    with pytest.raises(InvalidMessageError):
        decode(b"BNPC\x02" + message(good)[5:])
    for error in (
        CiphertextRangeError,
        CiphertextNotUnitError,
        KeyIdMismatchError,
        ExponentMismatchError,
    ):
        assert issubclass(error, InvalidCiphertextError)


# --- secrets stay home ---


def test_secret_keys_never_serialise(keys: Keys) -> None:
    private = keys.private
    for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError):
            attempt(private)
    with pytest.raises(TypeError):
        pickle.dumps(keys.owner)
    assert str(private._p) not in repr(private)
    assert not hasattr(private, "to_bytes")
    restored = pickle.loads(pickle.dumps(keys.encryptor))
    assert keys.private.decrypt_raw(restored.encrypt_raw([9])) == [9]


# --- executors ---


def test_thread_executor_gives_the_inline_results(keys: Keys) -> None:
    public, private, enc = _keys(keys)
    values = list(range(-50, 50))
    scalars = [(-1) ** i * i for i in range(100)]
    with ThreadExecutor(3) as ex:
        vector = pl.encrypt(enc, values, executor=ex)
        assert pl.decrypt(private, vector, executor=ex) == values
        assert pl.decrypt(private, vector.dot(scalars, executor=ex)) == pl.decrypt(
            private, vector.dot(scalars, executor=InlineExecutor())
        )
        assert pl.decrypt(private, vector.mul(scalars, executor=ex)) == [
            v * k for v, k in zip(values, scalars, strict=True)
        ]
        rows = [scalars, scalars[::-1]]
        assert pl.decrypt(private, pl.matvec(rows, vector, executor=ex)) == [
            sum(k * v for k, v in zip(row, values, strict=True)) for row in rows
        ]
        pool = pl.ObfuscatorPool(enc, capacity=30)
        assert pool.refill(executor=ex) == 30


def test_process_executor_runs_public_kernels_and_refuses_private_keys(keys: Keys) -> None:
    public, private, enc = _keys(keys)
    values = list(range(10))
    vector = pl.encrypt(enc, values)
    with ProcessExecutor(2) as ex:
        assert pl.decrypt(private, vector.dot(values, executor=ex)) == [sum(v * v for v in values)]
        assert private.decrypt_raw(enc.encrypt_raw([4, 5, 6], executor=ex)) == [4, 5, 6]
        with pytest.raises(TypeError, match="never leaves"):
            pl.decrypt(private, vector, executor=ex)


# --- interoperation with phe ---


def test_phe_ciphertexts_decrypt_here(keys: Keys) -> None:
    public, private, _ = _keys(keys)
    phe_public = pl.to_phe_public_key(public)
    numbers = [phe_public.encrypt(x, precision=2**-16) for x in (1.25, -3.5, 0.0)]
    numbers = [x.decrease_exponent_to(-4) for x in numbers]
    vector = pl.from_phe_encrypted(public, numbers)
    assert vector.frac_bits == 16
    assert FixedPoint(16).decode_many(pl.decrypt(private, vector)) == [1.25, -3.5, 0.0]
    raw = phe_public.raw_encrypt(12345)  # textbook r^n randomness
    assert private.decrypt_raw([gmpy2.mpz(raw)]) == [12345]


def test_our_ciphertexts_decrypt_in_phe(keys: Keys) -> None:
    public, private, enc = _keys(keys)
    phe_private = pl.to_phe_private_key(private)
    vector = pl.encrypt(enc, FixedPoint(16).encode_many([2.5, -0.75]), frac_bits=16)
    assert [phe_private.decrypt(x) for x in pl.to_phe_encrypted(vector)] == [2.5, -0.75]
    mixed = pl.to_phe_encrypted(vector)[0] + pl.to_phe_public_key(public).encrypt(1.5)
    assert phe_private.decrypt(mixed) == 4.0
    with pytest.raises(ValueError, match="multiple of 4"):
        pl.to_phe_encrypted(pl.encrypt(enc, [1], frac_bits=3))


def test_phe_keys_are_adopted(keys: Keys) -> None:
    phe_public, phe_private = phe.generate_paillier_keypair(n_length=BITS)
    private = pl.from_phe_private_key(phe_private)
    vector = pl.encrypt(pl.Encryptor(private.public_key), [-7, 8])
    assert pl.decrypt(private, vector) == [-7, 8]
    assert [phe_private.decrypt(x) for x in pl.to_phe_encrypted(vector)] == [-7, 8]
    with pytest.raises(ValueError, match="another modulus"):
        pl.from_phe_encrypted(keys.public, [phe_public.encrypt(1)])


@LAWS
@given(x=st.floats(min_value=-(2.0**40), max_value=2.0**40, allow_nan=False))
def test_encodings_agree_with_phe(keys: Keys, x: float) -> None:
    public, private, enc = _keys(keys)
    phe_public = pl.to_phe_public_key(public)
    encoded = phe.EncodedNumber.encode(phe_public, x, precision=16**-6)
    assert encoded.exponent == -6
    ours = FixedPoint(24).encode(x)
    assert ours % int(public.n) == encoded.encoding
    vector = pl.encrypt(enc, [ours], frac_bits=24)
    assert (
        pl.to_phe_private_key(private).decrypt(pl.to_phe_encrypted(vector)[0]) == encoded.decode()
    )


def test_private_key_resume_state_round_trip_and_refusals(keys: Keys, other_keys: Keys) -> None:
    saved = keys.private.export_for_resume()
    again = pl.PrivateKey.from_resume_state(saved)
    assert again.public_key == keys.public
    vector = pl.encrypt(keys.encryptor, [12345, -678])
    assert pl.decrypt(again, vector) == [12345, -678]
    # Another key's factor, a truncated blob and a stray byte are all refused.
    foreign = keys.public.to_bytes() + other_keys.private.export_for_resume()[-32:]
    for bad in (foreign, saved[:-1], saved + b"\x00", saved[:3]):
        with pytest.raises((InvalidKeyError, InvalidMessageError)):
            pl.PrivateKey.from_resume_state(bad)
