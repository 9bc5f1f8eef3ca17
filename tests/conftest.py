"""Shared fixtures: a federation with party certificates made once, and nodes on 127.0.0.1:0."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from bund.compute import insecure
from bund.parties import identity
from bund.parties.audit import AuditStore
from bund.parties.client import NodeClient
from bund.parties.config import NodeConfig, TlsPaths, load_config
from bund.parties.data import Table
from bund.parties.jobs import ProtocolDef
from bund.parties.node import Node, create_node
from bund.parties.protocols import PROTOCOLS

T = TypeVar("T")

PARTY_ROLES = {
    "bank": "bank",
    "tax": "tax",
    "registry": "registry",
    "hospital-a": "hospital",
    "hospital-b": "hospital",
    "hospital-c": "hospital",
    "insurer": "insurer",
    "regulator": "regulator",
}


@dataclass(frozen=True)
class Federation:
    """Certificates and keys for the test parties, and an intruder from another CA."""

    root: Path

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    def party_dir(self, name: str) -> Path:
        return self.root / name

    def tls(self, name: str) -> TlsPaths:
        d = self.party_dir(name)
        return TlsPaths(ca=d / "ca.pem", cert=d / "node.pem", key=d / "node.key")


@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    root = tmp_path_factory.mktemp("federation")
    identity.create_federation(root / "ca", "test")
    for name, role in PARTY_ROLES.items():
        identity.create_party(root / "ca", name, role, root / name)
    identity.create_federation(root / "other-ca", "other")
    identity.create_party(root / "other-ca", "bank", "bank", root / "intruder")
    return Federation(root)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that starts real nodes ``integration``, so ``-m "not integration"`` is fast.

    That is everything under ``tests/integration/`` (node processes, kill -9) and every test that
    starts in-process nodes over mTLS through the ``node_factory`` fixture.
    """
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "integration" in item.path.parts or "node_factory" in fixtures:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _insecure_off_by_default() -> Iterator[None]:
    """Every test starts with the test-only switch off; tests that need it turn it on."""
    insecure.disable_insecure_test_parameters()
    yield
    insecure.disable_insecure_test_parameters()


def wait_until(
    probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02
) -> T:
    """Poll ``probe`` until it returns something other than None; fail naming ``what``.

    Nodes answer only over gRPC, so a test can only ask them again; ``interval`` keeps the
    asking cheap, and ``timeout`` bounds it.
    """
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while (value := probe()) is None:
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        tick.wait(interval)
    return value


def write_csv(path: Path, columns: Mapping[str, Sequence[str]]) -> Path:
    """Write a small CSV dataset."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(columns)
    rows = zip(*(columns[n] for n in names), strict=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(names)
        w.writerows(rows)
    return path


@dataclass
class NodeFactory:
    """Starts in-process nodes from generated node.toml files; stops them all at teardown."""

    federation: Federation
    workdir: Path
    nodes: dict[str, Node] = field(default_factory=dict)
    #: Nodes running as their own processes (``spawn``), and their ports.
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def peers_file(self) -> Path:
        return self.workdir / "peers.toml"

    def start(
        self,
        name: str,
        datasets: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
        allowed: Sequence[str] = (),
        protocols: Mapping[str, Sequence[str]] | None = None,
        extra: str = "",
        level: str = "confidential",
        approvals: bool = False,
        policy_extra: str = "",
        registry: Mapping[str, ProtocolDef] | None = None,
        audit_store: str | None = None,
        budget_epsilon: str | None = None,
        tables: Mapping[str, Table] | None = None,
        budget_delta: str | None = None,
    ) -> Node:
        """Start ``name``'s node with CSV datasets and a policy.toml built from the arguments.

        ``allowed`` lists counterparties (each with its test role); ``protocols`` narrows what
        may run on each dataset; approvals are off unless asked for.
        """
        config_path = self.write_config(
            name, datasets, allowed, protocols, extra, level, approvals, policy_extra,
            audit_store, budget_epsilon, tables, budget_delta=budget_delta,
        )  # fmt: skip
        node = create_node(load_config(config_path), registry or PROTOCOLS)
        self.nodes[name] = node
        self._write_peers()
        return node

    def write_config(
        self,
        name: str,
        datasets: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
        allowed: Sequence[str] = (),
        protocols: Mapping[str, Sequence[str]] | None = None,
        extra: str = "",
        level: str = "confidential",
        approvals: bool = False,
        policy_extra: str = "",
        audit_store: str | None = None,
        budget_epsilon: str | None = None,
        tables: Mapping[str, Table] | None = None,
        limits: str = "",
        budget_delta: str | None = None,
    ) -> Path:
        """Write ``name``'s node.toml, policy.toml and CSV datasets; return node.toml's path."""
        home = self.workdir / name
        home.mkdir(parents=True, exist_ok=True)
        pdir = self.federation.party_dir(name)
        lines = [
            f'party = "{name}"',
            'listen = "127.0.0.1:0"',
            f'state_dir = "{(home / "state").as_posix()}"',
            f'peers_file = "{self.peers_file.as_posix()}"',
            f'policy_file = "{(home / "policy.toml").as_posix()}"',
            extra,
            "[tls]",
            f'ca = "{(pdir / "ca.pem").as_posix()}"',
            f'cert = "{(pdir / "node.pem").as_posix()}"',
            f'key = "{(pdir / "node.key").as_posix()}"',
            "[audit]",
            f'signing_key = "{(pdir / "audit_ed25519.key").as_posix()}"',
            f'public_key = "{(pdir / "audit_ed25519.pub").as_posix()}"',
            f'store = "{audit_store}"' if audit_store else "",
            "[limits]",
            "recv_timeout_s = 30",
            "approval_timeout_s = 30",
            limits,
        ]
        policy = [
            "cohort_floor = 5",
            policy_extra,
            "[limits]",
            "psi_max_set_size = 100000",
            "[approvals]",
            f"required = {'true' if approvals else 'false'}",
            f'approver_key = "{(pdir / "approver_ed25519.pub").as_posix()}"',
        ]
        for other in allowed:
            policy += [f'[counterparties."{other}"]', f'roles = ["{PARTY_ROLES[other]}"]']
        columns = dict(datasets or {})
        columns.update({ds: t.data for ds, t in (tables or {}).items()})
        for ds, cols in columns.items():
            path = write_csv(home / f"{ds}.csv", cols)
            lines += [f"[datasets.{ds}]", 'kind = "csv"', f'path = "{path.as_posix()}"']
            policy += [f"[datasets.{ds}]", f'level = "{level}"']
            if budget_epsilon is not None:
                policy.append(f'budget_epsilon = "{budget_epsilon}"')
            if budget_delta is not None:
                policy.append(f'budget_delta = "{budget_delta}"')
            if protocols and ds in protocols:
                policy.append(f"protocols = {list(protocols[ds])!r}".replace("'", '"'))
        (home / "policy.toml").write_text("\n".join(policy) + "\n", encoding="utf-8")
        config_path = home / "node.toml"
        config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return config_path

    def spawn(
        self,
        name: str,
        config_path: Path,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> int:
        """Run ``name``'s node as its own process (test protocols included); return its port.

        The process can be frozen (SIGSTOP), killed (SIGKILL) and spawned again on the same
        state directory, as an operator's restart would.
        """
        config = load_config(config_path)
        config.port_file.unlink(missing_ok=True)
        log = (config_path.parent / "node.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.serve_test_node", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
                **(env or {}),
            },
        )
        log.close()
        self.processes[name] = proc

        def bound_port() -> int | None:
            if proc.poll() is not None:
                raise RuntimeError(f"{name}'s node exited with {proc.returncode}: see {log.name}")
            try:
                return int(config.port_file.read_text().strip())
            except (FileNotFoundError, ValueError):
                return None  # not written yet

        port = wait_until(bound_port, timeout, f"{name}'s node to start (see {log.name})")
        self.ports[name] = port
        self._write_peers()
        return port

    def kill(self, name: str) -> None:
        """SIGKILL ``name``'s node process: no clean-up runs, as in a crash."""
        proc = self.processes.pop(name)
        proc.kill()
        proc.wait()

    def _write_peers(self) -> None:
        ports = {**self.ports, **{n: node.port for n, node in self.nodes.items()}}
        text = "".join(f'[{n}]\naddress = "127.0.0.1:{port}"\n' for n, port in ports.items())
        staged = self.peers_file.with_suffix(".tmp")
        staged.write_text(text, encoding="utf-8")
        staged.replace(self.peers_file)  # atomic: a node reading it never sees half a file

    def port(self, name: str) -> int:
        """The port of ``name``'s node, in this process or its own."""
        return self.nodes[name].port if name in self.nodes else self.ports[name]

    def client(self, name: str, as_party: str | None = None) -> NodeClient:
        """A client to ``name``'s node, presenting ``as_party``'s certificate (default: its own)."""
        who = as_party or name
        return NodeClient(f"127.0.0.1:{self.port(name)}", name, self.federation.tls(who))

    def config(self, name: str) -> NodeConfig:
        return self.nodes[name].config

    def wait_closed(self, job_id: str, timeout: float = 30.0) -> None:
        """Wait until every in-process node that knows ``job_id`` appended its closing record.

        A node marks a job final just before it appends ``job_closed``.
        """
        for name, node in self.nodes.items():
            if not any(r.job_id == job_id for r in node.audit_store.read()):
                continue  # this node takes no part in the job
            store = node.audit_store

            def closed(store: AuditStore = store) -> bool | None:
                return (
                    any(r.event == "job_closed" and r.job_id == job_id for r in store.read())
                    or None
                )

            wait_until(closed, timeout, f"{name} to close {job_id}")

    def stop_all(self) -> None:
        for node in self.nodes.values():
            node.stop(grace=1.0)
        self.nodes.clear()
        for proc in self.processes.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)  # a frozen node cannot handle SIGTERM
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()


@pytest.fixture
def node_factory(federation: Federation, tmp_path: Path) -> Iterator[NodeFactory]:
    factory = NodeFactory(federation, tmp_path)
    yield factory
    factory.stop_all()
