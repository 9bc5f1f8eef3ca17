"""Metrics, WOE/IV and the vertical LR reference against hand cases and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.compute.learn import logistic as lg
from bund.compute.learn.metrics import auc, confusion, ks_statistic, roc_curve
from bund.compute.learn.woe_iv import (
    assign_bins,
    bin_indicator_rows,
    merge_small_bins,
    quantile_edges,
    woe_iv,
)


def brute_auc(y: list[int], s: list[float]) -> float:
    pos = [b for a, b in zip(y, s, strict=True) if a == 1]
    neg = [b for a, b in zip(y, s, strict=True) if a == 0]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def brute_ks(y: list[int], s: list[float]) -> float:
    pos, neg = sum(y), len(y) - sum(y)
    best = 0.0
    for t in set(s):
        tpr = sum(1 for a, b in zip(y, s, strict=True) if a == 1 and b >= t) / pos
        fpr = sum(1 for a, b in zip(y, s, strict=True) if a == 0 and b >= t) / neg
        best = max(best, abs(tpr - fpr))
    return best


labelled = st.lists(
    st.tuples(st.integers(0, 1), st.integers(-5, 5).map(float)), min_size=2, max_size=40
).filter(lambda rows: 0 < sum(a for a, _ in rows) < len(rows))


@settings(max_examples=80, deadline=None)
@given(labelled)
def test_auc_and_ks_equal_brute_force_with_ties(rows: list[tuple[int, float]]) -> None:
    y, s = [a for a, _ in rows], [b for _, b in rows]
    assert auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)
    assert ks_statistic(y, s)[0] == pytest.approx(brute_ks(y, s), abs=1e-12)
    curve = roc_curve(y, s)
    assert curve.fpr[0] == curve.tpr[0] == 0 and curve.fpr[-1] == curve.tpr[-1] == 1
    assert np.trapezoid(curve.tpr, curve.fpr) == pytest.approx(auc(y, s), abs=1e-12)


def test_metric_hand_cases() -> None:
    assert auc([0, 1], [0.2, 0.9]) == 1.0
    assert auc([0, 1], [0.9, 0.2]) == 0.0
    assert auc([0, 0, 1, 1], [1, 1, 1, 1]) == 0.5
    assert ks_statistic([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8]) == (1.0, 0.8)
    table = confusion([1, 1, 0, 0, 1], [0.9, 0.3, 0.6, 0.1, 0.5], 0.5)
    assert (
        table.true_positive,
        table.false_positive,
        table.true_negative,
        table.false_negative,
    ) == (2, 1, 1, 1)
    assert table.precision == pytest.approx(2 / 3) and table.recall == pytest.approx(2 / 3)
    assert table.accuracy == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="each class"):
        auc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="0 or 1"):
        auc([0, 2], [0.1, 0.2])


def test_woe_iv_hand_case() -> None:
    # bins: (events, rows) = (2, 10), (8, 10); E = 10, G = 10, alpha = 0.5, k = 2
    r = woe_iv([2, 8], [10, 10])
    bad = [(2 + 0.5) / 11, (8 + 0.5) / 11]
    good = [(8 + 0.5) / 11, (2 + 0.5) / 11]
    woe = [math.log(b / g) for b, g in zip(bad, good, strict=True)]
    assert r.woe == pytest.approx(woe)
    assert r.iv == pytest.approx(sum((b - g) * w for b, g, w in zip(bad, good, woe, strict=True)))
    assert woe_iv([5, 5], [10, 10]).iv == 0.0
    assert all(math.isfinite(w) for w in woe_iv([0, 10], [10, 10]).woe)
    with pytest.raises(ValueError):
        woe_iv([3], [2])


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(0, 6).map(float), min_size=1, max_size=60),
    st.integers(2, 10),
    st.integers(1, 8),
)
def test_binning_is_a_partition_with_no_empty_or_small_bins(
    values: list[float], bins: int, min_rows: int
) -> None:
    edges = quantile_edges(values, bins)
    assert len(edges) <= bins - 1 and np.all(np.diff(edges) > 0)
    edges = merge_small_bins(assign_bins(values, edges), edges, min_rows)
    b = assign_bins(values, edges)
    counts = np.bincount(b, minlength=len(edges) + 1)
    assert counts.sum() == len(values) and (counts > 0).all()
    if len(counts) > 1:
        assert counts.min() >= min_rows
    ind = bin_indicator_rows(b, len(counts))
    assert np.array_equal(np.sum(ind, axis=0), np.ones(len(values)))


def test_reference_gradient_is_the_float_gradient_and_training_learns() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 3))
    y = (rng.random(400) < 1 / (1 + np.exp(-(x @ [1.5, -1.0, 0.0])))).astype(float)
    train, test = lg.split_rows(400, 0.25, 1)
    assert len(test) == 100 and not set(train) & set(test)
    xq = lg.prepare_features(x, train)
    z = rng.normal(size=50)
    rq = lg.residuals(z, y[:50])
    g = lg.gradient_ints(xq[:50], rq) / 2.0**lg.GRADIENT_FRAC_BITS
    exact = (xq[:50] / 2.0**16).T @ (1 / (1 + np.exp(-z)) - y[:50])
    assert np.allclose(g, exact, atol=1e-5)
    cfg = lg.TrainConfig(epochs=20, batch_size=32, learning_rate=0.5, seed=2)
    fit = lg.fit_vertical([xq[:, :1], xq[:, 1:]], y, train, cfg)
    assert fit.losses[-1] < fit.losses[0]
    assert auc(y[test], lg.predict_scores([xq[:, :1], xq[:, 1:]], fit, test)) > 0.75
    # Splitting the features between parties changes nothing: the algorithm is the same.
    whole = lg.fit_vertical([xq], y, train, cfg)
    assert np.allclose(np.r_[fit.weights[0], fit.weights[1]], whole.weights[0], atol=1e-6)
    assert fit.gradient_trace[0] and whole.gradient_trace == []


def test_batches_are_fixed_across_epochs_and_never_small() -> None:
    train = np.arange(103)
    e0 = lg.epoch_batches(train, 10, 7, 0)
    e1 = lg.epoch_batches(train, 10, 7, 1)
    assert sorted(map(tuple, map(sorted, e0))) == sorted(map(tuple, map(sorted, e1)))
    assert [len(b) for b in e0] != [len(b) for b in e1] or [b[0] for b in e0] != [b[0] for b in e1]
    assert min(len(b) for b in e0) >= 10 and sum(len(b) for b in e0) == 103
    assert lg.epoch_batches(np.arange(5), 10, 0, 0)[0].size == 5
    moved = lg.epoch_batches(train, 10, 7, 1, reshuffle=True)
    assert sorted(map(tuple, map(sorted, moved))) != sorted(map(tuple, map(sorted, e0)))


def test_early_stopping_and_schedule() -> None:
    stop = lg.EarlyStopping(tol=0.01, patience=1)
    assert [stop.update(v) for v in (1.0, 0.5, 0.499)] == [False, False, True]
    cfg = lg.TrainConfig(learning_rate=1.0, lr_decay=0.5)
    assert [cfg.rate(e) for e in range(3)] == [1.0, 1 / 1.5, 0.5]
    with pytest.raises(ValueError, match="batch_size"):
        lg.TrainConfig(batch_size=0)


@settings(max_examples=60, deadline=None)
@given(
    z=st.floats(min_value=-30, max_value=30),
    y=st.sampled_from([0.0, 1.0]),
    flip=st.floats(min_value=0, max_value=0.45),
)
def test_the_label_flip_correction_is_unbiased_and_keeps_residuals_bounded(
    z: float, y: float, flip: float
) -> None:
    """Natarajan et al.'s correction: over the randomised response, gain·r averages to σ(z) − y.

    Each label is kept with probability 1 − q and flipped with q; the residual of either stays
    within ±1 (so the masks and bounds of the protocol hold), and its sign is the label it saw.
    """
    config = lg.TrainConfig(label_flip=flip)
    zz = np.array([z])
    kept = int(lg.residuals(zz, np.array([y]), flip)[0])
    flipped = int(lg.residuals(zz, np.array([1 - y]), flip)[0])
    assert max(abs(kept), abs(flipped)) <= lg.MAX_RESIDUAL_INT
    mean = ((1 - flip) * kept + flip * flipped) * config.gain / lg.MAX_RESIDUAL_INT
    truth = float(lg.sigmoid(zz)[0]) - y
    assert mean == pytest.approx(truth, abs=config.gain * 2.0**-23)
    assert (kept <= 0) if y == 1 else (kept >= 0)
    loss = (1 - flip) * lg.log_loss(zz, np.array([y]), flip) + flip * lg.log_loss(
        zz, np.array([1 - y]), flip
    )
    assert loss == pytest.approx(lg.log_loss(zz, np.array([y])), rel=1e-9, abs=1e-9)


def test_no_label_flip_is_the_plain_algorithm() -> None:
    rng = np.random.default_rng(5)
    z, y = rng.normal(size=50), (rng.random(50) < 0.3).astype(float)
    plain = np.rint((lg.sigmoid(z) - y) * lg.MAX_RESIDUAL_INT).astype(np.int64)
    assert np.array_equal(lg.residuals(z, y), plain) and lg.TrainConfig().gain == 1.0
    with pytest.raises(ValueError, match="label_flip"):
        lg.TrainConfig(label_flip=0.5)
