"""A thin typed wrapper over TenSEAL's CKKS: contexts (secret vs public) and encrypted vectors.

This is the only module that imports ``tenseal``. It exposes what the protocols and the
benchmark need and nothing more:

- :class:`CkksContext` holds a TenSEAL context. :meth:`CkksContext.create` makes a *secret*
  context (it can decrypt); :meth:`CkksContext.make_public` returns a copy without the secret
  key, the one to send. :meth:`CkksContext.serialize` never writes the secret key, whichever
  context it is called on, and a secret context refuses to pickle.
- :class:`CkksVector` is an encrypted vector of reals: add, multiply (relinearised
  automatically, rescaled automatically), dot product, sum, serialisation, decryption.
- :meth:`CkksVector.rotate` rotates the slots through SEAL's Galois keys. TenSEAL's vector API has
  no rotation, so the result is a bare :class:`CkksCiphertext` that can be decrypted or
  serialised but not computed on further.

Not here yet: decryption noise flooding and validation of received contexts and vectors
(ARCHITECTURE.md lists them for this module); CKKS decryption results must not be shared with
parties who hold the ciphertexts until flooding exists (Li–Micciancio, EUROCRYPT 2021).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import tenseal as ts
import tenseal.sealapi as sealapi

#: Coefficient-modulus chains by ring degree: within the 128-bit-security bound of the
#: homomorphic encryption standard (218 and 438 bits) with room for 2 and 6 multiplications.
DEFAULT_COEFF_MOD_BITS: dict[int, tuple[int, ...]] = {
    8192: (60, 40, 40, 60),
    16384: (60, 40, 40, 40, 40, 40, 40, 60),
}


@dataclass(frozen=True)
class CkksParameters:
    """CKKS parameters.

    Attributes:
        poly_modulus_degree: Ring degree ``N`` (8192 or 16384); ``N/2`` slots per ciphertext.
        coeff_mod_bit_sizes: Bit sizes of the coefficient-modulus primes.
        global_scale_bits: ``log2`` of the encoding scale.
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = DEFAULT_COEFF_MOD_BITS[8192]
    global_scale_bits: int = 40

    def __post_init__(self) -> None:
        if self.poly_modulus_degree not in DEFAULT_COEFF_MOD_BITS:
            raise ValueError(f"poly_modulus_degree is one of {sorted(DEFAULT_COEFF_MOD_BITS)}")
        if not 20 <= self.global_scale_bits <= 60:
            raise ValueError("global_scale_bits lies in [20, 60]")

    @classmethod
    def for_degree(cls, poly_modulus_degree: int) -> CkksParameters:
        """The default parameters for a ring degree."""
        if poly_modulus_degree not in DEFAULT_COEFF_MOD_BITS:
            raise ValueError(f"poly_modulus_degree is one of {sorted(DEFAULT_COEFF_MOD_BITS)}")
        return cls(poly_modulus_degree, DEFAULT_COEFF_MOD_BITS[poly_modulus_degree])

    @property
    def slots(self) -> int:
        """Values one ciphertext holds."""
        return self.poly_modulus_degree // 2


class CkksContext:
    """A TenSEAL CKKS context, secret (can decrypt) or public (cannot).

    >>> secret = CkksContext.create(CkksParameters(), galois_keys=False)
    >>> public = CkksContext.load(secret.make_public().serialize())
    >>> vector = public.encrypt([1.0, 2.0])
    >>> [round(x, 3) for x in secret.vector_from_bytes(vector.serialize()).decrypt()]
    [1.0, 2.0]
    """

    __slots__ = ("_ctx",)

    def __init__(self, context: ts.Context) -> None:
        if not isinstance(context, ts.Context):
            raise TypeError("CkksContext wraps a tenseal.Context")
        self._ctx = context

    @classmethod
    def create(cls, params: CkksParameters, *, galois_keys: bool = True) -> CkksContext:
        """Create a secret context with fresh keys (relinearisation keys always).

        Args:
            params: The CKKS parameters.
            galois_keys: Also make rotation keys (needed for :meth:`CkksVector.dot`,
                :meth:`CkksVector.sum` and :meth:`CkksVector.rotate`; large: about 35 MB at
                ``N = 8192`` and 330 MB at 16384).
        """
        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        )
        context.global_scale = 2.0**params.global_scale_bits
        if galois_keys:
            context.generate_galois_keys()
        return cls(context)

    @classmethod
    def load(cls, data: bytes) -> CkksContext:
        """Load a public context that a peer serialised (it carries no secret key)."""
        return cls(ts.context_from(data))

    @property
    def is_private(self) -> bool:
        """Whether this context holds the secret key."""
        return bool(self._ctx.is_private())

    @property
    def poly_modulus_degree(self) -> int:
        """The ring degree ``N``."""
        return int(self._ctx.seal_context().data.key_context_data().parms().poly_modulus_degree())

    def make_public(self) -> CkksContext:
        """A copy of this context without the secret key: the one that may be sent."""
        public = self._ctx.copy()
        public.make_context_public()
        return CkksContext(public)

    def serialize(self, *, galois_keys: bool = True) -> bytes:
        """Serialise the public parts only: public, relinearisation and (optionally) Galois keys.

        The secret key is never written, even from a secret context.
        """
        return bytes(self._ctx.serialize(save_secret_key=False, save_galois_keys=galois_keys))

    def encrypt(self, values: Sequence[float] | Any) -> CkksVector:
        """Encrypt up to ``N/2`` reals into one vector (a list or a 1-D numpy array)."""
        items = values.tolist() if hasattr(values, "tolist") else list(values)
        if len(items) > self.poly_modulus_degree // 2:
            raise ValueError(f"at most {self.poly_modulus_degree // 2} values fit one vector")
        return CkksVector(self, ts.ckks_vector(self._ctx, [float(x) for x in items]))

    def vector_from_bytes(self, data: bytes) -> CkksVector:
        """Load a vector serialised by :meth:`CkksVector.serialize` under this context."""
        return CkksVector(self, ts.ckks_vector_from(self._ctx, data))

    def __repr__(self) -> str:
        kind = "secret" if self.is_private else "public"
        return f"CkksContext({kind}, N={self.poly_modulus_degree})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("send a CKKS context as make_public().serialize(), never by pickling")


class CkksVector:
    """An encrypted vector of reals under one :class:`CkksContext`."""

    __slots__ = ("_context", "_vector")

    def __init__(self, context: CkksContext, vector: ts.CKKSVector) -> None:
        self._context = context
        self._vector = vector

    @property
    def context(self) -> CkksContext:
        """The context the vector is encrypted under."""
        return self._context

    def __len__(self) -> int:
        return int(self._vector.size())

    def _operand(self, other: CkksVector | Sequence[float] | float) -> Any:
        if isinstance(other, CkksVector):
            return other._vector
        if isinstance(other, int | float):
            return float(other)
        return [float(x) for x in other]

    def __add__(self, other: CkksVector | Sequence[float] | float) -> CkksVector:
        """Slot-wise sum with another vector, a plain list or a scalar."""
        return CkksVector(self._context, self._vector + self._operand(other))

    def __mul__(self, other: CkksVector | Sequence[float] | float) -> CkksVector:
        """Slot-wise product; ciphertext products are relinearised and rescaled."""
        return CkksVector(self._context, self._vector * self._operand(other))

    def dot(self, other: CkksVector | Sequence[float]) -> CkksVector:
        """Inner product (a one-slot vector); needs Galois keys."""
        return CkksVector(self._context, self._vector.dot(self._operand(other)))

    def sum(self) -> CkksVector:
        """Sum of the slots (a one-slot vector); needs Galois keys."""
        return CkksVector(self._context, self._vector.sum())

    def rotate(self, steps: int) -> CkksCiphertext:
        """Rotate all ``N/2`` slots left by ``steps`` with SEAL's Galois keys.

        Raises:
            ValueError: If the context has no Galois keys.
        """
        ctx = self._context._ctx
        if not ctx.has_galois_keys():
            raise ValueError("rotation needs a context created with galois_keys=True")
        evaluator = sealapi.Evaluator(ctx.seal_context().data)
        out = sealapi.Ciphertext()
        evaluator.rotate_vector(self._vector.ciphertext()[0], steps, ctx.galois_keys().data, out)
        return CkksCiphertext(self._context, out, len(self))

    def serialize(self) -> bytes:
        """The ciphertext bytes, without the context (send the context once per job)."""
        return bytes(self._vector.serialize())

    def decrypt(self) -> list[float]:
        """Decrypt with the context's secret key.

        Raises:
            ValueError: If the context is public.
        """
        if not self._context.is_private:
            raise ValueError("only the secret context decrypts; this vector's context is public")
        return [float(x) for x in self._vector.decrypt()]


@dataclass(frozen=True)
class CkksCiphertext:
    """A bare SEAL ciphertext (a rotation's result) with the number of slots it represents.

    Attributes:
        context: The context it is encrypted under.
        ciphertext: The SEAL ciphertext.
        size: How many leading slots are meaningful.
    """

    context: CkksContext
    ciphertext: Any
    size: int

    def decrypt(self) -> list[float]:
        """Decrypt the first ``size`` slots with the context's secret key.

        Raises:
            ValueError: If the context is public.
        """
        ctx = self.context._ctx
        if not ctx.is_private():
            raise ValueError("only the secret context decrypts; this ciphertext's is public")
        seal = ctx.seal_context().data
        plaintext = sealapi.Plaintext()
        sealapi.Decryptor(seal, ctx.secret_key().data).decrypt(self.ciphertext, plaintext)
        values = sealapi.CKKSEncoder(seal).decode_double(plaintext)
        return [float(x) for x in values[: self.size]]
