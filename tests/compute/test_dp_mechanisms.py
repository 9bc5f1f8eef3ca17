"""Discrete Laplace: exact cost, OpenDP's privacy map, the sampler; randomised response's rate."""

from __future__ import annotations

import decimal
import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
import scipy.stats  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.compute.dp.mechanisms import MAX_RR_EPSILON, DiscreteLaplace, RandomizedResponse

DRAWS = 1_000_000


@settings(max_examples=40, deadline=None)
@given(
    st.fractions(min_value=Fraction(1, 1000), max_value=10),
    st.integers(min_value=1, max_value=1 << 32),
)
def test_scale_never_undercuts_the_charged_epsilon(epsilon: Fraction, sensitivity: int) -> None:
    mech = DiscreteLaplace.create(epsilon, sensitivity)
    assert mech.epsilon == epsilon
    assert mech.scale >= Fraction(sensitivity) / epsilon
    assert mech.privacy_map(sensitivity) <= epsilon
    # The float scale is the next double at most: the loss is within 1 ulp of what is charged.
    assert float(mech.privacy_map(sensitivity)) == pytest.approx(float(epsilon), rel=1e-15)


@pytest.mark.parametrize(("epsilon", "sensitivity"), [(Fraction(1, 2), 1), (Fraction(1, 3), 7)])
def test_privacy_map_agrees_with_opendp(epsilon: Fraction, sensitivity: int) -> None:
    mech = DiscreteLaplace.create(epsilon, sensitivity)
    opendp_loss = mech._meas.map(sensitivity)
    assert opendp_loss == pytest.approx(float(mech.privacy_map(sensitivity)), rel=1e-12)
    assert opendp_loss >= float(mech.privacy_map(sensitivity)) * (1 - 1e-15)


@pytest.mark.parametrize(
    ("epsilon", "sensitivity", "message"),
    [
        (Fraction(0), 1, "epsilon"),
        (Fraction(1), 0, "sensitivity"),
        (Fraction(1, 2**60), 1, "scale"),
    ],
)
def test_bad_arguments(epsilon: Fraction, sensitivity: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DiscreteLaplace.create(epsilon, sensitivity)


def test_epsilon_must_be_exact() -> None:
    with pytest.raises(ValueError, match="Fraction"):
        DiscreteLaplace.create(0.5, 1)  # type: ignore[arg-type]


@pytest.mark.parametrize("scale", [Fraction(1, 3), Fraction(1), Fraction(7, 2), Fraction(40)])
def test_half_width_is_the_smallest_covering_interval(scale: Fraction) -> None:
    mech = DiscreteLaplace.create(1 / scale, 1)
    for confidence in (0.5, 0.9, 0.95, 0.99):
        k = mech.half_width(confidence)
        covered = sum(mech.pmf(j) for j in range(-k, k + 1))
        assert covered >= confidence - 1e-12
        if k > 0:
            assert covered - mech.pmf(k) - mech.pmf(-k) < confidence


def test_pmf_sums_to_one_and_variance_matches() -> None:
    mech = DiscreteLaplace.create(Fraction(1, 3), 1)
    support = range(-400, 401)
    assert sum(mech.pmf(k) for k in support) == pytest.approx(1, abs=1e-12)
    assert sum(k * k * mech.pmf(k) for k in support) == pytest.approx(mech.variance(), rel=1e-9)


def test_sample_shape_and_type() -> None:
    mech = DiscreteLaplace.create(Fraction(1), 1)
    assert mech.sample(0).shape == (0,)
    draws = mech.sample(5)
    assert draws.dtype == np.int64 and draws.shape == (5,)
    with pytest.raises(ValueError):
        mech.sample(-1)


def _chi_square(mech: DiscreteLaplace, draws: np.ndarray) -> float:
    """p-value of a chi-square test of ``draws`` against the exact pmf, tails pooled."""
    # Pool the tails beyond +-k so that every expected count is at least 50.
    k = 0
    while len(draws) * mech.pmf(k + 1) >= 50:
        k += 1
    values, counts = np.unique(np.clip(draws, -k - 1, k + 1), return_counts=True)
    observed = dict(zip(values.tolist(), counts.tolist(), strict=True))
    t = math.exp(-1 / float(mech.scale))
    tail = t ** (k + 1) / (1 + t)  # P(Z > k) = P(Z < -k)
    probabilities = [tail] + [mech.pmf(j) for j in range(-k, k + 1)] + [tail]
    cells = range(-k - 1, k + 2)
    expected = [p * len(draws) for p in probabilities]
    got = [observed.get(c, 0) for c in cells]
    return float(scipy.stats.chisquare(got, expected, sum_check=False).pvalue)


@pytest.mark.slow
@pytest.mark.parametrize("scale", [Fraction(1, 2), Fraction(10)])
def test_sampler_matches_exact_distribution(scale: Fraction) -> None:
    mech = DiscreteLaplace.create(1 / scale, 1)
    draws = mech.sample(DRAWS)
    assert _chi_square(mech, draws) > 1e-4
    assert draws.var() == pytest.approx(mech.variance(), rel=0.02)
    # The same test has power: the same draws shifted by one, or read at another scale, fail it.
    assert _chi_square(mech, draws + 1) < 1e-6
    assert _chi_square(DiscreteLaplace.create(1 / (scale * Fraction(11, 10)), 1), draws) < 1e-6


@settings(max_examples=40, deadline=None)
@given(st.fractions(min_value=Fraction(1, 1000), max_value=MAX_RR_EPSILON))
def test_randomised_response_never_undercuts_the_charged_epsilon(epsilon: Fraction) -> None:
    """keep/flip ≤ e^ε exactly, and the flip probability is within 2^-63 of 1/(1 + e^ε)."""
    rr = RandomizedResponse.create(epsilon)
    assert rr.epsilon == epsilon and rr.flip.denominator <= 1 << 64 and 0 < rr.flip < Fraction(1, 2)
    with decimal.localcontext() as context:
        context.prec = 80
        keep, flip = (Decimal(f.numerator) / Decimal(f.denominator) for f in (rr.keep, rr.flip))
        eps = Decimal(epsilon.numerator) / Decimal(epsilon.denominator)
        assert (keep / flip).ln() <= eps
        assert abs(flip - 1 / (1 + eps.exp())) <= Decimal(2) ** -63


def test_randomised_response_flips_at_its_rate() -> None:
    rr = RandomizedResponse.create(Fraction(1))
    bits = np.tile(np.array([0, 1], dtype=np.int64), 20_000)
    out = rr.apply(bits)
    assert out.dtype == np.int64 and set(out.tolist()) <= {0, 1} and out.shape == bits.shape
    rate = float(np.mean(out != bits))
    sd = math.sqrt(float(rr.flip * rr.keep) / len(bits))
    assert abs(rate - float(rr.flip)) < 5 * sd  # 0.2689 ± 0.011
    assert rr.apply(np.zeros(0, dtype=np.int64)).shape == (0,)


@pytest.mark.parametrize("epsilon", [Fraction(0), Fraction(-1), MAX_RR_EPSILON + 1, 1])
def test_randomised_response_refuses_bad_epsilon(epsilon: Fraction) -> None:
    with pytest.raises(ValueError, match="epsilon"):
        RandomizedResponse.create(epsilon)


def test_randomised_response_takes_bits_only() -> None:
    with pytest.raises(ValueError, match="bits"):
        RandomizedResponse.create(Fraction(1)).apply(np.array([0, 2]))
