"""The credit-model workflow between three nodes over mTLS: screening, training, scoring.

Each step is a real job at the bank's node; the providers keep their own parts of the model at
their own nodes, the scoring job applies them to new applicants, and only the bank gets scores.
The scores are checked against the plaintext model of tests/protocols/test_vertical_score.py.
"""

from __future__ import annotations

import csv
import io
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from bund.compute import insecure
from bund.parties.client import PeerClients, RemoteError
from bund.parties.data import Table
from bund.parties.demo_data import generate_finance
from bund.parties.regulator import audit_federation, load_regulator_config
from bund.parties.workflow import (
    CreditWorkflow,
    WorkflowError,
    parse_credit_workflow,
    run_credit_model,
)
from tests.conftest import NodeFactory
from tests.integration.test_regulator import write_regulator_config
from tests.protocols.test_vertical_lr import PARAMS, trust_of
from tests.protocols.test_vertical_score import APPLICANTS, reference

EXAMPLE = Path(__file__).parents[2] / "examples" / "credit" / "workflow.toml"
DATASETS = {
    "bank": ("loan_book", "applicants"),
    "tax": ("tax_filings",),
    "registry": ("business_registry",),
}


@pytest.fixture
def small_keys() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()  # 512-bit Paillier keys: tests only
    yield


@pytest.fixture(scope="module")
def data() -> dict[str, Table]:
    return generate_finance(1500, 11, applicants=APPLICANTS)


def start_nodes(
    node_factory: NodeFactory, data: dict[str, Table], protocols: dict[str, list[str]] | None = None
) -> None:
    """The bank, the tax bureau and the registry, each with its own confidential datasets."""
    for party, names in DATASETS.items():
        node_factory.start(
            party,
            allowed=[p for p in DATASETS if p != party],
            tables={n: data[n] for n in names},
            protocols=protocols,
            trusted_for=trust_of(party),
        )


def example_workflow(**training: object) -> CreditWorkflow:
    """The shipped example workflow, with test keys and the given training parameters."""
    doc = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    doc["screening"]["key_bits"] = 512
    doc["training"] = {**training, "key_bits": 512}
    return parse_credit_workflow(doc, "bank", str(EXAMPLE))


@pytest.mark.usefixtures("small_keys")
def test_credit_workflow_between_three_nodes(
    node_factory: NodeFactory, data: dict[str, Table], tmp_path: Path
) -> None:
    start_nodes(node_factory, data)
    workflow = example_workflow(**PARAMS)
    console = Console(record=True, width=120)
    peers = PeerClients(node_factory.config("bank"))
    try:
        with node_factory.client("bank") as bank:
            outcome = run_credit_model(bank, workflow, console, out=tmp_path / "out", peers=peers)
    finally:
        peers.close()
    assert [s.name for s in outcome.steps] == ["screening", "training", "scoring"]
    screening, training, scoring = (s.result for s in outcome.steps)
    assert any(k.startswith("iv.tax.") for k in screening.summary)
    assert training.summary["auc"] > training.summary["auc_bank_only"]  # type: ignore[operator]
    # Scores equal the plaintext model's on the applicants that every provider holds.
    rows = list(csv.DictReader(io.StringIO(scoring.artifacts["scores.csv"].decode())))
    matched = sorted(r["id"] for r in rows if r["matched"] == "1")
    expected = dict(zip(matched, reference(data, matched).tolist(), strict=True))
    assert len(matched) == scoring.summary["scored"] and matched
    for r in rows:
        if r["matched"] == "1":
            assert float(r["probability"]) == pytest.approx(expected[r["id"]], abs=2e-6)
    assert (tmp_path / "out" / "scoring" / "scores.csv").read_bytes() == scoring.artifacts[
        "scores.csv"
    ]
    text = console.export_text()
    assert "bank only" in text and "joint" in text and "AUC" in text
    receipt = json.loads(scoring.artifacts["receipt.json"])
    assert receipt["result_to"] == "bank" and "masked pairwise" in receipt["learned.bank"]
    # The providers hold their own parts of the model, and no score.
    scoring_job = outcome.step("scoring").job_id
    node_factory.wait_closed(scoring_job)
    for party in ("tax", "registry"):
        with node_factory.client(party) as client:
            own = json.loads(client.result(outcome.step("training").job_id).artifacts["model.json"])
            assert own["label_holder"] == "bank" and "intercept" not in own
            with pytest.raises(RemoteError, match="went to bank"):
                client.result(scoring_job)
    addresses = {n: f"127.0.0.1:{node.port}" for n, node in node_factory.nodes.items()}
    config = write_regulator_config(tmp_path / "regulator.toml", node_factory.federation, addresses)
    assert audit_federation(load_regulator_config(config)).errors == 0


@pytest.mark.usefixtures("small_keys")
def test_a_refused_step_stops_the_chain(node_factory: NodeFactory, data: dict[str, Table]) -> None:
    # The registry's policy lets its data feed training but not screening.
    start_nodes(node_factory, data, protocols={"business_registry": ["vertical_lr"]})
    with node_factory.client("bank") as bank, pytest.raises(WorkflowError) as failure:
        run_credit_model(bank, example_workflow(), Console(record=True))
    message = str(failure.value)
    assert "step 1 of 3 (screening" in message and "training, scoring did not run" in message
    assert "woe_iv" in message and "registry" in message
    with node_factory.client("bank") as bank:
        assert [s.spec.protocol for s in bank.list_jobs()] == ["woe_iv"]
