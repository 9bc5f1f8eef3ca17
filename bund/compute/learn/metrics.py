"""Binary-classifier metrics, exact: AUC (ties count half), KS, ROC points, confusion table.

Labels are 0/1 (1 = the event, for credit a default); a higher score means "more likely 1".
"""

from __future__ import annotations

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
