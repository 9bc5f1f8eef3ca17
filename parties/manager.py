"""A job's life at one node: submission, proposal, acceptance, running one role, closing.

The requester's node assigns the job id, checks its own policy, proposes the spec to every other
participant (each checks its own policy), and only when all accepted tells them to start. No
protocol message is sent before every participant accepted. Every step is recorded in the node's
audit log; each role's messages are recorded by digest; the job ends with a signed closing record
carrying the transcript digest and the digests the peers reported (a countersignature).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from compute.errors import BundError
from parties.data import DatasetError, Table
from parties.errors import (
    JobStateError,
    NotAuthorizedError,
    UnknownJobError,
)
from parties.jobs import (
    InvalidJobSpecError,
    JobSpec,
    JobState,
    JobStatus,
    JsonScalar,
    Participant,
    ProtocolDef,
    Result,
    RoleContext,
    new_job_id,
)
from parties.policy import Policy
from parties.transport import JobAbortedError, Mailbox, Transport, digest

log = logging.getLogger("bund.jobs")

#: Mailbox tag of the closing exchange, outside every protocol's own tags.
CLOSE_TAG = "bund/close"


class AuditSink(Protocol):
    """The part of the audit log the job manager writes to."""

    def append(
        self, event: str, job_id: str = "", fields: Mapping[str, JsonScalar] | None = None
    ) -> object:
        """Append one signed record."""
        ...


class PeerControl(Transport, Protocol):
    """Calls to other nodes that the job lifecycle makes (``parties.client`` implements it)."""

    def propose(self, to: str, spec: JobSpec) -> tuple[bool, str]:
        """Ask ``to`` to accept ``spec``; return (accepted, reason)."""
        ...

    def start(self, to: str, job_id: str) -> None:
        """Tell ``to`` that every participant accepted and it may run its role."""
        ...

    def abort(self, to: str, job_id: str, reason: str) -> None:
        """Tell ``to`` that the job is off."""
        ...


def _utcnow() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JobStore:
    """Durable job table and results in SQLite, so status and results survive a restart."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
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

    def create(self, spec: JobSpec, state: JobState) -> bool:
        """Insert a job; False when the id exists already."""
        now = _utcnow()
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO jobs (job_id, spec, state, created, updated) VALUES (?,?,?,?,?)",
                    (spec.job_id, spec.canonical_json().decode(), state.value, now, now),
                )
            except sqlite3.IntegrityError:
                return False
        return True

    def update(self, job_id: str, **changes: str | int) -> None:
        """Change some columns of a job."""
        allowed = {"state", "phase", "done", "total", "error", "transcript"}
        if not changes.keys() <= allowed:
            raise ValueError(f"unknown job columns {set(changes) - allowed}")
        cols = ", ".join(f"{k} = ?" for k in changes)
        with self._lock:
            self._db.execute(
                f"UPDATE jobs SET {cols}, updated = ? WHERE job_id = ?",  # noqa: S608 - fixed names
                (*changes.values(), _utcnow(), job_id),
            )

    def get(self, job_id: str) -> JobStatus:
        """The stored status of a job, or ``UnknownJobError``."""
        with self._lock:
            row = self._db.execute(
                "SELECT spec, state, phase, done, total, error, transcript, updated, "
                "EXISTS(SELECT 1 FROM results r WHERE r.job_id = jobs.job_id) "
                "FROM jobs WHERE job_id = ?",
                (job_id,),
            ).fetchone()
        if row is None:
            raise UnknownJobError(
                f"no job {job_id} at this node; `bund job list` shows the known ones"
            )
        return self._status(row)

    def list(self, limit: int) -> list[JobStatus]:
        """The newest ``limit`` jobs."""
        with self._lock:
            rows = self._db.execute(
                "SELECT spec, state, phase, done, total, error, transcript, updated, "
                "EXISTS(SELECT 1 FROM results r WHERE r.job_id = jobs.job_id) "
                "FROM jobs ORDER BY created DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [self._status(r) for r in rows]

    @staticmethod
    def _status(row: tuple[str, str, str, int, int, str, str, str, int]) -> JobStatus:
        spec_json, state, phase, done, total, error, transcript, updated, has_result = row
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
        )

    def save_result(self, job_id: str, result: Result) -> None:
        """Store a receiver's result."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO results (job_id, summary) VALUES (?, ?)",
                (job_id, json.dumps(dict(result.summary), sort_keys=True)),
            )
            self._db.executemany(
                "INSERT INTO artifacts (job_id, name, data) VALUES (?, ?, ?)",
                [(job_id, name, data) for name, data in result.artifacts.items()],
            )
            self._db.execute("COMMIT")

    def load_result(self, job_id: str) -> Result | None:
        """A stored result, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT summary FROM results WHERE job_id = ?", (job_id,)
            ).fetchone()
            if row is None:
                return None
            arts = self._db.execute(
                "SELECT name, data FROM artifacts WHERE job_id = ? ORDER BY name", (job_id,)
            ).fetchall()
        return Result(summary=json.loads(row[0]), artifacts={n: bytes(d) for n, d in arts})

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


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


class _Sink:
    """Feeds a role's messages, records and progress to the audit log and the job store."""

    def __init__(self, manager: JobManager) -> None:
        self._m = manager

    def message(
        self, job_id: str, direction: str, peer: str, tag: str, sha256: str, size: int
    ) -> None:
        self._m.audit.append(
            f"message_{direction}",
            job_id,
            {"peer": peer, "tag": tag, "sha256": sha256, "size": size},
        )

    def record(self, job_id: str, event: str, fields: Mapping[str, JsonScalar]) -> None:
        self._m.audit.append(f"protocol_{event}", job_id, dict(fields))

    def progress(self, job_id: str, phase: str, done: int, total: int) -> None:
        self._m.store.update(job_id, phase=phase, done=done, total=total)


class JobManager:
    """Runs the lifecycle of every job this node takes part in."""

    def __init__(
        self,
        party: str,
        protocols: Mapping[str, ProtocolDef],
        policy: Policy,
        tables: Mapping[str, Callable[[], Table]],
        audit: AuditSink,
        store: JobStore,
        mailbox: Mailbox,
        peers: PeerControl,
        recv_timeout: float,
        max_workers: int = 16,
    ) -> None:
        self.party = party
        self.protocols = protocols
        self.policy = policy
        self.tables = tables
        self.audit = audit
        self.store = store
        self.mailbox = mailbox
        self.peers = peers
        self.recv_timeout = recv_timeout
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="bund-job")
        self._lock = threading.Lock()
        self._running: set[str] = set()

    # -- checks shared by submission and proposal -------------------------------------------

    def _definition(self, spec: JobSpec) -> ProtocolDef:
        definition = self.protocols.get(spec.protocol)
        if definition is None:
            raise InvalidJobSpecError(
                f"unknown protocol {spec.protocol!r}; this node runs {sorted(self.protocols)}"
            )
        definition.validate(spec)
        return definition

    def _check(self, spec: JobSpec) -> None:
        """Check the shape, then this node's policy; raise on either."""
        self._definition(spec)
        self.policy.check(spec, self.party)

    def _spec_fields(self, spec: JobSpec) -> dict[str, JsonScalar]:
        return {
            "protocol": spec.protocol,
            "requester": spec.requester,
            "parties": ",".join(spec.parties),
            "receivers": ",".join(spec.receivers),
            "purpose": spec.purpose,
            "spec_sha256": spec.digest(),
        }

    # -- operator -> own node ---------------------------------------------------------------

    def submit(self, spec: JobSpec, caller: str) -> str:
        """Accept a job from this node's operator, check it, and start proposing it to the peers."""
        if caller != self.party:
            raise NotAuthorizedError(
                f"only {self.party}'s own operator may submit jobs at this node (caller: {caller})"
            )
        if spec.job_id:
            raise InvalidJobSpecError("leave job_id empty in a submission: the node assigns it")
        if spec.requester != self.party:
            raise InvalidJobSpecError(f"requester must be this node's party {self.party!r}")
        spec = dataclasses.replace(spec, job_id=new_job_id())
        self.store.create(spec, JobState.PROPOSED)
        self.audit.append("job_submitted", spec.job_id, self._spec_fields(spec))
        try:
            self._check(spec)
        except BundError as exc:
            self._refuse(spec.job_id, str(exc))
            return spec.job_id
        self.audit.append("job_accepted", spec.job_id, {"spec_sha256": spec.digest()})
        self._pool.submit(self._coordinate, spec)
        return spec.job_id

    def _refuse(self, job_id: str, reason: str) -> None:
        self.store.update(job_id, state=JobState.REFUSED.value, error=reason)
        self.audit.append("job_refused", job_id, {"reason": reason})

    def _coordinate(self, spec: JobSpec) -> None:
        """Requester side: propose to every peer; start all only if all accepted."""
        others = [p for p in spec.parties if p != self.party]
        accepted: list[str] = []
        try:
            for peer in others:
                ok, reason = self.peers.propose(peer, spec)
                if not ok:
                    why = f"refused by {peer}: {reason}"
                    self.store.update(spec.job_id, state=JobState.REFUSED.value, error=why)
                    self.audit.append(
                        "job_refused_by_peer", spec.job_id, {"peer": peer, "reason": reason}
                    )
                    for done in accepted:
                        self._abort_peer(done, spec.job_id, why)
                    return
                accepted.append(peer)
            self.store.update(spec.job_id, state=JobState.ACCEPTED.value)
            for peer in others:
                self.peers.start(peer, spec.job_id)
            self.audit.append("job_started", spec.job_id, {"parties": ",".join(spec.parties)})
        except BundError as exc:
            why = f"could not start the job: {exc}"
            self.store.update(spec.job_id, state=JobState.FAILED.value, error=why)
            self.audit.append("job_failed", spec.job_id, {"reason": why})
            for done in accepted:
                self._abort_peer(done, spec.job_id, why)
            return
        self._run_role(spec)

    # -- requester node -> participant nodes -----------------------------------------------

    def propose(self, spec: JobSpec, caller: str) -> tuple[bool, str]:
        """A requester asks this node to take part; check and answer."""
        if caller != spec.requester:
            raise NotAuthorizedError(
                f"{caller} proposed a job whose requester is {spec.requester}; refused"
            )
        if self.party not in spec.parties:
            raise NotAuthorizedError(f"{self.party} takes no part in this job")
        if not spec.job_id:
            raise InvalidJobSpecError("a proposed job must carry its job_id")
        if not self.store.create(spec, JobState.PROPOSED):
            raise JobStateError(f"job {spec.job_id} is already known here")
        self.audit.append("job_proposed", spec.job_id, self._spec_fields(spec))
        try:
            self._check(spec)
        except BundError as exc:
            self._refuse(spec.job_id, str(exc))
            return False, str(exc)
        self.store.update(spec.job_id, state=JobState.ACCEPTED.value)
        self.audit.append("job_accepted", spec.job_id, {"spec_sha256": spec.digest()})
        return True, ""

    def start(self, job_id: str, caller: str) -> None:
        """The requester says everyone accepted: run this node's role."""
        status = self.store.get(job_id)
        if caller != status.spec.requester:
            raise NotAuthorizedError(
                f"only the requester {status.spec.requester} may start job {job_id}"
            )
        if status.state is not JobState.ACCEPTED:
            raise JobStateError(f"job {job_id} is {status.state.value}, not accepted; cannot start")
        self.audit.append("job_started", job_id, {"by": caller})
        self._pool.submit(self._run_role, status.spec)

    def abort(self, job_id: str, caller: str, reason: str) -> None:
        """A participant calls the job off; wake this node's role if it waits."""
        status = self.store.get(job_id)
        if caller not in status.spec.parties:
            raise NotAuthorizedError(f"{caller} takes no part in job {job_id}")
        self.mailbox.abort(job_id, f"{caller}: {reason}")
        if not status.state.final:
            self.store.update(
                job_id, state=JobState.ABORTED.value, error=f"aborted by {caller}: {reason}"
            )
        self.audit.append("job_aborted", job_id, {"by": caller, "reason": reason[:500]})

    def deliver(self, job_id: str, caller: str, tag: str, payload: bytes, sha256: bytes) -> bool:
        """Put a peer's message into this node's mailbox; True when it is new."""
        status = self.store.get(job_id)
        if caller not in status.spec.parties or caller == self.party:
            raise NotAuthorizedError(f"{caller} takes no part in job {job_id}; message refused")
        if status.state not in (JobState.ACCEPTED, JobState.RUNNING):
            raise JobStateError(f"job {job_id} is {status.state.value}; it takes no messages")
        if not hmac.compare_digest(digest(payload), sha256):
            raise JobStateError("the payload does not match its SHA-256; resend it")
        return self.mailbox.put(job_id, caller, tag, payload)

    # -- reading -----------------------------------------------------------------------------

    def status(self, job_id: str, caller: str) -> JobStatus:
        """A job's status, for this node's operator or a participant."""
        status = self.store.get(job_id)
        if caller != self.party and caller not in status.spec.parties:
            raise NotAuthorizedError(f"{caller} takes no part in job {job_id}")
        return status

    def result(self, job_id: str, caller: str) -> Result:
        """A job's result, for this node's operator, where this node is a receiver."""
        if caller != self.party:
            raise NotAuthorizedError("only this node's own operator may read its results")
        status = self.store.get(job_id)
        if self.party not in status.spec.receivers:
            raise JobStateError(
                f"{self.party} is not a receiver of job {job_id}; its result went to "
                f"{', '.join(status.spec.receivers)}"
            )
        if status.state is not JobState.SUCCEEDED:
            raise JobStateError(f"job {job_id} is {status.state.value}; no result yet")
        result = self.store.load_result(job_id)
        if result is None:
            raise JobStateError(f"job {job_id} succeeded but holds no result here")
        return result

    def list(self, caller: str, limit: int = 50) -> list[JobStatus]:
        """The newest jobs, for this node's operator."""
        if caller != self.party:
            raise NotAuthorizedError("only this node's own operator may list its jobs")
        return self.store.list(max(1, min(limit, 1000)))

    # -- running a role ----------------------------------------------------------------------

    def _run_role(self, spec: JobSpec) -> None:
        job_id = spec.job_id
        with self._lock:
            if job_id in self._running:
                return
            self._running.add(job_id)
        me = spec.participant(self.party)
        definition = self.protocols[spec.protocol]
        table_loader = self.tables.get(me.dataset) if me.dataset else None

        def table() -> Table:
            if table_loader is None:
                raise DatasetError(f"{self.party} brings no dataset to job {job_id}")
            return table_loader()

        ctx = RoleContext(
            spec,
            self.party,
            self.peers,
            self.mailbox,
            table,
            self.policy.limits,
            _Sink(self),
            self.recv_timeout,
        )
        self.store.update(job_id, state=JobState.RUNNING.value)
        try:
            result = definition.roles[me.role](ctx)
            if result is not None:
                if self.party not in spec.receivers:
                    raise RuntimeError(
                        f"protocol {spec.protocol} produced a result for a non-receiver"
                    )
                self.store.save_result(job_id, result)
            transcript = ctx.transcript_digest()
            peer_digests = self._exchange_closing(spec, transcript)
        except Exception as exc:
            self._fail(spec, ctx, exc)
        else:
            self.store.update(job_id, state=JobState.SUCCEEDED.value, transcript=transcript)
            fields: dict[str, JsonScalar] = {
                "outcome": "succeeded",
                "transcript_sha256": transcript,
                "messages": len(ctx.transcript),
                "result_to": ",".join(spec.receivers),
                "holds_result": result is not None,
            }
            fields.update({f"peer_transcript.{p}": d for p, d in sorted(peer_digests.items())})
            self.audit.append("job_closed", job_id, fields)
        finally:
            self.mailbox.forget(job_id)
            with self._lock:
                self._running.discard(job_id)

    def _exchange_closing(self, spec: JobSpec, transcript: str) -> dict[str, str]:
        """Send our transcript digest to each peer and collect theirs (countersigned in our log)."""
        payload = json.dumps({"party": self.party, "transcript_sha256": transcript}).encode()
        others = [p for p in spec.parties if p != self.party]
        for peer in others:
            self.peers.deliver(spec.job_id, peer, CLOSE_TAG, payload)
            self.audit.append(
                "message_sent",
                spec.job_id,
                {
                    "peer": peer,
                    "tag": CLOSE_TAG,
                    "sha256": digest(payload).hex(),
                    "size": len(payload),
                },
            )
        digests: dict[str, str] = {}
        for peer in others:
            envelope = self.mailbox.take(spec.job_id, peer, CLOSE_TAG, self.recv_timeout)
            self.audit.append(
                "message_received",
                spec.job_id,
                {
                    "peer": peer,
                    "tag": CLOSE_TAG,
                    "sha256": envelope.sha256.hex(),
                    "size": len(envelope.payload),
                },
            )
            try:
                doc = json.loads(envelope.payload)
                value = doc["transcript_sha256"]
                if not isinstance(value, str) or len(value) != 64:
                    raise ValueError
                int(value, 16)
            except (ValueError, KeyError, TypeError):
                raise JobStateError(f"{peer} sent a malformed closing message") from None
            digests[peer] = value
        return digests

    def _fail(self, spec: JobSpec, ctx: RoleContext, exc: Exception) -> None:
        job_id = spec.job_id
        if isinstance(exc, BundError):
            reason = str(exc)
        else:
            log.exception("job %s: %s role crashed", job_id, self.party)
            reason = (
                f"internal error in {self.party}'s role; its operator can find it in the node log"
            )
        aborted = isinstance(exc, JobAbortedError)
        state = JobState.ABORTED if aborted else JobState.FAILED
        current = self.store.get(job_id).state
        if not current.final:
            self.store.update(job_id, state=state.value, error=reason)
        self.audit.append(
            "job_closed",
            job_id,
            {
                "outcome": state.value,
                "reason": reason[:500],
                "transcript_sha256": ctx.transcript_digest(),
                "messages": len(ctx.transcript),
            },
        )
        if not aborted:
            for peer in spec.parties:
                if peer != self.party:
                    self._abort_peer(peer, job_id, f"{self.party} failed: {reason}")

    def _abort_peer(self, peer: str, job_id: str, reason: str) -> None:
        try:
            self.peers.abort(peer, job_id, reason)
        except BundError as exc:
            log.warning("could not tell %s to abort job %s: %s", peer, job_id, exc)

    def shutdown(self) -> None:
        """Stop taking work and wait for running roles to finish or fail."""
        self._pool.shutdown(wait=False, cancel_futures=True)
