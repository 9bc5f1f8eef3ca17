"""Refused and failed RPCs, audited in bounded volume: one record per caller, method and reason.

A node records every action in its audit log (write-ahead), but a refused call changes nothing,
and one record per refusal lets anyone with a certificate fill the node's disk: random job ids
once made 39,975 signed, fsynced records in 30 seconds. So refusals are counted per (caller,
method, status) and written once per interval as ``rpc_refused`` with the count and the time
span, however many there were.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from bund.compute.errors import BundError
from bund.parties.jobs import AuditSink, JsonScalar
from bund.parties.lifecycle.events import Event, Key

log = logging.getLogger("bund.rpc")


def _utc() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class _Count:
    count: int
    first: str
    last: str


class RefusalTally:
    """Counts refused RPCs and records them in the audit log once per ``interval`` seconds.

    Args:
        audit: The node's audit log.
        interval: Seconds between records of the same (caller, method, status).
        clock: The current UTC time as text (tests pass their own).
    """

    def __init__(
        self, audit: AuditSink, interval: float = 60.0, clock: Callable[[], str] = _utc
    ) -> None:
        self._audit = audit
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], _Count] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def note(self, caller: str, method: str, code: str) -> None:
        """Count one refused call."""
        now = self._clock()
        with self._lock:
            entry = self._counts.get((caller, method, code))
            if entry is None:
                self._counts[(caller, method, code)] = _Count(1, now, now)
            else:
                entry.count += 1
                entry.last = now

    def flush(self) -> None:
        """Write one ``rpc_refused`` record per (caller, method, status) counted since the last."""
        with self._lock:
            counts, self._counts = self._counts, {}
        for (caller, method, code), entry in sorted(counts.items()):
            fields: dict[str, JsonScalar] = {
                Key.CALLER: caller,
                Key.METHOD: method,
                Key.CODE: code,
                "count": entry.count,
                "first": entry.first,
                "last": entry.last,
            }
            try:
                self._audit.append(Event.RPC_REFUSED, "", fields)
            except BundError:  # the log is down: keep the count for the next interval
                log.exception("could not record %d refused %s calls", entry.count, method)
                self.note_many(caller, method, code, entry)

    def note_many(self, caller: str, method: str, code: str, entry: _Count) -> None:
        """Put back a count that could not be written."""
        with self._lock:
            kept = self._counts.setdefault((caller, method, code), _Count(0, entry.first, ""))
            kept.count += entry.count
            kept.last = max(kept.last, entry.last)

    def start(self) -> None:
        """Flush every ``interval`` seconds in a background thread, until :meth:`stop`."""

        def loop() -> None:
            while not self._stopping.wait(self._interval):
                self.flush()

        self._thread = threading.Thread(target=loop, name="bund-rpc-tally", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and write what is counted."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()
