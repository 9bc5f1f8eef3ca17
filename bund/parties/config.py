"""Node configuration: read once from TOML at start-up; nothing else in a node reads env or files.

Paths in the file are relative to the file's own directory. The one exception to "read once" is
the peer directory (``peers_file``), which an operator may update while the node runs, so that
nodes started on OS-chosen ports can learn each other's addresses.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bund.compute import insecure
from bund.compute.executor import create_executor
from bund.parties.data import DataSource
from bund.parties.errors import ConfigError
from bund.parties.policy import Policy, load_policy

_MIB = 1 << 20


@dataclass(frozen=True)
class TlsPaths:
    """The node's TLS material: federation CA, own certificate and key."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node needs to serve, as read from ``node.toml``."""

    party: str
    listen: str
    state_dir: Path
    tls: TlsPaths
    audit_key: Path
    audit_pub: Path
    #: The audit store: a SQLite file path, or a ``postgresql://`` URL for a production node.
    audit_store: str
    peers: Mapping[str, str]
    peers_file: Path | None
    datasets: Mapping[str, DataSource]
    policy: Policy
    max_message_bytes: int = 8 * _MIB
    recv_timeout_s: float = 300.0
    approval_timeout_s: float = 86_400.0
    #: How often a node asks each peer of a running job how it stands.
    heartbeat_interval_s: float = 5.0
    #: A peer silent this long (no heartbeat answered) interrupts the job (resumable).
    peer_silence_s: float = 60.0
    #: The longest a job may run at this node; past it the job is aborted.
    job_deadline_s: float = 7 * 86_400.0
    max_workers: int = 16
    #: Where heavy kernel batches run: ``inline``, ``thread[:N]``, ``process[:N]`` and any
    #: back-end ``bund.compute.executor.create_executor`` knows (``[compute] executor``).
    executor: str = "inline"
    source: Path | None = field(default=None, compare=False)

    @property
    def port_file(self) -> Path:
        """Where the node writes the port it bound, for operators and scripts."""
        return self.state_dir / "port"

    def peer_address(self, party: str) -> str:
        """The address of ``party``'s node: the peer directory first, then ``[peers]``."""
        if self.peers_file is not None and self.peers_file.exists():
            directory = _read_toml(self.peers_file)
            entry = directory.get(party)
            if isinstance(entry, dict) and isinstance(entry.get("address"), str):
                return str(entry["address"])
        try:
            return self.peers[party]
        except KeyError:
            raise ConfigError(
                f'no address for peer {party!r}: add [peers.{party}] address = "HOST:PORT" to '
                "node.toml or to its peers file"
            ) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def _table(doc: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    return value


def _str(doc: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = doc.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} must be a non-empty string")
    return value


def _int(doc: Mapping[str, Any], key: str, where: str, default: int, lo: int = 1) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{where}: {key} must be an integer >= {lo}")
    return value


def load_config(path: Path) -> NodeConfig:
    """Read and validate ``node.toml``; every error names the key to fix."""
    path = path.resolve()
    doc = _read_toml(path)
    base = path.parent
    where = str(path)

    def rel(p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else base / q

    party = _str(doc, "party", where)
    tls = _table(doc, "tls", where)
    audit = _table(doc, "audit", where)
    limits_doc = _table(doc, "limits", where)
    compute_doc = _table(doc, "compute", where)
    if "policy" in doc:
        raise ConfigError(f'{where}: policy lives in its own file: set policy_file = "policy.toml"')

    datasets: dict[str, DataSource] = {}
    for name, entry in _table(doc, "datasets", where).items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: [datasets.{name}] must be a table")
        kind = _str(entry, "kind", f"{where} [datasets.{name}]")
        query = entry.get("query")
        if query is not None and not isinstance(query, str):
            raise ConfigError(f"{where} [datasets.{name}]: query must be a string")
        try:
            datasets[name] = DataSource(
                kind=kind, path=rel(_str(entry, "path", where)), query=query
            )
        except ValueError as exc:
            raise ConfigError(f"{where} [datasets.{name}]: {exc}") from None

    policy = load_policy(rel(_str(doc, "policy_file", where, "policy.toml")), party)
    for name in policy.datasets:
        if name not in datasets:
            raise ConfigError(
                f"{where}: the policy's catalog names dataset {name!r} but [datasets.{name}] "
                "says nowhere where to read it"
            )

    peers: dict[str, str] = {}
    for name, entry in _table(doc, "peers", where).items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: [peers.{name}] must be a table with an address")
        peers[name] = _str(entry, "address", f"{where} [peers.{name}]")
    peers_file = doc.get("peers_file")
    if peers_file is not None and not isinstance(peers_file, str):
        raise ConfigError(f"{where}: peers_file must be a path")

    timeouts = {
        k: limits_doc.get(k, d)
        for k, d in (
            ("recv_timeout_s", 300),
            ("approval_timeout_s", 86_400),
            ("heartbeat_interval_s", 5),
            ("peer_silence_s", 60),
            ("job_deadline_s", 7 * 86_400),
        )
    }
    for key, value in timeouts.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{where} [limits]: {key} must be a positive number")
    executor = _str(compute_doc, "executor", f"{where} [compute]", "inline")
    try:
        create_executor(executor).close()  # parses the spec; workers start only on first use
    except ValueError as exc:
        raise ConfigError(f"{where} [compute]: executor: {exc}") from None
    apply_test_switch_from_env()
    return NodeConfig(
        party=party,
        listen=_str(doc, "listen", where, "127.0.0.1:0"),
        state_dir=rel(_str(doc, "state_dir", where, "state")),
        tls=TlsPaths(
            ca=rel(_str(tls, "ca", where, "ca.pem")),
            cert=rel(_str(tls, "cert", where, "node.pem")),
            key=rel(_str(tls, "key", where, "node.key")),
        ),
        audit_key=rel(_str(audit, "signing_key", where, "audit_ed25519.key")),
        audit_pub=rel(_str(audit, "public_key", where, "audit_ed25519.pub")),
        audit_store=_audit_store(audit, where, rel, rel(_str(doc, "state_dir", where, "state"))),
        peers=peers,
        peers_file=rel(peers_file) if peers_file else None,
        datasets=datasets,
        policy=policy,
        max_message_bytes=_int(limits_doc, "max_message_bytes", where, 8 * _MIB, lo=64 * 1024),
        recv_timeout_s=float(timeouts["recv_timeout_s"]),
        approval_timeout_s=float(timeouts["approval_timeout_s"]),
        heartbeat_interval_s=float(timeouts["heartbeat_interval_s"]),
        peer_silence_s=float(timeouts["peer_silence_s"]),
        job_deadline_s=float(timeouts["job_deadline_s"]),
        max_workers=_int(limits_doc, "max_workers", where, 16),
        executor=executor,
        source=path,
    )


def _audit_store(
    audit: Mapping[str, Any], where: str, rel: Callable[[str], Path], state_dir: Path
) -> str:
    """``[audit] store``: a ``postgresql://`` URL as given, else a path (default state/audit.db)."""
    store = audit.get("store")
    if store is None:
        return str(state_dir / "audit.db")
    if not isinstance(store, str) or not store:
        raise ConfigError(f"{where}: [audit] store must be a file path or a postgresql:// URL")
    if store.startswith(("postgresql://", "postgres://")):
        return store
    if "://" in store:
        raise ConfigError(f"{where}: [audit] store {store.split('://')[0]}:// is not supported")
    return str(rel(store))


def apply_test_switch_from_env() -> None:
    """Turn the test-only switch on when its environment variable holds its exact value."""
    if os.environ.get(insecure.ENV_VAR) == insecure.ENV_VALUE:
        insecure.enable_insecure_test_parameters()
