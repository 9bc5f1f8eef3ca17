"""What an operator sees, against real nodes: --json of every read command, a job's log lines and
records, the health listener, and one line (no traceback) for a busy port, a certificate from
another CA and a node that is down."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from bund.parties.cli import app
from bund.parties.client import RemoteError
from bund.parties.config import load_config
from bund.parties.listeners import ListenError
from bund.parties.node import create_node
from bund.parties.oplog import version
from tests.conftest import REPO_ROOT, NodeFactory
from tests.integration.test_cli import SPEC
from tests.integration.test_node import BANK_IDS, TAX_IDS, start_pair

STATUS_KEYS = {
    "job_id",
    "protocol",
    "requester",
    "purpose",
    "participants",
    "receivers",
    "state",
    "phase",
    "done",
    "total",
    "error",
    "has_result",
    "transcript_sha256",
    "updated_at",
    "approved_by",
    "parties",
}


def _submit(node_factory: NodeFactory, tmp_path: Path) -> tuple[str, str]:
    """A PSI job from bank to tax through the CLI: (bank's node.toml, job id)."""
    spec = tmp_path / "psi.toml"
    spec.write_text(SPEC, encoding="utf-8")
    config = str(node_factory.config("bank").source)
    r = CliRunner().invoke(app, ["job", "submit", str(spec), "--config", config])
    assert r.exit_code == 0, r.output
    job_id = r.output.split("submitted job ")[1].split()[0]
    node_factory.wait_closed(job_id)
    return config, job_id


def _credential(node_factory: NodeFactory, tmp_path: Path, address: str) -> str:
    """A copy of bank's operator credential with an operator.toml naming ``address``."""
    credential = tmp_path / "alice"
    shutil.copytree(node_factory.federation.party_dir("bank") / "operator", credential)
    (credential / "operator.toml").write_text(
        f'party = "bank"\nnode = "{address}"\n', encoding="utf-8"
    )
    return str(credential / "operator.toml")


def _json(args: list[str], code: int = 0) -> object:
    r = CliRunner().invoke(app, args)
    assert r.exit_code == code, r.output
    return json.loads(r.stdout)


def test_every_read_command_prints_json_with_its_documented_keys(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    start_pair(node_factory)
    config, job_id = _submit(node_factory, tmp_path)
    expected = len(set(BANK_IDS) & set(TAX_IDS))

    status = _json(["job", "status", job_id, "--config", config, "--json"])
    assert isinstance(status, dict) and set(status) == STATUS_KEYS
    assert (status["job_id"], status["state"], status["has_result"]) == (job_id, "succeeded", True)
    assert [p["party"] for p in status["participants"]] == ["bank", "tax"]
    watched = _json(["job", "status", job_id, "--config", config, "--json", "--watch"])
    assert watched == status

    listing = _json(["job", "list", "--config", config, "--json"])
    assert isinstance(listing, dict) and [j["job_id"] for j in listing["jobs"]] == [job_id]
    assert set(listing["jobs"][0]) == STATUS_KEYS

    result = _json(["job", "result", job_id, "--config", config, "--json"])
    assert isinstance(result, dict) and set(result) == {"job_id", "summary", "artifacts"}
    assert result["summary"]["intersection_size"] == expected
    [receipt] = result["artifacts"]
    assert receipt["name"] == "receipt.json" and receipt["bytes"] > 0 and receipt["path"] is None
    out = tmp_path / "out"
    saved = _json(["job", "result", job_id, "--config", config, "--json", "--out", str(out)])
    assert isinstance(saved, dict) and saved["artifacts"][0]["path"] == str(out / "receipt.json")
    assert (out / "receipt.json").stat().st_size == receipt["bytes"]

    budget = _json(["budget", "show", "--config", config, "--json"])
    assert isinstance(budget, dict) and [d["dataset"] for d in budget["datasets"]] == ["loans"]
    assert budget["datasets"][0]["left"] == {"epsilon": "0", "delta": "0"}  # no DP budget

    verified = _json(["audit", "verify", "--config", config, "--json"])
    assert isinstance(verified, dict) and verified["ok"] is True
    assert set(verified) == {"ok", "log", "records", "first_bad_index", "reason"}
    assert verified["records"] > 5 and verified["first_bad_index"] is None

    cfg = node_factory.config("bank")
    operator = _credential(node_factory, tmp_path, f"127.0.0.1:{node_factory.port('bank')}")
    remote = _json(["audit", "verify", "--config", operator, "--key", str(cfg.audit_pub), "--json"])
    assert isinstance(remote, dict) and remote["ok"] is True and remote["log"] == "bank's node"


def test_budget_show_json_is_exact(node_factory: NodeFactory) -> None:
    path = node_factory.write_config(
        "bank",
        {"loans": {"company_id": BANK_IDS}},
        ("tax",),
        level="restricted-personal",
        budget_epsilon="5/2",
        budget_delta="1e-6",
    )
    budget = _json(["budget", "show", "--config", str(path), "--json"])
    both = {"epsilon": "5/2", "delta": "1/1000000"}
    none = {"epsilon": "0", "delta": "0"}
    assert budget == {
        "datasets": [
            {
                "dataset": "loans",
                "level": "restricted-personal",
                "total": both,
                "spent": none,
                "reserved": none,
                "left": both,
            }
        ]
    }


def test_a_jobs_life_in_the_node_log_and_in_job_logs(
    node_factory: NodeFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bund.jobs")
    start_pair(node_factory)
    config, job_id = _submit(node_factory, tmp_path)

    lines = [r for r in caplog.records if r.name == "bund.jobs" and job_id in r.getMessage()]
    bank = [r.bund for r in lines if r.bund["role"] and "tax" in r.bund["peers"]]  # type: ignore[attr-defined]
    events = [f["event"] for f in bank]
    for event in ("job_submitted", "job_accepted", "job_started", "job_closed"):
        assert event in events, events
    closed = bank[events.index("job_closed")]
    assert closed["protocol"] == "psi" and closed["state"] == "succeeded"
    assert "since_submit_s" in closed and "since_start_s" in closed

    r = CliRunner().invoke(app, ["job", "logs", job_id, "--config", config])
    assert r.exit_code == 0, r.output
    shown = r.stdout.splitlines()
    assert shown[0].split()[2] == "job_submitted" and "state=proposed" in shown[0]
    assert any(" job_closed " in line and "state=succeeded" in line for line in shown)
    assert not any(" message_sent " in line for line in shown)
    assert "message records not shown" in r.stderr

    r = CliRunner().invoke(app, ["job", "logs", job_id, "--config", config, "--all", "--json"])
    assert r.exit_code == 0, r.output
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert {rec["job_id"] for rec in records} == {job_id}
    assert [rec["index"] for rec in records] == sorted(rec["index"] for rec in records)
    assert any(rec["event"] == "message_sent" for rec in records)
    assert set(records[0]) == {"index", "time", "party", "event", "job_id", "fields"}


def test_the_job_log_rpc_is_for_the_nodes_operators_only(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    start_pair(node_factory)
    _, job_id = _submit(node_factory, tmp_path)
    with node_factory.client("bank", as_party="tax") as peer:
        with pytest.raises(RemoteError) as refused:
            peer.job_log(job_id)
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
    with node_factory.client("bank") as operator:
        assert operator.job_log(job_id)[0].event == "job_submitted"
        with pytest.raises(RemoteError) as unknown:
            operator.job_log("f" * 32)
    assert unknown.value.not_found


def test_the_health_listener_answers_without_a_client_certificate(
    node_factory: NodeFactory,
) -> None:
    node = node_factory.start("bank", extra='[health]\nlisten = "127.0.0.1:0"\n')
    assert node.health_http is not None
    url = f"http://127.0.0.1:{node.health_http.port}/"
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - http on loopback
        assert (answer.status, answer.read()) == (200, b"serving\n")
    node_factory.nodes.pop("bank").stop(grace=1.0)
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=10)  # noqa: S310


# -- one line, no traceback: as an operator sees it, from the `bund` command's own process ----


def _bund(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "bund.parties.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_a_busy_port_is_one_line_after_the_version(node_factory: NodeFactory) -> None:
    path = node_factory.write_config("bank")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = path.read_text(encoding="utf-8").replace(
            'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"'
        )
        path.write_text(text, encoding="utf-8")
        run = _bund("serve", "--config", str(path))
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert f"bund {version()}: starting bank's node" in lines[0]
    assert lines[-1] == (
        f"error: port {port} is in use: stop the other process or change listen in {path}"
    )


def test_a_node_that_cannot_bind_closes_what_it_opened_and_says_why(
    node_factory: NodeFactory,
) -> None:
    bank = node_factory.start("bank")
    path = node_factory.write_config("tax", extra='[health]\nlisten = "127.0.0.1:0"\n')
    text = path.read_text(encoding="utf-8")
    busy = text.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{bank.port}"', 1)
    assert busy != text
    path.write_text(busy, encoding="utf-8")

    def watchers() -> int:
        return sum(t.name == "bund-watch" for t in threading.enumerate())

    before = watchers()
    with pytest.raises(ListenError, match=f"port {bank.port} is in use: stop the other process"):
        create_node(load_config(path))
    # What it had started is stopped again (the job manager's watcher), and the same node starts
    # on its state directory once the port is free.
    assert watchers() == before
    path.write_text(text, encoding="utf-8")
    node_factory.run("tax", path)
    assert node_factory.nodes["tax"].health_http is not None


def test_a_node_from_another_ca_and_a_node_that_is_down_are_one_line(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node_factory.start("bank")
    federation = node_factory.federation
    address = f"127.0.0.1:{node_factory.port('bank')}"
    operator = _credential(node_factory, tmp_path, address)
    credential = Path(operator).parent
    # The operator holds the CA of another federation: the bank's node does not verify.
    shutil.copy(federation.party_dir("intruder") / "ca.pem", credential / "ca.pem")
    run = _bund("job", "list", "--config", operator)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == [
        (
            f"error: bank at {address}: the node's certificate is not from your federation CA; "
            "check [tls] ca"
        )
    ]

    node_factory.nodes.pop("bank").stop(grace=1.0)
    shutil.copy(federation.party_dir("bank") / "ca.pem", credential / "ca.pem")
    run = _bund("job", "status", "0" * 32, "--json", "--config", operator)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == [
        f"error: bank at {address} does not answer: is its node running? (connection refused)"
    ]
