"""The demo: a bank, the tax bureau and the business registry as three node processes on loopback.

It issues the certificates, starts the nodes on OS-chosen ports, runs PSI between the bank and the
tax bureau on the demo data, shows the intersection size and where the result went, then runs the
``credit-model`` workflow (WOE/IV screening, vertical logistic regression, scoring of new
applicants) between all three and shows the bank-only against the joint AUC; every job is
approved at every node by its data owner's approver key. Finally the regulator reconciles the
three signed logs, the nodes stop, and each log is verified.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table as RichTable

from compute.errors import BundError
from parties import identity
from parties.audit import open_audit_store, verify_store
from parties.client import NodeClient, PeerClients, RemoteError
from parties.config import NodeConfig, load_config
from parties.data import (
    DEMO_COMPANIES_PER_SCALE,
    DEMO_SEED,
    generate_finance,
    write_csv,
    write_demo_data,
)
from parties.jobs import JobSpec, JobState, JobStatus, Participant
from parties.workflow import load_credit_workflow, run_credit_model

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


@dataclass(frozen=True)
class DemoOutcome:
    """What the demo computed: for the test that checks it against plaintext."""

    root: Path
    data_dir: Path
    intersection: tuple[str, ...]
    summary: dict[str, object]
    audit_records: dict[str, int]
    credit: dict[str, dict[str, object]]


class DemoError(BundError):
    """The demo could not run; the message says which step failed and where its log is."""


@dataclass(frozen=True)
class DemoParty:
    """One party of the demo: its role and the dataset it serves."""

    name: str
    role: str
    dataset: str
    csv: str
    id_column: str
    extra: tuple[tuple[str, str], ...] = ()


PARTIES = (
    DemoParty(
        "bank",
        "bank",
        "loan_book",
        "finance/loan_book.csv",
        "company_id",
        (("applicants", "finance/applicants.csv"),),
    ),
    DemoParty("tax", "tax", "tax_filings", "finance/tax_filings.csv", "company_id"),
    DemoParty(
        "registry", "registry", "business_registry", "finance/business_registry.csv", "company_id"
    ),
)


def write_node_config(
    root: Path,
    party: DemoParty,
    data_dir: Path,
    others: list[DemoParty],
    approvals: bool = True,
) -> Path:
    """Write ``root/party/node.toml`` and ``policy.toml``: loopback port 0, its datasets.

    The datasets are classified ``confidential`` (company financial data, not personal data)
    and open to PSI and the credit-model protocols only; approvals are on, as in production.
    """
    datasets = ((party.dataset, party.csv), *party.extra)
    node = f"""# Node configuration of {party.name} (written by `bund demo`).
party = "{party.name}"
listen = "127.0.0.1:0"
state_dir = "state"
peers_file = "../peers.toml"
policy_file = "policy.toml"

[tls]
ca = "ca.pem"
cert = "node.pem"
key = "node.key"

[audit]
signing_key = "audit_ed25519.key"
public_key = "audit_ed25519.pub"

[limits]
recv_timeout_s = 120
approval_timeout_s = 600

""" + "".join(
        f'\n[datasets.{name}]\nkind = "csv"\npath = "{(data_dir / csv).as_posix()}"\n'
        for name, csv in datasets
    )
    counterparties = "".join(f'[counterparties.{o.name}]\nroles = ["{o.role}"]\n\n' for o in others)
    policy = f"""# Policy of {party.name}'s node (written by `bund demo`).
cohort_floor = 10

[limits]
psi_max_set_size = 1000000

[approvals]
required = {"true" if approvals else "false"}
approver_key = "approver_ed25519.pub"

{counterparties}""" + "".join(
        f'[datasets.{name}]\nowner = "{party.name}"\nlevel = "confidential"\n'
        'protocols = ["psi", "woe_iv", "vertical_lr", "vertical_score"]\n\n'
        for name, _ in datasets
    )
    home = root / party.name
    (home / "policy.toml").write_text(policy, encoding="utf-8")
    (home / "node.toml").write_text(node, encoding="utf-8")
    return home / "node.toml"


def approve_as(
    client: NodeClient, home: Path, job_id: str, console: Console, show: bool = True
) -> None:
    """Play a data owner's approver: show the summary (if ``show``), sign with the approver key."""
    request = client.approval_request(job_id)
    if show:
        console.print(f"[bold]{request.party}'s approver reviews:[/]")
        for line in request.summary_lines():
            console.print(f"  {line}", markup=False, highlight=False)
    signer = identity.load_audit_signing_key(home / identity.APPROVER_KEY)
    client.approve(job_id, signer.sign(request.payload()))
    if show:
        console.print(f"  [green]approved[/] by {request.party}")


def wait_state(client: NodeClient, job_id: str, state: JobState, timeout: float = 60.0) -> None:
    """Wait until a node reports the job in ``state`` (or final)."""
    deadline = time.monotonic() + timeout
    while (status := client.status(job_id)).state is not state:
        if status.state.final or time.monotonic() > deadline:
            raise DemoError(
                f"job {job_id} is {status.state.value} at {client.party}: {status.error}"
            )
        time.sleep(0.05)


def start_node(config_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``bund serve`` for one node as a separate process, logging to node.log beside it."""
    with (config_path.parent / "node.log").open("ab") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "parties.cli", "serve", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )


def wait_for_port(config: NodeConfig, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """Wait until a node wrote its port file; fail early if its process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(
                f"{config.party}'s node exited with {proc.returncode}; "
                f"see {config.source.parent / 'node.log'}"
                if config.source
                else f"{config.party}'s node exited"
            )
        try:
            return int(config.port_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            time.sleep(0.1)
    raise DemoError(f"{config.party}'s node did not start within {timeout:.0f} s")


def stop_nodes(procs: dict[str, subprocess.Popen[bytes]], timeout: float = 20.0) -> None:
    """SIGTERM every node and wait for it to exit; SIGKILL stragglers."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_final(client: NodeClient, job_id: str, timeout: float = 600.0) -> JobStatus:
    """Poll a job until it is final."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.status(job_id)
        if status.state.final:
            return status
        if time.monotonic() > deadline:
            raise DemoError(f"job {job_id} still {status.state.value} after {timeout:.0f} s")
        time.sleep(0.1)


def audit_as_regulator(root: Path, fed: Path, ports: dict[str, int], console: Console) -> int:
    """The regulator pulls every party's signed log over mTLS, reconciles them, writes a report.

    Returns the number of error findings (zero for an honest run).
    """
    from parties.regulator import audit_federation, load_regulator_config
    from parties.report import write_report

    reg = root / "regulator"
    identity.create_party(fed, "regulator", "regulator", reg)
    parties = "".join(
        f'[parties.{p.name}]\naddress = "127.0.0.1:{ports[p.name]}"\n'
        f'audit_public_key = "../{p.name}/{identity.AUDIT_PUB}"\n\n'
        for p in PARTIES
    )
    config = reg / "regulator.toml"
    config.write_text(
        '[tls]\nca = "ca.pem"\ncert = "node.pem"\nkey = "node.key"\n\n' + parties,
        encoding="utf-8",
    )
    outcome = audit_federation(load_regulator_config(config))
    report = reg / "report.html"
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


def run_credit_demo(
    root: Path, configs: dict[str, NodeConfig], ports: dict[str, int], console: Console
) -> dict[str, dict[str, object]]:
    """The credit-model workflow between the three nodes, every job approved by every owner.

    Returns:
        Each step's result summary at the bank, by step name.
    """
    console.rule("[bold]credit model: WOE/IV screening, joint training, scoring of applicants")
    bank = PARTIES[0]
    spec_file = root / bank.name / "credit-workflow.toml"
    spec_file.write_text(CREDIT_WORKFLOW, encoding="utf-8")
    workflow = load_credit_workflow(spec_file, bank.name)
    clients = {
        p.name: NodeClient(f"127.0.0.1:{ports[p.name]}", p.name, configs[p.name].tls)
        for p in PARTIES
    }
    peers = PeerClients(configs[bank.name])

    def approve_everywhere(step: str, job_id: str) -> None:
        for party in PARTIES:
            wait_state(clients[party.name], job_id, JobState.AWAITING_APPROVAL)
            approve_as(clients[party.name], root / party.name, job_id, console, show=False)
        console.print(f"{step} job {job_id}: approved by {', '.join(p.name for p in PARTIES)}")

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


def run_demo(workdir: Path | None, console: Console) -> DemoOutcome:
    """Run the whole demo; raise ``DemoError`` naming the failed step."""
    root = workdir or Path(tempfile.mkdtemp(prefix="bund-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]Bund demo: bank x tax bureau x business registry")
    fed = root / "federation"
    identity.create_federation(fed, "shanghai-demo")
    data_dir = root / "data"
    write_demo_data(data_dir)
    finance = generate_finance(DEMO_COMPANIES_PER_SCALE, DEMO_SEED, applicants=DEMO_APPLICANTS)
    write_csv(finance["applicants"], data_dir / "finance" / "applicants.csv")
    console.print(f"federation CA and demo data in {root}")

    configs: dict[str, NodeConfig] = {}
    for party in PARTIES:
        identity.create_party(fed, party.name, party.role, root / party.name)
        others = [p for p in PARTIES if p.name != party.name]
        configs[party.name] = load_config(write_node_config(root, party, data_dir, others))
        console.print(f"  issued certificate for [bold]{party.name}[/] ({party.role})")

    env = dict(os.environ)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for party in PARTIES:
            procs[party.name] = start_node(configs[party.name].source or Path(), env)
        ports = {name: wait_for_port(cfg, procs[name]) for name, cfg in configs.items()}
        (root / "peers.toml").write_text(
            "".join(f'[{name}]\naddress = "127.0.0.1:{port}"\n\n' for name, port in ports.items())
        )
        for name, port in ports.items():
            console.print(
                f"  node [bold]{name}[/] serving mTLS on 127.0.0.1:{port} (pid {procs[name].pid})"
            )

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
        cfg_bank, cfg_tax = configs[bank.name], configs[tax.name]
        with (
            NodeClient(f"127.0.0.1:{ports[bank.name]}", bank.name, cfg_bank.tls) as bank_client,
            NodeClient(f"127.0.0.1:{ports[tax.name]}", tax.name, cfg_tax.tls) as tax_client,
        ):
            started = time.monotonic()
            job_id = bank_client.submit(spec)
            console.print(f"PSI job [bold]{job_id}[/] submitted by the bank")
            for client, party in ((bank_client, bank), (tax_client, tax)):
                wait_state(client, job_id, JobState.AWAITING_APPROVAL)
                approve_as(client, root / party.name, job_id, console)
            status = wait_final(bank_client, job_id)
            elapsed = time.monotonic() - started
            if status.state is not JobState.SUCCEEDED:
                raise DemoError(f"PSI job ended {status.state.value}: {status.error}")
            result = bank_client.result(job_id)
            tax_status = wait_final(tax_client, job_id)
            try:
                tax_client.result(job_id)
                raise DemoError("the tax bureau holds a result it must not have")
            except RemoteError as exc:
                tax_refusal = exc.details
        summary = RichTable(title=f"PSI result ({elapsed:.1f} s)", show_header=False)
        summary.add_row("bank's set", f"{result.summary['own_set_size']:,}")
        summary.add_row("tax bureau's set", f"{result.summary['peer_set_size']:,}")
        summary.add_row("[bold]intersection", f"[bold]{result.summary['intersection_size']:,}")
        summary.add_row("result delivered to", ", ".join(spec.receivers))
        summary.add_row(
            "tax bureau's node", f"{tax_status.state.value}, holds no result ({tax_refusal})"
        )
        summary.add_row("transcript (bank)", status.transcript_digest[:16] + "...")
        summary.add_row("transcript (tax)", tax_status.transcript_digest[:16] + "...")
        console.print(summary)
        credit = run_credit_demo(root, configs, ports, console)
        findings = audit_as_regulator(root, fed, ports, console)
    finally:
        stop_nodes(procs)
        console.print("nodes stopped")

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
    console.print(f"files kept in {root}")
    if findings:
        raise DemoError(f"the regulator found {findings} errors; see {root / 'regulator'}")
    ids = result.artifacts["intersection.csv"].decode("utf-8").splitlines()[1:]
    return DemoOutcome(root, data_dir, tuple(ids), dict(result.summary), counts, credit)
