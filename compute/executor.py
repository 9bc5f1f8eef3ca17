"""Run one kernel over many batches: in this thread, on a thread pool, or on a process pool.

Every heavy kernel in ``compute`` (Paillier encryption, decryption, dot products) splits its work
into batches and hands them to an :class:`Executor` through :meth:`Executor.map`. The kernel
decides the batches; the executor only decides where they run. That one seam is where a cluster
back-end (Ray) plugs in later: it implements :class:`Executor` and adds itself to
:data:`EXECUTORS`, and no kernel changes.

Which to choose:

- ``inline``: no parallelism; the reference and the default.
- ``thread[:N]``: a thread pool. The gmpy2 kernels run with gmpy2's ``allow_release_gil`` set in
  their own (thread-local) context, so big-integer multiplications, reductions and modular
  powers release the GIL and threads use several cores while sharing memory (a public key's
  16 MiB fixed-base table is built once, and private keys never leave the process).
- ``process[:N]``: a process pool (``spawn`` start method, safe beside gRPC threads). Functions and
  batches must pickle; private keys refuse to, so decryption runs on ``inline`` or ``thread``.
  Each task that encrypts rebuilds the public key's table in its worker (about 0.1 s at 2048
  bits), so give it large batches.

``N`` defaults to ``os.cpu_count()``. The compute layer never starts an executor by itself: the
node creates one from its configuration and passes it down.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Executor as _FuturesExecutor
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Executor(ABC):
    """Maps a function over batches, in order; a swappable back-end for the compute kernels.

    Executors are context managers; :meth:`close` releases their workers.
    """

    @property
    @abstractmethod
    def workers(self) -> int:
        """How many batches can run at the same time; kernels split their work into this many."""

    @abstractmethod
    def map(self, fn: Callable[[T], R], batches: Sequence[T]) -> list[R]:
        """Apply ``fn`` to every batch and return the results in the batches' order.

        Args:
            fn: The kernel. For process-based executors it must pickle (a module-level function
                or a ``functools.partial`` of one).
            batches: One argument per call.

        Returns:
            ``[fn(b) for b in batches]``, computed wherever the executor runs things. The first
            exception raised by a call propagates.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the executor's workers and wait for running batches."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class InlineExecutor(Executor):
    """Runs every batch in the calling thread, one after another.

    >>> InlineExecutor().map(abs, [-1, 2, -3])
    [1, 2, 3]
    """

    @property
    def workers(self) -> int:
        """One: batches run one at a time."""
        return 1

    def map(self, fn: Callable[[T], R], batches: Sequence[T]) -> list[R]:
        """Apply ``fn`` to each batch in turn, in the calling thread."""
        return [fn(batch) for batch in batches]

    def close(self) -> None:
        """Nothing to release: batches ran in the caller's thread."""


class _PoolExecutor(Executor):
    """Shared behaviour of the thread and process pools: a lazily started futures pool."""

    def __init__(self, workers: int) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool):
            raise TypeError("workers is an int")
        if workers < 1:
            raise ValueError("an executor needs at least one worker")
        self._workers = workers
        self._pool: _FuturesExecutor | None = None
        self._lock = threading.Lock()

    @property
    def workers(self) -> int:
        """Number of worker threads or processes."""
        return self._workers

    @abstractmethod
    def _start(self) -> _FuturesExecutor:
        """Create the underlying pool."""

    def map(self, fn: Callable[[T], R], batches: Sequence[T]) -> list[R]:
        """Submit every batch to the pool (started on first use) and wait for all, in order."""
        if not batches:
            return []
        with self._lock:
            if self._pool is None:
                self._pool = self._start()
            pool = self._pool
        return list(pool.map(fn, batches))

    def close(self) -> None:
        """Shut the pool down and wait for running batches to finish."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


class ThreadExecutor(_PoolExecutor):
    """Runs batches on a pool of threads in this process (gmpy2 kernels release the GIL)."""

    def _start(self) -> _FuturesExecutor:
        return ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="bund-compute")


class ProcessExecutor(_PoolExecutor):
    """Runs batches on a pool of ``spawn``-ed worker processes; functions and data must pickle."""

    def _start(self) -> _FuturesExecutor:
        return ProcessPoolExecutor(
            max_workers=self._workers, mp_context=multiprocessing.get_context("spawn")
        )


def _parse_workers(spec: str, count: str | None) -> int:
    if count is None or count == "":
        return os.cpu_count() or 1
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"executor spec {spec!r}: the worker count must be a positive integer")
    return int(count)


#: Executor kinds by the name used in a spec; a cluster back-end adds itself here.
EXECUTORS: dict[str, Callable[[int], Executor]] = {
    "thread": ThreadExecutor,
    "process": ProcessExecutor,
}


def create_executor(spec: str) -> Executor:
    """Create an executor from a spec: ``"inline"``, ``"thread[:N]"`` or ``"process[:N]"``.

    Args:
        spec: The kind, optionally followed by ``:N`` workers (default: every core).

    Returns:
        A new executor; close it (or use it as a context manager) when done.

    Raises:
        TypeError: If ``spec`` is not a string.
        ValueError: If the kind is unknown or the worker count is not a positive integer; the
            message lists the accepted specs.

    >>> with create_executor("thread:2") as ex:
    ...     ex.workers, ex.map(len, ["a", "bb"])
    (2, [1, 2])
    """
    if not isinstance(spec, str):
        raise TypeError("an executor spec is a string")
    kind, _, count = spec.strip().partition(":")
    if kind == "inline" and not count:
        return InlineExecutor()
    factory = EXECUTORS.get(kind)
    if factory is None:
        accepted = ", ".join(["'inline'", *(f"'{k}[:N]'" for k in EXECUTORS)])
        raise ValueError(f"unknown executor spec {spec!r}; accepted: {accepted}")
    return factory(_parse_workers(spec, count))


def split_evenly(items: Sequence[T], parts: int) -> list[Sequence[T]]:
    """Split a sequence into at most ``parts`` contiguous, non-empty slices of near-equal size.

    >>> split_evenly([1, 2, 3, 4, 5], 2)
    [[1, 2, 3], [4, 5]]
    """
    if parts < 1:
        raise ValueError("parts is at least 1")
    count = min(parts, len(items))
    if count == 0:
        return []
    size, extra = divmod(len(items), count)
    out: list[Sequence[T]] = []
    start = 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        out.append(items[start:end])
        start = end
    return out
