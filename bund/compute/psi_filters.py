r"""Binary fuse filters of 64-bit keys, in numpy: the compressed set an unbalanced PSI ships.

A binary fuse filter (Graf and Lemire, "Binary Fuse Filters: Fast and Smaller Than Xor Filters",
ACM JEA 2022) stores one ``w``-bit fingerprint per slot in an array of about ``1.125·n`` slots,
so that for each of its ``n`` keys the XOR of three slots equals the key's fingerprint. A key
that is not in the set passes with probability ``2^-w``. Here ``w = 32``: 4.5 bytes per key
for large sets (the size factor grows below 10^6 keys), and a false match with probability
``2^-32 ≈ 2.3·10^-10`` per query.

The three slots of a key lie in three consecutive segments of ``L`` slots (``L`` a power of two
that grows with ``n``), which makes the 3-hypergraph peelable at this size factor with high
probability. Construction is the usual peeling, run in rounds so that numpy does the work: each
round takes every slot that holds exactly one unpeeled key, records that key and removes it
from its three slots; assignment runs the rounds backwards (two keys peeled in one round never
share a slot, so each round is one vectorised step). A failure (a 2-core left) is retried with
the next seed; seeds are deterministic, so building the same keys always gives the same bytes.

Large sets are cut into shards by the keys' top bits, each its own filter
(:class:`ShardedFilter`), so that building one never holds more than ``MAX_SHARD_KEYS`` keys
(about 50 bytes of working memory each) and a build can resume shard by shard.

Keys must already be uniform (they are PRF outputs); the seed is mixed in with a bijective
64-bit finaliser, so equal keys collapse to one entry and distinct keys stay distinct.

Wire layout of a shard (little-endian): magic ``BFUS`` (4), version 1 (1), 3 zero bytes,
``seed`` (8), ``segment_length`` (4), ``segment_count`` (4), ``keys`` (8), then
``(segment_count + 2) · segment_length`` fingerprints of 4 bytes.

>>> import numpy as np
>>> keys = np.arange(1, 2001, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
>>> f = FuseFilter.build(keys)
>>> bool(f.contains(keys).all()), int(f.contains(keys + np.uint64(1)).sum()) <= 1
(True, True)
>>> FuseFilter.from_bytes(f.to_bytes()) == f
True
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from bund.compute.errors import InvalidMessageError
from bund.compute.layout import Header

U64 = npt.NDArray[np.uint64]
U32 = npt.NDArray[np.uint32]

#: Bits of each fingerprint: a non-member passes with probability 2^-32.
FINGERPRINT_BITS = 32
#: Most keys in one shard: bounds the memory of a build (about 50 bytes per key).
MAX_SHARD_KEYS = 1 << 22
#: Seeds tried before a build gives up (each fails with probability well below 1%).
MAX_SEEDS = 64

_SHARD = Header(b"BFUS", 1, reserved=3)
_SHARD_FIELDS = struct.Struct("<QIIQ")  # seed, segment length, segment count, keys
_MASK32 = np.uint64(0xFFFFFFFF)


def _mix(keys: U64, seed: int) -> U64:
    """A bijective 64-bit finaliser (SplitMix64's) of ``keys ⊕ seed``."""
    z = keys ^ np.uint64(seed)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _mulhi(h: U64, factor: int) -> U64:
    """``(h · factor) >> 64`` for a 32-bit ``factor``, without 128-bit integers."""
    f = np.uint64(factor)
    hi, lo = h >> np.uint64(32), h & _MASK32
    return (hi * f + ((lo * f) >> np.uint64(32))) >> np.uint64(32)


def _fingerprint(h: U64) -> U32:
    return ((h ^ (h >> np.uint64(32))) & _MASK32).astype(np.uint32)


def _first_of_runs(values: npt.NDArray[np.generic]) -> npt.NDArray[np.bool_]:
    """Where each run of equal values in a sorted array starts (a cheap ``np.unique``)."""
    first = np.ones(len(values), dtype=bool)
    first[1:] = values[1:] != values[:-1]
    return first


def _geometry(size: int) -> tuple[int, int]:
    """Segment length and segment count for ``size`` keys (the reference implementation's)."""
    if size <= 1:
        return 4, 1
    length = min(1 << int(math.floor(math.log(size) / math.log(3.33) + 2.25)), 1 << 18)
    factor = max(1.125, 0.875 + 0.25 * math.log(1_000_000) / math.log(size))
    capacity = round(size * factor)
    count = max(1, -(-capacity // length) - 2)
    return length, count


@dataclass(frozen=True, eq=False)
class FuseFilter:
    """One binary fuse filter with 32-bit fingerprints; build it with :meth:`build`."""

    seed: int
    segment_length: int
    segment_count: int
    keys: int
    fingerprints: U32 = field(repr=False)

    def __post_init__(self) -> None:
        length = self.segment_length
        if length < 4 or length & (length - 1) or length > 1 << 18:
            raise ValueError("segment_length is a power of two in [4, 2^18]")
        if not 1 <= self.segment_count < 1 << 31 or not 0 <= self.seed < 1 << 64:
            raise ValueError("segment_count or seed out of range")
        if self.fingerprints.shape != ((self.segment_count + 2) * length,):
            raise ValueError("the fingerprint array does not match the geometry")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FuseFilter):
            return NotImplemented
        return (self.seed, self.segment_length, self.segment_count, self.keys) == (
            other.seed,
            other.segment_length,
            other.segment_count,
            other.keys,
        ) and bool(np.array_equal(self.fingerprints, other.fingerprints))

    __hash__ = None  # type: ignore[assignment]

    @property
    def size_bytes(self) -> int:
        """Bytes of the serialised filter."""
        return _SHARD.size + _SHARD_FIELDS.size + 4 * len(self.fingerprints)

    def _slots(self, h: U64) -> tuple[U64, U64, U64]:
        length = self.segment_length
        mask = np.uint64(length - 1)
        h0 = _mulhi(h, self.segment_count * length)
        h1 = (h0 + np.uint64(length)) ^ ((h >> np.uint64(18)) & mask)
        h2 = (h0 + np.uint64(2 * length)) ^ (h & mask)
        return h0, h1, h2

    def contains(self, keys: U64) -> npt.NDArray[np.bool_]:
        """Whether each key may be in the set (members always; others with p = 2^-32)."""
        h = _mix(np.asarray(keys, dtype=np.uint64), self.seed)
        h0, h1, h2 = self._slots(h)
        f = self.fingerprints
        return np.asarray(_fingerprint(h) == (f[h0] ^ f[h1] ^ f[h2]))

    @classmethod
    def build(cls, keys: U64, first_seed: int = 0) -> FuseFilter:
        """The filter of ``keys`` (repeats allowed: a key is stored once).

        Raises:
            ValueError: If no seed among ``MAX_SEEDS`` gives a peelable graph (does not happen
                for distinct uniform keys; a sign of many repeated mixed keys).
        """
        keys = np.sort(np.asarray(keys, dtype=np.uint64))
        keys = keys[_first_of_runs(keys)]
        length, count = _geometry(len(keys))
        for attempt in range(MAX_SEEDS):
            seed = (first_seed + attempt * 0x9E3779B97F4A7C15) % (1 << 64)
            empty = np.zeros((count + 2) * length, dtype=np.uint32)
            candidate = cls(seed, length, count, len(keys), empty)
            fingerprints = candidate._construct(keys)
            if fingerprints is not None:
                return cls(seed, length, count, len(keys), fingerprints)
        raise ValueError(f"no peelable binary fuse graph for {len(keys)} keys in {MAX_SEEDS} seeds")

    def _construct(self, keys: U64) -> U32 | None:
        """Peel the key hypergraph in rounds and assign fingerprints; None if it does not peel."""
        slots = len(self.fingerprints)
        h = _mix(keys, self.seed)
        h0, h1, h2 = self._slots(h)
        if not _first_of_runs(np.sort(h)).all():
            return None  # a 64-bit collision after mixing: try another seed
        positions = np.concatenate((h0, h1, h2)).astype(np.intp)
        count = np.bincount(positions, minlength=slots).astype(np.int32)
        xor = np.zeros(slots, dtype=np.uint64)
        np.bitwise_xor.at(xor, positions, np.concatenate((h, h, h)))
        del positions, h0, h1, h2
        rounds: list[tuple[U64, npt.NDArray[np.intp]]] = []
        peeled = 0
        frontier = np.flatnonzero(count == 1)
        while frontier.size:
            frontier = frontier[count[frontier] == 1]
            if not frontier.size:
                break
            found = xor[frontier]
            order = np.argsort(found, kind="stable")
            found, where = found[order], frontier[order]
            first = _first_of_runs(found)
            found, where = found[first], where[first]
            rounds.append((found, where))
            peeled += len(found)
            touched = np.concatenate(self._slots(found)).astype(np.intp)
            np.subtract.at(count, touched, 1)
            np.bitwise_xor.at(xor, touched, np.concatenate((found, found, found)))
            frontier = np.sort(touched[count[touched] == 1])
            frontier = frontier[_first_of_runs(frontier)]
        if peeled != len(keys):
            return None
        fingerprints = np.zeros(slots, dtype=np.uint32)
        for found, where in reversed(rounds):
            a, b, c = self._slots(found)
            fingerprints[where] = (
                _fingerprint(found) ^ fingerprints[a] ^ fingerprints[b] ^ fingerprints[c]
            )
        return fingerprints

    def to_bytes(self) -> bytes:
        """The shard's wire layout (module docstring)."""
        fields = _SHARD_FIELDS.pack(self.seed, self.segment_length, self.segment_count, self.keys)
        return _SHARD.pack(fields, self.fingerprints.astype("<u4").tobytes())

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> FuseFilter:
        """Decode and check one shard.

        Raises:
            InvalidMessageError: If the layout, a field or the length is wrong.
        """
        body = _SHARD.split(data, "a binary fuse filter")
        if len(body) < _SHARD_FIELDS.size:
            raise InvalidMessageError("a binary fuse filter is truncated")
        seed, length, count, keys = _SHARD_FIELDS.unpack_from(body)
        array = np.frombuffer(body, dtype="<u4", offset=_SHARD_FIELDS.size)
        try:
            return cls(seed, length, count, keys, array.astype(np.uint32))
        except ValueError as exc:
            raise InvalidMessageError(f"a binary fuse filter is malformed: {exc}") from None


def shard_bits(keys: int) -> int:
    """How many top key bits pick a shard so that no shard expects over ``MAX_SHARD_KEYS``.

    >>> shard_bits(1000), shard_bits(10**7), shard_bits(10**9)
    (0, 2, 8)
    """
    bits = 0
    while keys > MAX_SHARD_KEYS << bits:
        bits += 1
    return bits


def shard_of(keys: U64, bits: int) -> npt.NDArray[np.intp]:
    """The shard of each key: its top ``bits`` bits (0 when ``bits`` is 0)."""
    if bits == 0:
        return np.zeros(len(keys), dtype=np.intp)
    return (np.asarray(keys, dtype=np.uint64) >> np.uint64(64 - bits)).astype(np.intp)


@dataclass(frozen=True)
class ShardedFilter:
    """A set of 64-bit keys as ``2^bits`` binary fuse filters, chosen by each key's top bits."""

    bits: int
    shards: tuple[FuseFilter, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.bits <= 16 or len(self.shards) != 1 << self.bits:
            raise ValueError("a sharded filter has 2^bits shards, bits in [0, 16]")

    @property
    def keys(self) -> int:
        """How many distinct keys the filter holds."""
        return sum(s.keys for s in self.shards)

    @property
    def size_bytes(self) -> int:
        """Bytes of all shards serialised."""
        return sum(s.size_bytes for s in self.shards)

    def contains(self, keys: U64) -> npt.NDArray[np.bool_]:
        """Whether each key may be in the set (see :meth:`FuseFilter.contains`)."""
        keys = np.asarray(keys, dtype=np.uint64)
        out = np.zeros(len(keys), dtype=bool)
        which = shard_of(keys, self.bits)
        for index in np.unique(which).tolist():
            mask = which == index
            out[mask] = self.shards[index].contains(keys[mask])
        return out


def parse_shards(data: bytes | memoryview, bits: int) -> ShardedFilter:
    """The sharded filter of ``2^bits`` shard layouts concatenated (as a holder sends them).

    Raises:
        InvalidMessageError: If a shard is malformed, or bytes are missing or left over.
    """
    if not 0 <= bits <= 16:
        raise InvalidMessageError("a sharded filter has 0 to 16 shard bits")
    view = memoryview(data)
    head = _SHARD.size + _SHARD_FIELDS.size
    shards, at = [], 0
    for _ in range(1 << bits):
        if len(view) - at < head:
            raise InvalidMessageError("a sharded filter is truncated")
        _, length, count, _ = _SHARD_FIELDS.unpack_from(view, at + _SHARD.size)
        if length > 1 << 18 or count >= 1 << 31:
            raise InvalidMessageError("a binary fuse filter is malformed: geometry out of range")
        size = head + 4 * (count + 2) * length
        if len(view) - at < size:
            raise InvalidMessageError("a sharded filter is truncated")
        shards.append(FuseFilter.from_bytes(view[at : at + size]))
        at += size
    if at != len(view):
        raise InvalidMessageError("a sharded filter has bytes after its last shard")
    return ShardedFilter(bits, tuple(shards))
