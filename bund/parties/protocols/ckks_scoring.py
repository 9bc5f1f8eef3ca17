"""Encrypted risk scoring with CKKS: an insurer's model on a hospital's encrypted patients.

Roles: the ``feature_holder`` (the hospital: its patients' dataset, binding ``id`` to the patient
id column and, optionally, each feature to its own column) and the ``model_holder`` (the insurer:
its model as a dataset with the columns ``layer, unit, input, weight``,
``bund.compute.learn.risk_model``). Parameters: ``features`` (comma-separated, the model's inputs in
order), ``model`` (``logistic`` or ``mlp``), ``degree`` (8192 or 16384; default 8192) and
``tolerance`` (largest accepted score error; default 1e-3 logistic, 2e-2 MLP). The receivers are
the hospital, the insurer, or both. ``docs/protocols/ckks-scoring.md`` has the layouts, what each
role learns and the threat model.

Messages (every TenSEAL object is parsed and computed on inside ``bund.compute.ckks_sandbox``):

1. ``cks/ctx`` (hospital → insurer, ``BCKC``): patients, coarse feature ranges, and the public
   context (no secret key, no Galois keys; relinearisation keys for an MLP only).
2. ``cks/x/<b>/<j>`` (hospital → insurer, ``BCKV``): feature ``j`` of batch ``b`` (``N/2``
   patients a batch), one fresh ciphertext.
3. ``cks/z/<b>`` (insurer → hospital, ``BCKZ``): the batch's encrypted logits and the bound on
   their evaluation error.
4. ``cks/scores`` (hospital → insurer, ``BCKS``, only when the insurer receives): patient ids and
   the flooded, rounded logits.

The hospital decrypts inside its sandbox, which adds Gaussian noise of ``σ = B·√(2M)·2^(s/2)``
(``bund.compute.ckks.flooding_sigma``) and rounds to ``2^-12`` before any value leaves it; its own
``scores.csv`` holds the same released values, so both receivers see identical scores.
"""

from __future__ import annotations

import csv
import io
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, get_args

import numpy as np
from pydantic import AfterValidator, Field

from bund.compute import ckks
from bund.compute.ckks_sandbox import CkksSandbox
from bund.compute.errors import BundError, InvalidInputError, InvalidMessageError
from bund.compute.layout import Header
from bund.compute.learn.risk_model import (
    MAX_FEATURES,
    RiskModel,
    model_from_columns,
    model_to_columns,
    sigmoid,
    train_logistic,
    train_square_mlp,
)
from bund.parties.data import DatasetError, Table
from bund.parties.jobs import (
    JobContext,
    JobSpec,
    Participant,
    ProtocolDef,
    ProtocolParams,
    Result,
    RoleRequirement,
)

FEATURE_HOLDER = "feature_holder"
MODEL_HOLDER = "model_holder"
ID_COLUMN = "id"
ModelKind = Literal["logistic", "mlp"]
KINDS: tuple[str, ...] = get_args(ModelKind)
_FEATURE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
DEFAULT_TOLERANCE = {"logistic": 1e-3, "mlp": 2e-2}
#: Most patients one job scores (the flooding noise grows with √M; split larger cohorts).
MAX_PATIENTS = 1 << 16
#: Largest feature magnitude the hospital may announce (keeps the error bounds meaningful).
MAX_FEATURE_MAGNITUDE = 2.0**20
#: Largest evaluation error bound accepted from the insurer (beyond it no score is useful).
MAX_ERROR_BOUND = 2.0**-8
#: Longest patient id in ``cks/scores``.
MAX_ID_BYTES = 128

_VERSION = 1
_CTX = Header(b"BCKC", _VERSION)
_CTX_FIELDS = struct.Struct(">IIH")  # degree, patients, features
_VEC = Header(b"BCKV", _VERSION)
_VEC_FIELDS = struct.Struct(">IHI")  # batch, feature, size
_RES = Header(b"BCKZ", _VERSION)
_RES_FIELDS = struct.Struct(">IId")  # batch, size, error bound
_SCO = Header(b"BCKS", _VERSION)
_SCO_FIELDS = struct.Struct(">BddI")  # precision, sigma, score bound, count

_TAG_CTX = "cks/ctx"
_TAG_X = "cks/x"
_TAG_Z = "cks/z"
_TAG_SCORES = "cks/scores"


class ScoreToleranceError(BundError):
    """The flooding this job needs would make scores coarser than the spec's ``tolerance``."""


@dataclass(frozen=True)
class Plan:
    """What both sides derive from the spec: roles, features, model kind, ring degree."""

    hospital: str
    insurer: str
    features: tuple[str, ...]
    kind: str
    degree: int
    tolerance: float

    @property
    def params(self) -> ckks.CkksParameters:
        """The CKKS parameters of the job."""
        return ckks.CkksParameters.for_scoring(self.degree)

    def batches(self, patients: int) -> list[tuple[int, int]]:
        """``(start, stop)`` rows of each batch: ``N/2`` patients per ciphertext."""
        step = self.params.slots
        return [(a, min(patients, a + step)) for a in range(0, patients, step)]


def _feature_list(value: str) -> str:
    features = [f.strip() for f in value.split(",")]
    if (
        not 1 <= len(features) <= MAX_FEATURES
        or len(set(features)) != len(features)
        or not all(_FEATURE.fullmatch(f) for f in features)
    ):
        raise ValueError(
            f"lists 1-{MAX_FEATURES} distinct feature names (letters, digits, _ . -), "
            "comma-separated"
        )
    return value


class CkksScoringParams(ProtocolParams):
    """The parameters of a ``ckks_scoring`` job."""

    features: Annotated[str, AfterValidator(_feature_list)] = Field(
        description="the model's features, comma-separated, each a column of the hospital's "
        "dataset with the same name"
    )
    model: ModelKind = Field(
        description="the kind of the insurer's model dataset: logistic regression or a small MLP"
    )
    degree: Literal[8192, 16384] = Field(
        default=8192,
        description="CKKS ring degree: N/2 patients per ciphertext; 16384 for more headroom",
    )
    tolerance: float | None = Field(
        default=None,
        gt=0,
        le=0.5,
        description="coarsest score error accepted before the job refuses (default "
        f"{DEFAULT_TOLERANCE['logistic']} for logistic, {DEFAULT_TOLERANCE['mlp']} for mlp)",
    )


def plan(spec: JobSpec) -> Plan:
    """Derive the plan of a ``ckks_scoring`` job (whose roles ``DEFINITION`` checks).

    Raises:
        InvalidJobSpecError: Naming the parameter to fix.
    """
    params = CkksScoringParams.of(spec)
    roles = {p.role: p.party for p in spec.participants}
    features = tuple(f.strip() for f in params.features.split(","))
    tolerance = DEFAULT_TOLERANCE[params.model] if params.tolerance is None else params.tolerance
    return Plan(
        roles[FEATURE_HOLDER], roles[MODEL_HOLDER], features, params.model, params.degree, tolerance
    )


# --- wire layouts ---------------------------------------------------------------------------


def encode_context(
    degree: int, patients: int, ranges: Sequence[tuple[float, float]], context: bytes
) -> bytes:
    """``BCKC`` v1: magic, version u8, degree u32, patients u32, d u16, d × (lo, hi) f64, ctx."""
    fields = _CTX_FIELDS.pack(degree, patients, len(ranges))
    return _CTX.pack(fields, *(struct.pack(">dd", lo, hi) for lo, hi in ranges), context)


def decode_context(data: bytes, p: Plan) -> tuple[int, list[tuple[float, float]], bytes]:
    """Parse ``BCKC``: patients (1..``MAX_PATIENTS``), ranges (finite, ordered), the context.

    Raises:
        InvalidMessageError: If the layout, version, counts or ranges are wrong.
    """
    d = len(p.features)
    body, end = _CTX.split(data, "cks/ctx"), _CTX_FIELDS.size + 16 * d
    if len(body) < end:
        raise InvalidMessageError("cks/ctx is shorter than its header")
    degree, patients, count = _CTX_FIELDS.unpack_from(body)
    if (degree, count) != (p.degree, d):
        raise InvalidMessageError(
            f"cks/ctx is a header for degree {degree} and {count} features, not {p.degree} and {d}"
        )
    if not 1 <= patients <= MAX_PATIENTS:
        raise InvalidMessageError(f"cks/ctx announces {patients} patients (1-{MAX_PATIENTS})")
    ranges = [struct.unpack_from(">dd", body, _CTX_FIELDS.size + 16 * j) for j in range(d)]
    for lo, hi in ranges:
        ok = math.isfinite(lo) and math.isfinite(hi) and lo <= hi
        if not ok or max(abs(lo), abs(hi)) > MAX_FEATURE_MAGNITUDE:
            raise InvalidMessageError("cks/ctx holds a feature range that is not finite and sane")
    return patients, [(float(lo), float(hi)) for lo, hi in ranges], body[end:]


def encode_vector(batch: int, feature: int, size: int, vector: bytes) -> bytes:
    """``BCKV`` v1: magic, version, batch u32, feature u16, size u32, the ciphertext."""
    return _VEC.pack(_VEC_FIELDS.pack(batch, feature, size), vector)


def decode_vector(data: bytes, batch: int, feature: int, size: int) -> bytes:
    """Parse ``BCKV`` and check it is the expected batch, feature and size.

    Raises:
        InvalidMessageError: If not.
    """
    what = f"cks/x/{batch}/{feature}"
    body = _VEC.split(data, what)
    if len(body) <= _VEC_FIELDS.size or _VEC_FIELDS.unpack_from(body) != (batch, feature, size):
        raise InvalidMessageError(f"{what} is not the expected BCKV vector")
    return body[_VEC_FIELDS.size :]


def encode_result(batch: int, size: int, error_bound: float, vector: bytes) -> bytes:
    """``BCKZ`` v1: magic, version, batch u32, size u32, error bound f64, the ciphertext."""
    return _RES.pack(_RES_FIELDS.pack(batch, size, error_bound), vector)


def decode_result(data: bytes, batch: int, size: int) -> tuple[float, bytes]:
    """Parse ``BCKZ``: the batch's error bound (positive, ≤ ``MAX_ERROR_BOUND``) and ciphertext.

    Raises:
        InvalidMessageError: If the layout, batch, size or bound is wrong.
    """
    body = _RES.split(data, f"cks/z/{batch}")
    if len(body) <= _RES_FIELDS.size:
        raise InvalidMessageError(f"cks/z/{batch} is shorter than its header")
    got_batch, got_size, bound = _RES_FIELDS.unpack_from(body)
    if (got_batch, got_size) != (batch, size):
        raise InvalidMessageError(f"cks/z/{batch} is not the expected BCKZ result")
    if not 0 < bound <= MAX_ERROR_BOUND:
        raise InvalidMessageError(f"cks/z/{batch} reports an error bound outside (0, 2^-8]")
    return float(bound), body[_RES_FIELDS.size :]


@dataclass(frozen=True)
class Released:
    """The released scores: ids, rounded logits (units of ``2^-precision``) and their bounds."""

    ids: list[str]
    logits: list[int]
    precision_bits: int
    sigma: float
    error_bound: float

    def scores(self) -> list[float]:
        """``sigmoid(logit)`` of each released logit."""
        z = np.array(self.logits, dtype=np.float64) * 2.0**-self.precision_bits
        return [float(s) for s in sigmoid(z)]


def encode_scores(r: Released) -> bytes:
    """``BCKS`` v1: magic, version, precision u8, σ f64, score bound f64, count u32, entries.

    Each entry: u16 id length, the UTF-8 id, the i64 rounded logit.
    """
    out = [_SCO_FIELDS.pack(r.precision_bits, r.sigma, r.error_bound, len(r.ids))]
    for pid, z in zip(r.ids, r.logits, strict=True):
        raw = pid.encode()
        out.append(struct.pack(">H", len(raw)) + raw + struct.pack(">q", z))
    return _SCO.pack(*out)


def decode_scores(data: bytes, patients: int) -> Released:
    """Parse ``BCKS`` holding exactly ``patients`` entries with distinct, valid ids.

    Raises:
        InvalidMessageError: If the layout, count, ids or values are wrong.
    """
    body = _SCO.split(data, "cks/scores")
    if len(body) < _SCO_FIELDS.size:
        raise InvalidMessageError("cks/scores is shorter than its header")
    precision, sigma, bound, count = _SCO_FIELDS.unpack_from(body)
    if (precision, count) != (ckks.PRECISION_BITS, patients):
        raise InvalidMessageError(
            f"cks/scores holds {count} scores at {precision} bits, not {patients} at "
            f"{ckks.PRECISION_BITS}"
        )
    if not (0 < sigma < 1 and 0 < bound < 1):
        raise InvalidMessageError("cks/scores carries an implausible flooding level")
    ids: list[str] = []
    logits: list[int] = []
    offset = _SCO_FIELDS.size
    limit = int(ckks.MAX_LOGIT * 2 ** (precision + 1))
    try:
        for _ in range(count):
            (length,) = struct.unpack_from(">H", body, offset)
            if not 1 <= length <= MAX_ID_BYTES:
                raise InvalidMessageError("cks/scores holds an empty or overlong patient id")
            pid = body[offset + 2 : offset + 2 + length].decode()
            (z,) = struct.unpack_from(">q", body, offset + 2 + length)
            if abs(z) > limit:
                raise InvalidMessageError("cks/scores holds a logit beyond the model's range")
            ids.append(pid)
            logits.append(int(z))
            offset += 2 + length + 8
    except (struct.error, UnicodeDecodeError):
        raise InvalidMessageError("cks/scores is truncated or holds a non-UTF-8 id") from None
    if offset != len(body) or len(set(ids)) != len(ids):
        raise InvalidMessageError("cks/scores has trailing bytes or repeats a patient id")
    return Released(ids, logits, precision, sigma, bound)


# --- the hospital ---------------------------------------------------------------------------


def _features(ctx: JobContext, p: Plan) -> tuple[list[str], np.ndarray]:
    """The hospital's patient ids and features (rows × features), from its own table."""
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
    return ids, x


def _csv(r: Released) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["patient_id", "score"])
    for pid, score in zip(r.ids, r.scores(), strict=True):
        writer.writerow([pid, f"{score:.6f}"])
    return out.getvalue().encode()


def _result(p: Plan, r: Released) -> Result:
    scores = r.scores()
    return Result(
        {
            "patients": len(r.ids),
            "model": p.kind,
            "degree": p.degree,
            "batches": len(p.batches(len(r.ids))),
            "security_bits": ckks.STATISTICAL_SECURITY_BITS,
            "precision_bits": r.precision_bits,
            "flooding_sigma": r.sigma,
            "score_error_bound": r.error_bound,
            "mean_score": float(np.mean(scores)),
        },
        {"scores.csv": _csv(r)},
    )


def run_feature_holder(ctx: JobContext) -> Result | None:
    """The hospital: encrypt, send, decrypt in the sandbox with flooding, release the scores.

    Raises:
        DatasetError: If the patients' ids or features are unusable.
        InvalidMessageError: If the insurer's results are malformed (or crash the sandbox).
        ScoreToleranceError: If the flooding would make scores coarser than ``tolerance``.
    """
    p = plan(ctx.spec)
    ids, x = _features(ctx, p)
    ranges = [ckks.coarse_range(float(c.min()), float(c.max())) for c in x.T]
    batches = p.batches(len(ids))
    with CkksSandbox() as sandbox:
        _, (public,) = sandbox.call("keygen", {"degree": p.degree, "relin": p.kind == "mlp"})
        ctx.send(p.insurer, _TAG_CTX, encode_context(p.degree, len(ids), ranges, public))
        for b, (start, stop) in enumerate(batches):
            columns = [np.ascontiguousarray(c[start:stop], dtype="<f8").tobytes() for c in x.T]
            _, vectors = sandbox.call("encrypt", {}, columns)
            for j, vector in enumerate(vectors):
                ctx.send(p.insurer, f"{_TAG_X}/{b}/{j}", encode_vector(b, j, stop - start, vector))
            ctx.progress("encrypt", b + 1, len(batches))
        results = [
            decode_result(ctx.recv(p.insurer, f"{_TAG_Z}/{b}"), b, stop - start)
            for b, (start, stop) in enumerate(batches)
        ]
        bound = max([ckks.minimum_error_bound(p.params)] + [r[0] for r in results])
        sigma = ckks.flooding_sigma(bound, len(ids))
        score_bound = ckks.released_error_bound(bound, sigma) / 4.0  # sigmoid' ≤ 1/4
        if score_bound > p.tolerance:
            raise ScoreToleranceError(
                f"flooding {len(ids)} scores at {ckks.STATISTICAL_SECURITY_BITS}-bit security "
                f"needs σ = {sigma:.2g}, so scores are only within {score_bound:.2g} (tolerance "
                f"{p.tolerance:g}): score fewer patients per job or raise 'tolerance'"
            )
        level = ckks.result_level(p.kind, p.params)
        logits: list[int] = []
        for b, ((start, stop), (_, vector)) in enumerate(zip(batches, results, strict=True)):
            header = {"sizes": [stop - start], "level": level, "sigma": sigma}
            _, (out,) = sandbox.call(
                "decrypt", {**header, "precision": ckks.PRECISION_BITS}, [vector]
            )
            logits += np.frombuffer(out, dtype="<i8").tolist()
            ctx.progress("decrypt", b + 1, len(batches))
    released = Released(ids, logits, ckks.PRECISION_BITS, sigma, score_bound)
    ctx.record(
        "ckks_scoring.released",
        {"patients": len(ids), "sigma": sigma, "score_error_bound": score_bound},
    )
    if p.insurer in ctx.spec.receivers:
        ctx.send(p.insurer, _TAG_SCORES, encode_scores(released))
    return _result(p, released) if ctx.party in ctx.spec.receivers else None


# --- the insurer ----------------------------------------------------------------------------


def load_model(ctx: JobContext, p: Plan) -> RiskModel:
    """The insurer's model from its own dataset, checked against the job's features and kind.

    Raises:
        DatasetError: If the table is no model over the job's features of the job's kind.
    """
    table = ctx.table()
    try:
        model = model_from_columns(table.data, p.features)
    except InvalidInputError as exc:
        raise DatasetError(f"dataset {table.name!r} is no risk model: {exc}") from None
    if model.kind != p.kind:
        raise DatasetError(f"dataset {table.name!r} holds a {model.kind} model, not {p.kind}")
    return model


def run_model_holder(ctx: JobContext) -> Result | None:
    """The insurer: evaluate its model on the hospital's ciphertexts inside the sandbox.

    Raises:
        DatasetError: If its model table is unusable for this job.
        InvalidMessageError / InvalidKeyError / InvalidCiphertextError: If the hospital's
            context or vectors are malformed (or crash the sandbox).
    """
    p = plan(ctx.spec)
    model = load_model(ctx, p)
    columns = model_to_columns(model)
    patients, ranges, public = decode_context(ctx.recv(p.hospital, _TAG_CTX), p)
    batches = p.batches(patients)
    bounds: list[float] = []
    with CkksSandbox() as sandbox:
        answer, _ = sandbox.call("load", {"relin": p.kind == "mlp"}, [public])
        if answer.get("degree") != p.degree:
            raise InvalidMessageError(f"the hospital's context is not of degree {p.degree}")
        for b, (start, stop) in enumerate(batches):
            vectors = [
                decode_vector(ctx.recv(p.hospital, f"{_TAG_X}/{b}/{j}"), b, j, stop - start)
                for j in range(len(p.features))
            ]
            header = {"model": columns, "features": list(p.features), "ranges": ranges}
            answer, (logits,) = sandbox.call("evaluate", {**header, "size": stop - start}, vectors)
            bound = float(answer["error_bound"])
            if not 0 < bound <= MAX_ERROR_BOUND:
                raise InvalidInputError(
                    f"the model's evaluation error bound {bound:.3g} exceeds 2^-8: its weights are "
                    "too large for these CKKS parameters"
                )
            bounds.append(bound)
            ctx.send(p.hospital, f"{_TAG_Z}/{b}", encode_result(b, stop - start, bound, logits))
            ctx.progress("evaluate", b + 1, len(batches))
    ctx.record(
        "ckks_scoring.evaluated",
        {"patients": patients, "batches": len(batches), "error_bound": max(bounds)},
    )
    if p.insurer not in ctx.spec.receivers:
        return None
    return _result(p, decode_scores(ctx.recv(p.hospital, _TAG_SCORES), patients))


# --- the demo -------------------------------------------------------------------------------

#: The health demo's numeric patient features (``bund.parties.demo_data.generate_health``).
DEMO_FEATURES = (
    "age",
    "systolic_bp_mmhg",
    "heart_rate_bpm",
    "bmi_kg_m2",
    "hba1c_pct",
    "ldl_mmol_l",
    "egfr_ml_min_1_73m2",
)


def make_demo_model(train: Table, kind: str = "logistic", seed: int = 0) -> Table:
    """The insurer's demo model table, fitted in plaintext on ``train`` (a demo hospital table).

    The label is the demo's ``event`` (death during follow-up); the features are
    :data:`DEMO_FEATURES`. Load the returned table as the insurer's ``risk_model`` dataset.
    """
    x = np.column_stack([train.numeric(f) for f in DEMO_FEATURES])
    y = train.numeric("event")
    if kind == "logistic":
        model = train_logistic(DEMO_FEATURES, x, y)
    elif kind == "mlp":
        model = train_square_mlp(DEMO_FEATURES, x, y, seed=seed)
    else:
        raise ValueError(f"kind is one of {list(KINDS)}")
    return Table.from_columns("risk_model", model_to_columns(model))


def make_spec(
    hospital: str,
    insurer: str,
    *,
    kind: str = "logistic",
    receivers: Sequence[str] | None = None,
    degree: int = 8192,
    patients: str = "patients",
    model: str = "risk_model",
) -> JobSpec:
    """A demo job: ``insurer`` scores ``hospital``'s ``patients`` with its ``model`` dataset.

    The scores go to ``receivers`` (default: both); the insurer requests the job.
    """
    return JobSpec(
        protocol=DEFINITION.name,
        participants=(
            Participant(hospital, FEATURE_HOLDER, patients, {ID_COLUMN: "patient_id"}),
            Participant(insurer, MODEL_HOLDER, model),
        ),
        receivers=tuple(receivers or (hospital, insurer)),
        purpose="Encrypted mortality-risk scoring of a hospital's patients for an insurer",
        requester=insurer,
        params={"features": ",".join(DEMO_FEATURES), "model": kind, "degree": degree},
    )


# --- the job spec ---------------------------------------------------------------------------


def validate(spec: JobSpec) -> None:
    """Check that ``spec`` is a runnable ``ckks_scoring`` job (``DEFINITION.validate``).

    Raises:
        InvalidJobSpecError: Naming the field to fix.
    """
    DEFINITION.validate(spec)


def outputs(spec: JobSpec) -> frozenset[str]:
    """What the job releases: scores (``policy.OUTPUTS``)."""
    return frozenset({"score"})


def learns(spec: JobSpec) -> dict[str, str]:
    """What each party learns, as ``docs/protocols/ckks-scoring.md`` states it."""
    p = plan(spec)
    scores = "each patient's score, from a logit flooded with Gaussian noise and rounded to 2^-12"
    hospital = f"{scores} (it decrypts them); nothing of the model beyond what the scores imply"
    insurer = (
        "the number of patients and each feature's range to 3 significant bits; no feature "
        "value (only CKKS ciphertexts)"
    )
    if p.insurer in spec.receivers:
        insurer += f"; as a receiver, the patient ids and {scores}"
    return {p.hospital: hospital, p.insurer: insurer}


def trusts(spec: JobSpec, party: str) -> dict[str, str]:
    """Whom the hospital must trust: the insurer, once the insurer receives the scores.

    The hospital decrypts what the insurer returns; released to the insurer, that decryption is
    an oracle no proof can guard (a CKKS result can decrypt to any polynomial of the inputs).
    """
    p = plan(spec)
    if party == p.hospital and p.insurer in spec.receivers:
        return {
            p.insurer: (
                "a deviating insurer could return any ciphertext (a feature column, or one "
                "crafted to recover the CKKS secret key) and receive its decryption; use "
                "paillier_scoring, or make the hospital the only receiver"
            )
        }
    return {}


#: The protocol as registered in ``bund.parties.protocols.PROTOCOLS``.
DEFINITION = ProtocolDef(
    name="ckks_scoring",
    version="1",
    roles={FEATURE_HOLDER: run_feature_holder, MODEL_HOLDER: run_model_holder},
    params=CkksScoringParams,
    role_requirements={
        FEATURE_HOLDER: RoleRequirement(columns=(ID_COLUMN,), who="the hospital"),
        MODEL_HOLDER: RoleRequirement(who="the insurer"),
    },
    outputs=outputs,
    learns=learns,
    trusts=trusts,
    description="encrypted risk scoring: CKKS model evaluation, flooded and rounded decryption",
)
