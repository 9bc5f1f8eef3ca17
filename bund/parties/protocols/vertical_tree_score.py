"""Scoring new applicants with a tree model trained by ``vertical_secureboost``.

Every party applies its own part of the model of the training job ``model_job`` (its own result,
``ctx.prior_result``): each provider evaluates its own splits on its own rows
(:func:`bund.compute.learn.secureboost.provider_decisions`) and sends the decisions to the bank
only; the bank routes each applicant through the trees with its own splits and those decisions
and adds the leaf weights (:func:`bund.compute.learn.secureboost.bank_margins`). Roles as in
training; the providers must be exactly those of the training job. Messages, after the alignment
of :func:`bund.parties.protocols.vertical_alignment.align_label_holder` (PSI; the common rows are
the applicants every provider holds, ascending id):

``vts/d/i`` (provider → bank): chunk ``i`` (at most ``ROWS_PER_MESSAGE`` rows) of its decisions,
one bit per own split (ascending lookup id) per row (layout ``BVTD``).

No provider learns anything of the bank's splits or of another provider's: nothing reaches a
provider but the alignment. The bank learns, per applicant, the side of every provider split
(which the scores themselves can reveal: ``docs/protocols/vertical-secureboost.md``); each
provider's policy decides per counterparty (``trusts``). Applicants that not every provider holds
get ``refer``, as in ``vertical_score``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import struct
from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from bund.compute.errors import InvalidMessageError
from bund.compute.layout import Header
from bund.compute.learn import secureboost as sb
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
    align_feature_holder,
    align_label_holder,
    alignment_outputs,
    feature_matrix,
    roles_of,
)
from bund.parties.protocols.vertical_secureboost import MODEL_FORMAT
from bund.parties.schema import Expect

#: The training protocol whose parts this one applies.
TRAINING = "vertical_secureboost"
#: Rows per decisions message.
ROWS_PER_MESSAGE = 1 << 16
#: Most splits one provider may hold in a model.
MAX_SPLITS = 1 << 20
#: Decisions in ``scores.csv``, as in ``vertical_score``.
DECLINE, APPROVE, REFER = "decline", "approve", "refer"

_DECISIONS = Header(b"BVTD", 1)
_SHAPE = struct.Struct(">II")  # rows, splits


def encode_decisions(decisions: sb.BoolArray) -> bytes:
    """``BVTD`` v1: rows (4), splits (4), then each row's bits, packed row after row."""
    rows, splits = decisions.shape
    return _DECISIONS.pack(_SHAPE.pack(rows, splits), np.packbits(decisions, axis=1).tobytes())


def decode_decisions(payload: bytes, rows: int, splits: int) -> sb.BoolArray:
    """Check a decisions chunk of exactly ``rows`` × ``splits``.

    Raises:
        InvalidMessageError: If the layout or the shape is wrong.
    """
    body = _DECISIONS.split(payload, "a provider's split decisions")
    width = (splits + 7) // 8
    if len(body) != _SHAPE.size + rows * width or _SHAPE.unpack_from(body) != (rows, splits):
        raise InvalidMessageError(f"expected decisions of {rows} rows × {splits} splits")
    packed = np.frombuffer(body, dtype=np.uint8, offset=_SHAPE.size).reshape(rows, width)
    return np.unpackbits(packed, axis=1, count=splits).astype(bool)


def _chunks(count: int) -> list[tuple[int, int]]:
    return [
        (start, min(count, start + ROWS_PER_MESSAGE))
        for start in range(0, max(1, count), ROWS_PER_MESSAGE)
    ]


def _model(ctx: JobContext, role: str) -> dict[str, Any]:
    job = VerticalTreeScoreParams.of(ctx.spec).model_job
    result = ctx.prior_result(job, TRAINING)
    try:
        doc = json.loads(result.artifacts["model.json"])
        ok = doc.get("format") == MODEL_FORMAT and doc.get("role") == role
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise PriorResultError(
            f"{ctx.party}'s result of job {job} is not a {role} part of a {MODEL_FORMAT} model; "
            "train again with this version of vertical_secureboost"
        )
    return dict(doc)


def _columns(table: Table, names: list[str], rows: list[int]) -> dict[str, sb.FloatArray]:
    missing = [n for n in names if n not in table.columns]
    if missing:
        raise DatasetError(
            f"the dataset lacks the model's feature columns {missing}: score a dataset with the "
            "columns the model was trained on"
        )
    x = feature_matrix(table, names, rows)
    if not np.isfinite(x).all():
        raise DatasetError("a feature value to score is not a finite number")
    return {n: x[:, j] for j, n in enumerate(names)}


def provider_splits(doc: Mapping[str, Any]) -> dict[int, sb.ProviderSplit]:
    """A provider's stored splits, checked.

    Raises:
        PriorResultError: If they are malformed.
    """
    try:
        splits = {
            int(k): sb.ProviderSplit(str(v["feature"]), float(v["threshold"]))
            for k, v in doc["splits"].items()
        }
    except (KeyError, TypeError, ValueError, AttributeError):
        raise PriorResultError("the provider's part of the tree model is damaged") from None
    if len(splits) > MAX_SPLITS or any(not math.isfinite(s.threshold) for s in splits.values()):
        raise PriorResultError("the provider's part of the tree model is damaged")
    return splits


def bank_trees(doc: Mapping[str, Any]) -> list[sb.BankTree]:
    """The bank's stored trees, checked.

    Raises:
        PriorResultError: If they are malformed.
    """
    try:
        trees = []
        for tree in doc["trees"]:
            splits = {}
            for k, v in tree["splits"].items():
                if "provider" in v:
                    node = sb.BankNode(provider=str(v["provider"]), lookup=int(v["lookup"]))
                else:
                    node = sb.BankNode(feature=str(v["feature"]), threshold=float(v["threshold"]))
                splits[int(k)] = node
            leaves = {int(k): float(w) for k, w in tree["leaves"].items()}
            trees.append(sb.BankTree(splits, leaves))
        return trees
    except (KeyError, TypeError, ValueError, AttributeError):
        raise PriorResultError("the bank's part of the tree model is damaged") from None


# --- a provider ---------------------------------------------------------------------------------


def run_feature_holder(ctx: JobContext) -> None:
    """A provider's side: align, evaluate its own splits on the common rows, send the bits.

    Raises:
        PriorResultError: If this node holds no provider part of ``model_job``.
        InvalidJobSpecError: If the bank of this job did not train the model.
        DatasetError: If the dataset lacks a feature column of the model.
    """
    bank, _ = roles_of(ctx.spec)
    doc = _model(ctx, FEATURE_HOLDER)
    if doc.get("label_holder") != bank:
        raise InvalidJobSpecError(
            f"{ctx.party}'s part of the model was trained with {doc.get('label_holder')!r} as "
            f"the label holder, not {bank!r}"
        )
    splits = provider_splits(doc)
    alignment = align_feature_holder(ctx, bank)
    names = sorted({s.feature for s in splits.values()})
    columns = _columns(ctx.table(), names, alignment.rows)
    _, decisions = sb.provider_decisions(splits, columns, len(alignment.rows))
    for i, (start, stop) in enumerate(_chunks(len(alignment.rows))):
        ctx.send(bank, f"vts/d/{i}", encode_decisions(decisions[start:stop]))
    ctx.record("vertical_tree_score.finished", {"scored_rows": len(alignment.rows)})


# --- the bank -----------------------------------------------------------------------------------


def run_label_holder(ctx: JobContext) -> Result:
    """The bank's side: align, route the applicants through the trees, write the scores.

    Raises:
        PriorResultError: If this node holds no bank part of ``model_job``.
        InvalidJobSpecError: If the providers are not those the model was trained with.
        DatasetError: If the applicants' dataset lacks a feature column of the model.
        InvalidMessageError: If a provider's decisions are malformed.
    """
    spec = ctx.spec
    params = VerticalTreeScoreParams.of(spec)
    _, providers = roles_of(spec)
    doc = _model(ctx, LABEL_HOLDER)
    trained_with = doc.get("providers")
    if not isinstance(trained_with, list) or sorted(trained_with) != sorted(providers):
        raise InvalidJobSpecError(
            f"job {params.model_job} trained with providers {trained_with}; score with exactly "
            f"those as feature holders, not {providers}"
        )
    trees = bank_trees(doc)
    base = float(doc.get("base_margin", math.nan))
    cutoff = float(doc.get("cutoff", 0.5) if params.cutoff is None else params.cutoff)
    objective = doc.get("objective")
    if not math.isfinite(base) or objective not in ("binary:logistic", "reg:squarederror"):
        raise PriorResultError(f"{ctx.party}'s part of job {params.model_job} is damaged")
    used: dict[str, list[int]] = {p: [] for p in providers}
    own_names: set[str] = set()
    for tree in trees:
        for node in tree.splits.values():
            if node.provider:
                used.setdefault(node.provider, []).append(node.lookup)
            else:
                own_names.add(node.feature)
    table = ctx.table()
    id_column = spec.participant(ctx.party).columns[ID_COLUMN]
    alignment = align_label_holder(ctx, providers)
    rows = alignment.rows
    own = _columns(table, sorted(own_names), rows)
    decisions: dict[str, tuple[list[int], sb.BoolArray]] = {}
    for p in providers:
        # The provider sends one bit per split it kept (ascending lookup id): exactly the
        # lookups of its splits in the kept trees.
        ids = sorted(set(used.get(p, [])))
        parts = [
            decode_decisions(ctx.recv(p, f"vts/d/{i}"), stop - start, len(ids))
            for i, (start, stop) in enumerate(_chunks(len(rows)))
        ]
        decisions[p] = (ids, np.concatenate(parts)[: len(rows)])
    margin = sb.bank_margins(trees, base, own, decisions, len(rows))
    probability = sb.probabilities(margin, objective)
    return _scores(ctx, table, id_column, rows, probability, cutoff, params, objective)


def _scores(
    ctx: JobContext,
    table: Table,
    id_column: str,
    rows: list[int],
    probability: sb.FloatArray,
    cutoff: float,
    params: VerticalTreeScoreParams,
    objective: str,
) -> Result:
    id_values = table.column(id_column)
    ids = normalise_ids(id_values)
    scored = dict(zip(rows, probability.tolist(), strict=True))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    value = "probability" if objective == "binary:logistic" else "prediction"
    writer.writerow(["id", value, "decision", "matched"])
    decisions = {DECLINE: 0, APPROVE: 0, REFER: 0}
    for row in ids.rows:
        p = scored.get(row)
        decision = REFER if p is None else DECLINE if p >= cutoff else APPROVE
        decisions[decision] += 1
        writer.writerow(
            [id_values[row].strip(), "" if p is None else f"{p:.6f}", decision, int(p is not None)]
        )
    ctx.record("vertical_tree_score.finished", {"applicants": len(ids.rows), "scored": len(rows)})
    summary: dict[str, str | int | float | bool | None] = {
        "model_job": params.model_job,
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


# --- the job spec -------------------------------------------------------------------------------


class VerticalTreeScoreParams(ProtocolParams):
    """The parameters of a ``vertical_tree_score`` job."""

    model_job: Annotated[
        str,
        Field(pattern=r"^[0-9a-f]{32}$"),
        Expect("the 32-hex-digit id of the vertical_secureboost job whose model to apply"),
    ] = Field(description="the training job: each party applies its own part of its model")
    cutoff: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="default probability from which an applicant is declined (default: the "
        "training job's cutoff)",
    )


def outputs(spec: JobSpec) -> frozenset[str]:
    """What the job releases: scores, and the alignment's membership (``policy.OUTPUTS``)."""
    return frozenset({"score"}) | alignment_outputs(spec)


def learns(spec: JobSpec) -> dict[str, str]:
    """What each party learns, as ``docs/protocols/vertical-secureboost.md`` ("Scoring") says."""
    bank, providers = roles_of(spec)
    out = {
        bank: (
            "which of its applicants every provider holds; for each of those, the side of every "
            "provider split of the model (left or right, never a threshold or feature value), "
            "hence the score"
        )
    }
    for p in providers:
        out[p] = (
            f"{bank}'s number of applicants; which of its own ids are applicants that every "
            f"provider holds; nothing of {bank}'s splits or scores or of other providers'. "
            f"{bank} learns which side of each of {p}'s splits every applicant falls on (the "
            "score can reveal it too): its policy must trust the bank for this protocol"
        )
    return out


def trusts(spec: JobSpec, party: str) -> dict[str, str]:
    """A provider trusts the bank with the sides of its splits (``learns`` says why)."""
    bank, providers = roles_of(spec)
    if party in providers:
        return {
            bank: (
                "the bank learns which side of each of this provider's splits every applicant "
                "falls on, and a bank that deviates can score any firm it names"
            )
        }
    return {}


#: The protocol as registered in ``bund.parties.protocols.PROTOCOLS``.
DEFINITION = ProtocolDef(
    name="vertical_tree_score",
    version="1",
    roles={LABEL_HOLDER: run_label_holder, FEATURE_HOLDER: run_feature_holder},
    params=VerticalTreeScoreParams,
    role_requirements={
        LABEL_HOLDER: RoleRequirement(columns=(ID_COLUMN,), receives=True, who="the bank"),
        FEATURE_HOLDER: RoleRequirement(
            min=1, max=None, columns=(ID_COLUMN,), receives=False, who="those of the training job"
        ),
    },
    outputs=outputs,
    learns=learns,
    trusts=trusts,
    description="scoring with a vertical_secureboost model: PSI alignment, providers' split "
    "decisions to the bank only",
)
