"""Vertical logistic regression: the plaintext reference, and the steps the joint protocol shares.

The joint protocol (``bund/parties/protocols/vertical_lr.py``, ``docs/protocols/vertical-lr.md``)
and :func:`fit_vertical` call the same functions below in the same order, so with the same seed the
two produce the same coefficients; the protocol only moves some of the sums under encryption.
Fixed-point rounding happens exactly where the protocol encodes for the wire or for Paillier:

* features: each owner standardises its columns on the training rows, clips to ``±CLIP`` and
  rounds to ``FEATURE_FRAC_BITS`` fractional bits (:func:`prepare_features`); every later step
  uses these integers;
* partial scores of the feature holders: rounded to ``SCORE_FRAC_BITS`` (:func:`quantize_scores`)
  before the label holder adds them;
* residuals ``p − y``: rounded to ``RESIDUAL_FRAC_BITS`` (:func:`residuals`), the value the label
  holder encrypts;
* gradients: the exact integer ``Σ_i x_ij · r_i`` (:func:`gradient_ints`), which the protocol
  computes as an encrypted matrix-vector product, masks and unmasks without loss.

The training rows are split into batches once, from the public seed (numpy's generator: batch
order is not a secret), and every epoch visits the same batches in a new order
(:func:`epoch_batches` says why); a remainder smaller than a batch joins the last batch, so no
batch is smaller than ``batch_size`` (a small batch would make a feature holder's gradient reveal
more about the labels, see the doc). The learning rate of epoch ``t`` is
``learning_rate / (1 + lr_decay · t)``. L2 applies to every weight but the intercept. Training
stops early when the mean batch loss of an epoch has improved by less than ``tol`` on
``patience`` epochs in a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Fractional bits of the standardised, clipped features.
FEATURE_FRAC_BITS = 16
#: Standardised features are clipped to ``[-CLIP, CLIP]`` (so ``|x| < 2^19`` as integers).
CLIP = 5.0
#: Fractional bits of the partial scores a feature holder sends.
SCORE_FRAC_BITS = 24
#: Fractional bits of the residuals ``p − y`` the label holder encrypts.
RESIDUAL_FRAC_BITS = 24
#: Fractional bits of a gradient integer ``Σ x·r``.
GRADIENT_FRAC_BITS = FEATURE_FRAC_BITS + RESIDUAL_FRAC_BITS
#: Largest magnitude of a feature integer.
MAX_FEATURE_INT = int(CLIP * (1 << FEATURE_FRAC_BITS))
#: Largest magnitude of a residual integer.
MAX_RESIDUAL_INT = 1 << RESIDUAL_FRAC_BITS
#: Largest batch: keeps every gradient integer inside int64.
MAX_BATCH = 1 << 18


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters shared by every party (they travel in the job spec).

    Attributes:
        epochs: Most passes over the training rows.
        batch_size: Rows per mini-batch (the last batch also takes the remainder).
        learning_rate: Step size of epoch 0.
        lr_decay: The step of epoch ``t`` is ``learning_rate / (1 + lr_decay·t)``.
        l2: L2 penalty ``l2/2·|w|²`` on every weight but the intercept.
        tol: Least improvement of the epoch loss that counts as progress.
        patience: Epochs without progress before stopping.
        seed: Public seed of the train/test split and the batch order.
        label_flip: The probability ``q`` with which the label holder flipped each training label
            (randomised response, label DP; 0: true labels). Training then corrects for it
            (:func:`residuals`, :attr:`gain`).
    """

    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 0.5
    lr_decay: float = 0.1
    l2: float = 1e-3
    tol: float = 1e-4
    patience: int = 2
    seed: int = 0
    label_flip: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.epochs <= 10_000:
            raise ValueError("epochs lies in [1, 10000]")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size lies in [1, {MAX_BATCH}]")
        if not 0 < self.learning_rate <= 100:
            raise ValueError("learning_rate lies in (0, 100]")
        if not 0 <= self.lr_decay <= 100:
            raise ValueError("lr_decay lies in [0, 100]")
        if not 0 <= self.l2 <= 100:
            raise ValueError("l2 lies in [0, 100]")
        if not 0 <= self.tol:
            raise ValueError("tol is at least 0")
        if not 1 <= self.patience <= 10_000:
            raise ValueError("patience lies in [1, 10000]")
        if not 0 <= self.seed < 2**63:
            raise ValueError("seed lies in [0, 2^63)")
        if not 0 <= self.label_flip < 0.5:
            raise ValueError("label_flip lies in [0, 0.5)")

    @property
    def gain(self) -> float:
        """``1/(1 − 2q)``: what scales the residuals of :func:`residuals` back to unbiased."""
        return 1.0 / (1.0 - 2.0 * self.label_flip)

    def rate(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (0-based)."""
        return self.learning_rate / (1.0 + self.lr_decay * epoch)


def split_rows(count: int, test_fraction: float, seed: int) -> tuple[IntArray, IntArray]:
    """Training and held-out row positions of the aligned rows, from the public seed.

    Returns:
        ``(train, test)``, each sorted ascending.

    >>> [a.tolist() for a in split_rows(5, 0.4, 1)] == [
    ...     a.tolist() for a in split_rows(5, 0.4, 1)]
    True
    """
    if not 0 <= test_fraction < 1:
        raise ValueError("test_fraction lies in [0, 1)")
    order = np.random.default_rng([seed, 0]).permutation(count)
    cut = count - int(round(count * test_fraction))
    return np.sort(order[:cut]).astype(np.int64), np.sort(order[cut:]).astype(np.int64)


def epoch_batches(
    train: IntArray, batch_size: int, seed: int, epoch: int, *, reshuffle: bool = False
) -> list[IntArray]:
    """The mini-batches of one epoch: positions into the aligned rows, from the public seed.

    The training rows are split into batches **once** (from ``seed``); each epoch visits the same
    batches in a new order. Keeping each batch's membership fixed is a label-leakage defence: a
    feature holder learns ``X_S^T r_S`` for each batch ``S``, and if the rows were reshuffled
    every epoch, the gradients of several epochs would give it enough equations to solve for the
    per-row residuals, hence the labels (``docs/protocols/vertical-lr.md``). A remainder shorter
    than ``batch_size`` joins the last batch, so every batch has at least
    ``min(batch_size, len(train))`` rows.

    Args:
        train: Positions of the training rows.
        batch_size: Rows per batch.
        seed: The public seed.
        epoch: 0-based epoch.
        reshuffle: Draw new batches every epoch instead (only to measure the attack it enables;
            the protocol never does this).

    >>> [len(b) for b in epoch_batches(np.arange(10), 4, 0, 0)]
    [4, 6]
    >>> a, b = epoch_batches(np.arange(10), 4, 0, 0), epoch_batches(np.arange(10), 4, 0, 1)
    >>> sorted(map(sorted, map(list, a))) == sorted(map(sorted, map(list, b)))
    True
    """
    order = train[np.random.default_rng([seed, 1]).permutation(len(train))]
    if reshuffle:
        order = train[np.random.default_rng([seed, 3, epoch]).permutation(len(train))]
    count = max(1, len(order) // batch_size)
    bounds = [i * batch_size for i in range(count)] + [len(order)]
    batches = [order[bounds[i] : bounds[i + 1]] for i in range(count)]
    visit = np.random.default_rng([seed, 2, epoch]).permutation(count)
    return [batches[i] for i in visit.tolist()]


@dataclass(frozen=True)
class Standardiser:
    """A feature owner's column means and scales, fitted on its training rows only."""

    mean: FloatArray
    scale: FloatArray

    @classmethod
    def fit(cls, x: FloatArray) -> Standardiser:
        """Fit on the training rows ``x`` (rows × columns); a constant column gets scale 1."""
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > 0, std, 1.0))

    def apply(self, x: FloatArray) -> IntArray:
        """Standardise, clip to ``±CLIP`` and round to ``FEATURE_FRAC_BITS`` fractional bits."""
        z = np.clip((x - self.mean) / self.scale, -CLIP, CLIP)
        return np.rint(z * (1 << FEATURE_FRAC_BITS)).astype(np.int64)


def prepare_features(x: FloatArray, train: IntArray) -> IntArray:
    """A feature owner's integer features for all aligned rows, standardised on ``train``."""
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError("features are a finite 2-D array (rows × columns)")
    return Standardiser.fit(x[train]).apply(x)


def partial_scores(xq: IntArray, weights: FloatArray) -> FloatArray:
    """``x·w`` for integer features ``xq`` (rows × columns) and float weights."""
    return (xq.astype(np.float64) @ weights) / float(1 << FEATURE_FRAC_BITS)


def quantize_scores(scores: FloatArray) -> IntArray:
    """Partial scores as ``SCORE_FRAC_BITS`` fixed-point integers (what a feature holder sends)."""
    return np.rint(scores * (1 << SCORE_FRAC_BITS)).astype(np.int64)


def joint_scores(own: FloatArray, bias: float, others: Sequence[IntArray]) -> FloatArray:
    """The label holder's total score: its own ``x·w + b`` plus the others' quantised scores."""
    total = own + bias
    for q in others:
        total = total + q.astype(np.float64) / float(1 << SCORE_FRAC_BITS)
    return total


def sigmoid(z: FloatArray) -> FloatArray:
    """The logistic function, stable for large ``|z|``."""
    out: FloatArray = np.exp(-np.logaddexp(0.0, -z))
    return out


def unbiased_labels(y: FloatArray, flip: float) -> FloatArray:
    """``ŷ = (y − q)/(1 − 2q)`` for labels each flipped with probability ``q``: ``E[ŷ] = true y``.

    The unbiased estimator of Natarajan, Dhillon, Ravikumar and Tewari (*Learning with Noisy
    Labels*, NeurIPS 2013, Lemma 1) for symmetric noise: the logistic loss and its gradient are
    linear in the label, so with ``ŷ`` in place of the label both are unbiased for their values
    on the true labels, and the loss stays convex in the weights.
    """
    out: FloatArray = (y - flip) / (1.0 - 2.0 * flip)
    return out


def log_loss(z: FloatArray, y: FloatArray, flip: float = 0.0) -> float:
    """Mean logistic loss of scores ``z`` against labels ``y`` (unbiased if flipped with ``q``)."""
    return float(np.mean(np.logaddexp(0.0, z) - unbiased_labels(y, flip) * z))


def residuals(z: FloatArray, y: FloatArray, flip: float = 0.0) -> IntArray:
    """``(1 − 2q)·sigmoid(z) + q − y`` as ``RESIDUAL_FRAC_BITS`` fixed-point integers.

    What gets encrypted. With true labels (``q = 0``) it is ``sigmoid(z) − y``. With labels each
    flipped with probability ``q`` (randomised response) it is ``(1 − 2q)·(sigmoid(z) − ŷ)``,
    the unbiased residual (:func:`unbiased_labels`) scaled by ``1 − 2q`` so that ``|r| ≤ 1``
    still holds (every bound and mask is unchanged); the steps multiply by
    ``TrainConfig.gain = 1/(1 − 2q)``. Its sign is the (randomised) label's either way.
    """
    r = (1.0 - 2.0 * flip) * sigmoid(z) + flip - y
    return np.rint(r * (1 << RESIDUAL_FRAC_BITS)).astype(np.int64)


def gradient_ints(xq: IntArray, rq: IntArray) -> IntArray:
    """The exact integers ``Σ_i x_ij · r_i`` (``GRADIENT_FRAC_BITS`` fractional bits).

    ``|x| < 2^19``, ``|r| <= 2^24`` and at most ``MAX_BATCH`` rows keep every sum inside int64.
    """
    if len(rq) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} rows in one gradient")
    out: IntArray = xq.T @ rq
    return out


def gradient_bound(batch_rows: int) -> int:
    """A bound on ``|Σ_i x_ij · r_i|`` over a batch of ``batch_rows`` rows."""
    return batch_rows * MAX_FEATURE_INT * MAX_RESIDUAL_INT


def step(
    weights: FloatArray,
    grad: IntArray,
    batch_rows: int,
    rate: float,
    l2: float,
    gain: float = 1.0,
) -> FloatArray:
    """One gradient step: ``w − rate·(gain·g / batch_rows + l2·w)``, ``g`` decoded from integers.

    ``gain`` is ``TrainConfig.gain``: 1 with true labels.
    """
    g = grad.astype(np.float64) / float(1 << GRADIENT_FRAC_BITS) / batch_rows * gain
    out: FloatArray = weights - rate * (g + l2 * weights)
    return out


def step_bias(bias: float, rq: IntArray, rate: float, gain: float = 1.0) -> float:
    """The intercept's step (no L2): ``b − rate·gain·mean(r)``."""
    return float(bias - rate * (rq.sum() / float(1 << RESIDUAL_FRAC_BITS) / len(rq) * gain))


@dataclass
class EarlyStopping:
    """Stops when the epoch loss has improved by less than ``tol`` on ``patience`` epochs in a row.

    >>> s = EarlyStopping(tol=0.1, patience=2)
    >>> [s.update(v) for v in (1.0, 0.5, 0.45, 0.44)]
    [False, False, False, True]
    """

    tol: float
    patience: int
    best: float = float("inf")
    stale: int = 0

    def update(self, loss: float) -> bool:
        """Record an epoch's loss; ``True`` when training should stop."""
        if self.best - loss < self.tol:
            self.stale += 1
        else:
            self.stale = 0
        self.best = min(self.best, loss)
        return self.stale >= self.patience


@dataclass
class VerticalFit:
    """The outcome of :func:`fit_vertical`.

    Attributes:
        weights: One weight vector per feature block (block 0 is the label holder's).
        bias: The intercept (the label holder's).
        losses: Mean batch loss of each epoch run.
        gradient_trace: Per block ``k >= 1``, every batch's ``(rows, gradient integers)`` in
            order: exactly what feature holder ``k`` learns during training (for leakage tests).
    """

    weights: list[FloatArray]
    bias: float
    losses: list[float]
    gradient_trace: list[list[tuple[IntArray, IntArray]]] = field(default_factory=list)

    @property
    def epochs_run(self) -> int:
        """How many epochs ran before stopping."""
        return len(self.losses)


def fit_vertical(
    blocks: Sequence[IntArray],
    y: FloatArray,
    train: IntArray,
    config: TrainConfig,
    *,
    reshuffle: bool = False,
) -> VerticalFit:
    """Train on the joined data in the clear, exactly as the joint protocol does.

    Args:
        blocks: Integer features of each party for all aligned rows (:func:`prepare_features`);
            block 0 is the label holder's.
        y: 0/1 labels of all aligned rows (the randomised ones under label DP, with
            ``config.label_flip`` their flip probability).
        train: Positions of the training rows.
        config: The shared hyper-parameters.
        reshuffle: New batch membership every epoch (only for leakage measurements).

    Returns:
        The coefficients, the epoch losses and what each feature holder saw.
    """
    if not blocks:
        raise ValueError("give at least the label holder's feature block")
    weights = [np.zeros(b.shape[1]) for b in blocks]
    bias = 0.0
    losses: list[float] = []
    trace: list[list[tuple[IntArray, IntArray]]] = [[] for _ in blocks[1:]]
    stopper = EarlyStopping(config.tol, config.patience)
    for epoch in range(config.epochs):
        rate = config.rate(epoch)
        total, rows_seen = 0.0, 0
        for rows in epoch_batches(
            train, config.batch_size, config.seed, epoch, reshuffle=reshuffle
        ):
            others = [
                quantize_scores(partial_scores(b[rows], w))
                for b, w in zip(blocks[1:], weights[1:], strict=True)
            ]
            z = joint_scores(partial_scores(blocks[0][rows], weights[0]), bias, others)
            total += log_loss(z, y[rows], config.label_flip) * len(rows)
            rows_seen += len(rows)
            rq = residuals(z, y[rows], config.label_flip)
            for k, block in enumerate(blocks):
                grad = gradient_ints(block[rows], rq)
                if k:
                    trace[k - 1].append((rows, grad))
                weights[k] = step(weights[k], grad, len(rows), rate, config.l2, config.gain)
            bias = step_bias(bias, rq, rate, config.gain)
        losses.append(total / rows_seen)
        if stopper.update(losses[-1]):
            break
    return VerticalFit(weights, bias, losses, trace)


def predict_scores(blocks: Sequence[IntArray], fit: VerticalFit, rows: IntArray) -> FloatArray:
    """Scores ``z`` of ``rows`` under a fitted model, rounded as the joint evaluation rounds."""
    others = [
        quantize_scores(partial_scores(b[rows], w))
        for b, w in zip(blocks[1:], fit.weights[1:], strict=True)
    ]
    return joint_scores(partial_scores(blocks[0][rows], fit.weights[0]), fit.bias, others)
