"""Discrete Laplace shares: k of them add up to one whole draw exactly; the summed noise."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import scipy.stats  # type: ignore[import-untyped]

from bund.compute.dp import mechanisms
from bund.compute.dp.mechanisms import (
    MAX_SHARE_WORK,
    DiscreteLaplace,
    DiscreteLaplaceShare,
    SummedNoise,
)


def _chi_square(mech: DiscreteLaplace, draws: np.ndarray) -> float:
    """p-value of a chi-square test of ``draws`` against the exact discrete Laplace pmf."""
    k = 0
    while len(draws) * mech.pmf(k + 1) >= 50:
        k += 1
    values, counts = np.unique(np.clip(draws, -k - 1, k + 1), return_counts=True)
    observed = dict(zip(values.tolist(), counts.tolist(), strict=True))
    t = math.exp(-1 / float(mech.scale))
    tail = t ** (k + 1) / (1 + t)
    probabilities = [tail] + [mech.pmf(j) for j in range(-k, k + 1)] + [tail]
    expected = [p * len(draws) for p in probabilities]
    got = [observed.get(c, 0) for c in range(-k - 1, k + 2)]
    return float(scipy.stats.chisquare(got, expected, sum_check=False).pvalue)


def test_a_share_has_a_kth_of_the_variance_and_is_no_whole_draw() -> None:
    whole = DiscreteLaplace.create(Fraction(1, 2), 1)
    share = DiscreteLaplaceShare.create(whole, 3)
    draws = share.sample(30_000)
    assert draws.dtype == np.int64 and draws.shape == (30_000,)
    assert draws.var() == pytest.approx(whole.variance() / 3, rel=0.08)
    assert share.variance() == pytest.approx(whole.variance() / 3)
    # One share alone is not the whole mechanism: its spread is far narrower.
    assert _chi_square(whole, draws) < 1e-6


def test_the_bernoulli_draw_is_exact_when_64_bits_do_not_decide(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """p = 1/6: the 64-bit word that straddles p must accept with probability frac(p·2⁶⁴) = 2/3."""
    straddling = (1 << 64) // 6
    assert straddling * 6 < 1 << 64 < (straddling + 1) * 6
    monkeypatch.setattr(mechanisms.os, "urandom", lambda n: straddling.to_bytes(8, "little"))
    rate = np.mean([mechanisms._bernoulli(1, 6) for _ in range(30_000)])
    assert rate == pytest.approx(2 / 3, abs=0.02)
    monkeypatch.undo()
    assert np.mean([mechanisms._bernoulli(1, 6) for _ in range(60_000)]) == pytest.approx(
        1 / 6, abs=0.01
    )


def test_one_share_is_a_whole_draw() -> None:
    whole = DiscreteLaplace.create(Fraction(1), 1)
    share = DiscreteLaplaceShare.create(whole, 1)
    assert share.sample(0).shape == (0,)
    assert _chi_square(whole, share.sample(20_000)) > 1e-4


@pytest.mark.parametrize(
    ("shares", "scale", "message"),
    [
        (0, 1, "positive integer"),
        (True, 1, "positive integer"),
        (2, MAX_SHARE_WORK * 2, "up to a scale"),
    ],
)
def test_bad_shares(shares: int, scale: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DiscreteLaplaceShare.create(DiscreteLaplace.create(Fraction(1, scale), 1), shares)
    with pytest.raises(ValueError, match="negative"):
        DiscreteLaplaceShare.create(DiscreteLaplace.create(Fraction(1), 1), 2).sample(-1)


@pytest.mark.slow
@pytest.mark.parametrize(("scale", "shares"), [(Fraction(2), 2), (Fraction(3), 3)])
def test_k_shares_add_up_to_the_whole_mechanism_exactly(scale: Fraction, shares: int) -> None:
    """A chi-square test of the sum of k shares against the exact pmf of one whole draw."""
    whole = DiscreteLaplace.create(1 / scale, 1)
    part = DiscreteLaplaceShare.create(whole, shares)
    n = 30_000
    total = sum((part.sample(n) for _ in range(shares)), np.zeros(n, dtype=np.int64))
    assert _chi_square(whole, total) > 1e-4
    assert total.var() == pytest.approx(whole.variance(), rel=0.03)
    # The test has power: one share too few, or the whole at a 10% smaller scale, fails it.
    fewer = total - part.sample(n)
    assert _chi_square(whole, fewer) < 1e-6
    assert _chi_square(DiscreteLaplace.create(1 / (scale * Fraction(9, 10)), 1), total) < 1e-6


@pytest.mark.parametrize(("parties", "shares"), [(1, 1), (3, 1), (3, 2), (5, 4)])
def test_summed_noise_variance_band_and_draws(parties: int, shares: int) -> None:
    whole = DiscreteLaplace.create(Fraction(1, 3), 1)
    noise = SummedNoise(whole, parties, shares)
    assert noise.variance() == pytest.approx(parties / shares * whole.variance())
    draws = noise.sample(40_000)
    assert draws.var() == pytest.approx(noise.variance(), rel=0.06)
    k = noise.half_width(0.95)
    assert 0.94 < np.mean(np.abs(draws) <= k) and np.mean(np.abs(draws) <= k - 1) < 0.96
    if parties == shares == 1:
        assert k == whole.half_width(0.95)
    with pytest.raises(ValueError, match="confidence"):
        noise.half_width(1.0)
