"""Fixed-point encoding of reals, and packing of many signed integers into one plaintext.

Paillier encrypts integers modulo ``n``. Reals become integers by fixed-point encoding: ``x`` is
stored as ``round(x * 2**frac_bits)`` (round half to even, as ``phe`` does), and negatives wrap
modulo ``n``. With ``frac_bits`` a multiple of 4 the integer is exactly ``phe``'s
``EncodedNumber.encode(key, x, precision=16**-(frac_bits // 4)).encoding`` (``phe`` uses base 16),
so the two libraries agree on every value; :func:`to_plaintext` keeps ``phe``'s convention that a
plaintext above ``2n/3`` is negative and the middle third signals overflow.

Packing puts ``k`` signed integers ``v_0 .. v_{k-1}`` into one plaintext

    ``M = v_0 + v_1·2^w + v_2·2^{2w} + ... + v_{k-1}·2^{(k-1)w}  (mod n)``

where ``w`` is the slot width. Slots are *signed*: the decoder reads the lowest ``w`` bits as a
two's-complement digit, subtracts it and shifts, so borrows between slots cancel exactly. Adding
packed plaintexts, or multiplying one by an integer, acts on every slot at once and keeps the slots
independent as long as each slot's value stays within ``±(2^{w-1} - 1)``; then ``|M| < 2^{kw}``, so
``k·w <= bits(n) - 2`` keeps ``M`` inside ``(-n/2, n/2)`` and the decoding is exact.
:class:`PackingLayout` chooses ``w`` from the value size, the number of additions and the scalar
size the protocol will apply, and every encoding checks that headroom before it packs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from bund.compute.errors import EncodingOverflowError


def to_plaintext(value: int, n: int) -> int:
    """Wrap a signed integer into ``[0, n)``, refusing values ``phe`` could not tell apart.

    Args:
        value: A signed integer with ``|value| <= n // 3 - 1`` (``phe``'s ``max_int``).
        n: The Paillier modulus.

    Returns:
        ``value mod n``.

    Raises:
        EncodingOverflowError: If ``|value|`` exceeds ``n // 3 - 1``.

    >>> to_plaintext(-5, 101)
    96
    """
    if abs(value) > n // 3 - 1:
        raise EncodingOverflowError(
            f"a {value.bit_length()}-bit integer does not fit a plaintext of a "
            f"{n.bit_length()}-bit key: scale the value down or use fewer fractional bits"
        )
    return value % n


def from_plaintext(plaintext: int, n: int) -> int:
    """Read a decrypted plaintext back as a signed integer (``phe``'s convention).

    Args:
        plaintext: A plaintext in ``[0, n)``.
        n: The Paillier modulus.

    Returns:
        The plaintext itself if it is at most ``n // 3 - 1``, ``plaintext - n`` if it is at least
        ``n - (n // 3 - 1)``.

    Raises:
        ValueError: If ``plaintext`` is outside ``[0, n)``.
        EncodingOverflowError: If it lies in the middle third, where a computation overflowed.

    >>> from_plaintext(96, 101)
    -5
    """
    if not 0 <= plaintext < n:
        raise ValueError("a plaintext lies in [0, n)")
    max_int = n // 3 - 1
    if plaintext <= max_int:
        return int(plaintext)
    if plaintext >= n - max_int:
        return int(plaintext) - int(n)
    raise EncodingOverflowError(
        "the decrypted value overflowed the plaintext space: the computation summed or scaled "
        "values beyond n/3; use fewer fractional bits or smaller scalars"
    )


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point encoding with ``frac_bits`` fractional bits: ``x -> round(x * 2**frac_bits)``.

    Attributes:
        frac_bits: Number of fractional bits, 0 to 1024. Use a multiple of 4 to interoperate with
            ``phe`` (its exponent is ``-frac_bits // 4`` in base 16).

    >>> FixedPoint(16).encode(1.5)
    98304
    >>> FixedPoint(16).decode(-98304)
    -1.5
    """

    frac_bits: int

    def __post_init__(self) -> None:
        if not isinstance(self.frac_bits, int) or isinstance(self.frac_bits, bool):
            raise TypeError("frac_bits is an int")
        if not 0 <= self.frac_bits <= 1024:
            raise ValueError("frac_bits lies in [0, 1024]")

    @property
    def phe_exponent(self) -> int:
        """The base-16 exponent ``phe`` uses for this precision (``-frac_bits / 4``).

        Raises:
            ValueError: If ``frac_bits`` is not a multiple of 4.
        """
        if self.frac_bits % 4:
            raise ValueError("phe's base-16 exponents need frac_bits to be a multiple of 4")
        return -(self.frac_bits // 4)

    def encode(self, value: float | int) -> int:
        """Encode one real as a signed integer, rounding half to even (exactly as ``phe``).

        Raises:
            TypeError: If ``value`` is not an int or a float (bools are refused).
            ValueError: If ``value`` is not finite.
        """
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"fixed-point encoding takes ints and floats, not {type(value)!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("only finite values can be encoded")
        return round(Fraction(value) * (1 << self.frac_bits))

    def encode_many(self, values: Iterable[float | int]) -> list[int]:
        """Encode each value (see :meth:`encode`); accepts any iterable, numpy arrays included."""
        scale = 1 << self.frac_bits
        out: list[int] = []
        for value in values:
            if isinstance(value, float) and math.isfinite(value):
                # x * 2^f is exact in binary floating point unless it overflows, which
                # Fraction below would not; round() of a float rounds half to even.
                scaled = value * scale
                out.append(round(scaled) if math.isfinite(scaled) else self.encode(value))
            elif isinstance(value, int) and not isinstance(value, bool):
                out.append(value * scale)
            else:
                out.append(self.encode(_as_python_number(value)))
        return out

    def decode(self, value: int) -> float:
        """Decode a signed integer to a float, correctly rounded (``value / 2**frac_bits``)."""
        return value / (1 << self.frac_bits)

    def decode_many(self, values: Iterable[int]) -> list[float]:
        """Decode each value (see :meth:`decode`)."""
        scale = 1 << self.frac_bits
        return [int(v) / scale for v in values]


def _as_python_number(value: object) -> float | int:
    """Turn a numpy scalar into the Python number it holds; other types pass through."""
    item = getattr(value, "item", None)
    if callable(item):
        result = item()
        if isinstance(result, int | float):
            return result
    if isinstance(value, int | float):
        return value
    raise TypeError(f"fixed-point encoding takes ints and floats, not {type(value)!r}")


def _ceil_log2(x: int) -> int:
    """Smallest ``L`` with ``2**L >= x`` for ``x >= 1``."""
    return (x - 1).bit_length()


@dataclass(frozen=True)
class PackingLayout:
    """How many signed integers share one plaintext, and how wide each slot is.

    The slot width is ``value_bits + scalar_bits + ceil(log2(additions)) + 1``: the values'
    magnitude, the growth from multiplying by scalars below ``2**scalar_bits`` and from summing up
    to ``additions`` such products, and a sign bit. A value of magnitude ``2**value_bits`` or more
    is refused before it is packed.

    Attributes:
        value_bits: Each packed value satisfies ``|v| <= 2**value_bits - 1``.
        additions: How many packed ciphertexts the protocol may add together (at least 1).
        scalar_bits: Scalars applied to a packed ciphertext satisfy ``|k| <= 2**scalar_bits - 1``;
            0 means no scalar multiplication.

    >>> layout = PackingLayout(value_bits=32, additions=1024)
    >>> layout.slot_bits, layout.slots(2048)
    (43, 47)
    """

    value_bits: int
    additions: int = 1
    scalar_bits: int = 0

    def __post_init__(self) -> None:
        for name in ("value_bits", "additions", "scalar_bits"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} is an int")
        if self.value_bits < 1:
            raise ValueError("value_bits is at least 1")
        if self.additions < 1:
            raise ValueError("additions is at least 1")
        if self.scalar_bits < 0:
            raise ValueError("scalar_bits is at least 0")

    @property
    def slot_bits(self) -> int:
        """Width ``w`` of one slot in bits, sign included."""
        return self.value_bits + self.scalar_bits + _ceil_log2(self.additions) + 1

    @property
    def value_bound(self) -> int:
        """Largest magnitude a value may have when it is packed."""
        return (1 << self.value_bits) - 1

    @property
    def slot_bound(self) -> int:
        """Largest magnitude a slot can hold and still decode exactly: ``2**(w-1) - 1``."""
        return (1 << (self.slot_bits - 1)) - 1

    def slots(self, key_bits: int) -> int:
        """Slots per plaintext for a modulus of ``key_bits`` bits: ``(key_bits - 2) // w``.

        Raises:
            EncodingOverflowError: If not even one slot fits.
        """
        count = (key_bits - 2) // self.slot_bits
        if count < 1:
            raise EncodingOverflowError(
                f"a {self.slot_bits}-bit slot does not fit a {key_bits}-bit key: "
                "reduce value_bits, additions or scalar_bits"
            )
        return count

    def slots_within(self, capacity_bits: int) -> int:
        """Slots per plaintext when a packed plaintext may use ``capacity_bits`` bits.

        :meth:`slots` is ``slots_within(key_bits - 2)`` for Paillier, whose plaintexts fill the
        modulus; an engine whose plaintext space is smaller (Okamoto–Uchiyama's secret ``p``) or
        that keeps headroom below it passes its own capacity.

        Raises:
            EncodingOverflowError: If not even one slot fits.
        """
        count = capacity_bits // self.slot_bits
        if count < 1:
            raise EncodingOverflowError(
                f"a {self.slot_bits}-bit slot does not fit {capacity_bits} bits of plaintext: "
                "reduce value_bits, additions or scalar_bits, or use a larger key"
            )
        return count

    def check_values(self, values: Sequence[int]) -> None:
        """Refuse any value too large for this layout, before anything is packed.

        Raises:
            EncodingOverflowError: Naming the first offending index and the bits it needs.
        """
        bound = self.value_bound
        for index, value in enumerate(values):
            if abs(value) > bound:
                raise EncodingOverflowError(
                    f"value {index} needs {abs(value).bit_length()} bits but the packing layout "
                    f"admits value_bits={self.value_bits}: raise value_bits (fewer slots per "
                    "ciphertext) or scale the values down"
                )

    def pack(self, values: Sequence[int], n: int) -> list[int]:
        """Pack signed integers into plaintexts modulo ``n``, slot 0 in the lowest bits.

        Args:
            values: Signed integers within ``±value_bound``.
            n: The Paillier modulus.

        Returns:
            ``ceil(len(values) / slots)`` plaintexts in ``[0, n)``; the last one may have fewer
            values (its upper slots hold zero).

        Raises:
            EncodingOverflowError: If a value exceeds the layout (checked before packing) or no
                slot fits the key.
        """
        self.check_values(values)
        return pack_slots(values, self.slot_bits, self.slots(n.bit_length()), n)

    def unpack(self, plaintexts: Sequence[int], n: int, count: int) -> list[int]:
        """Read ``count`` signed values back from packed plaintexts (inverse of :meth:`pack`).

        Raises:
            EncodingOverflowError: If a plaintext holds bits beyond its slots (overflow).
        """
        return unpack_slots(plaintexts, self.slot_bits, self.slots(n.bit_length()), n, count)


def squeeze_layout(bound: int, key_bits: int) -> tuple[int, int]:
    """Slot width and slots per plaintext for values of magnitude at most ``bound``.

    Used to pack results *after* computing on them (``EncryptedVector.squeeze``): the
    width is ``bits(bound) + 1``, the tightest signed slot that holds the value.

    Raises:
        ValueError: If ``bound`` is negative.
        EncodingOverflowError: If one slot does not fit the key.
    """
    if bound < 0:
        raise ValueError("bound is a magnitude, at least 0")
    width = bound.bit_length() + 1
    count = (key_bits - 2) // width
    if count < 1:
        raise EncodingOverflowError(
            f"values of {bound.bit_length()} bits do not fit a {key_bits}-bit key even alone"
        )
    return width, count


def squeeze_slots(bound: int, capacity_bits: int) -> tuple[int, int]:
    """Slot width and slots per plaintext for values of magnitude at most ``bound``.

    The same layout as :func:`squeeze_layout` (``squeeze_layout(bound, key_bits)`` is
    ``squeeze_slots(bound, key_bits - 2)``) for a plaintext that may use ``capacity_bits`` bits:
    what an engine with a smaller plaintext space, or a protocol that keeps headroom, passes.

    Raises:
        ValueError: If ``bound`` is negative.
        EncodingOverflowError: If one slot does not fit.
    """
    if bound < 0:
        raise ValueError("bound is a magnitude, at least 0")
    width = bound.bit_length() + 1
    count = capacity_bits // width
    if count < 1:
        raise EncodingOverflowError(
            f"values of {bound.bit_length()} bits do not fit {capacity_bits} bits of plaintext"
        )
    return width, count


def pack_signed(values: Sequence[int], width: int, per_plaintext: int) -> list[int]:
    """Pack signed integers ``width`` bits apart into signed integers, ``per_plaintext`` to each.

    :func:`pack_slots` without the reduction modulo ``n``: for an engine that encrypts signed
    plaintexts directly (Okamoto–Uchiyama). The caller guarantees the slot bounds as there.

    >>> pack_signed([1, -1, 2], 8, 2)
    [-255, 2]
    """
    out: list[int] = []
    for start in range(0, len(values), per_plaintext):
        acc = 0
        for value in reversed(values[start : start + per_plaintext]):
            acc = (acc << width) + int(value)
        out.append(acc)
    return out


def pack_slots(values: Sequence[int], width: int, per_plaintext: int, n: int) -> list[int]:
    """Pack signed integers ``width`` bits apart, ``per_plaintext`` to a plaintext mod ``n``.

    The caller guarantees ``|v| <= 2**(width-1) - 1`` and ``per_plaintext * width <=
    bits(n) - 2``; :meth:`PackingLayout.pack` checks both.
    """
    out: list[int] = []
    for start in range(0, len(values), per_plaintext):
        acc = 0
        for value in reversed(values[start : start + per_plaintext]):
            acc = (acc << width) + int(value)
        out.append(acc % n)
    return out


def unpack_slots(
    plaintexts: Sequence[int], width: int, per_plaintext: int, n: int, count: int
) -> list[int]:
    """Read ``count`` signed ``width``-bit slots back from plaintexts (inverse of pack_slots).

    Raises:
        ValueError: If ``count`` does not match the number of plaintexts.
        EncodingOverflowError: If a plaintext has bits beyond its slots, which means a slot
            overflowed its width somewhere along the computation.
    """
    if not 0 <= count <= len(plaintexts) * per_plaintext or (
        count <= (len(plaintexts) - 1) * per_plaintext
    ):
        raise ValueError(f"{len(plaintexts)} plaintexts cannot hold exactly {count} values")
    mask, half, full = (1 << width) - 1, 1 << (width - 1), 1 << width
    out: list[int] = []
    remaining = count
    for plaintext in plaintexts:
        m = int(plaintext)
        acc = m - n if m > n >> 1 else m
        for _ in range(min(per_plaintext, remaining)):
            digit = acc & mask
            if digit >= half:
                digit -= full
            out.append(digit)
            acc = (acc - digit) >> width
        remaining -= per_plaintext
        if acc != 0:
            raise EncodingOverflowError(
                "a packed plaintext holds bits beyond its slots: a slot overflowed; widen the "
                "layout (more value_bits, additions or scalar_bits)"
            )
    return out
