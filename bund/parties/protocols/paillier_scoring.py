"""Risk scoring that holds against a model holder who deviates: Paillier under its own key, proved.

Roles: the ``feature_holder`` (the hospital: patients, ``id`` bound to the patient id column and
each model feature to its own column) and the ``model_holder`` (the insurer: a logistic model as
a dataset, ``bund.compute.learn.risk_model``). The insurer receives each patient's score; the
hospital never decrypts anything, so no ciphertext the insurer chooses is ever decrypted for it
(CKKS scoring, which decrypts what the insurer returns, runs only where the hospital trusts the
insurer: ``docs/protocols/ckks-scoring.md``).

Messages (``docs/protocols/paillier-scoring.md`` has the layouts and the threat model):

1. ``pls/setup`` (hospital → insurer): the hospital's ring-Pedersen parameters ``(N̂, s, t)``
   (from its own safe primes) and Π^prm, the proof that ``s ∈ <t>``, which the insurer checks
   before it commits to anything under them.
2. ``pls/model`` (insurer → hospital): the insurer's Paillier public key with Π^mod (a
   Paillier–Blum modulus with ``gcd(N, φ(N)) = 1``), one ciphertext per fixed-point weight and
   for the bias, and for each a Π^enc range proof against the hospital's parameters. The hospital
   verifies all of them, and that every ciphertext is a unit, before it uses any.
3. ``pls/scores/<i>`` (hospital → insurer): patient ids and, per patient,
   ``Enc(b) · ∏_j Enc(w_j)^{x_ij} · (1+N)^{η_i} · r_i^N``: the encrypted logit plus the hospital's
   own rounding noise ``η_i`` (uniform, sized from the tolerance the approved spec states), under
   a fresh ``r_i^N`` drawn by the hospital (``r_i`` uniform in ``Z*_N``, each used once).

The insurer decrypts and applies the sigmoid; its result is ``scores.csv``.
"""

from __future__ import annotations

import csv
import io
import math
import re
import secrets
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import AfterValidator, Field

from bund.compute import paillier
from bund.compute.errors import InvalidInputError, InvalidMessageError
from bund.compute.layout import Header
from bund.compute.learn.risk_model import MAX_FEATURES, model_from_columns, sigmoid
from bund.compute.paillier import Mpz, PublicKey
from bund.compute.zk.enc import EncParameters, EncProof, prove_enc_many, verify_enc_many
from bund.compute.zk.mod import ModProof, prove_mod, verify_mod
from bund.compute.zk.prm import (
    PrmProof,
    RingPedersenParams,
    generate_ring_pedersen,
    prove_prm,
    verify_prm,
)
from bund.compute.zk.randomness import rerandomise_many
from bund.compute.zk.transcript import make_context
from bund.parties.data import DatasetError
from bund.parties.jobs import (
    JobContext,
    JobSpec,
    Participant,
    ProtocolDef,
    ProtocolParams,
    Result,
    RoleRequirement,
)
from bund.parties.transport import MessagePlan

FEATURE_HOLDER = "feature_holder"
MODEL_HOLDER = "model_holder"
ID_COLUMN = "id"
_FEATURE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
#: Most patients one job scores, and per ``pls/scores`` message.
MAX_PATIENTS = 1 << 16
CHUNK = 512
#: Largest feature magnitude (raw units); features are encoded with ``FEATURE_FRAC_BITS``.
MAX_FEATURE_MAGNITUDE = 2.0**20
FEATURE_FRAC_BITS = 8
#: Fixed-point bits of the weights; the bias is encoded with the weights' and features' bits.
WEIGHT_FRAC_BITS = 24
MAX_ID_BYTES = 128

_VERSION = 1
_SETUP = Header(b"BPSS", _VERSION)
_MODEL = Header(b"BPSM", _VERSION)
_SCORES = Header(b"BPSC", _VERSION)
_LENGTH = struct.Struct(">I")
_TAG_SETUP = "pls/setup"
_TAG_MODEL = "pls/model"
_TAG_SCORES = "pls/scores"


def _feature_list(value: str) -> str:
    names = [f.strip() for f in value.split(",")]
    if not 1 <= len(names) <= MAX_FEATURES or any(not _FEATURE.fullmatch(f) for f in names):
        raise ValueError(f"list 1-{MAX_FEATURES} feature names, comma-separated")
    if len(set(names)) != len(names):
        raise ValueError("a feature is listed twice")
    return ",".join(names)


class PaillierScoringParams(ProtocolParams):
    """``paillier_scoring``'s parameters."""

    features: Annotated[str, AfterValidator(_feature_list)] = Field(
        description="the model's inputs in order, comma-separated (bind each to a column)"
    )
    tolerance: float = Field(
        default=1e-3,
        gt=0,
        le=0.1,
        description="the logit's rounding the hospital adds (uniform noise within ±tolerance)",
    )
    key_bits: int = Field(
        default=paillier.MIN_KEY_BITS,
        ge=256,
        le=4096,
        description="the insurer's Paillier modulus and the hospital's ring-Pedersen modulus, in "
        "bits (below 2048 only under the test-only switch)",
    )
    weight_bits: int = Field(
        default=48,
        ge=24,
        le=64,
        description="the range each fixed-point weight is proved within, |w| ≤ 2^weight_bits",
    )


@dataclass(frozen=True)
class Plan:
    """The job as both roles read it from the spec."""

    hospital: str
    insurer: str
    features: tuple[str, ...]
    tolerance: float
    enc: EncParameters
    key_bits: int

    def context(self, job_id: str, what: str) -> bytes:
        """The Fiat–Shamir context of one proof of this job."""
        return make_context("bund/paillier_scoring/v1", job_id, what)

    @property
    def scale_bits(self) -> int:
        """The fixed-point exponent of a score: the weights' bits plus the features'."""
        return WEIGHT_FRAC_BITS + FEATURE_FRAC_BITS

    @property
    def noise_bound(self) -> int:
        """``B``: the hospital's noise ``η`` is uniform in ``[-B, B]`` (the logit's rounding)."""
        return max(1, int(math.floor(self.tolerance * 2**self.scale_bits)))


def plan(spec: JobSpec) -> Plan:
    """Read the roles and parameters of a ``paillier_scoring`` spec."""
    params = PaillierScoringParams.of(spec)
    hospital = next(p.party for p in spec.participants if p.role == FEATURE_HOLDER)
    insurer = next(p.party for p in spec.participants if p.role == MODEL_HOLDER)
    enc = EncParameters(ell=params.weight_bits)
    features = tuple(params.features.split(","))
    return Plan(hospital, insurer, features, params.tolerance, enc, params.key_bits)


# --- wire layouts -----------------------------------------------------------------------------


def _frame(*parts: bytes) -> bytes:
    return b"".join(_LENGTH.pack(len(p)) + p for p in parts)


def _unframe(body: bytes, count: int, what: str) -> list[bytes]:
    parts, view = [], memoryview(body)
    for _ in range(count):
        if len(view) < _LENGTH.size:
            raise InvalidMessageError(f"{what} is truncated")
        (size,) = _LENGTH.unpack_from(view)
        view = view[_LENGTH.size :]
        if size > len(view):
            raise InvalidMessageError(f"{what} is truncated")
        parts.append(bytes(view[:size]))
        view = view[size:]
    if len(view):
        raise InvalidMessageError(f"{what} has trailing bytes")
    return parts


def encode_setup(patients: int, params: RingPedersenParams, proof: PrmProof) -> bytes:
    """``pls/setup``: the number of patients, the ring-Pedersen parameters and Π^prm."""
    return _SETUP.pack(_LENGTH.pack(patients), _frame(params.to_bytes(), proof.to_bytes()))


def decode_setup(data: bytes) -> tuple[int, RingPedersenParams, PrmProof]:
    """Parse ``pls/setup`` (the caller verifies the proof)."""
    body = _SETUP.split(data, "a scoring setup")
    if len(body) < _LENGTH.size:
        raise InvalidMessageError("a scoring setup is truncated")
    (patients,) = _LENGTH.unpack_from(body)
    if not 1 <= patients <= MAX_PATIENTS:
        raise InvalidMessageError(f"a scoring setup announces {patients} patients")
    setup, proof = _unframe(body[_LENGTH.size :], 2, "a scoring setup")
    return patients, RingPedersenParams.from_bytes(setup), PrmProof.from_bytes(proof)


@dataclass(frozen=True)
class Model:
    """``pls/model``: the insurer's key, Π^mod, the weight ciphertexts and their Π^enc proofs."""

    public_key: PublicKey
    mod_proof: ModProof
    weights: tuple[Mpz, ...]  # the features' weights, then the bias
    proofs: tuple[EncProof, ...]

    def to_bytes(self) -> bytes:
        """Serialise (the ciphertexts as the Paillier vector layout)."""
        vector = paillier.encode_ciphertexts(self.public_key, self.weights)
        proofs = [p.to_bytes() for p in self.proofs]
        return _MODEL.pack(
            _frame(self.public_key.to_bytes(), self.mod_proof.to_bytes(), vector, *proofs)
        )

    @classmethod
    def from_bytes(cls, data: bytes, weights: int) -> Model:
        """Parse and validate a model of ``weights`` ciphertexts (proofs verified by the caller).

        Raises:
            InvalidMessageError | InvalidKeyError | InvalidCiphertextError: A malformed part.
        """
        parts = _unframe(_MODEL.split(data, "a scoring model"), 3 + weights, "a scoring model")
        key = PublicKey.from_bytes(parts[0])
        cts = paillier.decode_ciphertexts(key, parts[2], frac_bits=0, max_count=weights)
        if len(cts) != weights:
            raise InvalidMessageError(f"the model has {len(cts)} weights, the job {weights}")
        proofs = tuple(EncProof.from_bytes(p) for p in parts[3:])
        return cls(key, ModProof.from_bytes(parts[1]), tuple(cts), proofs)


def encode_scores(public_key: PublicKey, ids: Sequence[str], scores: Sequence[Mpz]) -> bytes:
    """``pls/scores/<i>``: patient ids and their encrypted noisy logits."""
    names = b"".join(_LENGTH.pack(len(i.encode())) + i.encode() for i in ids)
    return _SCORES.pack(_frame(names, paillier.encode_ciphertexts(public_key, scores)))


def decode_scores(public_key: PublicKey, data: bytes) -> tuple[list[str], list[Mpz]]:
    """Parse ``pls/scores/<i>``; ids must be UTF-8 and as many as the ciphertexts."""
    names, vector = _unframe(_SCORES.split(data, "a scores message"), 2, "a scores message")
    cts = paillier.decode_ciphertexts(public_key, vector, frac_bits=0, max_count=CHUNK)
    ids, view = [], memoryview(names)
    while len(view):
        if len(view) < _LENGTH.size:
            raise InvalidMessageError("a scores message has a truncated id")
        (size,) = _LENGTH.unpack_from(view)
        if not 1 <= size <= MAX_ID_BYTES or size + _LENGTH.size > len(view):
            raise InvalidMessageError("a scores message has a malformed id")
        try:
            ids.append(bytes(view[_LENGTH.size : _LENGTH.size + size]).decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidMessageError("a patient id is not UTF-8") from None
        view = view[_LENGTH.size + size :]
    if len(ids) != len(cts):
        raise InvalidMessageError(f"{len(ids)} ids for {len(cts)} scores")
    return ids, cts


# --- the hospital -------------------------------------------------------------------------------


def _patients(ctx: JobContext, p: Plan) -> tuple[list[str], np.ndarray]:
    """The hospital's patient ids and fixed-point features (rows × features)."""
    me = ctx.spec.participant(ctx.party)
    table = ctx.table()
    ids = [v.strip() for v in table.column(me.columns[ID_COLUMN])]
    if not 1 <= len(ids) <= MAX_PATIENTS:
        raise DatasetError(f"score 1-{MAX_PATIENTS} patients a job, not {len(ids)}: split it")
    if len(set(ids)) != len(ids) or any(not 1 <= len(i.encode()) <= MAX_ID_BYTES for i in ids):
        raise DatasetError("patient ids must be distinct, non-empty and at most 128 bytes")
    x = np.column_stack([table.numeric(me.columns.get(f, f)) for f in p.features])
    if not np.isfinite(x).all() or np.abs(x).max() > MAX_FEATURE_MAGNITUDE:
        raise DatasetError(f"feature values must be finite and within ±{MAX_FEATURE_MAGNITUDE:g}")
    return ids, np.rint(x * 2**FEATURE_FRAC_BITS).astype(np.int64)


def run_feature_holder(ctx: JobContext) -> Result | None:
    """Check the insurer's key and weights, return each patient's noisy encrypted logit."""
    p = plan(ctx.spec)
    job = ctx.spec.job_id
    ids, x = _patients(ctx, p)
    secret = generate_ring_pedersen(p.key_bits)
    proof = prove_prm(secret, p.context(job, "prm"))
    ctx.send(p.insurer, _TAG_SETUP, encode_setup(len(ids), secret.params, proof))
    model = Model.from_bytes(ctx.recv(p.insurer, _TAG_MODEL), len(p.features) + 1)
    # Nothing of the insurer's is used before every proof holds.
    verify_mod(model.public_key, model.mod_proof, p.context(job, "mod"))
    verify_enc_many(
        model.public_key,
        model.weights,
        secret.params,
        model.proofs,
        p.context(job, "weights"),
        parameters=p.enc,
        executor=ctx.executor,
    )
    key = model.public_key
    # The bias is encoded at the weights' scale: its input 2^FEATURE_FRAC_BITS brings every
    # term of the logit to the same scale, 2^(WEIGHT_FRAC_BITS + FEATURE_FRAC_BITS).
    rows = np.column_stack([x, np.full(len(ids), 2**FEATURE_FRAC_BITS, dtype=np.int64)])
    for start in range(0, len(ids), CHUNK):
        chunk = rows[start : start + CHUNK]
        logits = paillier.matvec_raw(key, chunk.tolist(), list(model.weights), ctx.executor)
        bound = p.noise_bound
        noisy = [
            c * (1 + ((secrets.randbelow(2 * bound + 1) - bound) % key.n) * key.n) % key.n_square
            for c in logits
        ]
        fresh = rerandomise_many(noisy, key, ctx.executor)  # r^N, r uniform in Z*_N, once each
        message = encode_scores(key, ids[start : start + CHUNK], fresh)
        ctx.send(p.insurer, f"{_TAG_SCORES}/{start // CHUNK}", message)
        ctx.progress("scoring", min(start + CHUNK, len(ids)), len(ids))
    ctx.record("paillier_scoring.sent", {"patients": len(ids), "noise_bound": p.noise_bound})
    return None


# --- the insurer --------------------------------------------------------------------------------


def _weights(ctx: JobContext, p: Plan) -> list[int]:
    """The model's fixed-point weights in feature order, then its bias."""
    table = ctx.table()
    try:
        model = model_from_columns(table.data, p.features)
    except InvalidInputError as exc:
        raise DatasetError(f"dataset {table.name!r} is no risk model: {exc}") from None
    if model.output is not None:
        raise DatasetError("paillier_scoring evaluates logistic models only (one layer)")
    w = [round(float(v) * 2**WEIGHT_FRAC_BITS) for v in model.weights[0]]
    bias = round(float(model.bias[0]) * 2**WEIGHT_FRAC_BITS)
    weights = [*w, bias]
    if any(abs(v) > 2**p.enc.ell for v in weights):
        raise InvalidInputError(
            f"a weight exceeds 2^{p.enc.ell - WEIGHT_FRAC_BITS} in magnitude: raise weight_bits"
        )
    return weights


def run_model_holder(ctx: JobContext) -> Result | None:
    """Send the proved, encrypted model; decrypt the scores the hospital returns."""
    p = plan(ctx.spec)
    job = ctx.spec.job_id
    weights = _weights(ctx, p)
    patients, setup, prm = decode_setup(ctx.recv(p.hospital, _TAG_SETUP))
    verify_prm(setup, prm, p.context(job, "prm"))  # else the commitments could leak the weights
    public, private = paillier.generate_keypair(p.key_bits)
    n = public.n
    cts = paillier.Encryptor(private).encrypt_raw([w % n for w in weights], ctx.executor)
    proofs = prove_enc_many(private, cts, setup, p.context(job, "weights"), parameters=p.enc)
    model = Model(public, prove_mod(private, p.context(job, "mod")), tuple(cts), tuple(proofs))
    ctx.send(p.hospital, _TAG_MODEL, model.to_bytes())
    ids: list[str] = []
    logits: list[float] = []
    half = n // 2
    for index in range(-(-patients // CHUNK)):
        chunk_ids, chunk = decode_scores(public, ctx.recv(p.hospital, f"{_TAG_SCORES}/{index}"))
        ids.extend(chunk_ids)
        for value in private.decrypt_raw(chunk):
            signed = int(value) - int(n) if value > half else int(value)
            logits.append(signed / 2**p.scale_bits)
    if len(ids) != patients or len(set(ids)) != patients:
        raise InvalidMessageError(f"the hospital announced {patients} patients, sent {len(ids)}")
    return _result(p, ids, logits)


def _result(p: Plan, ids: list[str], logits: list[float]) -> Result:
    scores = sigmoid(np.asarray(logits, dtype=np.float64))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["patient_id", "score"])
    for pid, score in zip(ids, scores, strict=True):
        writer.writerow([pid, f"{score:.6f}"])
    return Result(
        {"patients": len(ids), "logit_tolerance": p.tolerance, "mean_score": float(scores.mean())},
        {"scores.csv": out.getvalue().encode()},
    )


# --- the job spec -----------------------------------------------------------------------------


def outputs(spec: JobSpec) -> frozenset[str]:
    """What the job releases: per-record scores (to the insurer)."""
    return frozenset({"score"})


def learns(spec: JobSpec) -> dict[str, str]:
    """What each party learns, as ``docs/protocols/paillier-scoring.md`` states it."""
    p = plan(spec)
    bits = p.enc.verified_bound.bit_length() - 1
    weights = f"that each fixed-point weight is below 2^{bits} in magnitude"
    return {
        p.hospital: (
            "nothing of the model but its size and " + weights + " (Paillier ciphertexts under "
            "the insurer's proved key); it decrypts nothing"
        ),
        p.insurer: (
            "the patient ids and each patient's logit to within ±tolerance (the hospital's own "
            "noise), hence its score; with weights it chose, a score can carry several of the "
            "bound columns at once (the range proofs bound, not prevent, this: approve the bound "
            "columns as if the insurer read them)"
        ),
    }


def plan_messages(spec: JobSpec, party: str, limits: Mapping[str, int]) -> MessagePlan:
    """What a peer may send ``party``: the setup or the model, then the score chunks."""
    chunks = -(-MAX_PATIENTS // CHUNK)
    return MessagePlan(
        max_messages=2 + chunks,
        max_bytes=(64 << 20),
        tags=(re.escape(_TAG_SETUP), re.escape(_TAG_MODEL), re.escape(_TAG_SCORES) + r"/\d+"),
    )


def make_spec(
    hospital: str,
    insurer: str,
    features: Sequence[str],
    *,
    key_bits: int = paillier.MIN_KEY_BITS,
    patients: str = "patients",
    model: str = "risk_model",
) -> JobSpec:
    """A job in which ``insurer`` scores ``hospital``'s ``patients`` with its ``model`` dataset.

    The scores, by patient id, go to the insurer, which requests the job; each feature is bound
    to the hospital's column of the same name.
    """
    return JobSpec(
        protocol=DEFINITION.name,
        participants=(
            Participant(hospital, FEATURE_HOLDER, patients, {ID_COLUMN: "patient_id"}),
            Participant(insurer, MODEL_HOLDER, model),
        ),
        receivers=(insurer,),
        purpose="Paillier mortality-risk scoring of a hospital's patients for an insurer",
        requester=insurer,
        params={"features": ",".join(features), "key_bits": key_bits},
    )


#: The protocol as registered in ``bund.parties.protocols.PROTOCOLS``.
DEFINITION = ProtocolDef(
    name="paillier_scoring",
    version="1",
    roles={FEATURE_HOLDER: run_feature_holder, MODEL_HOLDER: run_model_holder},
    params=PaillierScoringParams,
    role_requirements={
        FEATURE_HOLDER: RoleRequirement(columns=(ID_COLUMN,), receives=False, who="the hospital"),
        MODEL_HOLDER: RoleRequirement(receives=True, who="the insurer"),
    },
    outputs=outputs,
    learns=learns,
    plan=plan_messages,
    description=(
        "risk scoring under the model holder's Paillier key with Π^mod, Π^prm and Π^enc proofs; "
        "the data owner adds its own noise and fresh r^N and decrypts nothing"
    ),
)
