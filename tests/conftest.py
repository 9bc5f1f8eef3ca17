"""Shared fixtures: a federation with party certificates made once, and nodes on 127.0.0.1:0."""

from __future__ import annotations

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
from bund.parties.data import Table, write_csv
from bund.parties.jobs import ProtocolDef
from bund.parties.node import Node, create_node
from bund.parties.processes import (
    CatalogEntry,
    NodeFiles,
    NodeGroup,
    NodeProcess,
    write_node_files,
)
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
    """Certificates and keys for the test parties, and an intruder from another CA.

    Every party is in the federation's signed roster (``ca_dir``), and has an operator CA with
    one operator credential (``operator_tls``).
    """

    root: Path

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    def party_dir(self, name: str) -> Path:
        return self.root / name

    def tls(self, name: str) -> TlsPaths:
        """``name``'s node certificate: what its node presents to its peers."""
        d = self.party_dir(name)
        return TlsPaths(ca=d / "ca.pem", cert=d / "node.pem", key=d / "node.key")

    def operator_tls(self, name: str) -> TlsPaths:
        """The operator credential of ``name`` (from its operator CA): for operator calls."""
        d = self.party_dir(name) / identity.OPERATOR_DIR
        return TlsPaths(ca=d / "ca.pem", cert=d / "operator.pem", key=d / "operator.key")


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


#: The test node server: ``bund serve`` with the fault-test protocols; the config path follows.
TEST_SERVE = (sys.executable, "-m", "tests.integration.serve_test_node")
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class NodeFactory:
    """Starts nodes from generated node.toml files, in this process or in their own; stops them.

    The files and processes come from ``bund.parties.processes``, as in the demo: one peers file
    in ``workdir`` tells every node, of either kind, where the others listen.
    """

    federation: Federation
    workdir: Path
    #: Nodes running in this process (``start``, ``run``).
    nodes: dict[str, Node] = field(default_factory=dict)
    #: Every node's port and the node processes (``spawn``).
    group: NodeGroup = field(init=False)

    def __post_init__(self) -> None:
        self.group = NodeGroup(self.workdir / "peers.toml")

    @property
    def processes(self) -> dict[str, NodeProcess]:
        """Nodes running as their own processes, by party."""
        return self.group.processes

    def start(
        self,
        name: str,
        datasets: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
        allowed: Sequence[str] = (),
        protocols: Mapping[str, Sequence[str]] | None = None,
        extra: str = "",
        level: str = "confidential",
        approvals: bool = False,
        registry: Mapping[str, ProtocolDef] | None = None,
        audit_store: str | None = None,
        budget_epsilon: str | None = None,
        tables: Mapping[str, Table] | None = None,
        budget_delta: str | None = None,
        audit: str = "",
        release_scores_to: Sequence[str] = (),
        trusted_for: Sequence[tuple[str, str]] = (),
        exact_aggregates_to: Sequence[str] = (),
    ) -> Node:
        """Start ``name``'s node in this process with CSV datasets and a policy from the arguments.

        ``allowed`` lists counterparties (each with its test role); ``protocols`` narrows what
        may run on each dataset; approvals are off unless asked for; ``audit`` adds lines to
        node.toml's ``[audit]`` table; ``release_scores_to``, ``trusted_for`` and
        ``exact_aggregates_to`` as in :meth:`write_config`.
        """
        config_path = self.write_config(
            name, datasets, allowed, protocols, extra, level, approvals, audit_store,
            budget_epsilon, tables, budget_delta=budget_delta, audit=audit,
            release_scores_to=release_scores_to, trusted_for=trusted_for,
            exact_aggregates_to=exact_aggregates_to,
        )  # fmt: skip
        return self.run(name, config_path, registry)

    def run(
        self, name: str, config_path: Path, registry: Mapping[str, ProtocolDef] | None = None
    ) -> Node:
        """Run ``name``'s node in this process from an existing node.toml, on its state directory.

        A node stopped earlier (``nodes.pop(name).stop()``) comes back as an operator's restart
        would; the peers file gets its new port.
        """
        node = create_node(load_config(config_path), registry or PROTOCOLS)
        self.nodes[name] = node
        self.group.add({name: node.port})
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
        audit_store: str | None = None,
        budget_epsilon: str | None = None,
        tables: Mapping[str, Table] | None = None,
        limits: str = "",
        budget_delta: str | None = None,
        trusted_for: Sequence[tuple[str, str]] = (),
        release_scores_to: Sequence[str] = (),
        audit: str = "",
        exact_aggregates_to: Sequence[str] = (),
    ) -> Path:
        """Write ``name``'s node.toml, policy.toml and CSV datasets; return node.toml's path.

        ``trusted_for`` holds (counterparty, protocol) pairs the policy trusts;
        ``release_scores_to`` who may receive per-record scores of every dataset;
        ``exact_aggregates_to`` who may ask noise-free survival and Cox aggregates; ``audit`` adds
        lines to node.toml's ``[audit]`` table (``witness_interval_s = 0.2``).
        """
        home = self.workdir / name
        given = {ds: Table.from_columns(ds, cols) for ds, cols in (datasets or {}).items()}
        catalogue = tuple(
            CatalogEntry(
                ds,
                write_csv(table, home / f"{ds}.csv"),
                level,
                tuple(protocols[ds]) if protocols and ds in protocols else None,
                budget_epsilon,
                budget_delta,
                tuple(release_scores_to),
                tuple(exact_aggregates_to),
            )
            for ds, table in {**given, **(tables or {})}.items()
        )
        files = NodeFiles(
            party=name,
            home=home,
            identity=self.federation.party_dir(name),
            peers_file=self.group.peers_file,
            counterparties=tuple((other, PARTY_ROLES[other]) for other in allowed),
            trusted_for=tuple(trusted_for),
            datasets=catalogue,
            approvals=approvals,
            cohort_floor=5,
            psi_max_set_size=100_000,
            recv_timeout_s=30,
            approval_timeout_s=30,
            limits=limits,
            extra=extra,
            audit_store=audit_store,
            written_by="the test NodeFactory",
            federation=self.federation.ca_dir,
        )
        path = write_node_files(files)
        if audit:
            text = path.read_text(encoding="utf-8")
            path.write_text(text.replace("[audit]\n", f"[audit]\n{audit}\n", 1), "utf-8")
        return path

    def spawn(
        self,
        name: str,
        config_path: Path,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> int:
        """Run ``name``'s node as its own process (test protocols included); return its port.

        The process can be frozen (``processes[name].freeze()``), killed (``kill``) and spawned
        again on the same state directory, as an operator's restart would.
        """
        env = {"PYTHONPATH": str(REPO_ROOT), **(env or {})}
        return self.group.spawn(name, config_path, command=TEST_SERVE, env=env, timeout=timeout)

    def kill(self, name: str) -> None:
        """SIGKILL ``name``'s node process: no clean-up runs, as in a crash."""
        self.group.kill(name)

    def port(self, name: str) -> int:
        """The port of ``name``'s node, in this process or its own."""
        return self.nodes[name].port if name in self.nodes else self.group.ports[name]

    def client(self, name: str, as_party: str | None = None) -> NodeClient:
        """A client to ``name``'s node: as its operator, or presenting ``as_party``'s certificate.

        Without ``as_party`` it presents ``name``'s operator credential; with it, the node
        certificate of ``as_party``, as ``as_party``'s node calls another: with that node's
        signed instance epoch (asked of it when it runs in its own process; none when it runs
        nowhere, as a party that only holds a certificate).
        """
        if as_party is None:
            return NodeClient(
                f"127.0.0.1:{self.port(name)}", name, self.federation.operator_tls(name)
            )
        node = self.nodes.get(as_party)
        epoch = node.peers.instance if node is not None else None
        if node is None and as_party in self.group.ports:
            with self.client(as_party) as own:
                epoch = own.node_info().instance
        return NodeClient(
            f"127.0.0.1:{self.port(name)}", name, self.federation.tls(as_party), instance=epoch
        )

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
        self.group.stop()


@pytest.fixture
def node_factory(federation: Federation, tmp_path: Path) -> Iterator[NodeFactory]:
    factory = NodeFactory(federation, tmp_path)
    yield factory
    factory.stop_all()
