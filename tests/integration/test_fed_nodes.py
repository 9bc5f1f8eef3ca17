"""fed_dp_sgd between four nodes over mTLS: an insurer coordinates three hospitals.

Each hospital's node admits the job on its restricted-personal patient data, charges every
round's ε increment and every evaluation's ε to its ledger before it runs (audited as
``budget_charged`` with the round or the evaluation as its part), trains locally with DP-SGD
and uploads only masked updates and noisy evaluations; the insurer receives the global model,
the curves and the ε per hospital. The regulator reconciles the logs. An insurer node that runs
a modified coordinator and asks for 62 evaluations gets one.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import io
import json
import sqlite3
from fractions import Fraction
from pathlib import Path

import pytest

from bund.parties.demo_data import generate_health
from bund.parties.follow import follow_job
from bund.parties.lifecycle.states import JobState
from bund.parties.protocols import PROTOCOLS, fed_dp_sgd
from bund.parties.regulator import audit_federation, load_regulator_config
from tests.conftest import NodeFactory
from tests.integration.serve_test_node import CRASH_ENV
from tests.integration.test_node import wait_final
from tests.integration.test_regulator import write_regulator_config
from tests.protocols.test_fed_dp_sgd import HOSPITALS, spec
from tests.protocols.test_fed_dp_sgd_privacy import EVAL, greedy_coordinator, with_coordinator


def test_federated_dp_sgd_across_hospital_nodes(node_factory: NodeFactory, tmp_path: Path) -> None:
    data = generate_health(80, 11)
    for hospital, table in HOSPITALS.items():
        others = [p for p in (*HOSPITALS, "insurer") if p != hospital]
        node_factory.start(
            hospital, allowed=others, level="restricted-personal", budget_epsilon="100",
            budget_delta="1/1000", tables={"patients": data[table]},
        )  # fmt: skip
    node_factory.start("insurer", allowed=list(HOSPITALS))
    job = dataclasses.replace(spec(rounds=2, noise_multiplier=1.0), job_id="")
    with node_factory.client("insurer") as insurer:
        job_id = insurer.submit(job)
        status = wait_final(insurer, job_id, timeout=120)
        assert status.state is JobState.SUCCEEDED, status.error
        result = insurer.result(job_id)
    p = fed_dp_sgd.plan(job)
    assert result.summary["rounds_run"] == 2
    assert result.summary["evaluations_run"] == 1 and result.summary["final_eval_rows"]
    assert {"model.json", "history.csv", "training_curves.png"} <= set(result.artifacts)
    assert len(json.loads(result.artifacts["model.json"])["weights"]) == p.model.size
    node_factory.wait_closed(job_id)
    planned = p.planned_cost()
    for hospital in HOSPITALS:
        assert Fraction(result.summary[f"epsilon_training_{hospital}"]) == p.epsilon(2)
        assert Fraction(result.summary[f"epsilon_{hospital}"]) == planned.epsilon
        charges = [
            r.fields
            for r in node_factory.nodes[hospital].audit_store.read()
            if r.event == "budget_charged" and r.job_id == job_id
        ]
        # Two rounds, then the final evaluation (step 2), each charged before it ran.
        assert [c["part"] for c in charges] == ["round-1", "round-2", "eval-2"]
        assert Fraction(str(charges[-1]["epsilon"])) == p.evaluation.epsilon
        assert Fraction(str(charges[-1]["spent"])) == planned.epsilon
        ledger = node_factory.nodes[hospital].manager.ledger
        assert ledger.line("patients").spent.delta == p.delta
    addresses = {n: f"127.0.0.1:{node.port}" for n, node in node_factory.nodes.items()}
    config = write_regulator_config(tmp_path / "regulator.toml", node_factory.federation, addresses)
    outcome = audit_federation(load_regulator_config(config))
    assert outcome.errors == 0, outcome.findings


def test_a_hospital_dying_after_its_upload_does_not_stop_the_training(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    """hospital-c's node process dies right after uploading its masked update of round 1.

    The round completes from the other two hospitals' shares (max_dropouts = 1), round 2 runs
    without hospital-c, and the job succeeds at the coordinator and at the surviving hospitals.
    """
    # In-process nodes share one interpreter: import torch and Opacus before the job, so that no
    # node stalls on the import while its peers wait (separate node processes never would).
    importlib.import_module("opacus")
    limits = "heartbeat_interval_s = 0.2\npeer_silence_s = 8"
    data = generate_health(80, 11)
    for hospital, table in HOSPITALS.items():
        others = [p for p in (*HOSPITALS, "insurer") if p != hospital]
        path = node_factory.write_config(
            hospital, allowed=others, level="restricted-personal", budget_epsilon="100",
            budget_delta="1/1000", tables={"patients": data[table]}, limits=limits,
        )  # fmt: skip
        if hospital == "hospital-c":
            node_factory.spawn(hospital, path, env={CRASH_ENV: "fed/masked/0"})
        else:
            node_factory.run(hospital, path)
    insurer_config = node_factory.write_config("insurer", allowed=list(HOSPITALS), limits=limits)
    node_factory.run("insurer", insurer_config)
    job = dataclasses.replace(spec(rounds=2, noise_multiplier=1.0), job_id="")
    with node_factory.client("insurer") as insurer:
        job_id = insurer.submit(job)
        status = wait_final(insurer, job_id, timeout=120)
        assert status.state is JobState.SUCCEEDED, status.error
        result = insurer.result(job_id)
    assert node_factory.processes["hospital-c"].wait(10) == 137  # it died where it was told
    assert result.summary["rounds_run"] == 2
    history = list(csv.DictReader(io.StringIO(result.artifacts["history.csv"].decode())))
    assert [int(h["survivors"]) for h in history[:2]] == [3, 2]  # c's round-1 upload counted
    for hospital in ("hospital-a", "hospital-b"):
        with node_factory.client(hospital) as c:
            assert wait_final(c, job_id).state is JobState.SUCCEEDED
    node_factory.wait_closed(job_id)
    closes = [
        r.fields
        for r in node_factory.nodes["insurer"].audit_store.read()
        if r.event == "job_closed" and r.job_id == job_id
    ]
    assert closes[0]["dropped"] == "hospital-c"
    survivors = ("insurer", "hospital-a", "hospital-b")
    addresses = {n: f"127.0.0.1:{node_factory.port(n)}" for n in survivors}
    config = write_regulator_config(tmp_path / "regulator.toml", node_factory.federation, addresses)
    outcome = audit_federation(load_regulator_config(config))
    assert outcome.errors == 0, outcome.findings


@pytest.mark.parametrize("victim", ["insurer", "hospital-a"])
def test_a_killed_node_resumes_its_round_and_no_round_is_charged_twice(
    node_factory: NodeFactory, victim: str
) -> None:
    """``kill -9`` of the coordinator or of a hospital mid-training, then a quick restart.

    The restarted node resumes from its last saved state and re-sends what it had sent; every
    hospital still takes part in every round, and each ledger holds each round once.
    """
    importlib.import_module("opacus")  # see the drop-out test above
    limits = "heartbeat_interval_s = 0.2\npeer_silence_s = 15"
    rounds = 5
    data = generate_health(80, 11)
    paths: dict[str, Path] = {}
    for hospital, table in HOSPITALS.items():
        others = [p for p in (*HOSPITALS, "insurer") if p != hospital]
        paths[hospital] = node_factory.write_config(
            hospital, allowed=others, level="restricted-personal", budget_epsilon="100",
            budget_delta="1/1000", tables={"patients": data[table]}, limits=limits,
        )  # fmt: skip
    paths["insurer"] = node_factory.write_config("insurer", allowed=list(HOSPITALS), limits=limits)
    for name, path in paths.items():
        if name == victim:
            node_factory.spawn(name, path)
        else:
            node_factory.run(name, path)
    job = dataclasses.replace(spec(rounds=rounds, local_steps=20, noise_multiplier=1.0), job_id="")
    with node_factory.client("insurer") as insurer:
        job_id = insurer.submit(job)

    with node_factory.client(victim) as c:
        status = follow_job(c, job_id, until=lambda s: s.done >= 2, timeout=60, interval=0.02)
    assert status.done >= 2, f"job {job_id} ended {status.state.value} at {victim}"
    node_factory.kill(victim)
    node_factory.spawn(victim, paths[victim])
    with node_factory.client("insurer") as insurer:
        status = wait_final(insurer, job_id, timeout=180)
        assert status.state is JobState.SUCCEEDED, status.error
        result = insurer.result(job_id)
    assert result.summary["rounds_run"] == rounds
    history = list(csv.DictReader(io.StringIO(result.artifacts["history.csv"].decode())))
    assert all(int(h["survivors"]) == 3 for h in history)  # nobody dropped out
    for hospital in HOSPITALS:
        db = sqlite3.connect(node_factory.workdir / hospital / "state" / "budget.db")
        try:
            parts = [
                p for (p,) in db.execute("SELECT part FROM charges WHERE job_id = ?", (job_id,))
            ]
        finally:
            db.close()
        assert sorted(parts) == [f"eval-{rounds}"] + [f"round-{r}" for r in range(1, rounds + 1)]


def test_a_coordinator_node_asking_for_62_evaluations_gets_one_noisy_answer(
    node_factory: NodeFactory,
) -> None:
    """Issue 14's attack between nodes: ``rounds = 1``, then 62 evaluate steps of chosen weights.

    The insurer's node runs a modified coordinator role; the hospitals run the real protocol.
    Each hospital answers the one evaluation the spec implies, charged to its ledger and noised,
    and refuses the next: the job fails naming the step, and no hospital sends anything for it.
    """
    importlib.import_module("opacus")  # see the drop-out test above
    data = generate_health(80, 11)
    for hospital, table in HOSPITALS.items():
        others = [p for p in (*HOSPITALS, "insurer") if p != hospital]
        node_factory.start(
            hospital, allowed=others, level="restricted-personal", budget_epsilon="100",
            budget_delta="1/1000", tables={"patients": data[table]},
        )  # fmt: skip
    learned: list[object] = []
    attacker = with_coordinator(greedy_coordinator([(EVAL, 1)] * 62, learned))
    registry = {**PROTOCOLS, "fed_dp_sgd": attacker}
    node_factory.start("insurer", allowed=list(HOSPITALS), registry=registry)
    job = dataclasses.replace(spec(rounds=1, noise_multiplier=1.0), job_id="")
    with node_factory.client("insurer") as insurer:
        job_id = insurer.submit(job)
        status = wait_final(insurer, job_id, timeout=120)
    assert status.state in (JobState.FAILED, JobState.ABORTED)
    assert "evaluation 2, beyond the 1 approved" in status.error
    assert len(learned) == 1
    for hospital in HOSPITALS:  # each hospital's role has ended (failed, or aborted by a peer)
        with node_factory.client(hospital) as client:
            assert wait_final(client, job_id).state in (JobState.FAILED, JobState.ABORTED)
    refusals = 0
    for hospital in HOSPITALS:
        records = [r for r in node_factory.nodes[hospital].audit_store.read() if r.job_id == job_id]
        charges = [r.fields for r in records if r.event == "budget_charged"]
        assert [c["part"] for c in charges] == ["eval-0"]
        assert Fraction(str(charges[0]["epsilon"])) == 1
        sent = [str(r.fields["tag"]) for r in records if r.event == "message_sent"]
        assert "fed/masked/0" in sent and not [t for t in sent if t.endswith("/1")]
        refusals += any(r.event == "protocol_fed_dp_sgd.step_refused" for r in records)
    assert refusals >= 1  # the first hospital to see step 1 refused it; the others were stopped
