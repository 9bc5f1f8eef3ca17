"""Vertical logistic regression: the bank holds the labels and the key, providers hold features.

Roles and column bindings as in ``woe_iv`` (``label_holder`` binds ``id`` and ``label``, each
``feature_holder`` binds ``id``); every numeric column but those is a feature of its owner. The
maths is ``bund.compute.learn.logistic``, which is also the plaintext reference; this module only
moves the sums. ``docs/protocols/vertical-lr.md`` has the message sizes, what each role learns per
iteration and the label-leakage analysis. Messages, after the alignment of
:func:`bund.parties.protocols.vertical_alignment.align_label_holder`:

1. ``vlr/meta`` (provider → bank): its number of features. ``vlr/key`` (bank → provider): the
   public key of the job's additively homomorphic scheme (``scheme``: ``"paillier"``, the default,
   or ``"ou"``, Okamoto–Uchiyama; ``bund.compute.he``). Both sides derive the train/test split
   and the batches from the seed.
2. Per batch ``t`` of epoch ``e``:
   ``vlr/s/e/t`` (provider → bank): its partial scores ``x·w`` of the batch rows, fixed point;
   ``vlr/r/e/t/i`` (bank → provider): the encrypted residuals ``[[p − y]]`` of the batch rows;
   ``vlr/g/e/t`` (provider → bank): ``[[Σ_i x_ij·r_i + m_j]]`` for its features ``j``, an
   encrypted matrix-vector product plus a fresh mask ``m`` drawn from ``secrets``, squeezed
   (packed) and re-randomised with the provider's own randomness; ``vlr/u/e/t`` (bank →
   provider): the decrypted masked values, released by the scheme's decryption service (under OU
   only within the layout's range, else the job fails); the provider subtracts ``m`` and steps
   its own weights.
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
from typing import Any, Literal

import numpy as np
from pydantic import Field

from bund.compute import he
from bund.compute.dp.budget import Budget, format_rational, parse_rational
from bund.compute.dp.mechanisms import MAX_RR_EPSILON, RandomizedResponse
from bund.compute.encoding import squeeze_slots
from bund.compute.errors import InvalidInputError, InvalidMessageError
from bund.compute.layout import Header
from bund.compute.learn import logistic as lg
from bund.compute.learn.metrics import auc, confusion, ks_statistic, roc_curve
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
    aligned_once,
    decode_meta,
    encode_meta,
    feature_matrix,
    label_vector,
    numeric_features,
    pack_state,
    recv_vector,
    roles_of,
    send_chunks,
    unpack_state,
    vector_chunks,
)
from bund.parties.schema import Exact

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

#: The tag of the bank's proved public key (``proved_key``), sent before anything else.
KEY_TAG = "vlr/key"

_INTS_VERSION = 1
_INTS_FIELDS = struct.Struct(">BI")  # width, count
_SCORES_MAGIC = b"BVLS"
_UNMASK_MAGIC = b"BVLU"


def _config(spec: JobSpec) -> lg.TrainConfig:
    params = VerticalLrParams.of(spec)
    mechanism = label_mechanism(spec)
    return lg.TrainConfig(
        epochs=params.epochs,
        batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        lr_decay=params.lr_decay,
        l2=params.l2,
        tol=params.tol,
        patience=params.patience,
        seed=params.seed,
        label_flip=0.0 if mechanism is None else float(mechanism.flip),
    )


def label_mechanism(spec: JobSpec) -> RandomizedResponse | None:
    """The bank's randomised response of the training labels (label DP), or None without it.

    Raises:
        InvalidJobSpecError: If ``label_epsilon`` is not a rational in ``(0, MAX_RR_EPSILON]``.
    """
    value = VerticalLrParams.of(spec).label_epsilon
    if value is None:
        return None
    try:
        return RandomizedResponse.create(parse_rational(value, "label_epsilon"))
    except (InvalidInputError, ValueError):
        raise InvalidJobSpecError(
            f'label_epsilon must be a rational in (0, {MAX_RR_EPSILON}] written exactly, like "1" '
            f'or "1/2", not {value!r}'
        ) from None


def _training_labels(
    ctx: JobContext, y: lg.FloatArray, train: lg.IntArray, mechanism: RandomizedResponse | None
) -> lg.FloatArray:
    """The labels training uses: under label DP the training rows' randomised, once per job.

    Randomised response runs once and its output is saved before any residual is computed from
    it (write-ahead), so a resumed bank trains on the same randomised labels and a provider never
    sees a second, independent randomisation of a label. The held-out rows keep their true
    labels: they only enter the bank's own metrics, never a message.
    """
    if mechanism is None:
        return y
    saved = ctx.load_state("labels")
    if saved is None:
        noisy = mechanism.apply(y[train].astype(np.int64))
        saved = np.packbits(noisy.astype(np.uint8)).tobytes()
        ctx.save_state("labels", saved)
        ctx.record(
            "vertical_lr.label_dp",
            {"epsilon": format_rational(mechanism.epsilon), "labels": len(train)},
        )
    out = y.copy()
    out[train] = np.unpackbits(np.frombuffer(saved, dtype=np.uint8), count=len(train))
    return out


def mask_layout(batch_rows: int, capacity_bits: int) -> tuple[int, int, int]:
    """The mask bits, squeezed slot width and slots per ciphertext for a batch's gradient.

    Both sides derive them from the batch size and the key's packing capacity
    (``public_key.packing_bits(max_decryptions(...))``): a gradient integer is below
    ``B = lg.gradient_bound(batch_rows)``; its mask is uniform in ``[0, 2^(bits(B)+σ))``, so a
    masked value lies in ``(−B, 2^(bits(B)+σ) + B)``.
    """
    mask_bits = lg.gradient_bound(batch_rows).bit_length() + MASK_SIGMA
    width, per = squeeze_slots(_masked_bound(batch_rows), capacity_bits)
    return mask_bits, width, per


def max_decryptions(epochs: int, batches: int, providers: int) -> int:
    """A bound on the ciphertexts the bank decrypts for the providers over the whole job.

    ``epochs × batches × providers × MAX_FEATURES``: every party can compute it from the spec
    (a provider does not know the others' feature counts, hence ``MAX_FEATURES``), and it bounds
    the real count, at most one decryption per gradient value. Under OU it sizes the decryption
    guard's headroom (``log2`` of it, so the slack costs a few bits).
    """
    return max(1, epochs * batches * providers * MAX_FEATURES)


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
    names, skipped = numeric_features(table, exclude)
    ctx.note_quality(QUALITY_SKIPPED_COLUMNS, len(skipped))
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


def _bank_key(ctx: JobContext, scheme: he.HeScheme, bits: int) -> he.HeSecretKey:
    """The job's key of its scheme: made once, saved (sealed) before its public half is sent.

    A job that fails (an out-of-range OU decryption among the causes) loses its resume states,
    so its key is never used again.
    """
    saved = ctx.load_state("key")
    if saved is not None:
        return scheme.secret_key_from_resume_state(saved)
    secret = scheme.generate_keypair(bits)
    ctx.save_state("key", secret.export_for_resume())
    return secret


def _decryptions(sizes: list[int], counts: list[int], capacity: int) -> int:
    """Packed ciphertexts the bank decrypts for batches of ``sizes`` rows and ``counts``."""
    return sum(-(-count // mask_layout(size, capacity)[2]) for size in sizes for count in counts)


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
    config = _config(spec)
    secret = _bank_key(ctx, scheme_of(spec), params.key_bits)
    # First of all, so a provider refuses a key it cannot verify before it sends anything.
    send_proved_key(ctx, secret, providers, KEY_TAG)
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
    y_fit = _training_labels(ctx, y, train, label_mechanism(spec))
    public = secret.public_key
    # The key owner's fast encryptor holds the secret: it runs on an in-process executor only.
    source = secret.encryptor_for(ctx.executor)
    st = _BankState.load(ctx)
    if st is None:
        counts = _provider_feature_counts(ctx, providers, min(config.batch_size, len(train)))
        st = _BankState(counts, [0.0] * len(names))
        st.save(ctx)
    sizes = [len(b) for b in lg.epoch_batches(train, config.batch_size, config.seed, 0)]
    bound = max_decryptions(config.epochs, len(sizes), len(providers))
    capacity = public.packing_bits(bound)
    per_epoch = _decryptions(sizes, st.counts, capacity)
    current = lg.epoch_batches(train, config.batch_size, config.seed, st.epoch)[: st.batch]
    done = st.epoch * per_epoch + _decryptions([len(b) for b in current], st.counts, capacity)
    # Every decryption a provider sees goes through the service (OU: the range guard).
    service = secret.decryption_service(bound, used=min(done, bound))
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
                rq = lg.residuals(z, y_fit[batch], config.label_flip)
                encrypted = source.encrypt(
                    rq.tolist(), frac_bits=lg.RESIDUAL_FRAC_BITS, executor=ctx.executor
                )
                st.pending = [vector_chunks(encrypted, source) for _ in providers]
                st.total += lg.log_loss(z, y_fit[batch], config.label_flip) * size
                grad = lg.gradient_ints(xq[batch], rq)
                st.weights = lg.step(weights, grad, size, rate, config.l2, config.gain).tolist()
                st.bias = lg.step_bias(st.bias, rq, rate, config.gain)
                st.save(ctx)  # write-ahead: the residuals' random encryption, before sending
            for peer, chunks in zip(providers, st.pending, strict=True):
                send_chunks(ctx, peer, f"vlr/r/{epoch}/{t}", chunks)
            _, width, per = mask_layout(size, capacity)
            for peer, count in zip(providers, st.counts, strict=True):
                packed = public.packed_from_bytes(
                    ctx.recv(peer, f"vlr/g/{epoch}/{t}"),
                    slot_bits=width,
                    slots=per,
                    count=count,
                    bound=_masked_bound(size),
                    frac_bits=lg.GRADIENT_FRAC_BITS,
                )
                masked = service.decrypt_packed(packed)
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
    # The bank-only model: the bank's own labels, at its own node (what it has without the job).
    baseline = lg.fit_vertical([xq], y, train, dataclasses.replace(config, label_flip=0.0))
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
    mechanism = label_mechanism(spec)
    if mechanism is not None:  # trained on randomised labels; the metrics use the true ones
        summary["label_epsilon"] = format_rational(mechanism.epsilon)
        summary["label_flip"] = float(mechanism.flip)
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

    weights: list[float]
    epoch: int = 0
    batch: int = 0
    epochs_run: int = 0
    stopped: bool = False
    masks: list[int] | None = None
    pending: bytes | None = None

    def save(self, ctx: JobContext) -> None:
        doc = {k: v for k, v in vars(self).items() if k != "pending"}
        ctx.save_state("train", pack_state(doc, [] if self.pending is None else [self.pending]))

    @classmethod
    def load(cls, ctx: JobContext) -> _ProviderState | None:
        saved = ctx.load_state("train")
        if saved is None:
            return None
        doc, blobs = unpack_state(saved)
        return cls(pending=blobs[0] if blobs else None, **doc)


def _provider_key(ctx: JobContext, scheme: he.HeScheme, bank: str) -> he.HePublicKey:
    """The bank's public key, verified once (:func:`recv_proved_key`) and kept for a resume."""
    saved = ctx.load_state("key")
    if saved is not None:
        return scheme.public_key_from_bytes(saved)  # verified before it was saved
    public = recv_proved_key(ctx, scheme, bank, KEY_TAG)
    ctx.save_state("key", public.to_bytes())
    return public


def run_feature_holder(ctx: JobContext) -> Result:
    """A provider's side: its partial scores, masked encrypted gradients, its own weights.

    Resumable like the bank's side: every training step is saved (write-ahead).

    Raises:
        InvalidKeyError: If the bank's key fails validation.
        ProofError: If the bank's Paillier key comes without a valid Π^mod: nothing is sent.
        InvalidCiphertextError: If a ciphertext fails the engine's validation.
        InvalidMessageError: If a message is malformed.
    """
    spec = ctx.spec
    bank, providers = roles_of(spec)
    me = spec.participant(ctx.party)
    params = VerticalLrParams.of(spec)
    config = _config(spec)
    # Before anything is sent: the bank's key, its Π^mod verified (OU: trusted at admission).
    public = _provider_key(ctx, scheme_of(spec), bank)
    alignment = aligned_once(ctx, lambda: align_feature_holder(ctx, bank))
    rows = alignment.rows
    names, x = _features(ctx, {me.columns[ID_COLUMN]}, rows)
    train, test = lg.split_rows(len(rows), params.test_fraction, config.seed)
    ctx.send(bank, "vlr/meta", encode_meta({"features": len(names)}))
    st = _ProviderState.load(ctx)
    if st is None:
        st = _ProviderState([0.0] * len(names))
        st.save(ctx)
    # This provider's own randomness re-randomises all it sends, never the bank's base: Paillier
    # r^N, OU u^n, with r (u) uniform in Z*_n, each used once; computed ahead for each batch's
    # export on the node's executor while the bank encrypts the batch's residuals.
    source = public.encryptor().pool(capacity=len(names))
    batches_per_epoch = len(lg.epoch_batches(train, config.batch_size, config.seed, 0))
    capacity = public.packing_bits(
        max_decryptions(config.epochs, batches_per_epoch, len(providers))
    )
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
            mask_bits, width, per = mask_layout(size, capacity)
            if st.pending is None or st.masks is None:
                scores = lg.quantize_scores(lg.partial_scores(xq[batch], weights))
                _send_scores(ctx, bank, f"vlr/s/{epoch}/{t}", scores)
                source.refill(-(-len(names) // per), ctx.executor)
                residuals = recv_vector(
                    ctx, bank, f"vlr/r/{epoch}/{t}", public, size, lg.RESIDUAL_FRAC_BITS
                )
                gradient = public.matvec(
                    xq[batch].T, residuals, lg.FEATURE_FRAC_BITS, executor=ctx.executor
                )
                # The mask must come from the CSPRNG: it is all that hides the gradient.
                st.masks = [secrets.randbits(mask_bits) for _ in names]
                packed = gradient.add_plain(st.masks).squeeze(_masked_bound(size), capacity)
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
            st.weights = lg.step(weights, exact, size, rate, config.l2, config.gain).tolist()
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
    scheme: Literal["paillier", "ou"] = Field(
        default="paillier",
        description="the additively homomorphic scheme: Paillier, or Okamoto–Uchiyama (faster; "
        "no proof of the bank's modulus exists, so each provider's policy must trust the bank)",
    )
    label_epsilon: Exact | None = Field(
        default=None,
        description="label DP: the bank trains on its labels randomised once per job at this ε "
        "(randomised response), charged to its dataset; without it the bank's policy must trust "
        "every provider with vertical_lr (a deviating provider could read every training label)",
    )


def scheme_of(spec: JobSpec) -> he.HeScheme:
    """The job's additively homomorphic scheme (``scheme``, default ``"paillier"``)."""
    return he.create_scheme(VerticalLrParams.of(spec).scheme)


def validate(spec: JobSpec) -> None:
    """Check that ``spec`` is a runnable ``vertical_lr`` job (``DEFINITION.validate``).

    Raises:
        InvalidJobSpecError: Naming the field to fix.
    """
    DEFINITION.validate(spec)


def check(spec: JobSpec) -> None:
    """The checks the parameters' schema cannot make: ``label_epsilon``'s range.

    Raises:
        InvalidJobSpecError: Naming the parameter to fix.
    """
    label_mechanism(spec)


def outputs(spec: JobSpec) -> frozenset[str]:
    """What the job releases: a model (``policy.OUTPUTS``)."""
    return frozenset({"model"})


def cost(spec: JobSpec, party: str) -> Budget:
    """Label DP's ε, charged to the bank's dataset (reserved at admission, charged at start).

    Nothing for a provider, nor for the bank without label DP (its policy trusts the providers).
    """
    bank, _ = roles_of(spec)
    mechanism = label_mechanism(spec)
    if party != bank or mechanism is None:
        return Budget()
    return Budget(mechanism.epsilon)


def _packing_attack(bank: str, provider: str) -> str:
    return (
        f"a deviating {provider} can pack the encrypted residuals it receives in place of its "
        f"gradient, and {bank}'s decryption returns every residual of each batch, whose sign is "
        "the label: it reads every training label"
    )


def learns(spec: JobSpec) -> dict[str, str]:
    """What each party learns, as ``docs/protocols/vertical-lr.md`` states it."""
    bank, providers = roles_of(spec)
    ou = spec.params.get("scheme") == "ou"
    mechanism = label_mechanism(spec)
    label_dp = (
        ""
        if mechanism is None
        else (
            f". Label DP: it trains on its training labels randomised once per job at ε = "
            f"{format_rational(mechanism.epsilon)} (each flipped with probability "
            f"{float(mechanism.flip):.4f}, charged to its dataset) and evaluates on the true "
            "held-out labels, which never leave it"
        )
    )
    out = {
        bank: (
            "which of its ids each provider also holds; each provider's feature count; per "
            "training batch each provider's partial score x·w of every batch row, and of every "
            "held-out row at the end; its own coefficients and standardisation (its result) and "
            "the joint and bank-only metrics. Never a provider's feature values, weights or "
            "gradients (they reach it masked)"
        )
        + label_dp
        + (
            ". Okamoto–Uchiyama scheme: it returns a provider's decrypted values only if they lie "
            "in the protocol's range (40 + log2(decryptions) bits below p); the first "
            "out-of-range one fails the job and retires the key"
            if ou
            else ""
        )
    }
    for p in providers:
        deviating = (
            f". {bank.upper()}'S POLICY TRUSTS {p}: {_packing_attack(bank, p)}"
            if mechanism is None
            else (
                f". Even a deviating {p} (one that packs the encrypted residuals in place of its "
                f"gradient) learns at most {bank}'s training labels randomised at ε = "
                f"{format_rational(mechanism.epsilon)}, each equal to the true label with "
                f"probability {float(mechanism.keep):.4f}: whatever it obtains is "
                "post-processing of that label DP"
            )
        )
        out[p] = (
            f"which of its own ids are in the common set; {bank}'s set size; per batch its own "
            "gradient Σ x·(p − y) summed over the batch (never per row), and its own weights "
            "and standardisation, which it keeps as its own result (nothing of the bank's); "
            "never a label, a residual or a score in the clear" + deviating
        ) + (
            f". Okamoto–Uchiyama scheme: {p}'s node TRUSTS {bank}, the key holder, to have made "
            "its modulus well formed; no proof of that exists (a modulus with p | q−1 would let "
            f"{bank} read more of {p}'s features than the masked gradients past {p}'s "
            f"re-randomisation), so {p}'s approver approves only if {p}'s policy trusts {bank} as "
            f"key holder; {p}'s node still checks the key and every ciphertext and re-randomises "
            "with its own randomness"
            if ou
            else ""
        )
    return out


def trusts(spec: JobSpec, party: str) -> dict[str, str]:
    """Whom each party must trust: the bank its providers without label DP; under OU, the bank.

    The bank decrypts what a provider sends and returns the plaintexts, so a provider that packs
    the residual ciphertexts in place of its gradient reads every residual, hence every training
    label; only label DP (``label_epsilon``) makes that harmless. No proof that an OU modulus is
    well formed exists (unlike Paillier's Π^mod), so under OU a provider's re-randomisation rests
    on the bank's key being honest (``docs/ou.md``).
    """
    params = VerticalLrParams.of(spec)
    bank, providers = roles_of(spec)
    if party == bank and label_mechanism(spec) is None:
        return {
            p: (
                f"{_packing_attack(bank, p)}; protect the labels with label DP (label_epsilon) "
                f"if {p} is not trusted"
            )
            for p in providers
        }
    if params.scheme == "ou" and party in providers:
        return {
            bank: (
                "no proof exists that an Okamoto–Uchiyama modulus is well formed: a bank that "
                "made its key otherwise could learn more of this provider's gradients than the "
                'masked sums (docs/ou.md); use scheme = "paillier" if the bank is not trusted'
            )
        }
    return {}


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
    check=check,
    outputs=outputs,
    learns=learns,
    cost=cost,
    trusts=trusts,
    description=(
        "vertical logistic regression: residuals under the job's additively homomorphic scheme "
        '(Paillier, or Okamoto–Uchiyama with scheme = "ou"), masked gradients'
    ),
    resumable=True,
)
