"""Job specs, the JobContext a protocol role sees, results, and protocol definitions.

The spec and result values live in ``bund.parties.jobspec`` (light enough for ``bund job
status``); this module re-exports them.

A protocol role is a function ``run(ctx: JobContext) -> Result | None``. It reaches the other
parties only through ``ctx.send`` / ``ctx.recv``, so the same code runs over the in-memory
transport (unit tests) and the gRPC transport (separate node processes).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import secrets
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, Self

from pydantic import ValidationError

from bund.compute.dp.budget import Budget
from bund.compute.errors import BundError
from bund.compute.executor import Executor, InlineExecutor
from bund.parties.jobspec import InvalidJobSpecError as InvalidJobSpecError
from bund.parties.jobspec import JobSpec as JobSpec
from bund.parties.jobspec import JsonScalar as JsonScalar
from bund.parties.jobspec import Participant as Participant
from bund.parties.jobspec import Result as Result
from bund.parties.jobspec import check_artifact_name as check_artifact_name
from bund.parties.jobspec import check_name as check_name
from bund.parties.jobspec import is_job_id as is_job_id
from bund.parties.schema import StrictModel, did_you_mean, problems
from bund.parties.transport import (
    InMemoryNetwork,
    JobAbortedError,
    Mailbox,
    MessagePlan,
    Transport,
    check_tag,
    digest,
)

if TYPE_CHECKING:
    from bund.parties.data import Table

log = logging.getLogger(__name__)


class JobContext(Protocol):
    """Everything a protocol role may touch: its job, its peers' mailboxes, its own data."""

    @property
    def spec(self) -> JobSpec:
        """The job being run."""
        ...

    @property
    def party(self) -> str:
        """This party's name."""
        ...

    def send(self, to: str, tag: str, payload: bytes) -> None:
        """Deliver ``payload`` to party ``to`` under ``tag`` (unique per job and channel)."""
        ...

    def recv(self, frm: str, tag: str) -> bytes:
        """Wait for the payload that ``frm`` sent under ``tag`` and return it."""
        ...

    def table(self) -> Table:
        """This party's own dataset as bound in the spec (never another party's)."""
        ...

    def progress(self, phase: str, done: int, total: int) -> None:
        """Report progress of a long phase (shown by ``bund job status``).

        Raises ``JobAbortedError`` once the job was cancelled or aborted, so a long computation
        that reports progress stops there.
        """
        ...

    def record(self, event: str, fields: Mapping[str, JsonScalar]) -> None:
        """Append a protocol-level record (never raw data) to this party's audit log."""
        ...

    def limit(self, name: str) -> int:
        """A numeric limit from this node's policy (for example ``psi_max_set_size``)."""
        ...

    def save_state(self, name: str, state: bytes) -> None:
        """Durably save this role's resume ``state`` under ``name`` so a restarted node resumes.

        Call it *before* sending what the state determines (write-ahead): a resumed role that
        restores the state re-sends byte-identical messages, which peers' mailboxes treat as
        no-ops, whereas fresh randomness would be refused as equivocation. The node encrypts
        resume states at rest; a later call under the same name replaces the earlier state.
        """
        ...

    def load_state(self, name: str) -> bytes | None:
        """The state an earlier run of this job saved under ``name`` at this node, or ``None``."""
        ...

    def save_kept(self, name: str, state: bytes) -> None:
        """Durably keep ``state`` under ``name`` at this node beyond this job, for later jobs.

        Sealed at rest like resume states, but not deleted when the job ends: for a secret that
        must outlive one job and never leave the node (an unbalanced PSI holder's key per
        querying party). A later call under the same name replaces it.
        """
        ...

    def load_kept(self, name: str) -> bytes | None:
        """The state some job kept under ``name`` at this node (``save_kept``), or ``None``."""
        ...

    def scratch_dir(self) -> Path:
        """A directory of this role's own for spill files, kept until the job ends.

        It survives a restart of the node, so a resumed role finds its files again, and it is
        deleted with the job's resume states. Its files are not sealed: put only what the node's
        operator may read there (blinded values, row numbers), never a secret key.
        """
        ...

    def prior_result(self, job_id: str, protocol: str) -> Result:
        """This party's own result of an earlier ``protocol`` job that succeeded here.

        How a model trained in one job is applied in another (each party keeps its own part of
        a vertical model as its own result). Raises ``PriorResultError`` when this node holds no
        such result.
        """
        ...

    @property
    def executor(self) -> Executor:
        """Where this node runs heavy kernel batches (``[compute] executor`` in ``node.toml``)."""
        ...

    def charge(self, part: str, cost: Budget) -> None:
        """Charge ``cost`` to this party's dataset before running ``part`` of the job (a round).

        For jobs that pay as they go rather than all up front. Once per (job, part): a resumed
        job is never charged twice. Raises ``BudgetExhaustedError`` (nothing charged, with what
        is left in the message) when the cost does not fit, and the audit log records each charge.
        """
        ...

    def note_quality(self, name: str, count: int) -> None:
        """Report a data-quality count of this party's own data: what it made the role drop.

        For example blank or duplicate ids skipped, or feature columns left out for blanks or
        NaN. Such a count is a fact about this party's data, so it stays here: the node logs it
        as a warning and writes it into this party's own privacy receipt (``quality.<name>``),
        and never sends it to a peer. A later call under the same name replaces the count, so a
        resumed role that counts again reports the same figure.
        """
        ...


class BudgetCharge(Protocol):
    """Charges this party's dataset for one part of a job (``bund.parties.ledger`` in a node)."""

    def __call__(self, part: str, cost: Budget) -> None:
        """Charge ``cost`` once per ``part``; raise ``BudgetExhaustedError`` if it does not fit."""
        ...


def free_of_charge(part: str, cost: Budget) -> None:
    """The charger of an in-memory run with no ledger: accepts every charge."""


class PriorResultError(BundError):
    """A job refers to an earlier job whose result this party does not hold."""


#: Loads this party's result of an earlier job: (job_id, protocol) -> Result.
PriorResults = Callable[[str, str], "Result"]


def no_prior_results(job_id: str, protocol: str) -> Result:
    """The loader of a context that holds no earlier results."""
    raise PriorResultError(f"this party holds no result of a {protocol} job {job_id}")


class ResumeStateStore(Protocol):
    """Where a node keeps its roles' resume states (``bund.parties.resume`` for a real node)."""

    def save(self, job_id: str, party: str, name: str, state: bytes) -> None:
        """Durably store ``state``, replacing any earlier one under the same key."""
        ...

    def load(self, job_id: str, party: str, name: str) -> bytes | None:
        """The stored state, or ``None``."""
        ...

    def scratch_dir(self, job_id: str, party: str) -> Path:
        """A directory for the role's spill files, created if needed, deleted with the job."""
        ...


#: The job id under which ``save_kept`` stores states that outlive every job (no real job id,
#: which is 32 hex digits, can take this value, so no job's clean-up ever deletes them).
KEPT_STATES = "kept"


class MemoryResumeStates:
    """Resume states in a dict: for in-memory runs, and for tests that simulate a restart.

    Scratch directories live in one temporary directory, removed when the store is collected.
    """

    def __init__(self) -> None:
        self._states: dict[tuple[str, str, str], bytes] = {}
        self._lock = threading.Lock()
        self._scratch: Path | None = None

    def save(self, job_id: str, party: str, name: str, state: bytes) -> None:
        """Store a copy of ``state``."""
        with self._lock:
            self._states[(job_id, party, name)] = bytes(state)

    def load(self, job_id: str, party: str, name: str) -> bytes | None:
        """The stored state, or ``None``."""
        with self._lock:
            return self._states.get((job_id, party, name))

    def scratch_dir(self, job_id: str, party: str) -> Path:
        """A directory under this store's temporary directory, one per job and party."""
        with self._lock:
            if self._scratch is None:
                self._scratch = Path(tempfile.mkdtemp(prefix="bund-scratch-"))
                weakref.finalize(self, shutil.rmtree, self._scratch, True)
            path = self._scratch / check_name("job id", job_id) / party
        path.mkdir(parents=True, exist_ok=True)
        return path


RoleFn = Callable[[JobContext], "Result | None"]


def no_privacy_cost(spec: JobSpec, party: str) -> Budget:
    """The cost of a protocol that releases no differentially private output: nothing."""
    return Budget()


def default_plan(spec: JobSpec, party: str, limits: Mapping[str, int]) -> MessagePlan:
    """The messages a peer may send a job of a protocol that declares no plan: node limits."""
    return MessagePlan(limits["job_max_messages"], limits["job_max_bytes"])


def trusts_nobody(spec: JobSpec, party: str) -> Mapping[str, str]:
    """A protocol whose protection of every party holds whatever the others do."""
    return {}


def no_dropouts(spec: JobSpec, party: str) -> frozenset[str]:
    """A protocol that needs every participant: any silent peer interrupts the job."""
    return frozenset()


class ProtocolParams(StrictModel):
    """A protocol's parameters, declared once: each field's type, range, default and description.

    Subclass it per protocol; unknown parameters are refused (naming the nearest known one),
    values are checked strictly (``"5"`` is not 5, ``true`` is not 1), and a ``null`` parameter
    is the same as one left out. ``bund job init`` prints each field's description.
    """

    #: What the parameters are called in messages (``dp_stats`` says "query parameters").
    noun: ClassVar[str] = "parameters"

    @classmethod
    def of(cls, spec: JobSpec) -> Self:
        """``spec``'s parameters, parsed and typed.

        Raises:
            InvalidJobSpecError: Naming each parameter to fix.
        """
        given = {k: v for k, v in spec.params.items() if v is not None}
        try:
            return cls.model_validate(given)
        except ValidationError as exc:
            raise InvalidJobSpecError(_params_message(spec.protocol, cls, exc)) from None


class NoParams(ProtocolParams):
    """The parameters of a protocol that takes none."""


def _params_message(protocol: str, model: type[ProtocolParams], exc: ValidationError) -> str:
    found = problems(exc, model)
    lines: list[str] = []
    unknown = [p.key for p in found if p.kind == "unknown"]
    if unknown:
        hints = [f"{p.suggestion!r} for {p.key!r}" for p in found if p.suggestion]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        known = sorted(model.model_fields)
        lines.append(
            f"unknown {model.noun} {unknown} for {protocol}: remove {unknown}{hint}; known: {known}"
        )
    for p in found:
        if p.kind == "missing":
            lines.append(f"{protocol} needs the parameter {p.key}: {p.text}")
        elif p.kind == "invalid":
            lines.append(f"parameter {p.key} {p.text}")
    return "; ".join(lines)


@dataclass(frozen=True)
class RoleRequirement:
    """How many participants of a job take one role, and what each of them must bring.

    Attributes:
        min: The fewest participants in the role.
        max: The most (``None``: no limit).
        dataset: Whether each must name a dataset.
        columns: The logical columns each must bind to its dataset's own (``("id",)``).
        receives: ``True``: each must receive the result; ``False``: none may; ``None``: the
            requester chooses.
        who: Who takes the role, in a few words (``"the hospital"``), for messages and templates.
        why: Why the count, for the message that refuses another count.
    """

    min: int = 1
    max: int | None = 1
    dataset: bool = True
    columns: tuple[str, ...] = ()
    receives: bool | None = None
    who: str = ""
    why: str = ""

    def __post_init__(self) -> None:
        if self.min < 0 or (self.max is not None and self.max < max(self.min, 1)):
            raise ValueError(f"a role takes min <= max participants, not {self.min}..{self.max}")

    def phrase(self, role: str) -> str:
        """How many take the role, in words: ``"exactly one 'analyst'"``."""
        who = f" ({self.who})" if self.who else ""
        words = {1: "one", 2: "two", 3: "three"}
        if self.max == self.min == 1:
            return f"exactly one {role!r}{who}"
        if self.max == self.min:
            return f"exactly {words.get(self.min, self.min)} participants with role {role!r}{who}"
        if self.max is None:
            if self.min == 1:
                return f"at least one {role!r}{who}"
            return f"at least {words.get(self.min, self.min)} participants with role {role!r}{who}"
        return f"{self.min} to {self.max} participants with role {role!r}{who}"


#: A role nothing is declared about: any number of participants, each bringing what it likes.
ANY_COUNT = RoleRequirement(min=0, max=None, dataset=False)


def no_further_checks(spec: JobSpec) -> None:
    """The checks of a protocol that needs nothing beyond its roles and parameters."""


def bound_columns(spec: JobSpec, party: str) -> frozenset[str]:
    """The columns ``party``'s role reads by default: the ones its participant entry binds."""
    return frozenset(spec.participant(party).columns.values())


class OwnerTerms(Protocol):
    """What a protocol's owner check reads of a data owner's policy (``policy.Policy`` has it)."""

    @property
    def cohort_floor(self) -> int:
        """The smallest group the owner lets a release describe."""
        ...

    @property
    def dp_collusion_threshold(self) -> int | None:
        """The smallest collusion threshold of DP noise shares it accepts; None: none."""
        ...

    def identifying(self, dataset: str, bindings: Mapping[str, str]) -> frozenset[str]:
        """The columns of ``dataset`` that single out a person, for a job binding ``bindings``."""
        ...

    def exact_aggregates_to(self, dataset: str) -> frozenset[str]:
        """The counterparties that may receive noise-free aggregates of ``dataset``."""
        ...

    def guards_membership(self, dataset: str, counterparty: str) -> bool:
        """Whether ``dataset`` must not reveal to ``counterparty`` which individuals it holds."""
        ...


def not_allowed_exact(spec: JobSpec, party: str, policy: OwnerTerms) -> list[str]:
    """Who would get noise-free aggregates of ``party``'s data without its policy naming them.

    The requester and every receiver other than ``party`` itself must be named in
    ``exact_aggregates_to`` of ``party``'s dataset; the ones that are not, sorted.
    """
    dataset = spec.participant(party).dataset
    allowed = frozenset() if dataset is None else policy.exact_aggregates_to(dataset)
    return sorted({spec.requester, *spec.receivers} - {party} - allowed)


def no_owner_checks(spec: JobSpec, party: str, policy: OwnerTerms) -> None:
    """The owner's checks of a protocol that asks nothing more of a data owner's policy."""


@dataclass(frozen=True)
class ProtocolDef:
    """A protocol: its version, roles, and what a node's policy needs to judge a job before it runs.

    Attributes:
        params: The parameters' schema; :meth:`parse_params` parses a spec's once.
        role_requirements: Role -> how many participants take it and what each brings; one
            generic check (:meth:`check_roles`) refuses any other shape. A role not named here
            takes any number of participants.
        check: The protocol's own checks of a spec whose roles and parameters passed (a cap on
            a derived quantity, a parameter that depends on another); raises
            ``InvalidJobSpecError``.
        outputs: the kinds of output the job releases (``policy.OUTPUTS``), checked against each
            dataset's classification.
        learns: party -> what that party learns, in words (shown to approvers, put in receipts).
        cost: the privacy budget the job charges to ``party``'s dataset (zero for non-DP jobs).
        dropouts: the peers whose silence ``party``'s role handles itself (a federated round
            carries on without them), so the node does not interrupt the job for them and does
            not wait for their closing message.
        plan: what one peer may send ``party`` in the job (messages, bytes, tags), from the
            spec and the node's limits; deliveries beyond it are refused.
        trusts: the counterparties whose honest behaviour ``party``'s protection rests on in
            the job (a semi-honest assumption it cannot check), each with what a deviating one
            could do; ``party``'s policy must name each as trusted for the protocol.
        pays_as_it_goes: whether the job charges ``cost`` in parts as it runs (``ctx.charge``,
            a training round each) instead of all at its start; either way ``cost`` is the
            most its plan can charge, which the ledger reserves at acceptance.
        resumable: whether every role saves the state behind what it sends first (write-ahead),
            so that a job interrupted by a fault can resume; a fault fails any other protocol's job.
        columns: the columns of ``party``'s own dataset its role reads (from its bindings and the
            parameters), so that each owner's node refuses a job that reads a column its dataset
            lacks before anything is reserved, naming only that column (:meth:`missing_columns`).
        check_owner: the protocol's checks of a spec against a data owner's ``policy`` at that
            owner's admission (a floor on suppression, identifier columns, accepted noise
            shares); raises ``PolicyRefusedError``.
        standing: whether the job is a standing contract: its roles set it up (and keep what
            they saved with ``ctx.save_state``), and then, instead of ending, it stands SERVING,
            answering requests under its terms, until it is revoked or ends by its terms.
    """

    name: str
    version: str
    roles: Mapping[str, RoleFn]
    outputs: Callable[[JobSpec], frozenset[str]]
    learns: Callable[[JobSpec], Mapping[str, str]]
    params: type[ProtocolParams] = NoParams
    role_requirements: Mapping[str, RoleRequirement] = field(default_factory=dict)
    check: Callable[[JobSpec], None] = no_further_checks
    cost: Callable[[JobSpec, str], Budget] = no_privacy_cost
    description: str = ""
    dropouts: Callable[[JobSpec, str], frozenset[str]] = no_dropouts
    plan: Callable[[JobSpec, str, Mapping[str, int]], MessagePlan] = default_plan
    trusts: Callable[[JobSpec, str], Mapping[str, str]] = trusts_nobody
    pays_as_it_goes: bool = False
    resumable: bool = False
    columns: Callable[[JobSpec, str], frozenset[str]] = bound_columns
    check_owner: Callable[[JobSpec, str, OwnerTerms], None] = no_owner_checks
    standing: bool = False

    def __post_init__(self) -> None:
        stray = sorted(set(self.role_requirements) - set(self.roles))
        if stray:
            raise ValueError(f"{self.name} declares requirements of roles it lacks: {stray}")

    def requirement(self, role: str) -> RoleRequirement:
        """What the protocol requires of ``role`` (``ANY_COUNT`` when it declares nothing)."""
        return self.role_requirements.get(role, ANY_COUNT)

    def parse_params(self, spec: JobSpec) -> ProtocolParams:
        """``spec``'s parameters, parsed by this protocol's schema.

        Raises:
            InvalidJobSpecError: Naming each parameter to fix.
        """
        return self.params.of(spec)

    def missing_columns(self, spec: JobSpec, party: str, present: Collection[str]) -> list[str]:
        """The columns ``party``'s role would read that its dataset (``present``) lacks, sorted.

        Only these may be named to a peer: never the dataset's other columns.
        """
        return sorted(self.columns(spec, party) - set(present))

    def check_roles(self, spec: JobSpec) -> None:
        """Refuse a spec whose roles, counts, datasets, column bindings or receivers do not fit.

        Raises:
            InvalidJobSpecError: Naming the participant, role or receiver to fix.
        """
        check_roles(self, spec)

    def validate(self, spec: JobSpec) -> None:
        """Check that ``spec`` is a job this protocol can run: roles, parameters, its own checks.

        Raises:
            InvalidJobSpecError: Naming the field to fix.
        """
        check_roles(self, spec)
        self.parse_params(spec)
        self.check(spec)


def check_roles(definition: ProtocolDef, spec: JobSpec) -> None:
    """The one check of every protocol's roles: known roles, counts, datasets, bindings, receivers.

    Raises:
        InvalidJobSpecError: Naming the participant, role or receiver to fix.
    """
    name = definition.name
    roles = sorted(definition.roles)
    for p in spec.participants:
        if p.role not in definition.roles:
            listed = f"one role, {roles[0]!r}" if len(roles) == 1 else f"the roles {roles}"
            raise InvalidJobSpecError(
                f"participant {p.party!r} has role {p.role!r}; {name} has {listed}"
                f"{did_you_mean(p.role, roles)}"
            )
    shape = " and ".join(definition.requirement(r).phrase(r) for r in definition.role_requirements)
    for role, need in definition.role_requirements.items():
        count = sum(p.role == role for p in spec.participants)
        if count < need.min or (need.max is not None and count > need.max):
            why = f": {need.why}" if need.why else ""
            raise InvalidJobSpecError(
                f"{name} needs {shape}, and no other role; this spec names {count} {role!r}{why}"
            )
    for p in spec.participants:
        need = definition.requirement(p.role)
        missing = [c for c in need.columns if c not in p.columns]
        if need.dataset and not need.columns and p.dataset is None:
            raise InvalidJobSpecError(f"{p.role} {p.party!r} must name its dataset")
        if (need.dataset and p.dataset is None) or missing:
            s = "s" if len(need.columns) > 1 else ""
            bound = " and ".join(repr(c) for c in need.columns)
            example = ", ".join(f'{c} = "..."' for c in need.columns)
            raise InvalidJobSpecError(
                f"participant {p.party!r} must name a dataset and bind the logical column{s} "
                f"{bound} to its own (columns = {{ {example} }}): a {name} {p.role} binds {bound}"
            )
    _check_receivers(definition, spec)


def _check_receivers(definition: ProtocolDef, spec: JobSpec) -> None:
    name = definition.name
    must = [p.party for p in spec.participants if definition.requirement(p.role).receives]
    missing = [p for p in must if p not in spec.receivers]
    if missing:
        roles = sorted({r for r, n in definition.role_requirements.items() if n.receives})
        which = " and ".join(repr(r) for r in roles)
        raise InvalidJobSpecError(
            f"{name} delivers a result to every {which}: add {missing} to the receivers"
        )
    refused = [
        p.party
        for p in spec.participants
        if definition.requirement(p.role).receives is False and p.party in spec.receivers
    ]
    if refused:
        if all(n.receives is not None for n in definition.role_requirements.values()):
            s = "" if len(must) == 1 else "s"
            verb = "is" if len(must) == 1 else "are"
            raise InvalidJobSpecError(
                f"the only receiver{s} of {name} {verb} {must}: remove {refused} from the receivers"
            )
        raise InvalidJobSpecError(
            f"{name} delivers nothing to {refused}: remove them from the receivers"
        )


class AuditSink(Protocol):
    """The part of a node's audit log that jobs, the ledger and the RPC layer append to."""

    def append(
        self, event: str, job_id: str = "", fields: Mapping[str, JsonScalar] | None = None
    ) -> object:
        """Append one signed record."""
        ...


class MessageSink(Protocol):
    """Where a role context reports each message and domain record (the audit log, in a node)."""

    def message(
        self,
        job_id: str,
        direction: str,
        peer: str,
        tag: str,
        sha256: str,
        size: int,
        in_transcript: bool = True,
    ) -> None:
        """One message sent or received (``direction``), by digest, never its content.

        ``in_transcript`` is False for the closing messages, which carry the transcript's digest
        and so cannot be part of it.
        """
        ...

    def replayed(
        self, job_id: str, direction: str, peer: str, tag: str, sha256: str, size: int
    ) -> None:
        """A message sent or received again by a resumed role: the transcript has it already."""
        ...

    def undelivered(self, job_id: str, peer: str, tag: str, sha256: str, size: int) -> None:
        """A message recorded as sent could not be delivered (the record came first)."""
        ...

    def record(self, job_id: str, event: str, fields: Mapping[str, JsonScalar]) -> None:
        """One protocol-level record."""
        ...

    def progress(self, job_id: str, phase: str, done: int, total: int) -> None:
        """Progress of a long phase."""
        ...


@dataclass(frozen=True)
class TranscriptEntry:
    """One message of a job as one party saw it: digest and size, never content."""

    direction: str
    peer: str
    tag: str
    sha256: str
    size: int


def transcript_digest(job_id: str, party: str, entries: list[TranscriptEntry]) -> str:
    """Hex SHA-256 over a party's ordered message records of one job.

    Both ends of a channel record the same (tag, sha256, size), so the regulator can reconcile the
    per-message records of sender and receiver; this digest binds one party's whole view.
    """
    h = hashlib.sha256(b"bund/transcript/v1\x00" + job_id.encode() + b"\x00" + party.encode())
    for e in entries:
        line = f"{e.direction}\x00{e.peer}\x00{e.tag}\x00{e.sha256}\x00{e.size}\n"
        h.update(line.encode())
    return h.hexdigest()


class RoleContext:
    """The ``JobContext`` of one party in one job, over any transport and mailbox."""

    def __init__(
        self,
        spec: JobSpec,
        party: str,
        transport: Transport,
        mailbox: Mailbox,
        table: Callable[[], Table],
        limits: Mapping[str, int],
        sink: MessageSink,
        recv_timeout: float,
        states: ResumeStateStore | None = None,
        prior_results: PriorResults = no_prior_results,
        charge: BudgetCharge = free_of_charge,
        executor: Executor | None = None,
        transcript: Sequence[TranscriptEntry] = (),
        alive: Callable[[str], bool] | None = None,
    ) -> None:
        if party not in spec.parties:
            raise ValueError(f"{party} takes no part in job {spec.job_id}")
        self._spec = spec
        self._party = party
        self._transport = transport
        self._mailbox = mailbox
        self._table = table
        self._limits = dict(limits)
        self._sink = sink
        self._recv_timeout = recv_timeout
        self._states = states if states is not None else MemoryResumeStates()
        self._prior_results = prior_results
        self._charge = charge
        self._executor = executor if executor is not None else InlineExecutor()
        self._lock = threading.Lock()
        #: This party's view of the job's messages; a resumed role starts from the saved one.
        self.transcript: list[TranscriptEntry] = list(transcript)
        self._logged = {(e.direction, e.peer, e.tag, e.sha256) for e in self.transcript}
        self._alive = alive
        self._sealed = False
        self._quality: dict[str, int] = {}

    @property
    def spec(self) -> JobSpec:
        """The job being run."""
        return self._spec

    @property
    def party(self) -> str:
        """This party's name."""
        return self._party

    def _log(self, direction: str, peer: str, tag: str, sha: bytes, size: int) -> None:
        entry = TranscriptEntry(direction, peer, tag, sha.hex(), size)
        key = (direction, peer, tag, entry.sha256)
        with self._lock:  # one lock for both, so the audit log and the transcript agree in order
            if key in self._logged:  # a resumed role re-sending or re-taking the same message
                self._sink.replayed(self._spec.job_id, direction, peer, tag, entry.sha256, size)
                return
            if not self._sealed:
                self._logged.add(key)
                self.transcript.append(entry)
            self._sink.message(
                self._spec.job_id, direction, peer, tag, entry.sha256, size, not self._sealed
            )

    def send(self, to: str, tag: str, payload: bytes) -> None:
        """Record ``payload``'s digest, then deliver it to ``to`` (write-ahead)."""
        check_tag(tag)
        if to not in self._spec.parties or to == self._party:
            raise ValueError(f"cannot send to {to!r}: not another participant of this job")
        self._mailbox.check(self._spec.job_id)
        sha = digest(payload)
        # Write-ahead: the message is on record before it leaves; a failed delivery says so.
        self._log("sent", to, tag, sha, len(payload))
        try:
            self._transport.deliver(self._spec.job_id, to, tag, payload)
        except BaseException:
            self._sink.undelivered(self._spec.job_id, to, tag, sha.hex(), len(payload))
            raise

    def recv(self, frm: str, tag: str, timeout: float | None = None) -> bytes:
        """Wait for ``frm``'s message under ``tag`` and record its digest.

        ``timeout`` overrides the node's receive timeout (the closing exchange waits briefly for
        a peer that dropped out).
        """
        check_tag(tag)
        if frm not in self._spec.parties or frm == self._party:
            raise ValueError(f"cannot receive from {frm!r}: not another participant of this job")
        alive = None if self._alive is None else functools.partial(self._alive, frm)
        patience = self._recv_timeout if timeout is None else timeout
        envelope = self._mailbox.take(self._spec.job_id, frm, tag, patience, alive)
        self._log("received", frm, tag, envelope.sha256, len(envelope.payload))
        return envelope.payload

    def table(self) -> Table:
        """This party's own dataset, loaded on first use; what its loader counted is noted."""
        table = self._table()
        for name, count in table.quality.items():
            self.note_quality(name, count)
        return table

    def note_quality(self, name: str, count: int) -> None:
        """Keep a data-quality count for this party's receipt; log it once if it is not zero."""
        check_name("quality count", name)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(
                f"quality count {name!r} must be a non-negative integer, not {count!r}"
            )
        with self._lock:
            changed = self._quality.get(name) != count
            self._quality[name] = count
        if changed and count:
            dataset = self._spec.participant(self._party).dataset
            log.warning(
                "job %s: %s's dataset %s: %s = %d (kept at this node, in its privacy receipt)",
                self._spec.job_id,
                self._party,
                dataset,
                name,
                count,
            )

    @property
    def quality(self) -> dict[str, int]:
        """The data-quality counts noted so far, by name (a copy)."""
        with self._lock:
            return dict(self._quality)

    def progress(self, phase: str, done: int, total: int) -> None:
        """Forward progress to the node; raise ``JobAbortedError`` once the job was called off."""
        self._mailbox.check(self._spec.job_id)
        self._sink.progress(self._spec.job_id, phase, done, total)

    def record(self, event: str, fields: Mapping[str, JsonScalar]) -> None:
        """Append a protocol-level record to this party's audit log."""
        self._sink.record(self._spec.job_id, event, fields)

    def limit(self, name: str) -> int:
        """A numeric limit from this node's policy."""
        try:
            return self._limits[name]
        except KeyError:
            raise KeyError(f"this node's policy sets no limit {name!r}") from None

    def save_state(self, name: str, state: bytes) -> None:
        """Save this role's resume state under ``name`` in the node's resume store."""
        check_name("resume state", name)
        self._states.save(self._spec.job_id, self._party, name, state)

    def load_state(self, name: str) -> bytes | None:
        """The state saved under ``name`` by an earlier run of this job here, or ``None``."""
        check_name("resume state", name)
        return self._states.load(self._spec.job_id, self._party, name)

    def save_kept(self, name: str, state: bytes) -> None:
        """Keep ``state`` under ``name`` in the node's sealed store, beyond this job."""
        check_name("kept state", name)
        self._states.save(KEPT_STATES, self._party, name, state)

    def load_kept(self, name: str) -> bytes | None:
        """The state kept under ``name`` at this node, or ``None``."""
        check_name("kept state", name)
        return self._states.load(KEPT_STATES, self._party, name)

    def scratch_dir(self) -> Path:
        """This role's spill directory in the node's state directory (deleted with the job)."""
        return self._states.scratch_dir(self._spec.job_id, self._party)

    def prior_result(self, job_id: str, protocol: str) -> Result:
        """This party's own result of an earlier ``protocol`` job, from the node's job store."""
        if not is_job_id(job_id) or job_id == self._spec.job_id:
            raise PriorResultError(f"{job_id!r} is not the id of an earlier job")
        return self._prior_results(job_id, check_name("protocol", protocol))

    @property
    def executor(self) -> Executor:
        """The node's kernel executor (inline unless the node configures another)."""
        return self._executor

    def charge(self, part: str, cost: Budget) -> None:
        """Charge this party's dataset for ``part`` of the job through the node's ledger."""
        self._charge(check_name("budget part", part), cost)

    def transcript_digest(self) -> str:
        """Digest of every message this party sent or received in this job so far."""
        with self._lock:
            return transcript_digest(self._spec.job_id, self._party, list(self.transcript))

    def seal_transcript(self) -> str:
        """Close the transcript and return its digest, which the closing messages carry.

        Messages after this (the closing exchange) are still recorded, but outside the
        transcript, so its digest stays the one the peers were told.
        """
        with self._lock:
            self._sealed = True
            return transcript_digest(self._spec.job_id, self._party, list(self.transcript))


class _NullSink:
    def message(
        self,
        job_id: str,
        direction: str,
        peer: str,
        tag: str,
        sha256: str,
        size: int,
        in_transcript: bool = True,
    ) -> None:
        pass

    def replayed(
        self, job_id: str, direction: str, peer: str, tag: str, sha256: str, size: int
    ) -> None:
        pass

    def undelivered(self, job_id: str, peer: str, tag: str, sha256: str, size: int) -> None:
        pass

    def record(self, job_id: str, event: str, fields: Mapping[str, JsonScalar]) -> None:
        pass

    def progress(self, job_id: str, phase: str, done: int, total: int) -> None:
        pass


def new_job_id() -> str:
    """A fresh random job id (128 bits from the OS CSPRNG)."""
    return secrets.token_hex(16)


def run_in_memory(
    spec: JobSpec,
    definition: ProtocolDef,
    tables: Mapping[str, Table],
    limits: Mapping[str, int] | None = None,
    network: InMemoryNetwork | None = None,
    recv_timeout: float = 120.0,
    states: Mapping[str, ResumeStateStore] | None = None,
    prior_results: Mapping[str, PriorResults] | None = None,
    chargers: Mapping[str, BudgetCharge] | None = None,
    executor: Executor | None = None,
) -> dict[str, Result | None]:
    """Run every role of ``spec`` in threads of this process over an ``InMemoryNetwork``.

    For unit tests and benchmarks of protocol choreography; a node runs one role over gRPC instead.
    The first role to fail aborts the job for all and its error is re-raised. Passing the same
    ``states`` (party -> store) to a second run of the same spec simulates a restart;
    ``prior_results`` (party -> loader) stands in for each node's store of earlier results and
    ``chargers`` (party -> charger) for each node's ledger; every role shares ``executor``.
    A role's file artifacts (``Result.files``) come back as bytes, as a node's store serves them.
    """
    if not spec.job_id:
        spec = dataclasses.replace(spec, job_id=new_job_id())
    definition.validate(spec)
    net = network or InMemoryNetwork(list(spec.parties))
    results: dict[str, Result | None] = {}
    errors: list[BaseException] = []

    def run_one(p: Participant) -> None:
        ctx = RoleContext(
            spec,
            p.party,
            net.transport_for(p.party),
            net.mailboxes[p.party],
            lambda: tables[p.party],
            limits or {},
            _NullSink(),
            recv_timeout,
            states.get(p.party) if states else None,
            (prior_results or {}).get(p.party, no_prior_results),
            (chargers or {}).get(p.party, free_of_charge),
            executor,
        )
        try:
            result = definition.roles[p.role](ctx)
            # Files are read while the role's scratch directory lives.
            results[p.party] = None if result is None else result.held()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)
            net.abort(spec.job_id, f"{p.party} failed: {exc}")

    threads = [threading.Thread(target=run_one, args=(p,), daemon=True) for p in spec.participants]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        primary = [e for e in errors if not isinstance(e, JobAbortedError)]
        raise (primary or errors)[0]
    return results
