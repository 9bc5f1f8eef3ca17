"""The HE interface: one contract suite that both schemes (Paillier, Okamoto–Uchiyama) pass."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.compute import he, insecure, ou
from bund.compute import paillier as pl
from bund.compute.encoding import PackingLayout
from bund.compute.errors import InvalidMessageError, ProofError
from bund.compute.executor import ThreadExecutor

LAWS = settings(max_examples=25, deadline=None)


@pytest.fixture(autouse=True)
def _small_keys_allowed() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()
    yield


@pytest.fixture(scope="class")
def secret(request: pytest.FixtureRequest) -> he.HeSecretKey:
    """The key owner's key of the test class's scheme, made once per class."""
    insecure.enable_insecure_test_parameters()
    key = he.create_scheme(request.cls.name).generate_keypair(request.cls.bits)
    insecure.disable_insecure_test_parameters()
    return key


@pytest.fixture(scope="class")
def public(request: pytest.FixtureRequest, secret: he.HeSecretKey) -> he.HePublicKey:
    """The same public key as an evaluator receives it: parsed and validated."""
    insecure.enable_insecure_test_parameters()
    scheme = he.create_scheme(request.cls.name)
    key = scheme.public_key_from_bytes(secret.public_key.to_bytes())
    insecure.disable_insecure_test_parameters()
    return key


class HeContract:
    """What the vertical protocols rely on; a subclass names the scheme and a key size."""

    __test__ = False
    name = ""
    bits = 0

    def test_keys_round_trip_through_the_wire_and_the_resume_state(
        self, secret: he.HeSecretKey, public: he.HePublicKey
    ) -> None:
        scheme = he.create_scheme(self.name)
        assert scheme.name == self.name == public.scheme and scheme.min_key_bits == 2048
        assert public.key_id == secret.public_key.key_id and public.bits == self.bits
        restored = scheme.secret_key_from_resume_state(secret.export_for_resume())
        assert restored.decrypt(public.encryptor().encrypt([-5])) == [-5]

    def test_matvec_equals_numpy_on_a_thread_pool(
        self, secret: he.HeSecretKey, public: he.HePublicKey
    ) -> None:
        rng = np.random.default_rng(1)
        residuals = rng.integers(-(2**24), 2**24, size=40)
        features = rng.integers(-(2**19), 2**19, size=(7, 40))
        with ThreadExecutor(2) as ex:
            vector = secret.encryptor_for(ex).encrypt(residuals, frac_bits=24, executor=ex)
            product = public.matvec(features, vector, 16, executor=ex)
        assert product.frac_bits == 40
        assert secret.decrypt(product) == (features @ residuals).tolist()

    def test_packing_squeezing_and_the_decryption_service(
        self, secret: he.HeSecretKey, public: he.HePublicKey
    ) -> None:
        capacity = public.packing_bits(100)
        assert capacity <= public.max_plaintext_bits + 2
        layout = PackingLayout(value_bits=20, additions=2)
        values = list(range(-30, 30))
        packed = public.encryptor().encrypt_packed(values, layout, capacity)
        assert secret.decrypt_packed(packed + packed) == [2 * v for v in values]
        assert secret.decrypt_packed(packed.mul_scalar(-1)) == [-v for v in values]
        computed = public.encryptor().encrypt(values).add_plain([1 << 30] * len(values))
        squeezed = computed.squeeze((1 << 30) + 30, capacity)
        slot_bits, slots, count, bound = squeezed.layout
        assert (slot_bits, count, bound) == (32, 60, (1 << 30) + 30) and slots * 32 <= capacity
        source = public.encryptor()
        wire = squeezed.to_bytes(source)
        received = public.packed_from_bytes(
            wire, slot_bits=slot_bits, slots=slots, count=count, bound=bound, frac_bits=0
        )
        service = secret.decryption_service(100)
        assert service.decrypt_packed(received) == [(1 << 30) + v for v in values]
        assert not service.retired

    def test_vectors_travel_in_parts_and_are_rerandomised(
        self, secret: he.HeSecretKey, public: he.HePublicKey
    ) -> None:
        source = public.encryptor()
        fresh = secret.encryptor().encrypt(list(range(7)), frac_bits=8)
        parts = fresh.split(3)
        assert [len(p) for p in parts] == [3, 3, 1]
        received = [
            public.vector_from_bytes(p.to_bytes(source), frac_bits=8, max_count=3) for p in parts
        ]
        joined = received[0].extended(received[1:])
        assert secret.decrypt(joined) == list(range(7))
        computed = joined + joined
        again = public.vector_from_bytes(computed.to_bytes(source), frac_bits=8, max_count=7)
        assert secret.decrypt(again) == [2 * v for v in range(7)]
        assert secret.decrypt(computed.rerandomised(source)) == [2 * v for v in range(7)]
        with pytest.raises(InvalidMessageError):
            public.vector_from_bytes(computed.to_bytes(source), frac_bits=8, max_count=6)
        with pytest.raises(ValueError):
            fresh.split(0)

    def test_pools_hand_out_precomputed_randomness(
        self, secret: he.HeSecretKey, public: he.HePublicKey
    ) -> None:
        pool = public.encryptor().pool(capacity=8)
        assert pool.refill() == 8 and len(pool) == 8
        vector = pool.encrypt([1, 2, 3])
        assert len(pool) == 5 and not pool.is_key_owner
        assert secret.decrypt(vector) == [1, 2, 3]
        pool.close()
        assert secret.encryptor().is_key_owner

    def test_objects_of_another_scheme_are_refused(
        self, secret: he.HeSecretKey, public: he.HePublicKey
    ) -> None:
        other = he.create_scheme("ou" if self.name == "paillier" else "paillier")
        foreign = other.generate_keypair(1024)
        vector = public.encryptor().encrypt([1])
        with pytest.raises(TypeError, match="another scheme"):
            secret.decrypt(foreign.public_key.encryptor().encrypt([1]))
        with pytest.raises(TypeError, match="another scheme"):
            vector.to_bytes(foreign.public_key.encryptor())
        with pytest.raises(InvalidMessageError):
            public.vector_from_bytes(
                foreign.public_key.encryptor()
                .encrypt([1])
                .to_bytes(foreign.public_key.encryptor()),
                frac_bits=0,
                max_count=1,
            )


class TestPaillier(HeContract):
    __test__ = True
    name = "paillier"
    bits = 512

    def test_the_key_owner_proves_its_modulus_for_one_context(
        self, secret: he.HeSecretKey, public: he.HePublicKey
    ) -> None:
        assert he.create_scheme(self.name).proves_modulus
        proof = secret.prove_modulus(b"job-1/bank/vlr-key")
        public.verify_modulus(proof, b"job-1/bank/vlr-key")
        with pytest.raises(ProofError):
            public.verify_modulus(proof, b"job-2/bank/vlr-key")
        with pytest.raises(InvalidMessageError):
            public.verify_modulus(proof[:-1], b"job-1/bank/vlr-key")

    def test_an_evaluators_rerandomisation_ignores_an_order_two_base(self) -> None:
        """Issue 14, attack 4: a key owner's h_s of order 2 passes every public check.

        The owner's DJN re-randomisation then yields 2 ciphertexts in 200 for one result; an
        evaluator's pool (what a provider exports its packed gradient with) yields 200 distinct
        ones, none the computed ciphertext itself, all decrypting to the same slots.
        """
        honest, private = pl.generate_keypair(512)
        p2, q2 = private._p**2, private._q**2
        order_two = 1 + p2 * ((q2 - 2) * pow(int(p2), -1, int(q2)) % q2)
        assert order_two**2 % honest.n_square == 1
        bad = pl.PublicKey(honest.n, order_two)
        public = he.create_scheme("paillier").public_key_from_bytes(bad.to_bytes())
        computed = public.encryptor().encrypt([7, -3]).add_plain([1, 1])
        packed = computed.squeeze(100, public.packing_bits(1))
        djn = pl.Encryptor(bad).rerandomize([int(c) for c in packed.packed.ciphertexts] * 200)  # type: ignore[attr-defined]
        assert len(set(djn)) == 2
        pool = public.encryptor().pool(capacity=200)
        assert pool.refill() == 200
        exports = [packed.to_bytes(pool) for _ in range(200)]
        assert len(set(exports)) == 200 and len(pool) == 0
        unrandomised = pl.encode_ciphertexts(bad, packed.packed.ciphertexts)  # type: ignore[attr-defined]
        assert unrandomised not in exports
        owner = he.create_scheme("paillier").secret_key_from_resume_state(
            private.export_for_resume()
        )
        slot_bits, slots, count, bound = packed.layout
        for wire in exports[:5]:
            got = public.packed_from_bytes(
                wire, slot_bits=slot_bits, slots=slots, count=count, bound=bound, frac_bits=0
            )
            assert owner.decrypt_packed(got) == [8, -2]

    def test_bytes_are_the_paillier_engines(self, secret: he.HeSecretKey) -> None:
        adapter = secret.public_key
        assert pl.PublicKey.from_bytes(adapter.to_bytes()).to_bytes() == adapter.to_bytes()
        assert adapter.packing_bits(10**9) == 510 and adapter.ciphertext_bytes == 128


class TestOu(HeContract):
    __test__ = True
    name = "ou"
    bits = 1024

    def test_no_modulus_proof_exists(self, secret: he.HeSecretKey, public: he.HePublicKey) -> None:
        assert not he.create_scheme(self.name).proves_modulus
        with pytest.raises(NotImplementedError, match="trusts"):
            secret.prove_modulus(b"job-1")
        with pytest.raises(NotImplementedError, match="trusts"):
            public.verify_modulus(b"", b"job-1")

    def test_bytes_are_the_ou_engines_and_headroom_grows_with_decryptions(
        self, secret: he.HeSecretKey
    ) -> None:
        adapter = secret.public_key
        assert ou.PublicKey.from_bytes(adapter.to_bytes()).to_bytes() == adapter.to_bytes()
        assert adapter.ciphertext_bytes == 128 and adapter.max_plaintext_bits == 340
        assert adapter.packing_bits(1) == 342 - 1 - 40
        assert adapter.packing_bits(2**20) == 342 - 1 - 40 - 20


@pytest.fixture(scope="module")
def both() -> dict[str, he.HeSecretKey]:
    """A key of each scheme, for the laws (hypothesis runs them outside the contract classes)."""
    insecure.enable_insecure_test_parameters()
    keys = {name: he.create_scheme(name).generate_keypair(768) for name in he.SCHEMES}
    insecure.disable_insecure_test_parameters()
    return keys


@pytest.mark.parametrize("name", sorted(he.SCHEMES))
@LAWS
@given(values=st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=8), data=st.data())
def test_the_homomorphic_laws(
    both: dict[str, he.HeSecretKey], name: str, values: list[int], data: st.DataObject
) -> None:
    secret = both[name]
    scalars = data.draw(
        st.lists(st.integers(-(2**30), 2**30), min_size=len(values), max_size=len(values))
    )
    x = secret.encryptor().encrypt(values)  # the key owner's
    y = secret.public_key.encryptor().encrypt(scalars)  # an evaluator's
    assert secret.decrypt(x + y) == [a + b for a, b in zip(values, scalars, strict=True)]
    assert secret.decrypt(x.add_plain(scalars)) == secret.decrypt(x + y)
    products = [a * b for a, b in zip(values, scalars, strict=True)]
    assert secret.decrypt(x.mul(scalars)) == products
    assert secret.decrypt(x.dot(scalars)) == [sum(products)]


def test_unknown_schemes_are_named() -> None:
    assert sorted(he.SCHEMES) == ["ou", "paillier"]
    with pytest.raises(ValueError, match=r"\['ou', 'paillier'\]"):
        he.create_scheme("rsa")
