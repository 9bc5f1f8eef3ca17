"""A production-style node keeps its audit log in PostgreSQL: the same job, the same checks."""

from __future__ import annotations

from typer.testing import CliRunner

from bund.parties.cli import app
from bund.parties.lifecycle.states import JobState
from tests.conftest import NodeFactory
from tests.integration.test_node import BANK_IDS, TAX_IDS, psi_spec, wait_final
from tests.parties.test_audit import PostgresSandbox, postgres_dsn_from_env


def test_psi_between_nodes_whose_audit_logs_live_in_postgresql(node_factory: NodeFactory) -> None:
    sandbox = PostgresSandbox(postgres_dsn_from_env())
    try:
        urls = {
            p: f"{sandbox.dsn}?options=-csearch_path%3D{sandbox.new_schema()}"
            for p in ("bank", "tax")
        }
        node_factory.start(
            "bank", {"loans": {"company_id": BANK_IDS}}, ("tax",), audit_store=urls["bank"]
        )
        node_factory.start(
            "tax", {"filings": {"uscc": TAX_IDS}}, ("bank",), audit_store=urls["tax"]
        )
        assert type(node_factory.nodes["bank"].audit_store).__name__ == "PostgresAuditStore"
        with node_factory.client("bank") as bank:
            job_id = bank.submit(psi_spec())
            assert wait_final(bank, job_id).state is JobState.SUCCEEDED
            assert bank.read_audit().size >= 10
        configs = {p: node_factory.config(p) for p in ("bank", "tax")}
        node_factory.stop_all()
        for party, cfg in configs.items():
            r = CliRunner().invoke(app, ["audit", "verify", "--config", str(cfg.source)])
            assert r.exit_code == 0 and "OK" in r.output, (party, r.output)
            assert "password" not in r.output and sandbox.dsn not in r.output
    finally:
        node_factory.stop_all()
        sandbox.close()
