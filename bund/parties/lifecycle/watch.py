"""Pushed job status: the watches a node serves (``WatchJob``) and the wake-ups it waits on.

A watch yields a job's status as it is, then again each time the job store changes it, until
the job is terminal: nothing polls. Each watch holds one of the node's RPC threads while it
waits, so :class:`Watches` bounds them: at most ``per_caller`` open at once per caller (an
operator, or a peer node) and ``total`` in all; each ends after ``longest`` seconds (the
caller opens it again, and its first status is the current one, so nothing is missed), and
every watch ends when the node stops. :class:`Wakeups` is the requester's side of the
participants' ``NotifyJob``: the coordinator waits on it instead of a short poll.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

from bund.parties.errors import TooManyWatchesError
from bund.parties.lifecycle.states import JobStatus, is_terminal
from bund.parties.lifecycle.store import JobStore


class Watches:
    """The open watches of one node, bounded per caller and in all, ended when the node stops.

    Args:
        store: The node's job store (its changes wake the watches).
        per_caller: The most watches one caller holds at once.
        total: The most watches the node serves at once (each holds an RPC thread).
        longest: Seconds after which a watch ends (its caller opens it again).
    """

    def __init__(
        self, store: JobStore, per_caller: int = 8, total: int = 16, longest: float = 300.0
    ) -> None:
        if per_caller < 1 or total < 1 or longest < 0:
            raise ValueError("per_caller and total must be positive and longest non-negative")
        self._store = store
        self.per_caller = per_caller
        self.total = total
        self.longest = longest
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()
        self._closed = False

    def open_count(self, caller: str | None = None) -> int:
        """How many watches are open (``caller``'s only, when given)."""
        with self._lock:
            return self._open[caller] if caller is not None else sum(self._open.values())

    def _acquire(self, caller: str) -> None:
        with self._lock:
            if self._closed:
                raise TooManyWatchesError("this node is stopping; watch the job again later")
            if self._open[caller] >= self.per_caller:
                raise TooManyWatchesError(
                    f"{caller} holds {self.per_caller} watches at this node already: close one, "
                    "or ask with `bund job status`"
                )
            if sum(self._open.values()) >= self.total:
                raise TooManyWatchesError(
                    f"this node serves {self.total} watches already; ask with `bund job status`"
                )
            self._open[caller] += 1

    def _release(self, caller: str) -> None:
        with self._lock:
            self._open[caller] -= 1
            if self._open[caller] <= 0:
                del self._open[caller]

    def follow(
        self,
        caller: str,
        job_id: str,
        read: Callable[[], JobStatus],
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Iterator[JobStatus]:
        """Yield ``read()`` now, then each time it changes, until the job is terminal.

        The watch's slot is taken when the first status is asked for (a refused watch raises
        there) and given back when the generator ends or is closed.

        Args:
            caller: Who watches (the per-caller limit counts by this name).
            job_id: The job.
            read: The job's status as ``caller`` may see it (it checks who may read it).
            cancelled: True once the caller went away (the RPC was cancelled); call
                :meth:`wake` after it turns true.

        Raises:
            TooManyWatchesError: The caller or the node is at its limit, or the node stops.
        """
        self._acquire(caller)
        try:
            last = read()
            yield last
            deadline = time.monotonic() + self.longest

            def stop() -> bool:  # checked under the store's lock before each wait
                return self._closed or cancelled()

            while not is_terminal(last.state) and not stop():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._store.wait_for_change(job_id, last, remaining, stop)
                status = read()
                if status != last:
                    last = status
                    yield status
        finally:
            self._release(caller)

    def wake(self) -> None:
        """Make every waiting watch check whether it was cancelled or the node stops."""
        self._store.wake()

    def close(self) -> None:
        """End every watch (the node stops) and refuse new ones."""
        with self._lock:
            self._closed = True
        self._store.wake()


class Wakeups:
    """Per-job wake-up events: a waiter sleeps until a participant's push (or its timeout).

    The coordinator registers a job before it proposes it (so no push is missed), waits on it
    between its reads of the participants' answers, and forgets it when the wait ends.

    >>> wakeups = Wakeups()
    >>> event = wakeups.register("j")
    >>> wakeups.wake("j"), event.is_set(), wakeups.wake("other")
    (True, True, False)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether the node is stopping: every wait returns at once."""
        return self._closed

    def register(self, job_id: str) -> threading.Event:
        """The job's event, created if new (a push may arrive before the wait begins)."""
        with self._lock:
            event = self._events.setdefault(job_id, threading.Event())
            if self._closed:
                event.set()
            return event

    def close(self) -> None:
        """The node stops: wake every waiter now and every later one at once."""
        with self._lock:
            self._closed = True
            events = list(self._events.values())
        for event in events:
            event.set()

    def wake(self, job_id: str) -> bool:
        """Wake the job's waiter; False when nothing waits on it here."""
        with self._lock:
            event = self._events.get(job_id)
        if event is None:
            return False
        event.set()
        return True

    def forget(self, job_id: str) -> None:
        """Drop the job's event (its wait ended)."""
        with self._lock:
            self._events.pop(job_id, None)
