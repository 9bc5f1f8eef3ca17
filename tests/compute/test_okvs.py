"""The band OKVS: each encoded key decodes to its value, the table is oblivious, the bound holds."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.compute import okvs


def random_values(n: int) -> okvs.Values:
    return np.frombuffer(os.urandom(16 * n), dtype="<u8").reshape(n, 2).astype(np.uint64)


def encode_random(keys: list[bytes]) -> tuple[okvs.OkvsParams, okvs.Values, okvs.Values]:
    params = okvs.okvs_params(len(keys), os.urandom(okvs.SEED_BYTES))
    values = random_values(len(keys))
    fill = os.urandom(okvs.VALUE_BYTES * params.columns)
    return params, values, okvs.encode(keys, values, params, fill)


@settings(max_examples=40, deadline=None)
@given(st.sets(st.binary(max_size=12), max_size=300))
def test_every_encoded_key_decodes_to_its_value(key_set: set[bytes]) -> None:
    keys = sorted(key_set)
    params, values, table = encode_random(keys)
    assert table.shape == (params.columns, 2) and table.dtype == np.uint64
    assert np.array_equal(okvs.decode(table, keys, params), values)


@pytest.mark.parametrize("n", [0, 1, 2, 1000, 70_000])
def test_decodes_at_sizes_that_span_the_decoders_chunks(
    n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(okvs, "_DECODE_CHUNK", 1 << 12)  # many chunks at 70,000 keys
    keys = [f"91310000MA{i:08d}".encode() for i in range(n)]
    params, values, table = encode_random(keys)
    assert np.array_equal(okvs.decode(table, keys, params), values)
    # Decoding a subset, in another order, gives the same values for those keys.
    pick = list(range(n - 1, -1, -7))
    assert np.array_equal(okvs.decode(table, [keys[i] for i in pick], params), values[pick])


def test_width_over_64_bits_decodes() -> None:
    keys = [os.urandom(8) for _ in range(500)]
    params = okvs.OkvsParams(500, 801, 100, os.urandom(16))  # a wide band: two 64-bit words
    values = random_values(500)
    table = okvs.encode(keys, values, params, os.urandom(16 * params.columns))
    assert np.array_equal(okvs.decode(table, keys, params), values)


def test_non_pivot_cells_keep_the_random_fill_and_encoding_is_deterministic() -> None:
    keys = [f"k{i}".encode() for i in range(400)]
    params = okvs.okvs_params(400, bytes(16))
    values = random_values(400)
    fill = os.urandom(16 * params.columns)
    table = okvs.encode(keys, values, params, fill)
    assert np.array_equal(okvs.encode(keys, values, params, fill), table)  # resumable
    cells = okvs.table_from_bytes(fill, params.columns)
    kept = (table == cells).all(axis=1)
    # Exactly one cell per key is solved for; every other cell is the caller's random fill.
    assert int((~kept).sum()) == 400
    assert okvs.table_from_bytes(okvs.table_to_bytes(table), params.columns).tolist() == (
        table.tolist()
    )


def test_table_is_uniform_whatever_the_keys() -> None:
    """With random values, two disjoint key sets give tables with the same cell statistics.

    Every bit of every cell is a fair coin: across 200 encodings of each key set, the mean of
    each of the 128 bit positions (pooled over cells) stays within 5 standard deviations of 1/2.
    """
    bits = {}
    for name, keys in (
        ("a", [f"a{i}".encode() for i in range(64)]),
        ("b", [f"b{i}".encode() for i in range(64)]),
    ):
        acc = np.zeros(128)
        cells = 0
        for _ in range(200):
            params, _, table = encode_random(keys)
            unpacked = np.unpackbits(table.view(np.uint8).reshape(-1, 16), axis=1)
            acc += unpacked.sum(axis=0)
            cells += len(table)
        bits[name] = acc / cells
        assert np.all(np.abs(bits[name] - 0.5) < 5 * math.sqrt(0.25 / cells))


def test_params_meet_the_failure_bound() -> None:
    for n in (0, 1, 10, 1_000, 10**6, 10**8):
        p = okvs.okvs_params(n, bytes(16))
        assert p.starts == -(-8 * n // 5) + 1 and p.columns == p.starts + p.width - 1
        assert okvs.failure_bound_log2(n, p.starts, p.width) <= -okvs.STATISTICAL_SECURITY
        if n:  # and the width is the smallest that does
            assert okvs.failure_bound_log2(n, p.starts, p.width - 1) > -okvs.STATISTICAL_SECURITY
    assert [okvs.okvs_params(n, bytes(16)).width for n in (10**5, 10**6, 10**8)] == [62, 65, 72]
    with pytest.raises(ValueError, match="ln 2"):
        okvs.failure_bound_log2(100, 140, 40)


def test_empirical_failures_stay_under_the_bound() -> None:
    """At a band narrow enough to fail, the observed failure rate is below the stated bound.

    n = 200 keys, M = 321 starts (the shape's expansion) and widths from 8 bits (the bound says
    nothing; it fails often, so the test can fail) to 18 (the bound is about 1/50): 600
    encodings per width with fresh seeds, failures counted through :class:`OkvsEncodingError`.
    No width may fail more often than its bound allows (three standard deviations of slack).
    """
    n, starts, trials = 200, 321, 600
    keys = [f"91310000MA{i:08d}".encode() for i in range(n)]
    values = random_values(n)
    rates = {}
    for width in (8, 13, 15, 18):
        failures = 0
        for _ in range(trials):
            params = okvs.OkvsParams(n, starts, width, os.urandom(16))
            try:
                okvs.encode(keys, values, params, os.urandom(16 * params.columns))
            except okvs.OkvsEncodingError:
                failures += 1
        rates[width] = failures / trials
        bound = 2 ** okvs.failure_bound_log2(n, starts, width)
        assert rates[width] <= bound + 3 * math.sqrt(min(bound, 1) / trials), (width, rates)
    assert rates[8] > 0.1  # the detector works: a band of 8 bits fails often


def test_duplicate_keys_cannot_be_encoded() -> None:
    params = okvs.okvs_params(2, bytes(16))
    with pytest.raises(okvs.OkvsEncodingError, match="fresh seed"):
        okvs.encode([b"x", b"x"], random_values(2), params, bytes(16 * params.columns))


def test_sizes_are_checked() -> None:
    params = okvs.okvs_params(3, bytes(16))
    with pytest.raises(ValueError, match="keys"):
        okvs.encode([b"a"], random_values(1), params, bytes(16 * params.columns))
    with pytest.raises(ValueError, match="fill"):
        okvs.encode([b"a", b"b", b"c"], random_values(3), params, bytes(16))
    with pytest.raises(ValueError, match="shape"):
        okvs.decode(np.zeros((3, 2), dtype=np.uint64), [b"a"], params)
    with pytest.raises(ValueError, match="cells"):
        okvs.table_from_bytes(bytes(15), 1)
    with pytest.raises(ValueError, match="seed"):
        okvs.OkvsParams(1, 2, 40, bytes(3))
    with pytest.raises(ValueError, match="width"):
        okvs.OkvsParams(1, 2, okvs.MAX_WIDTH + 1, bytes(16))
