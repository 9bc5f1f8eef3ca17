"""A thin typed wrapper over TenSEAL's CKKS: contexts, vectors, validation, flooding, scoring.

This is the only module that imports ``tenseal``. It exposes what the protocols and the
benchmark need and nothing more:

- :class:`CkksContext` holds a TenSEAL context. :meth:`CkksContext.create` makes a *secret*
  context (it can decrypt); :meth:`CkksContext.make_public` returns a copy without the secret
  key, the one to send. :meth:`CkksContext.serialize` never writes the secret key, whichever
  context it is called on, and a secret context refuses to pickle.
- :class:`CkksVector` is an encrypted vector of reals: add, subtract, multiply (relinearised
  and rescaled automatically), dot product, sum, serialisation, decryption.
- :meth:`CkksVector.rotate` rotates the slots through SEAL's Galois keys. TenSEAL's vector API has
  no rotation, so the result is a bare :class:`CkksCiphertext` that can be decrypted or
  serialised but not computed on further.
- Received objects are checked before use: :func:`load_public_context` (no secret key, no
  Galois keys, parameters from :data:`ALLOWED_PARAMETERS`, size cap) and :func:`load_vector`
  (size cap, slot count, level, scale, SEAL's own validity check). Parse them inside
  ``bund.compute.ckks_sandbox``: TenSEAL is native code and a crafted input must not take a node
  down.
- Encrypted risk scoring (``docs/protocols/ckks-scoring.md``): :func:`evaluate_model` evaluates a
  :class:`~compute.learn.risk_model.RiskModel` on feature-major ciphertexts (ciphertext ``j``
  holds feature ``j`` of up to ``N/2`` patients) and returns a bound on its evaluation error;
  :func:`flooding_sigma` and :func:`flood_and_round` are the defence against the Li–Micciancio
  key-recovery attack (EUROCRYPT 2021): no decrypted value leaves the key owner before Gaussian
  noise far above the evaluation error is added and the result is rounded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt
import tenseal as ts
import tenseal.sealapi as sealapi

from bund.compute.errors import (
    InvalidCiphertextError,
    InvalidInputError,
    InvalidKeyError,
    InvalidMessageError,
)
from bund.compute.learn.risk_model import RiskModel

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Coefficient-modulus chains by ring degree: within the 128-bit-security bound of the
#: homomorphic encryption standard (218 and 438 bits) with room for 2 and 6 multiplications.
DEFAULT_COEFF_MOD_BITS: dict[int, tuple[int, ...]] = {
    8192: (60, 40, 40, 60),
    16384: (60, 40, 40, 40, 40, 40, 40, 60),
}
#: The largest coefficient modulus (bits) at 128-bit security (HE standard, SEAL's ``tc128``).
MAX_COEFF_MODULUS_BITS: dict[int, int] = {8192: 218, 16384: 438}
#: Chains for encrypted scoring: two rescalings at scale 2^50 (an MLP's depth), so the
#: evaluation error sits near 2^-34 and leaves room for noise flooding. 8192: exactly 218 bits.
SCORING_COEFF_MOD_BITS: dict[int, tuple[int, ...]] = {
    8192: (60, 50, 50, 58),
    16384: (60, 50, 50, 60),
}
SCORING_SCALE_BITS = 50


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
        if sum(self.coeff_mod_bit_sizes) > MAX_COEFF_MODULUS_BITS[self.poly_modulus_degree]:
            raise ValueError("the coefficient modulus exceeds the 128-bit-security bound")

    @classmethod
    def for_degree(cls, poly_modulus_degree: int) -> CkksParameters:
        """The default parameters for a ring degree."""
        if poly_modulus_degree not in DEFAULT_COEFF_MOD_BITS:
            raise ValueError(f"poly_modulus_degree is one of {sorted(DEFAULT_COEFF_MOD_BITS)}")
        return cls(poly_modulus_degree, DEFAULT_COEFF_MOD_BITS[poly_modulus_degree])

    @classmethod
    def for_scoring(cls, poly_modulus_degree: int) -> CkksParameters:
        """The encrypted-scoring parameters for a ring degree (scale 2^50, depth 2)."""
        if poly_modulus_degree not in SCORING_COEFF_MOD_BITS:
            raise ValueError(f"poly_modulus_degree is one of {sorted(SCORING_COEFF_MOD_BITS)}")
        return cls(
            poly_modulus_degree, SCORING_COEFF_MOD_BITS[poly_modulus_degree], SCORING_SCALE_BITS
        )

    @property
    def slots(self) -> int:
        """Values one ciphertext holds."""
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        """How many rescalings (multiplicative levels) the chain allows."""
        return len(self.coeff_mod_bit_sizes) - 2


#: The only parameter sets a received context may use.
ALLOWED_PARAMETERS: frozenset[CkksParameters] = frozenset(
    [CkksParameters.for_degree(n) for n in DEFAULT_COEFF_MOD_BITS]
    + [CkksParameters.for_scoring(n) for n in SCORING_COEFF_MOD_BITS]
)


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
    def create(
        cls, params: CkksParameters, *, galois_keys: bool = True, threads: int | None = None
    ) -> CkksContext:
        """Create a secret context with fresh keys (relinearisation keys always).

        Args:
            params: The CKKS parameters.
            galois_keys: Also make rotation keys (needed for :meth:`CkksVector.dot`,
                :meth:`CkksVector.sum` and :meth:`CkksVector.rotate`; large: about 35 MB at
                ``N = 8192`` and 330 MB at 16384).
            threads: TenSEAL's worker threads (default: one per CPU).
        """
        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
            n_threads=threads,
        )
        context.global_scale = 2.0**params.global_scale_bits
        if galois_keys:
            context.generate_galois_keys()
        return cls(context)

    @classmethod
    def load(cls, data: bytes, *, threads: int | None = None) -> CkksContext:
        """Load a context that a peer serialised, unchecked: see :func:`load_public_context`.

        Raises:
            InvalidMessageError: If TenSEAL cannot parse the bytes.
        """
        try:
            return cls(ts.context_from(data, threads))
        except (ValueError, RuntimeError, TypeError) as exc:
            raise InvalidMessageError(
                f"the CKKS context does not parse ({type(exc).__name__})"
            ) from None

    @property
    def is_private(self) -> bool:
        """Whether this context holds the secret key."""
        return bool(self._ctx.is_private())

    @property
    def has_relin_keys(self) -> bool:
        """Whether this context holds relinearisation keys (needed to multiply ciphertexts)."""
        return bool(self._ctx.has_relin_keys())

    @property
    def has_galois_keys(self) -> bool:
        """Whether this context holds rotation keys."""
        return bool(self._ctx.has_galois_keys())

    @property
    def poly_modulus_degree(self) -> int:
        """The ring degree ``N``."""
        return int(self._ctx.seal_context().data.key_context_data().parms().poly_modulus_degree())

    @property
    def parameters(self) -> CkksParameters:
        """The context's parameters, read back from SEAL.

        Raises:
            ValueError: If they are no valid :class:`CkksParameters` (degree, scale, bound).
        """
        parms = self._ctx.seal_context().data.key_context_data().parms()
        bits = tuple(int(q.bit_count()) for q in parms.coeff_modulus())
        scale_bits = math.log2(self._ctx.global_scale) if self._ctx.global_scale > 0 else 0.0
        if not scale_bits.is_integer():
            raise ValueError("the global scale is not a power of two")
        return CkksParameters(int(parms.poly_modulus_degree()), bits, int(scale_bits))

    def data_primes(self) -> tuple[int, ...]:
        """The primes of the first data level, ``q_0 … q_L``; rescaling drops the last first."""
        moduli = self._ctx.seal_context().data.first_context_data().parms().coeff_modulus()
        return tuple(int(q.value()) for q in moduli)

    def make_public(self) -> CkksContext:
        """A copy of this context without the secret key: the one that may be sent."""
        public = self._ctx.copy()
        public.make_context_public()
        return CkksContext(public)

    def serialize(self, *, galois_keys: bool = True, relin_keys: bool = True) -> bytes:
        """Serialise the public parts only: public, relinearisation and (optionally) Galois keys.

        The secret key is never written, even from a secret context.
        """
        return bytes(
            self._ctx.serialize(
                save_secret_key=False, save_galois_keys=galois_keys, save_relin_keys=relin_keys
            )
        )

    def encrypt(self, values: Sequence[float] | Any) -> CkksVector:
        """Encrypt up to ``N/2`` reals into one vector (a list or a 1-D numpy array)."""
        items = values.tolist() if hasattr(values, "tolist") else list(values)
        if len(items) > self.poly_modulus_degree // 2:
            raise ValueError(f"at most {self.poly_modulus_degree // 2} values fit one vector")
        return CkksVector(self, ts.ckks_vector(self._ctx, [float(x) for x in items]))

    def vector_from_bytes(self, data: bytes) -> CkksVector:
        """Load a vector from :meth:`CkksVector.serialize`; unchecked (see :func:`load_vector`).

        Raises:
            InvalidMessageError: If TenSEAL cannot parse the bytes.
        """
        try:
            return CkksVector(self, ts.ckks_vector_from(self._ctx, data))
        except (ValueError, RuntimeError, TypeError) as exc:
            raise InvalidMessageError(
                f"the CKKS vector does not parse ({type(exc).__name__})"
            ) from None

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

    @property
    def level(self) -> int:
        """The ciphertext's level: its chain index (the top data level is ``depth``; 0 last)."""
        seal = self._context._ctx.seal_context().data
        return int(seal.get_context_data(self._ciphertext().parms_id()).chain_index())

    def _ciphertext(self) -> Any:
        return self._vector.ciphertext()[0]

    def _operand(self, other: CkksVector | Sequence[float] | float) -> Any:
        if isinstance(other, CkksVector):
            return other._vector
        if isinstance(other, int | float):
            return float(other)
        return [float(x) for x in other]

    def __add__(self, other: CkksVector | Sequence[float] | float) -> CkksVector:
        """Slot-wise sum with another vector, a plain list or a scalar."""
        return CkksVector(self._context, self._vector + self._operand(other))

    def __sub__(self, other: CkksVector | Sequence[float] | float) -> CkksVector:
        """Slot-wise difference with another vector, a plain list or a scalar."""
        return CkksVector(self._context, self._vector - self._operand(other))

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
        evaluator.rotate_vector(self._ciphertext(), steps, ctx.galois_keys().data, out)
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


# --- validation of received objects ---------------------------------------------------------

#: Largest serialised public context accepted (public + relinearisation keys at N = 16384 with
#: the scoring chain take about 4 MB; Galois keys are refused anyway).
MAX_CONTEXT_BYTES = 6 << 20
#: Slack for a serialised vector's headers beyond its ``2 · N · primes · 8`` bytes of data.
_VECTOR_OVERHEAD = 1 << 16


def max_vector_bytes(params: CkksParameters, level: int) -> int:
    """Largest serialised two-component ciphertext at ``level`` (chain index) accepted."""
    return 2 * params.poly_modulus_degree * (level + 1) * 8 + _VECTOR_OVERHEAD


def load_public_context(
    data: bytes,
    allowed: Collection[CkksParameters] = ALLOWED_PARAMETERS,
    *,
    relin_keys: bool,
    threads: int | None = 1,
) -> CkksContext:
    """Parse and check a peer's public context before anything is encrypted or evaluated under it.

    Args:
        data: The bytes the peer sent.
        allowed: The parameter sets to accept.
        relin_keys: Whether the job needs relinearisation keys (ciphertext products).
        threads: TenSEAL's worker threads for the loaded context.

    Raises:
        InvalidKeyError: If the context is too large, does not parse, holds a secret key or
            Galois keys, lacks a key the job needs, or uses parameters outside ``allowed``.
    """
    if not isinstance(data, bytes) or not 0 < len(data) <= MAX_CONTEXT_BYTES:
        raise InvalidKeyError(f"a CKKS public context is 1 B to {MAX_CONTEXT_BYTES} B")
    try:
        context = CkksContext.load(data, threads=threads)
    except (InvalidMessageError, ValueError, RuntimeError, TypeError) as exc:
        raise InvalidKeyError(f"the CKKS context does not parse ({type(exc).__name__})") from None
    raw = context._ctx
    if raw.has_secret_key() or raw.is_private():
        raise InvalidKeyError("the CKKS context carries a secret key: send make_public() only")
    if not raw.has_public_key():
        raise InvalidKeyError("the CKKS context has no public key")
    if raw.has_galois_keys():
        raise InvalidKeyError("the CKKS context carries Galois keys this job does not use")
    if relin_keys and not raw.has_relin_keys():
        raise InvalidKeyError("the CKKS context lacks the relinearisation keys this model needs")
    seal = raw.seal_context().data
    if not seal.parameters_set() or seal.key_context_data().parms().scheme().name != "CKKS":
        raise InvalidKeyError("the context is not a valid CKKS context")
    try:
        params = context.parameters
    except ValueError:
        params = None
    if params is None or params not in allowed:
        raise InvalidKeyError(
            f"the CKKS parameters are not among the allowed sets {sorted(allowed, key=repr)}"
        )
    return context


def load_vector(context: CkksContext, data: bytes, *, size: int, level: int) -> CkksVector:
    """Parse and check a peer's vector under ``context`` before it is computed on or decrypted.

    Args:
        context: The job's context (the one the vector must be encrypted under).
        data: The bytes the peer sent.
        size: The number of slots the vector must have.
        level: The chain index it must sit at (``depth`` for a fresh encryption).

    Raises:
        InvalidCiphertextError: If it is too large, does not parse, or its slot count, level,
            scale, component count or SEAL validity is not what the job expects.
    """
    params = context.parameters
    if not 1 <= size <= params.slots or not 0 <= level <= params.depth:
        raise ValueError("size is 1..N/2 and level 0..depth")
    if not isinstance(data, bytes) or not 0 < len(data) <= max_vector_bytes(params, level):
        raise InvalidCiphertextError(
            f"a CKKS vector at level {level} is at most {max_vector_bytes(params, level)} B"
        )
    try:
        vector = context.vector_from_bytes(data)
        ciphertexts = vector._vector.ciphertext()
    except (InvalidMessageError, ValueError, RuntimeError, TypeError) as exc:
        raise InvalidCiphertextError(
            f"the CKKS vector does not parse ({type(exc).__name__})"
        ) from None
    if len(ciphertexts) != 1 or len(vector) != size:
        raise InvalidCiphertextError(f"the CKKS vector must hold {size} slots in one ciphertext")
    ct = ciphertexts[0]
    seal = context._ctx.seal_context().data
    checks = (
        sealapi.is_valid_for(ct, seal),
        ct.size() == 2,
        ct.is_ntt_form(),
        ct.scale == context._ctx.global_scale,
    )
    if not all(checks):
        raise InvalidCiphertextError("the CKKS vector is not a valid two-part ciphertext at scale")
    if vector.level != level:
        raise InvalidCiphertextError(f"the CKKS vector is at level {vector.level}, not {level}")
    return vector


# --- encrypted scoring ----------------------------------------------------------------------

#: Per-slot bound on one fresh-encryption or one rescaling error, in units of ``N / scale``:
#: measured maxima over 4096 slots sit near 1 (2^-37 at N = 8192, scale 2^50); 4 is the margin.
ERROR_UNIT = 4.0
#: Coarse feature ranges carry this many significant bits (:func:`coarse_range`).
RANGE_BITS = 3
#: Largest magnitude a model's logit may reach on the announced ranges: a result at level 0
#: holds ``|z| · 2^50`` below ``q_0 / 2 ≈ 2^59``; 2^8 keeps a factor 2 of margin.
MAX_LOGIT = 256.0


def coarse_range(lo: float, hi: float) -> tuple[float, float]:
    """``[lo, hi]`` widened outward to multiples of a power of two, keeping :data:`RANGE_BITS` bits.

    What the key owner announces about a feature so the evaluator can bound its error: the
    order of magnitude, never a patient's exact extreme value.

    >>> coarse_range(18.0, 98.0), coarse_range(85.0, 220.0), coarse_range(0.0, 0.0)
    ((16.0, 112.0), (64.0, 224.0), (0.0, 0.0))
    """
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise InvalidInputError("a feature range is two finite numbers, low ≤ high")
    top = max(abs(lo), abs(hi))
    if top == 0:
        return 0.0, 0.0
    grain = 2.0 ** (math.ceil(math.log2(top)) - RANGE_BITS)
    return math.floor(lo / grain) * grain, math.ceil(hi / grain) * grain


@dataclass(frozen=True)
class Evaluation:
    """An encrypted model output and the bound on its evaluation error.

    Attributes:
        logits: The encrypted logits, one slot per patient.
        error_bound: Per-slot bound on ``|decrypted − exact logit|`` (what flooding must hide).
    """

    logits: CkksVector
    error_bound: float


def minimum_error_bound(params: CkksParameters) -> float:
    """The smallest error bound a result can have: one fresh error plus one rescaling error.

    The key owner floods with at least this bound whatever the evaluator reports.
    """
    return 2.0 * ERROR_UNIT * params.poly_modulus_degree / 2.0**params.global_scale_bits


def result_level(kind: str, params: CkksParameters) -> int:
    """The chain index of :func:`evaluate_model`'s output for a ``logistic`` or ``mlp`` model."""
    return params.depth - (1 if kind == "logistic" else 2)


def _interval_abs(weights: FloatArray, bias: float, ranges: Sequence[tuple[float, float]]) -> float:
    """The largest ``|w·x + b|`` over the box ``ranges``."""
    lo = np.array([r[0] for r in ranges])
    hi = np.array([r[1] for r in ranges])
    top = bias + float(np.maximum(weights * lo, weights * hi).sum())
    bottom = bias + float(np.minimum(weights * lo, weights * hi).sum())
    return max(abs(top), abs(bottom))


def evaluate_model(
    model: RiskModel, features: Sequence[CkksVector], ranges: Sequence[tuple[float, float]]
) -> Evaluation:
    """Evaluate ``model`` on feature-major ciphertexts: ``features[j]`` holds feature ``j``.

    Logistic: ``z = Σ_j w_j·x_j + b`` (one rescaling). Square MLP: ``z = Σ_k v_k·h_k² + d`` with
    ``h_k = W_k·x + c_k``; ``√|v_k|`` is folded into ``W_k`` so the output weight costs no level
    and negative ``v_k`` subtract (two rescalings). TenSEAL labels a rescaled ciphertext with the
    global scale although it divided by a prime ``q ≠ 2^50``; each layer's weights are multiplied
    by ``q / 2^50`` of the prime its rescaling drops, which removes that ``2^-36`` relative bias.

    Args:
        model: The insurer's model over the job's features, in order.
        features: One fresh ciphertext per feature, all under one context, of one length.
        ranges: The key owner's announced range of each feature (:func:`coarse_range`).

    Raises:
        InvalidInputError: If shapes disagree, a weight is all zero, or the logit can exceed
            :data:`MAX_LOGIT` on the announced ranges.
    """
    d = len(model.features)
    if len(features) != d or len(ranges) != d or not features:
        raise InvalidInputError(f"the model needs {d} feature ciphertexts and ranges")
    context = features[0].context
    params = context.parameters
    if params.depth < (1 if model.output is None else 2):
        raise InvalidInputError("the context's chain is too short for this model")
    scale = 2.0**params.global_scale_bits
    primes = context.data_primes()
    first = primes[-1] / scale  # the bias of the first rescaling
    unit = ERROR_UNIT * params.poly_modulus_degree / scale
    widths = [max(abs(lo), abs(hi)) for lo, hi in ranges]
    encoding = (sum(widths) + 1.0) / scale  # each weight and bias rounds to 2^-scale

    def affine(weights: FloatArray, bias: float) -> tuple[Any, float]:
        terms = [(j, float(w)) for j, w in enumerate(weights) if abs(w * first) * scale >= 1]
        if not terms:
            raise InvalidInputError("a model unit has no nonzero weight: drop it from the model")
        acc = features[terms[0][0]]._vector * (terms[0][1] * first)
        for j, w in terms[1:]:
            acc.add_(features[j]._vector * (w * first))
        acc.add_(float(bias))
        dropped = sum(abs(float(w)) * widths[j] for j, w in enumerate(weights)) - sum(
            abs(w) * widths[j] for j, w in terms
        )
        error = unit * (2.0 + float(np.abs(weights).sum())) + encoding + dropped
        return acc, error

    if model.output is None:
        peak = _interval_abs(model.weights[0], float(model.bias[0]), ranges)
        if peak > MAX_LOGIT:
            raise InvalidInputError(f"the logit can reach {peak:.3g} on these ranges (cap 256)")
        acc, error = affine(model.weights[0], float(model.bias[0]))
        return Evaluation(CkksVector(context, acc), error)
    second = math.sqrt(primes[-2] / scale)  # undoes the bias of the second rescaling
    positive: Any = None
    negative: Any = None
    constant = model.output_bias
    error = encoding
    peak = abs(model.output_bias)
    for k, v in enumerate(model.output):
        width = _interval_abs(model.weights[k], float(model.bias[k]), ranges)
        peak += abs(float(v)) * width * width
        if v == 0:
            continue
        if not np.any(model.weights[k]):
            constant += float(v) * float(model.bias[k]) ** 2
            continue
        root = math.sqrt(abs(float(v))) * second
        h, e = affine(model.weights[k] * root, float(model.bias[k]) * root)
        h.square_()
        error += 2.0 * width * root * e + e * e + unit
        if v > 0:
            positive = h if positive is None else positive.add_(h)
        else:
            negative = h if negative is None else negative.add_(h)
    if peak > MAX_LOGIT:
        raise InvalidInputError(f"the logit can reach {peak:.3g} on these ranges (cap 256)")
    if positive is None and negative is None:
        raise InvalidInputError("the MLP has no hidden unit that depends on the features")
    out = positive.sub_(negative) if positive is not None and negative is not None else positive
    if out is None:
        out = negative.neg_()
    out.add_(constant)
    return Evaluation(CkksVector(context, out), error)


# --- noise flooding -------------------------------------------------------------------------

#: Statistical security parameter ``s`` of the flooding (bits).
STATISTICAL_SECURITY_BITS = 30
#: Released logits are multiples of ``2^-PRECISION_BITS``.
PRECISION_BITS = 12
#: ``|Box–Muller sample|`` never exceeds ``√(2·53·ln 2) < 8.58`` with 53-bit uniforms: the
#: flooding noise is at most this many ``σ``, with certainty.
TAIL_SIGMAS = 8.58


def flooding_sigma(
    error_bound: float, released: int, security_bits: int = STATISTICAL_SECURITY_BITS
) -> float:
    """The flooding noise's standard deviation: ``σ = B · √(2M) · 2^(s/2)``.

    Two decryptions whose exact errors differ by at most ``2B`` per value give, over ``M``
    released values each flooded with ``N(0, σ²)``, output distributions at KL divergence
    ``≤ M·(2B)²/(2σ²) = 2^-s``; KL (not statistical distance) is what a search problem such as
    key recovery needs (Micciancio–Walter 2018; Li–Micciancio–Schultz–Sorrell, CRYPTO 2022),
    hence ``2^(s/2)`` rather than ``2^s``.

    >>> flooding_sigma(2.0**-34, 2048, 30) == 2.0**-34 * 64 * 2**15
    True
    """
    if not error_bound > 0 or released < 1 or security_bits < 1:
        raise ValueError("the error bound is positive and at least one value is released")
    return float(error_bound * math.sqrt(2.0 * released) * 2.0 ** (security_bits / 2))


def secure_gaussian(count: int) -> FloatArray:
    """``count`` standard normal samples by Box–Muller from the OS CSPRNG (never numpy.random)."""
    raw = np.frombuffer(os.urandom(16 * count), dtype=np.uint64).reshape(2, count) >> np.uint64(11)
    u1 = (raw[0].astype(np.float64) + 1.0) * 2.0**-53  # in (0, 1]: the log is finite
    u2 = raw[1].astype(np.float64) * 2.0**-53
    out: FloatArray = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)
    return out


def flood_and_round(
    values: Sequence[float] | FloatArray, sigma: float, precision_bits: int = PRECISION_BITS
) -> IntArray:
    """Add ``N(0, σ²)`` noise to each decrypted value and round to ``2^-precision_bits``.

    Returns the released integers ``round((v + noise) · 2^precision_bits)``: the only form in
    which a decrypted value may leave the key owner.
    """
    array = np.asarray(values, dtype=np.float64)
    if not sigma > 0 or not np.isfinite(array).all():
        raise ValueError("sigma is positive and the values finite")
    noisy = (array + sigma * secure_gaussian(len(array))) * 2.0**precision_bits
    return np.rint(noisy).astype(np.int64)


def released_error_bound(
    error_bound: float, sigma: float, precision_bits: int = PRECISION_BITS
) -> float:
    """Worst-case ``|released logit − exact logit|``: evaluation error, flooding and rounding."""
    return error_bound + TAIL_SIGMAS * sigma + 2.0 ** -(precision_bits + 1)
