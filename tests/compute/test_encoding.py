"""Fixed-point encoding (agreeing with phe) and signed-slot packing."""

from __future__ import annotations

import math

import gmpy2
import numpy as np
import phe
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.compute.encoding import (
    FixedPoint,
    PackingLayout,
    from_plaintext,
    pack_slots,
    squeeze_layout,
    to_plaintext,
    unpack_slots,
)
from bund.compute.errors import EncodingOverflowError

P = int(gmpy2.next_prime(2**255 + 12345))
Q = int(gmpy2.next_prime(2**255 + 987654321))
N = P * Q  # a 511- or 512-bit modulus; no key generation needed for encoding tests
PHE_KEY = phe.PaillierPublicKey(N)


@settings(max_examples=200, deadline=None)
@given(
    x=st.floats(min_value=-(2.0**60), max_value=2.0**60, allow_nan=False),
    digits=st.integers(0, 12),
)
def test_fixed_point_agrees_with_phe(x: float, digits: int) -> None:
    fx = FixedPoint(4 * digits)
    encoded = phe.EncodedNumber.encode(PHE_KEY, x, precision=16.0**-digits)
    assert fx.phe_exponent == encoded.exponent == -digits
    assert to_plaintext(fx.encode(x), N) == encoded.encoding
    assert fx.decode(from_plaintext(encoded.encoding, N)) == encoded.decode()


def test_rounding_is_half_to_even_like_phe() -> None:
    fx = FixedPoint(0)
    assert [fx.encode(v) for v in (0.5, 1.5, 2.5, -0.5, -1.5)] == [0, 2, 2, 0, -2]


@given(values=st.lists(st.floats(-1e9, 1e9, allow_nan=False), max_size=20))
def test_encode_many_matches_encode_for_lists_and_numpy(values: list[float]) -> None:
    fx = FixedPoint(20)
    expected = [fx.encode(v) for v in values]
    assert fx.encode_many(values) == expected
    assert fx.encode_many(np.array(values, dtype=np.float64)) == expected
    assert fx.encode_many(np.array(values, dtype=np.float32)) == [
        fx.encode(float(v)) for v in np.array(values, dtype=np.float32)
    ]
    assert fx.decode_many(expected) == [fx.decode(v) for v in expected]


def test_integers_and_numpy_integers_encode_exactly() -> None:
    fx = FixedPoint(8)
    assert fx.encode_many([3, -2, np.int64(5)]) == [768, -512, 1280]
    assert fx.encode(2**80) == 2**88


def test_fixed_point_refuses_bad_input() -> None:
    fx = FixedPoint(8)
    for bad in (True, "1", None):
        with pytest.raises(TypeError):
            fx.encode(bad)  # type: ignore[arg-type]
    for bad_float in (math.inf, math.nan):
        with pytest.raises(ValueError):
            fx.encode(bad_float)
        with pytest.raises(ValueError):
            fx.encode_many([bad_float])
    with pytest.raises(ValueError):
        FixedPoint(-1)
    with pytest.raises(ValueError, match="multiple of 4"):
        _ = FixedPoint(6).phe_exponent


def test_plaintext_convention_and_overflow_band() -> None:
    max_int = N // 3 - 1
    assert to_plaintext(max_int, N) == max_int
    assert from_plaintext(to_plaintext(-max_int, N), N) == -max_int
    with pytest.raises(EncodingOverflowError):
        to_plaintext(max_int + 1, N)
    with pytest.raises(EncodingOverflowError):
        from_plaintext(N // 2, N)
    with pytest.raises(ValueError):
        from_plaintext(N, N)


def test_layout_sizes() -> None:
    layout = PackingLayout(value_bits=32, additions=1000, scalar_bits=32)
    assert layout.slot_bits == 32 + 32 + 10 + 1
    assert layout.slots(2048) == 2046 // 75
    assert layout.value_bound == 2**32 - 1
    assert layout.slot_bound == 2**74 - 1
    with pytest.raises(EncodingOverflowError, match="does not fit"):
        PackingLayout(value_bits=3000).slots(2048)
    for bad in (
        {"value_bits": 0},
        {"value_bits": 8, "additions": 0},
        {"value_bits": 8, "scalar_bits": -1},
    ):
        with pytest.raises(ValueError):
            PackingLayout(**bad)
    with pytest.raises(TypeError):
        PackingLayout(value_bits=8.0)  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(data=st.data(), value_bits=st.integers(1, 64), count=st.integers(0, 40))
def test_pack_unpack_round_trip(data: st.DataObject, value_bits: int, count: int) -> None:
    layout = PackingLayout(value_bits=value_bits)
    bound = layout.value_bound
    values = data.draw(st.lists(st.integers(-bound, bound), min_size=count, max_size=count))
    plaintexts = layout.pack(values, N)
    assert all(0 <= m < N for m in plaintexts)
    assert layout.unpack(plaintexts, N, count) == values


@settings(max_examples=100, deadline=None)
@given(data=st.data(), count=st.integers(1, 30))
def test_slots_stay_independent_under_sums_and_scalars(data: st.DataObject, count: int) -> None:
    layout = PackingLayout(value_bits=16, additions=4, scalar_bits=8)
    bound = layout.value_bound
    vectors = [
        data.draw(st.lists(st.integers(-bound, bound), min_size=count, max_size=count))
        for _ in range(4)
    ]
    k = data.draw(st.integers(-255, 255))
    packed = [layout.pack(v, N) for v in vectors]
    summed = [k * sum(ms) % N for ms in zip(*packed, strict=True)]
    expected = [k * sum(col) for col in zip(*vectors, strict=True)]
    assert layout.unpack(summed, N, count) == expected


def test_values_beyond_the_layout_are_refused_before_packing() -> None:
    layout = PackingLayout(value_bits=8)
    with pytest.raises(EncodingOverflowError, match="value 2 needs 9 bits"):
        layout.pack([1, -255, 256], N)


def test_overflowing_slots_are_detected_at_the_top() -> None:
    width, per = 8, 3
    plaintexts = pack_slots([1, 2, 3], width, per, N)
    overflowed = [(plaintexts[0] + (200 << (2 * width))) % N]  # slot 2 leaves its range
    with pytest.raises(EncodingOverflowError):
        unpack_slots(overflowed, width, per, N, 3)
    with pytest.raises(ValueError):
        unpack_slots(plaintexts, width, per, N, 4)


def test_squeeze_layout() -> None:
    assert squeeze_layout(255, 2048) == (9, 2046 // 9)
    assert squeeze_layout(0, 64) == (1, 62)
    with pytest.raises(ValueError):
        squeeze_layout(-1, 2048)
    with pytest.raises(EncodingOverflowError):
        squeeze_layout(2**3000, 2048)
