"""The DP evaluation of federated training: binned AUC and clipped log-loss, noise, bands, split.

scikit-learn is the reference for the metrics (a dev dependency only).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from bund.compute.learn import fed, metrics

CLIP = 0.01


def _scores(rows: int, seed: int, gap: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """Logits of two overlapping classes, about 15 % positives: like the health demo's."""
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=rows) < 0.15).astype(np.float64)
    logits = rng.normal(-2.0 + gap * y, 0.8)
    return logits, y


@pytest.mark.parametrize("bins", [2, 5, 10, 20, 50, 200])
def test_binned_auc_lies_within_its_stated_tolerance_of_scikit_learns(bins: int) -> None:
    logits, y = _scores(3000, bins)
    counts = metrics.binned_counts(y, logits, bins, CLIP)
    exact = roc_auc_score(y, logits)
    assert abs(metrics.binned_auc(counts) - exact) <= metrics.binned_auc_tolerance(counts)


def test_binned_auc_is_exact_for_scores_that_never_share_a_bin_and_counts_ties_half() -> None:
    logits = np.array([-3.0, -1.0, 0.2, 1.5, 4.0, 4.0])
    y = np.array([0, 1, 0, 1, 0, 1])
    counts = metrics.binned_counts(y, logits, 10, CLIP)
    assert metrics.binned_auc(counts) == pytest.approx(roc_auc_score(y, logits))
    # Only the tied pair at 4.0 shares a bin: one pair of nine, which binning may move by half.
    assert metrics.binned_auc_tolerance(counts) == pytest.approx(1 / 18)


def test_the_tolerance_shrinks_as_the_bins_are_halved() -> None:
    """Splitting every bin in two never adds pairs within a bin: ½ Σ π_b ν_b can only fall."""
    logits, y = _scores(3000, 1)
    exact = roc_auc_score(y, logits)
    tolerances, errors = [], []
    for bins in (5, 10, 20, 40, 80, 160):
        counts = metrics.binned_counts(y, logits, bins, CLIP)
        tolerances.append(metrics.binned_auc_tolerance(counts))
        errors.append(abs(metrics.binned_auc(counts) - exact))
    assert tolerances == sorted(tolerances, reverse=True)
    assert tolerances[-1] < 0.03 and errors[-1] < 0.002


def test_binned_metrics_refuse_what_they_cannot_read() -> None:
    with pytest.raises(ValueError, match="both labels"):
        metrics.binned_auc([3, 1, 0, 0])
    with pytest.raises(ValueError, match="2·B"):
        metrics.binned_auc([3, 1, 0])
    with pytest.raises(ValueError, match="0 or 1"):
        metrics.binned_counts([2], [0.0], 4, CLIP)
    with pytest.raises(ValueError, match="clip"):
        metrics.score_bins([0.0], 4, 0.5)


def test_clipped_log_loss_matches_scikit_learn_on_clipped_probabilities() -> None:
    logits, y = _scores(2000, 3, gap=3.0)
    logits[:5] = [-40.0, 40.0, -40.0, 40.0, 0.0]  # far outside the clip
    probability = np.clip(1 / (1 + np.exp(-logits)), CLIP, 1 - CLIP)
    per_record = metrics.clipped_log_loss(y, logits, CLIP)
    assert per_record.max() <= np.log(1 / CLIP) + 1e-12 and per_record.min() >= 0
    assert per_record.mean() == pytest.approx(log_loss(y, probability), abs=1e-12)


def _config(epsilon: Fraction = Fraction(1), bins: int = 20) -> fed.EvalConfig:
    return fed.EvalConfig(bins=bins, clip=Fraction(1, 100), epsilon=epsilon)


def test_one_record_moves_an_evaluation_vector_by_at_most_its_sensitivity() -> None:
    config = _config()
    logits, y = _scores(500, 4)
    for extra, label in [(-100.0, 1.0), (100.0, 0.0), (-2.0, 0.0), (0.0, 1.0)]:
        with_it = fed.evaluation_counts(config, np.r_[logits, extra], np.r_[y, label])
        without = fed.evaluation_counts(config, logits, y)
        assert np.abs(with_it[:-1] - without[:-1]).sum() == 1  # one count, by one
        assert 0 <= with_it[-1] - without[-1] <= config.loss_sensitivity
    worst = fed.evaluation_counts(config, np.array([-100.0]), np.array([1.0]))
    # The bound is tight: the worst record is within the rounding and the margin unit of it.
    assert config.loss_sensitivity - 2 <= worst[-1] < config.loss_sensitivity


def test_an_evaluation_spends_exactly_its_epsilon_half_on_counts_half_on_the_loss() -> None:
    config = _config(Fraction(3, 4))
    on_counts, on_loss = config.mechanisms()
    assert on_counts.epsilon + on_loss.epsilon == Fraction(3, 4)
    assert (on_counts.sensitivity, on_loss.sensitivity) == (1, config.loss_sensitivity)
    assert on_counts.privacy_map(1) <= Fraction(3, 8)
    assert on_loss.privacy_map(config.loss_sensitivity) <= Fraction(3, 8)
    with pytest.raises(ValueError, match="without noise"):
        _config(Fraction(0)).mechanisms()


@pytest.mark.parametrize(
    ("bins", "clip", "epsilon"),
    [
        (1, Fraction(1, 100), Fraction(1)),
        (20, Fraction(1, 2), Fraction(1)),
        (20, Fraction(1, 10**7), Fraction(1)),
        (20, Fraction(1, 100), Fraction(-1)),
        (20, 0.01, 1),
    ],
)
def test_evaluation_settings_are_checked(bins: int, clip: object, epsilon: object) -> None:
    with pytest.raises(ValueError):
        fed.EvalConfig(bins, clip, epsilon)  # type: ignore[arg-type]


def test_noise_off_reads_the_exact_metrics() -> None:
    config = _config(Fraction(0), bins=50)
    logits, y = _scores(1000, 6)
    counts = fed.evaluation_counts(config, logits, y)
    assert np.array_equal(fed.add_evaluation_noise(config, counts), counts)
    got = fed.read_evaluation(config, counts, 3)
    assert got.rows == 1000 and got.auc_band == got.log_loss_band == 0
    assert abs(got.auc - roc_auc_score(y, logits)) <= got.auc_tolerance  # type: ignore[operator]
    expected = metrics.clipped_log_loss(y, logits, CLIP).mean()
    assert got.log_loss == pytest.approx(expected, abs=2**-17)


def test_without_rows_of_a_class_there_is_no_auc() -> None:
    config = _config(Fraction(0), bins=4)
    got = fed.read_evaluation(config, np.array([3, 0, 0, 0, 0, 0, 0, 0, 1000]), 1)
    assert got.auc is None and got.auc_band is None and got.rows == 3
    assert fed.read_evaluation(config, np.zeros(9, dtype=np.int64), 1).log_loss is None


def test_noise_bands_cover_the_noisy_metrics_about_95_percent_of_the_time() -> None:
    """Three parties each add their own noise; the band is read from the noisy sum alone."""
    config = _config(Fraction(1))
    parties = [_scores(300, seed) for seed in (7, 8, 9)]
    exact_counts = [fed.evaluation_counts(config, logits, y) for logits, y in parties]
    exact = fed.read_evaluation(_config(Fraction(0)), sum(exact_counts), 3)
    draws, auc_in, loss_in = 200, 0, 0
    for _ in range(draws):
        total = sum(fed.add_evaluation_noise(config, counts) for counts in exact_counts)
        got = fed.read_evaluation(config, total, 3)
        assert got.auc is not None and got.log_loss is not None
        auc_in += abs(got.auc - exact.auc) <= got.auc_band  # type: ignore[operator]
        loss_in += abs(got.log_loss - exact.log_loss) <= got.log_loss_band  # type: ignore[operator]
    # Expected 190 of 200; 175 is more than four standard deviations of a binomial below.
    assert auc_in >= 175 and loss_in >= 175


def test_each_row_is_held_out_by_its_own_content_alone() -> None:
    rng = np.random.default_rng(10)
    x, y = rng.uniform(-1, 1, (2000, 3)), (rng.uniform(size=2000) < 0.2).astype(np.float64)
    mask = fed.held_out(x, y, 0.3, b"salt")
    assert 0.25 < mask.mean() < 0.35
    assert np.array_equal(mask, fed.held_out(x, y, 0.3, b"salt"))
    # One patient fewer (or one more, at the front) moves no other row across the split.
    without = fed.held_out(np.delete(x, 17, axis=0), np.delete(y, 17), 0.3, b"salt")
    assert np.array_equal(without, np.delete(mask, 17))
    more = fed.held_out(np.r_[x[:1] + 0.5, x], np.r_[y[:1], y], 0.3, b"salt")
    assert np.array_equal(more[1:], mask)
    assert not fed.held_out(x, y, 0.0, b"salt").any() and fed.held_out(x, y, 1.0, b"salt").all()
    assert not np.array_equal(mask, fed.held_out(x, y, 0.3, b"other salt"))
