"""Cox proportional-hazards regression from per-bin aggregates that hospitals sum securely.

Risk sets span hospitals, so the pooled partial likelihood does not split into per-hospital
terms; it does split into *sums over records* once every record is placed on a public time grid.
For a coefficient vector ``β`` each record ``i`` (time ``t_i`` in bin ``(a_j, b_j]``, event flag
``δ_i``, covariates ``x_i`` scaled onto ``[−1, 1]`` by public ranges) contributes to its bin's

* *at* block: ``[1, w_i, w_i·x_i, w_i·x_i x_iᵀ (upper triangle)]``, and if it died there,
* *death* block: the same vector, and the bin's *deaths' covariates* ``x_i``,

with ``w_i = exp(β·x_i − ‖β‖₁) ∈ (0, 1]``. The common factor ``e^(−‖β‖₁)`` cancels in every ratio
the likelihood uses, and bounds every cell a record touches by 1 in magnitude whatever ``β``
is, so the vector's L1 sensitivity is known before any data is read (:class:`Layout`). The
analyst turns the summed blocks into risk-set sums ``S0, S1, S2`` (reverse cumulative sums over
bins) and the deaths' sums ``D0, D1, D2`` per bin, and from them Efron's log-likelihood,
score and information (:func:`efron`), which is what lifelines' ``CoxPHFitter`` maximises: with
one bin per distinct time unit (integer times) the Newton iterates are lifelines' to float
rounding. Wider bins tie every death of a bin at its end (Efron's ties): a grouped-time Cox
model.

Cells are fixed point with :data:`FRAC_BITS` fractional bits, rounded per record, so one
record's cell is at most ``2^FRAC_BITS`` in magnitude and the quantisation error of a sum of
``n`` records at most ``n·2^−(FRAC_BITS+1)``.

Concordance (:func:`concordance`) comes from a second kind of vector: per time bin and per bin
of the risk score ``β·x`` over ``[−‖β‖₁, ‖β‖₁]``, the deaths and the censorings (L1 sensitivity
1). Pairs in one score bin count ½; the exact concordance lies within ``tolerance`` of it.

>>> layout = Layout(features=2, bins=3)
>>> layout.block, layout.length, layout.sensitivity
(7, 48, 16)
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Fractional bits of a fixed-point cell: 2^20 records of 2^32 units stay below 2^52.
FRAC_BITS = 32
#: The most covariates one model takes.
MAX_FEATURES = 16
#: The most records one hospital may bring (keeps every cell of its vector below 2^52).
MAX_ROWS = 1 << 20


@dataclass(frozen=True)
class Layout:
    """The shape of one Newton iteration's vector and its L1 sensitivity.

    Per bin an *at* block and a *death* block of ``block = 2 + p + p(p+1)/2`` cells each
    (count, weight, weighted covariates, weighted products) and the deaths' covariates (``p``
    cells). A record touches one bin: a death its at block, its death block and its covariates,
    each cell by at most one unit of ``2^FRAC_BITS``: ``sensitivity = 2·block + p`` units.
    """

    features: int
    bins: int

    def __post_init__(self) -> None:
        if not 1 <= self.features <= MAX_FEATURES or self.bins < 1:
            raise ValueError(f"a Cox model takes 1 to {MAX_FEATURES} covariates and >= 1 bin")

    @property
    def pairs(self) -> int:
        """Cells of the upper triangle of ``x xᵀ``."""
        return self.features * (self.features + 1) // 2

    @property
    def block(self) -> int:
        """Cells of an at or a death block."""
        return 2 + self.features + self.pairs

    @property
    def width(self) -> int:
        """Cells per bin."""
        return 2 * self.block + self.features

    @property
    def length(self) -> int:
        """Cells of the whole vector."""
        return self.width * self.bins

    @property
    def sensitivity(self) -> int:
        """The most one record changes the vector in L1, in units of ``2^FRAC_BITS``."""
        return 2 * self.block + self.features


def scale_features(
    columns: Mapping[str, npt.ArrayLike], ranges: Mapping[str, tuple[float, float]]
) -> FloatArray:
    """Covariates clipped to their public ranges and mapped onto ``[−1, 1]``, one column each.

    Raises:
        ValueError: If a range is empty or a column is missing.
    """
    out = []
    for name, (low, high) in ranges.items():
        if not high > low:
            raise ValueError(f"feature {name!r} needs a range low < high")
        x = np.asarray(columns[name], dtype=np.float64)
        out.append(np.clip((x - low) / (high - low) * 2.0 - 1.0, -1.0, 1.0))
    return np.stack(out, axis=1)


def time_bins(
    times: npt.ArrayLike, upper: float, bins: int
) -> tuple[IntArray, npt.NDArray[np.bool_]]:
    """Each record's bin ``(a, b]`` (``t ≤ 0`` in the first) and whether it is past the horizon.

    A record past ``upper`` is placed in the last bin and must be read as censored there.
    """
    t = np.asarray(times, dtype=np.float64)
    past = t > upper
    slot = np.ceil(np.clip(t, 0.0, upper) * bins / upper).astype(np.int64) - 1
    return np.clip(slot, 0, bins - 1), past


def _quantise(values: FloatArray) -> IntArray:
    return np.rint(values * float(1 << FRAC_BITS)).astype(np.int64)


def record_vectors(x: FloatArray, beta: FloatArray) -> FloatArray:
    """Per record ``[1, w, w·x, w·x xᵀ (upper triangle)]`` with ``w = exp(β·x − ‖β‖₁)``."""
    w = np.exp(x @ beta - np.abs(beta).sum())
    rows, cols = np.triu_indices(x.shape[1])
    products = x[:, rows] * x[:, cols]
    return np.concatenate(
        [np.ones((len(x), 1)), w[:, None], w[:, None] * x, w[:, None] * products], axis=1
    )


def contribution(
    layout: Layout,
    x: FloatArray,
    times: npt.ArrayLike,
    events: npt.ArrayLike,
    upper: float,
    beta: FloatArray,
) -> IntArray:
    """One hospital's integer vector for one Newton iteration at ``beta`` (module doc).

    Args:
        layout: The vector's shape.
        x: ``(rows, p)`` covariates already scaled onto ``[−1, 1]``.
        times: Follow-up times.
        events: 0/1 event flags (an event past the horizon counts as censored there).
        upper: The horizon, the end of the last bin.
        beta: The coefficients on the scaled covariates.
    """
    slot, past = time_bins(times, upper, layout.bins)
    died = (np.asarray(events, dtype=np.float64) == 1) & ~past
    q = _quantise(record_vectors(x, beta))
    out = np.zeros((layout.bins, layout.width), dtype=np.int64)
    block = layout.block
    np.add.at(out[:, :block], slot, q)
    np.add.at(out[:, block : 2 * block], slot[died], q[died])
    np.add.at(out[:, 2 * block :], slot[died], _quantise(x[died]))
    return out.ravel()


@dataclass(frozen=True)
class Sums:
    """The pooled per-bin sums of one iteration, as floats (units of ``2^FRAC_BITS`` removed).

    ``at`` and ``dead`` are ``(bins, block)``, ``x_dead`` is ``(bins, p)``.
    """

    layout: Layout
    at: FloatArray
    dead: FloatArray
    x_dead: FloatArray

    @classmethod
    def from_vector(cls, layout: Layout, vector: Sequence[int]) -> Sums:
        """Read an unmasked (summed) vector.

        Raises:
            ValueError: If its length is not the layout's.
        """
        v = np.asarray(vector, dtype=np.float64) / float(1 << FRAC_BITS)
        if len(v) != layout.length:
            raise ValueError(f"a Cox vector has {layout.length} cells, not {len(v)}")
        rows = v.reshape(layout.bins, layout.width)
        block = layout.block
        return cls(layout, rows[:, :block], rows[:, block : 2 * block], rows[:, 2 * block :])

    def at_risk(self) -> FloatArray:
        """The (noisy) number at risk at the start of each bin."""
        return np.asarray(np.cumsum(self.at[::-1, 0])[::-1], dtype=np.float64)

    def kept_bins(self, min_risk_set: float) -> int:
        """The bins before the first whose (noisy) risk set is below ``min_risk_set``.

        The deaths of the later bins are left out of the likelihood, as if follow-up had
        ended at the start of that bin (administrative censoring); their records stay in the
        earlier risk sets. Risk sets of fewer than ``min_risk_set`` records so never enter it.
        """
        small = np.nonzero(self.at_risk() < min_risk_set)[0]
        return int(small[0]) if len(small) else self.layout.bins


def _sym(flat: FloatArray, p: int) -> FloatArray:
    rows, cols = np.triu_indices(p)
    m = np.zeros(flat.shape[:-1] + (p, p))
    m[..., rows, cols] = flat
    m[..., cols, rows] = flat
    return m


@dataclass(frozen=True)
class Efron:
    """Efron's log partial likelihood, score and information at one ``β`` (scaled units)."""

    log_likelihood: float
    score: FloatArray
    information: FloatArray
    deaths: float


def efron(sums: Sums, beta: FloatArray, kept: int | None = None) -> Efron:
    """Efron's log-likelihood, score ``U`` and information ``I = −∂²ℓ`` from the pooled sums.

    Per bin with ``d`` deaths (the released count rounded, at most the number at risk) and
    ``l = 0 … d − 1``:
    ``φ_l = S0 − (l/d)·D0``, ``a_l = S1 − (l/d)·D1``, ``B_l = S2 − (l/d)·D2``;
    ``ℓ = Σ β·x_deaths − Σ (log φ_l + ‖β‖₁)``, ``U = x_deaths − Σ a_l/φ_l``,
    ``I = Σ (B_l/φ_l − a_l a_lᵀ/φ_l²)``, over the bins before ``kept`` (all by default;
    :meth:`Sums.kept_bins`). A bin whose ``φ_l`` is not positive (noise) is skipped.
    """
    layout = sums.layout
    p = layout.features
    bins = layout.bins if kept is None else kept
    s = np.cumsum(sums.at[::-1], axis=0)[::-1]
    norm = float(np.abs(beta).sum())
    log_likelihood = 0.0
    score = np.zeros(p)
    information = np.zeros((p, p))
    deaths = 0.0
    for j in range(bins):
        d = min(int(round(sums.dead[j, 0])), int(round(s[j, 0])))
        if d < 1:
            continue
        f = np.arange(d) / d
        phi = s[j, 1] - f * sums.dead[j, 1]
        if np.any(phi <= 0):
            continue
        log_likelihood += float(beta @ sums.x_dead[j])
        score += sums.x_dead[j]
        a = s[j, 2 : 2 + p][None, :] - f[:, None] * sums.dead[j, 2 : 2 + p][None, :]
        b = _sym(s[j, 2 + p :][None, :] - f[:, None] * sums.dead[j, 2 + p :][None, :], p)
        log_likelihood -= float(np.log(phi).sum()) + d * norm
        score -= (a / phi[:, None]).sum(axis=0)
        information += (b / phi[:, None, None]).sum(axis=0)
        information -= np.einsum("l,li,lj->ij", 1 / phi**2, a, a)
        deaths += d
    return Efron(log_likelihood, score, information, deaths)


def newton_step(e: Efron, beta: FloatArray, bound: float) -> FloatArray:
    """``β + I⁻¹U``, each coordinate clipped to ``[−bound, bound]``.

    With noise the information can lose definiteness: its eigenvalues are floored at a small
    fraction of the largest so the step stays a step (the clipping bounds the rest).
    """
    info = (e.information + e.information.T) / 2
    values, vectors = np.linalg.eigh(info)
    floor = max(float(values.max()), 1e-12) * 1e-6
    safe = (vectors * np.maximum(values, floor)) @ vectors.T
    step = np.linalg.solve(safe, e.score)
    return np.asarray(np.clip(beta + step, -bound, bound), dtype=np.float64)


def covariance(e: Efron) -> FloatArray:
    """``I⁻¹``: the coefficients' sampling covariance (scaled units); pseudo-inverse if singular."""
    return np.asarray(np.linalg.pinv((e.information + e.information.T) / 2), dtype=np.float64)


def laplace_draws(scale: float, shape: tuple[int, ...]) -> FloatArray:
    """Continuous Laplace draws from OS CSPRNG uniforms, for noise *bands* only.

    The release's noise is discrete Laplace of a scale far above 1 (in fixed-point units), so
    the continuous law describes it to within a unit; these draws protect nothing.
    """
    count = int(np.prod(shape))
    u = np.frombuffer(secrets.token_bytes(8 * count), dtype=np.uint64) >> 11
    v = (u.astype(np.float64) + 0.5) / float(1 << 53) - 0.5
    return np.asarray(-scale * np.sign(v) * np.log1p(-2 * np.abs(v)), dtype=np.float64).reshape(
        shape
    )


def score_bins(x: FloatArray, beta: FloatArray, bins: int) -> IntArray:
    """Each record's bin of the risk score ``β·x`` over ``[−‖β‖₁, ‖β‖₁]`` (equal widths)."""
    reach = float(np.abs(beta).sum())
    if reach == 0:
        return np.zeros(len(x), dtype=np.int64)
    z = (x @ beta + reach) / (2 * reach) * bins
    return np.clip(np.floor(z), 0, bins - 1).astype(np.int64)


def concordance_vector(
    x: FloatArray,
    times: npt.ArrayLike,
    events: npt.ArrayLike,
    upper: float,
    time_grid: int,
    beta: FloatArray,
    bins: int,
) -> IntArray:
    """One hospital's deaths then censorings per (time bin, score bin): ``2·time_grid·bins``."""
    slot, past = time_bins(times, upper, time_grid)
    died = (np.asarray(events, dtype=np.float64) == 1) & ~past
    score = score_bins(x, beta, bins)
    out = np.zeros((2, time_grid, bins), dtype=np.int64)
    np.add.at(out, ((~died).astype(np.int64), slot, score), 1)
    return out.ravel()


@dataclass(frozen=True)
class Concordance:
    """Harrell's concordance from binned counts, and its bound against the exact value."""

    value: float
    tolerance: float
    pairs: float


def concordance(vector: Sequence[int], time_grid: int, bins: int) -> Concordance:
    """Concordance from pooled (noisy) counts of deaths and censorings per (time, score) bin.

    A death in time bin ``a`` is compared with every record in a later time bin and every
    censoring in bin ``a`` (lifelines' rule for ties in time); it is concordant when its score
    bin is higher, and a pair in one score bin counts ½. Only those same-bin pairs can differ
    from the exact count, each by ½, so ``|value − exact| ≤ tolerance = ½·same/pairs``.
    Negative noisy counts are clamped at zero.
    """
    v = np.maximum(np.asarray(vector, dtype=np.float64), 0).reshape(2, time_grid, bins)
    deaths, censored = v[0], v[1]
    everyone = deaths + censored
    later = np.cumsum(everyone[::-1], axis=0)[::-1] - everyone
    comparable = later + censored
    below = np.cumsum(comparable, axis=1) - comparable
    correct = float((deaths * below).sum())
    tied = float((deaths * comparable).sum())
    pairs = float((deaths * comparable.sum(axis=1, keepdims=True)).sum())
    if pairs <= 0:
        return Concordance(math.nan, math.nan, 0.0)
    return Concordance((correct + tied / 2) / pairs, tied / 2 / pairs, pairs)
