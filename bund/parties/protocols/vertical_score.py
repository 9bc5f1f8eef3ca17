"""Scoring new applicants with a vertical logistic-regression model trained by ``vertical_lr``.

Every party applies its own part of the model of the training job ``model_job``, which it kept
as its own result (``ctx.prior_result``), to its own data; only the bank learns the scores.
Roles as in training: the ``label_holder`` (the bank, binding ``id`` in its dataset of applicants,
no label) and each ``feature_holder`` (binding ``id``); the providers must be exactly those of the
training job. ``docs/protocols/vertical-lr.md`` ("Scoring") has what each role learns. Messages,
after the alignment of :func:`bund.parties.protocols.vertical_alignment.align_label_holder` (PSI,
as in training; the common rows are the applicants that every provider holds, ascending id):

1. ``vsc/key`` (provider ↔ provider, only with two or more providers): an X25519 masking public
   key (``bund.compute.dp.pairwise_masks`` layout ``BSAK``).
2. ``vsc/s/i`` (provider → bank): chunk ``i`` of its partial scores ``x·w`` of the common rows
   (standardised exactly as in training, ``SCORE_FRAC_BITS`` fixed point) plus its pairwise
   masks, mod 2^64 (layout ``BSAV``, at most ``MAX_LENGTH`` rows a chunk, fresh masks per chunk).
   The masks cancel in the bank's sum, so the bank learns the providers' total per row and not
   how it splits between them.

The bank adds its own ``x·w + b``, applies the sigmoid and keeps ``scores.csv`` (``id``,
``probability``, ``decision`` at the cut-off, ``matched``). Applicants that not every provider
holds get no probability and the decision ``refer``: the model has no provider features for them,
and scoring them as average firms would hide that.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from bund.compute.dp import pairwise_masks
from bund.compute.errors import InvalidMessageError
from bund.compute.learn import logistic as lg
from bund.compute.psi import normalise_ids
from bund.parties.data import DatasetError, Table
from bund.parties.jobs import (
    InvalidJobSpecError,
    JobContext,
    JobSpec,
    PriorResultError,
    ProtocolDef,
    ProtocolParams,
    Result,
    RoleRequirement,
)
from bund.parties.protocols.vertical_alignment import (
    FEATURE_HOLDER,
    ID_COLUMN,
    LABEL_HOLDER,
    MAX_FEATURES,
    align_feature_holder,
    align_label_holder,
    feature_matrix,
    roles_of,
)
from bund.parties.protocols.vertical_lr import MODEL_FORMAT
from bund.parties.schema import Expect

#: The training protocol whose parts this one applies.
TRAINING = "vertical_lr"
#: Rows a chunk of partial scores carries (the masked-vector layout's cap).
ROWS_PER_MESSAGE = pairwise_masks.MAX_LENGTH
#: Largest magnitude of one provider's fixed-point partial score: ``2^20`` in logit units, far
#: beyond any sane model, and small enough that the sum of every provider's stays inside int64.
MAX_PARTIAL = 1 << (lg.SCORE_FRAC_BITS + 20)
#: Decisions in ``scores.csv``: default probability at or above the cut-off, below it, unscored.
DECLINE, APPROVE, REFER = "decline", "approve", "refer"

_TAG_KEY = "vsc/key"
_TAG_SCORES = "vsc/s"


@dataclass(frozen=True)
class ModelPart:
    """One party's part of a trained model, as it kept it: features, weights, standardisation.

    Attributes:
        features: The feature columns, in the model's order.
        weights: One weight per feature.
        scaler: The training rows' means and scales.
        doc: The whole stored ``model.json`` (intercept, providers, cut-off at the bank).
    """

    features: list[str]
    weights: lg.FloatArray
    scaler: lg.Standardiser
    doc: Mapping[str, Any]

    def partial_scores(self, table: Table, rows: list[int]) -> lg.FloatArray:
        """``x·w`` of ``rows`` of ``table``, standardised exactly as in training.

        Raises:
            DatasetError: If the table lacks a feature column or a value is not a finite number.
        """
        missing = [f for f in self.features if f not in table.columns]
        if missing:
            raise DatasetError(
                f"the dataset lacks the model's feature columns {missing}: score a dataset with "
                "the columns the model was trained on"
            )
        x = feature_matrix(table, self.features, rows)
        if not np.isfinite(x).all():
            raise DatasetError("a feature value to score is not a finite number")
        return lg.partial_scores(self.scaler.apply(x), self.weights)


def load_part(ctx: JobContext, role: str) -> ModelPart:
    """This party's part of the model of job ``model_job``, from its own store, checked.

    Raises:
        PriorResultError: If this node holds no such result, or it is not a part for ``role``.
    """
    job = VerticalScoreParams.of(ctx.spec).model_job
    return part_from_result(ctx.prior_result(job, TRAINING), role, job, ctx.party)


def part_from_result(result: Result, role: str, job: str, party: str) -> ModelPart:
    """``party``'s part for ``role`` of the model that job ``job`` trained, from its result.

    Raises:
        PriorResultError: If the result is not a part for ``role`` of a model of this format.
    """
    try:
        doc = json.loads(result.artifacts["model.json"])
        features = doc["features"]
        ok = (
            doc.get("format") == MODEL_FORMAT
            and doc.get("role") == role
            and isinstance(features, list)
            and 1 <= len(features) <= MAX_FEATURES
            and all(isinstance(f, str) for f in features)
        )
        values = [[float(doc[k][f]) for f in features] for k in ("coefficients", "mean", "scale")]
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok or not np.isfinite(values).all() or min(values[2]) <= 0:
        raise PriorResultError(
            f"{party}'s result of job {job} is not a {role} part of a {MODEL_FORMAT} model; "
            "train again with this version of vertical_lr"
        )
    weights, mean, scale = (np.asarray(v, dtype=np.float64) for v in values)
    return ModelPart(features, weights, lg.Standardiser(mean, scale), doc)


def _chunks(count: int) -> list[tuple[int, int]]:
    return [
        (start, min(count, start + ROWS_PER_MESSAGE))
        for start in range(0, max(1, count), ROWS_PER_MESSAGE)
    ]


def _mask_context(ctx: JobContext, chunk: int) -> bytes:
    return bytes.fromhex(ctx.spec.digest()) + b"/vsc/" + chunk.to_bytes(4, "big")


# --- a provider -----------------------------------------------------------------------------


def run_feature_holder(ctx: JobContext) -> None:
    """A provider's side: align, score its own features, send the masked scores to the bank.

    Raises:
        PriorResultError: If this node holds no provider part of ``model_job``.
        InvalidJobSpecError: If the bank of this job did not train the model.
        DatasetError: If the dataset lacks a feature column of the model.
        InvalidKeyError: If another provider's masking key is malformed.
    """
    bank, providers = roles_of(ctx.spec)
    part = load_part(ctx, FEATURE_HOLDER)
    if part.doc.get("label_holder") != bank:
        job = VerticalScoreParams.of(ctx.spec).model_job
        raise InvalidJobSpecError(
            f"{ctx.party}'s part of job {job} was trained with "
            f"{part.doc.get('label_holder')!r} as the label holder, not {bank!r}"
        )
    alignment = align_feature_holder(ctx, bank)
    scores = lg.quantize_scores(part.partial_scores(ctx.table(), alignment.rows))
    if len(scores) and int(np.abs(scores).max()) >= MAX_PARTIAL:
        raise DatasetError(
            f"{ctx.party}'s partial scores are out of range (|x·w| ≥ 2^20): the model is broken"
        )
    key = pairwise_masks.create_masking_key()
    public_keys = {ctx.party: key.public_bytes()}
    others = [p for p in providers if p != ctx.party]
    for peer in others:
        ctx.send(peer, _TAG_KEY, pairwise_masks.encode_public_key(public_keys[ctx.party]))
    for peer in others:
        public = pairwise_masks.decode_public_key(ctx.recv(peer, _TAG_KEY))
        if public in public_keys.values():
            raise InvalidMessageError(f"{peer} announced a masking key already in use; stopping")
        public_keys[peer] = public
    for i, (start, stop) in enumerate(_chunks(len(scores))):
        masked = pairwise_masks.mask_vector(
            scores[start:stop], key, ctx.party, public_keys, _mask_context(ctx, i)
        )
        ctx.send(bank, f"{_TAG_SCORES}/{i}", pairwise_masks.encode_vector(masked))
    ctx.record("vertical_score.finished", {"scored_rows": len(scores)})


# --- the bank -------------------------------------------------------------------------------


def run_label_holder(ctx: JobContext) -> Result:
    """The bank's side: align, add the providers' masked scores to its own, write the scores.

    Raises:
        PriorResultError: If this node holds no bank part of ``model_job``.
        InvalidJobSpecError: If the providers are not those the model was trained with.
        DatasetError: If the applicants' dataset lacks a feature column of the model.
        InvalidMessageError: If a provider's message is malformed or its total out of range.
    """
    spec = ctx.spec
    params = VerticalScoreParams.of(spec)
    _, providers = roles_of(spec)
    part = load_part(ctx, LABEL_HOLDER)
    trained_with = part.doc.get("providers")
    if not isinstance(trained_with, list) or sorted(trained_with) != sorted(providers):
        raise InvalidJobSpecError(
            f"job {params.model_job} trained with providers {trained_with}; score with "
            f"exactly those as feature holders, not {providers}"
        )
    bias = float(part.doc.get("intercept", math.nan))
    cutoff = float(part.doc.get("cutoff", 0.5) if params.cutoff is None else params.cutoff)
    if not math.isfinite(bias) or not 0 <= cutoff <= 1:
        raise PriorResultError(f"{ctx.party}'s part of job {params.model_job} is damaged")
    table = ctx.table()
    id_column = spec.participant(ctx.party).columns[ID_COLUMN]
    alignment = align_label_holder(ctx, providers)
    rows = alignment.rows
    own = part.partial_scores(table, rows)
    total = np.zeros(len(rows), dtype=np.int64)
    for i, (start, stop) in enumerate(_chunks(len(rows))):
        vectors = [
            pairwise_masks.decode_vector(ctx.recv(p, f"{_TAG_SCORES}/{i}"), stop - start)
            for p in providers
        ]
        total[start:stop] = pairwise_masks.unmask_sum(vectors)
    if len(total) and int(np.abs(total).max()) >= MAX_PARTIAL * len(providers):
        raise InvalidMessageError("the providers' summed partial scores are out of range")
    probability = lg.sigmoid(lg.joint_scores(own, bias, [total]))
    id_values = table.column(id_column)
    ids = normalise_ids(id_values)
    scored = dict(zip(rows, probability.tolist(), strict=True))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "probability", "decision", "matched"])
    decisions = {DECLINE: 0, APPROVE: 0, REFER: 0}
    for row in ids.rows:
        p = scored.get(row)
        decision = REFER if p is None else DECLINE if p >= cutoff else APPROVE
        decisions[decision] += 1
        writer.writerow(
            [id_values[row].strip(), "" if p is None else f"{p:.6f}", decision, int(p is not None)]
        )
    ctx.record("vertical_score.finished", {"applicants": len(ids.rows), "scored": len(rows)})
    summary: dict[str, str | int | float | bool | None] = {
        "model_job": VerticalScoreParams.of(spec).model_job,
        "applicants": len(ids.rows),
        "scored": len(rows),
        "unmatched": len(ids.rows) - len(rows),
        "cutoff": cutoff,
        "approve": decisions[APPROVE],
        "decline": decisions[DECLINE],
        "refer": decisions[REFER],
        "mean_probability": float(probability.mean()) if len(rows) else None,
    }
    return Result(summary, {"scores.csv": out.getvalue().encode()})


# --- the job spec ---------------------------------------------------------------------------


class VerticalScoreParams(ProtocolParams):
    """The parameters of a ``vertical_score`` job."""

    model_job: Annotated[
        str,
        Field(pattern=r"^[0-9a-f]{32}$"),
        Expect("the 32-hex-digit id of the vertical_lr job whose model to apply"),
    ] = Field(description="the training job: each party applies its own part of its model")
    cutoff: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="default probability from which an applicant is declined (default: the "
        "training job's cutoff)",
    )


def validate(spec: JobSpec) -> None:
    """Check that ``spec`` is a runnable ``vertical_score`` job (``DEFINITION.validate``).

    Raises:
        InvalidJobSpecError: Naming the field to fix.
    """
    DEFINITION.validate(spec)


def outputs(spec: JobSpec) -> frozenset[str]:
    """What the job releases: scores (``policy.OUTPUTS``)."""
    return frozenset({"score"})


def learns(spec: JobSpec) -> dict[str, str]:
    """What each party learns, as ``docs/protocols/vertical-lr.md`` ("Scoring") states it."""
    bank, providers = roles_of(spec)
    split = (
        "the sum of the providers' partial scores (masked pairwise: never one provider's alone)"
        if len(providers) > 1
        else f"{providers[0]}'s partial score"
    )
    out = {
        bank: (
            "which of its applicants every provider holds; for each of those, " + split + ", "
            "hence the default probability; never a provider's feature values or weights"
        )
    }
    for p in providers:
        out[p] = (
            f"{bank}'s number of applicants; which of its own ids are applicants that every "
            "provider holds; no score, label or other party's feature"
        )
    return out


#: The protocol as registered in ``bund.parties.protocols.PROTOCOLS``.
DEFINITION = ProtocolDef(
    name="vertical_score",
    version="1",
    roles={LABEL_HOLDER: run_label_holder, FEATURE_HOLDER: run_feature_holder},
    params=VerticalScoreParams,
    role_requirements={
        LABEL_HOLDER: RoleRequirement(columns=(ID_COLUMN,), receives=True, who="the bank"),
        FEATURE_HOLDER: RoleRequirement(
            min=1,
            max=pairwise_masks.MAX_CONTRIBUTORS,
            columns=(ID_COLUMN,),
            receives=False,
            who="those of the training job",
        ),
    },
    outputs=outputs,
    learns=learns,
    description="scoring with a vertical_lr model: PSI alignment, pairwise-masked partial scores",
)
