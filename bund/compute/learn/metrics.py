"""Binary-classifier metrics: exact AUC, KS, ROC points, confusion table; binned AUC, log-loss.

Labels are 0/1 (1 = the event, for credit a default); a higher score means "more likely 1". The
exact metrics count ties half. The binned AUC and the clipped log-loss are what a differentially
private evaluation can release: they work on integer counts, so each party can add integer noise
to its own counts and the sum of the noisy counts still gives an estimate
(``bund.compute.learn.fed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def _check(y: npt.ArrayLike, score: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    labels = np.asarray(y, dtype=np.float64).ravel()
    scores = np.asarray(score, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    positives = int(labels.sum())
    if positives == 0 or positives == labels.size:
        raise ValueError("AUC, KS and ROC need at least one label of each class")
    return labels, scores


@dataclass(frozen=True)
class RocCurve:
    """Points of the ROC curve, one per distinct score, from (0, 0) to (1, 1).

    Attributes:
        fpr: False-positive rates, non-decreasing.
        tpr: True-positive rates, non-decreasing.
        thresholds: The score at and above which a row is called positive for each point
            (``+inf`` for the first point, where nothing is).
    """

    fpr: FloatArray
    tpr: FloatArray
    thresholds: FloatArray


def roc_curve(y: npt.ArrayLike, score: npt.ArrayLike) -> RocCurve:
    """The ROC curve with one point per distinct score (tied rows move together).

    Raises:
        ValueError: If the lengths differ, a label is not 0/1, a score is not finite, or one
            class is missing.

    >>> c = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    >>> c.fpr.tolist(), c.tpr.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    labels, scores = _check(y, score)
    order = np.argsort(-scores, kind="stable")
    s, lab = scores[order], labels[order]
    last_of_tie = np.flatnonzero(np.r_[np.diff(s) != 0, True])
    tp = np.cumsum(lab)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    pos, neg = labels.sum(), labels.size - labels.sum()
    return RocCurve(
        fpr=np.r_[0.0, fp / neg],
        tpr=np.r_[0.0, tp / pos],
        thresholds=np.r_[np.inf, s[last_of_tie]],
    )


def auc(y: npt.ArrayLike, score: npt.ArrayLike) -> float:
    """Area under the ROC curve: P(score of a random 1 > score of a random 0), ties count half.

    Computed from average ranks (Mann-Whitney U), exact for ties.

    >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    >>> auc([0, 1], [0.5, 0.5])
    0.5
    """
    labels, scores = _check(y, score)
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    ranks = np.empty(s.size, dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, np.diff(s) != 0])
    ends = np.r_[starts[1:], s.size]
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        ranks[a:b] = (a + b + 1) / 2.0  # average of 1-based ranks a+1 .. b
    rank_of = np.empty_like(ranks)
    rank_of[order] = ranks
    pos = labels.sum()
    neg = labels.size - pos
    u = rank_of[labels == 1].sum() - pos * (pos + 1) / 2.0
    return float(u / (pos * neg))


def ks_statistic(y: npt.ArrayLike, score: npt.ArrayLike) -> tuple[float, float]:
    """Kolmogorov-Smirnov statistic ``max |TPR - FPR|`` over thresholds, and where it is reached.

    Returns:
        ``(ks, threshold)``: the largest gap between the score distributions of the two classes
        and the score at and above which rows are called positive there.

    >>> ks_statistic([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    (0.5, 0.8)
    """
    curve = roc_curve(y, score)
    gaps = np.abs(curve.tpr - curve.fpr)
    best = int(np.argmax(gaps))
    return float(gaps[best]), float(curve.thresholds[best])


@dataclass(frozen=True)
class Confusion:
    """Counts at one cut-off: a row is called positive when its score is at or above it."""

    cutoff: float
    true_positive: int
    false_positive: int
    true_negative: int
    false_negative: int

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 0 when nothing is called positive."""
        called = self.true_positive + self.false_positive
        return self.true_positive / called if called else 0.0

    @property
    def recall(self) -> float:
        """TP / (TP + FN): the share of events caught."""
        events = self.true_positive + self.false_negative
        return self.true_positive / events if events else 0.0

    @property
    def accuracy(self) -> float:
        """Share of rows called correctly."""
        total = self.true_positive + self.false_positive + self.true_negative + self.false_negative
        return (self.true_positive + self.true_negative) / total if total else 0.0


def confusion(y: npt.ArrayLike, score: npt.ArrayLike, cutoff: float) -> Confusion:
    """The confusion table at ``cutoff`` (score ``>= cutoff`` is called positive).

    >>> confusion([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.4)
    Confusion(cutoff=0.4, true_positive=1, false_positive=1, true_negative=1, false_negative=1)
    """
    labels = np.asarray(y, dtype=np.float64).ravel()
    scores = np.asarray(score, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    called = scores >= cutoff
    event = labels == 1
    return Confusion(
        cutoff=float(cutoff),
        true_positive=int((called & event).sum()),
        false_positive=int((called & ~event).sum()),
        true_negative=int((~called & ~event).sum()),
        false_negative=int((~called & event).sum()),
    )


# --- binned metrics: what a differentially private evaluation can release -------------------

IntArray = npt.NDArray[np.int64]


def clip_logits(logits: npt.ArrayLike, clip: float) -> FloatArray:
    """Scores on the logit scale, clipped so that ``sigmoid`` stays in ``[clip, 1 − clip]``.

    The clip bounds every record's log-loss by ``ln(1/clip)`` (a finite sensitivity) and gives
    the AUC's bins a fixed, public range ``[−L, L]`` with ``L = ln((1 − clip)/clip)``.
    """
    if not 0 < clip < 0.5:
        raise ValueError("clip must lie in (0, 1/2)")
    bound = math.log((1 - clip) / clip)
    values = np.asarray(logits, dtype=np.float64).ravel()
    if not np.isfinite(values).all():
        raise ValueError("scores must be finite")
    return np.clip(values, -bound, bound)


def score_bins(logits: npt.ArrayLike, bins: int, clip: float) -> IntArray:
    """The bin of each score: ``bins`` equal-width bins of the clipped logit over ``[−L, L]``.

    The binning is monotone (a higher score never lands in a lower bin), so the binned AUC below
    only loses the order of the pairs that share a bin.

    >>> score_bins([-100.0, 0.0, 0.1, 100.0], 4, 0.01).tolist()
    [0, 2, 2, 3]
    """
    if bins < 1:
        raise ValueError("need at least one bin")
    clipped = clip_logits(logits, clip)
    bound = math.log((1 - clip) / clip)
    index = np.floor((clipped + bound) / (2 * bound) * bins)
    return np.clip(index, 0, bins - 1).astype(np.int64)


def binned_counts(y: npt.ArrayLike, logits: npt.ArrayLike, bins: int, clip: float) -> IntArray:
    """Rows per score bin and label: ``bins`` counts of label 0, then ``bins`` of label 1.

    >>> binned_counts([0, 1, 1], [-1.0, 0.5, 3.0], 2, 0.01).tolist()
    [1, 0, 0, 2]
    """
    labels = np.asarray(y, dtype=np.float64).ravel()
    where = score_bins(logits, bins, clip)
    if labels.shape != where.shape:
        raise ValueError(f"{labels.size} labels but {where.size} scores")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    negatives = np.bincount(where[labels == 0], minlength=bins)
    positives = np.bincount(where[labels == 1], minlength=bins)
    return np.concatenate([negatives, positives]).astype(np.int64)


def _halves(counts: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    cells = np.asarray(counts, dtype=np.float64).ravel()
    if cells.size % 2 or cells.size == 0 or not np.isfinite(cells).all():
        raise ValueError("binned counts are 2·B finite cells: label 0 by bin, then label 1")
    half = cells.size // 2
    return cells[:half], cells[half:]


def binned_auc(counts: npt.ArrayLike) -> float:
    """The Mann–Whitney AUC from binned counts: pairs in one bin count half.

    ``counts`` is :func:`binned_counts`'s layout, possibly noisy (a cell may then be negative:
    the estimate stays the same bilinear form, clipped to [0, 1]). It is the exact AUC of the
    scores rounded to their bins, which differs from the AUC of the scores themselves by at
    most :func:`binned_auc_tolerance`.

    Raises:
        ValueError: If a class has no rows (a total of 0 or less).

    >>> round(binned_auc([2, 1, 0, 0, 1, 2]), 4)
    0.9444
    """
    negatives, positives = _halves(counts)
    total_neg, total_pos = negatives.sum(), positives.sum()
    if total_neg <= 0 or total_pos <= 0:
        raise ValueError("the AUC needs rows of both labels")
    below = np.concatenate([[0.0], np.cumsum(negatives)[:-1]])
    u = float((positives * (below + negatives / 2)).sum())
    return min(1.0, max(0.0, u / float(total_neg * total_pos)))


def binned_auc_tolerance(counts: npt.ArrayLike) -> float:
    """How far :func:`binned_auc` can lie from the AUC of the unbinned scores: ``½ Σ_b π_b ν_b``.

    ``π_b`` and ``ν_b`` are the shares of label-1 and label-0 rows in bin ``b``. Binning changes
    only the pairs that share a bin: the exact AUC counts each such pair 1, ½ or 0, the binned
    one ½, so the difference is at most half the share of pairs within a bin. On noisy counts
    it is an estimate (negative cells count as empty).

    Raises:
        ValueError: If a class has no rows.

    >>> round(binned_auc_tolerance([2, 1, 0, 0, 1, 2]), 4)
    0.0556
    """
    negatives, positives = (np.maximum(half, 0.0) for half in _halves(counts))
    if negatives.sum() <= 0 or positives.sum() <= 0:
        raise ValueError("the AUC needs rows of both labels")
    return float((negatives / negatives.sum() * positives / positives.sum()).sum() / 2)


def clipped_log_loss(y: npt.ArrayLike, logits: npt.ArrayLike, clip: float) -> FloatArray:
    """Each record's log-loss with the predicted probability clipped to ``[clip, 1 − clip]``.

    Every value lies in ``[0, ln(1/clip)]``.

    >>> clipped_log_loss([1, 0, 1], [0.0, 0.0, -50.0], 0.01).round(4).tolist()
    [0.6931, 0.6931, 4.6052]
    """
    labels = np.asarray(y, dtype=np.float64).ravel()
    z = clip_logits(logits, clip)
    if labels.shape != z.shape:
        raise ValueError(f"{labels.size} labels but {z.size} scores")
    # -log sigmoid(z) for label 1 and -log sigmoid(-z) for label 0, stably: log1p(exp(∓z)).
    signed = np.where(labels == 1, z, -z)
    return np.asarray(np.logaddexp(0.0, -signed), dtype=np.float64)
