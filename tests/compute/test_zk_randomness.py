"""Full-randomness re-randomisation survives a key owner's bad h_s; the DJN path does not."""

from __future__ import annotations

from collections.abc import Iterator

import gmpy2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.compute import insecure
from bund.compute import paillier as pl
from bund.compute.errors import CiphertextNotUnitError, CiphertextRangeError
from bund.compute.executor import ThreadExecutor
from bund.compute.zk.randomness import (
    FullRandomness,
    check_unit,
    nth_residues,
    rerandomise,
    rerandomise_many,
)


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


def _order_two_base(private: pl.PrivateKey) -> gmpy2.mpz:
    """h ≡ 1 (mod p²), h ≡ -1 (mod q²): not ±1, a unit, an N-th residue, and h² = 1."""
    p2, q2 = private._p**2, private._q**2
    return 1 + p2 * ((q2 - 2) * gmpy2.invert(p2, q2) % q2)


def test_check_unit() -> None:
    check_unit(2, 15)
    check_unit(224, 15)
    for bad in (0, 225, 226, -4):
        with pytest.raises(CiphertextRangeError):
            check_unit(bad, 15)
    for bad in (3, 5, 30):
        with pytest.raises(CiphertextNotUnitError):
            check_unit(bad, 15)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(min_value=0, max_value=2**500))
def test_rerandomise_keeps_the_plaintext(keys: tuple[pl.PublicKey, pl.PrivateKey], m: int) -> None:
    public, private = keys
    (c,) = pl.Encryptor(public).encrypt_raw([m % public.n])
    fresh = rerandomise(c, public)
    assert fresh != c
    check_unit(fresh, public.n)
    assert private.decrypt_raw([fresh]) == [m % public.n]


def test_a_key_owners_order_two_base_defeats_djn_rerandomisation_only(
    keys: tuple[pl.PublicKey, pl.PrivateKey],
) -> None:
    """The attack: a key owner publishes h_s of order 2; the evaluator's outputs become guessable.

    DJN re-randomisation multiplies by h_s^r ∈ {1, h_s}: 200 re-randomisations of one result are
    2 ciphertexts, one of them the unmasked result, which the key owner can recompute from its
    own ciphertexts to test guesses of the evaluator's inputs. ``rerandomise`` uses the
    evaluator's own r^N: 200 distinct ciphertexts.
    """
    honest_public, private = keys
    bad_base = _order_two_base(private)
    assert (
        bad_base not in (1, honest_public.n_square - 1)
        and bad_base**2 % honest_public.n_square == 1
    )
    # Every public check accepts it.
    bad_public = pl.PublicKey.from_bytes(pl.PublicKey(honest_public.n, bad_base).to_bytes())
    pl.validate_public_key(bad_public)
    (result,) = pl.Encryptor(bad_public).encrypt_raw([31337])
    djn = pl.Encryptor(bad_public).rerandomize([result] * 200)
    assert len(set(djn)) == 2 and result in set(djn)
    full = [rerandomise(result, bad_public) for _ in range(200)]
    assert len(set(full)) == 200 and result not in set(full)
    assert set(private.decrypt_raw(full)) == {31337}


def test_pool_hands_every_value_out_once(keys: tuple[pl.PublicKey, pl.PrivateKey]) -> None:
    public, _ = keys
    source = FullRandomness(public, capacity=12)
    with ThreadExecutor(2) as executor:
        assert source.refill(executor=executor) == 12
    assert source.refill() == 0 and len(source) == 12
    first = source.residues(8)
    assert len(source) == 4
    second = source.residues(10)  # 4 from the pool, 6 computed on the spot
    assert len(source) == 0
    values = first + second
    assert len(set(values)) == 18
    for h in values:
        assert gmpy2.gcd(h, public.n) == 1 and 0 < h < public.n_square


def test_full_randomness_is_a_randomness_source(keys: tuple[pl.PublicKey, pl.PrivateKey]) -> None:
    public, private = keys
    source = FullRandomness(public)
    vector = pl.encrypt(source, [5, -6, 7])
    assert pl.decrypt(private, vector) == [5, -6, 7]
    computed = vector + vector  # not fresh: re-randomised by the source on the way out
    wire = computed.to_bytes(source)
    received = pl.EncryptedVector.from_bytes(public, wire, frac_bits=0, max_count=3)
    assert set(received.ciphertexts).isdisjoint(computed.ciphertexts)
    assert pl.decrypt(private, received) == [10, -12, 14]
    with pytest.raises(ValueError):
        source.encrypt_raw([public.n])


def test_batch_rerandomisation_on_threads(keys: tuple[pl.PublicKey, pl.PrivateKey]) -> None:
    public, private = keys
    cts = pl.Encryptor(public).encrypt_raw(list(range(9)))
    with ThreadExecutor(2) as executor:
        fresh = rerandomise_many(cts, public, executor)
    assert private.decrypt_raw(fresh) == list(range(9))
    assert set(fresh).isdisjoint(cts)
    assert nth_residues(public, 0) == []


def test_each_residue_is_an_nth_power(keys: tuple[pl.PublicKey, pl.PrivateKey]) -> None:
    public, private = keys
    for h in nth_residues(public, 5):
        assert private.decrypt_raw([h]) == [0]  # an encryption of zero: h = r^N
