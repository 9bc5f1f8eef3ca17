"""Vertical logistic regression: the bank holds the labels and the key, providers hold features.

Roles and column bindings as in ``woe_iv`` (``label_holder`` binds ``id`` and ``label``, each
``feature_holder`` binds ``id``); every numeric column but those is a feature of its owner. The
maths is ``bund.compute.learn.logistic``, which is also the plaintext reference; this module only
moves the sums. ``docs/protocols/vertical-lr.md`` has the message sizes, what each role learns per
iteration and the label-leakage analysis. Messages, after the alignment of
:func:`bund.parties.protocols.vertical_alignment.align_label_holder`:

1. ``vlr/meta`` (provider → bank): its number of features. ``vlr/key`` (bank → provider): the
   Paillier public key. Both sides derive the train/test split and the batches from the seed.
2. Per batch ``t`` of epoch ``e``:
   ``vlr/s/e/t`` (provider → bank): its partial scores ``x·w`` of the batch rows, fixed point;
   ``vlr/r/e/t/i`` (bank → provider): the encrypted residuals ``[[p − y]]`` of the batch rows;
   ``vlr/g/e/t`` (provider → bank): ``[[Σ_i x_ij·r_i + m_j]]`` for its features ``j``, an
   encrypted matrix-vector product plus a fresh mask ``m`` drawn from ``secrets``, squeezed
   (packed) and re-randomised; ``vlr/u/e/t`` (bank → provider): the decrypted masked values;
   the provider subtracts ``m`` and steps its own weights.
3. ``vlr/c/e`` (bank → provider): continue or stop (early stopping on the epoch loss).
4. ``vlr/eval/i`` (provider → bank): its partial scores of the held-out rows; the bank computes
   AUC, KS, the confusion table and the charts.

Every participant is a receiver, and each receives its own part of the model only: the bank its
intercept, coefficients and standardisation with the joint and bank-only metrics side by side,
``roc.png`` and ``ks.png``; each provider its own weights and standardisation (``model.json``,
:data:`MODEL_FORMAT`), which never leave it. ``vertical_score`` applies these parts to new
applicants through ``ctx.prior_result``.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field

from bund.compute import paillier as pl
from bund.compute.encoding import squeeze_layout
from bund.compute.errors import InvalidMessageError
from bund.compute.layout import Header
from bund.compute.learn import logistic as lg
from bund.compute.learn.metrics import auc, confusion, ks_statistic, roc_curve
from bund.parties.jobs import InvalidJobSpecError, JobContext, JobSpec, ProtocolDef, Result
from bund.parties.protocols.plots import png
from bund.parties.protocols.vertical_alignment import (
    FEATURE_HOLDER,
    FEATURE_HOLDER_NEEDS,
    ID_COLUMN,
    LABEL_COLUMN,
    LABEL_HOLDER,
    LABEL_HOLDER_NEEDS,
    MAX_FEATURES,
    PaillierParams,
    align_feature_holder,
    align_label_holder,
    aligned_once,
    alignment_outputs,
    decode_meta,
    encode_meta,
    feature_matrix,
    label_holder_aligns,
    label_vector,
    numeric_features,
    pack_state,
    recv_vector,
    roles_of,
    send_chunks,
    unpack_state,
    vector_chunks,
)

#: Statistical hiding of a gradient by its mask: the masked value's distribution moves by at
#: most ``2^-MASK_SIGMA`` when the gradient changes.
MASK_SIGMA = 40
#: A batch must hold more than this many rows per feature of any provider (label-leakage
#: defence: with ``rows <= features`` a provider could solve its gradient for the residuals).
MIN_ROWS_PER_FEATURE = 2
#: Rows of partial scores per message (8 bytes each, below 2 MiB).
SCORES_PER_MESSAGE = 250_000

#: The ``format`` of every party's ``model.json``: what ``vertical_score`` accepts.
MODEL_FORMAT = "bund.vertical_lr.part/1"

_INTS_VERSION = 1
_INTS_FIELDS = struct.Struct(">BI")  # width, count
_SCORES_MAGIC = b"BVLS"
_UNMASK_MAGIC = b"BVLU"


def _config(params: VerticalLrParams) -> lg.TrainConfig:
    return lg.TrainConfig(
        epochs=params.epochs,
        batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        lr_decay=params.lr_decay,
        l2=params.l2,
        tol=params.tol,
        patience=params.patience,
        seed=params.seed,
    )


def mask_layout(batch_rows: int, key_bits: int) -> tuple[int, int, int]:
    """The mask bits, squeezed slot width and slots per ciphertext for a batch's gradient.

    Both sides derive them from the batch size: a gradient integer is below
    ``B = lg.gradient_bound(batch_rows)``; its mask is uniform in ``[0, 2^(bits(B)+σ))``, so a
    masked value lies in ``(−B, 2^(bits(B)+σ) + B)``.
    """
    mask_bits = lg.gradient_bound(batch_rows).bit_length() + MASK_SIGMA
    width, per = squeeze_layout(_masked_bound(batch_rows), key_bits)
    return mask_bits, width, per


def _masked_bound(batch_rows: int) -> int:
    bound = lg.gradient_bound(batch_rows)
    return (1 << (bound.bit_length() + MASK_SIGMA)) + bound


def _encode_ints(magic: bytes, values: list[int], width: int) -> bytes:
    """Signed integers of ``width`` bytes: magic, version 1, width (1), count (4), big-endian."""
    return Header(magic, _INTS_VERSION).pack(
        _INTS_FIELDS.pack(width, len(values)),
        *(v.to_bytes(width, "big", signed=True) for v in values),
    )


def _decode_ints(magic: bytes, payload: bytes, width: int, count: int) -> list[int]:
    body = Header(magic, _INTS_VERSION).split(payload, "an integer vector message")
    if len(body) < _INTS_FIELDS.size:
        raise InvalidMessageError("an integer vector message is too short")
    got_width, got_count = _INTS_FIELDS.unpack_from(body)
    if got_width != width or got_count != count or len(body) != _INTS_FIELDS.size + width * count:
        raise InvalidMessageError(
            f"expected {count} integers of {width} bytes, got {got_count} of {got_width}"
        )
    start = _INTS_FIELDS.size
    return [
        int.from_bytes(body[start + i * width : start + (i + 1) * width], "big", signed=True)
        for i in range(count)
    ]


def _send_scores(ctx: JobContext, to: str, tag: str, scores: lg.IntArray) -> None:
    values = scores.tolist()
    for i, start in enumerate(range(0, max(1, len(values)), SCORES_PER_MESSAGE)):
        ctx.send(
            to,
            f"{tag}/{i}",
            _encode_ints(_SCORES_MAGIC, values[start : start + SCORES_PER_MESSAGE], 8),
        )


def _recv_scores(ctx: JobContext, frm: str, tag: str, count: int) -> lg.IntArray:
    out: list[int] = []
    for i, start in enumerate(range(0, max(1, count), SCORES_PER_MESSAGE)):
        want = min(SCORES_PER_MESSAGE, count - start)
        out += _decode_ints(_SCORES_MAGIC, ctx.recv(frm, f"{tag}/{i}"), 8, want)
    return np.asarray(out, dtype=np.int64)


def _features(ctx: JobContext, exclude: set[str], rows: list[int]) -> tuple[list[str], Any]:
    table = ctx.table()
    names, _ = numeric_features(table, exclude)
    if not 1 <= len(names) <= MAX_FEATURES:
        raise InvalidJobSpecError(
            f"{ctx.party}'s dataset has {len(names)} numeric feature columns; vertical_lr needs "
            f"1 to {MAX_FEATURES}"
        )
    return names, feature_matrix(table, names, rows)


# --- the bank -------------------------------------------------------------------------------


@dataclass
class _BankState:
    """The bank's training state, saved at every step that a restart must not redo.

    ``pending`` holds the encrypted residuals of the current batch, one list of chunks per
    provider, exactly as sent: they are saved before they are sent (write-ahead), so a
    resumed bank re-sends the same bytes.
    """

    counts: list[int]
    weights: list[float]
    bias: float = 0.0
    epoch: int = 0
    batch: int = 0
    total: float = 0.0
    losses: list[float] = field(default_factory=list)
    best: float = float("inf")
    stale: int = 0
    stopped: bool = False
    pending: list[list[bytes]] = field(default_factory=list)

    def save(self, ctx: JobContext) -> None:
        doc = {k: v for k, v in vars(self).items() if k != "pending"}
        doc["chunks"] = [len(p) for p in self.pending]
        ctx.save_state("train", pack_state(doc, [c for p in self.pending for c in p]))

    @classmethod
    def load(cls, ctx: JobContext) -> _BankState | None:
        saved = ctx.load_state("train")
        if saved is None:
            return None
        doc, blobs = unpack_state(saved)
        pending, at = [], 0
        for n in doc.pop("chunks"):
            pending.append(blobs[at : at + n])
            at += n
        return cls(**doc, pending=pending)


def _bank_key(ctx: JobContext, bits: int) -> pl.PrivateKey:
    """The job's Paillier key: made once, saved (sealed) before its public half is sent."""
    saved = ctx.load_state("key")
    if saved is not None:
        return pl.PrivateKey.from_resume_state(saved)
    _, private = pl.generate_keypair(bits)
    ctx.save_state("key", private.export_for_resume())
    return private


def run_label_holder(ctx: JobContext) -> Result:
    """The bank's side: align, train with encrypted residuals, evaluate, report.

    Resumable: the alignment, the key and every training step are saved (write-ahead), so
    a restarted bank continues where it stopped and re-sends byte-identical messages.

    Raises:
        InvalidJobSpecError: If a batch would be too small for a provider's feature count.
        InvalidMessageError: If a provider's message is malformed.
        InvalidCiphertextError: If a ciphertext fails the engine's validation.
    """
    spec = ctx.spec
    _, providers = roles_of(spec)
    me = spec.participant(ctx.party)
    params = VerticalLrParams.of(spec)
    config = _config(params)
    alignment = aligned_once(ctx, lambda: align_label_holder(ctx, providers))
    rows = alignment.rows
    y = label_vector(ctx.table(), me.columns[LABEL_COLUMN], rows)
    names, x = _features(ctx, {me.columns[ID_COLUMN], me.columns[LABEL_COLUMN]}, rows)
    train, test = lg.split_rows(len(rows), params.test_fraction, config.seed)
    if len(train) == 0 or len(test) == 0 or len(set(y[test].tolist())) < 2:
        raise InvalidJobSpecError(
            f"{len(rows)} aligned rows leave no usable training or held-out split (the held-out "
            "rows need both labels): change test_fraction or align more rows"
        )
    private = _bank_key(ctx, params.key_bits)
    public = private.public_key
    source = pl.Encryptor(private)
    # The key owner's fast encryptor holds the secret: only an in-process executor may use it.
    batch_source = source if ctx.executor.in_process else pl.Encryptor(public)
    st = _BankState.load(ctx)
    if st is None:
        counts = _provider_feature_counts(ctx, providers, min(config.batch_size, len(train)))
        st = _BankState(counts, [0.0] * len(names))
        st.save(ctx)
    for peer in providers:
        ctx.send(peer, "vlr/key", public.to_bytes())
    if st.epoch > 0:  # a resumed bank may have stopped before telling the providers
        _send_flags(ctx, providers, st.epoch - 1, st.stopped)
    scaler = lg.Standardiser.fit(x[train])
    xq = scaler.apply(x)
    stopper = lg.EarlyStopping(config.tol, config.patience, st.best, st.stale)
    while st.epoch < config.epochs and not st.stopped:
        epoch = st.epoch
        rate = config.rate(epoch)
        batches = lg.epoch_batches(train, config.batch_size, config.seed, epoch)
        while st.batch < len(batches):
            t = st.batch
            batch = batches[t]
            size = len(batch)
            if not st.pending:
                others = [_recv_scores(ctx, p, f"vlr/s/{epoch}/{t}", size) for p in providers]
                weights = np.asarray(st.weights)
                z = lg.joint_scores(lg.partial_scores(xq[batch], weights), st.bias, others)
                rq = lg.residuals(z, y[batch])
                encrypted = pl.encrypt(
                    batch_source,
                    rq.tolist(),
                    frac_bits=lg.RESIDUAL_FRAC_BITS,
                    executor=ctx.executor,
                )
                st.pending = [vector_chunks(encrypted, source) for _ in providers]
                st.total += lg.log_loss(z, y[batch]) * size
                step = lg.step(weights, lg.gradient_ints(xq[batch], rq), size, rate, config.l2)
                st.weights = step.tolist()
                st.bias = lg.step_bias(st.bias, rq, rate)
                st.save(ctx)  # write-ahead: the residuals' random encryption, before sending
            for peer, chunks in zip(providers, st.pending, strict=True):
                send_chunks(ctx, peer, f"vlr/r/{epoch}/{t}", chunks)
            _, width, per = mask_layout(size, public.bits)
            for peer, count in zip(providers, st.counts, strict=True):
                packed = pl.PackedVector.from_bytes(
                    public,
                    ctx.recv(peer, f"vlr/g/{epoch}/{t}"),
                    slot_bits=width,
                    slots=per,
                    count=count,
                    bound=_masked_bound(size),
                    frac_bits=lg.GRADIENT_FRAC_BITS,
                )
                masked = pl.decrypt_packed(private, packed)
                payload = _encode_ints(_UNMASK_MAGIC, masked, _int_bytes(width))
                ctx.send(peer, f"vlr/u/{epoch}/{t}", payload)
            st.batch, st.pending = t + 1, []
            st.save(ctx)
            ctx.progress("train", epoch * len(batches) + t + 1, config.epochs * len(batches))
        st.losses.append(st.total / len(train))
        st.stopped = stopper.update(st.losses[-1]) or epoch == config.epochs - 1
        st.epoch, st.batch, st.total = epoch + 1, 0, 0.0
        st.best, st.stale = stopper.best, stopper.stale
        st.save(ctx)
        _send_flags(ctx, providers, epoch, st.stopped)
    weights = np.asarray(st.weights)
    others = [_recv_scores(ctx, p, "vlr/eval", len(test)) for p in providers]
    z_test = lg.joint_scores(lg.partial_scores(xq[test], weights), st.bias, others)
    baseline = lg.fit_vertical([xq], y, train, config)
    z_bank = lg.predict_scores([xq], baseline, test)
    ctx.record("vertical_lr.finished", {"aligned_rows": len(rows), "epochs": len(st.losses)})
    part = _part(ctx, names, weights, scaler) | {"intercept": st.bias, "providers": providers}
    return _report(spec, part, st.losses, y[test], z_test, z_bank, len(rows))


def _send_flags(ctx: JobContext, providers: list[str], epoch: int, stop: bool) -> None:
    """Tell every provider whether training goes on after ``epoch``."""
    for peer in providers:
        ctx.send(peer, f"vlr/c/{epoch}", b"\x00" if stop else b"\x01")


def _int_bytes(width: int) -> int:
    return (width + 7) // 8


def _provider_feature_counts(ctx: JobContext, providers: list[str], smallest: int) -> list[int]:
    counts: list[int] = []
    for peer in providers:
        meta = decode_meta(ctx.recv(peer, "vlr/meta"))
        features = meta.get("features")
        if (
            not isinstance(features, int)
            or isinstance(features, bool)
            or not 1 <= features <= MAX_FEATURES
        ):
            raise InvalidMessageError(f"{peer} announced an invalid feature count")
        if smallest <= MIN_ROWS_PER_FEATURE * features:
            raise InvalidJobSpecError(
                f"batches of {smallest} rows are too small for {peer}'s {features} features: a "
                f"batch needs more than {MIN_ROWS_PER_FEATURE} rows per feature of every "
                f"provider, or {peer} could solve its gradients for the labels; raise batch_size"
            )
        counts.append(features)
    return counts


def _part(
    ctx: JobContext, names: list[str], weights: lg.FloatArray, scaler: lg.Standardiser
) -> dict[str, Any]:
    """This party's own part of the model: what ``vertical_score`` needs to apply it."""
    return {
        "format": MODEL_FORMAT,
        "party": ctx.party,
        "role": ctx.spec.participant(ctx.party).role,
        "features": names,
        "coefficients": dict(zip(names, weights.tolist(), strict=True)),
        "mean": dict(zip(names, scaler.mean.tolist(), strict=True)),
        "scale": dict(zip(names, scaler.scale.tolist(), strict=True)),
    }


def _report(
    spec: JobSpec,
    part: dict[str, Any],
    losses: list[float],
    y_test: lg.FloatArray,
    z_test: lg.FloatArray,
    z_bank: lg.FloatArray,
    aligned: int,
) -> Result:
    cutoff = VerticalLrParams.of(spec).cutoff
    p_test = lg.sigmoid(z_test)
    ks, ks_at = ks_statistic(y_test, p_test)
    table = confusion(y_test, p_test, cutoff)
    joint_auc, bank_auc = auc(y_test, z_test), auc(y_test, z_bank)
    bank_ks, _ = ks_statistic(y_test, z_bank)
    summary: dict[str, str | int | float | bool | None] = {
        "aligned_rows": aligned,
        "test_rows": len(y_test),
        "epochs_run": len(losses),
        "final_loss": losses[-1],
        "auc": joint_auc,
        "auc_bank_only": bank_auc,
        "ks": ks,
        "ks_bank_only": bank_ks,
        "cutoff": cutoff,
        "true_positive": table.true_positive,
        "false_positive": table.false_positive,
        "true_negative": table.true_negative,
        "false_negative": table.false_negative,
    }
    model = part | {
        "cutoff": cutoff,
        "note": "on the bank's standardised, clipped features; providers keep their own weights",
        "losses": losses,
        "metrics": {
            "joint": {"auc": joint_auc, "ks": ks, "ks_threshold": ks_at},
            "bank_only": {"auc": bank_auc, "ks": bank_ks},
        },
    }
    artifacts = {
        "model.json": json.dumps(model, indent=1).encode(),
        "roc.png": _roc_chart(y_test, z_test, z_bank, joint_auc, bank_auc),
        "ks.png": _ks_chart(y_test, p_test, ks),
    }
    return Result(summary, artifacts)


def _roc_chart(
    y: lg.FloatArray, z: lg.FloatArray, z_bank: lg.FloatArray, joint: float, bank: float
) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    for scores, label in (
        (z, f"joint model, AUC {joint:.3f}"),
        (z_bank, f"bank only, AUC {bank:.3f}"),
    ):
        curve = roc_curve(y, scores)
        ax.plot(curve.fpr, curve.tpr, label=label, drawstyle="steps-post")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title("ROC on the held-out rows")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return png(fig)


def _ks_chart(y: lg.FloatArray, p: lg.FloatArray, ks: float) -> bytes:
    from matplotlib.figure import Figure

    curve = roc_curve(y, p)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(curve.thresholds[1:], curve.tpr[1:], label="defaults (TPR)", drawstyle="steps-post")
    ax.plot(curve.thresholds[1:], curve.fpr[1:], label="non-defaults (FPR)", drawstyle="steps-post")
    ax.invert_xaxis()
    ax.set_xlabel("cut-off on the predicted default probability")
    ax.set_ylabel("share at or above the cut-off")
    ax.set_title(f"KS chart: KS = {ks:.3f}")
    ax.legend()
    fig.tight_layout()
    return png(fig)


# --- a provider -----------------------------------------------------------------------------


@dataclass
class _ProviderState:
    """A provider's training state, saved at every step that a restart must not redo.

    ``masks`` and ``pending`` (its masked encrypted gradient, as sent) are saved before the
    gradient is sent, so a resumed provider re-sends the same bytes and removes the same masks.
    """

    key: bytes
    weights: list[float]
    epoch: int = 0
    batch: int = 0
    epochs_run: int = 0
    stopped: bool = False
    masks: list[int] | None = None
    pending: bytes | None = None

    def save(self, ctx: JobContext) -> None:
        doc = {k: v for k, v in vars(self).items() if k not in ("key", "pending")}
        blobs = [self.key] + ([] if self.pending is None else [self.pending])
        ctx.save_state("train", pack_state(doc, blobs))

    @classmethod
    def load(cls, ctx: JobContext) -> _ProviderState | None:
        saved = ctx.load_state("train")
        if saved is None:
            return None
        doc, blobs = unpack_state(saved)
        return cls(key=blobs[0], pending=blobs[1] if len(blobs) > 1 else None, **doc)


def run_feature_holder(ctx: JobContext) -> Result:
    """A provider's side: its partial scores, masked encrypted gradients, its own weights.

    Resumable like the bank's side: every training step is saved (write-ahead).

    Raises:
        InvalidKeyError: If the bank's key fails validation.
        InvalidCiphertextError: If a ciphertext fails the engine's validation.
        InvalidMessageError: If a message is malformed.
    """
    spec = ctx.spec
    bank, _ = roles_of(spec)
    me = spec.participant(ctx.party)
    params = VerticalLrParams.of(spec)
    config = _config(params)
    alignment = aligned_once(ctx, lambda: align_feature_holder(ctx, bank))
    rows = alignment.rows
    names, x = _features(ctx, {me.columns[ID_COLUMN]}, rows)
    train, test = lg.split_rows(len(rows), params.test_fraction, config.seed)
    ctx.send(bank, "vlr/meta", encode_meta({"features": len(names)}))
    st = _ProviderState.load(ctx)
    if st is None:
        st = _ProviderState(ctx.recv(bank, "vlr/key"), [0.0] * len(names))
        pl.PublicKey.from_bytes(st.key)  # validated before anything is kept
        st.save(ctx)
    public = pl.PublicKey.from_bytes(st.key)
    source = pl.Encryptor(public)
    scaler = lg.Standardiser.fit(x[train])
    xq = scaler.apply(x)
    while st.epoch < config.epochs and not st.stopped:
        epoch = st.epoch
        rate = config.rate(epoch)
        batches = lg.epoch_batches(train, config.batch_size, config.seed, epoch)
        while st.batch < len(batches):
            t = st.batch
            batch = batches[t]
            size = len(batch)
            weights = np.asarray(st.weights)
            mask_bits, width, _ = mask_layout(size, public.bits)
            if st.pending is None or st.masks is None:
                scores = lg.quantize_scores(lg.partial_scores(xq[batch], weights))
                _send_scores(ctx, bank, f"vlr/s/{epoch}/{t}", scores)
                residuals = recv_vector(
                    ctx, bank, f"vlr/r/{epoch}/{t}", public, size, lg.RESIDUAL_FRAC_BITS
                )
                gradient = pl.matvec(
                    xq[batch].T, residuals, lg.FEATURE_FRAC_BITS, executor=ctx.executor
                )
                # The mask must come from the CSPRNG: it is all that hides the gradient.
                st.masks = [secrets.randbits(mask_bits) for _ in names]
                packed = gradient.add_plain(st.masks).squeeze(_masked_bound(size))
                st.pending = packed.to_bytes(source)
                st.save(ctx)  # write-ahead: masks and the re-randomised export, before sending
            ctx.send(bank, f"vlr/g/{epoch}/{t}", st.pending)
            payload = ctx.recv(bank, f"vlr/u/{epoch}/{t}")
            masked = _decode_ints(_UNMASK_MAGIC, payload, _int_bytes(width), len(names))
            exact = np.asarray(
                [v - m for v, m in zip(masked, st.masks, strict=True)], dtype=np.int64
            )
            if np.abs(exact).max(initial=0) > lg.gradient_bound(size):
                raise InvalidMessageError("the unmasked gradient is out of range: bad reply")
            st.weights = lg.step(weights, exact, size, rate, config.l2).tolist()
            st.batch, st.masks, st.pending = t + 1, None, None
            st.save(ctx)
            ctx.progress("train", epoch * len(batches) + t + 1, config.epochs * len(batches))
        flag = ctx.recv(bank, f"vlr/c/{epoch}")
        if flag not in (b"\x00", b"\x01"):
            raise InvalidMessageError("the continue/stop flag is malformed")
        st.epoch, st.batch, st.epochs_run, st.stopped = (
            epoch + 1,
            0,
            st.epochs_run + 1,
            flag == b"\x00",
        )
        st.save(ctx)
    weights = np.asarray(st.weights)
    _send_scores(ctx, bank, "vlr/eval", lg.quantize_scores(lg.partial_scores(xq[test], weights)))
    ctx.record("vertical_lr.finished", {"aligned_rows": len(rows), "epochs": st.epochs_run})
    model = _part(ctx, names, weights, scaler) | {
        "label_holder": bank,
        "note": f"{ctx.party}'s own weights on its standardised, clipped features",
    }
    summary: dict[str, str | int | float | bool | None] = {
        "aligned_rows": len(rows),
        "features": len(names),
        "epochs_run": st.epochs_run,
    }
    return Result(summary, {"model.json": json.dumps(model, indent=1).encode()})


# --- the job spec ---------------------------------------------------------------------------

_DEFAULT = lg.TrainConfig()


class VerticalLrParams(PaillierParams):
    """The parameters of a ``vertical_lr`` job (``bund.compute.learn.logistic.TrainConfig``)."""

    epochs: int = Field(
        default=_DEFAULT.epochs, ge=1, le=10_000, description="most passes over the rows"
    )
    batch_size: int = Field(
        default=_DEFAULT.batch_size,
        ge=1,
        le=lg.MAX_BATCH,
        description=(
            "rows per mini-batch; more than 2 rows per feature of every provider (so no provider "
            "can solve its gradients for the labels)"
        ),
    )
    learning_rate: float = Field(
        default=_DEFAULT.learning_rate, ge=1e-9, le=100, description="step size of the first epoch"
    )
    lr_decay: float = Field(
        default=_DEFAULT.lr_decay,
        ge=0,
        le=100,
        description="the step of epoch t is learning_rate / (1 + lr_decay * t)",
    )
    l2: float = Field(default=_DEFAULT.l2, ge=0, le=100, description="L2 penalty on every weight")
    tol: float = Field(
        default=_DEFAULT.tol,
        ge=0,
        le=1e6,
        description="least loss improvement that counts as progress",
    )
    patience: int = Field(
        default=_DEFAULT.patience,
        ge=1,
        le=10_000,
        description="epochs without progress before stopping",
    )
    seed: int = Field(
        default=_DEFAULT.seed,
        ge=0,
        le=2**63 - 1,
        description="public seed of the split and batch order",
    )
    test_fraction: float = Field(
        default=0.3,
        ge=0.01,
        le=0.9,
        description="share of the aligned rows held out for evaluation",
    )
    cutoff: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="default probability at which the confusion table declines",
    )


def validate(spec: JobSpec) -> None:
    """Check that ``spec`` is a runnable ``vertical_lr`` job (``DEFINITION.validate``).

    Raises:
        InvalidJobSpecError: Naming the field to fix.
    """
    DEFINITION.validate(spec)


def outputs(spec: JobSpec) -> frozenset[str]:
    """What the job releases: a model, and the alignment's membership (``policy.OUTPUTS``)."""
    return frozenset({"model"}) | alignment_outputs(spec)


def learns(spec: JobSpec) -> dict[str, str]:
    """What each party learns, as ``docs/protocols/vertical-lr.md`` states it."""
    bank, providers = roles_of(spec)
    out = {
        bank: (
            f"{label_holder_aligns(spec)}; each provider's feature count; per "
            "training batch each provider's partial score x·w of every batch row, and of every "
            "held-out row at the end; its own coefficients and standardisation (its result) and "
            "the joint and bank-only metrics. Never a provider's feature values, weights or "
            "gradients (they reach it masked)"
        )
    }
    for p in providers:
        out[p] = (
            f"which of its own ids are in the common set; {bank}'s set size; per batch its own "
            "gradient Σ x·(p − y) summed over the batch (never per row), and its own weights "
            "and standardisation, which it keeps as its own result (nothing of the bank's); "
            "never a label, a residual or a score in the clear"
        )
    return out


#: The protocol as registered in ``bund.parties.protocols.PROTOCOLS``.
DEFINITION = ProtocolDef(
    name="vertical_lr",
    version="2",
    roles={LABEL_HOLDER: run_label_holder, FEATURE_HOLDER: run_feature_holder},
    params=VerticalLrParams,
    role_requirements={
        # Each party keeps its own part of the model (never another's) for vertical_score.
        LABEL_HOLDER: dataclasses.replace(LABEL_HOLDER_NEEDS, receives=True),
        FEATURE_HOLDER: dataclasses.replace(FEATURE_HOLDER_NEEDS, receives=True),
    },
    outputs=outputs,
    learns=learns,
    description="vertical logistic regression: Paillier-encrypted residuals, masked gradients",
    resumable=True,
)
