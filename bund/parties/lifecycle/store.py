"""The job table of one node and the one writer of a job's state.

:meth:`JobStore.transition` is the only way a job changes state. It refuses a move that
:data:`~bund.parties.lifecycle.states.TRANSITIONS` does not allow, appends the move's audit
record first (write-ahead: if the audit log cannot take the record, the state does not change and
the caller gets the audit error), and then writes the new state, together with the job's result
when it is one that ends it, in one durable step. Every change wakes the threads that wait on the
store (:meth:`JobStore.wait_for_change`), so nothing needs to poll it.

Two back-ends satisfy the same contract (tests/parties/test_job_store.py runs one suite over
both): :class:`SqliteJobStore`, what a node uses, and :class:`MemoryJobStore`, for in-process
lifecycle tests.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bund.parties.durable import move_durably, sync_directory
from bund.parties.errors import JobStateError, UnknownJobError
from bund.parties.jobs import (
    AuditSink,
    JobSpec,
    JsonScalar,
    Participant,
    Result,
    check_artifact_name,
    is_job_id,
)
from bund.parties.lifecycle.events import KINDS, Event, EventKind, Key
from bund.parties.lifecycle.states import (
    IllegalTransitionError,
    JobState,
    JobStatus,
    PartyView,
    can_move,
    is_terminal,
)

log = logging.getLogger("bund.jobs")

#: Longest error text kept with a job (a reason is a sentence, not a log).
_MAX_ERROR = 1000


def utcnow() -> str:
    """The current UTC time, as the job table stores it."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class JobNote:
    """What just happened to a job at this node, as an observer hears it (the node's job log).

    Attributes:
        status: The job's status right after it.
        event: The lifecycle record just written, or None for a progress update.
        fields: That record's fields (empty for progress).
    """

    status: JobStatus
    event: Event | None
    fields: Mapping[str, JsonScalar]


@dataclass(frozen=True)
class ResultInfo:
    """A stored result: its summary, and each artifact's size (bytes are read in pages)."""

    summary: Mapping[str, JsonScalar]
    artifact_sizes: Mapping[str, int]


def spec_from_json(text: str) -> JobSpec:
    """Rebuild a ``JobSpec`` from ``JobSpec.canonical_json``."""
    doc = json.loads(text)
    return JobSpec(
        protocol=doc["protocol"],
        participants=tuple(
            Participant(p["party"], p["role"], p["dataset"], p["columns"])
            for p in doc["participants"]
        ),
        receivers=tuple(doc["receivers"]),
        purpose=doc["purpose"],
        requester=doc["requester"],
        params=doc["params"],
        job_id=doc["job_id"],
    )


def in_spec_order(spec: JobSpec, views: Iterable[PartyView]) -> tuple[PartyView, ...]:
    """``views`` in the order the spec lists their parties."""
    order = {party: i for i, party in enumerate(spec.parties)}
    return tuple(sorted(views, key=lambda v: (order.get(v.party, len(order)), v.party)))


class JobStore(ABC):
    """This node's jobs, their state, progress and results; the one writer of their state.

    Subclasses implement storage only (the ``_`` methods); the rules live here.
    """

    def __init__(self, audit: AuditSink) -> None:
        self._audit = audit
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._revision = 0
        self._listeners: list[Callable[[JobStatus], None]] = []
        self._observers: list[Callable[[JobNote], None]] = []

    def add_listener(self, listener: Callable[[JobStatus], None]) -> None:
        """Call ``listener`` with the new status after every move (outside the store's lock).

        A listener that raises is logged and does not undo the move.
        """
        self._listeners.append(listener)

    def add_observer(self, observer: Callable[[JobNote], None]) -> None:
        """Call ``observer`` after each lifecycle record and progress update of a job.

        It hears a job's creation, every move, approvals, the lifecycle records that change no
        state (``job_closed``) and progress, outside the store's lock, after the record is
        durable. One that raises is logged and changes nothing.
        """
        self._observers.append(observer)

    def _notify(self, status: JobStatus) -> None:
        for listener in self._listeners:
            try:
                listener(status)
            except Exception:  # noqa: BLE001 - the move is made; a listener's failure is logged
                log.exception("a listener failed on job %s", status.spec.job_id)

    def _observe(
        self, status: JobStatus, event: Event | None, fields: Mapping[str, JsonScalar]
    ) -> None:
        note = JobNote(status, event, dict(fields))
        for observer in self._observers:
            try:
                observer(note)
            except Exception:  # noqa: BLE001 - what happened stands; an observer's failure is logged
                log.exception("an observer failed on job %s", status.spec.job_id)

    # -- what a back-end provides ---------------------------------------------------------------

    @abstractmethod
    def _insert(self, spec: JobSpec, state: JobState, now: str) -> None:
        """Insert a new job (its id is known to be new)."""

    @abstractmethod
    def _row(self, job_id: str) -> JobStatus | None:
        """A job's stored status, or None."""

    @abstractmethod
    def _rows(self, states: frozenset[JobState] | None, limit: int | None) -> list[JobStatus]:
        """Jobs in ``states`` (all when None), newest first when ``limit`` is set, else oldest."""

    @abstractmethod
    def _update(
        self, job_id: str, changes: Mapping[str, str | int], now: str, result: Result | None
    ) -> None:
        """Change some columns of a job and, with ``result``, replace its result: one step."""

    @abstractmethod
    def _add_approval(self, job_id: str, approver: str, now: str) -> None:
        """Note that ``approver`` approved the job (known to be new)."""

    @abstractmethod
    def _approvers(self, job_id: str) -> tuple[str, ...]:
        """Who approved the job here, in order."""

    @abstractmethod
    def _set_party(self, job_id: str, view: PartyView, now: str) -> None:
        """Keep another participant's answer (replacing the one before)."""

    @abstractmethod
    def _parties(self, job_id: str) -> tuple[PartyView, ...]:
        """The other participants' answers kept for the job, in spec order."""

    @abstractmethod
    def _set_admitted(self, job_id: str, payload: bytes) -> None:
        """Keep what the job was admitted on (the approval payload)."""

    @abstractmethod
    def _admitted(self, job_id: str) -> bytes | None:
        """What the job was admitted on, or None."""

    @abstractmethod
    def _stored(
        self, job_id: str, bytes_too: bool
    ) -> tuple[Mapping[str, JsonScalar], Sequence[tuple[str, bytes | int]]] | None:
        """A result's summary and, per artifact in name order, its bytes or its size."""

    @abstractmethod
    def _artifact_page(
        self, job_id: str, name: str, offset: int, limit: int
    ) -> tuple[bytes, int] | None:
        """Up to ``limit`` bytes of an artifact from ``offset``, and its size; None if absent."""

    @abstractmethod
    def close(self) -> None:
        """Release the back-end."""

    # -- writing --------------------------------------------------------------------------------

    def create(
        self, spec: JobSpec, event: Event, fields: Mapping[str, JsonScalar] | None = None
    ) -> JobStatus:
        """Record a new job (``job_submitted`` or ``job_proposed``) in state PROPOSED.

        Raises:
            JobStateError: A job with this id is known here already (nothing is recorded).
        """
        with self._lock:
            if self._row(spec.job_id) is not None:
                raise JobStateError(f"job {spec.job_id} is already known here")
            written = {**(fields or {}), Key.STATE: JobState.PROPOSED.value}
            self._audit.append(event, spec.job_id, written)
            self._insert(spec, JobState.PROPOSED, utcnow())
            status = self._changed_now(spec.job_id)
        self._observe(status, event, written)
        return status

    def transition(
        self,
        job_id: str,
        to: JobState,
        event: Event,
        fields: Mapping[str, JsonScalar] | None = None,
        *,
        error: str | None = None,
        transcript: str | None = None,
        result: Result | None = None,
        admitted: bytes | None = None,
    ) -> JobStatus:
        """Move a job to ``to``, recording ``event`` first; return the new status.

        Args:
            job_id: The job.
            to: Its new state.
            event: The audit record of the move (the new state is added as its ``state``).
            fields: The record's other fields.
            error: The reason to show with the job ("" clears it); unchanged when None.
            transcript: This party's transcript digest, once the job has closed.
            result: The job's result at this node, stored in the same step as the state.
            admitted: What the job was accepted on (its approval payload), checked at its start
                and kept across restarts.

        Raises:
            UnknownJobError: No such job here.
            IllegalTransitionError: The lifecycle does not allow the move (nothing recorded).
        """
        with self._lock:
            current = self.get(job_id)
            if not can_move(current.state, to):
                raise IllegalTransitionError(job_id, current.state, to)
            written = {**(fields or {}), Key.STATE: to.value}
            self._audit.append(event, job_id, written)
            changes: dict[str, str | int] = {"state": to.value}
            if error is not None:
                changes["error"] = error[:_MAX_ERROR]
            if transcript is not None:
                changes["transcript"] = transcript
            self._update(job_id, changes, utcnow(), result)
            if admitted is not None:
                self._set_admitted(job_id, admitted)
            status = self._changed_now(job_id)
        self._notify(status)
        self._observe(status, event, written)
        return status

    def approve(
        self, job_id: str, approver: str, fields: Mapping[str, JsonScalar]
    ) -> tuple[str, ...]:
        """Record ``approver``'s approval (``job_approved``, first); who approved so far.

        Raises:
            JobStateError: ``approver`` approved this job already.
        """
        with self._lock:
            if approver in self._approvers(job_id):
                raise JobStateError(f"{approver} approved job {job_id} already")
            state = self.get(job_id).state.value
            written = {**fields, Key.STATE: state}
            self._audit.append(Event.JOB_APPROVED, job_id, written)
            self._add_approval(job_id, approver, utcnow())
            status = self._changed_now(job_id)
        self._observe(status, Event.JOB_APPROVED, written)
        return status.approved_by

    def note_party(self, job_id: str, view: PartyView) -> None:
        """Keep what another participant answered, as this node (its requester) last heard it.

        Shown by ``bund job status``; not audited here (the participant's own log records its
        answer). A view unchanged since the last one changes nothing.
        """
        with self._lock:
            if view in self._parties(job_id):
                return
            self._set_party(job_id, view, utcnow())
            self._changed_now(job_id)

    def admitted(self, job_id: str) -> bytes | None:
        """What the job was accepted on here (its approval payload), or None."""
        with self._lock:
            return self._admitted(job_id)

    def record(
        self, job_id: str, event: Event, fields: Mapping[str, JsonScalar] | None = None
    ) -> None:
        """Append a record about a job that does not change its state (an approval given).

        A record of the job's life names the state the job stays in, so that a reader never
        guesses it from the event (``job_closed`` of a job cancelled while its role finished).
        """
        lifecycle = KINDS.get(event) is EventKind.LIFECYCLE
        status = self.get(job_id) if lifecycle else None
        written: dict[str, JsonScalar] = dict(fields or {})
        if status is not None:
            written[Key.STATE] = status.state.value
        self._audit.append(event, job_id, written)
        if status is not None:
            self._observe(status, event, written)

    def progress(self, job_id: str, phase: str, done: int, total: int) -> None:
        """Note a running job's progress (shown by ``bund job status``; not audited)."""
        with self._lock:
            self._update(job_id, {"phase": phase, "done": done, "total": total}, utcnow(), None)
            status = self._changed_now(job_id)
        self._observe(status, None, {})

    def _changed_now(self, job_id: str) -> JobStatus:
        self._revision += 1
        self._changed.notify_all()
        return self.get(job_id)

    # -- reading --------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobStatus:
        """A job's status, or ``UnknownJobError``."""
        with self._lock:
            status = self._row(job_id)
        if status is None:
            raise UnknownJobError(
                f"no job {job_id} at this node; `bund job list` shows the known ones"
            )
        return status

    def find(self, job_id: str) -> JobStatus | None:
        """A job's status, or None when this node does not know it."""
        with self._lock:
            return self._row(job_id)

    def newest(self, limit: int, states: frozenset[JobState] | None = None) -> list[JobStatus]:
        """The newest ``limit`` jobs (only those in ``states``, when given)."""
        with self._lock:
            return self._rows(states, limit)

    def unfinished(self) -> list[JobStatus]:
        """Every job not in a terminal state, oldest first (what a restarting node looks at)."""
        pending = frozenset(s for s in JobState if not is_terminal(s))
        with self._lock:
            return self._rows(pending, None)

    def wait_for_change(
        self,
        job_id: str,
        seen: JobStatus | None,
        timeout: float,
        stop: Callable[[], bool] = lambda: False,
    ) -> JobStatus:
        """Block until the job's status differs from ``seen``, ``timeout`` passes or ``stop()``.

        ``stop`` is checked under the store's lock before each wait, so a caller that sets what
        it reads and then calls :meth:`wake` is never missed. Returns the status as it is then.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                status = self.get(job_id)
                left = deadline - time.monotonic()
                if status != seen or left <= 0 or stop():
                    return status
                self._changed.wait(left)

    def wake(self) -> None:
        """Wake every :meth:`wait_for_change` so that each checks its ``stop`` again."""
        with self._changed:
            self._changed.notify_all()

    def load_result(self, job_id: str) -> ResultInfo | None:
        """A stored result's summary and artifact sizes (the bytes are read in pages), or None."""
        with self._lock:
            stored = self._stored(job_id, bytes_too=False)
        if stored is None:
            return None
        summary, artifacts = stored
        return ResultInfo(summary, {n: int(size) for n, size in artifacts})

    def load_full_result(self, job_id: str) -> Result | None:
        """A stored result with every artifact's bytes (for a later job that applies it)."""
        with self._lock:
            stored = self._stored(job_id, bytes_too=True)
        if stored is None:
            return None
        summary, artifacts = stored
        return Result(summary, {n: bytes(data) for n, data in artifacts if isinstance(data, bytes)})

    def read_artifact(self, job_id: str, name: str, offset: int, limit: int) -> tuple[bytes, int]:
        """Up to ``limit`` bytes of an artifact from ``offset``, and its total size."""
        with self._lock:
            page = self._artifact_page(job_id, name, offset, limit)
        if page is None:
            raise JobStateError(f"job {job_id} has no artifact {name!r} here")
        return page


class MemoryJobStore(JobStore):
    """Jobs in dicts: for in-process lifecycle tests (nothing survives the process)."""

    def __init__(self, audit: AuditSink) -> None:
        super().__init__(audit)
        self._jobs: dict[str, JobStatus] = {}
        self._order: list[str] = []
        self._results: dict[str, Result] = {}
        self._approvals: dict[str, list[str]] = {}
        self._views: dict[str, dict[str, PartyView]] = {}
        self._admission: dict[str, bytes] = {}

    def _insert(self, spec: JobSpec, state: JobState, now: str) -> None:
        self._jobs[spec.job_id] = JobStatus(spec=spec, state=state, updated_at=now, created_at=now)
        self._order.append(spec.job_id)

    def _row(self, job_id: str) -> JobStatus | None:
        status = self._jobs.get(job_id)
        if status is None:
            return None
        return replace(
            status,
            has_result=job_id in self._results,
            approved_by=self._approvers(job_id),
            parties=in_spec_order(status.spec, self._parties(job_id)),
        )

    def _add_approval(self, job_id: str, approver: str, now: str) -> None:
        self._approvals.setdefault(job_id, []).append(approver)

    def _approvers(self, job_id: str) -> tuple[str, ...]:
        return tuple(self._approvals.get(job_id, ()))

    def _set_party(self, job_id: str, view: PartyView, now: str) -> None:
        self._views.setdefault(job_id, {})[view.party] = view

    def _parties(self, job_id: str) -> tuple[PartyView, ...]:
        return tuple(self._views.get(job_id, {}).values())

    def _set_admitted(self, job_id: str, payload: bytes) -> None:
        self._admission[job_id] = payload

    def _admitted(self, job_id: str) -> bytes | None:
        return self._admission.get(job_id)

    def _rows(self, states: frozenset[JobState] | None, limit: int | None) -> list[JobStatus]:
        order = list(reversed(self._order)) if limit is not None else self._order
        rows = [s for j in order if (s := self._row(j)) and (states is None or s.state in states)]
        return rows if limit is None else rows[:limit]

    def _update(
        self, job_id: str, changes: Mapping[str, str | int], now: str, result: Result | None
    ) -> None:
        status = self._jobs[job_id]
        mapped: dict[str, Any] = {
            "transcript_digest" if k == "transcript" else k: v for k, v in changes.items()
        }
        if "state" in mapped:
            mapped["state"] = JobState(mapped["state"])
        self._jobs[job_id] = replace(status, **mapped, updated_at=now)
        if result is not None:
            held = result.held()
            self._results[job_id] = Result(dict(held.summary), dict(held.artifacts))

    def _stored(
        self, job_id: str, bytes_too: bool
    ) -> tuple[Mapping[str, JsonScalar], Sequence[tuple[str, bytes | int]]] | None:
        result = self._results.get(job_id)
        if result is None:
            return None
        artifacts = sorted(result.artifacts.items())
        return dict(result.summary), [(n, d if bytes_too else len(d)) for n, d in artifacts]

    def _artifact_page(
        self, job_id: str, name: str, offset: int, limit: int
    ) -> tuple[bytes, int] | None:
        result = self._results.get(job_id)
        if result is None or name not in result.artifacts:
            return None
        data = result.artifacts[name]
        return data[offset : offset + limit], len(data)

    def close(self) -> None:
        """Nothing to release."""


_COLUMNS = "spec, state, phase, done, total, error, transcript, updated, created"
_HAS_RESULT = "EXISTS(SELECT 1 FROM results r WHERE r.job_id = jobs.job_id)"


class SqliteJobStore(JobStore):
    """Jobs and results in SQLite (WAL, ``synchronous=FULL``): they survive a restart."""

    def __init__(self, path: Path, audit: AuditSink) -> None:
        super().__init__(audit)
        path.parent.mkdir(parents=True, exist_ok=True)
        #: Where artifacts that arrive as files (``Result.files``) are kept, one folder per job.
        self._files = path.parent / "artifacts"
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, spec TEXT NOT NULL, "
                "state TEXT NOT NULL, phase TEXT NOT NULL DEFAULT '', "
                "done INTEGER NOT NULL DEFAULT 0, "
                "total INTEGER NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '', "
                "transcript TEXT NOT NULL DEFAULT '', created TEXT NOT NULL, updated TEXT NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS results "
                "(job_id TEXT PRIMARY KEY, summary TEXT NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS artifacts (job_id TEXT NOT NULL, name TEXT NOT NULL, "
                "data BLOB NOT NULL, PRIMARY KEY (job_id, name))"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS approvals (job_id TEXT NOT NULL, "
                "approver TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (job_id, approver))"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS party_views (job_id TEXT NOT NULL, "
                "party TEXT NOT NULL, state TEXT NOT NULL, approved_by TEXT NOT NULL, "
                "reason TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (job_id, party))"
            )
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
            if "admitted" not in columns:  # a job table written before admissions were kept
                self._db.execute("ALTER TABLE jobs ADD COLUMN admitted BLOB")
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(artifacts)")}
            if "file" not in columns:  # an artifact table written before artifacts as files
                self._db.execute("ALTER TABLE artifacts ADD COLUMN file INTEGER NOT NULL DEFAULT 0")

    def _insert(self, spec: JobSpec, state: JobState, now: str) -> None:
        self._db.execute(
            "INSERT INTO jobs (job_id, spec, state, created, updated) VALUES (?,?,?,?,?)",
            (spec.job_id, spec.canonical_json().decode(), state.value, now, now),
        )

    def _row(self, job_id: str) -> JobStatus | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS}, {_HAS_RESULT} FROM jobs WHERE job_id = ?",  # noqa: S608
            (job_id,),
        ).fetchone()
        if row is None:
            return None
        return self._complete(self._status(row))

    def _add_approval(self, job_id: str, approver: str, now: str) -> None:
        self._db.execute(
            "INSERT INTO approvals (job_id, approver, at) VALUES (?, ?, ?)", (job_id, approver, now)
        )

    def _approvers(self, job_id: str) -> tuple[str, ...]:
        rows = self._db.execute(
            "SELECT approver FROM approvals WHERE job_id = ? ORDER BY at, rowid", (job_id,)
        ).fetchall()
        return tuple(r[0] for r in rows)

    def _set_party(self, job_id: str, view: PartyView, now: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO party_views (job_id, party, state, approved_by, reason, at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                job_id,
                view.party,
                view.state.value,
                json.dumps(list(view.approved_by)),
                view.reason[:_MAX_ERROR],
                now,
            ),
        )

    def _parties(self, job_id: str) -> tuple[PartyView, ...]:
        rows = self._db.execute(
            "SELECT party, state, approved_by, reason FROM party_views WHERE job_id = ?",
            (job_id,),
        ).fetchall()
        return tuple(
            PartyView(party, JobState(state), tuple(json.loads(approved)), reason)
            for party, state, approved, reason in rows
        )

    def _set_admitted(self, job_id: str, payload: bytes) -> None:
        self._db.execute("UPDATE jobs SET admitted = ? WHERE job_id = ?", (payload, job_id))

    def _admitted(self, job_id: str) -> bytes | None:
        row = self._db.execute("SELECT admitted FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def _rows(self, states: frozenset[JobState] | None, limit: int | None) -> list[JobStatus]:
        where, args = "", []
        if states is not None:
            where = "WHERE state IN (SELECT value FROM json_each(?))"
            args.append(json.dumps(sorted(s.value for s in states)))
        order = (
            "ORDER BY created, rowid"
            if limit is None
            else "ORDER BY created DESC, rowid DESC LIMIT ?"
        )
        if limit is not None:
            args.append(str(limit))
        rows = self._db.execute(
            f"SELECT {_COLUMNS}, {_HAS_RESULT} FROM jobs {where} {order}",  # noqa: S608
            args,
        ).fetchall()
        return [self._complete(self._status(r)) for r in rows]

    def _complete(self, status: JobStatus) -> JobStatus:
        """A row's status with its approvals and the other participants' answers."""
        job_id = status.spec.job_id
        parties = in_spec_order(status.spec, self._parties(job_id))
        return replace(status, approved_by=self._approvers(job_id), parties=parties)

    @staticmethod
    def _status(row: tuple[str, str, str, int, int, str, str, str, str, int]) -> JobStatus:
        spec_json, state, phase, done, total, error, transcript, updated, created, has_result = row
        return JobStatus(
            spec=spec_from_json(spec_json),
            state=JobState(state),
            phase=phase,
            done=done,
            total=total,
            error=error,
            has_result=bool(has_result),
            transcript_digest=transcript,
            updated_at=updated,
            created_at=created,
        )

    def _update(
        self, job_id: str, changes: Mapping[str, str | int], now: str, result: Result | None
    ) -> None:
        allowed = {"state", "phase", "done", "total", "error", "transcript"}
        if not changes.keys() <= allowed:
            raise ValueError(f"unknown job columns {set(changes) - allowed}")
        cols = ", ".join(f"{k} = ?" for k in changes)
        if result is not None:
            self._keep_files(job_id, result)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                f"UPDATE jobs SET {cols}, updated = ? WHERE job_id = ?",  # noqa: S608 - fixed names
                (*changes.values(), now, job_id),
            )
            if result is not None:
                # A resumed job that had stored its result before a crash replaces it.
                self._db.execute("DELETE FROM artifacts WHERE job_id = ?", (job_id,))
                self._db.execute(
                    "INSERT OR REPLACE INTO results (job_id, summary) VALUES (?, ?)",
                    (job_id, json.dumps(dict(result.summary), sort_keys=True)),
                )
                self._db.executemany(
                    "INSERT INTO artifacts (job_id, name, data, file) VALUES (?, ?, ?, ?)",
                    [(job_id, name, data, 0) for name, data in result.artifacts.items()]
                    + [(job_id, name, b"", 1) for name in result.files],
                )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _keep_files(self, job_id: str, result: Result) -> None:
        """Move a result's file artifacts into this store's folder for the job, durably.

        They move before the row that names them is committed: a crash in between leaves files
        no row names, which the resumed job's own files (of the same names) replace.
        """
        if not result.files:
            return
        folder = self._job_folder(job_id)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, source in result.files.items():
            move_durably(source, folder / check_artifact_name(name))
        sync_directory(folder)
        sync_directory(self._files)

    def _job_folder(self, job_id: str) -> Path:
        if not is_job_id(job_id):
            raise ValueError(f"{job_id!r} is not a job id")
        return self._files / job_id

    def _file(self, job_id: str, name: str) -> Path:
        path = self._job_folder(job_id) / check_artifact_name(name)
        if not path.is_file():
            raise JobStateError(
                f"job {job_id}'s artifact {name!r} is missing from {path.parent}: it was moved or "
                "deleted outside the node"
            )
        return path

    def _stored(
        self, job_id: str, bytes_too: bool
    ) -> tuple[Mapping[str, JsonScalar], Sequence[tuple[str, bytes | int]]] | None:
        column = "data" if bytes_too else "length(data)"
        row = self._db.execute("SELECT summary FROM results WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        artifacts = self._db.execute(
            f"SELECT name, {column}, file FROM artifacts WHERE job_id = ? ORDER BY name",  # noqa: S608
            (job_id,),
        ).fetchall()
        listed: list[tuple[str, bytes | int]] = []
        for name, data, file in artifacts:
            if file:
                path = self._file(job_id, name)
                listed.append((name, path.read_bytes() if bytes_too else path.stat().st_size))
            else:
                listed.append((name, bytes(data) if bytes_too else int(data)))
        return json.loads(row[0]), listed

    def _artifact_page(
        self, job_id: str, name: str, offset: int, limit: int
    ) -> tuple[bytes, int] | None:
        row = self._db.execute(
            "SELECT substr(data, ?, ?), length(data), file FROM artifacts "
            "WHERE job_id = ? AND name = ?",
            (offset + 1, limit, job_id, name),
        ).fetchone()
        if row is None:
            return None
        if not row[2]:
            return bytes(row[0] or b""), int(row[1])
        with self._file(job_id, name).open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(min(offset, size))
            return f.read(limit), size

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
