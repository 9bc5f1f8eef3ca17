"""DP statistics between four node processes' worth of nodes over mTLS: three hospitals, an insurer.

The insurer asks; each hospital's node checks its policy (restricted-personal health data may feed
dp_stats), charges the query's epsilon to its dataset before anything runs, and contributes a
masked, clamped vector with its own noise; only the insurer receives the noisy aggregate. The
regulator then reconciles all four logs.
"""

from __future__ import annotations

from pathlib import Path

from bund.parties.demo_data import generate_health
from bund.parties.jobs import JobSpec, Participant
from bund.parties.lifecycle.states import JobState
from bund.parties.regulator import audit_federation, load_regulator_config
from tests.conftest import NodeFactory
from tests.integration.test_node import wait_final
from tests.integration.test_regulator import write_regulator_config

HOSPITALS = {"hospital-a": "hospital_a", "hospital-b": "hospital_b", "hospital-c": "hospital_c"}


def survival_spec() -> JobSpec:
    return JobSpec(
        protocol="dp_stats",
        participants=(
            *(Participant(h, "contributor", "patients") for h in HOSPITALS),
            Participant("insurer", "analyst"),
        ),
        receivers=("insurer",),
        purpose="Survival of cardiology patients across three hospitals",
        requester="insurer",
        params={
            "kind": "survival", "column": "follow_up_days", "event": "event", "lower": "0",
            "upper": "2190", "bins": 12, "epsilon": "1/2", "min_cell": 5,
        },
    )  # fmt: skip


def test_dp_survival_curve_across_hospital_nodes(node_factory: NodeFactory, tmp_path: Path) -> None:
    data = generate_health(300, 7)
    for hospital, table in HOSPITALS.items():
        others = [p for p in (*HOSPITALS, "insurer") if p != hospital]
        node_factory.start(
            hospital, allowed=others, level="restricted-personal", budget_epsilon="1",
            tables={"patients": data[table]},
        )  # fmt: skip
    node_factory.start("insurer", allowed=list(HOSPITALS))
    with node_factory.client("insurer") as insurer:
        first = insurer.submit(survival_spec())
        assert wait_final(insurer, first).state is JobState.SUCCEEDED, insurer.status(first).error
        result = insurer.result(first)
        assert "result.csv" in result.artifacts
        assert any(name.endswith(".png") for name in result.artifacts)
        second = insurer.submit(survival_spec())
        assert wait_final(insurer, second).state is JobState.SUCCEEDED
        third = insurer.submit(survival_spec())
        refused = wait_final(insurer, third)
        assert refused.state is JobState.REFUSED
        assert "epsilon=0, delta=0 of its privacy budget left" in refused.error
    for hospital in HOSPITALS:
        ledger = node_factory.nodes[hospital].manager.ledger
        assert str(ledger.line("patients").spent) == "epsilon=1, delta=0"
        # Every hospital noised its own vector, whatever its place in the spec.
        records = node_factory.nodes[hospital].audit_store.read()
        contributed = [r for r in records if r.event == "protocol_dp_stats.contributed"]
        assert len(contributed) == 2 and all(r.fields["noise_added_here"] for r in contributed)
    for job in (first, second):
        node_factory.wait_closed(job)
    addresses = {n: f"127.0.0.1:{node.port}" for n, node in node_factory.nodes.items()}
    config = write_regulator_config(tmp_path / "regulator.toml", node_factory.federation, addresses)
    outcome = audit_federation(load_regulator_config(config))
    assert outcome.errors == 0, outcome.findings
