"""Production-style nodes with PostgreSQL: an audit log kept there, and a dataset read from it."""

from __future__ import annotations

import json
import os
import secrets
from decimal import Decimal

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from typer.testing import CliRunner

from bund.parties.cli import app
from bund.parties.data import load_postgres
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


def test_psi_between_nodes_where_the_bank_reads_its_loans_from_postgresql(
    node_factory: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bank's dataset is a PostgreSQL table, read as a SELECT-only role (docs/datasets.md)."""
    dsn = postgres_dsn_from_env()
    info = conninfo_to_dict(dsn)
    schema, reader = f"core_{os.getpid()}", f"bund_node_reader_{os.getpid()}"
    password = secrets.token_hex(16)
    url = f"postgresql://{reader}@{info['host']}:{info['port']}/{info['dbname']}"
    loans = [*BANK_IDS, "", BANK_IDS[3], BANK_IDS[4]]  # one blank id, two repeated
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(f"CREATE SCHEMA {schema}")
        db.execute(f"CREATE TABLE {schema}.loans (company_id text, amount_10k_cny numeric(12, 2))")
        db.cursor().executemany(
            f"INSERT INTO {schema}.loans VALUES (%s, %s)",
            [(cid, Decimal(i) / 4) for i, cid in enumerate(loans)],
        )
        db.execute(f"CREATE ROLE {reader} LOGIN PASSWORD '{password}'")
        db.execute(f"GRANT USAGE ON SCHEMA {schema} TO {reader}")
        db.execute(f"GRANT SELECT ON {schema}.loans TO {reader}")
    try:
        monkeypatch.setenv("BUND_TEST_LOANS_PASSWORD", password)
        config = node_factory.write_config(
            "bank", {"loans": {"company_id": ["placeholder"]}}, ("tax",)
        )
        text = config.read_text(encoding="utf-8")
        csv_entry = 'kind = "csv"\npath = "loans.csv"\n'
        assert csv_entry in text
        config.write_text(
            text.replace(
                csv_entry,
                f'kind = "postgres"\nurl = "{url}"\ntable = "{schema}.loans"\n'
                'password_env = "BUND_TEST_LOANS_PASSWORD"\nstatement_timeout_s = 60\n',
            ),
            encoding="utf-8",
        )
        (config.parent / "loans.csv").unlink()
        assert password not in config.read_text(encoding="utf-8")
        node_factory.run("bank", config)
        node_factory.start("tax", {"filings": {"uscc": TAX_IDS}}, ("bank",))
        with node_factory.client("bank") as bank:
            job_id = bank.submit(psi_spec())
            assert wait_final(bank, job_id).state is JobState.SUCCEEDED
            result = bank.result(job_id)
        common = result.artifacts["intersection.csv"].decode().splitlines()[1:]
        assert sorted(common) == sorted(set(BANK_IDS) & set(TAX_IDS))
        receipt = json.loads(result.artifacts["receipt.json"])
        expected = load_postgres(url, "loans", table=f"{schema}.loans", password=password)
        assert receipt["dataset_version"] == expected.content_hash()
        assert receipt["records"] == len(loans)
        assert receipt["quality.blank_ids_skipped"] == 1
        assert receipt["quality.duplicate_ids_dropped"] == 2
        assert "quality.blank_lines_skipped" not in receipt  # a CSV loader's count
    finally:
        node_factory.stop_all()
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute(f"DROP SCHEMA {schema} CASCADE")
            db.execute(f"DROP ROLE {reader}")
