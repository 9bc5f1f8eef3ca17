"""Survival estimates from (noisy) per-bin counts: Kaplan–Meier, Nelson–Aalen, bands, log-rank.

A ``dp_stats`` survival query (``bund.compute.dp.stats``) releases, per stratum, three integer
vectors over a time grid of equal bins ``(a_j, b_j]``: the deaths in each bin, the censorings in
each bin, and the records followed past the horizon (one count). Everything here reads only
those released counts and public parameters, so it is post-processing and costs no privacy.

**The discretisation.** A record's time ``t`` falls in the bin ``(a_j, b_j]`` that holds it
(``t = 0`` falls in the first); a death or censoring in a bin counts at its end ``b_j``, and a
censoring counts at risk for the deaths of its own bin (lifelines' and the textbook rule for a
death and a censoring at the same time). A record followed past the horizon ``b_J`` is at risk
in every bin and counts as censored at the horizon, apart (``past_horizon``), whatever its event
flag. With one bin per distinct time unit (integer times, ``bins = upper``) this is exactly the
Kaplan–Meier estimator of the pooled records at every bin edge; with wider bins the curve at
``b_j`` can only overstate the exact one, and by at most :func:`binning_bound` (below).

**The error bound of wider bins.** In a bin with ``N`` at risk at its start, ``D`` deaths and
``C`` censorings, the binned factor is ``(N − D)/N``. The exact product over the bin's deaths
is at most that (a censoring earlier in the bin only shrinks later risk sets) and at least
``(N − C − D)/(N − C)`` (every censoring before every death), so the exact factor is at least
``(1 − r)`` times the binned one, ``r = D·C/((N − C)(N − D))``. Hence at every bin edge

    ``0 ≤ S_binned(b_j) − S_exact(b_j) ≤ S_binned(b_j) · (1 − Π_{k≤j} (1 − r_k))``,

which is 0 where no bin holds both deaths and censorings (one bin per time unit, or no
censoring). The bound is computed from the released counts; with noise on it is that of the
noisy counts.

>>> events = np.array([[2, 1, 0]])
>>> censored = np.array([[1, 0, 1]])
>>> past = np.array([1])
>>> at_risk, s = kaplan_meier(events, censored, past)
>>> at_risk.tolist(), [round(float(x), 4) for x in s[0]]
([[6, 3, 2]], [0.6667, 0.4444, 0.4444])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: The normal quantile of a two-sided 95 % interval, as lifelines and scipy give it.
Z_95 = 1.959963984540054


def split_counts(vector: npt.ArrayLike, bins: int) -> tuple[IntArray, IntArray, IntArray]:
    """Cut a released survival vector into deaths, censorings and past-horizon counts.

    The vector is ``strata`` runs of ``[deaths per bin (bins), censored per bin (bins), past
    horizon (1)]``. Noisy counts are clamped at zero.

    Returns:
        ``(deaths, censored, past)`` of shapes ``(strata, bins)``, ``(strata, bins)``,
        ``(strata,)``.

    Raises:
        ValueError: If the vector's length is not a whole number of strata.
    """
    v = np.asarray(vector, dtype=np.int64)
    width = 2 * bins + 1
    if v.ndim != 1 or len(v) % width:
        raise ValueError(f"a survival vector holds runs of {width} cells, not {len(v)}")
    runs = np.maximum(v.reshape(-1, width), 0)
    return runs[:, :bins], runs[:, bins : 2 * bins], runs[:, 2 * bins]


def kaplan_meier(
    deaths: npt.ArrayLike, censored: npt.ArrayLike, past: npt.ArrayLike
) -> tuple[IntArray, FloatArray]:
    """Numbers at risk and Kaplan–Meier survival at each bin's end, for any leading shape.

    The number at risk in a bin is everyone who has not left in an earlier bin (past-horizon
    records included); deaths above it are capped at it (noisy counts can exceed it) and a bin
    with nobody at risk leaves the curve flat.

    Args:
        deaths: ``(..., bins)`` non-negative counts.
        censored: ``(..., bins)`` non-negative counts.
        past: ``(...)`` records followed past the horizon.
    """
    d = np.asarray(deaths, dtype=np.int64)
    c = np.asarray(censored, dtype=np.int64)
    total = d.sum(-1) + c.sum(-1) + np.asarray(past, dtype=np.int64)
    left_before = np.cumsum(d + c, axis=-1) - (d + c)
    at_risk: IntArray = np.maximum(total[..., None] - left_before, 0).astype(np.int64)
    d = np.minimum(d, at_risk)
    safe = np.where(at_risk > 0, at_risk, 1)
    factor = np.where(at_risk > 0, 1.0 - d / safe, 1.0)
    return at_risk, np.cumprod(factor, axis=-1).astype(np.float64)


@dataclass(frozen=True)
class Curve:
    """One stratum's estimates at each bin's end, from its released counts.

    Attributes:
        at_risk, deaths, censored: Per bin (deaths capped at the number at risk).
        past_horizon: Records followed past the last bin's end.
        survival: Kaplan–Meier.
        greenwood_var: Greenwood's sampling variance of ``survival``.
        noise_var: The variance of ``survival`` from the DP noise alone (0 with noise off).
        lower, upper: The 95 % band: lifelines' log(−log) Greenwood interval with the noise's
            variance added to the sampling variance.
        cumulative_hazard: Nelson–Aalen, ``Σ d/n``.
        cumulative_hazard_se: Its standard error, ``√Σ d(n − d)/n³``.
        binning_bound: The most ``survival`` can exceed the exact Kaplan–Meier at the bin's end.
    """

    at_risk: IntArray
    deaths: IntArray
    censored: IntArray
    past_horizon: int
    survival: FloatArray
    greenwood_var: FloatArray
    noise_var: FloatArray
    lower: FloatArray
    upper: FloatArray
    cumulative_hazard: FloatArray
    cumulative_hazard_se: FloatArray
    binning_bound: FloatArray


def binning_bound(
    at_risk: IntArray, deaths: IntArray, censored: IntArray, survival: FloatArray
) -> FloatArray:
    """``S_binned · (1 − Π (1 − r))`` with ``r = D·C/((N − C)(N − D))`` per bin (module doc)."""
    n, d, c = (np.asarray(x, dtype=np.float64) for x in (at_risk, deaths, censored))
    den = (n - c) * (n - d)
    r = np.where((d > 0) & (c > 0), d * c / np.where(den > 0, den, 1.0), 0.0)
    r = np.where((d > 0) & (c > 0) & (den <= 0), 1.0, np.minimum(r, 1.0))
    return np.asarray(survival * (1.0 - np.cumprod(1.0 - r)), dtype=np.float64)


def curve(
    deaths: IntArray,
    censored: IntArray,
    past: int,
    noise_draws: npt.NDArray[np.int64] | None = None,
    z: float = Z_95,
) -> Curve:
    """Kaplan–Meier, Nelson–Aalen and their bands for one stratum.

    Args:
        deaths: ``(bins,)`` released death counts (clamped at zero).
        censored: ``(bins,)`` released censoring counts (clamped at zero).
        past: The released past-horizon count.
        noise_draws: ``(draws, 2·bins + 1)`` fresh draws of the release's noise, in the
            vector's layout: the curve is recomputed from the counts plus each draw and the
            variance across draws is the noise's (``None``: noise off).
        z: The normal quantile of the band.
    """
    d, c = np.asarray(deaths, dtype=np.int64), np.asarray(censored, dtype=np.int64)
    bins = len(d)
    at_risk, survival = kaplan_meier(d, c, past)
    d = np.minimum(d, at_risk)
    n = at_risk.astype(np.float64)
    nd = n - d
    ok = (n > 0) & (nd > 0)
    greenwood_sum = np.cumsum(np.where(ok, d / np.where(ok, n * nd, 1.0), 0.0))
    greenwood_var = survival**2 * greenwood_sum
    noise_var = np.zeros(bins)
    if noise_draws is not None and len(noise_draws):
        draws = np.asarray(noise_draws, dtype=np.int64)
        base = np.concatenate([d, c, [past]])
        noisy = np.maximum(base[None, :] + draws, 0)
        _, curves = kaplan_meier(noisy[:, :bins], noisy[:, bins : 2 * bins], noisy[:, 2 * bins])
        noise_var = curves.var(axis=0)
    lower, upper = _loglog_band(survival, greenwood_var + noise_var, z)
    positive = n > 0
    hazard = np.cumsum(np.where(positive, d / np.where(positive, n, 1.0), 0.0))
    hazard_var = np.cumsum(np.where(positive, d * nd / np.where(positive, n, 1.0) ** 3, 0.0))
    return Curve(
        at_risk=at_risk,
        deaths=d,
        censored=c,
        past_horizon=int(past),
        survival=survival,
        greenwood_var=greenwood_var,
        noise_var=noise_var,
        lower=lower,
        upper=upper,
        cumulative_hazard=hazard,
        cumulative_hazard_se=np.sqrt(hazard_var),
        binning_bound=binning_bound(at_risk, d, c, survival),
    )


def _loglog_band(s: FloatArray, var: FloatArray, z: float) -> tuple[FloatArray, FloatArray]:
    """The exponential Greenwood interval, as lifelines: ``S^exp(±z·σ)``, σ on the log(−log) scale.

    ``σ² = Var(S) / (S log S)²``; at ``S = 1`` (nothing has happened) and ``S = 0`` the band
    collapses onto ``S``, as lifelines' does.
    """
    inside = (s > 0) & (s < 1)
    safe = np.where(inside, s, 0.5)
    log_s = np.log(safe)
    sigma = np.sqrt(np.where(inside, var, 0.0)) / np.abs(safe * log_s)
    log_neg = np.log(-log_s)
    lower = np.where(inside, np.exp(-np.exp(log_neg + z * sigma)), s)
    upper = np.where(inside, np.exp(-np.exp(log_neg - z * sigma)), s)
    return lower, upper


@dataclass(frozen=True)
class LogRank:
    """The log-rank test of equal survival across strata.

    Attributes:
        statistic: ``(O − E)ᵀ V⁻¹ (O − E)`` over the first ``groups − 1`` strata.
        df: Degrees of freedom, ``groups − 1``.
        p_value: ``P(χ²_df ≥ statistic)``.
        observed, expected: Deaths and expected deaths per stratum.
    """

    statistic: float
    df: int
    p_value: float
    observed: tuple[float, ...]
    expected: tuple[float, ...]


def logrank(deaths: npt.ArrayLike, at_risk: npt.ArrayLike) -> LogRank:
    """The (multivariate) log-rank test from per-stratum deaths and numbers at risk per bin.

    The same statistic as lifelines' ``multivariate_logrank_test`` (and ``logrank_test`` for two
    groups): per bin, ``E_j = d·n_j/n`` and the hypergeometric covariance
    ``V_jk = d(n − d)/(n − 1) · n_j/n · (δ_jk − n_k/n)`` (with ``(n − d)/(n − 1)`` read as 1 at
    ``n = 1``), summed over bins; the pseudo-inverse of ``V`` as lifelines takes it.

    Args:
        deaths: ``(groups, bins)``.
        at_risk: ``(groups, bins)``.

    Raises:
        ValueError: With fewer than two strata.
    """
    dj = np.asarray(deaths, dtype=np.float64)
    nj = np.asarray(at_risk, dtype=np.float64)
    if dj.ndim != 2 or dj.shape[0] < 2 or dj.shape != nj.shape:
        raise ValueError("the log-rank test needs (groups, bins) deaths and at-risk, groups >= 2")
    d, n = dj.sum(0), nj.sum(0)
    live = n > 0
    share = np.where(live, nj / np.where(live, n, 1.0), 0.0)
    expected = (d * share).sum(1)
    observed = dj.sum(1)
    ties = np.where(n > 1, (n - d) / np.where(n > 1, n - 1, 1.0), 1.0)
    factor = np.where(live, ties * d, 0.0)
    groups = dj.shape[0]
    v = np.zeros((groups, groups))
    for j in range(groups):
        for k in range(groups):
            delta = 1.0 if j == k else 0.0
            v[j, k] = (factor * share[j] * (delta - share[k])).sum()
    z = (observed - expected)[:-1]
    statistic = float(z @ np.linalg.pinv(v[:-1, :-1]) @ z)
    df = groups - 1
    return LogRank(
        statistic,
        df,
        chi2_sf(statistic, df),
        tuple(float(x) for x in observed),
        tuple(float(x) for x in expected),
    )


def chi2_sf(x: float, df: int) -> float:
    """``P(χ²_df ≥ x)`` for a positive integer ``df``: the regularised upper gamma ``Q(df/2, x/2)``.

    Closed forms: ``Q(1/2, y) = erfc(√y)`` and ``Q(1, y) = e^(−y)``, then
    ``Q(s + 1, y) = Q(s, y) + y^s e^(−y)/Γ(s + 1)``, summed in logs (exact to float rounding).

    >>> round(chi2_sf(3.841458820694124, 1), 12)
    0.05
    >>> round(chi2_sf(5.991464547107979, 2), 12)
    0.05
    """
    if df < 1:
        raise ValueError("df must be a positive integer")
    if x <= 0:
        return 1.0
    y = x / 2
    if df % 2:
        s, q = 0.5, math.erfc(math.sqrt(y))
    else:
        s, q = 1.0, math.exp(-y)
    while s < df / 2:
        q += math.exp(s * math.log(y) - y - math.lgamma(s + 1))
        s += 1
    return min(1.0, q)


def normal_sf(x: float) -> float:
    """``P(Z ≥ x)`` for a standard normal ``Z``."""
    return 0.5 * math.erfc(x / math.sqrt(2))
