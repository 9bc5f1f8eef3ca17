"""N job managers wired together in one process: the lifecycle without gRPC, TLS or processes.

``LoopbackPeers`` implements the peer interface (``PeerControl``) by calling the other managers'
methods directly, with the caller's party as identity, the way a node's servicers would after
TLS told them who called. A party can be cut off (``Loopback.cut``): every call to or from it
fails as an unreachable peer does, until it is ``restore``d. Managers use in-memory job and audit
stores and SQLite files for the resume store and the ledger (under a temporary directory), so
admission, approval, refusal, cancel, interrupt/resume, closing and drop-outs run in milliseconds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import Field

from bund.compute.dp.budget import Budget
from bund.compute.errors import BundError
from bund.parties.audit import (
    AuditLog,
    AuditRecord,
    AuditStoreUnavailableError,
    MemoryAuditStore,
)
from bund.parties.data import Table
from bund.parties.errors import PeerUnavailableError
from bund.parties.jobs import (
    JobContext,
    JobSpec,
    Participant,
    ProtocolDef,
    ProtocolParams,
    Result,
    RoleRequirement,
)
from bund.parties.ledger import BudgetLedger
from bund.parties.lifecycle.manager import JobManager, LifecycleTiming, NodeStores
from bund.parties.lifecycle.states import JobState, JobStatus, is_terminal
from bund.parties.lifecycle.store import MemoryJobStore
from bund.parties.policy import DEFAULT_LIMITS, DatasetPolicy, Policy
from bund.parties.resume import ResumeStore
from bund.parties.transport import Mailbox, envelope_digest

#: Fast timing for tests: heartbeats every 50 ms, a peer silent for 0.4 s interrupts a job.
FAST = LifecycleTiming(
    recv_timeout=10.0,
    approval_timeout=10.0,
    heartbeat_interval=0.05,
    peer_silence=0.4,
    job_deadline=60.0,
    max_workers=8,
)


def _clock() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class FlakyAuditStore(MemoryAuditStore):
    """An in-memory audit store that a test can take down (every append, or some events)."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse: Callable[[AuditRecord], bool] = lambda record: False

    def append(self, record: AuditRecord) -> None:
        """Refuse the records the test says, as a locked or unreachable store would."""
        if self.refuse(record):
            raise AuditStoreUnavailableError("the audit store is down (test)")
        super().append(record)

    def down(self) -> None:
        """Refuse every record."""
        self.refuse = lambda record: True

    def up(self) -> None:
        """Take every record again."""
        self.refuse = lambda record: False


class LoopbackPeers:
    """``PeerControl`` for one party: calls the other parties' managers directly."""

    def __init__(self, party: str, loop: Loopback) -> None:
        self.party = party
        self._loop = loop

    def _to(self, to: str) -> JobManager:
        if to in self._loop.cut_off or self.party in self._loop.cut_off:
            raise PeerUnavailableError(f"{to} is unreachable from {self.party} (cut off)")
        return self._loop.managers[to]

    def deliver(self, job_id: str, to: str, tag: str, payload: bytes) -> None:
        """Put a message into ``to``'s mailbox."""
        self._to(to).deliver(
            job_id, self.party, tag, payload, envelope_digest(job_id, tag, payload)
        )

    def propose(self, to: str, spec: JobSpec) -> tuple[bool, str]:
        """Propose ``spec`` to ``to``; an error it answers is a refusal, as over gRPC."""
        target = self._to(to)
        try:
            return target.propose(spec, self.party)
        except PeerUnavailableError:
            raise
        except BundError as exc:
            return False, str(exc)

    def start(self, to: str, job_id: str) -> None:
        """Tell ``to`` to start."""
        self._to(to).start(job_id, self.party)

    def abort(self, to: str, job_id: str, reason: str) -> None:
        """Tell ``to`` the job is off."""
        self._to(to).abort(job_id, self.party, reason)

    def status(self, to: str, job_id: str, timeout: float | None = None) -> JobStatus:
        """``to``'s view of the job."""
        return self._to(to).status(job_id, self.party)

    def resume(self, to: str, job_id: str) -> None:
        """Ask ``to`` to resume its role."""
        self._to(to).resume_job(job_id, self.party)


@dataclass
class PartySetup:
    """One party of a loopback federation: its datasets, budget and whether it approves."""

    datasets: Mapping[str, Mapping[str, Sequence[str]]] = field(default_factory=dict)
    approvals: bool = False
    budget_epsilon: Fraction = Fraction(0)
    level: str = "public"
    max_epsilon_per_job: Fraction | None = None
    max_epsilon_per_requester: Fraction | None = None
    limits: Mapping[str, int] = field(default_factory=dict)
    #: The party's approvers, by name (when ``approvals``), and how many must approve.
    approver_names: tuple[str, ...] = ("approver",)
    quorum: int = 1
    #: Counterparty -> protocols this party trusts it to follow; who may receive scores.
    trusted_for: Mapping[str, frozenset[str]] = field(default_factory=dict)
    release_scores_to: frozenset[str] = frozenset()


@dataclass
class Loopback:
    """A federation of managers in one process."""

    root: Path
    protocols: Mapping[str, ProtocolDef]
    timing: LifecycleTiming = FAST
    managers: dict[str, JobManager] = field(default_factory=dict)
    audits: dict[str, FlakyAuditStore] = field(default_factory=dict)
    approvers: dict[str, dict[str, Ed25519PrivateKey]] = field(default_factory=dict)
    cut_off: set[str] = field(default_factory=set)

    def add(self, party: str, setup: PartySetup, others: Sequence[str]) -> JobManager:
        """Start ``party``'s manager; ``others`` are its allowed counterparties."""
        home = self.root / party
        home.mkdir(parents=True, exist_ok=True)
        store = FlakyAuditStore()
        audit = AuditLog(store, Ed25519PrivateKey.generate(), party, _clock)
        datasets = {
            name: DatasetPolicy(
                owner=party,
                level=setup.level,
                budget=Budget(setup.budget_epsilon),
                max_epsilon_per_job=setup.max_epsilon_per_job,
                max_epsilon_per_requester=setup.max_epsilon_per_requester,
                release_scores_to=setup.release_scores_to,
            )
            for name in setup.datasets
        }
        policy = Policy(
            counterparties={o: frozenset({o}) for o in others},
            trusted_for=dict(setup.trusted_for),
            datasets=datasets,
            cohort_floor=1,
            approvals_required=setup.approvals,
            quorum=setup.quorum,
            limits={**DEFAULT_LIMITS, **setup.limits},
        )
        approvers = {name: Ed25519PrivateKey.generate() for name in setup.approver_names}
        tables = {
            name: (lambda n=name, cols=cols: Table.from_columns(n, cols))
            for name, cols in setup.datasets.items()
        }
        resume = ResumeStore(home / "resume.db", os.urandom(32))
        manager = JobManager(
            party=party,
            protocols=self.protocols,
            policy=policy,
            tables=tables,
            stores=NodeStores(
                audit=audit,
                jobs=MemoryJobStore(audit),
                resume=resume,
                ledger=BudgetLedger(
                    home / "budget.db", {n: d.budget_limits for n, d in datasets.items()}, audit
                ),
            ),
            mailbox=Mailbox(64 << 20, journal=resume),
            peers=LoopbackPeers(party, self),
            approvers=(
                {n: k.public_key() for n, k in approvers.items()} if setup.approvals else {}
            ),
            code_version="test",
            timing=self.timing,
        )
        self.managers[party] = manager
        self.audits[party] = store
        self.approvers[party] = approvers
        return manager

    def restart(self, party: str) -> JobManager:
        """Stop ``party``'s manager and start a new one on the same stores, as a node restart.

        What a node keeps on disk (jobs, approvals, the ledger, resume states) carries over;
        what it held in memory (its mailbox, its threads) does not.
        """
        old = self.managers[party]
        old.shutdown()
        new = JobManager(
            party=party,
            protocols=self.protocols,
            policy=old.admission.policy,
            tables=old.admission.tables,
            stores=NodeStores(
                audit=old.audit, jobs=old.store, resume=old.resume, ledger=old.ledger
            ),
            mailbox=Mailbox(64 << 20, journal=old.resume),
            peers=LoopbackPeers(party, self),
            approvers=old.admission.approvers,
            code_version="test",
            timing=self.timing,
        )
        self.managers[party] = new
        new.recover()
        return new

    def cut(self, party: str) -> None:
        """Make ``party`` unreachable, and unable to reach anyone."""
        self.cut_off.add(party)

    def restore(self, party: str) -> None:
        """Reconnect ``party``."""
        self.cut_off.discard(party)

    def events(self, party: str, job_id: str) -> list[str]:
        """The audit events ``party`` recorded for ``job_id``, in order."""
        return [r.event for r in self.audits[party].read() if r.job_id == job_id]

    def records(self, party: str, job_id: str, event: str) -> list[Mapping[str, object]]:
        """The fields of ``party``'s ``event`` records of ``job_id``."""
        return [
            r.fields for r in self.audits[party].read() if r.job_id == job_id and r.event == event
        ]

    def approve(self, party: str, job_id: str, approver: str = "approver") -> None:
        """One of ``party``'s approvers signs the job, as `bund job approve` does."""
        manager = self.managers[party]
        request = manager.approval_request(job_id, party)
        manager.approve(job_id, party, self.approvers[party][approver].sign(request.payload()))

    def wait(
        self,
        party: str,
        job_id: str,
        until: Callable[[JobStatus], bool] = lambda s: is_terminal(s.state),
        timeout: float = 10.0,
    ) -> JobStatus:
        """Wait, without polling, until ``party``'s view of the job satisfies ``until``."""
        store = self.managers[party].store
        deadline = time.monotonic() + timeout
        seen: JobStatus | None = None
        while True:
            status = store.find(job_id)
            if status is not None and until(status):
                return status
            left = deadline - time.monotonic()
            assert left > 0, f"{party}: job {job_id} is {status and status.state.value}"
            if status is None:
                threading.Event().wait(min(left, 0.01))  # not proposed here yet
                continue
            seen = store.wait_for_change(job_id, status if seen is None else seen, left)

    def wait_state(self, party: str, job_id: str, state: JobState, timeout: float = 10.0) -> None:
        """Wait until ``party`` holds the job in ``state``."""
        self.wait(party, job_id, lambda s: s.state is state, timeout)

    def close(self) -> None:
        """Stop every manager and close its stores."""
        for manager in self.managers.values():
            manager.shutdown()
        for manager in self.managers.values():
            manager.resume.close()
            manager.ledger.close()


def spec(
    protocol: str,
    parties: Sequence[tuple[str, str, str | None]],
    receivers: Sequence[str],
    params: Mapping[str, str | int | float | bool] | None = None,
    columns: Mapping[str, str] | None = None,
) -> JobSpec:
    """A spec requested by the first party; ``parties`` holds (party, role, dataset)."""
    return JobSpec(
        protocol=protocol,
        participants=tuple(
            Participant(p, r, d, dict(columns or {}) if d else {}) for p, r, d in parties
        ),
        receivers=tuple(receivers),
        purpose="lifecycle test",
        requester=parties[0][0],
        params=dict(params or {}),
    )


# -- protocols for lifecycle tests -----------------------------------------------------------


class Gate:
    """A switch a test flips to let a waiting role go on (per job id)."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def event(self, job_id: str) -> threading.Event:
        """The event of ``job_id``."""
        with self._lock:
            return self._events.setdefault(job_id, threading.Event())

    def open(self, job_id: str) -> None:
        """Let ``job_id``'s roles go on."""
        self.event(job_id).set()


GATE = Gate()


class GateParams(ProtocolParams):
    """The test protocols' parameters."""

    gated: bool = Field(default=False, description="wait until the test opens the gate")
    epsilon: str = Field(default="0", description="the privacy cost charged to each dataset")


def _wait_for_gate(ctx: JobContext) -> None:
    """In a job with ``gated = true``, wait until the test opens the gate (or the job ends)."""
    if GateParams.of(ctx.spec).gated:
        while not GATE.event(ctx.spec.job_id).wait(0.02):
            ctx.progress("gate", 0, 1)  # raises once the job is aborted


def _exchange(ctx: JobContext) -> Result | None:
    """Each member sends its row count to the other, after the test opens the gate."""
    (peer,) = (p for p in ctx.spec.parties if p != ctx.party)
    _wait_for_gate(ctx)
    ctx.send(peer, "count", str(ctx.table().num_rows).encode())
    theirs = int(ctx.recv(peer, "count"))
    ctx.record("exchange.done", {"theirs": theirs})
    if ctx.party not in ctx.spec.receivers:
        return None
    return Result({"mine": ctx.table().num_rows, "theirs": theirs}, {"x.json": b"{}"})


EXCHANGE = ProtocolDef(
    name="exchange",
    version="1",
    roles={"member": _exchange},
    outputs=lambda spec: frozenset({"cardinality"}),
    learns=lambda spec: dict.fromkeys(spec.parties, "the other party's row count"),
    params=GateParams,
    role_requirements={"member": RoleRequirement(min=2, max=2)},
    cost=lambda spec, party: Budget(Fraction(GateParams.of(spec).epsilon)),
)


def _gather_coordinator(ctx: JobContext) -> Result | None:
    """Collect one number from each member that answers in time; carry on without the rest."""
    members = [p.party for p in ctx.spec.participants if p.role == "member"]
    got: dict[str, int] = {}
    for member in members:
        try:
            got[member] = int(ctx.recv(member, "value"))
        except BundError:
            continue
    return Result({"sum": sum(got.values()), "answered": len(got)})


def _gather_member(ctx: JobContext) -> Result | None:
    _wait_for_gate(ctx)
    ctx.send(ctx.spec.requester, "value", json.dumps(ctx.table().num_rows).encode())
    return None


GATHER = ProtocolDef(
    name="gather",
    version="1",
    roles={"coordinator": _gather_coordinator, "member": _gather_member},
    params=GateParams,
    role_requirements={
        "coordinator": RoleRequirement(dataset=False, receives=True),
        "member": RoleRequirement(min=1, max=None),
    },
    outputs=lambda spec: frozenset({"cardinality"}),
    learns=lambda spec: {spec.requester: "the sum of the members' row counts"},
    # Every member may drop out: the coordinator carries on without it, and the other members
    # talk only to the coordinator.
    dropouts=lambda spec, party: (
        frozenset(p.party for p in spec.participants if p.role == "member") - {party}
    ),
)


class RoundsParams(ProtocolParams):
    """A job that pays per round."""

    rounds: int = Field(default=3, ge=1, description="rounds planned (and approved)")
    run: int = Field(default=-1, description="rounds actually run (-1: as planned)")
    unit: str = Field(default="1/10", description="the ε each round costs")


def _rounds(ctx: JobContext) -> Result | None:
    """Each member charges one unit per round it runs; a deviating spec runs more than planned."""
    params = RoundsParams.of(ctx.spec)
    run = params.rounds if params.run < 0 else params.run
    for k in range(run):
        ctx.charge(f"round-{k}", Budget(Fraction(params.unit)))
    return Result({"rounds": run}) if ctx.party in ctx.spec.receivers else None


ROUNDS = ProtocolDef(
    name="rounds",
    version="1",
    roles={"member": _rounds},
    outputs=lambda spec: frozenset({"dp_aggregate"}),
    learns=lambda spec: dict.fromkeys(spec.parties, "nothing"),
    params=RoundsParams,
    role_requirements={"member": RoleRequirement(min=1, max=None)},
    cost=lambda spec, party: Budget(
        RoundsParams.of(spec).rounds * Fraction(RoundsParams.of(spec).unit)
    ),
    pays_as_it_goes=True,
)


def iter_pairs(states: Sequence[JobState]) -> Iterator[tuple[JobState, JobState]]:
    """Every ordered pair of states."""
    for a in states:
        for b in states:
            yield a, b
