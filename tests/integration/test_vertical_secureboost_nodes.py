"""SecureBoost between three nodes over mTLS: policies, model parts, scoring, kill -9 and resume.

The jobs of tests/protocols/test_vertical_secureboost.py, every message through the gRPC
mailbox. Each side's policy must trust the other for the protocol (a deviating bank could read a
provider's bins, a deviating provider probe the labels), so a node that does not is refused at
admission, naming the risk.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bund.compute import insecure
from bund.parties.demo_data import generate_finance
from bund.parties.follow import follow_job
from bund.parties.lifecycle.states import JobState
from bund.parties.regulator import audit_federation, load_regulator_config
from tests.conftest import NodeFactory
from tests.integration.test_faults import LIMITS, SMALL_KEYS
from tests.integration.test_node import wait_final
from tests.integration.test_regulator import write_regulator_config
from tests.protocols.test_vertical_lr import ROLES
from tests.protocols.test_vertical_secureboost import make_spec, score_spec

pytestmark = pytest.mark.integration


def trust(party: str) -> list[tuple[str, str]]:
    """What each party's policy trusts: the bank its providers, the providers the bank."""
    if party == "bank":
        return [(p, "vertical_secureboost") for p in ("tax", "registry")]
    return [("bank", "vertical_secureboost"), ("bank", "vertical_tree_score")]


@pytest.fixture
def small_keys() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()  # 512-bit Paillier keys: tests only
    yield
    insecure.disable_insecure_test_parameters()


@pytest.mark.usefixtures("small_keys")
def test_secureboost_and_tree_scoring_between_three_nodes(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    data = generate_finance(1500, 11, applicants=200)
    tables = {
        "bank": {"loan_book": data["loan_book"], "applicants": data["applicants"]},
        "tax": {"tax_filings": data["tax_filings"]},
        "registry": {"business_registry": data["business_registry"]},
    }
    for party in ROLES:
        others = [p for p in ROLES if p != party]
        node_factory.start(
            party, allowed=others, tables=tables[party],
            trusted_for=[] if party == "registry" else trust(party),
        )  # fmt: skip
    with node_factory.client("bank") as bank:
        refused = wait_final(bank, bank.submit(make_spec()))
    assert refused.state is JobState.REFUSED
    assert "registry" in refused.error and "trusted_for" in refused.error, refused.error
    node_factory.write_config("registry", allowed=["bank", "tax"], tables=tables["registry"],
                              trusted_for=trust("registry"))  # fmt: skip
    node_factory.nodes["registry"].reload()
    with node_factory.client("bank") as bank:
        job_id = bank.submit(make_spec())
        status = wait_final(bank, job_id, timeout=240)
        assert status.state is JobState.SUCCEEDED, status.error
        result = bank.result(job_id)
    assert result.summary["auc"] > result.summary["auc_bank_only"]  # type: ignore[operator]
    receipt = json.loads(result.artifacts["receipt.json"])
    assert (
        receipt["protocol"] == "vertical_secureboost" and "DEVIATING bank" in receipt["learned.tax"]
    )
    node_factory.wait_closed(job_id)
    with node_factory.client("tax") as tax:
        own = json.loads(tax.result(job_id).artifacts["model.json"])
    assert set(own["features"]) <= set(data["tax_filings"].columns)
    assert "trees" not in own and "default_12m" not in json.dumps(own)
    with node_factory.client("bank") as bank:
        scoring = bank.submit(score_spec(job_id))
        status = wait_final(bank, scoring, timeout=240)
        assert status.state is JobState.SUCCEEDED, status.error
        scores = bank.result(scoring)
    assert 0 < scores.summary["scored"] < scores.summary["applicants"]  # type: ignore[operator]
    node_factory.wait_closed(scoring)
    addresses = {n: f"127.0.0.1:{node.port}" for n, node in node_factory.nodes.items()}
    config = write_regulator_config(tmp_path / "regulator.toml", node_factory.federation, addresses)
    outcome = audit_federation(load_regulator_config(config))
    assert outcome.errors == 0, outcome.findings


def run_trees(f: NodeFactory, victim: str | None) -> dict[str, dict[str, object]]:
    """One SecureBoost job between three node processes; kill ``victim`` after a tree, restart."""
    with f.client("bank") as bank:
        job_id = bank.submit(make_spec(n_estimators=4, max_depth=3))
    if victim is not None:
        with f.client("bank") as c:  # after the first tree: past the alignment
            follow_job(c, job_id, until=lambda s: s.phase == "trees" and s.done >= 1, timeout=120)
        f.kill(victim)
        f.spawn(victim, f.workdir / victim / "node.toml", env=SMALL_KEYS)
    models: dict[str, dict[str, object]] = {}
    for party in ROLES:
        with f.client(party) as c:
            status = wait_final(c, job_id, timeout=240)
            assert status.state is JobState.SUCCEEDED, (party, status.error)
            models[party] = json.loads(c.result(job_id).artifacts["model.json"])
    return models


@pytest.mark.parametrize("victim", ["bank", "tax"])
def test_secureboost_resumes_after_kill_with_the_uninterrupted_model(
    node_factory: NodeFactory, victim: str
) -> None:
    f = node_factory
    data = generate_finance(1500, 11)
    for party, dataset in ROLES.items():
        others = [p for p in ROLES if p != party]
        path = f.write_config(
            party, allowed=others, tables={dataset: data[dataset]}, limits=LIMITS,
            trusted_for=trust(party),
        )  # fmt: skip
        f.spawn(party, path, env=SMALL_KEYS)
    reference = run_trees(f, None)
    resumed = run_trees(f, victim)
    assert resumed == reference  # bit for bit: every tree, leaf, split and metric
