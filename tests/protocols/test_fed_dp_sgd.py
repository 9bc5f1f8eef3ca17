"""fed_dp_sgd in memory: FedAvg equality through SecAgg, drop-outs, budget stop, resume."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from bund.compute import insecure
from bund.compute.dp import dropout_secagg
from bund.compute.dp.budget import Budget
from bund.compute.learn import fed
from bund.parties.demo_data import generate_health
from bund.parties.jobs import (
    InvalidJobSpecError,
    JobSpec,
    MemoryResumeStates,
    Participant,
    run_in_memory,
)
from bund.parties.ledger import BudgetExhaustedError
from bund.parties.protocols import fed_dp_sgd
from bund.parties.transport import InMemoryNetwork

HOSPITALS = {"hospital-a": "hospital_a", "hospital-b": "hospital_b", "hospital-c": "hospital_c"}
TABLES = dict(zip(HOSPITALS, generate_health(80, 11).values(), strict=True))


def spec(**params: Any) -> JobSpec:
    base = {"rounds": 2, "local_steps": 3, "sample_rate": 0.2, "max_dropouts": 1, "seed": 4}
    return JobSpec(
        protocol="fed_dp_sgd",
        participants=(
            Participant("insurer", "coordinator"),
            *(Participant(h, "hospital", "patients") for h in HOSPITALS),
        ),
        receivers=("insurer",),
        purpose="Train an event model across three hospitals",
        requester="insurer",
        params={**base, **params},
        job_id="ab" * 16,
    )


@pytest.fixture
def test_switch() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()
    yield
    insecure.disable_insecure_test_parameters()


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every local update the hospitals compute: (global weights in, update out)."""
    calls: list[tuple[np.ndarray, np.ndarray]] = []
    lock = threading.Lock()
    real = fed.local_update

    def recording(*args: Any, **kwargs: Any) -> fed.LocalUpdate:
        update = real(*args, **kwargs)
        with lock:
            calls.append((np.array(args[1]), update.delta))
        return update

    monkeypatch.setattr(fed, "local_update", recording)
    return calls


def weights(result: Any) -> np.ndarray:
    return np.array(json.loads(result.artifacts["model.json"])["weights"])


def fedavg_chain(
    start: np.ndarray, calls: list[tuple[np.ndarray, np.ndarray]], rounds: int
) -> np.ndarray:
    """Plain FedAvg of the recorded updates, round after round, from the starting weights."""
    current = start
    for _ in range(rounds):
        deltas = [d for w_in, d in calls if np.allclose(w_in, current, atol=1e-6)]
        assert deltas, "no recorded update started from the current global model"
        current = fed.fedavg(current, deltas)
    return current


class StopAfter(Exception):
    pass


class DropOut:
    """A hospital's context that stops the hospital silently right after it sends ``tag``."""

    def __init__(self, ctx: Any, tag: str) -> None:
        self._ctx, self._tag = ctx, tag

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def send(self, to: str, tag: str, payload: bytes) -> None:
        self._ctx.send(to, tag, payload)
        if tag == self._tag:
            raise StopAfter


def with_dropout(victim: str, tag: str) -> fed_dp_sgd.ProtocolDef:
    def hospital(ctx: Any) -> Any:
        if ctx.party != victim:
            return fed_dp_sgd.run_hospital(ctx)
        try:
            return fed_dp_sgd.run_hospital(DropOut(ctx, tag))
        except StopAfter:
            return None  # the node just stops taking part

    roles = {**fed_dp_sgd.DEFINITION.roles, "hospital": hospital}
    return dataclasses.replace(fed_dp_sgd.DEFINITION, roles=roles)


@pytest.mark.parametrize("model", ["logistic", "mlp"])
def test_noise_free_federated_model_equals_plain_fedavg_of_the_same_updates(
    test_switch: None, recorded: list, model: str
) -> None:
    job = spec(model=model, hidden=4, noise_multiplier=0.0, max_grad_norm=1e6)
    result = run_in_memory(job, fed_dp_sgd.DEFINITION, TABLES)["insurer"]
    assert result is not None and len(recorded) == 2 * len(HOSPITALS)
    p = fed_dp_sgd.plan(job)
    start = fed.initial_weights(p.model, p.seed)
    assert np.allclose(weights(result), fedavg_chain(start, recorded, 2), atol=1e-5)
    assert result.summary["rounds_run"] == 2 and result.summary["stopped"] == "completed"
    assert result.artifacts["training_curves.png"].startswith(b"\x89PNG")
    assert result.artifacts["history.csv"].decode().count("\n") == 1 + 3  # 2 rounds + final


def test_with_noise_the_result_reports_epsilon_per_hospital_and_the_curves() -> None:
    # Large ε and few bins: the tables are small, and a class's noisy count must stay positive.
    job = spec(noise_multiplier=1.0, eval_epsilon="50", eval_bins=4)
    result = run_in_memory(job, fed_dp_sgd.DEFINITION, TABLES)["insurer"]
    assert result is not None
    p = fed_dp_sgd.plan(job)
    for h in HOSPITALS:
        assert Fraction(result.summary[f"epsilon_training_{h}"]) == p.epsilon(2) > 0
        total = Fraction(result.summary[f"epsilon_{h}"])
        assert total == p.epsilon(2) + p.evaluation.epsilon == p.planned_cost().epsilon
    assert result.summary["evaluate"] == "final" and result.summary["evaluations_run"] == 1
    assert 0 <= result.summary["final_auc"] <= 1 and result.summary["final_auc_band"] > 0
    assert 0 <= result.summary["final_log_loss"] <= p.evaluation.loss_bound
    assert "final_accuracy" not in result.summary
    history = json.loads(result.artifacts["model.json"])["history"]
    assert [h["kind"] for h in history] == ["train", "train", "evaluate"]
    assert ["auc" in h for h in history] == [False, False, True]


def _reveals(network: InMemoryNetwork) -> dict[str, list[dropout_secagg.Reveal]]:
    out: dict[str, list[dropout_secagg.Reveal]] = {}
    for _sender, _to, tag, payload in network.captured:
        if tag.startswith("fed/reveal/"):
            out.setdefault(tag, []).append(dropout_secagg.decode_reveal(payload))
    return out


@pytest.mark.parametrize(("tag", "included"), [("fed/shares/1", 2), ("fed/masked/1", 3)])
def test_a_hospital_dropping_out_within_the_bound_leaves_the_round_intact(
    test_switch: None, recorded: list, tag: str, included: int
) -> None:
    job = spec(noise_multiplier=0.0, max_grad_norm=1e6, upload_patience=1)
    network = InMemoryNetwork(list(job.parties))
    results = run_in_memory(
        job, with_dropout("hospital-b", tag), TABLES, network=network, recv_timeout=1.5
    )
    result = results["insurer"]
    assert result is not None and results["hospital-b"] is None
    history = json.loads(result.artifacts["model.json"])["history"]
    assert [h["survivors"] for h in history] == [3, included, 2]
    p = fed_dp_sgd.plan(job)
    start = fed.initial_weights(p.model, p.seed)
    # Round 2 averages exactly the updates whose masked vectors arrived.
    assert len([c for c in recorded if not np.allclose(c[0], start)]) == included
    assert np.allclose(weights(result), fedavg_chain(start, recorded, 2), atol=1e-5)
    for reveals in _reveals(network).values():  # never both secrets of one hospital
        for reveal in reveals:
            assert not set(reveal.b) & set(reveal.s)


def test_more_dropouts_than_allowed_abort_the_job_with_a_clear_error(test_switch: None) -> None:
    job = spec(noise_multiplier=0.0, max_dropouts=0)
    with pytest.raises(dropout_secagg.DropoutError, match="max_dropouts = 0"):
        run_in_memory(job, with_dropout("hospital-c", "fed/keys/1"), TABLES, recv_timeout=1.0)


class Ledger:
    """A node's ledger in miniature: once per part, refuses what does not fit, records calls."""

    def __init__(self, total: Budget) -> None:
        self.total, self.parts, self.calls = total, {}, []
        self._lock = threading.Lock()

    def __call__(self, part: str, cost: Budget) -> None:
        with self._lock:
            self.calls.append(part)
            if part in self.parts:
                return
            spent = sum(self.parts.values(), Budget())
            if not (spent + cost).fits_within(self.total):
                raise BudgetExhaustedError(f"{self.total - spent} left; needs {cost}")
            self.parts[part] = cost

    @property
    def spent(self) -> Budget:
        return sum(self.parts.values(), Budget())


def test_training_stops_when_a_hospitals_budget_would_be_exceeded() -> None:
    job = spec(rounds=4, noise_multiplier=1.0, eval_epsilon="1/1000")
    p = fed_dp_sgd.plan(job)
    evaluation = p.eval_cost.epsilon
    assert evaluation < p.epsilon(3) - p.epsilon(2)
    roomy = p.planned_cost()
    tight = Budget(p.epsilon(2) + evaluation, p.delta)  # two rounds and the final evaluation
    ledgers = {
        "hospital-a": Ledger(roomy),
        "hospital-b": Ledger(tight),
        "hospital-c": Ledger(roomy),
    }
    result = run_in_memory(job, fed_dp_sgd.DEFINITION, TABLES, chargers=ledgers)["insurer"]
    assert result is not None
    assert result.summary["rounds_run"] == 2
    assert "budget exhausted at hospital-b" in str(result.summary["stopped"])
    assert ledgers["hospital-b"].spent == tight
    assert set(ledgers["hospital-b"].parts) == {"round-1", "round-2", "eval-3"}
    # The others paid for round 3 before it was called off: fail closed, never refunded.
    assert ledgers["hospital-a"].spent == Budget(p.epsilon(3) + evaluation, p.delta)
    assert Fraction(result.summary["epsilon_hospital-a"]) == p.epsilon(3) + evaluation
    history = json.loads(result.artifacts["model.json"])["history"]
    assert history[-1]["kind"] == "evaluate" and history[-1]["round"] == 2  # evaluated after all
    assert history[-1]["survivors"] == 3 and result.summary["evaluations_run"] == 1


class CrashAfter:
    """The coordinator's context, failing right after it saves the start of ``step``."""

    def __init__(self, ctx: Any, step: int) -> None:
        self._ctx, self._step = ctx, step

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def save_state(self, name: str, state: bytes) -> None:
        self._ctx.save_state(name, state)
        if json.loads(state).get("step") == self._step and not json.loads(state)["roster"]:
            raise RuntimeError("coordinator killed")


def test_a_killed_coordinator_resumes_from_the_last_round_without_double_charges() -> None:
    job = spec(rounds=3, noise_multiplier=1.0)
    stores = {party: MemoryResumeStates() for party in job.parties}
    ledgers = {h: Ledger(Budget(Fraction(100), Fraction(1, 1000))) for h in HOSPITALS}
    roles = {**fed_dp_sgd.DEFINITION.roles}
    crashing = dataclasses.replace(
        fed_dp_sgd.DEFINITION,
        roles={**roles, "coordinator": lambda ctx: fed_dp_sgd.run_coordinator(CrashAfter(ctx, 2))},
    )
    with pytest.raises(RuntimeError, match="killed"):
        run_in_memory(job, crashing, TABLES, states=stores, chargers=ledgers)
    before = json.loads(stores["insurer"].load(job.job_id, "insurer", "coordinator"))
    assert before["round"] == 2
    result = run_in_memory(job, fed_dp_sgd.DEFINITION, TABLES, states=stores, chargers=ledgers)
    summary = result["insurer"].summary
    assert summary["rounds_run"] == 3 and summary["stopped"] == "completed"
    history = json.loads(result["insurer"].artifacts["model.json"])["history"]
    assert history[:2] == before["history"]  # the first two rounds were not run again
    p = fed_dp_sgd.plan(job)
    for ledger in ledgers.values():
        # Each round and the final evaluation charged once.
        assert ledger.calls == ["round-1", "round-2", "round-3", "eval-3"]
        assert ledger.spent == p.planned_cost()


def test_noise_off_is_refused_without_the_test_switch() -> None:
    with pytest.raises(fed_dp_sgd.NoiseOffRefusedError):
        fed_dp_sgd.validate(spec(noise_multiplier=0.0))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"max_dropouts": 2}, "below half"),
        ({"model": "forest"}, "model"),
        ({"features": "age,salary"}, "public value ranges"),
        ({"rounds": 0}, "rounds"),
        ({"delta": "2"}, "delta"),
        ({"feature_ranges": "salary-0-9"}, "name:low:high"),
        ({"evaluate": "sometimes"}, "evaluate"),
        ({"eval_epsilon": "0"}, "eval_epsilon"),
        ({"eval_epsilon": "1/10000"}, "eval_epsilon"),
        ({"eval_clip": "1e-7"}, "eval_clip"),
        ({"eval_epsilon": 0.5}, "eval_epsilon"),
        ({"eval_epsilon": "a lot"}, "eval_epsilon"),
        ({"eval_clip": "1/2"}, "eval_clip"),
        ({"eval_bins": 1}, "eval_bins"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(params: dict, match: str) -> None:
    with pytest.raises(InvalidJobSpecError, match=match):
        fed_dp_sgd.validate(spec(**params))


def test_learns_names_every_party_and_each_hospitals_most_cost() -> None:
    job = spec(evaluate="every_round", eval_epsilon="1/2", noise_multiplier=1.0)
    learned = fed_dp_sgd.learns(job)
    assert set(learned) == {"insurer", *HOSPITALS}
    assert "never one hospital's" in learned["insurer"]
    assert "at most 2 evaluation(s) (evaluate = every_round)" in learned["insurer"]
    cost = fed_dp_sgd.planned_cost(job, "hospital-a")
    p = fed_dp_sgd.plan(job)
    assert cost == Budget(p.epsilon(2) + 2 * Fraction(1, 2), p.delta)
    assert f"at most ε = {cost.epsilon}, δ = 1/100000" in learned["hospital-a"]
    assert fed_dp_sgd.planned_cost(job, "insurer") == Budget()


def test_step_messages_are_validated() -> None:
    payload = fed_dp_sgd.encode_go(1, 1, np.zeros(3))
    assert fed_dp_sgd.decode_go(payload, 3)[0] == 1
    with pytest.raises(fed_dp_sgd.InvalidMessageError):
        fed_dp_sgd.decode_go(payload, 4)
    with pytest.raises(fed_dp_sgd.InvalidMessageError):
        fed_dp_sgd.decode_go(fed_dp_sgd.encode_go(1, 1, np.array([np.nan, 0, 0])), 3)
