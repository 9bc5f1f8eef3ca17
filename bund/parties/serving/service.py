"""The serving side of a node: what the ``Serving`` RPCs call, and what runs between requests.

At the bank's node, :meth:`ServingService.score` takes its loan system's request, draws a fresh
nonce, records the request, asks every provider in parallel (:meth:`ServingPeers.score_parts`)
and turns the sum of their masked answers into decisions. At a provider's node,
:meth:`ServingService.score_parts` checks the bank's request against the contract (it is the
contract's bank, the contract serves, not past its expiry, within the per-request, daily and
total limits, a nonce it has not seen), records it, and answers with its masked partial scores
(:mod:`bund.compute.serving`). Every request is recorded before its answer leaves, and a refused
one is recorded with why (at most :data:`MAX_REFUSALS_RECORDED` one by one per contract and
root interval; the rest are counted in the next root). Records go through one group-commit
thread (:class:`GroupCommitter`): concurrent requests share one sync of the audit store.

One background thread, for each contract: logs the signed Merkle root of the request digests taken
since the last root every ``root_interval_s`` (and a last one when the contract ends), ends a
contract past its expiry, and keeps ``bund job status`` current (requests served, limits left).
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from bund.compute import serving as kernel
from bund.compute.dp.pairwise_masks import MaskingKey
from bund.compute.errors import BundError, InvalidMessageError
from bund.compute.merkle import inclusion_proof, leaf_hash, merkle_root
from bund.compute.psi import normalise_ids
from bund.parties.audit import AuditLog, AuditRecord, AuditStore, JsonScalar, read_readable
from bund.parties.data import Table
from bund.parties.errors import JobStateError, NotAuthorizedError, PeerUnavailableError
from bund.parties.jobs import JobSpec, PriorResultError, Result
from bund.parties.lifecycle.events import Event, Key
from bund.parties.lifecycle.states import IllegalTransitionError, JobState, JobStatus, is_terminal
from bund.parties.lifecycle.store import JobStore
from bund.parties.protocols import scoring_parts as parts
from bund.parties.protocols.serving_contract import (
    DEFINITION,
    KEY_STATE,
    KEYS_STATE,
    ServingParams,
    decode_keys,
)
from bund.parties.protocols.vertical_alignment import FEATURE_HOLDER, ID_COLUMN, LABEL_HOLDER
from bund.parties.serving.commit import GroupCommitter, Pending
from bund.parties.serving.errors import (
    ContractEndedError,
    RequestProofError,
    ServingLimitError,
    ServingRefusedError,
)
from bund.parties.serving.ledger import ServingLedger
from bund.parties.serving.proofs import RequestProof

log = logging.getLogger("bund.serving")

#: Decisions: default probability at or above the cut-off, below it, not scored.
DECLINE, APPROVE, REFER = "decline", "approve", "refer"
#: Refusals recorded one by one per contract and root interval; the rest are counted.
MAX_REFUSALS_RECORDED = 100
#: How often ``bund job status`` of a serving contract is brought up to date, at most.
STATUS_INTERVAL_S = 1.0


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Applicant:
    """One applicant of a request: its id, and the bank's own feature values of it."""

    id: str
    features: Mapping[str, float]


@dataclass(frozen=True)
class Decision:
    """The decision on one applicant; ``probability`` is None when it is ``refer``."""

    id: str
    decision: str
    probability: float | None


@dataclass(frozen=True)
class Scored:
    """The bank's answer to its loan system: the decisions, and the request as recorded."""

    contract_id: str
    nonce: bytes
    request_sha256: bytes
    decisions: tuple[Decision, ...]


@dataclass(frozen=True)
class Answer:
    """A provider's answer to one request: the digest it recorded, and its masked cells."""

    request_sha256: bytes
    answer: bytes


class ServingPeers(Protocol):
    """The one call a bank's node makes to each provider (``parties.client`` implements it)."""

    def score_parts(
        self, to: str, contract_id: str, nonce: bytes, ids: Sequence[str], timeout: float
    ) -> Answer:
        """``to``'s masked answer to the request; its refusal as a ``ServingRefusedError``."""
        ...


class KeyStates(Protocol):
    """Where a provider's set-up saved its masking keys (the node's sealed resume store)."""

    def load(self, job_id: str, party: str, name: str) -> bytes | None:
        """A saved state, or None."""
        ...

    def forget(self, job_id: str) -> None:
        """Delete everything kept for a job that ended."""
        ...


@dataclass(frozen=True)
class ServingPorts:
    """What the serving side reaches of its node."""

    jobs: JobStore
    keys: KeyStates
    audit: AuditLog
    audit_store: AuditStore
    ledger: ServingLedger
    peers: ServingPeers
    #: This party's dataset of a contract, checked to be the version it was approved on.
    table: Callable[[JobSpec], Table]
    #: A root was logged (the node exchanges tree heads with the contract's parties soon).
    root_logged: Callable[[JobSpec], None] = lambda spec: None


@dataclass
class _Loaded:
    """What a contract needs in memory to answer: loaded once, at its first request."""

    # A provider's: its ids' rows, every row's partial score, and the masking keys.
    index: Mapping[bytes, int] = field(default_factory=dict)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    scorable: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    key: MaskingKey | None = None
    public_keys: Mapping[str, bytes] = field(default_factory=dict)
    # The bank's: its part of the model and the cut-off.
    part: parts.BankPart | None = None
    cutoff: float = 0.5


@dataclass
class _Contract:
    """A contract as this node serves it."""

    spec: JobSpec
    params: ServingParams
    bank: str
    providers: tuple[str, ...]
    lock: threading.Lock = field(default_factory=threading.Lock)
    loaded: _Loaded | None = None

    @property
    def job_id(self) -> str:
        return self.spec.job_id


class ServingService:
    """Serves this node's standing contracts; see the module docstring.

    Args:
        party: This node's party.
        ports: What it reaches of the node.
        clock: The current UTC time (tests pass their own).
        request_timeout: How long the bank waits for a provider's answer, in seconds.
    """

    def __init__(
        self,
        party: str,
        ports: ServingPorts,
        clock: Callable[[], dt.datetime] = _utc_now,
        request_timeout: float = 10.0,
    ) -> None:
        self.party = party
        self.clock = clock
        self.request_timeout = request_timeout
        self._p = ports
        self._lock = threading.Lock()
        self._contracts: dict[str, _Contract] = {}
        self._active: set[str] = set()
        self._ended: set[str] = set()
        self._last_root: dict[str, float] = {}
        self._refused: dict[str, int] = {}
        self._unrecorded: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._status_at = 0.0
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._committer: GroupCommitter | None = None
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="bund-serving")
        self._thread: threading.Thread | None = None
        ports.jobs.add_listener(self._moved)

    # -- the node's life -------------------------------------------------------------------------

    def start(self) -> None:
        """Index what the log recorded since the index was last written, then start serving.

        Contracts that serve are watched; contracts that ended with requests not yet under a
        root get their last root.
        """
        ledger, store = self._p.ledger, self._p.audit_store
        start, end, caught = ledger.indexed_upto(), len(store), 0
        for first in range(start, end, 10_000):
            records, unreadable = read_readable(store, first, min(first + 10_000, end))
            caught += ledger.catch_up(records)
            if unreadable is not None:  # the node seals its log there: it serves nothing more
                log.error(
                    "%s: serving index stops at an unreadable record: %s", self.party, unreadable
                )
                break
        if caught:
            log.info("%s: indexed %d serving records from the audit log", self.party, caught)
        with self._lock:
            for status in self._p.jobs.unfinished():
                if self._is_contract(status) and status.state is JobState.SERVING:
                    self._active.add(status.spec.job_id)
                    self._dirty.add(status.spec.job_id)
            self._ended.update(ledger.unrooted_contracts() - self._active)
        self._committer = GroupCommitter(self._p.audit, ledger)
        self._thread = threading.Thread(
            target=self._watch, name=f"bund-serving-{self.party}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Log the roots due, stop the threads, write what is queued, close the ledger."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._committer is not None:
            self._committer.stop()
        self._p.ledger.close()

    @staticmethod
    def _is_contract(status: JobStatus) -> bool:
        return status.spec.protocol == DEFINITION.name

    def _moved(self, status: JobStatus) -> None:
        """A job moved (the store's listener): watch a serving contract, close an ended one."""
        if not self._is_contract(status):
            return
        job_id = status.spec.job_id
        with self._wake:
            if status.state is JobState.SERVING:
                self._active.add(job_id)
                self._dirty.add(job_id)
            elif is_terminal(status.state) and job_id in self._active | set(self._contracts):
                self._active.discard(job_id)
                self._ended.add(job_id)
            self._wake.notify_all()

    # -- the bank: its loan system's request ------------------------------------------------------

    def score(self, contract_id: str, applicants: Sequence[Applicant], operator: str) -> Scored:
        """Score ``applicants`` under the contract: ask every provider, sum, decide.

        Args:
            contract_id: The contract (its job id).
            applicants: Ids and the bank's own feature values, at most ``max_batch``.
            operator: The bank's operator who asks (the contract may name who may).

        Raises:
            UnknownJobError | JobStateError: No such contract here.
            NotAuthorizedError: This node is not the contract's bank, or the operator may not ask.
            InvalidInputError: A malformed applicant.
            ServingRefusedError: The contract's terms, or a provider, refused the request.
            InvalidMessageError: A provider's answer is malformed or does not add up.
        """
        contract = self._contract(contract_id, LABEL_HOLDER)
        who: dict[str, JsonScalar] = {Key.BY: operator}
        allowed = contract.params.operators
        if allowed and operator not in allowed:
            why = f"operator {operator} may not score under contract {contract_id}"
            self._refused_here(contract, b"", len(applicants), why, who)
            raise NotAuthorizedError(f"{why}: it names {', '.join(sorted(allowed))}")
        ids = [a.id.strip().encode("utf-8") for a in applicants]
        nonce = secrets.token_bytes(kernel.NONCE_BYTES)
        digest, loaded = self._take(contract, nonce, ids, who, [a.features for a in applicants])
        assert loaded.part is not None
        own = parts.own_features(loaded.part, [a.features for a in applicants])
        texts = [i.decode("utf-8") for i in ids]
        asked = {
            p: self._pool.submit(
                self._p.peers.score_parts, p, contract_id, nonce, texts, self.request_timeout
            )
            for p in contract.providers
        }
        answers: list[Answer] = []
        refusals: list[tuple[str, BundError]] = []
        for provider, future in asked.items():
            try:
                answers.append(future.result())
            except BundError as exc:
                refusals.append((provider, exc))
        try:
            if refusals:
                raise _refusal(refusals)
            decisions = self._decide(contract, loaded, own, texts, digest, answers)
        except BundError as exc:
            self._refused_here(contract, digest, len(ids), str(exc), who)
            raise
        self._after_request(contract)
        return Scored(contract_id, nonce, digest, decisions)

    def _decide(
        self,
        contract: _Contract,
        loaded: _Loaded,
        own: np.ndarray,
        ids: list[str],
        digest: bytes,
        answers: list[Answer],
    ) -> tuple[Decision, ...]:
        """The decisions from the providers' answers (each checked to answer this request)."""
        assert loaded.part is not None
        n = len(ids)
        for answer in answers:
            if not hmac.compare_digest(answer.request_sha256, digest):
                raise InvalidMessageError(
                    "a provider answered another request (its digest differs); nothing is decided"
                )
        vectors = [kernel.decode_answer(a.answer, n) for a in answers]
        totals, complete = kernel.combine_answers(vectors, n)
        sums = np.array(totals, dtype=np.int64)
        scored = np.array(complete, dtype=bool)
        if np.any(np.abs(sums[scored]) >= kernel.MAX_PARTIAL * len(contract.providers)):
            raise InvalidMessageError("the providers' summed partial scores are out of range")
        probabilities = np.full(n, np.nan)
        if scored.any():
            probabilities[scored] = loaded.part.probabilities(own[scored], sums[scored])
        out = []
        for i, item in enumerate(ids):
            if not scored[i]:
                out.append(Decision(item, REFER, None))
            else:
                p = float(probabilities[i])
                out.append(Decision(item, DECLINE if p >= loaded.cutoff else APPROVE, p))
        return tuple(out)

    # -- a provider: the bank's request ----------------------------------------------------------

    def score_parts(
        self, contract_id: str, nonce: bytes, ids: Sequence[str], caller: str
    ) -> Answer:
        """Check the bank's request against the contract, record it, answer with masked scores.

        Raises:
            UnknownJobError | JobStateError: No such contract here.
            NotAuthorizedError: The caller is not the contract's bank, or this node is no
                provider of it.
            InvalidInputError: A malformed request.
            ServingRefusedError: The contract's terms refuse the request (recorded).
        """
        contract = self._contract(contract_id, FEATURE_HOLDER)
        if caller != contract.bank:
            raise NotAuthorizedError(
                f"only {contract.bank}, the bank of contract {contract_id}, may ask for scores"
            )
        who: dict[str, JsonScalar] = {Key.PEER: caller}
        items = [i.strip().encode("utf-8") for i in ids]
        digest, loaded = self._take(contract, nonce, items, who)
        assert loaded.key is not None
        rows = [loaded.index.get(item) for item in items]
        held = [r is not None and bool(loaded.scorable[r]) for r in rows]
        scores = [int(loaded.scores[r]) if r is not None else 0 for r in rows]
        answer = kernel.answer_vector(
            scores, held, loaded.key, self.party, loaded.public_keys, digest
        )
        self._after_request(contract)
        return Answer(digest, kernel.encode_answer(answer))

    # -- taking a request --------------------------------------------------------------------------

    def _take(
        self,
        contract: _Contract,
        nonce: bytes,
        ids: list[bytes],
        who: dict[str, JsonScalar],
        features: Sequence[Mapping[str, float]] | None = None,
    ) -> tuple[bytes, _Loaded]:
        """Check a request against the contract's terms and record it.

        In order: the request's form, that the contract serves, its expiry, the batch limit,
        what answering needs (loaded once: the model part, the dataset as approved, the keys;
        at the bank, that every applicant brings the model's ``features``), then the nonce and
        the daily and total limits, and the record. Nothing is counted for a request refused
        before its record.

        Returns:
            The request's digest, and what answering it needs.

        Raises:
            BundError: Why it was refused, recorded as a refusal first.
        """
        digest = b""
        try:
            digest = kernel.request_digest(contract.job_id, nonce, ids)
            status = self._p.jobs.get(contract.job_id)
            if status.state is not JobState.SERVING:
                why = f" ({status.error})" if status.error else ""
                raise ContractEndedError(
                    f"contract {contract.job_id} is {status.state.value} at {self.party}{why}; "
                    "it serves no request"
                )
            now = self.clock()
            if now >= contract.params.expiry:
                self._end(contract.job_id, f"expired at {contract.params.expires}")
                raise ContractEndedError(
                    f"contract {contract.job_id} expired at {contract.params.expires}; it serves "
                    "no request"
                )
            if len(ids) > contract.params.max_batch:
                raise ServingLimitError(
                    f"contract {contract.job_id} takes at most {contract.params.max_batch:,} "
                    f"applicants a request, not {len(ids):,}"
                )
            loaded = self._load(contract)
            if features is not None and loaded.part is not None:
                parts.own_features(loaded.part, features)
            day = now.date().isoformat()
            limits = contract.params.max_daily, contract.params.max_total
            self._p.ledger.reserve(contract.job_id, nonce, len(ids), day, *limits)
        except BundError as exc:
            self._refused_here(contract, digest, len(ids), str(exc), who)
            raise
        fields: dict[str, JsonScalar] = {
            Key.NONCE: nonce.hex(),
            Key.REQUEST_SHA256: digest.hex(),
            Key.IDS: len(ids),
            Key.DAY: day,
            **who,
        }
        item = Pending(
            Event.SERVING_REQUEST, contract.job_id, fields, (nonce, digest, len(ids), day)
        )
        try:
            self._commit(item)
        except BaseException:
            self._p.ledger.release(contract.job_id, nonce, len(ids), day)
            raise
        with self._lock:
            self._dirty.add(contract.job_id)
        return digest, loaded

    def _commit(self, item: Pending) -> AuditRecord:
        """Record ``item`` with whatever else is queued; return its record once durable."""
        if self._committer is None:
            raise JobStateError("this node's serving has not started")
        return self._committer.submit(item)

    def _refused_here(
        self,
        contract: _Contract,
        digest: bytes,
        ids: int,
        reason: str,
        who: Mapping[str, JsonScalar],
    ) -> None:
        """Record a refused request (one by one up to the cap per interval; then counted)."""
        job_id = contract.job_id
        with self._lock:
            self._refused[job_id] = self._refused.get(job_id, 0) + 1
            if self._refused[job_id] > MAX_REFUSALS_RECORDED:
                self._unrecorded[job_id] = self._unrecorded.get(job_id, 0) + 1
                return
        fields: dict[str, JsonScalar] = {
            Key.REQUEST_SHA256: digest.hex(),
            Key.IDS: ids,
            Key.REASON: reason[:500],
            **who,
        }
        try:
            self._commit(Pending(Event.SERVING_REFUSED, job_id, fields))
        except BundError:
            log.exception("could not record a refused request of contract %s", job_id)

    def _after_request(self, contract: _Contract) -> None:
        """End a contract whose total limit the request spent."""
        limit = contract.params.max_total
        if limit is None:
            return
        usage = self._p.ledger.usage(contract.job_id, self.clock().date().isoformat())
        if usage.ids_total >= limit and not usage.in_flight:
            self._end(contract.job_id, f"its total limit of {limit:,} applicants is spent")

    def _end(self, job_id: str, reason: str) -> None:
        """End a serving contract by its own terms (``contract_ended``, succeeded)."""
        usage = self._p.ledger.usage(job_id, self.clock().date().isoformat())
        try:
            self._p.jobs.transition(
                job_id,
                JobState.SUCCEEDED,
                Event.CONTRACT_ENDED,
                {Key.REASON: reason, "requests": usage.next_seq, Key.IDS: usage.ids_total},
                error=f"contract ended: {reason}",
            )
        except IllegalTransitionError:
            pass  # ended meanwhile (revoked, or ended by another request)

    # -- contracts ---------------------------------------------------------------------------------

    def _contract(self, contract_id: str, role: str) -> _Contract:
        """The contract ``contract_id`` as this node serves it, if this node has ``role`` in it."""
        with self._lock:
            contract = self._contracts.get(contract_id)
        if contract is None:  # not yet served in this run: read it once from the job store
            status = self._p.jobs.get(contract_id)
            if not self._is_contract(status):
                raise JobStateError(
                    f"job {contract_id} is a {status.spec.protocol} job, not a serving contract"
                )
            contract = self._contract_of(status)
        me = next((p for p in contract.spec.participants if p.party == self.party), None)
        if me is None or me.role != role:
            where = contract.bank if role == LABEL_HOLDER else "a provider's node"
            raise NotAuthorizedError(
                f"{self.party} is not the {role} of contract {contract_id}: ask at {where}"
            )
        return contract

    def _load(self, contract: _Contract) -> _Loaded:
        """Load what answering needs, once per contract (and node run)."""
        with contract.lock:
            if contract.loaded is None:
                contract.loaded = (
                    self._load_bank(contract)
                    if contract.bank == self.party
                    else self._load_provider(contract)
                )
            return contract.loaded

    def _prior_result(self, job_id: str, protocol: str) -> Result:
        """This node's own result of the training job, as the contract's set-up read it."""
        status = self._p.jobs.find(job_id)
        result = self._p.jobs.load_full_result(job_id) if status is not None else None
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

    def _load_bank(self, contract: _Contract) -> _Loaded:
        params = contract.params
        result = self._prior_result(params.model_job, params.model_protocol)
        part = parts.loader(params.model_protocol).bank(result, params.model_job, self.party)
        cutoff = part.cutoff if params.cutoff is None else params.cutoff
        return _Loaded(part=part, cutoff=cutoff)

    def _load_provider(self, contract: _Contract) -> _Loaded:
        params, job_id = contract.params, contract.job_id
        result = self._prior_result(params.model_job, params.model_protocol)
        part = parts.loader(params.model_protocol).provider(result, params.model_job, self.party)
        table = self._p.table(contract.spec)
        column = contract.spec.participant(self.party).columns[ID_COLUMN]
        ids = normalise_ids(table.column(column))
        scores, scorable = part.partial_scores(table)
        raw = self._p.keys.load(job_id, self.party, KEY_STATE)
        saved = self._p.keys.load(job_id, self.party, KEYS_STATE)
        if raw is None or saved is None:
            raise ContractEndedError(
                f"{self.party} holds no masking key of contract {job_id}: it was not set up here"
            )
        key = MaskingKey.from_resume_state(raw)
        public_keys = decode_keys(saved)
        if public_keys.get(self.party) != key.public_bytes():
            raise ContractEndedError(f"{self.party}'s masking keys of contract {job_id} disagree")
        return _Loaded(
            index=dict(zip(ids.items, ids.rows, strict=True)),
            scores=scores,
            scorable=scorable,
            key=key,
            public_keys=public_keys,
        )

    # -- proofs ------------------------------------------------------------------------------------

    def prove(self, contract_id: str, request_sha256: bytes) -> RequestProof:
        """The inclusion proof of a request this node took, under the root that covers it.

        Raises:
            UnknownJobError | JobStateError: No such contract here.
            RequestProofError: No such request here, or it is not under a root yet.
        """
        status = self._p.jobs.get(contract_id)
        if not self._is_contract(status):
            raise JobStateError(f"job {contract_id} is not a serving contract")
        seq = self._p.ledger.find(contract_id, request_sha256)
        if seq is None:
            raise RequestProofError(
                f"{self.party} took no request with this digest under contract {contract_id}"
            )
        root = self._p.ledger.root_of(contract_id, seq)
        if root is None:
            interval = ServingParams.of(status.spec).root_interval_s
            raise RequestProofError(
                f"request {seq} of contract {contract_id} is not under a signed root yet; "
                f"{self.party} logs one every {interval:g} s: ask again then"
            )
        stop = root.first_seq + root.count
        leaves = [leaf_hash(d) for d in self._p.ledger.digests(contract_id, root.first_seq, stop)]
        path = inclusion_proof(leaves, seq - root.first_seq, root.count)
        (record,) = self._p.audit_store.read(root.audit_index, root.audit_index + 1)
        return RequestProof(contract_id, request_sha256, seq, record, tuple(path))

    # -- between requests --------------------------------------------------------------------------

    def _watch(self) -> None:
        """Roots, expiries, ended contracts and status, until the node stops."""
        while True:
            with self._wake:
                if self._stopping:
                    break
                self._wake.wait(self._tick())
                if self._stopping:
                    break
                active, ended = sorted(self._active), sorted(self._ended)
                self._ended.clear()
            for job_id in active:
                self._guarded(self._look_after, job_id)
            for job_id in ended:
                self._guarded(self._close, job_id)
            self._guarded(self._refresh_status)
        for job_id in sorted(self._active):  # what is due is logged before the node stops
            self._guarded(self._log_root, job_id)

    @staticmethod
    def _guarded(task: Callable[..., object], *args: object) -> None:
        try:
            task(*args)
        except Exception:  # noqa: BLE001 - the watcher must outlive any one contract
            log.exception("serving: %s%s failed", getattr(task, "__name__", task), args)

    def _tick(self) -> float:
        """How long to wait: a fraction of the shortest root interval, at most half a second."""
        intervals = [
            c.params.root_interval_s for j, c in self._contracts.items() if j in self._active
        ]
        return max(0.02, min([0.5, *(i / 4 for i in intervals)]))

    def _look_after(self, job_id: str) -> None:
        status = self._p.jobs.find(job_id)
        if status is None or status.state is not JobState.SERVING:
            return
        params = self._contract_of(status).params
        if self.clock() >= params.expiry:
            self._end(job_id, f"expired at {params.expires}")
            return
        last = self._last_root.setdefault(job_id, time.monotonic())
        if time.monotonic() - last >= params.root_interval_s:
            self._log_root(job_id)

    def _contract_of(self, status: JobStatus) -> _Contract:
        """The contract of ``status``, as kept in memory while it serves here."""
        with self._lock:
            contract = self._contracts.get(status.spec.job_id)
            if contract is None:
                spec = status.spec
                bank = next(p.party for p in spec.participants if p.role == LABEL_HOLDER)
                providers = tuple(p.party for p in spec.participants if p.role == FEATURE_HOLDER)
                contract = _Contract(spec, ServingParams.of(spec), bank, providers)
                self._contracts[spec.job_id] = contract
            return contract

    def _log_root(self, job_id: str, final: bool = False) -> None:
        """Log the root of the requests taken since the last one (if any, or refusals counted)."""
        self._last_root[job_id] = time.monotonic()
        usage = self._p.ledger.usage(job_id, None)
        with self._lock:
            unrecorded = self._unrecorded.pop(job_id, 0)
            self._refused.pop(job_id, None)
        first, count = usage.rooted, usage.next_seq - usage.rooted
        if count == 0 and unrecorded == 0:
            return
        digests = self._p.ledger.digests(job_id, first, first + count)
        root = merkle_root(leaf_hash(d) for d in digests)
        fields: dict[str, JsonScalar] = {
            Key.FIRST_SEQ: first,
            Key.COUNT: count,
            Key.ROOT_HASH: root.hex(),
            "refused_unrecorded": unrecorded,
            "final": final,
        }
        self._commit(Pending(Event.SERVING_ROOT, job_id, fields, root=(first, count, root)))
        status = self._p.jobs.find(job_id)
        if status is not None:
            self._p.root_logged(status.spec)

    def _close(self, job_id: str) -> None:
        """A contract ended: its last root, its keys forgotten, its memory freed."""
        self._log_root(job_id, final=True)
        self._p.keys.forget(job_id)
        self._p.ledger.forget_usage(job_id)
        with self._lock:
            self._contracts.pop(job_id, None)
            self._last_root.pop(job_id, None)
            self._dirty.discard(job_id)

    def _refresh_status(self) -> None:
        """Bring ``bund job status`` of the contracts that took requests up to date."""
        now = time.monotonic()
        with self._lock:
            if now - self._status_at < STATUS_INTERVAL_S or not self._dirty:
                return
            self._status_at = now
            dirty, self._dirty = sorted(self._dirty), set()
        day = self.clock().date().isoformat()
        for job_id in dirty:
            status = self._p.jobs.find(job_id)
            if status is None or status.state is not JobState.SERVING:
                continue
            params = self._contract_of(status).params
            usage = self._p.ledger.usage(job_id, day)
            total = (
                ""
                if params.max_total is None
                else f"; {max(0, params.max_total - usage.ids_total):,} of {params.max_total:,} "
                "left in all"
            )
            phase = (
                f"serving: {usage.next_seq:,} requests, {usage.ids_total:,} applicants; today "
                f"{max(0, params.max_daily - usage.ids_day):,} of {params.max_daily:,} "
                f"left{total}; expires {params.expires}"
            )
            self._p.jobs.progress(job_id, phase, usage.ids_day, params.max_daily)


def _refusal(refusals: Sequence[tuple[str, BundError]]) -> BundError:
    """The bank's error when providers refused or failed: the first one's kind, all reasons."""
    reason = "the request was refused by " + "; ".join(f"{p}: {exc}" for p, exc in refusals)
    first = refusals[0][1]
    if isinstance(first, ServingRefusedError | PeerUnavailableError):
        return type(first)(reason)
    return ServingRefusedError(reason)
