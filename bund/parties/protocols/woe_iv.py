"""Joint WOE/IV screening of feature holders' features against the label holder's labels.

Roles: one ``label_holder`` (the bank: labels, the Paillier key) and one or more
``feature_holder`` (tax bureau, business registry). Each binds the logical column ``id`` to its
company-id column; the label holder also binds ``label`` to its 0/1 label column. A feature
holder's features are every numeric column of its dataset but the id; each is binned by quantiles
of its own values on the aligned rows. ``docs/protocols/woe-iv.md`` has the messages, sizes and
what each role learns. In short:

0. ``woe/key``: the label holder's Paillier public key with Π^mod
   (``bund.parties.protocols.proved_key``), which each feature holder verifies before it sends
   anything.
1. **Align** (``bund.parties.protocols.vertical_alignment``): ECDH-PSI between the label holder and
   each feature holder; each feature holder learns only which of its own ids are in the common set.
2. ``woe/labels/<i>``: the encrypted 0/1 labels of the common rows, in chunks below 2 MiB.
3. ``woe/meta``: each feature holder's feature names, bins per feature and rows per bin;
   ``woe/events``: the encrypted event count of every (feature, bin), an encrypted
   matrix-vector product of its bin indicators with the encrypted labels, squeezed (packed)
   and re-randomised with the feature holder's own ``r^N`` (``r`` uniform in ``Z*_N``), never
   the bank's ``h_s``.

The label holder decrypts the event counts and computes WOE and IV (``bund.compute.learn.woe_iv``);
it never sees a feature value, an edge or which row fell in which bin.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field

from bund.compute import he
from bund.compute.encoding import squeeze_slots
from bund.compute.errors import InvalidMessageError
from bund.compute.learn.woe_iv import (
    MAX_BINS,
    assign_bins,
    bin_indicator_rows,
    merge_small_bins,
    quantile_edges,
    woe_iv,
)
from bund.parties.jobs import InvalidJobSpecError, JobContext, JobSpec, ProtocolDef, Result
from bund.parties.protocols.plots import png
from bund.parties.protocols.proved_key import recv_proved_key, send_proved_key
from bund.parties.protocols.vertical_alignment import (
    FEATURE_HOLDER,
    FEATURE_HOLDER_NEEDS,
    ID_COLUMN,
    LABEL_COLUMN,
    LABEL_HOLDER,
    LABEL_HOLDER_NEEDS,
    MAX_FEATURES,
    QUALITY_SKIPPED_COLUMNS,
    PaillierParams,
    align_feature_holder,
    align_label_holder,
    decode_meta,
    encode_meta,
    feature_matrix,
    label_vector,
    numeric_features,
    recv_vector,
    roles_of,
    send_vector,
)

#: The only scheme of ``woe_iv``: Paillier, whose modulus the bank proves (Π^mod).
SCHEME = he.create_scheme("paillier")
#: The tag of the bank's proved public key, sent before anything else.
KEY_TAG = "woe/key"

# --- WOE / IV -------------------------------------------------------------------------------


def run_label_holder(ctx: JobContext) -> Result | None:
    """The bank's side: align, send encrypted labels, turn encrypted bin counts into WOE/IV.

    Raises:
        SetTooLargeError: If a set is over a node's cap.
        InvalidMessageError: If a feature holder's message is malformed.
        InvalidCiphertextError: If a ciphertext fails validation.
    """
    spec = ctx.spec
    _, providers = roles_of(spec)
    me = spec.participant(ctx.party)
    secret = SCHEME.generate_keypair(WoeIvParams.of(spec).key_bits)
    # First of all, so a provider refuses a key it cannot verify before it sends anything.
    send_proved_key(ctx, secret, providers, KEY_TAG)
    alignment = align_label_holder(ctx, providers)
    y = label_vector(ctx.table(), me.columns[LABEL_COLUMN], alignment.rows)
    n = len(y)
    public = secret.public_key
    source = secret.encryptor()  # the key owner's own: labels under its own key
    labels = source.encrypt(y.astype(np.int64).tolist())
    for peer in providers:
        send_vector(ctx, peer, "woe/labels", labels, source)
    report: dict[str, dict[str, Any]] = {}
    summary: dict[str, str | int | float | bool | None] = {
        "aligned_rows": n,
        "events": int(y.sum()),
    }
    for peer in providers:
        meta = decode_meta(ctx.recv(peer, "woe/meta"))
        names, bin_rows = _check_meta(meta, n)
        total_bins = sum(len(r) for r in bin_rows)
        width, per = squeeze_slots(max(1, n), public.packing_bits(1))
        packed = public.packed_from_bytes(
            ctx.recv(peer, "woe/events"),
            slot_bits=width,
            slots=per,
            count=total_bins,
            bound=n,
            frac_bits=0,
        )
        events = secret.decrypt_packed(packed)  # for the bank's own use: nothing goes back
        at = 0
        for name, rows in zip(names, bin_rows, strict=True):
            counts = events[at : at + len(rows)]
            at += len(rows)
            if any(not 0 <= e <= r for e, r in zip(counts, rows, strict=True)):
                raise InvalidMessageError(f"{peer}'s event counts for {name!r} are impossible")
            stats = woe_iv(counts, rows)
            report[f"{peer}.{name}"] = {
                "party": peer,
                "feature": name,
                "iv": stats.iv,
                "woe": list(stats.woe),
                "rows": list(stats.rows),
                "events": list(stats.events),
            }
            summary[f"iv.{peer}.{name}"] = round(stats.iv, 6)
    ctx.record("woe_iv.finished", {"aligned_rows": n, "features": len(report)})
    if ctx.party not in spec.receivers:
        return None
    artifacts = {
        "woe_iv.json": json.dumps(report, indent=1, sort_keys=True).encode(),
        "iv.png": _iv_chart(report),
    }
    return Result(summary, artifacts)


def _check_meta(meta: dict[str, Any], n: int) -> tuple[list[str], list[list[int]]]:
    names, rows = meta.get("features"), meta.get("rows")
    if (
        not isinstance(names, list)
        or not isinstance(rows, list)
        or len(names) != len(rows)
        or len(names) > MAX_FEATURES
        or not all(isinstance(x, str) and 0 < len(x) <= 128 for x in names)
    ):
        raise InvalidMessageError("the WOE metadata must list feature names and rows per bin")
    for r in rows:
        if (
            not isinstance(r, list)
            or not 1 <= len(r) <= MAX_BINS
            or not all(isinstance(v, int) and v >= 0 for v in r)
            or sum(r) != n
        ):
            raise InvalidMessageError("each feature's rows per bin must add up to the aligned rows")
    return names, rows


def run_feature_holder(ctx: JobContext) -> Result | None:
    """A feature holder's side: align, bin its features, sum encrypted labels per bin.

    Raises:
        InvalidKeyError: If the label holder's key fails validation.
        ProofError: If its key comes without a valid Π^mod: nothing is sent.
        InvalidCiphertextError: If a ciphertext fails validation.
    """
    spec = ctx.spec
    bank, _ = roles_of(spec)
    me = spec.participant(ctx.party)
    public = recv_proved_key(ctx, SCHEME, bank, KEY_TAG)  # before anything is sent
    alignment = align_feature_holder(ctx, bank)
    n = len(alignment.rows)
    labels = recv_vector(ctx, bank, "woe/labels", public, n, 0)
    table = ctx.table()
    names, skipped = numeric_features(table, {me.columns[ID_COLUMN]})
    ctx.note_quality(QUALITY_SKIPPED_COLUMNS, len(skipped))
    if len(names) > MAX_FEATURES:
        raise InvalidJobSpecError(f"at most {MAX_FEATURES} features per party")
    x = feature_matrix(table, names, alignment.rows)
    params = WoeIvParams.of(spec)
    bins, min_rows = params.bins, params.min_bin_rows
    indicator: list[npt.NDArray[np.int64]] = []
    rows_per_bin: list[list[int]] = []
    edges_out: dict[str, list[float]] = {}
    for j, name in enumerate(names):
        column = x[:, j]
        edges = quantile_edges(column, bins) if n else np.zeros(0)
        edges = merge_small_bins(assign_bins(column, edges), edges, min_rows) if n else edges
        assigned = assign_bins(column, edges)
        count = len(edges) + 1
        indicator += bin_indicator_rows(assigned, count)
        rows_per_bin.append(np.bincount(assigned, minlength=count).tolist())
        edges_out[name] = edges.tolist()
    ctx.send(bank, "woe/meta", encode_meta({"features": names, "rows": rows_per_bin}))
    events = public.matvec(indicator, labels, executor=ctx.executor)
    packed = events.squeeze(max(1, n), public.packing_bits(1))
    # Re-randomised with this node's own r^N, r uniform in Z*_N: never the bank's h_s.
    ctx.send(bank, "woe/events", packed.to_bytes(public.encryptor()))
    ctx.record("woe_iv.finished", {"aligned_rows": n, "features": len(names)})
    if ctx.party not in spec.receivers:
        return None
    summary: dict[str, str | int | float | bool | None] = {
        "aligned_rows": n,
        "features": len(names),
    }
    return Result(summary, {"bins.json": json.dumps(edges_out, indent=1).encode()})


def _iv_chart(report: dict[str, dict[str, Any]]) -> bytes:
    from matplotlib.figure import Figure

    items = sorted(report.values(), key=lambda r: r["iv"])
    fig = Figure(figsize=(7, 0.3 * len(items) + 1.5))
    ax = fig.add_subplot()
    ax.barh([f"{r['party']}: {r['feature']}" for r in items], [r["iv"] for r in items])
    for level in (0.02, 0.1, 0.3):
        ax.axvline(level, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("information value (dotted: 0.02 weak, 0.1 medium, 0.3 strong)")
    ax.set_title("Joint feature screening: IV against the bank's default label")
    fig.tight_layout()
    return png(fig)


# --- the job spec ---------------------------------------------------------------------------


class WoeIvParams(PaillierParams):
    """The parameters of a ``woe_iv`` job."""

    bins: int = Field(
        default=10,
        ge=2,
        le=MAX_BINS,
        description="quantile bins per feature, before small bins merge",
    )
    min_bin_rows: int = Field(
        default=5, ge=1, le=1_000_000, description="a bin with fewer rows merges with its neighbour"
    )


def validate(spec: JobSpec) -> None:
    """Check that ``spec`` is a runnable ``woe_iv`` job (``DEFINITION.validate``).

    Raises:
        InvalidJobSpecError: Naming the field to fix.
    """
    DEFINITION.validate(spec)


def outputs(spec: JobSpec) -> frozenset[str]:
    """What the job releases: a screening model summary (``policy.OUTPUTS``)."""
    return frozenset({"model"})


def learns(spec: JobSpec) -> dict[str, str]:
    """What each party learns, as ``docs/protocols/woe-iv.md`` states it."""
    bank, providers = roles_of(spec)
    out = {
        bank: (
            "which of its ids each feature holder also holds (pairwise intersections) and their "
            "set sizes; per feature of each feature holder: its name, rows and events per "
            "quantile bin, hence WOE per bin and IV; never a feature value, bin edge or which "
            "row fell in which bin"
        )
    }
    for p in providers:
        out[p] = (
            f"which of its own ids are in the common set of {bank} and every feature holder, "
            f"and the size of {bank}'s set; nothing about labels (they arrive encrypted)"
        )
    return out


#: The protocol as registered in ``bund.parties.protocols.PROTOCOLS``.
DEFINITION = ProtocolDef(
    name="woe_iv",
    version="1",
    roles={LABEL_HOLDER: run_label_holder, FEATURE_HOLDER: run_feature_holder},
    params=WoeIvParams,
    role_requirements={LABEL_HOLDER: LABEL_HOLDER_NEEDS, FEATURE_HOLDER: FEATURE_HOLDER_NEEDS},
    outputs=outputs,
    learns=learns,
    description="joint WOE/IV screening: encrypted labels summed per bin of each provider feature",
)
