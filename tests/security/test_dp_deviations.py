"""What a deviating requester or contributor can do to DP statistics, played between real nodes.

In-process nodes over mTLS (``tests/conftest.py``'s ``node_factory``): three hospitals and an
insurer. Each test plays one attack of ``docs/protocols/dp-statistics.md`` ("what a deviating
party can do") and shows that it now fails:

- the requester lists a friendly hospital first and friendly hospitals add no noise: the
  victim's vector still reaches the analyst noised by the victim alone;
- one patient through a filter: an identifier filter is refused, a ``min_cell`` below the floor
  is refused, a one-patient cohort is suppressed, and a differencing pair costs ε each time;
- a binding to a column that does not exist: refused at admission naming only that column,
  before any approval and with no ε charged anywhere; the requester's own, at submission.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from fractions import Fraction

import numpy as np
import pytest

from bund.compute.dp import pairwise_masks
from bund.compute.dp.budget import Budget
from bund.compute.dp.stats import contribution
from bund.parties.client import RemoteError
from bund.parties.data import Table
from bund.parties.demo_data import generate_health
from bund.parties.jobs import JobContext, JobSpec, JsonScalar, Participant, ProtocolDef, Result
from bund.parties.lifecycle.states import JobState
from bund.parties.node import Node
from bund.parties.protocols import PROTOCOLS, dp_stats
from tests.conftest import NodeFactory
from tests.integration.test_node import wait_final

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
DATA = generate_health(300, 7)
TABLES: dict[str, Table] = dict(zip(HOSPITALS, DATA.values(), strict=True))
#: Columns of every hospital's dataset that no spec in this file names.
UNNAMED = ("patient_id", "index_date", "systolic_bp_mmhg", "ldl_mmol_l", "egfr_ml_min_1_73m2")


def start_hospital(
    factory: NodeFactory,
    name: str,
    *,
    identifiers: Sequence[str] | None = None,
    approvals: bool = False,
    registry: Mapping[str, ProtocolDef] | None = None,
    budget: str = "10",
) -> Node:
    """A hospital's node with its patients; ``identifiers`` declared in its policy if given."""
    others = [p for p in (*HOSPITALS, "insurer") if p != name]
    config = factory.write_config(
        name, allowed=others, level="restricted-personal", approvals=approvals,
        budget_epsilon=budget, tables={"patients": TABLES[name]},
    )  # fmt: skip
    if identifiers is not None:  # [datasets.patients] is the policy's last table
        policy = config.parent / "policy.toml"
        policy.write_text(policy.read_text() + f"identifiers = {json.dumps(list(identifiers))}\n")
    return factory.run(name, config, registry)


def dp_spec(params: Mapping[str, JsonScalar], parts: Sequence[Participant] = ()) -> JobSpec:
    participants = tuple(parts) or (
        *(Participant(h, "contributor", "patients") for h in HOSPITALS),
        Participant("insurer", "analyst"),
    )
    analyst = next(p.party for p in participants if p.role == "analyst")
    return JobSpec("dp_stats", participants, (analyst,), "cohort study", analyst, dict(params))


def spent(factory: NodeFactory) -> dict[str, Budget]:
    return {h: factory.nodes[h].manager.ledger.line("patients").spent for h in HOSPITALS}


def events(factory: NodeFactory, name: str, job_id: str) -> list[tuple[str, dict[str, object]]]:
    records = factory.nodes[name].audit_store.read()
    return [(r.event, dict(r.fields)) for r in records if r.job_id == job_id]


# -- 5. the requester places the noise ---------------------------------------------------------


def run_noiseless_contributor(ctx: JobContext) -> None:
    """A modified, friendly hospital: masks its exact vector and adds no noise at all."""
    s = dp_stats._State(ctx, dp_stats.plan(ctx.spec), dp_stats._masking_key(ctx))
    dp_stats._exchange_keys(s)
    context = bytes.fromhex(ctx.spec.digest())
    own = dp_stats._own_vector(s)
    masked = pairwise_masks.mask_vector(own, s.key, ctx.party, s.public_keys, context)
    ctx.send(s.plan.analyst, "dp/masked", pairwise_masks.encode_vector(masked))


def run_raw_analyst(ctx: JobContext) -> Result:
    """A modified requester: unmasks the aggregate and keeps it whole, suppressing nothing."""
    p = dp_stats.plan(ctx.spec)
    masked = [
        pairwise_masks.decode_vector(ctx.recv(c, "dp/masked"), p.query.length)
        for c in p.contributors
    ]
    aggregate = pairwise_masks.unmask_sum(masked)
    return Result({"cells": len(aggregate)}, {"aggregate.json": json.dumps(aggregate).encode()})


FRIENDLY = {
    **PROTOCOLS,
    "dp_stats": dataclasses.replace(
        dp_stats.DEFINITION,
        roles={"contributor": run_noiseless_contributor, "analyst": run_raw_analyst},
    ),
}
#: 4096 cells of ages by a padded sex column: many independent draws of the victim's noise.
WIDE: dict[str, JsonScalar] = {
    "kind": "contingency", "column": "age", "categories": "|".join(str(a) for a in range(20, 84)),
    "column2": "sex", "categories2": "|".join(["M", "F", *(f"x{i}" for i in range(62))]),
    "epsilon": "1/2", "min_cell": 5,
}  # fmt: skip


def test_friendly_hospitals_that_add_no_noise_leave_the_victim_noised_by_itself(
    node_factory: NodeFactory,
) -> None:
    """The requester lists two friendly hospitals first; both run modified code that adds no
    noise, and the requester's own node keeps the raw aggregate. Subtracting the friendly
    hospitals' exact vectors leaves the victim's vector plus the victim's own noise, with the
    variance of one whole draw at the query's ε: the victim's protection needs nobody else."""
    start_hospital(node_factory, "hospital-a", registry=FRIENDLY)
    start_hospital(node_factory, "hospital-b", registry=FRIENDLY)
    start_hospital(node_factory, "hospital-c")  # the victim, honest code
    node_factory.start("insurer", allowed=list(HOSPITALS), registry=FRIENDLY)
    spec = dp_spec(WIDE)
    with node_factory.client("insurer") as insurer:
        job = insurer.submit(spec)
        assert wait_final(insurer, job).state is JobState.SUCCEEDED, insurer.status(job).error
        aggregate = np.array(json.loads(insurer.result(job).artifacts["aggregate.json"]))
    query = dp_stats.plan(spec).query
    exact = {h: np.array(contribution(query, t.data, t.num_rows)) for h, t in TABLES.items()}
    victims_noise = aggregate - exact["hospital-a"] - exact["hospital-b"] - exact["hospital-c"]
    (whole,) = dp_stats.plan(spec).mechanisms()
    assert np.count_nonzero(victims_noise) > 1000  # the old noiser-first plan: all zero
    assert victims_noise.var() / whole.variance() == pytest.approx(1.0, rel=0.2)
    records = events(node_factory, "hospital-c", job)
    contributed = [f for e, f in records if e.endswith("contributed")]
    assert contributed and contributed[0]["noise_added_here"] is True
    assert spent(node_factory)["hospital-c"] == Budget(Fraction(1, 2))


# -- 6. one patient through a filter -----------------------------------------------------------


def one_patient_filter() -> tuple[str, str]:
    """A hospital-b patient's id, and a filter on attributes alone that the pooled data matches
    for that patient only."""
    table = TABLES["hospital-b"]
    for i in range(table.num_rows):
        clause = ";".join(f"{c}={table.column(c)[i]}" for c in ("age", "sex", "follow_up_days"))
        query = dp_stats.DpStatsParams.model_validate(
            {"kind": "count", "epsilon": "1", "min_cell": 1, "filter": clause}
        ).query()
        if sum(contribution(query, t.data, t.num_rows)[0] for t in TABLES.values()) == 1:
            return table.column("patient_id")[i], clause
    raise AssertionError("no patient is unique on age, sex and follow-up")


def test_one_patient_through_a_filter_and_a_differencing_pair(node_factory: NodeFactory) -> None:
    """At ε = 5 with min_cell = 1 a one-patient count would release that patient's outcome.
    A filter on the declared identifier is refused, so is a min_cell below the cohort floor
    (both before any ε is charged); a one-patient cohort on attributes alone comes out
    suppressed. The differencing pair (a cohort with and without one patient, on attributes)
    cannot be told from two honest queries: each is charged its ε, and the budget ends it."""
    for hospital in HOSPITALS:
        start_hospital(node_factory, hospital, identifiers=["patient_id"])
    node_factory.start("insurer", allowed=list(HOSPITALS))
    patient, clause = one_patient_filter()
    at_5 = {"kind": "count", "epsilon": "5"}
    with node_factory.client("insurer") as insurer:

        def final(params: Mapping[str, JsonScalar]) -> tuple[str, JobState, str]:
            job = insurer.submit(dp_spec(params))
            status = wait_final(insurer, job)
            return job, status.state, status.error

        _, state, error = final({**at_5, "min_cell": 5, "filter": f"patient_id={patient}"})
        assert state is JobState.REFUSED and "declares ['patient_id'] identifier" in error
        _, state, error = final({**at_5, "min_cell": 5, "filter": f"age>=80;patient_id!={patient}"})
        assert state is JobState.REFUSED and "identifier" in error
        _, state, error = final({**at_5, "min_cell": 1, "filter": clause})
        assert state is JobState.REFUSED and "cohort floor of 5" in error
        assert all(s == Budget() for s in spent(node_factory).values())
        job, state, error = final({**at_5, "min_cell": 5, "filter": clause})
        assert state is JobState.SUCCEEDED, error
        result = insurer.result(job)
        assert result.summary["count"] is None and result.summary["suppressed_cells"] == 1
        assert b"count,suppressed" in result.artifacts["result.csv"]
        # The differencing pair, on attributes only: charged ε each time, then refused.
        fu = clause.split("follow_up_days=")[1]
        pair = ({"filter": "age>=80"}, {"filter": f"age>=80;follow_up_days!={fu}"})
        for params in pair:
            assert final({**params, "kind": "count", "epsilon": "2", "min_cell": 5})[1] is (
                JobState.SUCCEEDED
            )
        assert all(s == Budget(Fraction(9)) for s in spent(node_factory).values())
        _, state, error = final({**pair[0], "kind": "count", "epsilon": "2", "min_cell": 5})
        assert state is JobState.REFUSED and "epsilon=1, delta=0 of its privacy budget" in error
    assert all(s == Budget(Fraction(9)) for s in spent(node_factory).values())


# -- 7. column names told to the requester -----------------------------------------------------

SURVIVAL: dict[str, JsonScalar] = {
    "kind": "survival", "column": "follow_up_days", "event": "event", "lower": "0",
    "upper": "2190", "bins": 12, "epsilon": "1/2", "min_cell": 5,
}  # fmt: skip


def test_a_binding_to_a_missing_column_is_refused_at_admission_naming_only_it(
    node_factory: NodeFactory,
) -> None:
    """Hospital B's binding names a column its dataset lacks. Every hospital's approver signs
    each job (the default). B's node refuses at admission, before its approver is asked and
    before any budget is touched, naming that column and no other; the job is called off while
    A's and C's approvers have not signed yet, so no ε is charged anywhere; no node's audit log
    holds B's other column names."""
    for hospital in HOSPITALS:
        start_hospital(node_factory, hospital, approvals=True)
    node_factory.start("insurer", allowed=list(HOSPITALS))
    parts = (
        Participant("hospital-a", "contributor", "patients"),
        Participant("hospital-b", "contributor", "patients", {"follow_up_days": "follow_up"}),
        Participant("hospital-c", "contributor", "patients"),
        Participant("insurer", "analyst"),
    )
    with node_factory.client("insurer") as insurer:
        job = insurer.submit(dp_spec(SURVIVAL, parts))
        status = wait_final(insurer, job)
    assert status.state is JobState.REFUSED
    assert "hospital-b's dataset 'patients' has no column 'follow_up'" in status.error
    assert not [c for c in TABLES["hospital-b"].columns if repr(c) in status.error]
    assert all(s == Budget() for s in spent(node_factory).values())
    b_events = [e for e, _ in events(node_factory, "hospital-b", job)]
    assert "job_refused" in b_events and "job_awaiting_approval" not in b_events
    for name in (*HOSPITALS, "insurer"):
        text = json.dumps(events(node_factory, name, job), default=str)
        assert not [c for c in UNNAMED if c in text], name


def test_the_requesters_own_bad_binding_is_refused_at_submission(
    node_factory: NodeFactory,
) -> None:
    """A contributing analyst binds a column its own dataset lacks: the submission itself is
    refused, naming that column only, and no job is created."""
    for hospital in HOSPITALS:
        start_hospital(node_factory, hospital)
    node_factory.start("insurer", allowed=list(HOSPITALS))
    parts = (
        Participant("hospital-a", "analyst", "patients", {"event": "died"}),
        Participant("hospital-b", "contributor", "patients"),
        Participant("hospital-c", "contributor", "patients"),
    )
    with node_factory.client("hospital-a") as a:
        with pytest.raises(RemoteError, match="has no column 'died'") as refused:
            a.submit(dp_spec(SURVIVAL, parts))
        assert not [c for c in TABLES["hospital-a"].columns if repr(c) in str(refused.value)]
        assert a.list_jobs() == []
    assert all(s == Budget() for s in spent(node_factory).values())


def test_a_missing_columns_error_never_lists_the_others() -> None:
    """The last line of defence, at run time: a table's own error names the one column."""
    table = TABLES["hospital-a"]
    with pytest.raises(Exception, match="has no column 'nope'") as missing:
        table.column("nope")
    assert not [c for c in table.columns if repr(c) in str(missing.value)]
