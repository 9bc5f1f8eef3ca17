"""Buckets of fixed-size records, in memory or in files: set operations in bounded memory.

PSI at 10^8 ids cannot hold its sets in memory. It partitions each set of blinded values by
their first bits (``bund.compute.psi.bucket_of``) into buckets that it appends to chunk by
chunk, then works bucket by bucket, so a party holds one bucket (and one chunk) at a time.
:class:`Buckets` is that partition: one append-only file of packed numpy records per bucket in
a role's scratch directory (``JobContext.scratch_dir``), or, for small sets, arrays in memory.
Records are raw numpy bytes (never pickle). A resumed role truncates the files to the sizes its
resume state recorded after their last :meth:`Buckets.sync`, dropping any half-written append.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt

from bund.parties.durable import replace_file, sync_directory

#: The most buckets one partition may have (file handles are opened one at a time).
MAX_BUCKETS = 1 << 16

T = TypeVar("T")
R = TypeVar("R")


class Buckets:
    """A partition of records of one numpy ``dtype`` into ``count`` buckets.

    Args:
        dtype: The record type (for PSI, 32-byte points, optionally with their row).
        count: How many buckets, at most ``MAX_BUCKETS``.
        directory: Where the bucket files live; ``None`` keeps the buckets in memory.
        name: The files' name prefix, unique within ``directory``.
    """

    def __init__(self, dtype: np.dtype[np.void], count: int, directory: Path | None, name: str):
        if not 1 <= count <= MAX_BUCKETS:
            raise ValueError(f"a partition has 1 to {MAX_BUCKETS} buckets")
        self.dtype = np.dtype(dtype)
        self.count = count
        self._dir = directory
        self._name = name
        self._memory: list[list[npt.NDArray[np.void]]] = [[] for _ in range(count)]
        self._dirty: set[int] = set()

    @property
    def on_disk(self) -> bool:
        """Whether the buckets are files (else arrays in memory)."""
        return self._dir is not None

    def _path(self, index: int) -> Path:
        assert self._dir is not None
        return self._dir / f"{self._name}.{index:05d}"

    def append(self, bucket: npt.NDArray[np.intp], records: npt.NDArray[np.void]) -> None:
        """Append each record to its bucket (``bucket[i]`` for ``records[i]``), keeping order."""
        if len(bucket) != len(records):
            raise ValueError("one bucket per record")
        order = np.argsort(bucket, kind="stable")
        grouped, keys = records[order], bucket[order]
        bounds = np.searchsorted(keys, np.arange(self.count + 1))
        for index in np.flatnonzero(np.diff(bounds)).tolist():
            part = grouped[bounds[index] : bounds[index + 1]]
            if self._dir is None:
                self._memory[index].append(part.copy())
                continue
            with self._path(index).open("ab") as f:
                f.write(part.tobytes())
            self._dirty.add(index)

    def read(self, index: int) -> npt.NDArray[np.void]:
        """Every record of one bucket, in the order appended (or as last written)."""
        if self._dir is None:
            parts = self._memory[index]
            return np.concatenate(parts) if parts else np.empty(0, dtype=self.dtype)
        path = self._path(index)
        if not path.exists():
            return np.empty(0, dtype=self.dtype)
        return np.fromfile(path, dtype=self.dtype)

    def write(self, index: int, records: npt.NDArray[np.void]) -> None:
        """Replace one bucket's records (atomically, through a renamed file)."""
        if self._dir is None:
            self._memory[index] = [records.copy()]
            return
        replace_file(self._path(index), records.astype(self.dtype, copy=False).tobytes())
        self._dirty.add(index)

    def __iter__(self) -> Iterator[npt.NDArray[np.void]]:
        """Each bucket's records, bucket by bucket (one in memory at a time)."""
        return (self.read(index) for index in range(self.count))

    def sizes(self) -> list[int]:
        """Records per bucket."""
        if self._dir is None:
            return [sum(len(p) for p in parts) for parts in self._memory]
        size = self.dtype.itemsize
        return [
            self._path(i).stat().st_size // size if self._path(i).exists() else 0
            for i in range(self.count)
        ]

    def truncate(self, sizes: Sequence[int]) -> None:
        """Cut every bucket back to ``sizes`` records (a resumed role's last synced state)."""
        if len(sizes) != self.count:
            raise ValueError("one size per bucket")
        if self._dir is None:
            for index, size in enumerate(sizes):
                self._memory[index] = [self.read(index)[:size]]
            return
        for index, size in enumerate(sizes):
            path = self._path(index)
            if path.exists() or size:
                with path.open("ab") as f:
                    f.truncate(size * self.dtype.itemsize)
                self._dirty.add(index)

    def sync(self) -> None:
        """Make every append and write durable (before a resume state refers to them)."""
        if self._dir is None:
            return
        for index in sorted(self._dirty):
            path = self._path(index)
            if path.exists():
                with path.open("rb") as f:
                    os.fsync(f.fileno())
        self._dirty.clear()
        sync_directory(self._dir)


def chunks(
    buckets: Buckets, size: int, field: str | None = None, skip: int = 0
) -> Iterator[npt.NDArray[Any]]:
    """The records of all buckets in order, re-cut into chunks of ``size`` (the last shorter).

    Args:
        buckets: The partition to read, one bucket at a time.
        size: Records per chunk.
        field: Yield only this field of each record (``"p"``: the points).
        skip: Leave out the first ``skip`` chunks (a resumed role's chunks already done).
    """
    return rechunk((r if field is None else r[field] for r in buckets), size, skip)


def rechunk(
    parts: Iterable[npt.NDArray[Any]], size: int, skip: int = 0
) -> Iterator[npt.NDArray[Any]]:
    """The concatenation of ``parts``, cut into chunks of ``size`` (the last shorter).

    >>> [c.tolist() for c in rechunk([np.arange(3), np.arange(3, 5)], 2, skip=1)]
    [[2, 3], [4]]
    """
    if size < 1:
        raise ValueError("a chunk holds at least one record")
    pending: list[npt.NDArray[Any]] = []
    held = emitted = 0
    for part in parts:
        while len(part):
            take = min(size - held, len(part))
            pending.append(part[:take])
            held, part = held + take, part[take:]
            if held == size:
                if emitted >= skip:
                    yield np.concatenate(pending)
                emitted += 1
                pending, held = [], 0
    if held and emitted >= skip:
        yield np.concatenate(pending)


def ahead(items: Iterable[T], fn: Callable[[T], R]) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` for each item, in order, the next one taken and computed in a thread.

    While the caller handles one result, a background thread takes the next item (parsing a
    chunk of the dataset, say) and computes ``fn`` on it (hashing and blinding it on the
    executor, which releases the GIL while it waits): the node's serial work then overlaps the
    executor's batches instead of adding to them. ``fn`` runs in that one thread, in order.

    >>> list(ahead(range(3), lambda x: x * x))
    [(0, 0), (1, 1), (2, 4)]
    """
    source = iter(items)
    end = object()

    def step() -> tuple[T, R] | object:
        try:
            item = next(source)
        except StopIteration:
            return end
        return item, fn(item)

    with ThreadPoolExecutor(1, thread_name_prefix="bund-ahead") as pool:
        pending = pool.submit(step)
        while (value := pending.result()) is not end:
            pending = pool.submit(step)
            yield cast("tuple[T, R]", value)
