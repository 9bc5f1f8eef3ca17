"""fed_dp_sgd's output privacy in memory: step limits against a deviating coordinator, DP metrics.

A coordinator chooses the weights it broadcasts and the steps it asks for. These tests play a
modified coordinator role that asks for more steps than the spec implies, with weights of its
choosing (a counting oracle over the hospitals' held-out rows): each hospital answers the steps
its approved spec allows, charged to its ledger and noised, and refuses the first one beyond,
even after a restart. Then the metrics: the binned AUC and the clipped log-loss against
scikit-learn on the pooled held-out rows, exact with noise off and within the noise band with
noise on.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from bund.compute import insecure
from bund.compute.learn import fed
from bund.parties.demo_data import generate_health
from bund.parties.jobs import JobContext, JobSpec, MemoryResumeStates, Result, run_in_memory
from bund.parties.protocols import fed_dp_sgd
from bund.parties.transport import InMemoryNetwork
from tests.protocols.test_fed_dp_sgd import HOSPITALS, TABLES, Ledger, spec

TRAIN, EVAL = 1, 2
#: Larger hospitals for the metric tests: about 300 held-out rows each.
BIG_TABLES = dict(zip(HOSPITALS, generate_health(1000, 5).values(), strict=True))


@pytest.fixture
def test_switch() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()
    yield
    insecure.disable_insecure_test_parameters()


def probe_weights(p: fed_dp_sgd.Plan, step: int) -> np.ndarray:
    """Weights of the attacker's choosing: score = feature ``step % d`` minus a threshold.

    Each step's histogram would count the held-out patients above a new threshold of a new
    feature: a counting oracle, were the counts exact and the steps unlimited.
    """
    weights = np.zeros(p.model.size)
    weights[step % len(p.features)] = 4.0
    weights[-1] = -1.0 + (step % 7) / 3
    return weights


def greedy_coordinator(
    steps: Sequence[tuple[int, int]], learned: list[np.ndarray], crash_after: int | None = None
) -> Any:
    """A modified coordinator role: sends ``(kind, round)`` steps with weights of its choosing.

    It drives the real protocol's secure aggregation for each step (``_coordinator_step``, the
    exact code path of the honest coordinator) and keeps every unmasked sum in ``learned``. It
    resumes after the last step it finished (its own resume state), and can crash after a step.
    """

    def run(ctx: JobContext) -> Result | None:
        p = fed_dp_sgd.plan(ctx.spec)
        saved = ctx.load_state("greedy")
        for step in range(int(saved) if saved else 0, len(steps)):
            kind, round_ = steps[step]
            weights = probe_weights(p, step)
            s = fed_dp_sgd._CoordinatorState(
                step=step, round=round_ - 1, kind=kind, weights=weights.tolist()
            )
            for h in p.hospitals:
                ctx.send(h, f"fed/go/{step}", fed_dp_sgd.encode_go(kind, round_, weights))
            learned.append(fed_dp_sgd._coordinator_step(ctx, p, s))
            ctx.save_state("greedy", str(step + 1).encode())
            if crash_after == step:
                raise RuntimeError("coordinator killed")
        return None

    return run


def with_coordinator(role: Any) -> fed_dp_sgd.ProtocolDef:
    roles = {**fed_dp_sgd.DEFINITION.roles, "coordinator": role}
    return dataclasses.replace(fed_dp_sgd.DEFINITION, roles=roles)


def held_out_rows(job: JobSpec, tables: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The pooled held-out rows of every hospital, split exactly as the hospitals split them."""
    p = fed_dp_sgd.plan(job)
    xs, ys = [], []
    for hospital, table in tables.items():
        x = fed.scale_features({f: table.numeric(f) for f in p.features}, p.ranges)
        y = table.numeric("event")
        test = fed.held_out(x, y, p.test_fraction, fed_dp_sgd.split_salt(p, hospital))
        xs.append(x[test])
        ys.append(y[test])
    return np.concatenate(xs), np.concatenate(ys)


def exact_counts(job: JobSpec, tables: dict[str, Any], weights: np.ndarray) -> np.ndarray:
    """The noise-free sum of the hospitals' evaluation vectors for ``weights``."""
    p = fed_dp_sgd.plan(job)
    x, y = held_out_rows(job, tables)
    return fed.evaluation_counts(p.evaluation, fed.scores(p.model, weights, x), y)


def sent_by_hospitals(network: InMemoryNetwork, step: int) -> list[str]:
    return [
        tag
        for sender, _to, tag, _payload in network.captured
        if sender in HOSPITALS and tag.endswith(f"/{step}")
    ]


ATTACKS = {
    # The attack: `rounds = 1`, then evaluate steps with weights of the coordinator's
    # choosing, 62 of them; the spec implies one evaluation.
    "62 evaluations": (
        {"rounds": 1},
        [(EVAL, 1)] * 62,
        r"step 1 \(fed/go/1\): .* evaluation 2, beyond the 1 approved",
        ["eval-0"],
    ),
    "a training round beyond the approved": (
        {"rounds": 1},
        [(TRAIN, 1), (TRAIN, 2)],
        r"step 1 \(fed/go/1\): .* training round 2, beyond the 1 approved",
        ["round-1"],
    ),
    "a training round repeated": (
        {"rounds": 2},
        [(TRAIN, 1), (TRAIN, 1)],
        r"step 1 \(fed/go/1\): .* training round 1 where this hospital's next is 2",
        ["round-1"],
    ),
    "more evaluations than trained models": (
        {"rounds": 2, "evaluate": "every_round"},
        [(EVAL, 1), (EVAL, 1), (EVAL, 1)],
        r"step 2 \(fed/go/2\): .* evaluation 3, beyond the 2 approved",
        ["eval-0", "eval-1"],
    ),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_coordinator_asking_for_steps_beyond_the_spec_gets_nothing_for_them(attack: str) -> None:
    params, steps, refusal, charged = ATTACKS[attack]
    job = spec(noise_multiplier=1.0, **params)
    p = fed_dp_sgd.plan(job)
    ledgers = {h: Ledger(p.planned_cost()) for h in HOSPITALS}
    network = InMemoryNetwork(list(job.parties))
    learned: list[np.ndarray] = []
    with pytest.raises(fed_dp_sgd.StepLimitError, match=refusal):
        run_in_memory(
            job,
            with_coordinator(greedy_coordinator(steps, learned)),
            TABLES,
            network=network,
            chargers=ledgers,
        )
    allowed = len(charged)
    assert len(learned) == allowed  # every step the spec allows answered, and not one more
    assert sent_by_hospitals(network, allowed) == []  # nothing at all about the refused step
    for ledger in ledgers.values():
        assert ledger.calls == charged  # each answered step charged before it ran
        assert ledger.spent.fits_within(p.planned_cost())
    for step, total in enumerate(learned):
        kind, _ = steps[step]
        if kind == EVAL:  # noisy, never the exact counts of the coordinator's weights
            exact = exact_counts(job, TABLES, probe_weights(p, step))
            assert not np.array_equal(total, exact)


def test_a_restarted_hospital_keeps_counting_the_steps_it_answered() -> None:
    """The counters live in the hospital's resume state: a resumed job cannot reset them."""
    job = spec(rounds=1, noise_multiplier=1.0)
    p = fed_dp_sgd.plan(job)
    stores = {party: MemoryResumeStates() for party in job.parties}
    ledgers = {h: Ledger(p.planned_cost()) for h in HOSPITALS}
    learned: list[np.ndarray] = []
    steps = [(EVAL, 1)] * 5
    crashing = with_coordinator(greedy_coordinator(steps, learned, crash_after=0))
    with pytest.raises(RuntimeError, match="killed"):
        run_in_memory(job, crashing, TABLES, states=stores, chargers=ledgers)
    assert len(learned) == 1
    for hospital in HOSPITALS:
        saved = json.loads(stores[hospital].load(job.job_id, hospital, "hospital"))
        assert saved["step"] == 1 and saved["evaluations"] == 1
    resumed = with_coordinator(greedy_coordinator(steps, learned))
    with pytest.raises(fed_dp_sgd.StepLimitError, match="evaluation 2, beyond the 1 approved"):
        run_in_memory(job, resumed, TABLES, states=stores, chargers=ledgers)
    assert len(learned) == 1
    for ledger in ledgers.values():
        assert ledger.calls == ["eval-0"]


def test_every_round_evaluates_each_trained_model_once_and_charges_each_evaluation() -> None:
    job = spec(rounds=3, noise_multiplier=1.0, evaluate="every_round", eval_epsilon="1/4")
    p = fed_dp_sgd.plan(job)
    ledgers = {h: Ledger(p.planned_cost()) for h in HOSPITALS}
    result = run_in_memory(job, fed_dp_sgd.DEFINITION, TABLES, chargers=ledgers)["insurer"]
    assert result is not None
    for ledger in ledgers.values():
        # Step 0 trains round 1; steps 1 and 2 train rounds 2 and 3 and evaluate the models of
        # rounds 1 and 2; step 3 evaluates the final model.
        assert ledger.calls == ["round-1", "round-2", "eval-1", "round-3", "eval-2", "eval-3"]
        assert ledger.spent == p.planned_cost()
        assert ledger.parts["eval-1"].epsilon == Fraction(1, 4)
    history = json.loads(result.artifacts["model.json"])["history"]
    evaluated = [h for h in history if "auc" in h]
    assert [h["round"] for h in evaluated] == [1, 2, 3]
    assert [Fraction(h["epsilon_evaluation"]) for h in evaluated] == [
        Fraction(1, 4),
        Fraction(1, 2),
        Fraction(3, 4),
    ]
    assert Fraction(evaluated[-1]["epsilon"]) == p.planned_cost().epsilon
    assert result.summary["evaluations_run"] == 3
    for h in HOSPITALS:
        assert Fraction(result.summary[f"epsilon_{h}"]) == p.planned_cost().epsilon
    rows = result.artifacts["history.csv"].decode().splitlines()
    assert rows[0].split(",") == list(fed_dp_sgd.HISTORY_COLUMNS)
    assert result.artifacts["training_curves.png"].startswith(b"\x89PNG")


def _final_weights(result: Result) -> np.ndarray:
    return np.array(json.loads(result.artifacts["model.json"])["weights"])


def test_noise_free_metrics_match_scikit_learn_on_the_pooled_held_out_rows(
    test_switch: None,
) -> None:
    job = spec(
        rounds=3, local_steps=30, noise_multiplier=0.0, max_grad_norm=1e6, test_fraction=0.3,
        eval_bins=50,
    )  # fmt: skip
    result = run_in_memory(job, fed_dp_sgd.DEFINITION, BIG_TABLES)["insurer"]
    assert result is not None
    p = fed_dp_sgd.plan(job)
    x, y = held_out_rows(job, BIG_TABLES)
    logits = fed.scores(p.model, _final_weights(result), x)
    summary = result.summary
    assert summary["final_eval_rows"] == len(y) > 800
    assert summary["final_auc_band"] == summary["final_log_loss_band"] == 0
    exact_auc = roc_auc_score(y, logits)
    assert abs(summary["final_auc"] - exact_auc) <= summary["final_auc_tolerance"] < 0.05
    clip = float(p.evaluation.clip)
    probability = np.clip(1 / (1 + np.exp(-logits)), clip, 1 - clip)
    # Each record's loss is rounded to 2^-16: the mean is within 2^-17 of scikit-learn's.
    assert abs(summary["final_log_loss"] - log_loss(y, probability)) <= 2**-17 + 1e-9


def test_noisy_metrics_lie_within_their_noise_band_of_the_exact_ones() -> None:
    job = spec(rounds=2, local_steps=5, noise_multiplier=1.0, test_fraction=0.3, eval_epsilon="2")
    result = run_in_memory(job, fed_dp_sgd.DEFINITION, BIG_TABLES)["insurer"]
    assert result is not None
    p = fed_dp_sgd.plan(job)
    exact = fed.read_evaluation(
        dataclasses.replace(p.evaluation, epsilon=Fraction(0)),
        exact_counts(job, BIG_TABLES, _final_weights(result)),
        1,
    )
    summary = result.summary
    assert 0 < summary["final_auc_band"] < 0.1 and 0 < summary["final_log_loss_band"] < 0.1
    # Three 95 % half-widths: about six standard deviations.
    assert abs(summary["final_auc"] - exact.auc) <= 3 * summary["final_auc_band"]
    assert abs(summary["final_log_loss"] - exact.log_loss) <= 3 * summary["final_log_loss_band"]
    assert abs(summary["final_eval_rows"] - exact.rows) <= 100
