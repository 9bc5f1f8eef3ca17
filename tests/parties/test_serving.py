"""A standing contract's serving side, in process: three ServingServices, one set-up, requests.

The bank's service asks the providers' services directly (no gRPC), over job stores, ledgers
and audit logs of their own, after the contract's set-up roles ran in memory. The same checks
run between real nodes in tests/integration/test_serving_nodes.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bund.compute import insecure
from bund.compute.merkle import leaf_hash, merkle_root
from bund.parties.audit import (
    AuditLog,
    AuditRecord,
    JsonScalar,
    MemoryAuditStore,
    verify_store,
)
from bund.parties.data import Table
from bund.parties.demo_data import generate_finance
from bund.parties.errors import NotAuthorizedError
from bund.parties.jobs import (
    InvalidJobSpecError,
    JobSpec,
    MemoryResumeStates,
    Participant,
    PriorResultError,
    Result,
    new_job_id,
    run_in_memory,
)
from bund.parties.lifecycle.events import Event, Key
from bund.parties.lifecycle.states import JobState
from bund.parties.lifecycle.store import MemoryJobStore, utcnow
from bund.parties.protocols import serving_contract as contract_proto
from bund.parties.serving.commit import GroupCommitter, Pending
from bund.parties.serving.errors import (
    ContractEndedError,
    ReplayedRequestError,
    RequestProofError,
    ServingLimitError,
    ServingRefusedError,
)
from bund.parties.serving.ledger import ServingLedger
from bund.parties.serving.proofs import verify_request_proof
from bund.parties.serving.service import (
    Answer,
    Applicant,
    Scored,
    ServingPorts,
    ServingService,
)
from tests.protocols.test_vertical_lr import LIMITS, ROLES
from tests.protocols.test_vertical_score import APPLICANTS, loaders, reference, train

KEYS = {p: Ed25519PrivateKey.generate() for p in ROLES}
PROVIDERS = ("tax", "registry")
#: The services' clock starts today (a contract's terms are checked against the real clock).
NOW = dt.datetime.now(dt.UTC).replace(hour=9, minute=30, second=0, microsecond=0)
#: The contracts' expiry: 30 days on.
EXPIRY = (NOW + dt.timedelta(days=30)).replace(hour=0, minute=0)
EXPIRES = EXPIRY.isoformat().replace("+00:00", "Z")


@pytest.fixture(autouse=True)
def small_keys() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()  # 512-bit Paillier keys for the training
    yield


@pytest.fixture(scope="module")
def data() -> dict[str, Table]:
    return generate_finance(1500, 11, applicants=APPLICANTS)


@pytest.fixture(scope="module")
def trained(data: dict[str, Table]) -> tuple[str, dict[str, Result]]:
    return train({p: data[d] for p, d in ROLES.items()}, tuple(ROLES))


def contract_spec(model_job: str, **params: object) -> JobSpec:
    terms: dict[str, object] = {
        "model_job": model_job,
        "expires": EXPIRES,
        "max_batch": 50,
        "max_daily": 400,
        "root_interval_s": 0.05,
        **params,
    }
    return JobSpec(
        "serving_contract",
        (
            Participant("bank", "label_holder"),
            Participant("tax", "feature_holder", "tax_filings", {"id": "company_id"}),
            Participant("registry", "feature_holder", "business_registry", {"id": "company_id"}),
        ),
        ("bank",),
        "score SME loan applications as they arrive",
        "bank",
        terms,  # type: ignore[arg-type]
        new_job_id(),
    )


class KeyStates(MemoryResumeStates):
    """A party's resume states with ``forget``, as the node's resume store has."""

    def __init__(self) -> None:
        super().__init__()
        self.forgotten: list[str] = []

    def forget(self, job_id: str) -> None:
        self.forgotten.append(job_id)
        with self._lock:
            for key in [k for k in self._states if k[0] == job_id]:
                del self._states[key]


class Peers:
    """The bank's calls to each provider, straight into the provider's service."""

    def __init__(self) -> None:
        self.services: dict[str, ServingService] = {}
        self.sent: list[tuple[str, bytes, list[str]]] = []

    def score_parts(
        self, to: str, contract_id: str, nonce: bytes, ids: Sequence[str], timeout: float
    ) -> Answer:
        self.sent.append((to, nonce, list(ids)))
        return self.services[to].score_parts(contract_id, nonce, ids, "bank")


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> dt.datetime:
        return self.now


@dataclasses.dataclass
class Party:
    service: ServingService
    jobs: MemoryJobStore
    audit: MemoryAuditStore
    keys: KeyStates


@dataclasses.dataclass
class World:
    spec: JobSpec
    parties: dict[str, Party]
    peers: Peers
    clock: Clock

    def score(self, ids: Sequence[str], operator: str = "alice") -> Scored:
        any_firm = next(iter(BANK_FEATURES.values()))  # for an id the bank made up
        applicants = [Applicant(i, BANK_FEATURES.get(i, any_firm)) for i in ids]
        return self.parties["bank"].service.score(self.spec.job_id, applicants, operator)

    def records(self, party: str, event: Event) -> list[AuditRecord]:
        return [
            r
            for r in self.parties[party].audit.read()
            if r.event == event and r.job_id == self.spec.job_id
        ]


BANK_FEATURES: dict[str, dict[str, float]] = {}


def _bank_features(data: dict[str, Table]) -> None:
    table = data["applicants"]
    names = [c for c in table.columns if c != "company_id"]
    for row, company in enumerate(table.column("company_id")):
        BANK_FEATURES[company] = {n: float(table.column(n)[row]) for n in names}


def build_world(
    tmp_path: Path,
    data: dict[str, Table],
    trained: tuple[str, dict[str, Result]],
    **params: object,
) -> Iterator[World]:
    _bank_features(data)
    model_job, results = trained
    spec = contract_spec(model_job, **params)
    tables = {"bank": data["applicants"], "tax": data["tax_filings"]}
    tables["registry"] = data["business_registry"]
    states = {p: KeyStates() for p in ROLES}
    run_in_memory(
        spec,
        contract_proto.DEFINITION,
        tables,
        LIMITS,
        states=states,  # type: ignore[arg-type]
        prior_results=loaders(trained),
    )
    peers, clock = Peers(), Clock()
    parties: dict[str, Party] = {}
    for party in ROLES:
        audit_store = MemoryAuditStore()
        log = AuditLog(audit_store, KEYS[party], party, utcnow)
        jobs = MemoryJobStore(log)
        training = dataclasses.replace(spec, protocol="vertical_lr", params={}, job_id=model_job)
        jobs.create(training, Event.JOB_PROPOSED)
        for state in (JobState.ACCEPTED, JobState.RUNNING):
            jobs.transition(model_job, state, Event.JOB_ACCEPTED)
        jobs.transition(model_job, JobState.SUCCEEDED, Event.JOB_CLOSED, result=results[party])
        jobs.create(spec, Event.JOB_PROPOSED)
        service = ServingService(
            party,
            ServingPorts(
                jobs=jobs,
                keys=states[party],
                audit=log,
                audit_store=audit_store,
                ledger=ServingLedger(tmp_path / party / "serving.db"),
                peers=peers,
                table=lambda s, party=party: tables[party],  # type: ignore[misc]
            ),
            clock=clock,
        )
        service.start()
        for state in (JobState.ACCEPTED, JobState.RUNNING, JobState.SERVING):
            jobs.transition(spec.job_id, state, Event.JOB_ACCEPTED)
        parties[party] = Party(service, jobs, audit_store, states[party])
        if party != "bank":
            peers.services[party] = service
    world = World(spec, parties, peers, clock)
    try:
        yield world
    finally:
        for p in parties.values():
            p.service.stop()


@pytest.fixture
def world(
    tmp_path: Path, data: dict[str, Table], trained: tuple[str, dict[str, Result]]
) -> Iterator[World]:
    yield from build_world(tmp_path, data, trained)


def held_by_all(data: dict[str, Table]) -> tuple[list[str], list[str]]:
    """Applicants every provider holds, and applicants some provider lacks."""
    held = set(data["tax_filings"].column("company_id")) & set(
        data["business_registry"].column("company_id")
    )
    applicants = list(data["applicants"].column("company_id"))
    return [a for a in applicants if a in held], [a for a in applicants if a not in held]


def wait_for(probe: Callable[[], object], what: str) -> None:
    tick = threading.Event()
    for _ in range(2000):
        if probe():
            return
        tick.wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# -- the contract's set-up -------------------------------------------------------------------


def test_the_set_up_saves_each_providers_key_and_every_public_key(
    data: dict[str, Table], trained: tuple[str, dict[str, Result]]
) -> None:
    spec = contract_spec(trained[0])
    states = {p: MemoryResumeStates() for p in ROLES}
    tables = {"bank": data["applicants"], "tax": data["tax_filings"]}
    tables["registry"] = data["business_registry"]
    results = run_in_memory(
        spec, contract_proto.DEFINITION, tables, LIMITS, states=states,  # type: ignore[arg-type]
        prior_results=loaders(trained),
    )  # fmt: skip
    assert results == {"bank": None, "tax": None, "registry": None}
    saved = {p: states[p].load(spec.job_id, p, contract_proto.KEYS_STATE) for p in PROVIDERS}
    keys = {p: contract_proto.decode_keys(blob or b"") for p, blob in saved.items()}
    assert keys["tax"] == keys["registry"] and set(keys["tax"]) == set(PROVIDERS)
    assert states["tax"].load(spec.job_id, "tax", contract_proto.KEY_STATE) is not None
    assert states["bank"].load(spec.job_id, "bank", contract_proto.KEY_STATE) is None


def test_the_set_up_refuses_a_model_of_other_parties(
    data: dict[str, Table], trained: tuple[str, dict[str, Result]]
) -> None:
    tables = {"bank": data["loan_book"], "tax": data["tax_filings"]}
    alone = train(tables, ("bank", "tax"))  # the tax bureau's part, trained without the registry
    spec = contract_spec(alone[0])
    with pytest.raises(InvalidJobSpecError, match="trained with providers"):
        run_in_memory(
            spec, contract_proto.DEFINITION, {**tables, "registry": data["business_registry"]},
            LIMITS, prior_results=loaders(alone),
        )  # fmt: skip
    with pytest.raises(PriorResultError):
        run_in_memory(
            contract_spec("0" * 32), contract_proto.DEFINITION,
            {**tables, "registry": data["business_registry"]}, LIMITS,
            prior_results=loaders(trained),
        )  # fmt: skip


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"expires": "2020-01-01T00:00:00Z"}, "expired"),
        ({"expires": "2099-01-01T00:00:00Z"}, "at most 366 days"),
        ({"expires": "soon"}, "RFC 3339"),
        ({"max_total": 10}, "at least one full request"),
        ({"max_batch": 20_000}, "max_batch"),
        ({"queriers": "alice,bad name"}, "querier"),
        ({"model_protocol": "vertical_tree"}, "model_protocol"),
    ],
)
def test_contract_terms_are_checked(params: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidJobSpecError, match=match):
        contract_proto.DEFINITION.validate(contract_spec("a" * 32, **params))


def test_the_bank_brings_no_dataset_and_the_terms_are_shown_to_approvers() -> None:
    spec = contract_spec("a" * 32, max_total=1000)
    bank = dataclasses.replace(
        spec.participants[0], dataset="applicants", columns={"id": "company_id"}
    )
    with pytest.raises(InvalidJobSpecError, match="brings no dataset"):
        contract_proto.DEFINITION.validate(
            dataclasses.replace(spec, participants=(bank, *spec.participants[1:]))
        )
    learns = contract_proto.DEFINITION.learns(spec)
    assert "at most 50 a request and 400 a UTC day, 1,000 in all" in learns["bank"]
    assert "never which, nor how many" in learns["bank"] and "masked pairwise" in learns["bank"]
    assert "in the clear, including ids it does not hold" in learns["tax"]
    one = dataclasses.replace(spec, participants=spec.participants[:2])
    assert "tax's exact partial score" in contract_proto.DEFINITION.learns(one)["bank"]
    assert contract_proto.DEFINITION.outputs(spec) == {"score", "intersection"}


# -- requests ----------------------------------------------------------------------------------


def test_scores_equal_the_plaintext_model_and_unheld_ids_are_referred(
    world: World, data: dict[str, Table]
) -> None:
    held, unheld = held_by_all(data)
    ids = held[:30] + unheld[:10]
    scored = world.score(ids)
    expected = dict(zip(held[:30], reference(data, held[:30]).tolist(), strict=True))
    assert [d.id for d in scored.decisions] == ids
    for d in scored.decisions:
        if d.id in expected:
            assert d.probability == pytest.approx(expected[d.id], abs=1e-9)
            assert d.decision == ("decline" if expected[d.id] >= 0.2 else "approve")
        else:
            assert d.probability is None and d.decision == "refer"
    assert {d.decision for d in scored.decisions} == {"approve", "decline", "refer"}
    # Every party recorded the same request (by digest), before it answered.
    for party in ROLES:
        (record,) = world.records(party, Event.SERVING_REQUEST)
        assert record.fields[Key.REQUEST_SHA256] == scored.request_sha256.hex()
        assert record.fields[Key.IDS] == 40 and record.fields[Key.SEQ] == 0
        assert verify_store(world.parties[party].audit, KEYS[party].public_key(), party).ok
    # No provider saw a score, and the providers saw the ids in the clear (declared).
    assert {to for to, _, _ in world.peers.sent} == set(PROVIDERS)
    assert all(sent == ids for _, _, sent in world.peers.sent)


def test_a_replayed_nonce_is_refused_and_recorded(world: World, data: dict[str, Table]) -> None:
    held, _ = held_by_all(data)
    world.score(held[:5])
    _, nonce, ids = world.peers.sent[0]
    tax = world.parties["tax"].service
    with pytest.raises(ReplayedRequestError, match="seen this request's nonce"):
        tax.score_parts(world.spec.job_id, nonce, ids, "bank")
    with pytest.raises(ReplayedRequestError):  # other ids under the same nonce: refused too
        tax.score_parts(world.spec.job_id, nonce, held[5:10], "bank")
    refused = world.records("tax", Event.SERVING_REFUSED)
    assert len(refused) == 2 and all("nonce" in str(r.fields[Key.REASON]) for r in refused)
    assert len(world.records("tax", Event.SERVING_REQUEST)) == 1
    with pytest.raises(NotAuthorizedError, match="only bank"):
        tax.score_parts(world.spec.job_id, bytes(32), ids, "registry")


def test_limits_are_enforced_by_every_provider_and_recorded(
    world: World, data: dict[str, Table]
) -> None:
    held, _ = held_by_all(data)
    with pytest.raises(ServingLimitError, match="at most 50"):
        world.score(held[:51])
    for start in range(0, 400, 50):
        world.score([f"x{start + i}" for i in range(50)])  # 400 today: the daily limit
    with pytest.raises(ServingLimitError, match="daily limit of 400"):
        world.score(held[:1])
    # The bank refused itself; a bank that asks anyway is refused by each provider.
    tax = world.parties["tax"].service
    with pytest.raises(ServingLimitError, match="daily limit"):
        tax.score_parts(world.spec.job_id, b"\x01" * 32, held[:1], "bank")
    assert any("daily limit" in str(r.fields[Key.REASON])
               for r in world.records("tax", Event.SERVING_REFUSED))  # fmt: skip
    world.clock.now = NOW + dt.timedelta(days=1)  # a new UTC day
    assert world.score(held[:3]).decisions


def test_a_total_limit_ends_the_contract(
    tmp_path: Path, data: dict[str, Table], trained: tuple[str, dict[str, Result]]
) -> None:
    held, _ = held_by_all(data)
    for w in build_world(tmp_path, data, trained, max_total=60):
        w.score(held[:50])
        with pytest.raises(ServingLimitError, match="total limit of 60"):
            w.score(held[:11])
        w.score(held[:10])
        for party in ROLES:
            status = w.parties[party].jobs.get(w.spec.job_id)
            assert status.state is JobState.SUCCEEDED and "total limit" in status.error
        with pytest.raises(ContractEndedError, match="succeeded"):
            w.score(held[:1])


def test_a_revoked_or_expired_contract_serves_no_request(
    world: World, data: dict[str, Table]
) -> None:
    held, _ = held_by_all(data)
    world.score(held[:2])
    registry = world.parties["registry"]
    registry.jobs.transition(
        world.spec.job_id, JobState.ABORTED, Event.JOB_CANCELLED, {Key.BY: "registry"},
        error="cancelled by registry's operator: revoked",
    )  # fmt: skip
    with pytest.raises(ServingRefusedError, match="registry.*aborted"):
        world.score(held[:2])
    reasons = [str(r.fields[Key.REASON]) for r in world.records("registry", Event.SERVING_REFUSED)]
    assert reasons and "aborted at registry" in reasons[0]
    assert world.records("bank", Event.SERVING_REFUSED)  # the bank recorded it too
    wait_for(lambda: world.spec.job_id in registry.keys.forgotten, "the revoked keys forgotten")
    # Past its expiry, the bank's own node refuses and ends the contract.
    world.clock.now = EXPIRY
    with pytest.raises(ContractEndedError, match="expired"):
        world.score(held[:2])
    assert world.parties["bank"].jobs.get(world.spec.job_id).state is JobState.SUCCEEDED


def test_only_the_named_queriers_score(
    tmp_path: Path, data: dict[str, Table], trained: tuple[str, dict[str, Result]]
) -> None:
    held, _ = held_by_all(data)
    for w in build_world(tmp_path, data, trained, queriers="loan-system"):
        assert w.score(held[:1], operator="loan-system").decisions
        with pytest.raises(NotAuthorizedError, match="may not score"):
            w.score(held[:1], operator="alice")


def test_each_request_is_under_a_signed_root_with_a_proof(
    world: World, data: dict[str, Table]
) -> None:
    held, _ = held_by_all(data)
    scored = [world.score(held[i : i + 3]) for i in range(0, 15, 3)]

    def covered(party: str) -> int:
        roots = world.records(party, Event.SERVING_ROOT)
        return sum(int(r.fields[Key.COUNT]) for r in roots)  # type: ignore[arg-type]

    for party in ROLES:
        wait_for(lambda p=party: covered(p) == 5, f"{party}'s roots over the five requests")
        service, key = world.parties[party].service, KEYS[party].public_key()
        for s in scored:
            proof = service.prove(world.spec.job_id, s.request_sha256)
            record = verify_request_proof(proof, s.request_sha256, party, key)
            assert record.event == Event.SERVING_ROOT
            with pytest.raises(RequestProofError, match="did not record this request"):
                verify_request_proof(proof, bytes(32), party, key)
        roots = world.records(party, Event.SERVING_ROOT)
        digests = [bytes.fromhex(str(r.fields[Key.REQUEST_SHA256]))
                   for r in world.records(party, Event.SERVING_REQUEST)]  # fmt: skip
        first = roots[0]
        count = int(first.fields[Key.COUNT])  # type: ignore[arg-type]
        assert (
            first.fields[Key.ROOT_HASH] == merkle_root(leaf_hash(d) for d in digests[:count]).hex()
        )
    with pytest.raises(RequestProofError, match="took no request"):
        world.parties["tax"].service.prove(world.spec.job_id, bytes(32))


def test_concurrent_requests_share_group_commits_and_number_without_gaps(
    world: World, data: dict[str, Table]
) -> None:
    held, _ = held_by_all(data)
    errors: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            world.score(held[i : i + 2])
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for party in ROLES:
        seqs = sorted(int(r.fields[Key.SEQ]) for r in world.records(party, Event.SERVING_REQUEST))  # type: ignore[arg-type]
        assert seqs == list(range(24))


class GatedStore(MemoryAuditStore):
    """A store whose first write waits for a gate: what queues meanwhile goes together.

    A group of one record reaches the store through ``append``, a larger one through
    ``append_many``: each counts as one write (one sync) of its size.
    """

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.gate = threading.Event(), threading.Event()
        self.groups: list[int] = []

    def _write(self, size: int) -> None:
        if not self.groups:
            self.entered.set()
            self.gate.wait()
        self.groups.append(size)

    def append(self, record: AuditRecord) -> None:
        self._write(1)
        super().append(record)

    def append_many(self, records: Sequence[AuditRecord]) -> None:
        self._write(len(records))
        for record in records:
            super().append(record)


def test_records_queued_while_the_store_syncs_share_the_next_group_commit(tmp_path: Path) -> None:
    store = GatedStore()
    log = AuditLog(store, KEYS["tax"], "tax", utcnow)
    committer = GroupCommitter(log, ServingLedger(tmp_path / "serving.db"))
    contract = "c" * 32

    def item(i: int) -> Pending:
        fields: dict[str, JsonScalar] = {Key.NONCE: f"{i:064x}", Key.IDS: 1, Key.DAY: "d"}
        return Pending(
            Event.SERVING_REQUEST, contract, fields, (bytes([i]) * 32, bytes(32), 1, "d")
        )

    first = threading.Thread(target=committer.submit, args=(item(0),))
    first.start()
    store.entered.wait()
    queued = [item(i) for i in range(1, 9)]
    threads = [threading.Thread(target=committer.submit, args=(it,)) for it in queued]
    for t in threads:
        t.start()
    wait_for(lambda: len(committer._queue) == 8, "eight queued requests")
    store.gate.set()
    for t in [first, *threads]:
        t.join()
    committer.stop()
    assert store.groups == [1, 8]  # one sync for the eight that waited
    assert sorted(int(r.fields[Key.SEQ]) for r in store.read()) == list(range(9))  # type: ignore[arg-type]
    assert len({r.timestamp for r in store.read()[1:]}) == 1


def test_a_restarted_node_keeps_its_nonces_and_counts_from_the_log(
    tmp_path: Path, world: World, data: dict[str, Table]
) -> None:
    held, _ = held_by_all(data)
    world.score(held[:20])
    _, nonce, ids = world.peers.sent[0]
    tax = world.parties["tax"]
    tax.service.stop()
    (tmp_path / "tax" / "serving.db").unlink()  # even a lost index is rebuilt from the log
    again = ServingService(
        "tax",
        ServingPorts(
            jobs=tax.jobs, keys=tax.keys, audit=AuditLog(tax.audit, KEYS["tax"], "tax", utcnow),
            audit_store=tax.audit, ledger=ServingLedger(tmp_path / "tax" / "serving.db"),
            peers=world.peers, table=lambda s: data["tax_filings"],
        ),
        clock=world.clock,
    )  # fmt: skip
    again.start()
    world.peers.services["tax"] = tax.service = again
    with pytest.raises(ReplayedRequestError):
        again.score_parts(world.spec.job_id, nonce, ids, "bank")
    usage = again._p.ledger.usage(world.spec.job_id, NOW.date().isoformat())
    assert usage.ids_day == 20 and usage.next_seq == 1
    assert world.score(held[:2]).decisions
    assert max(int(r.fields[Key.SEQ]) for r in world.records("tax", Event.SERVING_REQUEST)) == 1  # type: ignore[arg-type]


def test_status_shows_requests_served_and_limits_left(world: World, data: dict[str, Table]) -> None:
    held, _ = held_by_all(data)
    world.score(held[:7])
    jobs = world.parties["tax"].jobs

    def shown() -> bool:
        return "1 requests, 7 applicants" in jobs.get(world.spec.job_id).phase

    wait_for(shown, "the status")
    status = jobs.get(world.spec.job_id)
    assert "393 of 400 left" in status.phase and f"expires {EXPIRES}" in status.phase
    assert (status.done, status.total) == (7, 400)


def test_answers_do_not_show_a_providers_score_alone(world: World, data: dict[str, Table]) -> None:
    held, _ = held_by_all(data)
    world.score(held[:40])
    _, nonce, ids = world.peers.sent[0]
    answer = world.parties["tax"].service.score_parts(world.spec.job_id, b"\x07" * 32, ids, "bank")
    cells = np.frombuffer(answer.answer[12:], dtype="<u8").view(np.int64)
    assert np.abs(cells.astype(np.float64)).min() > 2.0**34  # masked: no score, no flag in clear
