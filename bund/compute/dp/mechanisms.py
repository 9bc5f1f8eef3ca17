"""Integer noise for differential privacy: the discrete Laplace mechanism, sampled by OpenDP.

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

OpenDP gates its integer Laplace constructor behind the ``"contrib"`` feature flag; this module
is the only place in Bund that turns the flag on, just before it builds a measurement.

>>> mech = DiscreteLaplace.create(Fraction(1, 2), sensitivity=1)
>>> mech.epsilon, mech.scale
(Fraction(1, 2), Fraction(2, 1))
>>> len(mech.sample(3))
3
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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
