"""Vertical LR between three nodes over mTLS: the bank, the tax bureau and the business registry.

The same job as tests/protocols/test_vertical_lr.py, but every message goes through the gRPC
mailbox, each node checks its own policy (confidential company data may feed vertical_lr), and
the regulator reconciles the three logs afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bund.compute import insecure
from bund.parties.demo_data import generate_finance
from bund.parties.lifecycle.states import JobState
from bund.parties.regulator import audit_federation, load_regulator_config
from tests.conftest import NodeFactory
from tests.integration.test_node import wait_final
from tests.integration.test_regulator import write_regulator_config
from tests.protocols.test_vertical_lr import ROLES, make_spec, trust_of


@pytest.fixture
def small_keys() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()  # 512-bit Paillier keys: tests only
    yield


@pytest.mark.usefixtures("small_keys")
def test_vertical_lr_between_three_nodes(node_factory: NodeFactory, tmp_path: Path) -> None:
    data = generate_finance(1500, 11)
    for party, dataset in ROLES.items():
        others = [p for p in ROLES if p != party]
        node_factory.start(
            party, allowed=others, tables={dataset: data[dataset]}, trusted_for=trust_of(party)
        )
    with node_factory.client("bank") as bank:
        job_id = bank.submit(make_spec())
        status = wait_final(bank, job_id, timeout=240)
        assert status.state is JobState.SUCCEEDED, status.error
        result = bank.result(job_id)
    assert result.summary["auc"] > result.summary["auc_bank_only"]  # type: ignore[operator]
    assert {"roc.png", "ks.png", "receipt.json"} <= set(result.artifacts)
    receipt = json.loads(result.artifacts["receipt.json"])
    assert receipt["protocol"] == "vertical_lr" and receipt["dataset"] == "loan_book"
    assert receipt["result_to"] == "bank,tax,registry"
    node_factory.wait_closed(job_id)
    # The tax bureau keeps its own part of the model at its own node, and nothing of the bank's.
    with node_factory.client("tax") as tax:
        own = json.loads(tax.result(job_id).artifacts["model.json"])
    assert set(own["coefficients"]) <= set(data["tax_filings"].columns)
    assert "intercept" not in own and "default_12m" not in json.dumps(own)
    addresses = {n: f"127.0.0.1:{node.port}" for n, node in node_factory.nodes.items()}
    config = write_regulator_config(tmp_path / "regulator.toml", node_factory.federation, addresses)
    outcome = audit_federation(load_regulator_config(config))
    assert outcome.errors == 0, outcome.findings
