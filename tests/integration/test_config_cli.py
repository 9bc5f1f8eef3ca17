"""`bund party init` writes node.toml and policy.toml that check, and a node starts from them."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from bund.parties.cli import app
from bund.parties.client import NodeClient, RemoteError
from bund.parties.config import load_config
from bund.parties.node import create_node
from bund.parties.protocols import PROTOCOLS


def test_party_init_writes_files_that_check_and_run(tmp_path: Path) -> None:
    runner = CliRunner()
    fed, home = tmp_path / "fed", tmp_path / "bank"
    assert runner.invoke(app, ["federation", "init", str(fed)]).exit_code == 0
    r = runner.invoke(
        app,
        ["party", "init", "bank", "--role", "bank", "--federation", str(fed), "--out", str(home)],
    )
    assert r.exit_code == 0, r.output
    assert (home / "node.toml").is_file() and (home / "policy.toml").is_file()
    r = runner.invoke(app, ["config", "check", str(home / "node.toml"), str(home / "policy.toml")])
    assert r.exit_code == 0 and "ok (node)" in r.output and "ok (policy)" in r.output, r.output
    r = runner.invoke(app, ["config", "check", str(home / "operator" / "operator.toml")])
    assert r.exit_code == 0 and "ok (operator)" in r.output, r.output

    config = load_config(home / "node.toml")
    assert config.listen == "127.0.0.1:0" and config.policy.approvals_required
    node = create_node(config, PROTOCOLS)
    try:
        assert node.port > 0
        with NodeClient(f"127.0.0.1:{node.port}", "bank", config.tls) as node_cert:
            with pytest.raises(RemoteError) as err:  # the node's certificate is no operator
                node_cert.list_jobs()
            assert err.value.code is grpc.StatusCode.PERMISSION_DENIED
        # The operator credential party init issued works, from operator.toml or node.toml.
        for cli_config in (home / "operator" / "operator.toml", home / "node.toml"):
            r = runner.invoke(app, ["job", "list", "--config", str(cli_config)])
            assert r.exit_code == 0, r.output
    finally:
        node.stop(grace=1.0)


def test_party_init_refuses_a_bad_listen_address_before_making_keys(tmp_path: Path) -> None:
    runner = CliRunner()
    fed = tmp_path / "fed"
    assert runner.invoke(app, ["federation", "init", str(fed)]).exit_code == 0
    r = runner.invoke(
        app,
        ["party", "init", "tax", "--role", "tax", "--federation", str(fed), "--out",
         str(tmp_path / "tax"), "--listen", "0.0.0.0"],
    )  # fmt: skip
    assert r.exit_code == 1 and 'must be "HOST:PORT"' in r.output
    assert not (tmp_path / "tax").exists()
