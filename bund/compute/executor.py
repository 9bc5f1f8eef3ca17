"""Run one kernel over many batches: in this thread, on a thread pool, a process pool or Ray.

Every heavy kernel in ``compute`` (Paillier encryption, decryption, dot products, PSI hashing and
blinding) splits its work into batches and hands them to an :class:`Executor` through
:meth:`Executor.map`. The kernel decides the batches; the executor only decides where they run,
so the Ray back-end below is one more :class:`Executor` and no kernel knows about it.

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

- ``ray[:N]``: a local Ray cluster of ``N`` worker CPUs, started on first use and shut down by
  :meth:`Executor.close` (or, if this process already runs Ray, that runtime; then it is left
  running). ``ray://HOST:PORT``: an existing cluster through the Ray Client, which must have Bund
  installed on every node; its CPUs are the workers. Like ``process``, functions and batches
  must pickle, so private keys stay out (their serialisation raises ``TypeError``). Ray is an
  optional extra (``pip install 'bund[ray]'``) imported only on first use; without it, creating
  a Ray executor fails at once with that hint. Ray is one runtime per process: every Ray
  executor of a process shares it.

``N`` defaults to ``os.cpu_count()``. Creating an executor starts nothing (a node validates its
``[compute] executor`` spec at configuration load); workers start on the first
:meth:`~Executor.map`. The compute layer never creates an executor by itself: the node creates
one from its configuration and passes it down.
"""

from __future__ import annotations

import importlib
import importlib.util
import multiprocessing
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Executor as _FuturesExecutor
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

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

    @property
    def in_process(self) -> bool:
        """Whether batches run in this process on the caller's objects (nothing is pickled).

        Kernels that hold a secret check it: only an in-process executor may see the secret
        object itself.
        """
        return False

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

    @property
    def in_process(self) -> bool:
        """True: batches run in the calling thread."""
        return True

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

    @property
    def in_process(self) -> bool:
        """True: the threads share this process's memory."""
        return True

    def _start(self) -> _FuturesExecutor:
        return ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="bund-compute")


class ProcessExecutor(_PoolExecutor):
    """Runs batches on a pool of ``spawn``-ed worker processes; functions and data must pickle."""

    def _start(self) -> _FuturesExecutor:
        return ProcessPoolExecutor(
            max_workers=self._workers, mp_context=multiprocessing.get_context("spawn")
        )


#: The hint every Ray error gives when the optional extra is missing.
RAY_INSTALL_HINT = "pip install 'bund[ray]'"

_ADDRESS = re.compile(r"ray://(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>[0-9]{1,5})")


class _RayRuntime:
    """The process's one Ray runtime, counted by the Ray executors that use it.

    Ray keeps a single global connection per process; this class is the one place that starts
    or joins it, and it shuts down only a runtime that a Bund executor started, when the last
    executor using it closes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._owned = False
        self._apply: Any = None

    def acquire(self, address: str | None, cpus: int | None) -> Any:
        """Start (``address`` None: a local cluster of ``cpus`` CPUs) or join Ray; the remote."""
        with self._lock:
            ray = _import_ray()
            if not ray.is_initialized():
                if address is None:
                    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(address=address, log_to_driver=False)
                self._owned = True
            if self._apply is None:
                self._apply = ray.remote(_apply)
            self._users += 1
            return self._apply

    def release(self) -> None:
        """Forget one user; shut Ray down if we started it and nobody uses it any more."""
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._owned:
                _import_ray().shutdown()
                self._owned = False
                self._apply = None


_RAY = _RayRuntime()


def _apply(fn: Callable[[T], R], batch: T) -> R:
    """The one Ray task: run ``fn`` on a batch (``fn`` arrives once per map, from the store)."""
    return fn(batch)


def _import_ray() -> Any:
    """Import Ray, or fail with the install hint (it is an optional extra)."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise ValueError(f"the Ray executor needs the optional extra: {RAY_INSTALL_HINT}") from None


def _check_ray_installed() -> None:
    """Refuse a Ray spec at once if Ray is missing, without importing it (that takes a while)."""
    if importlib.util.find_spec("ray") is None:
        raise ValueError(
            f"the Ray executor needs the optional extra: {RAY_INSTALL_HINT}, or choose "
            "another [compute] executor"
        )


class RayExecutor(Executor):
    """Runs batches as Ray tasks: on a local cluster (``ray:N``) or an existing one (``ray://``).

    Nothing starts until the first :meth:`map` (or :attr:`workers` of a ``ray://`` executor,
    which asks the cluster its size). Functions and batches are pickled by Ray, so a secret that
    refuses pickling (a Paillier private key, a PSI blinding key) never reaches a worker: the
    map raises ``TypeError`` before any task runs.
    """

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool)):
            raise TypeError("workers is an int")
        if workers is not None and workers < 1:
            raise ValueError("an executor needs at least one worker")
        if address is not None and not _ADDRESS.fullmatch(address):
            raise ValueError(f"a Ray cluster address reads ray://HOST:PORT, not {address!r}")
        if workers is None and address is None:
            workers = os.cpu_count() or 1
        _check_ray_installed()
        self._workers = workers
        self._address = address
        self._remote: Any = None
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        with self._lock:
            if self._remote is None:
                self._remote = _RAY.acquire(self._address, self._workers)
                if self._workers is None:
                    cpus = _import_ray().cluster_resources().get("CPU", 1)
                    self._workers = max(1, int(cpus))
            return self._remote

    @property
    def workers(self) -> int:
        """``N`` of ``ray:N``; for ``ray://`` the cluster's CPU count (this connects)."""
        if self._workers is None:
            self._connect()
        assert self._workers is not None
        return self._workers

    def map(self, fn: Callable[[T], R], batches: Sequence[T]) -> list[R]:
        """Run one Ray task per batch and gather the results in order.

        Raises:
            TypeError: If ``fn`` or a batch cannot be pickled (a secret key refuses to be).
            Exception: The first exception a task raised, re-raised as itself (not wrapped).
        """
        if not batches:
            return []
        remote = self._connect()
        ray = _import_ray()
        try:
            fn_ref = ray.put(fn)
            refs = [remote.remote(fn_ref, batch) for batch in batches]
        except TypeError as exc:
            root: BaseException = exc
            while root.__cause__ is not None:  # Ray wraps the object's own refusal
                root = root.__cause__
            raise TypeError(
                f"a Ray executor cannot send this kernel to its workers: {root}"
            ) from None
        try:
            return list(ray.get(refs))
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, BaseException):
                raise cause from None
            raise

    def close(self) -> None:
        """Release this executor's hold on Ray (shutting down a local cluster it started)."""
        with self._lock:
            connected, self._remote = self._remote is not None, None
        if connected:
            _RAY.release()


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
    "ray": RayExecutor,
}


def create_executor(spec: str) -> Executor:
    """Create an executor from a spec: ``"inline"``, ``"process:4"``, ``"ray://head:10001"``...

    Specs: ``inline``, ``thread[:N]``, ``process[:N]``, ``ray[:N]`` and ``ray://HOST:PORT``.

    Nothing starts here: pools and Ray start on first use, so a node can validate its spec at
    configuration load.

    Args:
        spec: The kind, optionally followed by ``:N`` workers (default: every core), or the
            address of an existing Ray cluster.

    Returns:
        A new executor; close it (or use it as a context manager) when done.

    Raises:
        TypeError: If ``spec`` is not a string.
        ValueError: If the kind is unknown, the worker count is not a positive integer, the
            Ray address is malformed, or Ray is asked for and not installed; the message lists
            the accepted specs or gives the install hint.

    >>> with create_executor("thread:2") as ex:
    ...     ex.workers, ex.map(len, ["a", "bb"])
    (2, [1, 2])
    """
    if not isinstance(spec, str):
        raise TypeError("an executor spec is a string")
    spec = spec.strip()
    if spec.startswith("ray://"):
        return RayExecutor(address=spec)
    kind, _, count = spec.partition(":")
    if kind == "inline" and not count:
        return InlineExecutor()
    factory = EXECUTORS.get(kind)
    if factory is None:
        accepted = ", ".join(["'inline'", *(f"'{k}[:N]'" for k in EXECUTORS), "'ray://HOST:PORT'"])
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
