"""The process harness (bund/parties/processes.py): node files a node reads back, peers, processes.

The processes here are tiny stand-ins for a node (a Python one-liner that writes a port file and
waits for a signal), so the harness's start, port, freeze and stop are checked without a node.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import tomllib
from fractions import Fraction
from pathlib import Path

import pytest

from bund.compute.dp.budget import Budget
from bund.parties.config import load_config
from bund.parties.processes import (
    CatalogEntry,
    NodeFiles,
    NodeGroup,
    NodeStartError,
    start_node,
    write_node_files,
    write_peers,
)

#: A stand-in node: writes port 4242 to its port file, then waits for a signal.
FAKE_NODE = (
    sys.executable,
    "-c",
    (
        "import pathlib, signal, sys\n"
        "state = pathlib.Path(sys.argv[1]).parent / 'state'\n"
        "state.mkdir(exist_ok=True)\n"
        "(state / 'port.tmp').write_text('4242\\n')\n"
        "(state / 'port.tmp').replace(state / 'port')\n"
        "signal.pause()\n"
    ),
)
#: A stand-in node that fails at start-up.
BROKEN_NODE = (sys.executable, "-c", "import sys; print('no such dataset'); sys.exit(3)")


def files(root: Path, **changes: object) -> NodeFiles:
    """The bank's files under ``root``: keys in root/keys, data in root/data, peers in root."""
    base = NodeFiles(
        party="bank",
        home=root / "bank",
        identity=root / "keys",
        peers_file=root / "peers.toml",
        counterparties=(("tax", "tax"), ("hospital-a", "hospital")),
        datasets=(
            CatalogEntry("loans", root / "data" / "loans.csv", "internal", ("psi", "woe_iv")),
            CatalogEntry(
                "patients", root / "data" / "p.csv", "restricted-personal", None, "3/2", "1/10000"
            ),
        ),
        approvals=False,
        cohort_floor=7,
        limits="heartbeat_interval_s = 0.5",
        written_by="a test",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def test_node_files_are_read_back_by_the_node_as_written(tmp_path: Path) -> None:
    config = load_config(write_node_files(files(tmp_path)))
    home = (tmp_path / "bank").resolve()
    assert config.party == "bank" and config.listen == "127.0.0.1:0"
    assert config.state_dir == home / "state" and config.port_file == home / "state" / "port"
    assert same(config.peers_file, tmp_path / "peers.toml")
    assert same(config.tls.cert, tmp_path / "keys" / "node.pem")
    assert same(config.audit_pub, tmp_path / "keys" / "audit_ed25519.pub")
    assert config.heartbeat_interval_s == 0.5 and config.recv_timeout_s == 120
    assert same(config.datasets["loans"].path, tmp_path / "data" / "loans.csv")
    policy = config.policy
    assert policy.cohort_floor == 7 and not policy.approvals_required
    assert set(policy.approvers) == {"approver"}
    assert same(policy.approvers["approver"], tmp_path / "keys" / "approver_ed25519.pub")
    assert policy.counterparties == {
        "tax": frozenset({"tax"}),
        "hospital-a": frozenset({"hospital"}),
    }
    loans, patients = policy.datasets["loans"], policy.datasets["patients"]
    assert (loans.owner, loans.level, loans.protocols) == ("bank", "internal", {"psi", "woe_iv"})
    assert loans.budget == Budget()
    assert patients.protocols is None
    assert patients.budget == Budget(Fraction(3, 2), Fraction(1, 10_000))
    text = (tmp_path / "bank" / "node.toml").read_text(encoding="utf-8")
    assert text.startswith("# Node configuration of bank (written by a test).")
    assert 'path = "../data/loans.csv"' in text  # relative: the folder can move as a whole


def test_node_files_quote_what_toml_would_misread(tmp_path: Path) -> None:
    odd = CatalogEntry("loans", tmp_path / 'data "2025"' / "loans.csv")
    path = write_node_files(files(tmp_path, datasets=(odd,), audit_store="state/a b.db"))
    config = load_config(path)
    assert same(config.datasets["loans"].path, tmp_path / 'data "2025"' / "loans.csv")
    assert config.audit_store == str((tmp_path / "bank" / "state" / "a b.db").resolve())


def test_peers_file_is_replaced_whole(tmp_path: Path) -> None:
    peers = tmp_path / "peers.toml"
    write_peers(peers, {"bank": 5001, "hospital-a": 5002})
    write_peers(peers, {"bank": 6001})
    assert tomllib.loads(peers.read_text()) == {"bank": {"address": "127.0.0.1:6001"}}
    assert [p.name for p in tmp_path.iterdir()] == ["peers.toml"]  # nothing staged is left


def test_a_node_process_reports_its_port_freezes_thaws_and_stops(tmp_path: Path) -> None:
    config = write_node_files(files(tmp_path))
    stale = load_config(config).port_file
    stale.parent.mkdir(parents=True)
    stale.write_text("1\n")  # an earlier run's port: removed before the start
    with NodeGroup(tmp_path / "peers.toml") as group:
        assert group.spawn("bank", config, command=FAKE_NODE) == 4242
        group.add({"tax": 4343})  # a node that runs elsewhere, e.g. in this process
        assert tomllib.loads((tmp_path / "peers.toml").read_text()) == {
            "bank": {"address": "127.0.0.1:4242"},
            "tax": {"address": "127.0.0.1:4343"},
        }
        process = group.processes["bank"]
        process.freeze()  # a frozen node is thawed before SIGTERM, or stop would wait for it
    assert process.wait() == -signal.SIGTERM
    assert group.processes == {}


def test_a_killed_node_process_dies_at_once(tmp_path: Path) -> None:
    config = write_node_files(files(tmp_path))
    with NodeGroup(tmp_path / "peers.toml") as group:
        group.spawn("bank", config, command=FAKE_NODE)
        process = group.processes["bank"]
        group.kill("bank")
        assert "bank" not in group.processes
    assert process.wait() == -signal.SIGKILL


def test_a_node_that_exits_at_start_names_its_log(tmp_path: Path) -> None:
    config = write_node_files(files(tmp_path))
    node = start_node(config, command=BROKEN_NODE)
    with pytest.raises(NodeStartError, match="exited with 3") as caught:
        node.wait_for_port()
    assert str(node.log) in str(caught.value)
    assert "no such dataset" in node.log.read_text()
