"""One interface over the additively homomorphic engines, Paillier and Okamoto–Uchiyama.

The vertical protocols call this interface, never an engine module, so a job picks its scheme by
name (``create_scheme("paillier" | "ou")``) and runs the same code on either. Each engine keeps
its own module, wire layout and validation (``bund.compute.paillier``, ``bund.compute.ou``); the
classes here are thin adapters over them, and a Paillier job's bytes are exactly those of the
Paillier engine.

The interface, in the order a protocol meets it:

- :class:`HeScheme`: key generation (:meth:`~HeScheme.generate_keypair`), a peer's public key
  from its wire form, validated (:meth:`~HeScheme.public_key_from_bytes`), the key owner's
  sealed resume state (:meth:`~HeScheme.secret_key_from_resume_state`), and whether a key owner
  can prove its modulus well formed (:attr:`~HeScheme.proves_modulus`: Paillier's Π^mod,
  :meth:`HeSecretKey.prove_modulus` and :meth:`HePublicKey.verify_modulus`; none exists for OU).
- :class:`HePublicKey`: the wire form, ``max_plaintext_bits`` (signed plaintexts
  ``|v| < 2**max_plaintext_bits`` round-trip), the packing capacity
  (:meth:`~HePublicKey.packing_bits`), this party's own randomness
  (:meth:`~HePublicKey.encryptor`), received vectors, validated, and the matrix-vector product.
  An evaluator's randomness never rests on anything the key owner chose: a full ``r^N`` (Paillier,
  ``r`` uniform in ``Z*_N``: ``bund.compute.zk.randomness.FullRandomness``, never the owner's DJN
  base ``h_s``) or ``u^n`` (OU), each value used once.
- :class:`HeEncryptor`: encryption and batch encryption on an executor, packed encryption, and a
  pool of precomputed randomness (:meth:`~HeEncryptor.pool`).
- :class:`HeVector` / :class:`HePacked`: addition, plaintext addition, scalar multiplication,
  dot products, squeezing into packed slots, re-randomisation, serialisation (which
  re-randomises a computed vector with the *sender's own* randomness).
- :class:`HeSecretKey`: decryption for the key owner's own use, and the
  :class:`HeDecryptionService` through which every decryption that reaches a counterparty goes.
  For Okamoto–Uchiyama it is the range guard of :class:`bund.compute.ou.DecryptionService`
  (OU falls to a chosen-ciphertext attack that factors ``n``); Paillier decryptions of any
  ciphertext reveal nothing about the key, so its service passes through.

>>> scheme = create_scheme("ou")
>>> secret = scheme.generate_keypair(2048)
>>> public = scheme.public_key_from_bytes(secret.public_key.to_bytes())
>>> vector = public.encryptor().encrypt([3, -4])
>>> secret.decrypt(public.matvec([[2, 1], [0, 1]], vector))
[2, -4]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, Self, TypeVar

from bund.compute import ou
from bund.compute import paillier as pl
from bund.compute.encoding import PackingLayout, pack_slots, squeeze_slots
from bund.compute.executor import Executor
from bund.compute.modexp import as_ints
from bund.compute.zk.mod import ModProof, prove_mod, verify_mod
from bund.compute.zk.randomness import FullRandomness

T = TypeVar("T")


class HePublicKey(ABC):
    """A public key of one scheme, as the protocols use it."""

    @property
    @abstractmethod
    def scheme(self) -> str:
        """The scheme's name (a key of :data:`SCHEMES`)."""

    @property
    @abstractmethod
    def bits(self) -> int:
        """Bit length of the modulus."""

    @property
    @abstractmethod
    def key_id(self) -> bytes:
        """16 bytes naming the key on the wire."""

    @property
    @abstractmethod
    def max_plaintext_bits(self) -> int:
        """Signed plaintexts with ``|v| < 2**max_plaintext_bits`` encrypt and decrypt exactly."""

    @property
    @abstractmethod
    def ciphertext_bytes(self) -> int:
        """Bytes of one ciphertext on the wire."""

    @abstractmethod
    def to_bytes(self) -> bytes:
        """The key's wire form (sent once per job)."""

    @abstractmethod
    def packing_bits(self, decryptions: int) -> int:
        """Bits a packed plaintext may use when up to ``decryptions`` decryptions are released.

        Paillier: ``bits - 2`` whatever the count. OU: below ``p`` by the decryption guard's
        headroom, ``40 + ⌈log2(decryptions)⌉`` bits.
        """

    @abstractmethod
    def encryptor(self) -> HeEncryptor:
        """This party's own randomness for encrypting and re-randomising under the key.

        An evaluator's: full-size values from ``secrets`` that rest on nothing the key owner chose
        (Paillier ``r^N``, OU ``u^n``), so what it re-randomises hides how it was computed from
        the key owner (once the modulus is proved, :meth:`verify_modulus`, or trusted).
        """

    @abstractmethod
    def verify_modulus(self, proof: bytes, context: bytes) -> None:
        """Check the key owner's proof that the modulus is well formed, before using the key.

        Paillier: Π^mod (``bund.compute.zk.mod``: a Paillier–Blum modulus with
        ``gcd(N, φ(N)) = 1``, so an evaluator's ``r^N`` re-randomises completely), with the
        Fiat–Shamir challenge bound to the modulus, the key id and ``context``.

        Raises:
            InvalidMessageError: If the proof is malformed.
            ProofError: If it does not verify: the key must not be used.
            NotImplementedError: Under OU, for which no such proof exists (an evaluator runs OU
                only with a key holder its policy trusts).
        """

    @abstractmethod
    def vector_from_bytes(self, data: bytes, *, frac_bits: int, max_count: int) -> HeVector:
        """Parse and validate a received ciphertext vector (key id, exponent, each ciphertext)."""

    @abstractmethod
    def packed_from_bytes(
        self, data: bytes, *, slot_bits: int, slots: int, count: int, bound: int, frac_bits: int
    ) -> HePacked:
        """Parse and validate received packed ciphertexts; the layout is the protocol's."""

    @abstractmethod
    def matvec(
        self,
        matrix: Sequence[Sequence[int]] | Any,
        vector: HeVector,
        matrix_frac_bits: int = 0,
        executor: Executor | None = None,
    ) -> HeVector:
        """Encrypted ``M·d`` for a plaintext integer matrix (Pippenger multi-exponentiation)."""


class HeEncryptor(ABC):
    """A source of randomness under one key: it encrypts, and re-randomises what others send."""

    @property
    @abstractmethod
    def public_key(self) -> HePublicKey:
        """The key."""

    @property
    @abstractmethod
    def is_key_owner(self) -> bool:
        """Whether this is the key owner's (faster) encryptor."""

    @abstractmethod
    def encrypt(
        self, values: Sequence[int] | Any, *, frac_bits: int = 0, executor: Executor | None = None
    ) -> HeVector:
        """Encrypt signed fixed-point integers, one per ciphertext, in batches on ``executor``."""

    @abstractmethod
    def encrypt_packed(
        self,
        values: Sequence[int] | Any,
        layout: PackingLayout,
        capacity_bits: int,
        *,
        frac_bits: int = 0,
        executor: Executor | None = None,
    ) -> HePacked:
        """Pack signed integers by ``layout`` into plaintexts of ``capacity_bits`` and encrypt."""

    @abstractmethod
    def pool(self, capacity: int, low_water: int | None = None) -> HePool:
        """A pool of this encryptor's randomness, computed ahead (see :class:`HePool`)."""


class HePool(HeEncryptor):
    """Precomputed randomness, each value handed out once; refilled by the caller."""

    @abstractmethod
    def __len__(self) -> int:
        """Values held now."""

    @abstractmethod
    def refill(self, count: int | None = None, executor: Executor | None = None) -> int:
        """Compute up to ``count`` values (default: up to capacity); return how many were added."""

    @abstractmethod
    def run_refills(self, batch: int = 256) -> None:
        """Keep the pool topped up until :meth:`close`; run it in a thread the node owns."""

    @abstractmethod
    def close(self) -> None:
        """Stop :meth:`run_refills`; the pool stays usable."""


class HeVector(ABC):
    """Ciphertexts of fixed-point values under one key, one value each."""

    @property
    @abstractmethod
    def public_key(self) -> HePublicKey:
        """The key."""

    @property
    @abstractmethod
    def frac_bits(self) -> int:
        """Fixed-point exponent of every element."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of ciphertexts."""

    @abstractmethod
    def __add__(self, other: Self) -> Self:
        """Element-wise sum (same key and exponent)."""

    @abstractmethod
    def add_plain(self, values: Sequence[int] | Any) -> Self:
        """Add signed integers encoded with this vector's exponent."""

    @abstractmethod
    def mul(
        self,
        scalars: Sequence[int] | Any,
        scalar_frac_bits: int = 0,
        executor: Executor | None = None,
    ) -> Self:
        """Element-wise products with signed integer scalars; exponents add."""

    @abstractmethod
    def dot(
        self,
        scalars: Sequence[int] | Any,
        scalar_frac_bits: int = 0,
        executor: Executor | None = None,
    ) -> Self:
        """The encrypted ``Σ x_i·d_i`` as a one-element vector; exponents add."""

    @abstractmethod
    def squeeze(self, bound: int, capacity_bits: int) -> HePacked:
        """Pack the elements (each within ``±bound``) into plaintexts of ``capacity_bits`` bits."""

    @abstractmethod
    def split(self, per: int) -> list[Self]:
        """Consecutive parts of at most ``per`` ciphertexts (one part when empty)."""

    @abstractmethod
    def extended(self, others: Sequence[Self]) -> Self:
        """This vector's ciphertexts followed by those of ``others`` (same key and exponent)."""

    @abstractmethod
    def rerandomised(self, source: HeEncryptor) -> Self:
        """The same plaintexts under fresh randomness from ``source``."""

    @abstractmethod
    def to_bytes(self, source: HeEncryptor) -> bytes:
        """The wire form, re-randomised by ``source`` first unless the vector is fresh."""


class HePacked(ABC):
    """Ciphertexts that each hold ``slots`` signed values ``slot_bits`` apart."""

    @property
    @abstractmethod
    def public_key(self) -> HePublicKey:
        """The key."""

    @property
    @abstractmethod
    def layout(self) -> tuple[int, int, int, int]:
        """``(slot_bits, slots, count, bound)``: what both sides derive from the protocol."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of ciphertexts."""

    @abstractmethod
    def __add__(self, other: Self) -> Self:
        """Slot-wise sum (same layout); refuses a sum that could overflow a slot."""

    @abstractmethod
    def mul_scalar(self, scalar: int, scalar_frac_bits: int = 0) -> Self:
        """Multiply every slot by one signed integer; refuses what could overflow a slot."""

    @abstractmethod
    def to_bytes(self, source: HeEncryptor) -> bytes:
        """The wire form, re-randomised by ``source`` first unless fresh."""


class HeDecryptionService(ABC):
    """The key owner's decryptions that reach a counterparty."""

    @property
    @abstractmethod
    def retired(self) -> bool:
        """Whether the key was retired and decrypts nothing more."""

    @abstractmethod
    def decrypt_packed(self, packed: HePacked, executor: Executor | None = None) -> list[int]:
        """Decrypt packed values for a counterparty (OU: only within the layout's range)."""


class HeSecretKey(ABC):
    """A secret key of one scheme; it never leaves the process."""

    @property
    @abstractmethod
    def public_key(self) -> HePublicKey:
        """The public half."""

    @abstractmethod
    def encryptor(self) -> HeEncryptor:
        """The key owner's fast encryptor (it holds the factors: in-process executors only)."""

    @abstractmethod
    def encryptor_for(self, executor: Executor) -> HeEncryptor:
        """The key owner's fastest encryptor for batches on ``executor``.

        Its own when ``executor`` runs in this process. Otherwise Paillier's public DJN
        encryptor (as fast, and it pickles), and OU's own encryptor run inline (OU's public path
        costs a full exponentiation per value).
        """

    @abstractmethod
    def export_for_resume(self) -> bytes:
        """The key as this node's sealed resume state (for ``ctx.save_state`` only)."""

    @abstractmethod
    def decrypt(self, vector: HeVector, executor: Executor | None = None) -> list[int]:
        """Decrypt for the key owner's own use (never released to a counterparty)."""

    @abstractmethod
    def decrypt_packed(self, packed: HePacked, executor: Executor | None = None) -> list[int]:
        """Decrypt packed values for the key owner's own use."""

    @abstractmethod
    def decryption_service(self, max_decryptions: int, used: int = 0) -> HeDecryptionService:
        """The service for decryptions that reach a counterparty (at most ``max_decryptions``)."""

    @abstractmethod
    def prove_modulus(self, context: bytes) -> bytes:
        """The wire form of a proof that this key's modulus is well formed, bound to ``context``.

        Paillier: Π^mod with 80 repetitions (about 41 KB at 2048 bits), which an evaluator checks
        with :meth:`HePublicKey.verify_modulus` and the same ``context``.

        Raises:
            NotImplementedError: Under OU, for which no such proof exists.
        """


class HeScheme(ABC):
    """One additively homomorphic engine, chosen per job by name."""

    @property
    @abstractmethod
    def name(self) -> str:
        """The name a job spec uses (``scheme = "paillier" | "ou"``)."""

    @property
    @abstractmethod
    def min_key_bits(self) -> int:
        """Smallest modulus accepted without the test-only switch."""

    @abstractmethod
    def generate_keypair(self, bits: int) -> HeSecretKey:
        """A fresh key pair with a modulus of ``bits`` bits (the public half is ``.public_key``)."""

    @abstractmethod
    def public_key_from_bytes(self, data: bytes) -> HePublicKey:
        """A peer's public key from its wire form, validated (size, structure, bases)."""

    @abstractmethod
    def secret_key_from_resume_state(self, data: bytes) -> HeSecretKey:
        """The key owner's key from its sealed resume state."""

    @property
    @abstractmethod
    def proves_modulus(self) -> bool:
        """Whether a key owner proves its modulus well formed (:meth:`HeSecretKey.prove_modulus`).

        Paillier does (Π^mod); OU cannot, so an evaluator of an OU key must trust its owner.
        """


def _require(value: object, kind: type[T], what: str) -> T:
    if not isinstance(value, kind):
        raise TypeError(f"{what} of another scheme or kind: {type(value).__name__}")
    return value


# --- Paillier -------------------------------------------------------------------------------


class _PaillierPublicKey(HePublicKey):
    __slots__ = ("key",)

    def __init__(self, key: pl.PublicKey) -> None:
        self.key = key

    @property
    def scheme(self) -> str:
        return "paillier"

    @property
    def bits(self) -> int:
        return int(self.key.bits)

    @property
    def key_id(self) -> bytes:
        return self.key.key_id

    @property
    def max_plaintext_bits(self) -> int:
        # |v| ≤ n/3 - 1 (phe's convention) holds for |v| < 2^(bits-3), as n ≥ 2^(bits-1).
        return self.bits - 3

    @property
    def ciphertext_bytes(self) -> int:
        return 2 * ((self.bits + 7) // 8)

    def to_bytes(self) -> bytes:
        return self.key.to_bytes()

    def packing_bits(self, decryptions: int) -> int:
        if decryptions < 1:
            raise ValueError("decryptions is at least 1")
        return self.bits - 2

    def encryptor(self) -> _PaillierEncryptor:
        # r^N with a full r: the key owner's h_s may have small order (bund.compute.zk.randomness).
        return _PaillierEncryptor(FullRandomness(self.key), self)

    def verify_modulus(self, proof: bytes, context: bytes) -> None:
        verify_mod(self.key, ModProof.from_bytes(proof), context)

    def vector_from_bytes(self, data: bytes, *, frac_bits: int, max_count: int) -> _PaillierVector:
        vector = pl.EncryptedVector.from_bytes(
            self.key, data, frac_bits=frac_bits, max_count=max_count
        )
        return _PaillierVector(vector, self)

    def packed_from_bytes(
        self, data: bytes, *, slot_bits: int, slots: int, count: int, bound: int, frac_bits: int
    ) -> _PaillierPacked:
        packed = pl.PackedVector.from_bytes(
            self.key,
            data,
            slot_bits=slot_bits,
            slots=slots,
            count=count,
            bound=bound,
            frac_bits=frac_bits,
        )
        return _PaillierPacked(packed, self)

    def matvec(
        self,
        matrix: Sequence[Sequence[int]] | Any,
        vector: HeVector,
        matrix_frac_bits: int = 0,
        executor: Executor | None = None,
    ) -> _PaillierVector:
        inner = _require(vector, _PaillierVector, "a vector").vector
        return _PaillierVector(pl.matvec(matrix, inner, matrix_frac_bits, executor), self)


class _PaillierEncryptor(HeEncryptor):
    __slots__ = ("_public", "source")

    def __init__(
        self, source: pl.Encryptor | pl.ObfuscatorPool | FullRandomness, public: _PaillierPublicKey
    ) -> None:
        self.source = source
        self._public = public

    @property
    def public_key(self) -> _PaillierPublicKey:
        return self._public

    @property
    def is_key_owner(self) -> bool:
        return isinstance(self.source, pl.Encryptor) and self.source.is_key_owner

    def encrypt(
        self, values: Sequence[int] | Any, *, frac_bits: int = 0, executor: Executor | None = None
    ) -> _PaillierVector:
        vector = pl.encrypt(self.source, values, frac_bits=frac_bits, executor=executor)
        return _PaillierVector(vector, self._public)

    def encrypt_packed(
        self,
        values: Sequence[int] | Any,
        layout: PackingLayout,
        capacity_bits: int,
        *,
        frac_bits: int = 0,
        executor: Executor | None = None,
    ) -> _PaillierPacked:
        key = self._public.key
        _check_capacity(capacity_bits, self._public.bits - 2)
        ints = as_ints(values, "values")
        layout.check_values(ints)
        per = layout.slots_within(capacity_bits)
        cts = self.source.encrypt_raw(pack_slots(ints, layout.slot_bits, per, key.n), executor)
        bound = layout.value_bound
        packed = pl.PackedVector(
            key, tuple(cts), layout.slot_bits, per, len(ints), bound, frac_bits, fresh=True
        )
        return _PaillierPacked(packed, self._public)

    def pool(self, capacity: int, low_water: int | None = None) -> _PaillierPool:
        if isinstance(self.source, FullRandomness):
            if capacity < 1:
                raise ValueError("capacity is at least 1")
            full = FullRandomness(self._public.key, capacity, low_water)
            return _PaillierPool(full, self._public)
        source = _require(self.source, pl.Encryptor, "a pool's encryptor")
        return _PaillierPool(pl.ObfuscatorPool(source, capacity, low_water), self._public)


class _PaillierPool(_PaillierEncryptor, HePool):
    __slots__ = ("_pool",)

    def __init__(
        self, pool: pl.ObfuscatorPool | FullRandomness, public: _PaillierPublicKey
    ) -> None:
        super().__init__(pool, public)
        self._pool = pool

    def __len__(self) -> int:
        return len(self._pool)

    def refill(self, count: int | None = None, executor: Executor | None = None) -> int:
        return self._pool.refill(count, executor)

    def run_refills(self, batch: int = 256) -> None:
        self._pool.run_refills(batch)

    def close(self) -> None:
        self._pool.close()


class _PaillierVector(HeVector):
    __slots__ = ("_public", "vector")

    def __init__(self, vector: pl.EncryptedVector, public: _PaillierPublicKey) -> None:
        self.vector = vector
        self._public = public

    @property
    def public_key(self) -> _PaillierPublicKey:
        return self._public

    @property
    def frac_bits(self) -> int:
        return self.vector.frac_bits

    def __len__(self) -> int:
        return len(self.vector)

    def _wrap(self, vector: pl.EncryptedVector) -> _PaillierVector:
        return _PaillierVector(vector, self._public)

    def __add__(self, other: _PaillierVector) -> _PaillierVector:
        return self._wrap(self.vector + _require(other, _PaillierVector, "a vector").vector)

    def add_plain(self, values: Sequence[int] | Any) -> _PaillierVector:
        return self._wrap(self.vector.add_plain(values))

    def mul(
        self,
        scalars: Sequence[int] | Any,
        scalar_frac_bits: int = 0,
        executor: Executor | None = None,
    ) -> _PaillierVector:
        return self._wrap(self.vector.mul(scalars, scalar_frac_bits, executor))

    def dot(
        self,
        scalars: Sequence[int] | Any,
        scalar_frac_bits: int = 0,
        executor: Executor | None = None,
    ) -> _PaillierVector:
        return self._wrap(self.vector.dot(scalars, scalar_frac_bits, executor))

    def squeeze(self, bound: int, capacity_bits: int) -> _PaillierPacked:
        # EncryptedVector.squeeze(bound) is squeeze(bound, bits - 2); a protocol may keep more room.
        key, cts = self.vector.public_key, self.vector.ciphertexts
        _check_capacity(capacity_bits, self._public.bits - 2)
        width, per = squeeze_slots(bound, capacity_bits)
        packed = [pl.squeeze_raw(key, cts[i : i + per], width) for i in range(0, len(cts), per)]
        frac_bits = self.vector.frac_bits
        vector = pl.PackedVector(key, tuple(packed), width, per, len(cts), bound, frac_bits)
        return _PaillierPacked(vector, self._public)

    def split(self, per: int) -> list[_PaillierVector]:
        if per < 1:
            raise ValueError("per is at least 1")
        v = self.vector
        return [
            self._wrap(
                pl.EncryptedVector(v.public_key, v.ciphertexts[i : i + per], v.frac_bits, v.fresh)
            )
            for i in range(0, max(1, len(v)), per)
        ]

    def extended(self, others: Sequence[_PaillierVector]) -> _PaillierVector:
        v = self.vector
        parts = [v, *(_require(o, _PaillierVector, "a vector").vector for o in others)]
        _check_joinable([(p.public_key.n, p.frac_bits) for p in parts])
        cts = tuple(c for p in parts for c in p.ciphertexts)
        fresh = all(p.fresh for p in parts)
        return self._wrap(pl.EncryptedVector(v.public_key, cts, v.frac_bits, fresh))

    def rerandomised(self, source: HeEncryptor) -> _PaillierVector:
        inner = _require(source, _PaillierEncryptor, "a randomness source").source
        return self._wrap(self.vector.rerandomized(inner))

    def to_bytes(self, source: HeEncryptor) -> bytes:
        return self.vector.to_bytes(_require(source, _PaillierEncryptor, "a source").source)


class _PaillierPacked(HePacked):
    __slots__ = ("_public", "packed")

    def __init__(self, packed: pl.PackedVector, public: _PaillierPublicKey) -> None:
        self.packed = packed
        self._public = public

    @property
    def public_key(self) -> _PaillierPublicKey:
        return self._public

    @property
    def layout(self) -> tuple[int, int, int, int]:
        p = self.packed
        return p.slot_bits, p.slots, p.count, p.bound

    def __len__(self) -> int:
        return len(self.packed.ciphertexts)

    def __add__(self, other: _PaillierPacked) -> _PaillierPacked:
        right = _require(other, _PaillierPacked, "a packed vector").packed
        return _PaillierPacked(self.packed + right, self._public)

    def mul_scalar(self, scalar: int, scalar_frac_bits: int = 0) -> _PaillierPacked:
        return _PaillierPacked(self.packed.mul_scalar(scalar, scalar_frac_bits), self._public)

    def to_bytes(self, source: HeEncryptor) -> bytes:
        return self.packed.to_bytes(_require(source, _PaillierEncryptor, "a source").source)


class _PaillierDecryptionService(HeDecryptionService):
    """Paillier decryption of any ciphertext reveals nothing about the key: it passes through."""

    __slots__ = ("_key",)

    def __init__(self, key: pl.PrivateKey) -> None:
        self._key = key

    @property
    def retired(self) -> bool:
        return False

    def decrypt_packed(self, packed: HePacked, executor: Executor | None = None) -> list[int]:
        inner = _require(packed, _PaillierPacked, "a packed vector").packed
        return pl.decrypt_packed(self._key, inner, executor)


class _PaillierSecretKey(HeSecretKey):
    __slots__ = ("_public", "key")

    def __init__(self, key: pl.PrivateKey) -> None:
        self.key = key
        self._public = _PaillierPublicKey(key.public_key)

    @property
    def public_key(self) -> _PaillierPublicKey:
        return self._public

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Paillier private key never leaves the process that holds it")

    def encryptor(self) -> _PaillierEncryptor:
        return _PaillierEncryptor(pl.Encryptor(self.key), self._public)

    def encryptor_for(self, executor: Executor) -> _PaillierEncryptor:
        if executor.in_process:
            return self.encryptor()
        # The owner may use its own h_s: the public DJN encryptor (it pickles as its key).
        return _PaillierEncryptor(pl.Encryptor(self.key.public_key), self._public)

    def export_for_resume(self) -> bytes:
        return self.key.export_for_resume()

    def decrypt(self, vector: HeVector, executor: Executor | None = None) -> list[int]:
        inner = _require(vector, _PaillierVector, "a vector").vector
        return pl.decrypt(self.key, inner, executor)

    def decrypt_packed(self, packed: HePacked, executor: Executor | None = None) -> list[int]:
        inner = _require(packed, _PaillierPacked, "a packed vector").packed
        return pl.decrypt_packed(self.key, inner, executor)

    def decryption_service(self, max_decryptions: int, used: int = 0) -> _PaillierDecryptionService:
        _check_counts(max_decryptions, used)
        return _PaillierDecryptionService(self.key)

    def prove_modulus(self, context: bytes) -> bytes:
        return prove_mod(self.key, context).to_bytes()


class _PaillierScheme(HeScheme):
    """Paillier (``bund.compute.paillier``): DCR, DJN short randomness, ``phe``-compatible."""

    @property
    def name(self) -> str:
        return "paillier"

    @property
    def min_key_bits(self) -> int:
        return pl.MIN_KEY_BITS

    def generate_keypair(self, bits: int) -> _PaillierSecretKey:
        return _PaillierSecretKey(pl.generate_keypair(bits)[1])

    def public_key_from_bytes(self, data: bytes) -> _PaillierPublicKey:
        return _PaillierPublicKey(pl.PublicKey.from_bytes(data))

    def secret_key_from_resume_state(self, data: bytes) -> _PaillierSecretKey:
        return _PaillierSecretKey(pl.PrivateKey.from_resume_state(data))

    @property
    def proves_modulus(self) -> bool:
        return True


# --- Okamoto–Uchiyama -------------------------------------------------------------------------

_NO_OU_PROOF = (
    "no proof exists that an Okamoto–Uchiyama modulus is well formed: an evaluator runs OU only "
    "with a key holder its policy trusts (docs/ou.md)"
)


class _OuPublicKey(HePublicKey):
    __slots__ = ("key",)

    def __init__(self, key: ou.PublicKey) -> None:
        self.key = key

    @property
    def scheme(self) -> str:
        return "ou"

    @property
    def bits(self) -> int:
        return int(self.key.bits)

    @property
    def key_id(self) -> bytes:
        return self.key.key_id

    @property
    def max_plaintext_bits(self) -> int:
        return self.key.max_plaintext_bits

    @property
    def ciphertext_bytes(self) -> int:
        return self.key.ciphertext_bytes

    def to_bytes(self) -> bytes:
        return self.key.to_bytes()

    def packing_bits(self, decryptions: int) -> int:
        return self.key.packing_bits(decryptions)

    def encryptor(self) -> _OuEncryptor:
        return _OuEncryptor(ou.Encryptor(self.key), self)

    def verify_modulus(self, proof: bytes, context: bytes) -> None:
        raise NotImplementedError(_NO_OU_PROOF)

    def vector_from_bytes(self, data: bytes, *, frac_bits: int, max_count: int) -> _OuVector:
        vector = ou.EncryptedVector.from_bytes(
            self.key, data, frac_bits=frac_bits, max_count=max_count
        )
        return _OuVector(vector, self)

    def packed_from_bytes(
        self, data: bytes, *, slot_bits: int, slots: int, count: int, bound: int, frac_bits: int
    ) -> _OuPacked:
        packed = ou.PackedVector.from_bytes(
            self.key,
            data,
            slot_bits=slot_bits,
            slots=slots,
            count=count,
            bound=bound,
            frac_bits=frac_bits,
        )
        return _OuPacked(packed, self)

    def matvec(
        self,
        matrix: Sequence[Sequence[int]] | Any,
        vector: HeVector,
        matrix_frac_bits: int = 0,
        executor: Executor | None = None,
    ) -> _OuVector:
        inner = _require(vector, _OuVector, "a vector").vector
        return _OuVector(ou.matvec(matrix, inner, matrix_frac_bits, executor), self)


class _OuEncryptor(HeEncryptor):
    __slots__ = ("_public", "source")

    def __init__(self, source: ou.Encryptor | ou.ObfuscatorPool, public: _OuPublicKey) -> None:
        self.source = source
        self._public = public

    @property
    def public_key(self) -> _OuPublicKey:
        return self._public

    @property
    def is_key_owner(self) -> bool:
        return isinstance(self.source, ou.Encryptor) and self.source.is_key_owner

    def encrypt(
        self, values: Sequence[int] | Any, *, frac_bits: int = 0, executor: Executor | None = None
    ) -> _OuVector:
        vector = ou.encrypt(self.source, values, frac_bits=frac_bits, executor=executor)
        return _OuVector(vector, self._public)

    def encrypt_packed(
        self,
        values: Sequence[int] | Any,
        layout: PackingLayout,
        capacity_bits: int,
        *,
        frac_bits: int = 0,
        executor: Executor | None = None,
    ) -> _OuPacked:
        packed = ou.encrypt_packed(
            self.source, values, layout, capacity_bits, frac_bits=frac_bits, executor=executor
        )
        return _OuPacked(packed, self._public)

    def pool(self, capacity: int, low_water: int | None = None) -> _OuPool:
        source = _require(self.source, ou.Encryptor, "a pool's encryptor")
        return _OuPool(ou.ObfuscatorPool(source, capacity, low_water), self._public)


class _OuPool(_OuEncryptor, HePool):
    __slots__ = ("_pool",)

    def __init__(self, pool: ou.ObfuscatorPool, public: _OuPublicKey) -> None:
        super().__init__(pool, public)
        self._pool = pool

    def __len__(self) -> int:
        return len(self._pool)

    def refill(self, count: int | None = None, executor: Executor | None = None) -> int:
        return self._pool.refill(count, executor)

    def run_refills(self, batch: int = 256) -> None:
        self._pool.run_refills(batch)

    def close(self) -> None:
        self._pool.close()


class _OuVector(HeVector):
    __slots__ = ("_public", "vector")

    def __init__(self, vector: ou.EncryptedVector, public: _OuPublicKey) -> None:
        self.vector = vector
        self._public = public

    @property
    def public_key(self) -> _OuPublicKey:
        return self._public

    @property
    def frac_bits(self) -> int:
        return self.vector.frac_bits

    def __len__(self) -> int:
        return len(self.vector)

    def _wrap(self, vector: ou.EncryptedVector) -> _OuVector:
        return _OuVector(vector, self._public)

    def __add__(self, other: _OuVector) -> _OuVector:
        return self._wrap(self.vector + _require(other, _OuVector, "a vector").vector)

    def add_plain(self, values: Sequence[int] | Any) -> _OuVector:
        return self._wrap(self.vector.add_plain(values))

    def mul(
        self,
        scalars: Sequence[int] | Any,
        scalar_frac_bits: int = 0,
        executor: Executor | None = None,
    ) -> _OuVector:
        return self._wrap(self.vector.mul(scalars, scalar_frac_bits, executor))

    def dot(
        self,
        scalars: Sequence[int] | Any,
        scalar_frac_bits: int = 0,
        executor: Executor | None = None,
    ) -> _OuVector:
        return self._wrap(self.vector.dot(scalars, scalar_frac_bits, executor))

    def squeeze(self, bound: int, capacity_bits: int) -> _OuPacked:
        return _OuPacked(self.vector.squeeze(bound, capacity_bits), self._public)

    def split(self, per: int) -> list[_OuVector]:
        return [self._wrap(part) for part in self.vector.split(per)]

    def extended(self, others: Sequence[_OuVector]) -> _OuVector:
        v = self.vector
        parts = [v, *(_require(o, _OuVector, "a vector").vector for o in others)]
        _check_joinable([(p.public_key.n, p.frac_bits) for p in parts])
        cts = tuple(c for p in parts for c in p.ciphertexts)
        fresh = all(p.fresh for p in parts)
        return self._wrap(ou.EncryptedVector(v.public_key, cts, v.frac_bits, fresh))

    def rerandomised(self, source: HeEncryptor) -> _OuVector:
        inner = _require(source, _OuEncryptor, "a randomness source").source
        return self._wrap(self.vector.rerandomized(inner))

    def to_bytes(self, source: HeEncryptor) -> bytes:
        return self.vector.to_bytes(_require(source, _OuEncryptor, "a source").source)


class _OuPacked(HePacked):
    __slots__ = ("_public", "packed")

    def __init__(self, packed: ou.PackedVector, public: _OuPublicKey) -> None:
        self.packed = packed
        self._public = public

    @property
    def public_key(self) -> _OuPublicKey:
        return self._public

    @property
    def layout(self) -> tuple[int, int, int, int]:
        p = self.packed
        return p.slot_bits, p.slots, p.count, p.bound

    def __len__(self) -> int:
        return len(self.packed.ciphertexts)

    def __add__(self, other: _OuPacked) -> _OuPacked:
        right = _require(other, _OuPacked, "a packed vector").packed
        return _OuPacked(self.packed + right, self._public)

    def mul_scalar(self, scalar: int, scalar_frac_bits: int = 0) -> _OuPacked:
        return _OuPacked(self.packed.mul_scalar(scalar, scalar_frac_bits), self._public)

    def to_bytes(self, source: HeEncryptor) -> bytes:
        return self.packed.to_bytes(_require(source, _OuEncryptor, "a source").source)


class _OuDecryptionService(HeDecryptionService):
    """The range guard of :class:`bund.compute.ou.DecryptionService`."""

    __slots__ = ("_service",)

    def __init__(self, service: ou.DecryptionService) -> None:
        self._service = service

    @property
    def retired(self) -> bool:
        return self._service.retired

    def decrypt_packed(self, packed: HePacked, executor: Executor | None = None) -> list[int]:
        inner = _require(packed, _OuPacked, "a packed vector").packed
        return self._service.decrypt_packed(inner, executor)


class _OuSecretKey(HeSecretKey):
    __slots__ = ("_public", "key")

    def __init__(self, key: ou.PrivateKey) -> None:
        self.key = key
        self._public = _OuPublicKey(key.public_key)

    @property
    def public_key(self) -> _OuPublicKey:
        return self._public

    def __reduce__(self) -> NoReturn:
        raise TypeError("an OU private key never leaves the process that holds it")

    def encryptor(self) -> _OuEncryptor:
        return _OuEncryptor(ou.Encryptor(self.key), self._public)

    def encryptor_for(self, executor: Executor) -> _OuEncryptor:
        # The owner's encryptor runs inline on an executor outside this process (ou.Encryptor).
        return self.encryptor()

    def export_for_resume(self) -> bytes:
        return self.key.export_for_resume()

    def decrypt(self, vector: HeVector, executor: Executor | None = None) -> list[int]:
        inner = _require(vector, _OuVector, "a vector").vector
        return ou.decrypt(self.key, inner, executor)

    def decrypt_packed(self, packed: HePacked, executor: Executor | None = None) -> list[int]:
        inner = _require(packed, _OuPacked, "a packed vector").packed
        return ou.decrypt_packed(self.key, inner, executor)

    def decryption_service(self, max_decryptions: int, used: int = 0) -> _OuDecryptionService:
        return _OuDecryptionService(ou.DecryptionService(self.key, max_decryptions, used))

    def prove_modulus(self, context: bytes) -> bytes:
        raise NotImplementedError(_NO_OU_PROOF)


class _OuScheme(HeScheme):
    """Okamoto–Uchiyama (``bund.compute.ou``): p-subgroup assumption, guarded decryption."""

    @property
    def name(self) -> str:
        return "ou"

    @property
    def min_key_bits(self) -> int:
        return ou.MIN_KEY_BITS

    def generate_keypair(self, bits: int) -> _OuSecretKey:
        return _OuSecretKey(ou.generate_keypair(bits)[1])

    def public_key_from_bytes(self, data: bytes) -> _OuPublicKey:
        return _OuPublicKey(ou.PublicKey.from_bytes(data))

    def secret_key_from_resume_state(self, data: bytes) -> _OuSecretKey:
        return _OuSecretKey(ou.PrivateKey.from_resume_state(data))

    @property
    def proves_modulus(self) -> bool:
        return False


def _check_capacity(capacity_bits: int, most: int) -> None:
    if not 1 <= capacity_bits <= most:
        raise ValueError(f"capacity_bits lies in [1, {most}] for this key")


def _check_joinable(keys_and_exponents: Sequence[tuple[Any, int]]) -> None:
    if len(set(keys_and_exponents)) > 1:
        raise ValueError("join vectors under the same key with the same frac_bits")


def _check_counts(max_decryptions: int, used: int) -> None:
    if max_decryptions < 1 or not 0 <= used <= max_decryptions:
        raise ValueError("max_decryptions is at least 1 and used lies in [0, max_decryptions]")


#: Every scheme a job may name, by name.
SCHEMES: Mapping[str, HeScheme] = {"paillier": _PaillierScheme(), "ou": _OuScheme()}


def create_scheme(name: str) -> HeScheme:
    """The scheme called ``name`` (``"paillier"`` or ``"ou"``).

    Raises:
        ValueError: If no scheme has that name.
    """
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(f"unknown scheme {name!r}; choose one of {sorted(SCHEMES)}") from None
