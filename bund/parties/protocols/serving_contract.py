"""A standing serving contract: score applicants in real time with a trained vertical model.

The job is admitted, approved and started like any other (``docs/jobs.md``); its roles only set
the contract up, and it then stands SERVING at every node (``ProtocolDef.standing``) until a
party revokes it (``bund job cancel``), it expires, or its total limit is spent. Requests are
not job messages: they go through the ``Serving`` RPCs and ``bund.parties.serving``, one unary
call per provider, each checked against the terms below by every provider (``docs/protocols/
serving.md`` has the messages, what each role learns and the threat model).

Roles as in ``vertical_score``: the ``label_holder`` (the bank: it brings no dataset, its loan
system sends each applicant's bank features with the request) and one or more
``feature_holder`` (binding ``id`` in the dataset it serves from), exactly those of the training
job. The set-up, once every party accepted:

1. each party loads its own part of the model of ``model_job`` (``ctx.prior_result``) and
   checks it against the contract: the bank that the providers are those it trained with, each
   provider that the bank is the one it trained with and that its dataset has the model's
   columns (every row is scored once now, so a broken model or dataset fails the set-up, not
   the first request);
2. ``srv/key`` (provider ↔ provider, with two or more providers): each provider's fresh X25519
   masking public key (``bund.compute.dp.pairwise_masks`` layout ``BSAK``). The private key is
   saved, sealed in the node's resume store, before the public key is sent (write-ahead), and
   stays there while the contract serves; per request, the pairwise masks are derived from the
   shared secret salted with the request's digest (``bund.compute.serving``).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

from pydantic import Field

from bund.compute.canonical import canonical_json
from bund.compute.dp import pairwise_masks
from bund.compute.errors import InvalidMessageError
from bund.compute.serving import MAX_IDS
from bund.parties.audit import is_timestamp, parse_timestamp
from bund.parties.jobs import (
    InvalidJobSpecError,
    JobContext,
    JobSpec,
    ProtocolDef,
    ProtocolParams,
    Result,
    RoleRequirement,
    check_name,
)
from bund.parties.protocols import scoring_parts as parts
from bund.parties.protocols.vertical_alignment import (
    FEATURE_HOLDER,
    ID_COLUMN,
    LABEL_HOLDER,
    roles_of,
)
from bund.parties.schema import Expect, OneOf

#: Resume-state names of a provider's masking key and of every provider's public key.
KEY_STATE = "serving_key"
KEYS_STATE = "serving_keys"
#: The longest a contract may stand, from its proposal.
MAX_LIFE = dt.timedelta(days=366)
#: The most ids a contract may serve a day.
MAX_DAILY = 10_000_000
_TAG_KEY = "srv/key"
_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$"


class ServingParams(ProtocolParams):
    """The terms of a ``serving_contract``: which model, how much, until when, for whom."""

    model_job: Annotated[
        str,
        Field(pattern=r"^[0-9a-f]{32}$"),
        Expect("the 32-hex-digit id of the training job whose model to serve"),
    ] = Field(description="the training job: each party serves its own part of its model")
    model_protocol: Annotated[str, OneOf(tuple(parts.LOADERS))] = Field(
        default="vertical_lr", description="the protocol that trained the model"
    )
    expires: Annotated[
        str,
        Field(pattern=_TIMESTAMP),
        Expect("an RFC 3339 UTC time such as 2027-01-31T00:00:00Z"),
    ] = Field(description="when the contract ends (each node's clock): no request after it")
    max_batch: int = Field(
        default=100, ge=1, le=MAX_IDS, description="the most applicants one request may carry"
    )
    max_daily: int = Field(
        ge=1,
        le=MAX_DAILY,
        description="the most applicants scored per UTC day, over every request (each "
        "provider counts and refuses beyond it)",
    )
    max_total: int | None = Field(
        default=None,
        ge=1,
        description="the most applicants scored over the contract's life; once spent, the "
        "contract ends (default: no limit beyond the daily one and the expiry)",
    )
    queriers: str = Field(
        default="",
        max_length=1000,
        description="the bank's operators who may score, comma-separated (default: every "
        "operator of the bank)",
    )
    cutoff: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="default probability from which an applicant is declined (default: the "
        "training job's cutoff)",
    )
    root_interval_s: float = Field(
        default=60.0,
        ge=0.05,
        le=3600.0,
        description="how often each party logs the signed Merkle root of the digests of the "
        "requests it took since its last root",
    )

    @property
    def expiry(self) -> dt.datetime:
        """:attr:`expires` as an aware time."""
        return parse_timestamp(self.expires)

    @property
    def operators(self) -> frozenset[str]:
        """The named queriers (empty: any operator of the bank)."""
        return frozenset(n.strip() for n in self.queriers.split(",") if n.strip())


def _check(spec: JobSpec) -> None:
    """What the roles and the parameters' own ranges do not say."""
    params = ServingParams.of(spec)
    bank, _ = roles_of(spec)
    if spec.participant(bank).dataset is not None:
        raise InvalidJobSpecError(
            f"the bank {bank!r} brings no dataset to a serving contract: its loan system sends "
            "each applicant's bank features with the request; remove its dataset"
        )
    for name in params.operators:
        check_name("querier", name)
    if not is_timestamp(params.expires):
        raise InvalidJobSpecError(f"expires must be an RFC 3339 UTC time, not {params.expires!r}")
    now = dt.datetime.now(dt.UTC)
    if params.expiry <= now:
        raise InvalidJobSpecError(f"the contract expired at {params.expires}: set a later expiry")
    if params.expiry - now > MAX_LIFE:
        raise InvalidJobSpecError(
            f"a contract stands at most {MAX_LIFE.days} days: expires {params.expires} is later"
        )
    if params.max_total is not None and params.max_total < params.max_batch:
        raise InvalidJobSpecError("max_total must allow at least one full request (max_batch)")


# --- set-up ---------------------------------------------------------------------------------


def encode_keys(public_keys: dict[str, bytes]) -> bytes:
    """Every provider's masking public key, for the resume store (canonical JSON, hex)."""
    return canonical_json({name: key.hex() for name, key in sorted(public_keys.items())})


def decode_keys(blob: bytes) -> dict[str, bytes]:
    """The public keys saved by :func:`encode_keys`."""
    doc = json.loads(blob)
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise ValueError("saved masking keys are a JSON object of hex strings")
    keys = {str(name): bytes.fromhex(value) for name, value in doc.items()}
    if any(len(key) != 32 for key in keys.values()):
        raise ValueError("a saved masking key is 32 bytes")
    return keys


def run_feature_holder(ctx: JobContext) -> None:
    """A provider's set-up: check its part against the contract, agree on masking keys.

    Raises:
        PriorResultError: If this node holds no provider part of ``model_job``.
        InvalidJobSpecError: If the bank of this contract did not train the model.
        DatasetError: If the dataset lacks a feature column of the model.
        InvalidMessageError: If another provider's masking key is malformed or reused.
    """
    params = ServingParams.of(ctx.spec)
    bank, providers = roles_of(ctx.spec)
    result = ctx.prior_result(params.model_job, params.model_protocol)
    part = parts.loader(params.model_protocol).provider(result, params.model_job, ctx.party)
    if part.label_holder != bank:
        raise InvalidJobSpecError(
            f"{ctx.party}'s part of job {params.model_job} was trained with "
            f"{part.label_holder!r} as the label holder, not {bank!r}"
        )
    table = ctx.table()
    _, scorable = part.partial_scores(table)
    ctx.note_quality("serving_unscorable_rows", int((~scorable).sum()))
    key = pairwise_masks.create_masking_key()
    ctx.save_state(KEY_STATE, key.export_for_resume())  # before its public key leaves
    public_keys = {ctx.party: key.public_bytes()}
    others = [p for p in providers if p != ctx.party]
    for peer in others:
        ctx.send(peer, _TAG_KEY, pairwise_masks.encode_public_key(public_keys[ctx.party]))
    for peer in others:
        public = pairwise_masks.decode_public_key(ctx.recv(peer, _TAG_KEY))
        if public in public_keys.values():
            raise InvalidMessageError(f"{peer} announced a masking key already in use; stopping")
        public_keys[peer] = public
    ctx.save_state(KEYS_STATE, encode_keys(public_keys))
    ctx.record("serving_contract.ready", {"rows": table.num_rows, "scorable": int(scorable.sum())})


def run_label_holder(ctx: JobContext) -> Result | None:
    """The bank's set-up: check its part against the contract's providers.

    Raises:
        PriorResultError: If this node holds no bank part of ``model_job``.
        InvalidJobSpecError: If the providers are not those the model was trained with.
    """
    params = ServingParams.of(ctx.spec)
    _, providers = roles_of(ctx.spec)
    result = ctx.prior_result(params.model_job, params.model_protocol)
    part = parts.loader(params.model_protocol).bank(result, params.model_job, ctx.party)
    if sorted(part.providers) != sorted(providers):
        raise InvalidJobSpecError(
            f"job {params.model_job} trained with providers {list(part.providers)}; serve "
            f"with exactly those as feature holders, not {providers}"
        )
    ctx.record("serving_contract.ready", {"providers": len(providers)})
    return None


# --- the job spec ---------------------------------------------------------------------------


def outputs(spec: JobSpec) -> frozenset[str]:
    """What the contract releases (``policy.OUTPUTS``): scores, and membership.

    Per queried id the bank learns whether every provider holds it, an intersection, so a
    restricted-personal dataset cannot be served.
    """
    return frozenset({"score", "intersection"})


def terms(params: ServingParams) -> str:
    """The contract's limits, in words."""
    total = "" if params.max_total is None else f", {params.max_total:,} in all"
    return (
        f"at most {params.max_batch:,} a request and {params.max_daily:,} a UTC day{total}, "
        f"until {params.expires}"
    )


def learns(spec: JobSpec) -> dict[str, str]:
    """What each party learns, as ``docs/protocols/serving.md`` states it."""
    params = ServingParams.of(spec)
    bank, providers = roles_of(spec)
    split = (
        "the sum of the providers' partial scores x·w (masked pairwise: never one provider's alone)"
        if len(providers) > 1
        else f"{providers[0]}'s exact partial score x·w"
    )
    out = {
        bank: (
            f"for each firm it names in a request ({terms(params)}): whether some provider "
            "lacks it (never which, nor how many: the decision is refer), and otherwise "
            f"{split}, hence the default probability; any firm it names, not only applicants; "
            "never a provider's feature values or weights"
        )
    }
    for p in providers:
        out[p] = (
            f"every id {bank} names in a request, in the clear, including ids it does not hold, "
            "and when and how many; no score, decision or other party's data"
        )
    return out


#: The protocol as registered in ``bund.parties.protocols.PROTOCOLS``.
DEFINITION = ProtocolDef(
    name="serving_contract",
    version="1",
    roles={LABEL_HOLDER: run_label_holder, FEATURE_HOLDER: run_feature_holder},
    params=ServingParams,
    role_requirements={
        LABEL_HOLDER: RoleRequirement(
            dataset=False, receives=True, who="the bank, whose loan system asks"
        ),
        FEATURE_HOLDER: RoleRequirement(
            min=1,
            max=pairwise_masks.MAX_CONTRIBUTORS,
            columns=(ID_COLUMN,),
            receives=False,
            who="those of the training job",
        ),
    },
    check=_check,
    outputs=outputs,
    learns=learns,
    description="a standing serving contract: per request, partial scores masked pairwise "
    "under the request's digest, with masked missing-indicators",
    standing=True,
)
