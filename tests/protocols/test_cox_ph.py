"""Cox regression across three hospitals over the in-memory transport, against lifelines.

Rossi (432 people, weeks to re-arrest) split over three hospitals; with noise off the model
the analyst gets is lifelines' ``CoxPHFitter`` on the pooled table. A deviating analyst gets
no step the approved spec does not hold.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import pytest
from lifelines import CoxPHFitter

from bund.compute import insecure
from bund.compute.dp import pairwise_masks
from bund.compute.dp.budget import Budget
from bund.parties.jobs import JobContext, JobSpec, Participant, Result, run_in_memory
from bund.parties.protocols import cox_ph
from bund.parties.transport import Mailbox, MessageBudgetExceededError
from tests.studies import HOSPITALS, ROSSI_FEATURES, ROSSI_RANGES, rossi, split

COLUMNS = {"time": "week", "event": "arrest"}


@pytest.fixture
def noise_off() -> None:
    insecure.enable_insecure_test_parameters()


def spec(**params: str | int | float) -> JobSpec:
    base: dict[str, str | int | float] = {
        "features": ",".join(ROSSI_FEATURES), "feature_ranges": ROSSI_RANGES,
        "upper": "52", "bins": 52, "iterations": 8, "min_cell": 5, "concordance_bins": 50,
    }  # fmt: skip
    base.update(params)
    return JobSpec(
        protocol="cox_ph",
        participants=(
            *(Participant(h, "hospital", "rossi", COLUMNS) for h in HOSPITALS),
            Participant("insurer", "analyst"),
        ),
        receivers=("insurer",),
        purpose="Re-arrest hazards by financial aid and history",
        requester="insurer",
        params=base,
    )


Charges = dict[str, list[tuple[str, Budget]]]


def run(job: JobSpec, definition: cox_ph.ProtocolDef = cox_ph.DEFINITION) -> tuple[Result, Charges]:
    charges: Charges = {h: [] for h in HOSPITALS}
    chargers = {h: (lambda part, cost, h=h: charges[h].append((part, cost))) for h in HOSPITALS}
    results = run_in_memory(job, definition, split(rossi()), chargers=chargers)  # type: ignore[arg-type]
    result = results["insurer"]
    assert result is not None
    return result, charges


def coefficients(result: Result) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(result.artifacts["coefficients.csv"].decode())))


@pytest.mark.usefixtures("noise_off")
def test_the_model_is_lifelines_on_the_pooled_table() -> None:
    result, charges = run(spec(noise="off"))
    ref = CoxPHFitter().fit(rossi(), "week", "arrest")
    rows = coefficients(result)
    assert [r["covariate"] for r in rows] == list(ROSSI_FEATURES)
    for r, name in zip(rows, ROSSI_FEATURES, strict=True):
        assert float(r["coef"]) == pytest.approx(ref.params_[name], abs=1e-6)
        assert float(r["se"]) == pytest.approx(ref.standard_errors_[name], abs=1e-6)
        assert float(r["se_noise"]) == 0
        assert float(r["hazard_ratio"]) == pytest.approx(np.exp(ref.params_[name]), rel=1e-6)
        low, high = ref.confidence_intervals_.loc[name]
        assert float(r["hr_lower_95"]) == pytest.approx(np.exp(low), rel=1e-6)
        assert float(r["hr_upper_95"]) == pytest.approx(np.exp(high), rel=1e-6)
        assert float(r["p"]) == pytest.approx(ref.summary.loc[name, "p"], rel=1e-5)
    s = result.summary
    assert s["log_likelihood"] == pytest.approx(ref.log_likelihood_, abs=1e-5)
    assert abs(float(s["concordance"]) - ref.concordance_index_) <= float(  # type: ignore[arg-type]
        s["concordance_tolerance"]  # type: ignore[arg-type]
    )
    assert result.artifacts["hazard_ratios.png"].startswith(b"\x89PNG")
    # Every hospital paid each step once, ε/8 per iteration and 1/10 for the concordance.
    for h in HOSPITALS:
        assert [p for p, _ in charges[h]] == [*(f"newton-{k}" for k in range(8)), "concordance-8"]
        assert sum((c.epsilon for _, c in charges[h]), Fraction(0)) == Fraction(11, 10)
        assert cox_ph.planned_cost(spec(), h) == Budget(Fraction(11, 10))


def test_noise_off_is_refused_without_the_test_switch() -> None:
    with pytest.raises(cox_ph.NoiseOffRefusedError, match="tests only"):
        cox_ph.DEFINITION.validate(spec(noise="off"))


def test_with_noise_the_error_is_stated_in_the_standard_errors() -> None:
    """ε = 8 in two iterations on 432 people: the noise's spread is reported, and is the error."""
    result, _ = run(spec(iterations=1, epsilon="8", bins=13, concordance_bins=0))
    rows = coefficients(result)
    assert all(float(r["se_noise"]) > 0 for r in rows)
    for r in rows:
        se = float(r["se"])
        assert se**2 == pytest.approx(float(r["se_sampling"]) ** 2 + float(r["se_noise"]) ** 2)
    assert "concordance" not in result.summary


def analyst_asking(
    script: list[tuple[int, int, int]], learned: list[list[int]], beta: float = 0.0
) -> Callable[[JobContext], Result]:
    """A modified analyst that sends the scripted (kind, step, tag) messages, sums the answers."""

    def run_analyst(ctx: JobContext) -> Result:
        p = cox_ph.plan(ctx.spec)
        for kind, sent, step in script:
            go = cox_ph.encode_go(kind, sent, np.full(len(p.features), beta))
            for h in p.hospitals:
                ctx.send(h, f"cox/go/{step}", go)
            cells = p.layout.length if kind == 1 else 2 * p.layout.bins * p.concordance_bins
            vectors = [
                pairwise_masks.decode_vector(ctx.recv(h, f"cox/masked/{step}"), cells)
                for h in p.hospitals
            ]
            learned.append(pairwise_masks.unmask_sum(vectors))
        return Result({})

    return run_analyst


def with_analyst(role: Callable[[JobContext], Result]) -> cox_ph.ProtocolDef:
    return dataclasses.replace(
        cox_ph.DEFINITION, roles={**cox_ph.DEFINITION.roles, "analyst": role}
    )


@pytest.mark.parametrize(
    ("script", "answered", "message"),
    [
        # A ninth Newton iteration where the spec has the concordance step.
        ([(1, k, k) for k in range(9)], 8, "newton step where the approved spec has a concordance"),
        # The concordance first, to read the risk scores of coefficients it chose.
        ([(2, 0, 0)], 0, "concordance step where the approved spec has a newton"),
        # Step 1's message under step 0's tag.
        ([(1, 1, 0)], 0, "step 1 under the tag of step 0"),
    ],
)
def test_a_deviating_analyst_gets_no_step_beyond_the_spec(
    script: list[tuple[int, int, int]], answered: int, message: str
) -> None:
    learned: list[list[int]] = []
    with pytest.raises(cox_ph.StepLimitError, match=message):
        run(spec(), with_analyst(analyst_asking(script, learned)))
    assert len(learned) == answered


def test_coefficients_beyond_the_bound_are_refused() -> None:
    learned: list[list[int]] = []
    with pytest.raises(cox_ph.StepLimitError, match="outside the approved bound of 10"):
        run(spec(), with_analyst(analyst_asking([(1, 0, 0)], learned, beta=11.0)))
    assert learned == []


def test_a_step_message_beyond_the_spec_is_refused_on_delivery() -> None:
    """After its last step a hospital takes nothing more: the job's plan caps the messages."""
    job = spec(iterations=2, concordance_bins=0)
    plan = cox_ph.plan_messages(job, "hospital-a", {})
    assert plan.max_messages == cox_ph.plan(job).steps + 1 == 3  # two steps and a peer's key
    assert plan.allows_tag("cox/go/7") and not plan.allows_tag("dp/masked")
    mailbox = Mailbox(1 << 20)
    for step in range(3):
        mailbox.put("j", "insurer", f"cox/go/{step}", b"x" * 30, plan)
    with pytest.raises(MessageBudgetExceededError, match="exceed the job's plan"):
        mailbox.put("j", "insurer", "cox/go/3", b"x" * 30, plan)
