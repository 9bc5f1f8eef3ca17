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
import functools
import hmac
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bund.compute.dp.budget import Budget, format_rational
from bund.compute.errors import BundError
from bund.compute.executor import Executor, InlineExecutor
from bund.parties.approvals import ApprovalError, ApprovalRequest, verify_approval
from bund.parties.data import DatasetError, Table
from bund.parties.errors import (
    JobStateError,
    NotAuthorizedError,
    PeerUnavailableError,
    UnknownJobError,
)
from bund.parties.identity import raw_key_id
from bund.parties.jobs import (
    AuditSink,
    InvalidJobSpecError,
    JobSpec,
    JobState,
    JobStatus,
    JsonScalar,
    Participant,
    PriorResultError,
    ProtocolDef,
    Result,
    RoleContext,
    TranscriptEntry,
    new_job_id,
    transcript_digest,
)
from bund.parties.ledger import BudgetExhaustedError, BudgetLedger
from bund.parties.policy import Policy, PolicyRefusedError
from bund.parties.resume import ResumeStore
from bund.parties.transport import (
    EquivocationError,
    JobAbortedError,
    JobInterruptedError,
    Mailbox,
    PeerTimeoutError,
    Transport,
    digest,
    envelope_digest,
)

log = logging.getLogger("bund.jobs")

#: Mailbox tag of the closing exchange, outside every protocol's own tags.
CLOSE_TAG = "bund/close"
#: How often a node resumes one job by itself after faults it saw (then an operator must).
AUTO_RESUMES = 3
#: Faults after which a job is interrupted (resumable) rather than failed.
_FAULTS = (JobInterruptedError, PeerTimeoutError, PeerUnavailableError)


class PeerControl(Transport, Protocol):
    """Calls to other nodes that the job lifecycle makes (``bund.parties.client`` implements it)."""

    def propose(self, to: str, spec: JobSpec) -> tuple[bool, str]:
        """Ask ``to`` to accept ``spec``; return (accepted, reason)."""
        ...

    def start(self, to: str, job_id: str) -> None:
        """Tell ``to`` that every participant accepted and it may run its role."""
        ...

    def abort(self, to: str, job_id: str, reason: str) -> None:
        """Tell ``to`` that the job is off."""
        ...

    def status(self, to: str, job_id: str, timeout: float | None = None) -> JobStatus:
        """``to``'s view of a job (participants may read each other's status)."""
        ...

    def resume(self, to: str, job_id: str) -> None:
        """Ask ``to`` to resume its role of an interrupted job."""
        ...


def _utcnow() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ResultInfo:
    """A stored result: its summary, and each artifact's size (bytes are read in pages)."""

    summary: Mapping[str, JsonScalar]
    artifact_sizes: Mapping[str, int]


def _receipt_json(receipt: Mapping[str, JsonScalar]) -> bytes:
    return json.dumps(dict(receipt), sort_keys=True, indent=2, ensure_ascii=False).encode()


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

    def unfinished(self) -> list[JobStatus]:
        """Every job not in a final state (what a restarting node must look at)."""
        pending = [s.value for s in JobState if not s.final]
        with self._lock:
            rows = self._db.execute(
                "SELECT spec, state, phase, done, total, error, transcript, updated, "
                "EXISTS(SELECT 1 FROM results r WHERE r.job_id = jobs.job_id) "
                "FROM jobs WHERE state IN (SELECT value FROM json_each(?)) ORDER BY created",
                (json.dumps(pending),),
            ).fetchall()
        return [self._status(r) for r in rows]

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
        """Store a receiver's result (a resumed job that had stored one replaces it)."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute("DELETE FROM artifacts WHERE job_id = ?", (job_id,))
                self._db.execute(
                    "INSERT OR REPLACE INTO results (job_id, summary) VALUES (?, ?)",
                    (job_id, json.dumps(dict(result.summary), sort_keys=True)),
                )
                self._db.executemany(
                    "INSERT INTO artifacts (job_id, name, data) VALUES (?, ?, ?)",
                    [(job_id, name, data) for name, data in result.artifacts.items()],
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _stored(self, job_id: str, bytes_too: bool) -> tuple[Any, Sequence[tuple[str, Any]]] | None:
        """A result's summary and, per artifact, its bytes or (without ``bytes_too``) its size."""
        column = "data" if bytes_too else "length(data)"
        with self._lock:
            row = self._db.execute(
                "SELECT summary FROM results WHERE job_id = ?", (job_id,)
            ).fetchone()
            if row is None:
                return None
            artifacts = self._db.execute(
                f"SELECT name, {column} FROM artifacts WHERE job_id = ? ORDER BY name",  # noqa: S608
                (job_id,),
            ).fetchall()
        return json.loads(row[0]), artifacts

    def load_result(self, job_id: str) -> ResultInfo | None:
        """A stored result's summary and artifact sizes (the bytes are read in pages), or None."""
        stored = self._stored(job_id, bytes_too=False)
        if stored is None:
            return None
        return ResultInfo(stored[0], {n: int(size) for n, size in stored[1]})

    def load_full_result(self, job_id: str) -> Result | None:
        """A stored result with every artifact's bytes (for a later job that applies it)."""
        stored = self._stored(job_id, bytes_too=True)
        if stored is None:
            return None
        return Result(stored[0], {n: bytes(data) for n, data in stored[1]})

    def read_artifact(self, job_id: str, name: str, offset: int, limit: int) -> tuple[bytes, int]:
        """Up to ``limit`` bytes of an artifact from ``offset``, and its total size."""
        with self._lock:
            row = self._db.execute(
                "SELECT substr(data, ?, ?), length(data) FROM artifacts "
                "WHERE job_id = ? AND name = ?",
                (offset + 1, limit, job_id, name),
            ).fetchone()
        if row is None:
            raise JobStateError(f"job {job_id} has no artifact {name!r} here")
        return bytes(row[0] or b""), int(row[1])

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
        self._m.resume.add_transcript(job_id, TranscriptEntry(direction, peer, tag, sha256, size))
        self._m.audit.append(
            f"message_{direction}",
            job_id,
            {"peer": peer, "tag": tag, "sha256": sha256, "size": size},
        )

    def replayed(
        self, job_id: str, direction: str, peer: str, tag: str, sha256: str, size: int
    ) -> None:
        self._m.audit.append(
            "message_replayed",
            job_id,
            {"direction": direction, "peer": peer, "tag": tag, "sha256": sha256, "size": size},
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
        ledger: BudgetLedger,
        approver_key: Ed25519PublicKey | None,
        code_version: str,
        recv_timeout: float,
        approval_timeout: float = 86_400.0,
        max_workers: int = 16,
        executor: Executor | None = None,
        resume: ResumeStore | None = None,
        heartbeat_interval: float = 5.0,
        peer_silence: float = 60.0,
        job_deadline: float = 7 * 86_400.0,
    ) -> None:
        if policy.approvals_required and approver_key is None:
            raise ValueError("approvals are required but no approver key was given")
        self.party = party
        self.protocols = protocols
        self.policy = policy
        self.tables = tables
        self.audit = audit
        self.store = store
        self.mailbox = mailbox
        self.peers = peers
        self.ledger = ledger
        self.approver_key = approver_key
        self.code_version = code_version
        self.recv_timeout = recv_timeout
        self.approval_timeout = approval_timeout
        self.executor = executor if executor is not None else InlineExecutor()
        if resume is None:
            raise ValueError("a job manager needs a resume store (bund.parties.resume)")
        self.resume = resume
        self.heartbeat_interval = heartbeat_interval
        self.peer_silence = peer_silence
        self.job_deadline = job_deadline
        self.poll_interval = 0.2
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="bund-job")
        self._lock = threading.Lock()
        self._running: set[str] = set()
        #: What each job was admitted on (dataset version, code version): re-checked at start.
        self._admitted: dict[str, bytes] = {}
        #: Running jobs: when each started here, and when each peer last answered a heartbeat.
        self._started: dict[str, float] = {}
        self._last_seen: dict[str, dict[str, float]] = {}
        self._beating: set[tuple[str, str]] = set()
        #: Interrupted jobs to resume once their peers answer again, and how often each was.
        self._healing: set[str] = set()
        self._healed: dict[str, int] = {}
        self._resumed_at: dict[str, float] = {}
        self._stopping = threading.Event()
        self._beats = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bund-heartbeat")
        self._watcher = threading.Thread(target=self._watch, name="bund-watch", daemon=True)
        self._watcher.start()

    # -- checks shared by submission and proposal -------------------------------------------

    def _definition(self, spec: JobSpec) -> ProtocolDef:
        definition = self.protocols.get(spec.protocol)
        if definition is None:
            raise InvalidJobSpecError(
                f"unknown protocol {spec.protocol!r}; this node runs {sorted(self.protocols)}"
            )
        definition.validate(spec)
        return definition

    def _table(self, dataset: str) -> Table:
        loader = self.tables.get(dataset)
        if loader is None:
            raise PolicyRefusedError(
                f"{self.party}'s node has no source for dataset {dataset!r}; its operator can "
                f"declare [datasets.{dataset}] in node.toml"
            )
        return loader()

    def _approval_request(self, spec: JobSpec) -> ApprovalRequest | None:
        """What this node's approver would sign for ``spec``; None when it brings no dataset."""
        definition = self._definition(spec)
        me = spec.participant(self.party)
        if me.dataset is None:
            return None
        entry = self.policy.datasets[me.dataset]
        return ApprovalRequest(
            spec=spec,
            party=self.party,
            code_version=self.code_version,
            dataset=me.dataset,
            level=entry.level,
            dataset_version=self._table(me.dataset).content_hash(),
            outputs=tuple(sorted(definition.outputs(spec))),
            learns=dict(definition.learns(spec)),
            cost=definition.cost(spec, self.party),
        )

    def _check(self, spec: JobSpec, requester_role: str | None) -> ApprovalRequest | None:
        """Shape, policy, dataset version pin, cohort floor and budget; raise on any."""
        definition = self._definition(spec)
        self.policy.check(spec, self.party, definition.outputs(spec), requester_role)
        request = self._approval_request(spec)
        if request is None:
            return None
        entry = self.policy.datasets[request.dataset]
        if entry.version is not None and not hmac.compare_digest(
            entry.version, request.dataset_version
        ):
            raise PolicyRefusedError(
                f"dataset {request.dataset!r} no longer matches the version pinned in policy.toml "
                f"({entry.version[:16]}..., now {request.dataset_version[:16]}...); its owner must "
                "review the change and update the pin"
            )
        self.policy.check_cohort(request.dataset, self._table(request.dataset).num_rows)
        line = self.ledger.line(request.dataset)
        if not (line.spent + request.cost).fits_within(line.total):
            raise BudgetExhaustedError(
                f"dataset {request.dataset!r} has {line.remaining} of its privacy budget left; "
                f"this job needs {request.cost}"
            )
        return request

    def _admit(self, spec: JobSpec, request: ApprovalRequest | None) -> None:
        """After the checks: wait for this node's approver, or accept now."""
        if request is not None and self.policy.approvals_required:
            self.store.update(spec.job_id, state=JobState.AWAITING_APPROVAL.value)
            self.audit.append(
                "job_awaiting_approval",
                spec.job_id,
                {
                    "dataset": request.dataset,
                    "dataset_version": request.dataset_version,
                    "spec_sha256": spec.digest(),
                },
            )
        else:
            self._commit(spec, request)

    def _commit(self, spec: JobSpec, request: ApprovalRequest | None) -> None:
        """Charge the budget (before anything runs, never refunded) and accept the job."""
        fields: dict[str, JsonScalar] = {
            "spec_sha256": spec.digest(),
            "approvals_required": self.policy.approvals_required,
        }
        if request is not None:
            self.ledger.charge(spec.job_id, request.dataset, request.cost)
            self._admitted[spec.job_id] = request.payload()
            fields.update(dataset=request.dataset, dataset_version=request.dataset_version)
        self.store.update(spec.job_id, state=JobState.ACCEPTED.value)
        self.audit.append("job_accepted", spec.job_id, fields)

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
        self._operator_only(caller, "submit jobs")
        if spec.job_id:
            raise InvalidJobSpecError("leave job_id empty in a submission: the node assigns it")
        if spec.requester != self.party:
            raise InvalidJobSpecError(f"requester must be this node's party {self.party!r}")
        spec = dataclasses.replace(spec, job_id=new_job_id())
        self.store.create(spec, JobState.PROPOSED)
        self.audit.append("job_submitted", spec.job_id, self._spec_fields(spec))
        self._pool.submit(self._coordinate, spec)
        return spec.job_id

    def _admit_own(self, spec: JobSpec) -> str | None:
        """The requester's own admission; the reason when its own policy refuses the job."""
        try:
            self._admit(spec, self._check(spec, None))
        except BundError as exc:
            self._refuse(spec.job_id, str(exc))
            return str(exc)
        return None

    def _operator_only(self, caller: str, what: str) -> None:
        if caller != self.party:
            raise NotAuthorizedError(
                f"only {self.party}'s own operator may {what} at this node (caller: {caller})"
            )

    def approval_request(self, job_id: str, caller: str) -> ApprovalRequest:
        """What this node's approver is asked to sign for a job awaiting approval."""
        self._operator_only(caller, "read approval requests")
        status = self.store.get(job_id)
        if status.state is not JobState.AWAITING_APPROVAL:
            raise JobStateError(f"job {job_id} is {status.state.value}; it awaits no approval")
        request = self._approval_request(status.spec)
        if request is None:
            raise JobStateError(
                f"{self.party} brings no dataset to job {job_id}; nothing to approve"
            )
        return request

    def approve(self, job_id: str, caller: str, signature: bytes) -> None:
        """Record the approver's signature over the job, charge the budget, and accept it."""
        request = self.approval_request(job_id, caller)
        assert self.approver_key is not None  # approvals_required implies a key (see __init__)
        verify_approval(request, signature, self.approver_key)
        self.audit.append(
            "job_approved",
            job_id,
            {
                "spec_sha256": request.spec.digest(),
                "dataset": request.dataset,
                "dataset_version": request.dataset_version,
                "code_version": request.code_version,
                "approver": raw_key_id(self.approver_key),
                "signature": signature.hex(),
            },
        )
        try:
            self._commit(request.spec, request)
        except BundError as exc:
            self._refuse(job_id, str(exc))
            raise

    def deny(self, job_id: str, caller: str, reason: str) -> None:
        """Refuse a job at this node's approver's word; the requester learns the reason."""
        self._operator_only(caller, "deny jobs")
        status = self.store.get(job_id)
        if status.state not in (JobState.AWAITING_APPROVAL, JobState.ACCEPTED, JobState.PROPOSED):
            raise JobStateError(f"job {job_id} is {status.state.value}; too late to deny it")
        why = f"denied by {self.party}'s approver: {reason}"
        self.store.update(job_id, state=JobState.REFUSED.value, error=why)
        self.audit.append(
            "job_denied", job_id, {"spec_sha256": status.spec.digest(), "reason": reason[:500]}
        )
        if status.spec.requester != self.party:
            self._abort_peer(status.spec.requester, job_id, why)

    def _refuse(self, job_id: str, reason: str) -> None:
        self.store.update(job_id, state=JobState.REFUSED.value, error=reason)
        self.audit.append("job_refused", job_id, {"reason": reason})

    def _coordinate(self, spec: JobSpec) -> None:
        """Requester side: admit, propose; start all only once all accepted and approved.

        This node's own admission and the proposals run at once (each loads and hashes its own
        dataset), so a job's set-up costs the slowest party's check, not their sum. Proposals are
        control messages: no protocol message is sent before every party accepted.
        """
        others = [p for p in spec.parties if p != self.party]
        with ThreadPoolExecutor(max_workers=len(others) + 1) as pool:
            own = pool.submit(self._admit_own, spec)
            asked = {peer: pool.submit(self.peers.propose, peer, spec) for peer in others}
            own_refusal = own.result()
            answers: dict[str, tuple[bool, str] | BundError] = {}
            for peer, future in asked.items():
                try:
                    answers[peer] = future.result()
                except BundError as exc:
                    answers[peer] = exc
        proposed = [p for p, a in answers.items() if isinstance(a, tuple) and a[0]]
        try:
            if own_refusal is not None:
                self._call_off(spec, proposed, own_refusal, self.party, own_refusal)
                return
            for peer, answer in answers.items():
                if isinstance(answer, BundError):
                    raise answer
                if not answer[0]:
                    self._call_off(
                        spec, proposed, f"refused by {peer}: {answer[1]}", peer, answer[1]
                    )
                    return
            refusal = self._await_acceptance(spec, others)
            if refusal is not None:
                peer, reason = refusal
                self._call_off(spec, proposed, f"refused by {peer}: {reason}", peer, reason)
                return
            for peer in others:
                self.peers.start(peer, spec.job_id)
            self.audit.append("job_started", spec.job_id, {"parties": ",".join(spec.parties)})
        except BundError as exc:
            why = f"could not start the job: {exc}"
            if not self.store.get(spec.job_id).state.final:
                self.store.update(spec.job_id, state=JobState.FAILED.value, error=why)
            self.audit.append("job_failed", spec.job_id, {"reason": why})
            for done in proposed:
                self._abort_peer(done, spec.job_id, why)
            return
        self._run_role(spec)

    def _call_off(
        self, spec: JobSpec, proposed: list[str], why: str, peer: str, reason: str
    ) -> None:
        if not self.store.get(spec.job_id).state.final:
            self.store.update(spec.job_id, state=JobState.REFUSED.value, error=why)
        if peer != self.party:
            self.audit.append("job_refused_by_peer", spec.job_id, {"peer": peer, "reason": reason})
        for done in proposed:
            if done != peer:
                self._abort_peer(done, spec.job_id, why)

    def _await_acceptance(self, spec: JobSpec, others: list[str]) -> tuple[str, str] | None:
        """Wait until every participant (this one too) accepted; else return (party, why)."""
        deadline = time.monotonic() + self.approval_timeout
        pending = [self.party, *others]
        while pending:
            for party in list(pending):
                state = (
                    self.store.get(spec.job_id)
                    if party == self.party
                    else self.peers.status(party, spec.job_id)
                )
                if state.state is JobState.ACCEPTED:
                    pending.remove(party)
                elif state.state.final:
                    return party, state.error or state.state.value
            if pending:
                if time.monotonic() > deadline:
                    return pending[0], (
                        f"no approval within {self.approval_timeout:.0f} s; submit the job again "
                        "once its approver is available"
                    )
                time.sleep(self.poll_interval)
        return None

    # -- requester node -> participant nodes -----------------------------------------------

    def propose(
        self, spec: JobSpec, caller: str, caller_role: str | None = None
    ) -> tuple[bool, str]:
        """A requester asks this node to take part; check and answer (approval may follow)."""
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
            self._admit(spec, self._check(spec, caller_role))
        except BundError as exc:
            self._refuse(spec.job_id, str(exc))
            return False, str(exc)
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

    def cancel(self, job_id: str, caller: str, reason: str = "") -> None:
        """This node's operator calls a job off: stop the role here and tell every participant.

        The audit log here records who cancelled and why (``job_cancelled``); each peer's log
        records the abort it received from this party (``job_aborted``).
        """
        self._operator_only(caller, "cancel jobs")
        status = self.store.get(job_id)
        if status.state.final and status.state is not JobState.INTERRUPTED:
            raise JobStateError(f"job {job_id} is {status.state.value} already; nothing to cancel")
        why = f"cancelled by {self.party}'s operator" + (f": {reason}" if reason else "")
        self.audit.append(
            "job_cancelled",
            job_id,
            {"by": self.party, "state": status.state.value, "reason": reason[:500]},
        )
        self.store.update(job_id, state=JobState.ABORTED.value, error=why)
        self.mailbox.abort(job_id, why)
        if status.state is JobState.INTERRUPTED:
            self.resume.forget(job_id)
        for peer in status.spec.parties:
            if peer != self.party:
                self._abort_peer(peer, job_id, why)

    def abort(self, job_id: str, caller: str, reason: str) -> None:
        """A participant calls the job off; wake this node's role if it waits.

        The node's own operator calling it cancels the job everywhere (:meth:`cancel`).
        """
        if caller == self.party:
            self.cancel(job_id, caller, reason)
            return
        status = self.store.get(job_id)
        if caller not in status.spec.parties:
            raise NotAuthorizedError(f"{caller} takes no part in job {job_id}")
        self.mailbox.abort(job_id, f"{caller}: {reason}")
        if status.state is JobState.INTERRUPTED:
            self.store.update(job_id, state=JobState.ABORTED.value, error=f"{caller}: {reason}")
            self.resume.forget(job_id)
        elif not status.state.final:
            # Called off before it ran, the job was refused; once running, it was aborted.
            before_start = status.state in (
                JobState.PROPOSED,
                JobState.AWAITING_APPROVAL,
                JobState.ACCEPTED,
            )
            state = JobState.REFUSED if before_start else JobState.ABORTED
            self.store.update(job_id, state=state.value, error=f"{caller}: {reason}")
        self.audit.append("job_aborted", job_id, {"by": caller, "reason": reason[:500]})

    def deliver(
        self,
        job_id: str,
        caller: str,
        tag: str,
        payload: bytes,
        sha256: bytes,
        caller_role: str | None = None,
    ) -> bool:
        """Put a peer's message into this node's mailbox; True when it is new."""
        status = self.store.get(job_id)
        if caller not in status.spec.parties or caller == self.party:
            raise NotAuthorizedError(f"{caller} takes no part in job {job_id}; message refused")
        self.policy.check_counterparty(caller, caller_role)
        if status.state is JobState.SUCCEEDED and hmac.compare_digest(
            envelope_digest(job_id, tag, payload), sha256
        ):
            # A peer resumed after this node finished: its re-sent messages change nothing here.
            self.audit.append(
                "message_after_close",
                job_id,
                {"peer": caller, "tag": tag, "sha256": digest(payload).hex(), "size": len(payload)},
            )
            return False
        if status.state not in (JobState.ACCEPTED, JobState.RUNNING, JobState.INTERRUPTED):
            raise JobStateError(f"job {job_id} is {status.state.value}; it takes no messages")
        if not hmac.compare_digest(envelope_digest(job_id, tag, payload), sha256):
            why = (
                f"the message's digest does not bind it to job {job_id} and tag {tag!r}: it was "
                "altered, or moved from another job or slot; refused"
            )
            self.audit.append("message_refused", job_id, {"peer": caller, "tag": tag, "why": why})
            raise JobStateError(why)
        try:
            fresh = self.mailbox.put(job_id, caller, tag, payload)
        except EquivocationError as exc:
            self.audit.append(
                "equivocation",
                job_id,
                {"peer": caller, "tag": tag, "sha256": digest(payload).hex(), "size": len(payload)},
            )
            self._abort_everywhere(status.spec, f"{caller} equivocated: {exc}")
            raise
        if not fresh:
            self.audit.append(
                "message_duplicate",
                job_id,
                {"peer": caller, "tag": tag, "sha256": digest(payload).hex(), "size": len(payload)},
            )
        return fresh

    # -- reading -----------------------------------------------------------------------------

    def status(self, job_id: str, caller: str) -> JobStatus:
        """A job's status, for this node's operator or a participant."""
        status = self.store.get(job_id)
        if caller != self.party and caller not in status.spec.parties:
            raise NotAuthorizedError(f"{caller} takes no part in job {job_id}")
        return status

    def result(self, job_id: str, caller: str) -> ResultInfo:
        """A job's result (summary, artifact sizes) for this node's operator, at a receiver."""
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

    def read_artifact(
        self, job_id: str, caller: str, name: str, offset: int, limit: int
    ) -> tuple[bytes, int]:
        """A page of one of a result's artifacts, for this node's operator."""
        self.result(job_id, caller)
        if limit <= 0 or offset < 0:
            raise JobStateError("read an artifact with a positive page size from offset >= 0")
        return self.store.read_artifact(job_id, name, offset, limit)

    def list(self, caller: str, limit: int = 50) -> list[JobStatus]:
        """The newest jobs, for this node's operator."""
        if caller != self.party:
            raise NotAuthorizedError("only this node's own operator may list its jobs")
        return self.store.list(max(1, min(limit, 1000)))

    # -- running a role ----------------------------------------------------------------------

    def _run_role(self, spec: JobSpec, resumed: bool = False) -> None:
        job_id = spec.job_id
        with self._lock:
            if job_id in self._running:
                return
            self._running.add(job_id)
            self._started.setdefault(job_id, time.monotonic())
            self._last_seen[job_id] = dict.fromkeys(spec.parties, time.monotonic())
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
            states=self.resume,
            prior_results=self._prior_result,
            charge=functools.partial(self._charge_part, spec),
            executor=self.executor,
            transcript=self.resume.transcript(job_id) if resumed else (),
            alive=functools.partial(self._peer_alive, job_id),
        )
        self.store.update(job_id, state=JobState.RUNNING.value)
        try:
            request = self._approval_request(spec)
            admitted = self._admitted.pop(job_id, None)
            if request is not None and admitted is not None and request.payload() != admitted:
                raise ApprovalError(
                    f"dataset {request.dataset!r} or the code changed since this job was "
                    "approved; submit it again for a new approval"
                )
            result = definition.roles[me.role](ctx)
            if result is not None and self.party not in spec.receivers:
                raise RuntimeError(f"protocol {spec.protocol} produced a result for a non-receiver")
            transcript = ctx.transcript_digest()
            peer_digests = self._exchange_closing(
                spec, transcript, definition.dropouts(spec, self.party)
            )
            receipt = self._receipt(spec, definition, request, transcript)
            if result is not None:
                artifacts = {**result.artifacts, "receipt.json": _receipt_json(receipt)}
                self.store.save_result(job_id, Result(result.summary, artifacts))
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
            dropped = sorted(set(spec.parties) - {self.party} - set(peer_digests))
            if dropped:
                fields["dropped"] = ",".join(dropped)
            self.audit.append("privacy_receipt", job_id, receipt)
            self.audit.append("job_closed", job_id, fields)
            self.resume.forget(job_id)
        finally:
            self.mailbox.forget(job_id)
            with self._lock:
                self._running.discard(job_id)
                self._last_seen.pop(job_id, None)
                state = self.store.get(job_id).state
                if state is not JobState.RUNNING:
                    self._started.pop(job_id, None)
                if state.final and state is not JobState.INTERRUPTED:
                    self._healed.pop(job_id, None)
                    self._resumed_at.pop(job_id, None)

    def _charge_part(self, spec: JobSpec, part: str, cost: Budget) -> None:
        """Charge this party's dataset for one part of a running job (a training round)."""
        dataset = spec.participant(self.party).dataset
        if dataset is None:
            raise BudgetExhaustedError(f"{self.party} brings no dataset to charge in this job")
        self.ledger.charge(spec.job_id, dataset, cost, part)

    def _prior_result(self, job_id: str, protocol: str) -> Result:
        """This node's own result of an earlier job that succeeded here with ``protocol``."""
        try:
            status = self.store.get(job_id)
        except UnknownJobError:
            status = None
        result = self.store.load_full_result(job_id) if status is not None else None
        if (
            status is None
            or result is None
            or status.state is not JobState.SUCCEEDED
            or status.spec.protocol != protocol
        ):
            raise PriorResultError(
                f"{self.party} holds no result of a succeeded {protocol} job {job_id}"
            )
        return result

    def _receipt(
        self,
        spec: JobSpec,
        definition: ProtocolDef,
        request: ApprovalRequest | None,
        transcript: str,
    ) -> dict[str, JsonScalar]:
        """This party's privacy receipt: protocol, crypto, what each learned, budget, digest."""
        receipt: dict[str, JsonScalar] = {
            "protocol": spec.protocol,
            "protocol_version": definition.version,
            "crypto": definition.description,
            "code_version": self.code_version,
            "spec_sha256": spec.digest(),
            "result_to": ",".join(spec.receivers),
            "transcript_sha256": transcript,
        }
        receipt.update(
            {f"learned.{p}": what for p, what in sorted(definition.learns(spec).items())}
        )
        if request is not None:
            receipt.update(
                dataset=request.dataset,
                dataset_version=request.dataset_version,
                level=request.level,
                records=self._table(request.dataset).num_rows,
                epsilon=format_rational(request.cost.epsilon),
                delta=format_rational(request.cost.delta),
            )
        return receipt

    def _exchange_closing(
        self, spec: JobSpec, transcript: str, dropouts: frozenset[str] = frozenset()
    ) -> dict[str, str]:
        """Send our transcript digest to each peer and collect theirs (countersigned in our log).

        Peers in ``dropouts`` (the role carried on without them) are sent the digest if they are
        reachable and waited for one heartbeat interval at most; the others must answer.
        """
        payload = json.dumps({"party": self.party, "transcript_sha256": transcript}).encode()
        others = [p for p in spec.parties if p != self.party]
        for peer in others:
            try:
                self.peers.deliver(spec.job_id, peer, CLOSE_TAG, payload)
            except BundError:
                if peer not in dropouts:
                    raise
                continue
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
            patience = self._closing_patience(spec.job_id, peer, dropouts)
            try:
                envelope = self.mailbox.take(spec.job_id, peer, CLOSE_TAG, patience)
            except PeerTimeoutError:
                if peer not in dropouts:
                    raise
                continue
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

    @property
    def _heartbeat_timeout(self) -> float:
        """How long one heartbeat may take: a busy peer is slow, not silent."""
        return min(self.peer_silence / 2, max(self.heartbeat_interval, 2.0))

    def _peer_alive(self, job_id: str, peer: str) -> bool:
        """Whether ``peer`` answered a heartbeat of ``job_id`` within ``peer_silence_s``."""
        with self._lock:
            seen = self._last_seen.get(job_id, {}).get(peer)
        return seen is None or time.monotonic() - seen < self.peer_silence

    def _closing_patience(self, job_id: str, peer: str, dropouts: frozenset[str]) -> float:
        """How long to wait for ``peer``'s closing message: briefly for a silent drop-out."""
        if peer not in dropouts or self._peer_alive(job_id, peer):
            return self.recv_timeout
        return self.heartbeat_interval

    def _fail(self, spec: JobSpec, ctx: RoleContext, exc: Exception) -> None:
        job_id = spec.job_id
        current = self.store.get(job_id).state
        if isinstance(exc, _FAULTS) and current in (JobState.RUNNING, JobState.INTERRUPTED):
            if self.protocols[spec.protocol].resumable:
                self._interrupted(spec, ctx, str(exc))
                return
            exc = JobStateError(f"{exc} ({spec.protocol} cannot resume: submit the job again)")
        self.resume.forget(job_id)
        if isinstance(exc, BundError):
            reason = str(exc)
        else:
            log.exception("job %s: %s role crashed", job_id, self.party)
            reason = (
                f"internal error in {self.party}'s role; its operator can find it in the node log"
            )
        aborted = isinstance(exc, JobAbortedError)
        state = JobState.ABORTED if aborted else JobState.FAILED
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

    def _interrupted(self, spec: JobSpec, ctx: RoleContext, reason: str) -> None:
        """A fault stopped the role: keep its resume states and inbox, so the job can resume.

        The watcher resumes the job by itself once every peer answers again (at most
        :data:`AUTO_RESUMES` times; then only an operator's ``bund job resume`` does).
        """
        self.store.update(spec.job_id, state=JobState.INTERRUPTED.value, error=reason[:1000])
        with self._lock:
            if self._healed.get(spec.job_id, 0) < AUTO_RESUMES:
                self._healing.add(spec.job_id)
        self.audit.append(
            "job_interrupted",
            spec.job_id,
            {
                "reason": reason[:500],
                "transcript_sha256": ctx.transcript_digest(),
                "messages": len(ctx.transcript),
            },
        )
        log.warning("job %s interrupted at %s: %s", spec.job_id, self.party, reason)

    # -- faults: heartbeats, deadlines, restarts, resumption -----------------------------------

    def _watch(self) -> None:
        """Every heartbeat interval: enforce job deadlines and ask each peer how the job stands."""
        tick = time.monotonic()
        while not self._stopping.wait(self.heartbeat_interval):
            now = time.monotonic()
            stalled, tick = now - tick > 2 * self.heartbeat_interval + 1, now
            with self._lock:
                running = list(self._last_seen)
                if stalled:  # this node was frozen or starved, not its peers: start afresh
                    for seen in self._last_seen.values():
                        for peer in seen:
                            seen[peer] = now
            for job_id in running:
                try:
                    self._check_job(job_id)
                except Exception:  # noqa: BLE001 - the watcher must outlive any one job
                    log.exception("heartbeat check of job %s failed", job_id)
            with self._lock:
                healing = list(self._healing)
                self._healing.clear()
            for job_id in healing:  # off the watcher's thread: a peer may be slow to answer
                self._beats.submit(self._heal, job_id)

    def _heal(self, job_id: str) -> None:
        """Resume an interrupted job by itself once every peer answers and none has ended it."""
        try:
            status = self.store.get(job_id)
            if status.state is not JobState.INTERRUPTED:
                return
            for peer in status.spec.parties:
                if peer == self.party:
                    continue
                try:
                    theirs = self.peers.status(peer, job_id, timeout=self._heartbeat_timeout)
                except BundError:
                    with self._lock:  # still unreachable: ask again at the next heartbeat
                        self._healing.add(job_id)
                    return
                if theirs.state.final and theirs.state is not JobState.INTERRUPTED:
                    return  # a peer ended the job: only an operator can decide what next
            with self._lock:
                self._healed[job_id] = self._healed.get(job_id, 0) + 1
            log.info("every peer of job %s answers again: resuming it", job_id)
            self.resume_job(job_id, self.party)
        except Exception:  # noqa: BLE001 - a pool task: log what would otherwise vanish
            log.exception("could not heal job %s", job_id)

    def _check_job(self, job_id: str) -> None:
        now = time.monotonic()
        started = self._started.get(job_id, now)
        if now - started > self.job_deadline:
            self.mailbox.abort(
                job_id,
                f"DEADLINE_EXCEEDED: the job ran longer than this node's job deadline of "
                f"{self.job_deadline:.0f} s (job_deadline_s)",
            )
            return
        with self._lock:
            seen = dict(self._last_seen.get(job_id, {}))
        spec = self.store.get(job_id).spec
        tolerated = self.protocols[spec.protocol].dropouts(spec, self.party)
        for peer in spec.parties:
            if peer == self.party or peer in tolerated:
                continue
            silent = now - seen.get(peer, now)
            if silent > self.peer_silence:
                self.mailbox.interrupt(
                    job_id,
                    f"DEADLINE_EXCEEDED: {peer} has not answered a heartbeat for {silent:.0f} s "
                    f"(peer_silence_s = {self.peer_silence:.0f}); the job is interrupted and "
                    f"resumes with `bund job resume {job_id}` once {peer} is back",
                )
                return
            with self._lock:
                if (job_id, peer) in self._beating:
                    continue  # the last heartbeat to this peer has not come back yet
                self._beating.add((job_id, peer))
            self._beats.submit(self._heartbeat, job_id, peer)

    def _heartbeat(self, job_id: str, peer: str) -> None:
        """Ask ``peer`` for its view of the job; note that it answered, follow where it ended.

        An answer to a question asked before this node last resumed the job is stale (the peer
        was asked to resume too), so only its proof of life counts.
        """
        asked = time.monotonic()
        try:
            status = self.peers.status(peer, job_id, timeout=self._heartbeat_timeout)
        except BundError:
            return  # silence: the watcher interrupts the job once it lasts peer_silence_s
        finally:
            with self._lock:
                self._beating.discard((job_id, peer))
        with self._lock:
            if job_id in self._last_seen:
                self._last_seen[job_id][peer] = time.monotonic()
            stale = asked < self._resumed_at.get(job_id, 0.0)
        if stale:
            return
        if status.state is JobState.INTERRUPTED:
            self.mailbox.interrupt(job_id, f"{peer} interrupted the job: {status.error}")
        elif status.state in (JobState.FAILED, JobState.ABORTED, JobState.REFUSED):
            self.mailbox.abort(job_id, f"{peer} ended the job {status.state.value}: {status.error}")

    def recover(self) -> None:
        """After a restart: resume the jobs this node was running, fail those it was starting.

        A job that was running here is interrupted by the restart and resumed at once from its
        resume states (its peers are asked to resume too). A job this node had submitted but not
        yet started cannot be coordinated any more: it fails, and the peers are told.
        """
        for status in self.store.unfinished():
            job_id = status.spec.job_id
            resumable = self.protocols[status.spec.protocol].resumable
            if status.state is JobState.RUNNING and not resumable:
                why = f"this node restarted, and {status.spec.protocol} cannot resume: submit again"
                self.store.update(job_id, state=JobState.FAILED.value, error=why)
                seen = self.resume.transcript(job_id)
                self.audit.append(
                    "job_closed",
                    job_id,
                    {
                        "outcome": "failed",
                        "reason": why,
                        "transcript_sha256": transcript_digest(job_id, self.party, seen),
                        "messages": len(seen),
                    },
                )
                self.resume.forget(job_id)
                self._pool.submit(self._abort_peers, status.spec, why)
            elif status.state is JobState.RUNNING:
                self.store.update(
                    job_id, state=JobState.INTERRUPTED.value, error="this node restarted"
                )
                self.audit.append("job_interrupted", job_id, {"reason": "node restarted"})
                self._pool.submit(self._resume_after_restart, job_id)
            elif status.spec.requester == self.party:
                why = "the requester's node restarted before the job started; submit it again"
                self.store.update(job_id, state=JobState.FAILED.value, error=why)
                self.audit.append("job_failed", job_id, {"reason": why})
                self._pool.submit(self._abort_peers, status.spec, why)

    def _resume_after_restart(self, job_id: str) -> None:
        """Resume a job the restart interrupted (a pool task: peers may be slow to answer)."""
        try:
            self.resume_job(job_id, self.party)
        except BundError as exc:
            log.warning("could not resume job %s after a restart: %s", job_id, exc)

    def _abort_peers(self, spec: JobSpec, why: str) -> None:
        """Tell every other participant that the job is off (a pool task)."""
        for peer in spec.parties:
            if peer != self.party:
                self._abort_peer(peer, spec.job_id, why)

    def resume_job(self, job_id: str, caller: str) -> None:
        """Run an interrupted job's role again from its resume states.

        This node's operator (or its restart) also asks every other participant to resume; a
        participant asking resumes only this node's role. A running job is left as it is.
        """
        status = self.store.get(job_id)
        if caller != self.party and caller not in status.spec.parties:
            raise NotAuthorizedError(f"{caller} takes no part in job {job_id}")
        if status.state is JobState.RUNNING:
            return
        if status.state is not JobState.INTERRUPTED:
            raise JobStateError(
                f"job {job_id} is {status.state.value}; only an interrupted job can be resumed"
            )
        if not self.protocols[status.spec.protocol].resumable:
            raise JobStateError(f"{status.spec.protocol} cannot resume: submit the job again")
        self.audit.append("job_resumed", job_id, {"by": caller})
        with self._lock:
            self._resumed_at[job_id] = time.monotonic()
        self.mailbox.reopen(job_id, self.resume.inbox(job_id))
        self.store.update(job_id, state=JobState.RUNNING.value, error="")
        if caller == self.party:
            for peer in status.spec.parties:
                if peer != self.party:
                    try:
                        self.peers.resume(peer, job_id)
                    except BundError as exc:
                        log.warning("could not ask %s to resume job %s: %s", peer, job_id, exc)
        self._pool.submit(self._run_role, status.spec, True)

    def _abort_everywhere(self, spec: JobSpec, why: str) -> None:
        """Abort a job here and tell every other participant (a protocol violation was seen)."""
        self.mailbox.abort(spec.job_id, why)
        if not self.store.get(spec.job_id).state.final:
            self.store.update(spec.job_id, state=JobState.ABORTED.value, error=why)
        self._abort_peers(spec, why)

    def _abort_peer(self, peer: str, job_id: str, reason: str) -> None:
        try:
            self.peers.abort(peer, job_id, reason)
        except BundError as exc:
            log.warning("could not tell %s to abort job %s: %s", peer, job_id, exc)

    def shutdown(self) -> None:
        """Stop taking work and wait for running roles to finish or fail."""
        self._stopping.set()
        self._watcher.join()
        self._beats.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.executor.close()
