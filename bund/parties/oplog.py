"""What an operator sees of a node: the job lines of its log, the log's formats, a job's records.

**The job log.** :class:`JobLog` observes the node's job store
(:meth:`~bund.parties.lifecycle.store.JobStore.add_observer`) and writes one line to the logger
``bund.jobs`` for every lifecycle record of a job (submitted or proposed, awaiting approval,
approved, accepted, started, resumed, interrupted, refused, failed, aborted, closed) and for its
progress: when a phase begins or completes, and otherwise at most once per
``progress_every_s`` per job. Each line names the job, the event, the protocol, this party's
role, the peers, the state, the reason when there is one, and the seconds since the job was
first recorded here (``since_submit_s``) and since it started (``since_start_s``). The line is
written after the record is durable, so the log never shows what the audit log does not hold.

**Formats.** :func:`configure_logging` sets the node log (stderr) to ``[logging] format``:
``text``, one line per entry (``TIME LOGGER LEVEL MESSAGE``, the message ``key=value`` pairs),
or ``json``, one JSON object per line with the keys ``time``, ``level``, ``logger`` and
``message`` and, on job lines, the fields above as their own keys (``docs/deploy.md``).

**A job's records.** :func:`job_records` finds one job's records in the node's signed audit log,
for the ``GetJobLog`` RPC behind ``bund job logs``: it reads back from the end of the log to the
job's first record, so a recent job costs a read of the records since it began.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import TextIO

from bund.parties.audit import AuditRecord, AuditStore
from bund.parties.config import LoggingConfig
from bund.parties.jobs import JsonScalar
from bund.parties.lifecycle.events import SPEC_EVENTS, Event, Key
from bund.parties.lifecycle.states import JobState, is_terminal
from bund.parties.lifecycle.store import JobNote

log = logging.getLogger("bund.jobs")

#: The fields of a record that a job line repeats, when the record has them.
_NOTED = (Key.REASON, Key.BY, Key.APPROVER, Key.PEER, Key.OUTCOME)
#: States whose lines are warnings: something went wrong at this node or a peer.
_WARN = frozenset({JobState.FAILED, JobState.INTERRUPTED})
#: How many running jobs' start times are kept (a job's entry goes when it closes).
_MAX_TRACKED = 4096
_PLAIN = re.compile(r"[\w.:/@+,-]*")


def version() -> str:
    """The installed Bund version.

    >>> version() != ""
    True
    """
    try:
        return metadata.version("bund")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def text_value(value: object) -> str:
    """A value as one shell-safe token: plain words as they are, anything else JSON-quoted.

    Control and format characters are escaped too, so a reason a peer wrote can neither break
    the line nor drive the operator's terminal.

    >>> text_value("psi"), text_value("no budget left"), text_value(["bank", "tax"])
    ('psi', '"no budget left"', 'bank,tax')
    """
    if isinstance(value, list | tuple):
        return text_value(",".join(str(v) for v in value))
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if _PLAIN.fullmatch(text) and text:
        return text
    quoted = json.dumps(text, ensure_ascii=False)
    return "".join(
        f"\\u{ord(c):04x}" if unicodedata.category(c) in ("Cc", "Cf") else c for c in quoted
    )


def pairs(fields: Mapping[str, object]) -> str:
    """``key=value`` pairs, each value one token (:func:`text_value`)."""
    return " ".join(f"{k}={text_value(v)}" for k, v in fields.items())


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _parse_time(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


class JobLog:
    """Writes a node's job lines: one per lifecycle record, and progress (rate-limited).

    Register it with ``store.add_observer(JobLog(party))``; it is thread-safe.

    Args:
        party: This node's party (its peers are the job's other parties).
        progress_every_s: The most often a job's progress is logged within one phase.
        now: The clock (UTC); tests give their own.
        logger: Where the lines go (``bund.jobs``).
    """

    def __init__(
        self,
        party: str,
        progress_every_s: float = 30.0,
        now: Callable[[], dt.datetime] = _utcnow,
        logger: logging.Logger = log,
    ) -> None:
        self._party = party
        self._every = dt.timedelta(seconds=progress_every_s)
        self._now = now
        self._log = logger
        self._lock = threading.Lock()
        self._started: OrderedDict[str, dt.datetime] = OrderedDict()
        #: Per running job: the phase last logged, its done == total then, and when.
        self._progress: dict[str, tuple[str, bool, dt.datetime]] = {}

    def __call__(self, note: JobNote) -> None:
        """Log what ``note`` says happened (see the class)."""
        status, job_id = note.status, note.status.spec.job_id
        now = self._now()
        with self._lock:
            if note.event is None and not self._progress_due(job_id, status.phase, note, now):
                return
            if note.event in (Event.JOB_STARTED, Event.JOB_RESUMED):
                self._started.setdefault(job_id, now)
                while len(self._started) > _MAX_TRACKED:
                    self._started.popitem(last=False)
            started = self._started.get(job_id)
            if note.event is Event.JOB_CLOSED:
                self._started.pop(job_id, None)
            if note.event is not None and (
                is_terminal(status.state) or note.event is Event.JOB_CLOSED
            ):
                self._progress.pop(job_id, None)
        fields = self.fields(note, now, started)
        word = str(note.event or "progress").removeprefix("job_")
        level = logging.WARNING if status.state in _WARN and note.event else logging.INFO
        without_id = {k: v for k, v in fields.items() if k not in ("job_id", "event")}
        self._log.log(
            level, "job %s %s: %s", job_id, word, pairs(without_id), extra={"bund": fields}
        )

    def _progress_due(self, job_id: str, phase: str, note: JobNote, now: dt.datetime) -> bool:
        """Whether this progress update gets a line: a new phase, its end, or time passed."""
        status = note.status
        complete = status.total > 0 and status.done >= status.total
        last = self._progress.get(job_id)
        due = (
            last is None
            or last[0] != phase
            or (complete and not last[1])
            or now - last[2] >= self._every
        )
        if due:
            self._progress[job_id] = (phase, complete, now)
        return due

    def fields(
        self, note: JobNote, now: dt.datetime, started: dt.datetime | None
    ) -> dict[str, JsonScalar | list[str]]:
        """The structured fields of a job line (the JSON format's keys)."""
        status, spec = note.status, note.status.spec
        out: dict[str, JsonScalar | list[str]] = {
            "job_id": spec.job_id,
            "event": str(note.event or "progress"),
            "protocol": spec.protocol,
            "role": ",".join(p.role for p in spec.participants if p.party == self._party),
            "peers": [p for p in spec.parties if p != self._party],
            "state": status.state.value,
        }
        if note.event is None:
            out.update(phase=status.phase, done=status.done, total=status.total)
        for key in _NOTED:
            value = note.fields.get(key)
            if value not in (None, ""):
                out[str(key)] = value
        if (
            "reason" not in out
            and status.error
            and status.state
            in _WARN
            | {
                JobState.REFUSED,
                JobState.ABORTED,
            }
        ):
            out["reason"] = status.error
        created = _parse_time(status.created_at)
        if created is not None:
            out["since_submit_s"] = round((now - created).total_seconds(), 3)
        if started is not None:
            out["since_start_s"] = round((now - started).total_seconds(), 3)
        return out


def _iso(seconds: float) -> str:
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``TIME LOGGER LEVEL MESSAGE``, the time in UTC (RFC 3339, milliseconds)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(name)s %(levelname)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """The entry's time in UTC."""
        return _iso(record.created)


class JsonFormatter(logging.Formatter):
    """One JSON object per entry: ``time``, ``level``, ``logger``, ``message``, job fields.

    A job line's structured fields (:meth:`JobLog.fields`) are top-level keys; an exception's
    traceback is ``exception``. Nothing else is added, so the keys stay stable.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The entry as one line of JSON."""
        doc: dict[str, object] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = getattr(record, "bund", None)
        if isinstance(extra, dict):
            doc.update({k: v for k, v in extra.items() if k not in doc})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), default=str)


def configure_logging(config: LoggingConfig, stream: TextIO | None = None) -> logging.Handler:
    """Send the whole process's log to ``stream`` (stderr) in ``config``'s format and level.

    It replaces the root logger's handlers, so it is called once, by ``serve``.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level)
    return handler


def _first_index(store: AuditStore, job_id: str, size: int, page: int) -> int:
    """The index of the job's first record: read back from the end to its creating record."""
    first = size
    stop = size
    while stop > 0:
        start = max(0, stop - page)
        for record in reversed(store.read(start, stop)):
            if record.job_id == job_id:
                first = record.index
                if record.event in SPEC_EVENTS:
                    return first
        stop = start
    return first


def job_records(
    store: AuditStore, job_id: str, start: int = 0, limit: int = 500, page: int = 1000
) -> tuple[list[AuditRecord], int]:
    """Up to ``limit`` of one job's records from ``start``, and where the next ones begin.

    Args:
        store: The node's audit store.
        job_id: The job.
        start: The audit index to continue from (the ``next`` of a previous call); 0 starts at
            the job's first record.
        limit: The most records returned.
        page: How many records are read from the store at a time.

    Returns:
        The records in log order, and the index to continue from, or 0 when there are no more.
    """
    if limit < 1 or page < 1:
        raise ValueError("limit and page must be at least 1")
    size = len(store)
    at = start if start > 0 else _first_index(store, job_id, size, page)
    found: list[AuditRecord] = []
    while at < size:
        stop = min(size, at + page)
        for record in store.read(at, stop):
            if record.job_id != job_id:
                continue
            found.append(record)
            if len(found) == limit:
                following = record.index + 1
                return found, following if following < size else 0
        at = stop
    return found, 0
