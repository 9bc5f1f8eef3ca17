"""``bund serve`` for the write-ahead audit benchmark: times every audit append of the node.

Usage: ``python -m benchmarks.audit_node MODE NODE_TOML``, where ``MODE`` is
``full`` (the node exactly as ``bund serve`` runs it) or ``relaxed`` (the audit store's SQLite
connection switched to ``PRAGMA synchronous = OFF``: nothing is fsynced, so an append no longer
waits for the disk). Every call of :meth:`AuditLog.append` and :meth:`AuditLog.append_many`
(chain, sign, and the store's transaction) is timed by wall clock (``time.monotonic``, the same
clock in every process on this machine) and by the calling thread's CPU time; when the node
stops (SIGTERM) the timings are written to :data:`TRACE_FILE` beside ``NODE_TOML``.

The switch exists only here, in a process the benchmark harness starts: no product code reads
it and no node configuration can ask for it, so it cannot weaken a real node.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final, Literal, TypedDict

from bund.parties.audit.log import AuditLog
from bund.parties.audit.records import AuditRecord, JsonScalar
from bund.parties.audit.stores import SqliteAuditStore

#: The modes the first argument may name.
MODES: Final = ("full", "relaxed")
#: The trace's file name, beside the node's ``node.toml``.
TRACE_FILE: Final = "audit_trace.json"

Mode = Literal["full", "relaxed"]
_Entries = Sequence[tuple[str, str, Mapping[str, JsonScalar] | None]]


class AppendTrace(TypedDict):
    """One timed call of ``AuditLog.append`` or ``append_many`` in a node process.

    Attributes:
        start: ``time.monotonic()`` when the call began.
        wall_s: its wall-clock duration, lock waits included.
        cpu_s: the calling thread's CPU time during it (``time.thread_time``).
        records: how many records it appended (one durable commit for them all).
        job_ids: the job id of each record (``""`` for a node-level record).
    """

    start: float
    wall_s: float
    cpu_s: float
    records: int
    job_ids: list[str]


_ORIGINAL_CONFIGURE: Final = SqliteAuditStore._configure


def relaxed_configure(store: SqliteAuditStore) -> None:
    """``SqliteAuditStore._configure`` with ``synchronous = OFF``: appends are not fsynced.

    Only for the benchmark: it measures what the audit's durability costs by taking it away.
    """
    _ORIGINAL_CONFIGURE(store)
    if not store._read_only:
        store._db.execute("PRAGMA synchronous = OFF")


class RelaxedSqliteAuditStore(SqliteAuditStore):
    """A :class:`SqliteAuditStore` whose appends are not fsynced (:func:`relaxed_configure`).

    For the benchmark harness's own latency measurement; never given to a node.
    """

    _configure = relaxed_configure


def instrument(traces: list[AppendTrace], mode: Mode) -> None:
    """Time every audit append of this process into ``traces``; relax durability if asked.

    Args:
        traces: where each call's :class:`AppendTrace` goes.
        mode: ``relaxed`` also replaces the SQLite store's session set-up with
            :func:`relaxed_configure`.
    """
    lock = threading.Lock()
    original_append = AuditLog.append
    original_many = AuditLog.append_many

    def timed(call: Callable[[], object], job_ids: list[str]) -> None:
        start, cpu = time.monotonic(), time.thread_time()
        try:
            call()
        finally:
            wall, cpu = time.monotonic() - start, time.thread_time() - cpu
            trace = AppendTrace(
                start=start, wall_s=wall, cpu_s=cpu, records=len(job_ids), job_ids=job_ids
            )
            with lock:
                traces.append(trace)

    def append(
        self: AuditLog,
        event: str,
        job_id: str = "",
        fields: Mapping[str, JsonScalar] | None = None,
    ) -> AuditRecord:
        out: list[AuditRecord] = []
        timed(lambda: out.append(original_append(self, event, job_id, fields)), [job_id])
        return out[0]

    def append_many(self: AuditLog, entries: _Entries) -> list[AuditRecord]:
        out: list[list[AuditRecord]] = []
        timed(lambda: out.append(original_many(self, entries)), [j for _, j, _ in entries])
        return out[0]

    AuditLog.append = append  # type: ignore[method-assign]
    AuditLog.append_many = append_many  # type: ignore[method-assign]
    if mode == "relaxed":
        SqliteAuditStore._configure = relaxed_configure  # type: ignore[method-assign, assignment]


def main(argv: Sequence[str]) -> None:
    """Run the node of ``argv[1]`` in mode ``argv[0]``; write its traces beside it when it stops."""
    from bund.parties.config import load_config
    from bund.parties.node import serve

    if len(argv) != 2 or argv[0] not in MODES:
        raise SystemExit("usage: python -m benchmarks.audit_node {full,relaxed} NODE_TOML")
    mode: Mode = "relaxed" if argv[0] == "relaxed" else "full"
    traces: list[AppendTrace] = []
    instrument(traces, mode)
    try:
        serve(load_config(Path(argv[1])))
    finally:
        (Path(argv[1]).parent / TRACE_FILE).write_text(
            json.dumps({"mode": mode, "appends": traces}), encoding="utf-8"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
