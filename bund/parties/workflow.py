"""Workflows: a chain of real jobs submitted to this party's node, one after the other.

``credit-model`` is the inclusive-finance chain of issue 5: joint WOE/IV screening (``woe_iv``),
then vertical logistic regression with its held-out evaluation (``vertical_lr``), then scoring of
new applicants with the model just trained (``vertical_score``); with ``model = "secureboost"``
the model is gradient-boosted trees (``vertical_secureboost``, scored by
``vertical_tree_score``). Each step is an ordinary job,
submitted through :class:`bund.parties.client.NodeClient` to the requester's (the bank's) own node,
authorised by every participant's policy and approvers, audited, and waited for; the chain stops
at the first step that does not succeed and says which, why, and what did not run.

The workflow file (``examples/credit/workflow.toml``, ``docs/guides/credit-model.md``) names the
parties and datasets once; each step's spec is derived from it exactly as the per-step spec
files under ``examples/credit/`` spell it out for ``bund job submit``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, Field
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from bund.compute.errors import BundError
from bund.parties.follow import FollowTimeoutError, StatusSource, follow_job
from bund.parties.jobs import JobSpec, JsonScalar, Participant, Result
from bund.parties.lifecycle.states import JobState, JobStatus
from bund.parties.schema import Name, Scalar, StrictModel, Text, parse_file, read_toml

if TYPE_CHECKING:
    from bund.parties.client import NodeClient

LABEL_HOLDER = "label_holder"
FEATURE_HOLDER = "feature_holder"
#: The steps of ``credit-model``: (name, protocol, what it does), with the logistic model.
CREDIT_STEPS = (
    ("screening", "woe_iv", "WOE/IV screening of the providers' features"),
    ("training", "vertical_lr", "vertical logistic regression and its evaluation"),
    ("scoring", "vertical_score", "scoring of new applicants"),
)
#: The steps with the tree model (``model = "secureboost"``).
TREE_STEPS = (
    CREDIT_STEPS[0],
    ("training", "vertical_secureboost", "vertical gradient-boosted trees and their evaluation"),
    ("scoring", "vertical_tree_score", "scoring of new applicants with the trees"),
)
#: The workflow file's ``model`` -> its steps.
MODELS = {"logistic": CREDIT_STEPS, "secureboost": TREE_STEPS}


class WorkflowSpecError(BundError):
    """A workflow file is missing, malformed or names an unknown workflow: the message says what."""


class WorkflowError(BundError):
    """A step of a workflow did not succeed; the message names the step, its job and the reason."""


@dataclass(frozen=True)
class CreditParty:
    """One party of the credit workflow: its training dataset and its applicants' dataset."""

    party: str
    dataset: str
    columns: Mapping[str, str]
    applicants: str
    applicant_columns: Mapping[str, str]


@dataclass(frozen=True)
class CreditWorkflow:
    """What ``credit-model`` runs: who, on which datasets, with which parameters per step."""

    purpose: str
    bank: CreditParty
    providers: tuple[CreditParty, ...]
    params: Mapping[str, Mapping[str, JsonScalar]]
    model: str = "logistic"

    @property
    def steps(self) -> tuple[tuple[str, str, str], ...]:
        """The steps of this workflow's model: (name, protocol, what it does)."""
        return MODELS[self.model]

    def spec(self, step: str, model_job: str = "") -> JobSpec:
        """The job spec of ``step`` (``model_job``: the training job's id, for scoring).

        Raises:
            InvalidJobSpecError: If the spec is invalid (a bad name or parameter).
        """
        protocol = {s: p for s, p, _ in self.steps}[step]
        scoring = step == "scoring"
        params = dict(self.params.get(step, {}))
        if scoring:
            params["model_job"] = model_job

        def member(p: CreditParty, role: str) -> Participant:
            if scoring:
                return Participant(p.party, role, p.applicants, p.applicant_columns)
            return Participant(p.party, role, p.dataset, p.columns)

        participants = (member(self.bank, LABEL_HOLDER),) + tuple(
            member(p, FEATURE_HOLDER) for p in self.providers
        )
        # Training delivers each party its own part of the model; the others go to the bank only.
        receivers = (
            tuple(p.party for p in participants) if step == "training" else (self.bank.party,)
        )
        return JobSpec(
            protocol,
            participants,
            receivers,
            f"{self.purpose} ({step})",
            self.bank.party,
            params,
        )


# --- the workflow file's schema ---------------------------------------------------------------


def _binds_id(columns: dict[str, str]) -> dict[str, str]:
    if "id" not in columns:
        raise ValueError('must bind id: columns = { id = "..." } names the company-id column')
    return columns


Columns = Annotated[dict[Name, Text], AfterValidator(_binds_id)]


class _Member(StrictModel):
    dataset: Name = Field(description="its training dataset: one row per company")
    columns: Columns = Field(description='logical column -> its own: { id = "..." }')
    applicants: Name | None = Field(
        default=None, description="the dataset the applicants are scored from (default: dataset)"
    )
    applicant_columns: Columns | None = Field(
        default=None, description="the applicants' column bindings (default: id as in columns)"
    )


class _Provider(_Member):
    party: Name = Field(description="the provider's party")


#: A step's parameters: JSON scalars, checked by the step's protocol's schema.
StepParams = dict[Name, Scalar]


class CreditWorkflowFile(StrictModel):
    """A ``credit-model`` workflow file as written (``examples/credit/workflow.toml``)."""

    workflow: Literal["credit-model"] = Field(
        default="credit-model", description="the workflow this file describes"
    )
    purpose: Text = Field(description="why the credit model is built")
    model: Literal["logistic", "secureboost"] = Field(
        default="logistic",
        description="the joint model: logistic regression (vertical_lr) or gradient-boosted "
        "trees (vertical_secureboost, scored by vertical_tree_score)",
    )
    bank: _Member = Field(description="this node's party: labels, the key, the scores")
    providers: list[_Provider] = Field(description="the feature providers, one [[providers]] each")
    screening: StepParams = Field(default_factory=dict, description="woe_iv parameters")
    training: StepParams = Field(
        default_factory=dict, description="vertical_lr (or vertical_secureboost) parameters"
    )
    scoring: StepParams = Field(
        default_factory=dict, description="vertical_score (or vertical_tree_score) parameters"
    )


def _party(member: _Member, party: str) -> CreditParty:
    applicant_columns = member.applicant_columns or {"id": member.columns["id"]}
    return CreditParty(
        party,
        member.dataset,
        dict(member.columns),
        member.applicants or member.dataset,
        dict(applicant_columns),
    )


def parse_credit_workflow(doc: Mapping[str, Any], requester: str, where: str) -> CreditWorkflow:
    """Build a :class:`CreditWorkflow` from a parsed workflow file; the bank is ``requester``.

    Each step's parameters are checked by its protocol's schema, and each step's spec by its
    protocol, before anything is submitted.

    Raises:
        WorkflowSpecError: Naming the file, the key to fix and the nearest known key.
    """
    from bund.parties.protocols import PROTOCOLS  # the registry is heavy: import it when needed

    if isinstance(doc.get("workflow"), str) and doc["workflow"] != "credit-model":
        raise WorkflowSpecError(f"{where} describes workflow {doc['workflow']!r}, not credit-model")
    file = parse_file(CreditWorkflowFile, doc, where, WorkflowSpecError)
    if "label" not in file.bank.columns:
        raise WorkflowSpecError(f'{where}: bank.columns needs label = "..." (the 0/1 default flag)')
    if not file.providers:
        raise WorkflowSpecError(f"{where}: name at least one [[providers]] entry")
    if "model_job" in file.scoring:
        raise WorkflowSpecError(
            f"{where}: scoring.model_job is the training step's job id: the workflow fills it in"
        )
    workflow = CreditWorkflow(
        file.purpose.strip(),
        _party(file.bank, requester),
        tuple(_party(p, p.party) for p in file.providers),
        {"screening": file.screening, "training": file.training, "scoring": file.scoring},
        file.model,
    )
    for step, protocol, _ in workflow.steps:
        try:
            PROTOCOLS[protocol].validate(workflow.spec(step, "0" * 32))
        except BundError as exc:
            raise WorkflowSpecError(f"{where}: {step} ({protocol}): {exc}") from None
    return workflow


def load_credit_workflow(path: Path, requester: str) -> CreditWorkflow:
    """Read a ``credit-model`` workflow file.

    Raises:
        WorkflowSpecError: If the file is missing, not TOML, or malformed.
    """
    doc = read_toml(path, "workflow file", WorkflowSpecError)
    return parse_credit_workflow(doc, requester, str(path))


@dataclass(frozen=True)
class StepOutcome:
    """A step that succeeded: its job and the bank's result."""

    name: str
    job_id: str
    status: JobStatus
    result: Result


@dataclass
class WorkflowOutcome:
    """Every step that succeeded, in order."""

    steps: list[StepOutcome] = field(default_factory=list)

    def step(self, name: str) -> StepOutcome:
        """The outcome of step ``name``; ``KeyError`` if it did not run."""
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)


#: Called with (step name, job id) once a step's job is submitted (the demo approves there).
OnSubmitted = Callable[[str, str], None]


class PeerStatus(Protocol):
    """Asks another participant's node for a job's status (``bund.parties.client.PeerClients``)."""

    def status(self, to: str, job_id: str, timeout: float | None = None) -> JobStatus:
        """``to``'s view of ``job_id``."""
        ...


@dataclass(frozen=True)
class _PeerView:
    """One participant's node, seen through ``PeerStatus``: what ``follow_job`` asks."""

    peers: PeerStatus
    party: str

    def status(self, job_id: str) -> JobStatus:
        return self.peers.status(self.party, job_id)


def _follow(
    source: StatusSource,
    job_id: str,
    progress: Progress,
    task: TaskID,
    timeout: float,
    interval: float,
) -> JobStatus:
    """Follow a step's job at one node until it is terminal, showing its progress."""

    def show(status: JobStatus) -> None:
        progress.update(
            task,
            state=status.state.value,
            phase=status.phase,
            completed=status.done,
            total=status.total or None,
            count=f"{status.done:,}/{status.total:,}" if status.total else "",
        )

    try:
        return follow_job(source, job_id, timeout=timeout, on_update=show, interval=interval)
    except FollowTimeoutError as exc:
        raise WorkflowError(str(exc)) from None


def run_credit_model(
    client: NodeClient,
    workflow: CreditWorkflow,
    console: Console,
    *,
    out: Path | None = None,
    step_timeout: float = 86_400.0,
    on_submitted: OnSubmitted | None = None,
    peers: PeerStatus | None = None,
    poll_interval: float = 0.2,
) -> WorkflowOutcome:
    """Run screening, training and scoring as three jobs at the bank's node, in order.

    Shows each step's state and progress, prints each result's headline figures, and writes every
    artifact under ``out/<step>/`` when ``out`` is given. With ``peers``, a step counts as done
    only once every participant's node reports it succeeded: a provider stores its part of the
    model just after the bank closes the training job, and scoring must not start before.

    Raises:
        WorkflowError: At the first step that is refused, fails or is aborted (the later steps do
            not run), or that a participant's node refuses at submission.
    """
    outcome = WorkflowOutcome()
    names = [s for s, _, _ in workflow.steps]
    with Progress(
        TextColumn("{task.fields[step]:<10}"),
        TextColumn("[bold]{task.fields[state]:<17}[/]"),
        TextColumn("{task.fields[phase]:<8}"),
        BarColumn(),
        TextColumn("{task.fields[count]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        tasks = {
            s: progress.add_task(
                what, start=False, total=None, step=s, state="pending", phase="", count=""
            )
            for s, _, what in workflow.steps
        }
        for n, (step, protocol, _) in enumerate(workflow.steps, start=1):
            later = f"; {', '.join(names[n:])} did not run" if n < len(names) else ""
            model_job = outcome.step("training").job_id if step == "scoring" else ""
            spec = workflow.spec(step, model_job)
            progress.start_task(tasks[step])
            try:
                job_id = client.submit(spec)
            except BundError as exc:
                progress.update(tasks[step], state="not submitted")
                raise WorkflowError(
                    f"step {n} of {len(names)} ({step}, {protocol}) was not submitted: {exc}{later}"
                ) from exc
            progress.update(tasks[step], state="submitted")
            if on_submitted is not None:
                on_submitted(step, job_id)
            where = f"step {n} of {len(names)} ({step}, {protocol} job {job_id})"
            status = _follow(client, job_id, progress, tasks[step], step_timeout, poll_interval)
            if status.state is not JobState.SUCCEEDED:
                raise WorkflowError(
                    f"{where} ended {status.state.value}: {status.error or 'no reason given'}"
                    f"{later}"
                )
            views = (
                [_PeerView(peers, p) for p in spec.parties if p != client.party]
                if peers is not None
                else []
            )
            for view in views:
                seen = _follow(view, job_id, progress, tasks[step], step_timeout, poll_interval)
                if seen.state is not JobState.SUCCEEDED:
                    raise WorkflowError(
                        f"{where} ended {seen.state.value} at {view.party}: "
                        f"{seen.error or 'no reason given'}{later}"
                    )
            result = client.result(job_id)
            outcome.steps.append(StepOutcome(step, job_id, status, result))
            if out is not None:
                _save(out / step, result)
    for s in outcome.steps:
        console.print(_headline(s), markup=False, highlight=False)  # peer text: never markup
    console.print(credit_table(outcome))
    return outcome


def _save(directory: Path, result: Result) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "summary.json").write_text(
        json.dumps(dict(result.summary), indent=1, sort_keys=True), encoding="utf-8"
    )
    for name, data in result.artifacts.items():
        (directory / Path(name).name).write_bytes(data)


def _headline(step: StepOutcome) -> str:
    s = step.result.summary
    if step.name == "screening":
        ivs = sorted(((float(v), k[3:]) for k, v in s.items() if k.startswith("iv.")), reverse=True)  # type: ignore[arg-type]
        top = ", ".join(f"{name} {iv:.3f}" for iv, name in ivs[:5])
        return f"screening ({step.job_id}): strongest features by IV: {top or 'none'}"
    if step.name == "training":
        rounds = f"{s['trees']} trees" if "trees" in s else f"{s.get('epochs_run')} epochs"
        return (
            f"training ({step.job_id}): {s.get('aligned_rows')} aligned rows, "
            f"{rounds}; held-out AUC joint {s.get('auc'):.3f} vs bank-only "
            f"{s.get('auc_bank_only'):.3f}"
        )
    return (
        f"scoring ({step.job_id}): {s.get('applicants')} applicants, {s.get('scored')} scored, "
        f"{s.get('unmatched')} without provider data (refer); approve {s.get('approve')}, "
        f"decline {s.get('decline')} at cut-off {s.get('cutoff')}"
    )


def credit_table(outcome: WorkflowOutcome) -> RichTable:
    """Bank-only against joint: held-out AUC and KS of the training step, with scoring counts."""
    table = RichTable(title="credit model: bank only vs joint (held-out rows)")
    for heading in ("", "bank only", "joint"):
        table.add_column(heading, justify="right" if heading else "left")
    try:
        s = outcome.step("training").result.summary
    except KeyError:
        return table
    table.add_row("AUC", f"{s['auc_bank_only']:.3f}", f"[bold]{s['auc']:.3f}")
    table.add_row("KS", f"{s['ks_bank_only']:.3f}", f"[bold]{s['ks']:.3f}")
    try:
        scored = outcome.step("scoring").result.summary
    except KeyError:
        return table
    table.add_row("applicants scored", "", f"{scored['scored']} of {scored['applicants']}")
    return table


#: The workflows ``bund workflow run`` knows.
WORKFLOWS = ("credit-model",)


def run_workflow(
    name: str,
    spec_file: Path,
    client: NodeClient,
    console: Console,
    *,
    out: Path | None = None,
    step_timeout: float = 86_400.0,
    on_submitted: OnSubmitted | None = None,
    peers: PeerStatus | None = None,
) -> WorkflowOutcome:
    """Load ``spec_file`` for workflow ``name`` and run it against this party's node.

    Raises:
        WorkflowSpecError: If ``name`` is unknown or the file is malformed.
        WorkflowError: At the first step that does not succeed.
    """
    if name not in WORKFLOWS:
        raise WorkflowSpecError(f"unknown workflow {name!r}; known: {list(WORKFLOWS)}")
    workflow = load_credit_workflow(spec_file, client.party)
    return run_credit_model(
        client,
        workflow,
        console,
        out=out,
        step_timeout=step_timeout,
        on_submitted=on_submitted,
        peers=peers,
    )
