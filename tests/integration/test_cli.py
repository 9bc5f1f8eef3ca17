"""The `bund` command against real nodes: set-up, submit with progress, status, result, list."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

from typer.testing import CliRunner

from bund.parties.cli import app
from tests.conftest import NodeFactory
from tests.integration.test_node import BANK_IDS, TAX_IDS, start_pair

SPEC = """
protocol = "psi"
purpose = "CLI test"
receivers = ["bank"]

[params]
mode = "cardinality"

[[participants]]
party = "bank"
role = "member"
dataset = "loans"
columns = { id = "company_id" }

[[participants]]
party = "tax"
role = "member"
dataset = "filings"
columns = { id = "uscc" }
"""


def test_federation_and_party_init(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["federation", "init", str(tmp_path / "fed"), "--name", "cli"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        [
            "party",
            "init",
            "insurer-a",
            "--role",
            "insurer",
            "--federation",
            str(tmp_path / "fed"),
            "--out",
            str(tmp_path / "insurer-a"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE((tmp_path / "insurer-a" / "node.key").stat().st_mode) == 0o600
    r = runner.invoke(
        app,
        [
            "party",
            "init",
            "x",
            "--role",
            "wizard",
            "--federation",
            str(tmp_path / "fed"),
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert r.exit_code == 1 and "role" in r.output


def test_submit_status_result_list(node_factory: NodeFactory, tmp_path: Path) -> None:
    start_pair(node_factory)
    spec = tmp_path / "psi.toml"
    spec.write_text(SPEC, encoding="utf-8")
    config = str(node_factory.config("bank").source)
    runner = CliRunner()
    r = runner.invoke(app, ["job", "submit", str(spec), "--config", config])
    assert r.exit_code == 0, r.output
    assert "succeeded" in r.output
    expected = len(set(BANK_IDS) & set(TAX_IDS))
    assert re.search(rf"intersection_size\W+{expected}\b", r.output), r.output
    job_id = r.output.split("submitted job ")[1].split()[0]
    r = runner.invoke(app, ["job", "status", job_id, "--config", config])
    assert r.exit_code == 0 and "succeeded" in r.output
    r = runner.invoke(app, ["job", "list", "--config", config])
    assert r.exit_code == 0 and job_id in r.output
    r = runner.invoke(
        app, ["job", "result", job_id, "--config", config, "--out", str(tmp_path / "out")]
    )
    assert r.exit_code == 0 and str(expected) in r.output
    # Written page by page into a temporary file, renamed when whole: nothing else is left.
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["receipt.json"]
    receipt = json.loads((tmp_path / "out" / "receipt.json").read_text())
    assert receipt["transcript_sha256"] and receipt["protocol"] == "psi"
    # The tax bureau's operator asks its own node: the result went to the bank.
    tax_config = str(node_factory.config("tax").source)
    r = runner.invoke(app, ["job", "result", job_id, "--config", tax_config])
    assert r.exit_code == 1 and "went to bank" in r.output


def test_bad_spec_file_names_the_problem(node_factory: NodeFactory, tmp_path: Path) -> None:
    start_pair(node_factory)
    spec = tmp_path / "bad.toml"
    spec.write_text(SPEC.replace('mode = "cardinality"', 'mode = "everything"'), encoding="utf-8")
    r = CliRunner().invoke(
        app, ["job", "submit", str(spec), "--config", str(node_factory.config("bank").source)]
    )
    assert r.exit_code == 1
    assert "intersection" in r.output and "cardinality" in r.output


def test_audit_export_and_verify_jsonl(node_factory: NodeFactory, tmp_path: Path) -> None:
    start_pair(node_factory)
    cfg = node_factory.config("bank")
    runner = CliRunner()
    spec = tmp_path / "psi.toml"
    spec.write_text(SPEC, encoding="utf-8")
    assert (
        runner.invoke(app, ["job", "submit", str(spec), "--config", str(cfg.source)]).exit_code == 0
    )
    out = tmp_path / "bank.jsonl"
    r = runner.invoke(app, ["audit", "export", "--config", str(cfg.source), "--out", str(out)])
    assert r.exit_code == 0, r.output
    key = str(cfg.audit_pub)
    r = runner.invoke(app, ["audit", "verify", "--log", str(out), "--key", key])
    assert r.exit_code == 0 and "OK" in r.output, r.output
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    del lines[4]  # a removed record
    out.write_text("".join(lines), encoding="utf-8")
    r = runner.invoke(app, ["audit", "verify", "--log", str(out), "--key", key])
    assert r.exit_code == 1 and "record 4" in r.output, r.output


def test_budget_show_lists_each_dataset_exactly(node_factory: NodeFactory) -> None:
    node_factory.start(
        "bank", {"loans": {"company_id": BANK_IDS}}, ("tax",), level="restricted-personal"
    )
    policy = node_factory.workdir / "bank" / "policy.toml"
    policy.write_text(
        policy.read_text().replace(
            'level = "restricted-personal"',
            'level = "restricted-personal"\nbudget_epsilon = "7/3"\nbudget_delta = "1e-6"',
        )
    )
    config = str(node_factory.config("bank").source)
    r = CliRunner().invoke(app, ["budget", "show", "--config", config])
    assert r.exit_code == 0, r.output
    rows = [
        [c.strip() for c in line.split("│")[1:-1]]
        for line in r.output.splitlines()
        if line.startswith("│")
    ]
    # total, spent, reserved (by running jobs), left: decimals, exact where a decimal is not
    exact = "2.334*"
    assert ["loans", "restricted-personal", "ε", exact, "0", "0", exact] in rows
    assert "* rounded up; exactly: 2.334 is 7/3" in " ".join(r.output.split())
    assert ["", "", "δ", "1e-06", "0", "0", "1e-06"] in rows
