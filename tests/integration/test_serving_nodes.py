"""Real-time scoring under a standing contract, between three node processes over mTLS.

The bank, the tax bureau and the business registry each run as their own process. They train
the credit model once (``vertical_lr``), then each test approves a serving contract of its own
and plays one case: scores equal to the plaintext model, and the regulator checking a request
against a party's signed root; a replayed nonce; a request past the daily limit; a request
after revocation; a request past the expiry; a provider killed and restarted. Every attack is
played as the bank's node itself (its certificate and its signed instance epoch), straight at a
provider, so the provider's own checks are what is tested, not the bank's courtesy.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bund.compute import insecure
from bund.compute import serving as kernel
from bund.parties import identity
from bund.parties.audit import AuditRecord
from bund.parties.cli import app
from bund.parties.client import NodeClient, RemoteError, open_operator_client
from bund.parties.data import Table
from bund.parties.demo_data import generate_finance
from bund.parties.errors import NotAuthorizedError
from bund.parties.follow import follow_job, in_state
from bund.parties.jobs import JobSpec, Participant
from bund.parties.lifecycle.events import Event, Key
from bund.parties.lifecycle.states import JobState
from bund.parties.regulator import audit_federation, load_regulator_config, pull_log
from bund.parties.serving.errors import (
    ReplayedRequestError,
    RequestProofError,
    ServingLimitError,
    ServingRefusedError,
)
from bund.parties.serving.proofs import verify_request_proof
from bund.parties.serving.service import Applicant, Scored
from tests.conftest import Federation, NodeFactory, wait_until
from tests.integration.test_regulator import write_regulator_config
from tests.protocols.test_vertical_lr import ROLES, make_spec, trust_of
from tests.protocols.test_vertical_score import APPLICANTS, reference

SMALL_KEYS = {insecure.ENV_VAR: insecure.ENV_VALUE}  # 512-bit Paillier keys in the processes
PROVIDERS = ("tax", "registry")


@dataclasses.dataclass
class Served:
    """Three node processes that trained the credit model, and what the tests need of it."""

    factory: NodeFactory
    data: dict[str, Table]
    model_job: str
    workdir: Path

    def contract(self, **params: object) -> str:
        """Submit a serving contract at the bank, approve it at the tax bureau, wait until it
        serves at every node; return its id."""
        with self.factory.client("bank") as bank:
            contract_id = bank.submit(contract_spec(self.model_job, **params))
        approve(self.factory, "tax", contract_id, expect="serving_contract")
        for party in ROLES:
            with self.factory.client(party) as c:
                status = follow_job(
                    c, contract_id, until=in_state(JobState.SERVING), timeout=120, interval=0.05
                )
            assert status.state is JobState.SERVING, (party, status.error)
        return contract_id

    def score(self, contract_id: str, ids: list[str]) -> Scored:
        """Score ``ids`` as the bank's loan system does: its operator credential, its features."""
        with open_operator_client(self.workdir / "bank" / "node.toml") as node:
            return node.score(contract_id, [Applicant(i, self.features(i)) for i in ids])

    def features(self, company: str) -> dict[str, float]:
        table = self.data["applicants"]
        rows = table.column("company_id")
        row = rows.index(company) if company in rows else 0  # a made-up id: any firm's values
        return {c: float(table.column(c)[row]) for c in table.columns if c != "company_id"}

    def as_bank(self, to: str) -> NodeClient:
        """A client that calls ``to`` as the bank's node: its certificate and instance epoch."""
        return self.factory.client(to, "bank")

    def log(self, party: str, contract_id: str, event: Event) -> list[AuditRecord]:
        with self.factory.client(party) as c:
            page = c.read_audit(0, 0)
            records = list(page.records)
            while len(records) < page.size:
                more = c.read_audit(len(records), 0).records
                if not more:
                    break
                records.extend(more)
        return [r for r in records if r.job_id == contract_id and r.event == event]

    def held(self) -> tuple[list[str], list[str]]:
        """Applicants that every provider holds, and applicants that some provider lacks."""
        held = set(self.data["tax_filings"].column("company_id")) & set(
            self.data["business_registry"].column("company_id")
        )
        applicants = list(self.data["applicants"].column("company_id"))
        return [a for a in applicants if a in held], [a for a in applicants if a not in held]


def contract_spec(model_job: str, **params: object) -> JobSpec:
    """A serving contract of the bank with the tax bureau and the registry for ``model_job``:
    30 days, batches of 50, 1,000 a day, a root every 0.2 s, unless ``params`` say otherwise."""
    terms: dict[str, object] = {
        "model_job": model_job,
        "expires": _later(days=30),
        "max_batch": 50,
        "max_daily": 1000,
        "root_interval_s": 0.2,
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
    )


def _later(**delta: float) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(**delta)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def approve(f: NodeFactory, name: str, job_id: str, expect: str) -> None:
    """``name``'s approver reads the summary of ``job_id`` and signs it, once it waits."""
    with f.client(name) as c:
        follow_job(c, job_id, until=in_state(JobState.AWAITING_APPROVAL), timeout=60, interval=0.05)
        request = c.approval_request(job_id)
        assert request.spec.protocol == expect
        if expect == "serving_contract":  # the approver reads the terms and what each learns
            summary = "\n".join(request.summary_lines())
            assert "in the clear, including ids it does not hold" in summary
            assert "a UTC day" in summary and "never which, nor how many" in summary
        key = identity.load_audit_signing_key(f.federation.party_dir(name) / "approver_ed25519.key")
        c.approve(job_id, key.sign(request.payload()))


@pytest.fixture(scope="module")
def served(federation: Federation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("serving")
    factory = NodeFactory(federation, workdir)
    data = generate_finance(1500, 11, applicants=APPLICANTS)
    try:
        for party, dataset in ROLES.items():
            path = factory.write_config(
                party,
                allowed=[p for p in ROLES if p != party],
                tables={dataset: data[dataset]},
                approvals=party == "tax",  # the tax bureau's approver signs every job
                audit="witness_interval_s = 300",
                trusted_for=trust_of(party),  # the model is trained without label DP
            )
            factory.spawn(party, path, env=SMALL_KEYS)
        with factory.client("bank") as bank:
            model_job = bank.submit(make_spec())
        approve(factory, "tax", model_job, expect="vertical_lr")
        with factory.client("bank") as bank:
            status = follow_job(bank, model_job, timeout=300, interval=0.1)
        assert status.state is JobState.SUCCEEDED, status.error
        yield Served(factory, data, model_job, workdir)
    finally:
        factory.stop_all()


def test_scores_equal_the_plaintext_model_and_the_regulator_checks_a_request(
    served: Served, tmp_path: Path
) -> None:
    contract_id = served.contract()
    held, unheld = served.held()
    ids = held[:40] + unheld[:10]
    scored = served.score(contract_id, ids)
    expected = dict(zip(held[:40], reference(served.data, held[:40]).tolist(), strict=True))
    assert [d.id for d in scored.decisions] == ids
    for d in scored.decisions:
        if d.id in expected:
            assert d.probability == pytest.approx(expected[d.id], abs=1e-9)
            assert d.decision == ("decline" if expected[d.id] >= 0.2 else "approve")
        else:  # some provider lacks it: refer, without saying which
            assert d.probability is None and d.decision == "refer"
    # Each party recorded the request (by digest) before answering, and its status shows it.
    for party in ROLES:
        (record,) = served.log(party, contract_id, Event.SERVING_REQUEST)
        assert record.fields[Key.REQUEST_SHA256] == scored.request_sha256.hex()
        assert record.fields[Key.IDS] == 50
        with served.factory.client(party) as c:
            wait_until(
                lambda c=c: "1 requests, 50 applicants" in c.status(contract_id).phase or None,
                30,
                f"{party}'s status",
            )
            status = c.status(contract_id)
        assert status.state is JobState.SERVING and "950 of 1,000 left" in status.phase
    # The regulator checks the request against each party's signed root, with its own keys.
    addresses = {p: f"127.0.0.1:{served.factory.port(p)}" for p in ROLES}
    config = write_regulator_config(
        tmp_path / "regulator.toml", served.factory.federation, addresses
    )
    regulator = load_regulator_config(config)
    for party in ROLES:
        audited = regulator.parties[party]
        with NodeClient(audited.address, party, regulator.tls) as node:
            proof = wait_until(
                lambda node=node: _proof(node, contract_id, scored.request_sha256),
                30,
                f"{party}'s root over the request",
            )
            root = verify_request_proof(
                proof, scored.request_sha256, party, audited.audit_public_key
            )
            pulled = pull_log(node, audited.audit_public_key)
        assert pulled.records[root.index] == root  # the very record of the party's log
        # The contract never closes, yet its roots are witnessed: logging one asks the
        # contract's parties to witness the party's tree head (the interval here is 300 s).
        for witness in set(ROLES) - {party}:
            wait_until(
                lambda w=witness, p=party, i=root.index: _witnessed(served, w, p, i),
                30,
                f"{witness} to witness {party}'s head over its root",
            )
        with pytest.raises(RequestProofError, match="did not record this request"):
            verify_request_proof(proof, bytes(32), party, audited.audit_public_key)
    # The set-up closed like any job: the regulator reconciles every log without an error.
    outcome = audit_federation(regulator)
    assert outcome.errors == 0, [f for f in outcome.findings if f.severity == "error"]


def _witnessed(served: Served, witness: str, party: str, index: int) -> bool | None:
    """Whether ``witness`` holds a head of ``party``'s log that covers record ``index``."""
    with served.factory.client(witness) as c:
        heads = c.witnessed_heads(0, 0).heads
    return any(h.head.party == party and h.head.tree_size > index for _, h in heads) or None


def _proof(node: NodeClient, contract_id: str, digest: bytes) -> object:
    try:
        return node.prove_request(contract_id, digest)
    except RemoteError as exc:  # not under a root yet: ask again
        if "not under a signed root yet" in exc.details:
            return None
        raise


def test_a_replayed_request_is_refused_and_recorded_by_the_provider(served: Served) -> None:
    contract_id = served.contract()
    held, _ = served.held()
    scored = served.score(contract_id, held[:5])
    with served.as_bank("tax") as tax:
        with pytest.raises(ReplayedRequestError, match="nonce"):
            tax.score_parts(contract_id, scored.nonce, held[:5])
        with pytest.raises(ReplayedRequestError):  # the same nonce with other ids: refused too
            tax.score_parts(contract_id, scored.nonce, held[5:10])
    refused = served.log("tax", contract_id, Event.SERVING_REFUSED)
    assert len(refused) == 2 and all("nonce" in str(r.fields[Key.REASON]) for r in refused)
    assert all(r.fields[Key.PEER] == "bank" for r in refused)
    # Another party's node cannot ask a provider at all.
    registry_node = NodeClient(
        f"127.0.0.1:{served.factory.port('tax')}", "tax", served.factory.federation.tls("registry")
    )
    with registry_node, pytest.raises(NotAuthorizedError):
        registry_node.score_parts(contract_id, secrets.token_bytes(32), held[:1])


def test_a_bank_that_sends_each_provider_other_ids_gets_noise(served: Served) -> None:
    """Masks are bound to the request: mixing requests under one nonce yields no sum at all."""
    contract_id = served.contract()
    held, _ = served.held()
    nonce = secrets.token_bytes(32)
    with served.as_bank("tax") as tax, served.as_bank("registry") as registry:
        a = tax.score_parts(contract_id, nonce, held[:20])
        b = registry.score_parts(contract_id, nonce, held[20:40])
    vectors = [kernel.decode_answer(x.answer, 20) for x in (a, b)]
    totals, complete = kernel.combine_answers(vectors, 20)
    assert not any(complete)  # every "missing" indicator is noise: nothing to read as a score
    assert min(abs(t) for t in totals) > 2**34


def test_requests_past_the_daily_limit_are_refused_by_each_provider(served: Served) -> None:
    contract_id = served.contract(max_batch=10, max_daily=20)
    held, _ = served.held()
    with pytest.raises(ServingLimitError, match="at most 10"):
        served.score(contract_id, held[:11])
    served.score(contract_id, held[:10])
    served.score(contract_id, held[10:20])
    with pytest.raises(ServingLimitError, match="daily limit of 20"):
        served.score(contract_id, held[20:21])
    # A bank that asks anyway is refused by each provider, which records why.
    for provider in PROVIDERS:
        with served.as_bank(provider) as node, pytest.raises(ServingLimitError, match="daily"):
            node.score_parts(contract_id, secrets.token_bytes(32), held[20:21])
        reasons = [str(r.fields[Key.REASON])
                   for r in served.log(provider, contract_id, Event.SERVING_REFUSED)]  # fmt: skip
        assert any("daily limit of 20" in r for r in reasons)
        assert len(served.log(provider, contract_id, Event.SERVING_REQUEST)) == 2


def test_a_revoked_contract_refuses_the_next_request(served: Served) -> None:
    contract_id = served.contract()
    held, _ = served.held()
    served.score(contract_id, held[:3])
    with served.factory.client("registry") as registry:
        registry.cancel(contract_id, "revoked by the registry's DPO")
    for party in ROLES:  # every party learns it at once
        with served.factory.client(party) as c:
            status = follow_job(c, contract_id, timeout=30, interval=0.05)
        assert status.state is JobState.ABORTED, (party, status.state)
    with pytest.raises(ServingRefusedError, match="aborted"):
        served.score(contract_id, held[:3])
    # The registry refuses a bank that asks anyway, and records it.
    with served.as_bank("registry") as node, pytest.raises(ServingRefusedError, match="aborted"):
        node.score_parts(contract_id, secrets.token_bytes(32), held[:3])
    assert served.log("registry", contract_id, Event.SERVING_REFUSED)
    assert served.log("bank", contract_id, Event.SERVING_REFUSED)
    (cancelled,) = served.log("registry", contract_id, Event.JOB_CANCELLED)
    assert cancelled.fields["from_state"] == "serving"


def test_a_request_past_the_expiry_is_refused_and_the_contract_ends(served: Served) -> None:
    contract_id = served.contract(expires=_later(seconds=25))
    held, _ = served.held()
    assert served.score(contract_id, held[:2]).decisions
    for party in ROLES:  # each node ends it at its own clock
        with served.factory.client(party) as c:
            status = follow_job(c, contract_id, timeout=90, interval=0.2)
        assert status.state is JobState.SUCCEEDED and "expired" in status.error
        (ended,) = served.log(party, contract_id, Event.CONTRACT_ENDED)
        assert "expired" in str(ended.fields[Key.REASON])
    with pytest.raises(ServingRefusedError, match="succeeded"):
        served.score(contract_id, held[:2])
    with served.as_bank("tax") as node, pytest.raises(ServingRefusedError, match="succeeded"):
        node.score_parts(contract_id, secrets.token_bytes(32), held[:2])
    assert served.log("tax", contract_id, Event.SERVING_REFUSED)


def test_a_contract_survives_a_provider_killed_and_restarted(served: Served) -> None:
    contract_id = served.contract(max_daily=100)
    held, _ = served.held()
    first = served.score(contract_id, held[:30])
    served.factory.kill("tax")
    served.factory.spawn("tax", served.workdir / "tax" / "node.toml", env=SMALL_KEYS)
    with served.factory.client("tax") as tax:
        assert tax.status(contract_id).state is JobState.SERVING
    again = served.score(contract_id, held[:30])  # its masking key came back, sealed
    assert [d.probability for d in again.decisions] == pytest.approx(
        [d.probability for d in first.decisions], abs=1e-12
    )
    with served.as_bank("tax") as tax:
        with pytest.raises(ReplayedRequestError):  # it still knows the nonces it took
            tax.score_parts(contract_id, first.nonce, held[:30])
        with pytest.raises(ServingLimitError, match="40 left today"):  # and what it served
            tax.score_parts(contract_id, secrets.token_bytes(32), held[:41])


def test_only_the_banks_operators_score_at_the_banks_node(served: Served) -> None:
    contract_id = served.contract(queriers="loan-system")
    held, _ = served.held()
    with served.factory.client("bank") as bank, pytest.raises(NotAuthorizedError, match="may not"):
        bank.score(contract_id, [Applicant(held[0], served.features(held[0]))])
    with (
        served.factory.client("tax") as tax,
        pytest.raises(NotAuthorizedError, match="ask at bank"),
    ):
        tax.score(contract_id, [Applicant(held[0], served.features(held[0]))])


def test_bund_score_and_bund_audit_request(served: Served, tmp_path: Path) -> None:
    contract_id = served.contract()
    held, unheld = served.held()
    rows = ["id," + ",".join(served.features(held[0]))]
    for company in (held[0], unheld[0]):
        rows.append(",".join([company, *(str(v) for v in served.features(company).values())]))
    applicants = tmp_path / "applicants.csv"
    applicants.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "decisions.csv"
    config = served.workdir / "bank" / "node.toml"
    runner = CliRunner()
    r = runner.invoke(
        app,
        ["score", contract_id, "--config", str(config), "--applicants", str(applicants),
         "--id-column", "id", "--out", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "id,decision,probability" and lines[2] == f"{unheld[0]},refer,"
    digest = r.output.split("request sha256 ")[1].split()[0]
    addresses = {p: f"127.0.0.1:{served.factory.port(p)}" for p in ROLES}
    regulator = write_regulator_config(
        tmp_path / "regulator.toml", served.factory.federation, addresses
    )

    def checked() -> str | None:
        r = runner.invoke(
            app, ["audit", "request", contract_id, digest, "--config", str(regulator),
                  "--party", "registry"],
        )  # fmt: skip
        return r.output if r.exit_code == 0 else None

    assert "OK: registry recorded request 0" in wait_until(checked, 30, "registry's root")
    r = runner.invoke(
        app, ["audit", "request", contract_id, "0" * 64, "--config", str(regulator),
              "--party", "tax"],
    )  # fmt: skip
    assert r.exit_code == 1 and "took no request with this digest" in r.output
