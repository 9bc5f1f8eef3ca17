"""Cox regression and stratified survival between hospital nodes over mTLS, against lifelines.

Three hospital nodes hold a third each of a public study; the insurer's node asks. With noise
off (the test-only switch, on in this process, where the nodes run) the insurer's results are
lifelines' on the pooled patients; every hospital's ledger holds exactly the steps it answered.
An insurer node running a modified analyst that asks for a ninth Newton iteration gets eight;
one that sends coefficients beyond the approved bound gets nothing and charges nothing. With the
switch off, Cox stratified by hospital runs noise-free only where every hospital's policy names
the insurer in ``exact_aggregates_to`` (and is then lifelines' ``strata=["hospital"]``); a
hospital whose policy does not refuses it at admission, and nothing is charged.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterator
from fractions import Fraction

import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.statistics import logrank_test

from bund.compute import insecure
from bund.parties.lifecycle.states import JobState
from bund.parties.protocols import PROTOCOLS
from tests.conftest import NodeFactory
from tests.integration.test_node import wait_final
from tests.protocols import test_cox_ph, test_survival
from tests.studies import HOSPITALS, gbsg2, rossi, split


@pytest.fixture
def noise_off() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()
    yield
    insecure.disable_insecure_test_parameters()


def start(
    node_factory: NodeFactory,
    dataset: str,
    tables: dict,  # type: ignore[type-arg]
    exact_to: dict[str, list[str]] | None = None,
    **insurer: object,
) -> None:
    """Three hospital nodes (``exact_to``: whom each one's policy allows exact aggregates) and
    the insurer's."""
    for hospital in HOSPITALS:
        others = [p for p in (*HOSPITALS, "insurer") if p != hospital]
        node_factory.start(
            hospital, allowed=others, level="restricted-personal", budget_epsilon="10",
            tables={dataset: tables[hospital]},
            exact_aggregates_to=(exact_to or {}).get(hospital, []),
        )  # fmt: skip
    node_factory.start("insurer", allowed=list(HOSPITALS), **insurer)  # type: ignore[arg-type]


def charged(node_factory: NodeFactory, job_id: str) -> dict[str, list[str]]:
    out = {}
    for hospital in HOSPITALS:
        records = node_factory.nodes[hospital].audit_store.read()
        out[hospital] = [
            str(r.fields.get("part", ""))
            for r in records
            if r.job_id == job_id and r.event == "budget_charged"
        ]
    return out


@pytest.mark.usefixtures("noise_off")
def test_cox_across_hospital_nodes_is_lifelines_on_the_pooled_table(
    node_factory: NodeFactory,
) -> None:
    start(node_factory, "rossi", split(rossi()))
    job = dataclasses.replace(test_cox_ph.spec(noise="off", iterations=7), job_id="")
    with node_factory.client("insurer") as insurer:
        job_id = insurer.submit(job)
        status = wait_final(insurer, job_id, timeout=120)
        assert status.state is JobState.SUCCEEDED, status.error
        result = insurer.result(job_id)
    ref = CoxPHFitter().fit(rossi(), "week", "arrest")
    rows = list(csv.DictReader(io.StringIO(result.artifacts["coefficients.csv"].decode())))
    for r in rows:
        assert float(r["coef"]) == pytest.approx(ref.params_[r["covariate"]], abs=1e-6)
        assert float(r["se"]) == pytest.approx(ref.standard_errors_[r["covariate"]], abs=1e-6)
    assert result.artifacts["hazard_ratios.png"].startswith(b"\x89PNG")
    parts = [*(f"newton-{k}" for k in range(7)), "concordance-7"]
    assert charged(node_factory, job_id) == dict.fromkeys(HOSPITALS, parts)
    for hospital in HOSPITALS:
        spent = node_factory.nodes[hospital].manager.ledger.line("rossi").spent
        assert spent.epsilon == Fraction(11, 10)
    node_factory.wait_closed(job_id)


def test_an_analyst_node_asking_a_ninth_iteration_gets_eight(node_factory: NodeFactory) -> None:
    learned: list[list[int]] = []
    script = [(1, k, k) for k in range(9)]
    attacker = test_cox_ph.with_analyst(test_cox_ph.analyst_asking(script, learned))
    start(node_factory, "rossi", split(rossi()), registry={**PROTOCOLS, "cox_ph": attacker})
    job = dataclasses.replace(test_cox_ph.spec(), job_id="")
    with node_factory.client("insurer") as insurer:
        job_id = insurer.submit(job)
        status = wait_final(insurer, job_id, timeout=120)
    assert status.state in (JobState.FAILED, JobState.ABORTED)
    assert "newton step where the approved spec has a concordance" in status.error
    assert len(learned) == 8
    parts = [f"newton-{k}" for k in range(8)]
    assert charged(node_factory, job_id) == dict.fromkeys(HOSPITALS, parts)
    for hospital in HOSPITALS:
        records = [r for r in node_factory.nodes[hospital].audit_store.read() if r.job_id == job_id]
        sent = [str(r.fields["tag"]) for r in records if r.event == "message_sent"]
        assert "cox/masked/7" in sent and "cox/masked/8" not in sent


def test_an_analyst_node_sending_coefficients_beyond_the_bound_gets_nothing(
    node_factory: NodeFactory,
) -> None:
    learned: list[list[int]] = []
    attacker = test_cox_ph.with_analyst(test_cox_ph.analyst_asking([(1, 0, 0)], learned, 11.0))
    start(node_factory, "rossi", split(rossi()), registry={**PROTOCOLS, "cox_ph": attacker})
    job = dataclasses.replace(test_cox_ph.spec(), job_id="")
    with node_factory.client("insurer") as insurer:
        job_id = insurer.submit(job)
        status = wait_final(insurer, job_id, timeout=120)
    assert status.state in (JobState.FAILED, JobState.ABORTED)
    assert "outside the approved bound of 10" in status.error
    assert learned == []
    assert charged(node_factory, job_id) == dict.fromkeys(HOSPITALS, [])
    refused = []
    for hospital in HOSPITALS:
        assert node_factory.nodes[hospital].manager.ledger.line("rossi").spent.epsilon == 0
        records = [r for r in node_factory.nodes[hospital].audit_store.read() if r.job_id == job_id]
        events = {r.event for r in records}
        if "protocol_cox_ph.step_refused" in events:
            refused.append(hospital)
        else:  # the first refusal ended the job before this hospital read the step
            assert "job_aborted" in events, (hospital, events)
        sent = [str(r.fields["tag"]) for r in records if r.event == "message_sent"]
        assert not any(tag.startswith("cox/masked/") for tag in sent)
    assert refused  # the hospital that read the step first refused it, on record


@pytest.mark.usefixtures("noise_off")
def test_stratified_survival_and_log_rank_across_nodes_are_lifelines(
    node_factory: NodeFactory,
) -> None:
    start(node_factory, "gbsg2", split(gbsg2()))
    job = dataclasses.replace(test_survival.spec(noise="off", min_cell=5), job_id="")
    with node_factory.client("insurer") as insurer:
        job_id = insurer.submit(job)
        status = wait_final(insurer, job_id, timeout=120)
        assert status.state is JobState.SUCCEEDED, status.error
        result = insurer.result(job_id)
    g = gbsg2()
    rows = list(csv.DictReader(io.StringIO(result.artifacts["result.csv"].decode())))
    for group in ("no", "yes"):
        sub = g[g.horTh == group]
        kmf = KaplanMeierFitter().fit(sub.time, sub.cens)
        shown = [r for r in rows if r["stratum"] == group and r["survival"] != "suppressed"]
        ends = [float(r["end"]) for r in shown]
        exact = kmf.survival_function_at_times(ends).values
        assert max(abs(float(r["survival"]) - s) for r, s in zip(shown, exact, strict=True)) < 6e-7
    ref = logrank_test(
        g.time[g.horTh == "no"], g.time[g.horTh == "yes"],
        g.cens[g.horTh == "no"], g.cens[g.horTh == "yes"],
    )  # fmt: skip
    assert result.summary["logrank_statistic"] == pytest.approx(ref.test_statistic, abs=1e-6)
    assert charged(node_factory, job_id) == dict.fromkeys(HOSPITALS, [""])  # one charge, up front


def test_exact_stratified_cox_runs_where_every_hospitals_policy_names_the_insurer(
    node_factory: NodeFactory,
) -> None:
    insecure.disable_insecure_test_parameters()  # noise off by policy, not by the switch
    start(node_factory, "rossi", split(rossi()), exact_to=dict.fromkeys(HOSPITALS, ["insurer"]))
    job = dataclasses.replace(
        test_cox_ph.spec(noise="off", strata="hospital", iterations=7), job_id=""
    )
    with node_factory.client("insurer") as insurer:
        job_id = insurer.submit(job)
        status = wait_final(insurer, job_id, timeout=120)
        assert status.state is JobState.SUCCEEDED, status.error
        result = insurer.result(job_id)
    pooled = rossi().assign(hospital=[k % 3 for k in range(432)])  # split() deals round-robin
    ref = CoxPHFitter().fit(pooled, "week", "arrest", strata=["hospital"])
    rows = list(csv.DictReader(io.StringIO(result.artifacts["coefficients.csv"].decode())))
    for r in rows:
        assert float(r["coef"]) == pytest.approx(ref.params_[r["covariate"]], abs=1e-6)
        assert float(r["se"]) == pytest.approx(ref.standard_errors_[r["covariate"]], abs=1e-6)
    assert result.summary["strata"] == "hospital"
    parts = [*(f"newton-{k}" for k in range(7)), "concordance-7"]
    assert charged(node_factory, job_id) == dict.fromkeys(HOSPITALS, parts)
    node_factory.wait_closed(job_id)


def test_exact_aggregates_are_refused_by_a_hospital_whose_policy_does_not_name_the_insurer(
    node_factory: NodeFactory,
) -> None:
    insecure.disable_insecure_test_parameters()
    exact_to = {"hospital-a": ["insurer"], "hospital-b": ["insurer"], "hospital-c": []}
    start(node_factory, "rossi", split(rossi()), exact_to=exact_to)
    job = dataclasses.replace(test_cox_ph.spec(noise="off", strata="hospital"), job_id="")
    with node_factory.client("insurer") as insurer:
        job_id = insurer.submit(job)
        status = wait_final(insurer, job_id, timeout=120)
    assert status.state is JobState.REFUSED, status.error
    assert "hospital-c" in status.error and "exact_aggregates_to" in status.error, status.error
    assert charged(node_factory, job_id) == dict.fromkeys(HOSPITALS, [])
    for hospital in HOSPITALS:
        records = [r for r in node_factory.nodes[hospital].audit_store.read() if r.job_id == job_id]
        sent = [str(r.fields["tag"]) for r in records if r.event == "message_sent"]
        assert not any(tag.startswith("cox/masked/") for tag in sent)
