"""Privacy budgets as exact rationals: (epsilon, delta) pairs that add and compare without rounding.

Floats would let a ledger drift: 0.1 + 0.2 > 0.3 refuses a job that fits, and enough small
charges can overspend by rounding down. Budgets are ``Fraction`` pairs parsed from strings.

>>> Budget.parse("1/2") + Budget.parse("0.25", "1e-6")
Budget(epsilon=Fraction(3, 4), delta=Fraction(1, 1000000))
>>> Budget.parse("1").fits_within(Budget.parse("3/4"))
False
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from bund.compute.errors import InvalidInputError


def parse_rational(value: str | int | Fraction, what: str = "value") -> Fraction:
    """An exact non-negative rational from ``"1/2"``, ``"0.25"``, ``"1e-6"`` or an int.

    Floats are refused: their binary rounding is exactly what exact budgets avoid.
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise InvalidInputError(f'{what} must be written exactly, as a string like "1/2" or "0.5"')
    try:
        result = Fraction(value)
    except (ValueError, ZeroDivisionError, TypeError):
        raise InvalidInputError(f'{what} {value!r} is not a rational number like "1/2"') from None
    if result < 0:
        raise InvalidInputError(f"{what} must not be negative, got {value!r}")
    return result


def format_rational(value: Fraction) -> str:
    """``Fraction(3, 4)`` as ``"3/4"`` and ``Fraction(2)`` as ``"2"``: exact and parseable."""
    return str(value)


def format_decimal(value: Fraction, digits: int = 4) -> str:
    """``value`` as a decimal for people, to ``digits`` significant digits, rounded up.

    A cost or a spend is never shown below what it is: ``Fraction(155081, 62500)`` (2.4812960)
    is ``"2.482"``; a value that fits is exact (``"0.5"``, ``"1e-06"``). Ledgers, records and
    ``--json`` keep the exact rational (:func:`format_rational`).

    >>> format_decimal(Fraction(155081, 62500)), format_decimal(Fraction(1, 2))
    ('2.482', '0.5')
    >>> format_decimal(Fraction(1, 1_000_000)), format_decimal(Fraction(0))
    ('1e-06', '0')
    """
    if value < 0:
        raise ValueError("a privacy cost is not negative")
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(value.numerator) - math.log10(value.denominator))
    scale = Fraction(10) ** (digits - 1 - exponent)
    rounded = Fraction(math.ceil(value * scale)) / scale
    return f"{float(rounded):.{digits}g}"


def shown_exactly(value: Fraction) -> bool:
    """Whether :func:`format_decimal` shows ``value`` itself (nothing was rounded up).

    >>> shown_exactly(Fraction(1, 2)), shown_exactly(Fraction(7, 3))
    (True, False)
    """
    return Fraction(format_decimal(value)) == value


def format_epsilon(value: Fraction) -> str:
    """A decimal for people, and the exact rational after it when the decimal is not exact."""
    shown = format_decimal(value)
    return shown if shown_exactly(value) else f"{shown} (exactly {format_rational(value)})"


@dataclass(frozen=True, order=False)
class Budget:
    """An (epsilon, delta) privacy budget or cost, exact."""

    epsilon: Fraction = Fraction(0)
    delta: Fraction = Fraction(0)

    def __post_init__(self) -> None:
        if not isinstance(self.epsilon, Fraction) or not isinstance(self.delta, Fraction):
            raise TypeError("Budget takes Fractions; use Budget.parse for strings")
        if self.epsilon < 0 or self.delta < 0:
            raise ValueError("a budget is never negative")
        if self.delta >= 1:
            raise ValueError("delta must be below 1")

    @classmethod
    def parse(cls, epsilon: str | int | Fraction, delta: str | int | Fraction = 0) -> Budget:
        """A budget from exact strings or ints."""
        return cls(parse_rational(epsilon, "epsilon"), parse_rational(delta, "delta"))

    def __add__(self, other: Budget) -> Budget:
        return Budget(self.epsilon + other.epsilon, self.delta + other.delta)

    def __sub__(self, other: Budget) -> Budget:
        return Budget(
            max(self.epsilon - other.epsilon, Fraction(0)),
            max(self.delta - other.delta, Fraction(0)),
        )

    def fits_within(self, limit: Budget) -> bool:
        """Whether spending this stays within ``limit`` in both epsilon and delta."""
        return self.epsilon <= limit.epsilon and self.delta <= limit.delta

    @property
    def is_zero(self) -> bool:
        """Whether this costs nothing."""
        return self.epsilon == 0 and self.delta == 0

    def __str__(self) -> str:
        return f"epsilon={format_rational(self.epsilon)}, delta={format_rational(self.delta)}"
