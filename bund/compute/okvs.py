r"""An oblivious key-value store (OKVS): a random band matrix over GF(2), 128-bit values.

An OKVS encodes ``n`` key-value pairs into a table ``D`` of ``m`` cells such that a public
``decode(D, k)`` returns the value of every encoded key, and, when the values are uniformly random,
``D`` is uniformly random whatever the keys were: it says nothing about which keys it holds. The
multi-party PSI of :mod:`bund.compute.mpsi` sends one per member (an OPPRF hint); this is the
random-band construction of Bienstock, Patranabis, Yeo and Rindal ("Near-optimal oblivious
key-value stores for efficient PSI, PSU and volume-hiding multi-maps", USENIX Security 2023) and
of Rindal and Raghuraman ("Blazing fast PSI from improved OKVS and subfield VOLE", CCS 2022),
without their dense columns.

Each key ``k`` hashes (BLAKE2b keyed with a public seed) to a start ``s(k)`` in ``[0, M)`` and a
band ``b(k)`` of ``w`` uniformly random bits; its row of the matrix ``A`` has ``b(k)`` at columns
``s(k) .. s(k) + w - 1`` of ``m = M + w - 1`` columns. ``decode(D, k) = XOR of D[s(k) + t] over
the set bits t of b(k)``, and ``encode`` solves ``A·D = V`` over GF(2) (each cell a 128-bit
vector): rows sorted by start, Gaussian elimination in which a row only ever meets rows of pivot
columns inside its own band (so the band keeps its width), then back-substitution from the last
column down. Every column that is not a pivot keeps a value from ``fill``, the caller's uniformly
random bytes, so ``D`` is a uniformly random solution: uniformly random over all tables whenever
the values are, which is the obliviousness the PSI needs.

Failure probability (why the width). ``A`` fails to have full row rank only if some non-empty set
``T`` of rows sums to zero; if it does, a subset of ``T`` whose bands form one unbroken run of
columns does too. For such a run from its lowest start ``a`` to its highest ``a + j``, the sum
over each of its ``w + j`` columns is a sum of independent uniform bits (each bit of each band
lands in exactly one column), so ``P(sum = 0) = 2^-(w+j)`` exactly. With ``n`` starts uniform on
``M`` values, the expected number of row sets whose lowest start is ``a`` and whose starts lie in
``[a, a + j]`` is ``f(j+1) - f(j)`` with ``f(x) = (1 + x/M)^n`` (each row either is in the set, at
one of those positions, or is not), and ``f(j+1) - f(j) <= f'(j+1) <= (n/M)·e^{r(j+1)}`` for
``r = n/M``. Summing over the ``M`` values of ``a`` and all ``j``::

    P(fail) <= M · Σ_j 2^-(w+j) · (n/M) · e^{r(j+1)} = n · e^r · 2^-w / (1 - e^r/2)

for ``r < ln 2``. We take ``M = ceil(8n/5) + 1`` (``r < 5/8``, so ``e^r < 1.87``), and the
smallest ``w`` that makes this at most ``2^-40``: ``w = ceil(40 + log2 n + 4.9)``, 62 bits at
``n = 10^5``, 65 at ``10^6``, 72 at ``10^8``. The bound is loose (the literature runs such bands
at ``M ≈ 1.05 n`` after measuring); ours holds by the argument above alone, and costs 1.6 cells
of 16 bytes per key. The starts are a 64-bit hash reduced mod ``M`` (bias below ``M/2^64``).

The keys must be distinct (two equal keys give two equal rows); on a failure :func:`encode`
raises :class:`OkvsEncodingError` and the caller encodes again with a fresh seed. A retry is
visible only as a different seed, which leaks at most the failure probability.

Costs on this machine: encoding is about 1.7 row operations per key on Python integers, then a
back-substitution over each pivot row's band; decoding XORs 4-column lookup tables in numpy.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bund.compute.errors import BundError

#: Bytes of one value and of one cell: 128 bits, two little-endian 64-bit words.
VALUE_BYTES = 16
#: Bytes of an encoding's public seed.
SEED_BYTES = 16
#: The statistical security of the encoding: it fails with probability at most 2^-40.
STATISTICAL_SECURITY = 40
#: The widest band the decoder handles (a band shifted by up to 3 bits fits 128).
MAX_WIDTH = 124
#: Most keys one encoding may hold (the band width stays far below ``MAX_WIDTH``).
MAX_KEYS = 1 << 40

_PERSON = b"bund-okvs-v1"
_MASK64 = (1 << 64) - 1
#: Start positions per chunk of the decoder's lookup tables (bounded memory: 16 MiB of tables).
_DECODE_CHUNK = 1 << 18

Values = npt.NDArray[np.uint64]


class OkvsEncodingError(BundError):
    """The rows of an encoding are linearly dependent: encode again with a fresh seed."""


@dataclass(frozen=True)
class OkvsParams:
    """The public shape of one encoding.

    Attributes:
        keys: How many keys it encodes (``n``).
        starts: How many start positions a band may take (``M``).
        width: Bits in each key's band (``w``).
        seed: The hash seed of this encoding (16 bytes, fresh per encoding).
    """

    keys: int
    starts: int
    width: int
    seed: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.keys <= MAX_KEYS:
            raise ValueError(f"an OKVS holds 0 to {MAX_KEYS} keys")
        if not 1 <= self.width <= MAX_WIDTH:
            raise ValueError(f"the band width must be 1 to {MAX_WIDTH} bits")
        if not 1 <= self.starts <= 4 * MAX_KEYS:
            raise ValueError("the number of start positions is out of range")
        if len(self.seed) != SEED_BYTES:
            raise ValueError(f"an OKVS seed is {SEED_BYTES} bytes")

    @property
    def columns(self) -> int:
        """Cells in the table: ``starts + width - 1``."""
        return self.starts + self.width - 1


def okvs_params(keys: int, seed: bytes) -> OkvsParams:
    """The shape that encodes ``keys`` keys with failure probability at most 2^-40.

    ``M = ceil(8·keys/5) + 1`` start positions and the smallest width that
    :func:`failure_bound_log2` puts at or below ``-STATISTICAL_SECURITY``.

    >>> p = okvs_params(10**6, bytes(16))
    >>> (p.starts, p.width, p.columns)
    (1600001, 65, 1600065)
    """
    if not 0 <= keys <= MAX_KEYS:
        raise ValueError(f"an OKVS holds 0 to {MAX_KEYS} keys")
    starts = -(-8 * keys // 5) + 1
    width = 1
    while failure_bound_log2(keys, starts, width) > -STATISTICAL_SECURITY:
        width += 1
    return OkvsParams(keys, starts, width, seed)


def failure_bound_log2(keys: int, starts: int, width: int) -> float:
    """``log2`` of the bound ``n·e^r·2^-w / (1 - e^r/2)`` on the probability that encoding fails.

    Args:
        keys: ``n``, the keys encoded.
        starts: ``M``, the start positions (``r = n/M`` must be below ``ln 2``).
        width: ``w``, the band width.

    Returns:
        The bound's base-2 logarithm (``-inf`` for no keys: nothing can fail).

    Raises:
        ValueError: If ``n/M >= ln 2``, where the bound says nothing.
    """
    if keys == 0:
        return -math.inf
    r = keys / starts
    if r >= math.log(2):
        raise ValueError("the failure bound needs fewer keys than ln 2 times the start positions")
    return math.log2(keys) + r * math.log2(math.e) - width - math.log2(1 - math.exp(r) / 2)


def hash_keys(
    keys: Sequence[bytes], params: OkvsParams
) -> tuple[npt.NDArray[np.int64], Values, Values]:
    """Each key's start and band: ``(starts, band low 64 bits, band high 64 bits)``.

    BLAKE2b-192 keyed with the encoding's seed: 64 bits for the start (reduced mod ``M``), 128
    for the band (cut to ``width`` bits).
    """
    blake, seed = hashlib.blake2b, params.seed
    digest = b"".join(blake(k, digest_size=24, key=seed, person=_PERSON).digest() for k in keys)
    words = np.frombuffer(digest, dtype="<u8").reshape(-1, 3)
    starts = (words[:, 0] % np.uint64(params.starts)).astype(np.int64)
    low_bits, high_bits = min(params.width, 64), max(params.width - 64, 0)
    low = words[:, 1] & np.uint64((1 << low_bits) - 1)
    high = words[:, 2] & np.uint64((1 << high_bits) - 1)
    return starts, low, high


def encode(keys: Sequence[bytes], values: Values, params: OkvsParams, fill: bytes) -> Values:
    """Solve for a table that decodes each key to its value.

    Args:
        keys: Distinct keys, ``params.keys`` of them.
        values: One 128-bit value per key, shape ``(n, 2)`` (low word, high word).
        params: The shape (:func:`okvs_params`), with a fresh seed.
        fill: ``16 · params.columns`` uniformly random bytes: the value of every cell that is
            not a pivot. Random fill is what makes the table oblivious.

    Returns:
        The table, shape ``(params.columns, 2)``, ``uint64``.

    Raises:
        OkvsEncodingError: The keys' rows are dependent (probability at most 2^-40 for distinct
            keys): encode again with a new seed.
        ValueError: If the sizes disagree.
    """
    n, columns = len(keys), params.columns
    if n != params.keys or values.shape != (n, 2):
        raise ValueError(f"expected {params.keys} keys and values of shape ({params.keys}, 2)")
    if len(fill) != VALUE_BYTES * columns:
        raise ValueError(f"the fill must be {VALUE_BYTES * columns} bytes")
    starts, low, high = hash_keys(keys, params)
    order = np.argsort(starts, kind="stable")
    pivot_band: list[int] = [0] * columns
    pivot_value: list[int] = [0] * columns
    is_pivot = bytearray(columns)
    rows = zip(
        starts[order].tolist(),
        low[order].tolist(),
        high[order].tolist(),
        values[order, 0].tolist(),
        values[order, 1].tolist(),
        strict=True,
    )
    for start, band_low, band_high, value_low, value_high in rows:
        band, value = band_low | band_high << 64, value_low | value_high << 64
        while band:
            shift = (band & -band).bit_length() - 1
            column = start + shift
            if is_pivot[column]:
                band ^= pivot_band[column] << shift
                value ^= pivot_value[column]
                continue
            is_pivot[column] = 1
            pivot_band[column], pivot_value[column] = band >> shift, value
            break
        else:
            raise OkvsEncodingError(
                "the keys' rows are linearly dependent under this seed; encode again with a "
                "fresh seed"
            )
    cells = np.frombuffer(fill, dtype="<u8").reshape(columns, 2)
    table = [
        lo | hi << 64 for lo, hi in zip(cells[:, 0].tolist(), cells[:, 1].tolist(), strict=True)
    ]
    for column in reversed(np.flatnonzero(np.frombuffer(is_pivot, dtype=np.uint8)).tolist()):
        acc, rest, base = pivot_value[column], pivot_band[column] >> 1, column + 1
        while rest:
            low_bit = rest & -rest
            acc ^= table[base + low_bit.bit_length() - 1]
            rest ^= low_bit
        table[column] = acc
    out = np.empty((columns, 2), dtype=np.uint64)
    out[:, 0] = [cell & _MASK64 for cell in table]
    out[:, 1] = [cell >> 64 for cell in table]
    return out


def decode(table: Values, keys: Sequence[bytes], params: OkvsParams) -> Values:
    """Each key's value in ``table``: the XOR of the cells its band selects.

    A key that was not encoded decodes to a value that depends on the table and the key only;
    if the table is uniformly random, so is that value.

    Args:
        table: A table of shape ``(params.columns, 2)``.
        keys: The keys to look up (any; encoded or not).
        params: The table's shape and seed.

    Returns:
        One value per key, shape ``(len(keys), 2)``, ``uint64``.

    Raises:
        ValueError: If the table's shape does not match ``params``.
    """
    if table.shape != (params.columns, 2) or table.dtype != np.uint64:
        raise ValueError(f"expected a uint64 table of shape ({params.columns}, 2)")
    out = np.zeros((len(keys), 2), dtype=np.uint64)
    if not keys:
        return out
    starts, low, high = hash_keys(keys, params)
    order = np.argsort(starts, kind="stable")
    sorted_starts = starts[order]
    nibbles = -(-(params.width + 3) // 4)
    for first in range(0, params.starts, _DECODE_CHUNK):
        lo_key, hi_key = np.searchsorted(sorted_starts, [first, first + _DECODE_CHUNK])
        if lo_key == hi_key:
            continue
        picked = order[lo_key:hi_key]
        span = min(_DECODE_CHUNK, params.starts - first) + params.width + 8
        tables = _nibble_tables(table, first, span)
        local = sorted_starts[lo_key:hi_key] - first
        shift = (local & 3).astype(np.uint64)
        band_low, band_high = low[picked], high[picked]
        carry = np.where(shift > 0, band_low >> ((np.uint64(64) - shift) & np.uint64(63)), 0)
        shifted = (band_low << shift, (band_high << shift) | carry.astype(np.uint64))
        group = (local >> 2) * 16
        acc = np.zeros((len(picked), 2), dtype=np.uint64)
        for q in range(nibbles):
            word = shifted[q // 16]
            nibble = ((word >> np.uint64(4 * (q % 16))) & np.uint64(15)).astype(np.int64)
            acc ^= np.take(tables, group + 16 * q + nibble, axis=0)
        out[picked] = acc
    return out


def _nibble_tables(table: Values, first: int, count: int) -> Values:
    """For each group of 4 cells from ``first``, the XOR of each of its 16 subsets.

    Row ``16·g + mask`` holds the XOR of the cells ``first + 4g + i`` for the set bits ``i`` of
    ``mask``; cells past the table's end count as zero.
    """
    groups = -(-count // 4)
    cells = np.zeros((4 * groups, 2), dtype=np.uint64)
    part = table[first : first + 4 * groups]
    cells[: len(part)] = part
    by_group = cells.reshape(groups, 4, 2)
    out = np.zeros((groups, 16, 2), dtype=np.uint64)
    for mask in range(1, 16):
        low_bit = (mask & -mask).bit_length() - 1
        out[:, mask] = out[:, mask & (mask - 1)] ^ by_group[:, low_bit]
    return out.reshape(groups * 16, 2)


def table_to_bytes(table: Values) -> bytes:
    """A table on the wire: each cell as 16 bytes, low word then high word, little-endian."""
    return np.ascontiguousarray(table, dtype="<u8").tobytes()


def table_from_bytes(data: bytes, columns: int) -> Values:
    """Read a table of ``columns`` cells written by :func:`table_to_bytes`.

    Raises:
        ValueError: If ``data`` is not ``16 · columns`` bytes.
    """
    if len(data) != VALUE_BYTES * columns:
        raise ValueError(f"a table of {columns} cells is {VALUE_BYTES * columns} bytes")
    return np.frombuffer(data, dtype="<u8").reshape(columns, 2).astype(np.uint64)
