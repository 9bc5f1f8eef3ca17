"""Party nodes on this machine, each its own process: their files, start, port, peers and stop.

The demo, the benchmarks and the integration tests run nodes as an operator does. They write a
party's ``node.toml``, ``policy.toml`` and dataset catalogue (``write_node_files``); start a node
on it as a separate process, ``bund serve`` or another server module the caller names
(``start_node``); read the port the node bound from its port file; tell every node where the
others listen through one peers file, rewritten atomically (``write_peers``); and stop it with
SIGTERM, or SIGKILL as in a crash, or freeze it with SIGSTOP. ``NodeGroup`` does this for a set of
nodes that share one peers file, including nodes that the caller runs in its own process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bund.compute.errors import BundError
from bund.parties import identity
from bund.parties.config import load_config

#: ``bund serve --config``: the command that runs a node; the node.toml path is appended.
BUND_SERVE: tuple[str, ...] = (sys.executable, "-m", "bund.parties.cli", "serve", "--config")
#: The host every node of a group listens on and is reached at.
LOOPBACK = "127.0.0.1"

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class NodeStartError(BundError):
    """A node process exited, or did not bind its port in time; the message names its log."""


@dataclass(frozen=True)
class CatalogEntry:
    """One dataset of a node's catalogue: the CSV file it reads and what its policy allows.

    Attributes:
        name: the dataset's catalog name.
        csv: the CSV file.
        level: its classification level (``docs/policy.md``).
        protocols: the protocols allowed on it; None leaves every protocol its level allows.
        budget_epsilon: its privacy budget's epsilon, an exact rational as text; None: none.
        budget_delta: its privacy budget's delta; None: none.
        release_scores_to: who may receive per-record scores of it (restricted-personal data).
    """

    name: str
    csv: Path
    level: str = "confidential"
    protocols: tuple[str, ...] | None = None
    budget_epsilon: str | None = None
    budget_delta: str | None = None
    release_scores_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeFiles:
    """What a party's ``node.toml`` and ``policy.toml`` say; ``write_node_files`` writes them.

    The node listens on loopback port 0 (the OS picks the port) and keeps its state in
    ``home/state``.

    Attributes:
        party: the party's name.
        home: the directory of ``node.toml`` and ``policy.toml``.
        identity: the party's directory from ``identity.create_party`` (certificates and keys).
        peers_file: the address book that tells the node where the other parties listen.
        counterparties: (party, role) of every party this node may run jobs with.
        datasets: the catalogue.
        approvals: whether every job needs the signature of this party's approver.
        cohort_floor: the smallest dataset that may take part in a job.
        psi_max_set_size: the policy's largest PSI set.
        recv_timeout_s: how long a role waits for a peer's message.
        approval_timeout_s: how long a job waits for its approvals.
        limits: more ``[limits]`` lines of ``node.toml`` (heartbeats, deadlines).
        extra: more ``node.toml`` text, e.g. a ``[compute]`` table.
        audit_store: the ``[audit] store`` (a path or a ``postgresql://`` URL); None: the default.
        written_by: who wrote the files, named in a comment at the top of each.
        federation: the directory of the federation's live roster and revocation list; None:
            the copies in ``identity``.
    """

    party: str
    home: Path
    identity: Path
    peers_file: Path
    counterparties: tuple[tuple[str, str], ...] = ()
    #: (counterparty, protocol): this node trusts the counterparty to follow the protocol.
    trusted_for: tuple[tuple[str, str], ...] = ()
    datasets: tuple[CatalogEntry, ...] = ()
    approvals: bool = True
    cohort_floor: int = 10
    psi_max_set_size: int = 1_000_000
    recv_timeout_s: int = 120
    approval_timeout_s: int = 600
    limits: str = ""
    extra: str = ""
    audit_store: str | None = None
    written_by: str = ""
    federation: Path | None = None


def _string(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, and non-ASCII stays as it is)."""
    return json.dumps(text, ensure_ascii=False)


def _key(name: str) -> str:
    """A TOML key: bare where it can be, quoted otherwise."""
    return name if _BARE_KEY.fullmatch(name) else _string(name)


def _strings(items: Iterable[str]) -> str:
    return "[" + ", ".join(_string(i) for i in items) + "]"


def write_node_files(files: NodeFiles) -> Path:
    """Write ``files.home``'s ``node.toml`` and ``policy.toml``; return node.toml's path.

    Every path is written relative to ``home``, as the node reads it, so a folder that holds the
    party homes, their data and the peers file can be moved as a whole.

    Args:
        files: what the two files say.

    Returns:
        The path of ``node.toml``.
    """
    home = files.home
    home.mkdir(parents=True, exist_ok=True)

    def path(p: Path) -> str:
        return _string(Path(os.path.relpath(p.absolute(), home.absolute())).as_posix())

    me = files.identity
    fed = files.federation or me
    by = f" (written by {files.written_by})" if files.written_by else ""
    node = [
        f"# Node configuration of {files.party}{by}.",
        f"party = {_string(files.party)}",
        f'listen = "{LOOPBACK}:0"',
        'state_dir = "state"',
        f"peers_file = {path(files.peers_file)}",
        'policy_file = "policy.toml"',
        files.extra,
        "",
        "[tls]",
        f"ca = {path(me / identity.CA_CERT)}",
        f"cert = {path(me / identity.NODE_CERT)}",
        f"key = {path(me / identity.NODE_KEY)}",
        "",
        "[federation]",
        f"roster = {path(fed / identity.ROSTER_FILE)}",
        f"revocations = {path(fed / identity.REVOCATIONS_FILE)}",
        "",
        "[operators]",
        f"ca = {path(me / identity.OPERATOR_CA_CERT)}",
        f"revocations = {path(me / identity.OPERATOR_REVOCATIONS_FILE)}",
        f"credential = {path(me / identity.OPERATOR_DIR)}",
        "",
        "[audit]",
        f"signing_key = {path(me / identity.AUDIT_KEY)}",
        f"public_key = {path(me / identity.AUDIT_PUB)}",
        f"store = {_string(files.audit_store)}" if files.audit_store else "",
        "",
        "[limits]",
        f"recv_timeout_s = {files.recv_timeout_s}",
        f"approval_timeout_s = {files.approval_timeout_s}",
        files.limits,
    ]
    policy = [
        f"# Policy of {files.party}'s node{by}.",
        f"cohort_floor = {files.cohort_floor}",
        "",
        "[limits]",
        f"psi_max_set_size = {files.psi_max_set_size}",
        "",
        "[approvals]",
        f"required = {'true' if files.approvals else 'false'}",
        f"approver_key = {path(me / identity.APPROVER_PUB)}",
    ]
    for other, role in files.counterparties:
        policy += ["", f"[counterparties.{_key(other)}]", f"roles = {_strings([role])}"]
        trusted = [protocol for party, protocol in files.trusted_for if party == other]
        if trusted:
            policy.append(f"trusted_for = {_strings(trusted)}")
    for entry in files.datasets:
        node += ["", f"[datasets.{_key(entry.name)}]", 'kind = "csv"', f"path = {path(entry.csv)}"]
        policy += [
            "",
            f"[datasets.{_key(entry.name)}]",
            f"owner = {_string(files.party)}",
            f"level = {_string(entry.level)}",
        ]
        if entry.protocols is not None:
            policy.append(f"protocols = {_strings(entry.protocols)}")
        if entry.budget_epsilon is not None:
            policy.append(f"budget_epsilon = {_string(entry.budget_epsilon)}")
        if entry.budget_delta is not None:
            policy.append(f"budget_delta = {_string(entry.budget_delta)}")
        if entry.release_scores_to:
            policy.append(f"release_scores_to = {_strings(entry.release_scores_to)}")
    (home / "policy.toml").write_text("\n".join(policy) + "\n", encoding="utf-8")
    config = home / "node.toml"
    config.write_text("\n".join(node) + "\n", encoding="utf-8")
    return config


def write_peers(path: Path, ports: Mapping[str, int], host: str = LOOPBACK) -> Path:
    """Rewrite the peers file: where each party's node listens.

    The new text is written beside the file and renamed over it, so a node that reads the file
    while it changes sees the old or the new address book, never half of one.

    Args:
        path: the peers file.
        ports: each party's port.
        host: the host every node listens on.

    Returns:
        ``path``.
    """
    text = "".join(
        f"[{_key(party)}]\naddress = {_string(f'{host}:{port}')}\n\n"
        for party, port in ports.items()
    )
    staged = path.with_name(path.name + ".tmp")
    staged.write_text(text, encoding="utf-8")
    staged.replace(path)
    return path


class NodeProcess:
    """One node running as its own process; it logs to ``node.log`` beside its ``node.toml``."""

    def __init__(self, config_path: Path, port_file: Path, popen: subprocess.Popen[bytes]) -> None:
        self.config_path = config_path
        self.port_file = port_file
        self.popen = popen

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    @property
    def log(self) -> Path:
        """Where the node's output goes."""
        return self.config_path.parent / "node.log"

    def wait_for_port(self, timeout: float = 60.0) -> int:
        """Wait until the node wrote the port it bound to its port file, and return it.

        Raises:
            NodeStartError: If the process exits first, or no port comes within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                raise NodeStartError(
                    f"the node of {self.config_path} exited with {self.popen.returncode}; "
                    f"see {self.log}"
                )
            try:
                return int(self.port_file.read_text(encoding="utf-8").strip())
            except (FileNotFoundError, ValueError):
                pass  # not written yet (the node writes it whole, by a rename)
            if time.monotonic() >= deadline:
                raise NodeStartError(
                    f"the node of {self.config_path} bound no port within {timeout:.0f} s; "
                    f"see {self.log}"
                )
            time.sleep(0.05)

    def freeze(self) -> None:
        """SIGSTOP: the node stops answering but keeps its connections, as a hung host would."""
        self.popen.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: a frozen node carries on where it stopped."""
        self.popen.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, and reap it: no clean-up runs, as in a crash."""
        self.popen.kill()
        self.popen.wait()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit and return its exit status.

        Raises:
            subprocess.TimeoutExpired: If it is still running after ``timeout`` seconds.
        """
        return self.popen.wait(timeout)


def start_node(
    config_path: Path,
    *,
    command: Sequence[str] = BUND_SERVE,
    env: Mapping[str, str] | None = None,
) -> NodeProcess:
    """Start a node on ``config_path`` as its own process, appending its output to ``node.log``.

    The port file of an earlier run on the same state directory is removed first, so that the
    port read afterwards is the new process's.

    Args:
        config_path: the node's ``node.toml``; it is read here first, so a bad file fails here.
        command: the server command; the config path is appended (``BUND_SERVE``, or a test
            server module).
        env: variables set for the process on top of this process's environment.

    Returns:
        The running process; ``wait_for_port`` tells when it serves.

    Raises:
        ConfigError: If ``node.toml`` or its policy is invalid.
    """
    config = load_config(config_path)
    config.port_file.unlink(missing_ok=True)
    with (config_path.parent / "node.log").open("ab") as log:  # the child keeps its own copy
        popen = subprocess.Popen(
            [*command, str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    return NodeProcess(config_path, config.port_file, popen)


def stop_nodes(nodes: Iterable[NodeProcess], timeout: float = 20.0) -> None:
    """Stop node processes cleanly: SIGTERM each, wait, SIGKILL any still running.

    A frozen node is thawed first, since a stopped process cannot handle SIGTERM.
    """
    running = [n for n in nodes if n.popen.poll() is None]
    for node in running:
        node.thaw()
        node.popen.terminate()
    for node in running:
        try:
            node.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            node.kill()


class NodeGroup:
    """Nodes on this machine that find each other through one peers file.

    Every node binds port 0. The group learns each port, from a node process's port file or from
    the caller for a node it runs in its own process (``add``), and rewrites the peers file each
    time. ``stop`` (or leaving a ``with`` block) stops every node process the group started.
    """

    def __init__(self, peers_file: Path, host: str = LOOPBACK) -> None:
        self.peers_file = peers_file
        self.host = host
        #: The node processes the group started and has not stopped or killed, by party.
        self.processes: dict[str, NodeProcess] = {}
        #: Every node's port, by party.
        self.ports: dict[str, int] = {}

    def __enter__(self) -> NodeGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def spawn(
        self,
        party: str,
        config_path: Path,
        *,
        command: Sequence[str] = BUND_SERVE,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> int:
        """Start ``party``'s node as its own process and return its port once it serves.

        Spawning a party again (after ``kill``) restarts its node on the same state directory,
        as an operator's restart would.

        Raises:
            NodeStartError: If the node does not start.
        """
        return self.spawn_all({party: config_path}, command=command, env=env, timeout=timeout)[
            party
        ]

    def spawn_all(
        self,
        configs: Mapping[str, Path],
        *,
        command: Sequence[str] = BUND_SERVE,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> dict[str, int]:
        """Start every party's node, then wait for each port, so that they start side by side.

        Returns:
            Each party's port.

        Raises:
            NodeStartError: If a node does not start (the others keep running until ``stop``).
        """
        for party, path in configs.items():
            self.processes[party] = start_node(path, command=command, env=env)
        ports = {party: self.processes[party].wait_for_port(timeout) for party in configs}
        self.add(ports)
        return ports

    def add(self, ports: Mapping[str, int]) -> None:
        """Record where nodes listen (nodes run elsewhere, e.g. in-process) and rewrite peers."""
        self.ports.update(ports)
        write_peers(self.peers_file, self.ports, self.host)

    def address(self, party: str) -> str:
        """``host:port`` of ``party``'s node."""
        return f"{self.host}:{self.ports[party]}"

    def kill(self, party: str) -> None:
        """SIGKILL ``party``'s node process, as in a crash; ``spawn`` starts it again."""
        self.processes.pop(party).kill()

    def stop(self, timeout: float = 20.0) -> None:
        """Stop every node process of the group (SIGTERM, then SIGKILL after ``timeout``)."""
        stop_nodes(self.processes.values(), timeout)
        self.processes.clear()
