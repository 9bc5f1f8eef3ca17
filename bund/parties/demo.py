"""The demo: two scenarios of `bund serve` node processes on loopback, each audited by a regulator.

*Finance*: a bank, the tax bureau and the business registry. PSI between the bank and the tax
bureau on the demo data shows the intersection size and where the result went; then the
``credit-model`` workflow (WOE/IV screening, vertical logistic regression, scoring of new
applicants) between all three shows the bank-only against the joint AUC.

*Health*: three hospitals and an insurer. The hospitals' patients are ``restricted-personal``
with a privacy budget that every DP job draws on. The insurer, as analyst, gets a DP cohort table
and a DP Kaplan–Meier curve over the three hospitals' pooled patients, a DP log-rank test of
survival by sex and a DP Cox model of age and kidney function; scores hospital-b's patients with
its own risk model under CKKS encryption; and coordinates a short federated DP-SGD run across the
hospitals.

Every job is approved at every node that brings data by its owner's approver key. After each
scenario the regulator reconciles the signed logs of its nodes, the nodes stop, and each log is
verified.
"""

from __future__ import annotations

import csv
import io
import tempfile
import time
from collections.abc import Callable, Collection, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from bund.compute.errors import BundError
from bund.parties import identity
from bund.parties.approvals import ApprovalRequest
from bund.parties.audit import open_audit_store, verify_store
from bund.parties.client import NodeClient, PeerClients, RemoteError
from bund.parties.config import NodeConfig, load_config, operator_of
from bund.parties.data import write_csv
from bund.parties.demo_data import (
    DEMO_COMPANIES_PER_SCALE,
    DEMO_PATIENTS_PER_SCALE,
    DEMO_SEED,
    generate_finance,
    generate_health,
    write_demo_data,
)
from bund.parties.follow import follow_job, in_state
from bund.parties.jobs import JobSpec, JsonScalar, Participant, Result
from bund.parties.lifecycle.states import JobState, JobStatus
from bund.parties.processes import CatalogEntry, NodeFiles, NodeGroup, write_node_files
from bund.parties.protocols import ckks_scoring
from bund.parties.workflow import load_credit_workflow, run_credit_model

T = TypeVar("T")

#: New loan applicants the bank scores at the end of the demo.
DEMO_APPLICANTS = 200
#: The demo's credit-model workflow (``examples/credit/workflow.toml`` explains each key). Its
#: training parameters keep the demo near a minute on two cores with 2048-bit keys.
CREDIT_WORKFLOW = """workflow = "credit-model"
purpose = "Joint SME credit model: the bank's loan book with tax filings and registry records"

[bank]
dataset = "loan_book"
columns = { id = "company_id", label = "default_12m" }
applicants = "applicants"

[[providers]]
party = "tax"
dataset = "tax_filings"
columns = { id = "company_id" }

[[providers]]
party = "registry"
dataset = "business_registry"
columns = { id = "company_id" }

[screening]
bins = 10
min_bin_rows = 20

[training]
epochs = 8
batch_size = 256
learning_rate = 1.0
lr_decay = 0.1
seed = 7
test_fraction = 0.3
cutoff = 0.2

[scoring]
cutoff = 0.2
"""
#: The longest the demo follows one job, in seconds.
JOB_TIMEOUT_S = 600.0
#: Every node's cohort floor; the DP jobs suppress noisy counts below it too (``min_cell``).
COHORT_FLOOR = 10
#: The protocols the finance parties' company data is open to.
FINANCE_PROTOCOLS = ("psi", "woe_iv", "vertical_lr", "vertical_score")
#: The protocols the hospitals' patient data is open to.
HEALTH_PROTOCOLS = ("dp_stats", "ckks_scoring", "fed_dp_sgd", "cox_ph")
#: Each hospital's (epsilon, delta) budget on its patients: room for the cohort table (ε = 1),
#: the survival curve (ε = 1/2), the log-rank test (ε = 1/2), the Cox model (ε = 4.1) and the
#: federated run (ε ≈ 9.37, δ = 1e-5: DP-SGD ε ≈ 3.37 and three held-out evaluations of ε = 2
#: each), with a little to spare.
HOSPITAL_BUDGET = ("17", "1/10000")
#: The seed of the insurer's own claims history, on which it fits its risk model.
INSURER_SEED = DEMO_SEED + 1
#: The DP cohort table: hospital patients aged 65 and over by diagnosis and sex.
COHORT_QUERY: Mapping[str, JsonScalar] = {
    "kind": "contingency",
    "filter": "age>=65",
    "column": "diagnosis",
    "categories": "I21|I25|I48|I50|E11|N18",
    "column2": "sex",
    "categories2": "F|M",
    "epsilon": "1",
    "min_cell": COHORT_FLOOR,
}
#: The DP Kaplan–Meier curve: death over six years of follow-up, in half-year bins.
SURVIVAL_QUERY: Mapping[str, JsonScalar] = {
    "kind": "survival",
    "column": "follow_up_days",
    "event": "event",
    "lower": "0",
    "upper": "2190",
    "bins": 12,
    "epsilon": "1/2",
    "min_cell": COHORT_FLOOR,
}
#: The DP log-rank test: survival by sex, yearly bins over six years, one curve per sex.
LOGRANK_QUERY: Mapping[str, JsonScalar] = {
    **SURVIVAL_QUERY,
    "bins": 6,
    "column2": "sex",
    "categories2": "F|M",
}
#: The DP Cox model: death by age and kidney function, yearly bins. One Newton step from zero
#: (the release whose signal is strongest) at ε = 4, and the concordance from 10 score bins at
#: ε = 1/10. At ε = 1 the noise's error in each coefficient is about 40 times the sampling error
#: on these 4,500 patients, at ε = 4 about five times (docs/protocols/cox-ph.md, "Figures").
COX_PARAMS: Mapping[str, JsonScalar] = {
    "features": "age,egfr_ml_min_1_73m2",
    "upper": "2190",
    "bins": 6,
    "iterations": 1,
    "epsilon": "4",
    "concordance_bins": 10,
    "concordance_epsilon": "1/10",
    "min_cell": COHORT_FLOOR,
}
#: The federated DP-SGD run: a logistic model of death, three rounds across the hospitals, each
#: trained model evaluated on the hospitals' held-out patients (binned AUC and log-loss, ε = 2 a
#: hospital per evaluation: about ±0.07 on the AUC and ±0.03 on the log-loss at 95 %).
FED_PARAMS: Mapping[str, JsonScalar] = {
    "model": "logistic",
    "rounds": 3,
    "local_steps": 20,
    "sample_rate": 0.05,
    "noise_multiplier": 1.0,
    "max_grad_norm": 1.0,
    "delta": "1/100000",
    "max_dropouts": 1,
    "seed": 1,
    "evaluate": "every_round",
    "eval_epsilon": "2",
    "eval_bins": 20,
}


@dataclass(frozen=True)
class DemoOutcome:
    """What the demo computed: for the test that checks it against plaintext.

    ``credit`` and ``health`` hold each job's result summary by step; the health jobs' artifacts
    lie in ``health_results / step``.
    """

    root: Path
    data_dir: Path
    intersection: tuple[str, ...]
    summary: dict[str, object]
    audit_records: dict[str, int]
    credit: dict[str, dict[str, object]]
    health: dict[str, dict[str, object]]
    health_results: Path


class DemoError(BundError):
    """The demo could not run; the message says which step failed and where its log is."""


@dataclass(frozen=True)
class DemoParty:
    """One party of the demo: its role, the dataset it serves and that dataset's policy.

    ``id_column`` is empty for a dataset without one (the insurer's model); ``budget`` is the
    dataset's ``(epsilon, delta)`` privacy budget, or None for data no DP job may draw on;
    ``cohort_floor`` is the node's smallest dataset that may take part in a job.
    """

    name: str
    role: str
    dataset: str
    csv: str
    id_column: str
    extra: tuple[tuple[str, str], ...] = ()
    level: str = "confidential"
    protocols: tuple[str, ...] = FINANCE_PROTOCOLS
    budget: tuple[str, str] | None = None
    cohort_floor: int = COHORT_FLOOR
    #: (counterparty, protocol) pairs its policy trusts, and who may receive per-record scores.
    trusted_for: tuple[tuple[str, str], ...] = ()
    release_scores_to: tuple[str, ...] = ()


PARTIES = (
    DemoParty(
        "bank",
        "bank",
        "loan_book",
        "finance/loan_book.csv",
        "company_id",
        (("applicants", "finance/applicants.csv"),),
        # The bank decrypts what the providers send in vertical_lr: a deviating provider could read
        # its training labels. The tax bureau and the registry are public bodies bound by law and
        # contract, and label DP would cost the model accuracy, so the bank's policy trusts them
        # with vertical_lr (docs/protocols/vertical-lr.md); its approver is shown the risk.
        trusted_for=(("tax", "vertical_lr"), ("registry", "vertical_lr")),
    ),
    DemoParty("tax", "tax", "tax_filings", "finance/tax_filings.csv", "company_id"),
    DemoParty(
        "registry", "registry", "business_registry", "finance/business_registry.csv", "company_id"
    ),
)
HOSPITALS = tuple(
    DemoParty(
        f"hospital-{x}",
        "hospital",
        "patients",
        f"health/hospital_{x}.csv",
        "patient_id",
        level="restricted-personal",
        protocols=HEALTH_PROTOCOLS,
        budget=HOSPITAL_BUDGET,
        # The insurer receives CKKS scores: the hospitals trust it to follow the protocol (a
        # deviating insurer could read a column back); their policy says so, the approver sees it.
        trusted_for=(("insurer", "ckks_scoring"),),
        release_scores_to=("insurer",),
    )
    for x in "abc"
)
#: The insurer's only dataset is its model (a few weights, no records of people), so no cohort
#: floor above one row applies to it.
INSURER = DemoParty(
    "insurer",
    "insurer",
    "risk_model",
    "insurer/risk_model.csv",
    "",
    protocols=("ckks_scoring",),
    cohort_floor=1,
)


@dataclass(frozen=True)
class Scenario:
    """One scenario: its parties' nodes run together; ``key`` names its files."""

    key: str
    title: str
    parties: tuple[DemoParty, ...]


FINANCE = Scenario("finance", "bank x tax bureau x business registry", PARTIES)
HEALTH = Scenario("health", "three hospitals x an insurer", (*HOSPITALS, INSURER))


def node_files(
    root: Path,
    party: DemoParty,
    data_dir: Path,
    others: list[DemoParty],
    peers_file: Path,
    approvals: bool = True,
) -> NodeFiles:
    """What ``root/party``'s node.toml and policy.toml say: loopback port 0, its datasets.

    Each dataset gets the party's classification level, protocols and privacy budget (the
    finance parties' company data is ``confidential``, not personal data, with no DP budget);
    approvals are on, as in production. The party's keys lie in ``root/party`` beside the files.
    """
    epsilon, delta = party.budget or (None, None)
    return NodeFiles(
        party=party.name,
        home=root / party.name,
        identity=root / party.name,
        peers_file=peers_file,
        counterparties=tuple((o.name, o.role) for o in others),
        trusted_for=party.trusted_for,
        datasets=tuple(
            CatalogEntry(
                name,
                data_dir / csv,
                party.level,
                party.protocols,
                epsilon,
                delta,
                party.release_scores_to,
            )
            for name, csv in ((party.dataset, party.csv), *party.extra)
        ),
        approvals=approvals,
        cohort_floor=party.cohort_floor,
        written_by="`bund demo`",
        federation=root / "federation",
    )


def approve_as(
    client: NodeClient, home: Path, job_id: str, console: Console, show: bool = True
) -> ApprovalRequest:
    """Play a data owner's approver: show the summary (if ``show``), sign with the approver key.

    Returns what the approver reviewed.
    """
    request = client.approval_request(job_id)
    if show:
        console.print(f"[bold]{request.party}'s approver reviews:[/]")
        for line in request.summary_lines():
            console.print(f"  {line}", markup=False, highlight=False)
    signer = identity.load_audit_signing_key(home / identity.APPROVER_KEY)
    client.approve(job_id, signer.sign(request.payload()))
    if show:
        console.print(f"  [green]approved[/] by {request.party}")
    return request


def wait_awaiting_approval(client: NodeClient, job_id: str, timeout: float = 60.0) -> None:
    """Follow the job at a data owner's node until it awaits that owner's approval.

    Raises:
        DemoError: If the job ended there before it asked for approval.
    """
    awaiting = JobState.AWAITING_APPROVAL
    status = follow_job(client, job_id, until=in_state(awaiting), timeout=timeout, interval=0.05)
    if status.state is not awaiting:
        raise DemoError(f"job {job_id} is {status.state.value} at {client.party}: {status.error}")


@dataclass(frozen=True)
class DemoNodes:
    """The running nodes of one scenario: where their files are, their configs and ports."""

    root: Path
    configs: Mapping[str, NodeConfig]
    ports: Mapping[str, int]

    def client(self, party: str) -> NodeClient:
        """A client to ``party``'s node, as its operator (the credential ``party init`` issued)."""
        tls = operator_of(self.configs[party]).tls
        return NodeClient(f"127.0.0.1:{self.ports[party]}", party, tls)


@dataclass(frozen=True)
class JobRun:
    """A demo job that succeeded: its id, the requester's final status, the first receiver's result.

    ``elapsed`` is the seconds from submission to the requester's final state.
    """

    job_id: str
    status: JobStatus
    result: Result
    elapsed: float


def run_job(
    nodes: DemoNodes,
    clients: Mapping[str, NodeClient],
    spec: JobSpec,
    label: str,
    console: Console,
    show: Collection[str] = (),
) -> JobRun:
    """Submit ``spec`` at its requester, have every data owner approve it, wait for the result.

    The approvers of the parties in ``show`` print what they review; the others sign silently.

    Raises:
        DemoError: If the job ends other than succeeded.
    """
    started = time.monotonic()
    job_id = clients[spec.requester].submit(spec)
    console.print(f"{label} job [bold]{job_id}[/] submitted by {spec.requester}")
    owners = [p.party for p in spec.participants if p.dataset is not None]
    reviewed = []
    for party in owners:
        wait_awaiting_approval(clients[party], job_id)
        reviewed.append(
            approve_as(clients[party], nodes.root / party, job_id, console, show=party in show)
        )
    silent = [party for party in owners if party not in show]
    if silent:
        console.print(f"  approved by {', '.join(silent)}")
    if reviewed and not show:  # a shown summary said it already
        for name, what in sorted(reviewed[0].learns.items()):
            console.print(f"  {name} learns {what}", markup=False, highlight=False)
    status = follow_job(clients[spec.requester], job_id, timeout=JOB_TIMEOUT_S, interval=0.1)
    elapsed = time.monotonic() - started
    if status.state is not JobState.SUCCEEDED:
        raise DemoError(f"{label} job {job_id} ended {status.state.value}: {status.error}")
    return JobRun(job_id, status, clients[spec.receivers[0]].result(job_id), elapsed)


def audit_as_regulator(
    root: Path, scenario: Scenario, ports: Mapping[str, int], console: Console
) -> int:
    """The regulator pulls every party's signed log over mTLS, reconciles them, writes a report.

    The regulator's identity lies in ``root/regulator``; the scenario's config and HTML report
    are written there, named by the scenario's key. Returns the number of error findings (zero
    for an honest run).
    """
    from bund.parties.regulator import audit_federation, load_regulator_config
    from bund.parties.report import write_report

    reg = root / "regulator"
    parties = "".join(
        f'[parties.{p.name}]\naddress = "127.0.0.1:{ports[p.name]}"\n'
        f'audit_public_key = "../{p.name}/{identity.AUDIT_PUB}"\n\n'
        for p in scenario.parties
    )
    config = reg / f"{scenario.key}.toml"
    config.write_text(
        '[tls]\nca = "ca.pem"\ncert = "node.pem"\nkey = "node.key"\n\n'
        f'[federation]\nrevocations = "../federation/{identity.REVOCATIONS_FILE}"\n\n' + parties,
        encoding="utf-8",
    )
    outcome = audit_federation(load_regulator_config(config))
    report = reg / f"{scenario.key}-report.html"
    write_report(outcome, report)
    verdict = (
        "[green]all logs verified and reconciled[/]"
        if not outcome.errors
        else (f"[red]{outcome.errors} error findings[/]")
    )
    console.print(
        f"regulator: pulled {sum(s.records for s in outcome.parties)} signed records from "
        f"{len(outcome.parties)} parties: {verdict}; report {report}"
    )
    return outcome.errors


def verify_logs(configs: Mapping[str, NodeConfig], console: Console) -> dict[str, int]:
    """Verify each stopped node's audit log on disk; print and return the record counts.

    Raises:
        DemoError: Naming the first log that fails verification, and where.
    """
    audit_table = RichTable("party", "records", "audit log")
    counts: dict[str, int] = {}
    for name, cfg in configs.items():
        with open_audit_store(cfg.audit_store, read_only=True) as store:
            report = verify_store(store, identity.load_audit_public_key(cfg.audit_pub))
        if not report.ok:
            raise DemoError(
                f"{name}'s audit log fails at record {report.first_bad_index}: {report.reason}"
            )
        audit_table.add_row(name, str(report.count), "[green]verified[/]")
        counts[name] = report.count
    console.print(audit_table)
    return counts


def run_scenario(
    root: Path,
    fed: Path,
    data_dir: Path,
    scenario: Scenario,
    jobs: Callable[[DemoNodes, Console], T],
    console: Console,
) -> tuple[T, dict[str, int]]:
    """Issue certificates, start the scenario's nodes, run ``jobs``, audit, stop, verify the logs.

    Returns:
        What ``jobs`` returned, and each node's verified audit record count.

    Raises:
        DemoError: If a node does not start, a job fails, a log fails verification, or the
            regulator finds errors.
    """
    console.rule(f"[bold]Bund demo: {scenario.title}")
    configs: dict[str, NodeConfig] = {}
    paths: dict[str, Path] = {}
    peers_file = root / f"peers-{scenario.key}.toml"
    for party in scenario.parties:
        identity.create_party(fed, party.name, party.role, root / party.name)
        others = [p for p in scenario.parties if p.name != party.name]
        paths[party.name] = write_node_files(node_files(root, party, data_dir, others, peers_file))
        configs[party.name] = load_config(paths[party.name])
        console.print(f"  issued certificate for [bold]{party.name}[/] ({party.role})")

    group = NodeGroup(peers_file)
    try:
        ports = group.spawn_all(paths)
        for name, port in ports.items():
            console.print(
                f"  node [bold]{name}[/] serving mTLS on 127.0.0.1:{port} "
                f"(pid {group.processes[name].pid})"
            )
        value = jobs(DemoNodes(root, configs, ports), console)
        findings = audit_as_regulator(root, scenario, ports, console)
    finally:
        group.stop()
        console.print("nodes stopped")
    counts = verify_logs(configs, console)
    if findings:
        raise DemoError(f"the regulator found {findings} errors; see {root / 'regulator'}")
    return value, counts


def save_artifacts(result: Result, directory: Path) -> Path:
    """Write a result's artifacts into ``directory`` (by base name only) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in result.artifacts.items():
        (directory / Path(name).name).write_bytes(data)
    return directory


# -- finance ---------------------------------------------------------------------------------


def run_psi(nodes: DemoNodes, console: Console) -> tuple[tuple[str, ...], dict[str, object]]:
    """PSI between the bank and the tax bureau; the bank alone receives the intersection.

    Returns:
        The intersection's company ids and the result summary at the bank.
    """
    bank, tax = PARTIES[0], PARTIES[1]
    spec = JobSpec(
        protocol="psi",
        participants=(
            Participant(bank.name, "member", bank.dataset, {"id": bank.id_column}),
            Participant(tax.name, "member", tax.dataset, {"id": tax.id_column}),
        ),
        receivers=(bank.name,),
        purpose="Align the bank's SME loan book with tax filings before joint credit modelling",
        requester=bank.name,
        params={"mode": "intersection"},
    )
    with nodes.client(bank.name) as bank_client, nodes.client(tax.name) as tax_client:
        clients = {bank.name: bank_client, tax.name: tax_client}
        run = run_job(nodes, clients, spec, "PSI", console, show=(bank.name, tax.name))
        tax_status = follow_job(tax_client, run.job_id, timeout=JOB_TIMEOUT_S, interval=0.1)
        try:
            tax_client.result(run.job_id)
            raise DemoError("the tax bureau holds a result it must not have")
        except RemoteError as exc:
            tax_refusal = exc.details
    result = run.result
    summary = RichTable(title=f"PSI result ({run.elapsed:.1f} s)", show_header=False)
    summary.add_row("bank's set", f"{result.summary['own_set_size']:,}")
    summary.add_row("tax bureau's set", f"{result.summary['peer_set_size']:,}")
    summary.add_row("[bold]intersection", f"[bold]{result.summary['intersection_size']:,}")
    summary.add_row("result delivered to", ", ".join(spec.receivers))
    summary.add_row(
        "tax bureau's node",
        f"{tax_status.state.value}, holds no result ({escape(tax_refusal)})",
    )
    summary.add_row("transcript (bank)", run.status.transcript_digest[:16] + "...")
    summary.add_row("transcript (tax)", tax_status.transcript_digest[:16] + "...")
    console.print(summary)
    ids = result.artifacts["intersection.csv"].decode("utf-8").splitlines()[1:]
    return tuple(ids), dict(result.summary)


def run_credit_demo(nodes: DemoNodes, console: Console) -> dict[str, dict[str, object]]:
    """The credit-model workflow between the three nodes, every job approved by every owner.

    Returns:
        Each step's result summary at the bank, by step name.
    """
    console.rule("[bold]credit model: WOE/IV screening, joint training, scoring of applicants")
    root, bank = nodes.root, PARTIES[0]
    spec_file = root / bank.name / "credit-workflow.toml"
    spec_file.write_text(CREDIT_WORKFLOW, encoding="utf-8")
    workflow = load_credit_workflow(spec_file, bank.name)
    clients = {p.name: nodes.client(p.name) for p in PARTIES}
    peers = PeerClients(nodes.configs[bank.name])

    def approve_everywhere(step: str, job_id: str) -> None:
        reviewed = []
        for party in PARTIES:
            wait_awaiting_approval(clients[party.name], job_id)
            reviewed.append(
                approve_as(clients[party.name], root / party.name, job_id, console, show=False)
            )
        console.print(f"{step} job {job_id}: approved by {', '.join(p.name for p in PARTIES)}")
        for name, what in sorted(reviewed[0].learns.items()):
            console.print(f"  {name} learns {what}", markup=False, highlight=False)

    try:
        outcome = run_credit_model(
            clients[bank.name],
            workflow,
            console,
            out=root / bank.name / "credit-results",
            step_timeout=600,
            on_submitted=approve_everywhere,
            peers=peers,
        )
    except BundError as exc:
        raise DemoError(f"the credit-model workflow stopped: {exc}") from exc
    finally:
        peers.close()
        for client in clients.values():
            client.close()
    console.print(
        f"results (ROC and KS charts, scores.csv) in {root / bank.name / 'credit-results'}"
    )
    return {s.name: dict(s.result.summary) for s in outcome.steps}


def run_finance_jobs(
    nodes: DemoNodes, console: Console
) -> tuple[tuple[str, ...], dict[str, object], dict[str, dict[str, object]]]:
    """The finance scenario's jobs: PSI, then the credit-model workflow."""
    ids, summary = run_psi(nodes, console)
    return ids, summary, run_credit_demo(nodes, console)


# -- health ----------------------------------------------------------------------------------


def dp_spec(query: Mapping[str, JsonScalar], purpose: str) -> JobSpec:
    """A ``dp_stats`` job over the three hospitals' patients with the insurer as analyst."""
    return JobSpec(
        protocol="dp_stats",
        participants=(
            *(Participant(h.name, "contributor", h.dataset) for h in HOSPITALS),
            Participant(INSURER.name, "analyst"),
        ),
        receivers=(INSURER.name,),
        purpose=purpose,
        requester=INSURER.name,
        params=dict(query),
    )


def fed_spec() -> JobSpec:
    """The ``fed_dp_sgd`` job: the insurer coordinates, the three hospitals train."""
    return JobSpec(
        protocol="fed_dp_sgd",
        participants=(
            Participant(INSURER.name, "coordinator"),
            *(Participant(h.name, "hospital", h.dataset) for h in HOSPITALS),
        ),
        receivers=(INSURER.name,),
        purpose="A mortality-risk model trained across three hospitals with DP-SGD",
        requester=INSURER.name,
        params=dict(FED_PARAMS),
    )


def cox_spec() -> JobSpec:
    """The ``cox_ph`` job: the insurer fits a Cox model across the three hospitals."""
    return JobSpec(
        protocol="cox_ph",
        participants=(
            *(
                Participant(h.name, "hospital", h.dataset, {"time": "follow_up_days"})
                for h in HOSPITALS
            ),
            Participant(INSURER.name, "analyst"),
        ),
        receivers=(INSURER.name,),
        purpose="Mortality hazard by age and kidney function across three hospitals",
        requester=INSURER.name,
        params=dict(COX_PARAMS),
    )


def write_insurer_model(data_dir: Path) -> Path:
    """Write the insurer's ``risk_model`` dataset: a logistic model of death during follow-up.

    The insurer fits it on its own claims history, a cohort drawn like hospital-b's patients
    with another seed, so the model has never seen the patients it scores.
    """
    history = generate_health(DEMO_PATIENTS_PER_SCALE, INSURER_SEED)["hospital_b"]
    model = ckks_scoring.make_demo_model(history, kind="logistic")
    return write_csv(model, data_dir / INSURER.csv)


def _decimal(rational: object) -> float:
    """An exact rational as released (``"3368083/1000000"``), as a float to print."""
    return float(Fraction(str(rational)))


def _rows(result: Result, name: str) -> list[dict[str, str]]:
    """The rows of a CSV artifact."""
    return list(csv.DictReader(io.StringIO(result.artifacts[name].decode("utf-8"))))


def show_cohort(run: JobRun, folder: Path, console: Console) -> None:
    """Print the DP contingency table as diagnosis rows by sex columns."""
    query = COHORT_QUERY
    cells = {(r["diagnosis"], r["sex"]): r["count"] for r in _rows(run.result, "result.csv")}
    sexes = str(query["categories2"]).split("|")
    table = RichTable(
        "diagnosis",
        *sexes,
        title=f"DP cohort: {query['filter']}, ε = {query['epsilon']} ({run.elapsed:.1f} s)",
        min_width=48,
    )
    for diagnosis in str(query["categories"]).split("|"):
        table.add_row(diagnosis, *(escape(cells[(diagnosis, s)]) for s in sexes))
    console.print(table)
    console.print(
        f"noisy counts below {query['min_cell']} suppressed "
        f"({run.result.summary['suppressed_cells']} cells); CSV {folder / 'result.csv'}",
        highlight=False,
        markup=False,
    )


def show_survival(run: JobRun, folder: Path, console: Console) -> None:
    """Print the noisy Kaplan–Meier survival at 1, 3 and 5 years and where the curve went."""
    by_end = {r["end"]: r["survival"] for r in _rows(run.result, "result.csv")}
    points = ", ".join(
        f"{y} y {float(by_end[str(365 * y)]):.3f}" if by_end.get(str(365 * y)) else f"{y} y -"
        for y in (1, 3, 5)
    )
    console.print(
        f"DP Kaplan–Meier survival (ε = {SURVIVAL_QUERY['epsilon']}, {run.elapsed:.1f} s): "
        f"{points}",
        highlight=False,
        markup=False,
    )
    console.print(
        f"curve with noise band: {folder / 'survival.png'}", highlight=False, markup=False
    )


def show_logrank(run: JobRun, folder: Path, console: Console) -> None:
    """Print the DP log-rank test: statistic, p-value, observed and expected deaths per group."""
    s = run.result.summary
    groups = ", ".join(
        f"{g}: {s[f'logrank_observed_{g}']:.0f} deaths, {s[f'logrank_expected_{g}']:.1f} expected"
        for g in str(LOGRANK_QUERY["categories2"]).split("|")
    )
    console.print(
        f"DP log-rank test by sex (ε = {LOGRANK_QUERY['epsilon']}, {run.elapsed:.1f} s): "
        f"χ² = {s['logrank_statistic']:.2f}, df {s['logrank_df']}, p = {s['logrank_p_value']:.3g} "
        f"({groups}); curves {folder / 'survival.png'}",
        highlight=False,
        markup=False,
    )


def show_cox(run: JobRun, folder: Path, console: Console) -> None:
    """Print the DP Cox model's hazard ratios with their 95 % intervals (sampling and noise)."""
    s = run.result.summary
    table = RichTable(
        "covariate",
        "hazard ratio per unit",
        "95 % interval",
        "of which noise (se)",
        title=f"DP Cox model, ε = {s['epsilon']} ({run.elapsed:.1f} s)",
        min_width=48,
    )
    for row in _rows(run.result, "coefficients.csv"):
        table.add_row(
            row["covariate"],
            f"{float(row['hazard_ratio']):.3f}",
            f"{float(row['hr_lower_95']):.3f}–{float(row['hr_upper_95']):.3f}",
            f"{float(row['se_noise']):.3g} of {float(row['se']):.3g}",
        )
    console.print(table)
    console.print(
        f"concordance {s.get('concordance')} (±{s.get('concordance_tolerance')} from score bins); "
        f"forest plot {folder / 'hazard_ratios.png'}",
        highlight=False,
        markup=False,
    )


def show_scores(run: JobRun, folder: Path, console: Console) -> None:
    """Print how many patients were scored, the first few scores and the error bound."""
    s = run.result.summary
    rows = _rows(run.result, "scores.csv")
    table = RichTable(
        "patient_id",
        "score",
        title=f"encrypted risk scores (first 3 of {len(rows):,})",
        min_width=48,
    )
    for row in rows[:3]:
        table.add_row(escape(row["patient_id"]), escape(row["score"]))
    console.print(table)
    console.print(
        f"{s['patients']:,} patients of {HOSPITALS[1].name} scored under CKKS (N = {s['degree']}, "
        f"{run.elapsed:.1f} s); each score within ±{s['score_error_bound']:.1e} of the "
        f"plaintext model (docs/protocols/ckks-scoring.md); CSV {folder / 'scores.csv'}",
        highlight=False,
        markup=False,
    )


def _plus_minus(value: str, band: str, digits: int) -> str:
    """``"0.741 ± 0.065"`` from a history row's value and noise band ("-" when there is none)."""
    if not value:
        return "-"
    return f"{float(value):.{digits}f} ± {float(band or 0):.{digits}f}"


def show_training(run: JobRun, folder: Path, console: Console) -> None:
    """Print each trained model's noisy held-out AUC and log-loss and the ε spent by then."""
    s = run.result.summary
    history = _rows(run.result, "history.csv")
    table = RichTable(
        "rounds trained",
        "held-out AUC",
        "held-out log-loss",
        "rows",
        "ε per hospital",
        title=f"federated DP-SGD, logistic ({run.elapsed:.1f} s)",
    )
    for h in history:
        if not h["eval_rows"]:
            continue
        table.add_row(
            h["round"],
            _plus_minus(h["auc"], h["auc_band"], 3),
            _plus_minus(h["log_loss"], h["log_loss_band"], 3),
            h["eval_rows"],
            f"{_decimal(h['epsilon']):.3f}",
        )
    console.print(table)
    epsilons = ", ".join(f"{h.name} {_decimal(s[f'epsilon_{h.name}']):.3f}" for h in HOSPITALS)
    training = _decimal(s[f"epsilon_training_{HOSPITALS[0].name}"])
    console.print(
        f"{s['rounds_run']} rounds, {s['evaluations_run']} evaluations; ε per hospital: "
        f"{epsilons} (DP-SGD {training:.3f}, each evaluation {s['eval_epsilon']}; "
        f"δ = {s['delta']}). AUC from {s['eval_bins']} score bins, within "
        f"±{float(s['final_auc_tolerance'] or 0):.3f} of the exact AUC before noise; "
        f"± is the 95 % noise band; curves {folder / 'training_curves.png'}",
        highlight=False,
        markup=False,
    )


def run_health_jobs(nodes: DemoNodes, console: Console) -> dict[str, dict[str, object]]:
    """The health scenario's jobs, requested by the insurer, approved by every data owner.

    Each job's artifacts are saved in ``root/insurer/health-results/<step>``.

    Returns:
        Each step's result summary at the insurer, by step name.
    """
    out = nodes.root / INSURER.name / "health-results"
    hospital_b = HOSPITALS[1].name
    steps: list[tuple[str, str, JobSpec, Callable[[JobRun, Path, Console], None]]] = [
        (
            "cohort",
            "DP cohort table",
            dp_spec(COHORT_QUERY, "Older patients by diagnosis and sex across three hospitals"),
            show_cohort,
        ),
        (
            "survival",
            "DP survival curve",
            dp_spec(SURVIVAL_QUERY, "Six-year survival of patients across three hospitals"),
            show_survival,
        ),
        (
            "logrank",
            "DP log-rank test",
            dp_spec(LOGRANK_QUERY, "Does survival differ between women and men?"),
            show_logrank,
        ),
        ("cox", "DP Cox model", cox_spec(), show_cox),
        (
            "scoring",
            "Encrypted scoring",
            ckks_scoring.make_spec(
                hospital_b, INSURER.name, kind="logistic", receivers=(INSURER.name,), degree=8192
            ),
            show_scores,
        ),
        ("training", "Federated DP-SGD", fed_spec(), show_training),
    ]
    summaries: dict[str, dict[str, object]] = {}
    with ExitStack() as stack:
        clients = {p.name: stack.enter_context(nodes.client(p.name)) for p in HEALTH.parties}
        for step, label, spec, show in steps:
            review = (HOSPITALS[0].name,) if step == "cohort" else ()
            run = run_job(nodes, clients, spec, label, console, show=review)
            show(run, save_artifacts(run.result, out / step), console)
            summaries[step] = dict(run.result.summary)
    stats = sum(
        _decimal(summaries[step]["epsilon"]) for step in ("cohort", "survival", "logrank", "cox")
    )
    training = summaries["training"]
    spent = ", ".join(
        f"{h.name} {stats + _decimal(training[f'epsilon_{h.name}']):.3f}" for h in HOSPITALS
    )
    console.print(
        f"privacy budget: ε spent per hospital (of {HOSPITAL_BUDGET[0]}): {spent}",
        highlight=False,
        markup=False,
    )
    return summaries


def run_demo(workdir: Path | None, console: Console) -> DemoOutcome:
    """Run the whole demo, finance then health; raise ``DemoError`` naming the failed step."""
    root = workdir or Path(tempfile.mkdtemp(prefix="bund-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    fed = root / "federation"
    identity.create_federation(fed, "shanghai-demo")
    identity.create_party(fed, "regulator", "regulator", root / "regulator")
    data_dir = root / "data"
    write_demo_data(data_dir)
    finance = generate_finance(DEMO_COMPANIES_PER_SCALE, DEMO_SEED, applicants=DEMO_APPLICANTS)
    write_csv(finance["applicants"], data_dir / "finance" / "applicants.csv")
    write_insurer_model(data_dir)
    console.print(f"federation CA and demo data in {root}")

    (ids, summary, credit), counts = run_scenario(
        root, fed, data_dir, FINANCE, run_finance_jobs, console
    )
    health, health_counts = run_scenario(root, fed, data_dir, HEALTH, run_health_jobs, console)
    console.print(f"files kept in {root}")
    return DemoOutcome(
        root,
        data_dir,
        ids,
        summary,
        counts | health_counts,
        credit,
        health,
        root / INSURER.name / "health-results",
    )
