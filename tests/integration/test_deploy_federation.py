"""deploy/federation.sh makes files that three nodes serve from and trust each other with.

No container can be pulled or built here, so the nodes run in this process from the files each
container would mount (``nodes/PARTY``), with only what compose changes put back for a loopback
run: the listen and health addresses (port 0), the state directory and the peers' addresses.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bund.parties.client import NodeClient
from bund.parties.config import TlsPaths, load_config
from bund.parties.node import Node, create_node
from tests.conftest import REPO_ROOT

PARTIES = ("bank", "tax", "registry")


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Path, dict[str, Node]]]:
    out = tmp_path / "parties"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env["BUND"] = f"{sys.executable} -m bund.parties.cli"
    run = subprocess.run(
        ["bash", str(REPO_ROOT / "deploy" / "federation.sh"), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    peers = tmp_path / "peers.toml"
    started: dict[str, Node] = {}
    try:
        for party in PARTIES:
            config = load_config(out / "nodes" / party / "node.toml")
            # What the container's files say, before the loopback run changes it back.
            assert config.listen == "0.0.0.0:7443" and config.health_listen == "0.0.0.0:8081"
            assert config.state_dir == Path("/var/lib/bund/state")
            assert {p: config.peers[p] for p in config.peers} == {
                q: f"{q}:7443" for q in PARTIES if q != party
            }
            local = dataclasses.replace(
                config,
                listen="127.0.0.1:0",
                health_listen="127.0.0.1:0",
                state_dir=tmp_path / "state" / party,
                audit_store=str(tmp_path / "state" / party / "audit.db"),
                peers_file=peers,
            )
            started[party] = create_node(local)
        peers.write_text(
            "".join(f'[{p}]\naddress = "127.0.0.1:{n.port}"\n' for p, n in started.items()),
            encoding="utf-8",
        )
        yield out, started
    finally:
        for node in started.values():
            node.stop(grace=1.0)


def test_the_federations_nodes_serve_and_trust_each_other(
    nodes: tuple[Path, dict[str, Node]],
) -> None:
    out, started = nodes
    for party, node in started.items():
        assert node.health_http is not None
        url = f"http://127.0.0.1:{node.health_http.port}/"
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - loopback
            assert answer.status == 200
        # Each node reaches the other two with its own certificate, through the roster.
        for other in PARTIES:
            if other != party:
                assert node.peers.client(other).node_info().party == other
        # The party's operator credential (kept off the node) works against its node.
        operator = out / party / "operator"
        tls = TlsPaths(operator / "ca.pem", operator / "operator.pem", operator / "operator.key")
        with NodeClient(f"127.0.0.1:{node.port}", party, tls) as client:
            assert client.list_jobs() == []
    # Nothing but the node's own files is mounted: no CA key, no operator or approver key.
    mounted = {p.name for p in (out / "nodes" / "bank").iterdir()}
    assert not mounted & {"ca.key", "operator_ca.key", "approver_ed25519.key", "operator"}
