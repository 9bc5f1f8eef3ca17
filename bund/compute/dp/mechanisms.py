"""Integer noise for differential privacy: discrete Laplace (by OpenDP), randomised response.

Why integers. Floating-point Laplace noise leaks through the gaps between representable doubles
(Mironov, CCS 2012): the low bits of ``x + noise`` say which ``x`` it came from. Every statistic
Bund releases is an integer vector (counts, sums of clamped values in integer units), so it adds
integer noise drawn *exactly* from the discrete Laplace distribution

    ``P(Z = k) = (1 - e^(-1/s)) / (1 + e^(-1/s)) · e^(-|k|/s)``,  ``k ∈ ℤ``,

by OpenDP's sampler (Canonne, Kamath and Steinke 2020), which uses only exact rational
arithmetic over bits from the OS CSPRNG; no general-purpose PRNG is involved.

Why the cost is exact. For a vector whose L1 sensitivity is ``Δ`` (one person added or removed
changes it by at most ``Δ`` in L1 norm), discrete Laplace noise of scale ``s`` on every coordinate
is ``Δ/s``-differentially private. OpenDP takes the scale as a float; :meth:`DiscreteLaplace.create`
picks the smallest float ``s`` with ``s ≥ Δ/ε`` (compared as exact rationals), so the true loss
``Δ/s`` never exceeds the ``ε`` that the ledger charges. The cost is the requested rational ``ε``
itself, never a float.

Shares. When several parties each add noise to a sum, :class:`DiscreteLaplaceShare` draws one
of ``k`` independent parts that add up to one discrete Laplace draw exactly (the distribution is
infinitely divisible), so ``k`` honest parties' parts together carry the whole ε;
:class:`SummedNoise` describes the noise a release carries when every party adds a part.

Labels. :class:`RandomizedResponse` flips each bit of a label column with an exact rational
probability: ``ε``-label-DP for whatever is computed from the randomised labels.

OpenDP gates its integer Laplace constructor behind the ``"contrib"`` feature flag; this module
is the only place in Bund that turns the flag on, just before it builds a measurement.

>>> mech = DiscreteLaplace.create(Fraction(1, 2), sensitivity=1)
>>> mech.epsilon, mech.scale
(Fraction(1, 2), Fraction(2, 1))
>>> len(mech.sample(3))
3
"""

from __future__ import annotations

import decimal
import math
import os
import secrets
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

#: The largest scale accepted: noise this wide would already swamp any statistic.
MAX_SCALE = Fraction(2**50)


def _measurement(scale: float) -> Any:
    """OpenDP's discrete Laplace measurement on i64 vectors under the L1 distance."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64")
    return dp.m.make_laplace(*space, scale=scale)


def _float_at_least(value: Fraction) -> float:
    """The smallest double that is not below ``value`` (exact rational comparison)."""
    approx = float(value)
    if Fraction(approx) < value:
        approx = math.nextafter(approx, math.inf)
    return approx


@dataclass(frozen=True)
class DiscreteLaplace:
    """Discrete Laplace noise of one scale on each coordinate of an integer vector.

    Build one with :meth:`create` from the privacy loss it must not exceed.

    Attributes:
        epsilon: The pure-DP loss this mechanism guarantees and charges, exact.
        sensitivity: The L1 sensitivity of the vector it is applied to (integer units).
        scale: The scale actually sampled with, an exact binary rational ``≥ sensitivity/epsilon``.
    """

    epsilon: Fraction
    sensitivity: int
    scale: Fraction
    _meas: Any = field(repr=False, compare=False, default=None)

    @classmethod
    def create(cls, epsilon: Fraction, sensitivity: int) -> DiscreteLaplace:
        """The mechanism that releases a vector of L1 sensitivity ``sensitivity`` at ``epsilon``.

        Args:
            epsilon: Privacy loss, a positive exact rational.
            sensitivity: L1 sensitivity, a positive integer.

        Raises:
            ValueError: If ``epsilon`` or ``sensitivity`` is not positive, or the scale is absurd.
        """
        if not isinstance(epsilon, Fraction) or epsilon <= 0:
            raise ValueError("epsilon must be a positive Fraction")
        if isinstance(sensitivity, bool) or not isinstance(sensitivity, int) or sensitivity < 1:
            raise ValueError("sensitivity must be a positive integer")
        exact = Fraction(sensitivity) / epsilon
        if exact > MAX_SCALE:
            raise ValueError(f"a noise scale of {float(exact):.3g} is beyond {float(MAX_SCALE)}")
        scale = _float_at_least(exact)
        return cls(epsilon, sensitivity, Fraction(scale), _measurement(scale))

    def privacy_map(self, d_in: int) -> Fraction:
        """The exact loss for inputs at L1 distance ``d_in``: ``d_in / scale`` (≤ ``epsilon``)."""
        return Fraction(d_in) / self.scale

    def sample(self, length: int) -> npt.NDArray[np.int64]:
        """``length`` independent draws, as int64 (OpenDP's exact sampler, CSPRNG bits)."""
        if length < 0:
            raise ValueError("length must not be negative")
        if length == 0:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(self._meas([0] * length), dtype=np.int64)

    def pmf(self, k: int) -> float:
        """``P(Z = k)`` for one draw ``Z``: for tests and for drawing noise bands."""
        t = math.exp(-1 / float(self.scale))
        return (1 - t) / (1 + t) * t ** abs(k)

    def variance(self) -> float:
        """``Var(Z) = 2t / (1 - t)²`` with ``t = e^(-1/scale)``."""
        t = math.exp(-1 / float(self.scale))
        return 2 * t / (1 - t) ** 2

    def half_width(self, confidence: float) -> int:
        """The smallest ``k`` with ``P(|Z| ≤ k) ≥ confidence``: the noise band of one cell.

        ``P(|Z| > k) = 2 t^(k+1) / (1 + t)`` with ``t = e^(-1/scale)``.
        """
        if not 0 < confidence < 1:
            raise ValueError("confidence must be in (0, 1)")
        t = math.exp(-1 / float(self.scale))
        # Smallest k with 2 t^(k+1) / (1+t) <= 1 - confidence.
        k = math.log((1 - confidence) * (1 + t) / 2) / math.log(t) - 1
        return max(0, math.ceil(k - 1e-12))


#: The most work the exact share sampler takes on for one release: cells times scale. Its expected
#: time per share grows like the scale (about 12 µs per unit of scale on one core, and 50 µs at
#: scale 2), so this bounds one release's shares to about a second.
MAX_SHARE_WORK = 1 << 16


def _bernoulli(numerator: int, denominator: int) -> bool:
    """An exact Bernoulli(``numerator/denominator``) draw from the OS CSPRNG.

    A uniform ``U`` in ``[0, 1)`` is known to lie in ``[u, u + 1)/2⁶⁴`` after 64 random bits,
    which decides ``U < p = numerator/denominator`` unless the interval straddles ``p``
    (probability below 2⁻⁶⁴); then ``U`` is uniform on that interval, and it lies below ``p``
    with probability ``(numerator·2⁶⁴ − u·denominator)/denominator``, an exact uniform integer's
    draw.
    """
    u = int.from_bytes(os.urandom(8), "little")
    bound = numerator << 64
    if (u + 1) * denominator <= bound:
        return True
    if u * denominator >= bound:
        return False
    return secrets.randbelow(denominator) < bound - u * denominator


@dataclass(frozen=True)
class DiscreteLaplaceShare:
    """One of ``shares`` independent parts whose sum is one draw of ``whole``, exactly.

    The discrete Laplace is infinitely divisible: a draw of scale ``s`` is ``G₁ − G₂`` with
    ``G`` geometric, ``P(G = j) = (1 − t) tʲ``, ``t = e^(−1/s)``, and a geometric is the sum of
    ``k`` independent negative binomial (Pólya) variables ``NB(1/k, t)``. A share is
    ``X − Y`` with ``X, Y ~ NB(1/k, t)`` independent, so any ``k`` shares add up to a discrete
    Laplace draw of the whole's scale and any more shares to that plus independent noise. The
    ``k`` share holders who add theirs thus give the release the whole mechanism's ε between
    them; fewer than ``k`` give no such guarantee.

    Sampling is exact, from the OS CSPRNG: a geometric proposal ``g`` comes from an OpenDP
    discrete Laplace draw ``z`` (``g = z`` if ``z ≥ 0``, else ``−z − 1``) and is accepted with
    probability ``∏_{i=1..g} (i − 1 + 1/k) / i``, the ratio of the two pmfs, as a run of exact
    rational Bernoulli draws. The expected work per draw grows like the scale, so
    :meth:`create` refuses scales above :data:`MAX_SHARE_WORK`.

    >>> share = DiscreteLaplaceShare.create(DiscreteLaplace.create(Fraction(1, 2), 1), 3)
    >>> round(share.variance() * 3 / share.whole.variance(), 9)
    1.0
    >>> len(share.sample(4))
    4
    """

    whole: DiscreteLaplace
    shares: int

    @classmethod
    def create(cls, whole: DiscreteLaplace, shares: int) -> DiscreteLaplaceShare:
        """The ``1/shares`` part of ``whole``.

        Raises:
            ValueError: If ``shares`` is not a positive integer or the scale is above
                :data:`MAX_SHARE_WORK`.
        """
        if isinstance(shares, bool) or not isinstance(shares, int) or shares < 1:
            raise ValueError("shares must be a positive integer")
        if shares > 1 and whole.scale > MAX_SHARE_WORK:
            raise ValueError(
                f"noise shares are drawn exactly up to a scale of {MAX_SHARE_WORK}, not "
                f"{float(whole.scale):.3g}"
            )
        return cls(whole, shares)

    def _geometric(self, count: int) -> list[int]:
        """``count`` exact geometric draws ``P(G = j) = (1 − t) tʲ``, one discrete Laplace each.

        ``G = Z`` for ``Z ≥ 0`` and ``G = −Z − 1`` for ``Z < 0``: ``P(G = j) = c tʲ + c tʲ⁺¹``
        with ``c = (1 − t)/(1 + t)``, which is ``(1 − t) tʲ``.
        """
        z = self.whole.sample(count)
        draws: list[int] = np.where(z >= 0, z, -z - 1).tolist()
        return draws

    def _polya(self, count: int) -> list[int]:
        """``count`` exact ``NB(1/k, t)`` draws by rejection from geometric proposals."""
        k = self.shares
        t = math.exp(-1 / float(self.whole.scale))
        accept = max((1 - t) ** (1 - 1 / k), 1e-6)  # the mean acceptance rate, for batching
        out: list[int] = []
        while len(out) < count:
            for g in self._geometric(math.ceil((count - len(out)) / accept) + 8):
                if all(_bernoulli(k * (i - 1) + 1, k * i) for i in range(1, g + 1)):
                    out.append(g)
                    if len(out) == count:
                        break
        return out

    def sample(self, length: int) -> npt.NDArray[np.int64]:
        """``length`` independent shares, as int64."""
        if length < 0:
            raise ValueError("length must not be negative")
        if self.shares == 1:
            return self.whole.sample(length)
        draws = np.asarray(self._polya(2 * length), dtype=np.int64)
        return draws[:length] - draws[length:]

    def variance(self) -> float:
        """``Var = Var(whole) / shares``: variances of independent parts add up."""
        return self.whole.variance() / self.shares


#: The longest pmf table :class:`SummedNoise` builds for a noise band (scales up to ~10^5).
_MAX_TABLE = 1 << 22


@dataclass(frozen=True)
class SummedNoise:
    """The noise of a release to which each of ``parties`` parties adds a ``1/shares`` part.

    Each party adds a :class:`DiscreteLaplaceShare` (a whole discrete Laplace draw when
    ``shares`` is 1), so the release carries ``X − Y`` with ``X, Y ~ NB(parties/shares, t)``,
    ``t = e^(−1/scale)``: ``parties/shares`` times the variance of one whole draw. This class
    describes that noise for summaries, noise bands and plots (post-processing of a release:
    its draws protect nothing); the privacy comes from the parts each party adds.

    >>> noise = SummedNoise(DiscreteLaplace.create(Fraction(1), 1), parties=3)
    >>> round(noise.variance() / noise.whole.variance(), 6)
    3.0
    """

    whole: DiscreteLaplace
    parties: int
    shares: int = 1

    def variance(self) -> float:
        """``parties / shares`` times the variance of one whole draw."""
        return self.parties * self.whole.variance() / self.shares

    def _pmf(self) -> npt.NDArray[np.float64]:
        """``P(X = j)``, ``X ~ NB(parties/shares, t)``, up to where less than 1e-15 is left."""
        r = self.parties / self.shares
        t = math.exp(-1 / float(self.whole.scale))
        size = math.ceil((r + 40 + 2 * math.sqrt(40 * r)) / (1 - t)) + 100
        if size > _MAX_TABLE:
            scale = float(self.whole.scale)
            raise ValueError(f"a noise scale of {scale:.3g} is too wide to tabulate")
        j = np.arange(1, size, dtype=np.float64)
        steps = np.concatenate(([0.0], np.cumsum(np.log((j - 1 + r) / j))))
        log_p = r * math.log1p(-t) + steps + np.arange(size) * math.log(t)
        pmf = np.exp(log_p)
        return np.asarray(pmf / pmf.sum(), dtype=np.float64)

    def sample(self, length: int) -> npt.NDArray[np.int64]:
        """``length`` draws of the summed noise, for noise bands only.

        By inverting the tabulated cdf at uniforms from the OS CSPRNG (float arithmetic): fine
        for drawing a band around a released figure, never for protecting one.
        """
        cdf = np.cumsum(self._pmf())
        uniforms = np.frombuffer(secrets.token_bytes(16 * length), dtype=np.uint64) >> 11
        u = uniforms.astype(np.float64) / float(1 << 53) * cdf[-1]
        draws = np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)
        return np.asarray(draws[:length] - draws[length:], dtype=np.int64)

    def half_width(self, confidence: float) -> int:
        """The smallest ``k`` with ``P(|noise| ≤ k) ≥ confidence`` (float arithmetic)."""
        if not 0 < confidence < 1:
            raise ValueError("confidence must be in (0, 1)")
        pmf = self._pmf()
        cdf = np.cumsum(pmf)
        n = len(pmf)
        j = np.arange(n)

        def covered(k: int) -> float:
            # P(|X − Y| ≤ k) = Σ_j P(Y = j) · P(j − k ≤ X ≤ j + k)
            high = cdf[np.minimum(j + k, n - 1)]
            low = np.where(j - k - 1 >= 0, cdf[np.maximum(j - k - 1, 0)], 0.0)
            return float(np.sum(pmf * (high - low)))

        low_k, high_k = 0, n
        while low_k < high_k:
            mid = (low_k + high_k) // 2
            if covered(mid) >= confidence - 1e-12:
                high_k = mid
            else:
                low_k = mid + 1
        return low_k


#: Largest ε randomised response accepts: beyond it a label almost never flips (``e^-40``).
MAX_RR_EPSILON = Fraction(40)
#: The flip probability is a multiple of ``2^-64`` (so every draw is an exact ``_bernoulli``).
_RR_DENOMINATOR = 1 << 64


@dataclass(frozen=True)
class RandomizedResponse:
    """Randomised response on bits (Warner 1965): each bit flipped with probability ``flip``.

    Label differential privacy (Ghazi, Golowich, Kumar, Manurangsi and Zhang, *Deep Learning with
    Label Differential Privacy*, NeurIPS 2021): a party that applies it once to its label column
    releases, through anything computed from the randomised labels, an ``ε``-label-DP view of
    each label, whatever the computation (post-processing). One bit kept with probability
    ``1 − flip``: ``P(b' = b | b) / P(b' = b | 1 − b) = (1 − flip)/flip ≤ e^ε``.

    ``flip`` is the smallest multiple of ``2^-64`` with ``(1 − flip)/flip ≤ e^ε``, from ``e^ε``
    computed to 60 digits and rounded down by a relative ``10^-40`` (Python's ``decimal``), so the
    loss of the sampled mechanism never exceeds the ``ε`` charged; each draw is an exact
    Bernoulli of that rational over bits of the OS CSPRNG (:func:`_bernoulli`).

    Attributes:
        epsilon: The loss charged, exact.
        flip: The flip probability, an exact binary rational just above ``1/(1 + e^ε)``.

    >>> rr = RandomizedResponse.create(Fraction(1))
    >>> round(float(rr.flip), 6), round(float(rr.keep / rr.flip), 6)
    (0.268941, 2.718282)
    >>> sorted(set(rr.apply(np.array([0, 1, 1, 0])).tolist()) - {0, 1})
    []
    """

    epsilon: Fraction
    flip: Fraction

    @classmethod
    def create(cls, epsilon: Fraction) -> RandomizedResponse:
        """The mechanism that releases bits at ``epsilon``-DP each.

        Raises:
            ValueError: If ``epsilon`` is not a Fraction in ``(0, MAX_RR_EPSILON]``.
        """
        if not isinstance(epsilon, Fraction) or not 0 < epsilon <= MAX_RR_EPSILON:
            raise ValueError(f"epsilon must be a Fraction in (0, {MAX_RR_EPSILON}]")
        with decimal.localcontext() as context:
            context.prec = 60
            exp = (Decimal(epsilon.numerator) / Decimal(epsilon.denominator)).exp()
            low = exp * (1 - Decimal(10) ** -40)  # at or below e^ε, whatever the roundings
            numerator = (Decimal(_RR_DENOMINATOR) / (1 + low)).to_integral_value(
                rounding=decimal.ROUND_CEILING
            )
        return cls(epsilon, Fraction(int(numerator), _RR_DENOMINATOR))

    @property
    def keep(self) -> Fraction:
        """``1 − flip``: the probability that a bit is released as it is."""
        return 1 - self.flip

    def apply(self, bits: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        """Each 0/1 bit of ``bits`` flipped independently with probability ``flip``.

        Raises:
            ValueError: If a value is not 0 or 1.
        """
        values = np.asarray(bits)
        if not np.isin(values, (0, 1)).all():
            raise ValueError("randomised response takes bits: every value 0 or 1")
        a, b = self.flip.numerator, self.flip.denominator
        flips = np.fromiter((_bernoulli(a, b) for _ in range(values.size)), bool, values.size)
        return np.asarray(values.astype(np.int64) ^ flips.reshape(values.shape), dtype=np.int64)
