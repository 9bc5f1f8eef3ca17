"""Pairwise-mask secure aggregation: masks cancel, single vectors hide, bad input is refused."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.compute.dp.pairwise_masks import (
    MAX_CELL,
    create_masking_key,
    decode_public_key,
    decode_vector,
    encode_public_key,
    encode_vector,
    mask_vector,
    pair_mask,
    unmask_sum,
)
from bund.compute.errors import InvalidKeyError, InvalidMessageError

cells = st.integers(min_value=-(MAX_CELL - 1) // 64, max_value=(MAX_CELL - 1) // 64)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 5).flatmap(lambda n: st.lists(st.lists(cells, min_size=3, max_size=3),
                                                     min_size=n, max_size=n)))  # fmt: skip
def test_masks_cancel_in_the_sum(vectors: list[list[int]]) -> None:
    names = [f"h{i}" for i in range(len(vectors))]
    keys = {n: create_masking_key() for n in names}
    public = {n: k.public_bytes() for n, k in keys.items()}
    masked = [
        mask_vector(v, keys[n], n, public, b"ctx") for n, v in zip(names, vectors, strict=True)
    ]
    assert unmask_sum(masked) == [sum(col) for col in zip(*vectors, strict=True)]


def test_a_masked_vector_hides_its_values() -> None:
    a, b, c = create_masking_key(), create_masking_key(), create_masking_key()
    public = {"a": a.public_bytes(), "b": b.public_bytes(), "c": c.public_bytes()}
    values = [7, 0, 123, -4]
    masked = mask_vector(values, a, "a", public, b"job-1")
    for v in values:
        assert v not in masked.view(np.int64).tolist()
    # Another job's masks are unrelated, so two masked vectors of the same values differ.
    again = mask_vector(values, a, "a", public, b"job-2")
    assert not np.array_equal(masked, again)
    # Without every other contributor's vector the sum stays masked.
    partial = unmask_sum([masked, mask_vector([0] * 4, b, "b", public, b"job-1")])
    assert partial != values


def test_pair_mask_is_shared_by_both_ends() -> None:
    a, b = create_masking_key(), create_masking_key()
    ab = pair_mask(a, "a", "b", b.public_bytes(), b"ctx", 16)
    ba = pair_mask(b, "b", "a", a.public_bytes(), b"ctx", 16)
    assert np.array_equal(ab, ba) and ab.dtype == np.uint64 and len(set(ab.tolist())) == 16


@pytest.mark.parametrize("bad", [bytes(32), (1).to_bytes(32, "little"), bytes(31)])
def test_low_order_or_malformed_peer_key_is_refused(bad: bytes) -> None:
    with pytest.raises(InvalidKeyError, match="low order"):
        pair_mask(create_masking_key(), "a", "b", bad, b"ctx", 4)


def test_own_key_echoed_by_a_peer_is_refused() -> None:
    a = create_masking_key()
    with pytest.raises(InvalidKeyError, match="own masking key"):
        mask_vector([1], a, "a", {"a": a.public_bytes(), "b": a.public_bytes()}, b"ctx")


def test_cells_must_fit() -> None:
    a, b = create_masking_key(), create_masking_key()
    public = {"a": a.public_bytes(), "b": b.public_bytes()}
    with pytest.raises(ValueError, match="2\\^56"):
        mask_vector([MAX_CELL], a, "a", public, b"ctx")


def test_key_never_pickles() -> None:
    with pytest.raises(TypeError, match="never leaves"):
        pickle.dumps(create_masking_key())
    assert "secret" in repr(create_masking_key())


def test_wire_round_trips_and_layouts() -> None:
    public = create_masking_key().public_bytes()
    message = encode_public_key(public)
    assert len(message) == 40 and message[:5] == b"BSAK\x01"
    assert decode_public_key(message) == public
    vector = np.array([1, 2**64 - 1, 5], dtype=np.uint64)
    payload = encode_vector(vector)
    assert payload[:12] == b"BSAV\x01\x00\x00\x00\x00\x00\x00\x03" and len(payload) == 36
    assert np.array_equal(decode_vector(payload, 3), vector)


@pytest.mark.parametrize(
    ("payload", "length", "message"),
    [
        (b"BSAV", 1, "shorter"),
        (b"XSAV\x01\x00\x00\x00\x00\x00\x00\x01" + bytes(8), 1, "magic"),
        (b"BSAV\x02\x00\x00\x00\x00\x00\x00\x01" + bytes(8), 1, "version"),
        (b"BSAV\x01\x00\x00\x00\x00\x00\x00\x02" + bytes(8), 2, "announces 2 cells in 20"),
        (b"BSAV\x01\x00\x00\x00\x00\x00\x00\x01" + bytes(8), 2, "expected 2 cells"),
    ],
)
def test_bad_vectors_are_refused(payload: bytes, length: int, message: str) -> None:
    with pytest.raises(InvalidMessageError, match=message):
        decode_vector(payload, length)


@pytest.mark.parametrize(
    "payload", [bytes(39), b"BSAK\x02\x00\x00\x00" + bytes(32), b"BSAK\x01\x00\x01\x00" + bytes(32)]
)
def test_bad_key_messages_are_refused(payload: bytes) -> None:
    with pytest.raises(InvalidMessageError):
        decode_public_key(payload)
