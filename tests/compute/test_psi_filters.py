"""Binary fuse filters: every member passes, non-members rarely, and the bytes are checked."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.compute.errors import InvalidMessageError
from bund.compute.psi_filters import (
    MAX_SHARD_KEYS,
    FuseFilter,
    ShardedFilter,
    parse_shards,
    shard_bits,
    shard_of,
)


def random_keys(count: int) -> np.ndarray:
    return np.frombuffer(os.urandom(8 * count), dtype=np.uint64).copy()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), max_size=300))
def test_every_key_passes_whatever_the_set(values: list[int]) -> None:
    keys = np.array(values, dtype=np.uint64)
    f = FuseFilter.build(keys)
    assert f.contains(keys).all()
    assert f.keys == len(set(values))
    assert FuseFilter.from_bytes(f.to_bytes()) == f


@pytest.mark.parametrize("count", [10_000, 200_000])
def test_non_members_pass_at_about_two_to_the_minus_32(count: int) -> None:
    keys = random_keys(count)
    f = FuseFilter.build(keys)
    assert f.contains(keys).all()
    # 2^-32 per test: 10^6 tests expect 0.0002 false passes; 3 would be a broken filter.
    assert int(f.contains(random_keys(1_000_000)).sum()) < 3
    # About 4.5 bytes per key once the set is large (the size factor grows below 10^6 keys).
    assert f.size_bytes / count < (5.0 if count >= 100_000 else 6.0)


def test_the_same_keys_give_the_same_bytes_whatever_their_order() -> None:
    keys = random_keys(5_000)
    shuffled = keys[np.argsort(random_keys(5_000))]
    assert FuseFilter.build(keys).to_bytes() == FuseFilter.build(shuffled).to_bytes()
    assert FuseFilter.build(keys, first_seed=7).seed == 7


def test_malformed_filters_are_refused() -> None:
    data = FuseFilter.build(random_keys(100)).to_bytes()
    with pytest.raises(InvalidMessageError, match="truncated"):
        FuseFilter.from_bytes(data[:20])
    with pytest.raises(InvalidMessageError, match="malformed"):
        FuseFilter.from_bytes(data[:-4])
    with pytest.raises(InvalidMessageError, match="BFUS"):
        FuseFilter.from_bytes(b"XXXX" + data[4:])


def test_shards_split_by_top_bits_and_parse_back() -> None:
    assert shard_bits(MAX_SHARD_KEYS) == 0 and shard_bits(MAX_SHARD_KEYS + 1) == 1
    keys = random_keys(20_000)
    which = shard_of(keys, 2)
    assert set(which.tolist()) == {0, 1, 2, 3}
    assert (which == (keys >> np.uint64(62)).astype(np.intp)).all()
    shards = tuple(FuseFilter.build(keys[which == i]) for i in range(4))
    sharded = ShardedFilter(2, shards)
    assert sharded.keys == 20_000 and sharded.contains(keys).all()
    stream = b"".join(s.to_bytes() for s in shards)
    assert parse_shards(stream, 2) == sharded
    with pytest.raises(InvalidMessageError, match="truncated"):
        parse_shards(stream[:-1], 2)
    with pytest.raises(InvalidMessageError, match="after its last shard"):
        parse_shards(stream + b"\x00", 2)
    with pytest.raises(ValueError, match="2\\^bits shards"):
        ShardedFilter(1, shards)
