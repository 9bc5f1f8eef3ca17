"""Node configuration: read once from TOML at start-up; nothing else in a node reads env or files.

``node.toml`` is parsed by one declared schema (:class:`NodeFile`): unknown keys are refused
(suggesting the nearest known one), ``listen`` must be ``HOST:PORT``, and every error names the
file and the dotted key to fix. Paths in the file are relative to the file's own directory.

The one exception to "read once" is the peer directory (``peers_file``), which an operator may
update while the node runs, so that nodes started on OS-chosen ports can learn each other's
addresses.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, Field

from bund.compute import insecure
from bund.compute.executor import create_executor
from bund.parties.data import DataSource
from bund.parties.errors import ConfigError
from bund.parties.policy import Policy, load_policy
from bund.parties.schema import (
    ListenAddress,
    Name,
    PeerAddress,
    PositiveNumber,
    StrictModel,
    Text,
    parse_file,
    read_toml,
)

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
    #: Seconds between two exchanges of signed tree heads with every peer (``[audit]
    #: witness_interval_s``): a rewrite of this node's log older than this is caught.
    witness_interval_s: float = 300.0
    #: A party that witnesses for the regulator, exchanged with like a peer (``[audit]
    #: regulator``); None: none.
    regulator: str | None = None

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

    def witness_parties(self) -> frozenset[str]:
        """The parties this node exchanges signed tree heads with, and accepts heads from.

        Every party named in ``[peers]``, the peers file and the policy's counterparties, and
        ``[audit] regulator``; never this node's own. The peers file is read anew each time.
        """
        named = set(self.peers) | set(self.policy.counterparties)
        if self.peers_file is not None and self.peers_file.exists():
            directory = _read_toml(self.peers_file)
            named |= {p for p, entry in directory.items() if isinstance(entry, dict)}
        if self.regulator is not None:
            named.add(self.regulator)
        return frozenset(named - {self.party})


def _read_toml(path: Path) -> dict[str, Any]:
    return read_toml(path, "configuration file", ConfigError)


# --- the file's schema ------------------------------------------------------------------------


class _Tls(StrictModel):
    ca: Text = Field(default="ca.pem", description="the federation CA certificate")
    cert: Text = Field(default="node.pem", description="this node's certificate")
    key: Text = Field(default="node.key", description="this node's private key (0600)")


def _audit_store(value: str) -> str:
    if "://" in value and not value.startswith(("postgresql://", "postgres://")):
        raise ValueError(
            f"must be a file path or a postgresql:// URL; {value.split('://')[0]}:// is not "
            "supported"
        )
    return value


class _Audit(StrictModel):
    signing_key: Text = Field(
        default="audit_ed25519.key", description="the log's Ed25519 signing key"
    )
    public_key: Text = Field(default="audit_ed25519.pub", description="its public key")
    store: Annotated[Text, AfterValidator(_audit_store)] | None = Field(
        default=None, description="a SQLite file, or a postgresql:// URL (default: state/audit.db)"
    )
    witness_interval_s: PositiveNumber = Field(
        default=300,
        description=(
            "seconds between exchanges of signed tree heads with every peer: a rewrite of this "
            "log's records older than this (plus one round trip) contradicts a witness"
        ),
    )
    regulator: Name | None = Field(
        default=None,
        description="a party that witnesses for the regulator: heads are exchanged with it too",
    )


class _Limits(StrictModel):
    noun: ClassVar[str] = "limit"

    max_message_bytes: int = Field(
        default=8 * _MIB, ge=64 * 1024, description="gRPC receive and send limit, in bytes"
    )
    recv_timeout_s: PositiveNumber = Field(
        default=300, description="how long a role waits for a peer"
    )
    approval_timeout_s: PositiveNumber = Field(
        default=86_400, description="how long a requester waits for every approver"
    )
    heartbeat_interval_s: PositiveNumber = Field(
        default=5, description="how often a running job asks each peer how it stands"
    )
    peer_silence_s: PositiveNumber = Field(
        default=60, description="a peer silent this long interrupts the job"
    )
    job_deadline_s: PositiveNumber = Field(
        default=7 * 86_400, description="the longest a job may run here"
    )
    max_workers: int = Field(default=16, ge=1, description="concurrent job roles")


def _executor(value: str) -> str:
    try:
        create_executor(value).close()  # parses the spec; workers start only on first use
    except ValueError as exc:
        raise ValueError(f"is not an executor this node can run: {exc}") from None
    return value


class _Compute(StrictModel):
    executor: Annotated[str, AfterValidator(_executor)] = Field(
        default="inline", description="inline | thread[:N] | process[:N] | ray://HEAD:PORT"
    )


class _Peer(StrictModel):
    address: PeerAddress = Field(description="where the peer's node listens")


class _Dataset(StrictModel):
    kind: Text = Field(description="csv | sqlite | parquet")
    path: Text = Field(description="the file, relative to node.toml")
    query: str | None = Field(default=None, description="the SELECT statement of a sqlite source")


class NodeFile(StrictModel):
    """``node.toml`` as written: parsed by :func:`load_config` into a :class:`NodeConfig`."""

    party: Name = Field(description="this node's party: the name in its certificate")
    listen: ListenAddress = Field(default="127.0.0.1:0", description="where the node serves")
    state_dir: Text = Field(default="state", description="logs, jobs, resume states, the port file")
    peers_file: Text | None = Field(
        default=None, description="a peer directory, re-read at each use"
    )
    policy_file: Text = Field(default="policy.toml", description="this node's policy")
    tls: _Tls = Field(default_factory=_Tls)
    audit: _Audit = Field(default_factory=_Audit)
    limits: _Limits = Field(default_factory=_Limits)
    compute: _Compute = Field(default_factory=_Compute)
    peers: dict[Name, _Peer] = Field(default_factory=dict)
    datasets: dict[Name, _Dataset] = Field(default_factory=dict)


def load_config(path: Path) -> NodeConfig:
    """Read and validate ``node.toml`` and the policy it names.

    Raises:
        ConfigError: Naming the file, each key to fix (dotted) and the nearest known key.
        PolicyFileError: The same for the policy file.
    """
    path = path.resolve()
    doc = _read_toml(path)
    base = path.parent
    if "policy" in doc:
        raise ConfigError(f'{path}: policy lives in its own file: set policy_file = "policy.toml"')
    file = parse_file(NodeFile, doc, path, ConfigError)

    def rel(p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else base / q

    datasets: dict[str, DataSource] = {}
    for name, entry in file.datasets.items():
        try:
            datasets[name] = DataSource(kind=entry.kind, path=rel(entry.path), query=entry.query)
        except ValueError as exc:
            raise ConfigError(f"{path}: datasets.{name}: {exc}") from None

    policy = load_policy(rel(file.policy_file), file.party)
    for name in policy.datasets:
        if name not in datasets:
            raise ConfigError(
                f"{path}: the policy's catalog names dataset {name!r} but [datasets.{name}] "
                "says nowhere where to read it"
            )
    apply_test_switch_from_env()
    state_dir = rel(file.state_dir)
    store = file.audit.store
    limits = file.limits
    return NodeConfig(
        party=file.party,
        listen=file.listen,
        state_dir=state_dir,
        tls=TlsPaths(ca=rel(file.tls.ca), cert=rel(file.tls.cert), key=rel(file.tls.key)),
        audit_key=rel(file.audit.signing_key),
        audit_pub=rel(file.audit.public_key),
        audit_store=(
            str(state_dir / "audit.db")
            if store is None
            else store
            if "://" in store
            else str(rel(store))
        ),
        peers={name: peer.address for name, peer in file.peers.items()},
        peers_file=rel(file.peers_file) if file.peers_file else None,
        datasets=datasets,
        policy=policy,
        max_message_bytes=limits.max_message_bytes,
        recv_timeout_s=limits.recv_timeout_s,
        approval_timeout_s=limits.approval_timeout_s,
        heartbeat_interval_s=limits.heartbeat_interval_s,
        peer_silence_s=limits.peer_silence_s,
        job_deadline_s=limits.job_deadline_s,
        max_workers=limits.max_workers,
        executor=file.compute.executor,
        source=path,
        witness_interval_s=file.audit.witness_interval_s,
        regulator=file.audit.regulator,
    )


def apply_test_switch_from_env() -> None:
    """Turn the test-only switch on when its environment variable holds its exact value."""
    if os.environ.get(insecure.ENV_VAR) == insecure.ENV_VALUE:
        insecure.enable_insecure_test_parameters()


def node_template(party: str, listen: str = "127.0.0.1:0") -> str:
    """A commented ``node.toml`` for ``party`` that runs as written (``bund party init``).

    It expects what ``bund party init`` writes beside it: the TLS and audit keys and
    ``policy.toml``. The commented tables are examples to copy.
    """

    def line(assignment: str, comment: str) -> str:
        return f"{assignment:<35} # {comment}"

    limits = "\n".join(
        line(f"{name} = {info.default!r}", str(info.description))
        for name, info in _Limits.model_fields.items()
    )
    first = line(f'party = "{party}"', "the name in node.pem")
    return f"""\
# Node configuration of {party}, written by `bund party init`.
# Check it:  bund config check node.toml        Run it:  bund serve --config node.toml
# docs/jobs.md explains every key; unknown keys are refused. Paths are relative to this file.
{first}
# Where the node serves, HOST:PORT; port 0: the OS picks one and writes it to state/port.
listen = "{listen}"
state_dir = "state"                 # the signed audit log, jobs, results, resume states
policy_file = "policy.toml"         # what this node allows (docs/policy.md)
# peers_file = "../peers.toml"      # optional peer directory, re-read at each use

[tls]
ca = "ca.pem"                       # the federation CA
cert = "node.pem"                   # this node's certificate
key = "node.key"                    # 0600; never leaves the node

[audit]
signing_key = "audit_ed25519.key"   # signs every record of the audit log
public_key = "audit_ed25519.pub"    # hand it to the regulator
# store = "postgresql://bund@db.example/bund"   # default: state/audit.db (SQLite)
witness_interval_s = 300            # exchange signed tree heads with every peer this often
# regulator = "regulator"           # a party witnessing for the regulator (address in [peers])

[limits]                            # the defaults
{limits}

[compute]
executor = "inline"                 # inline | thread[:N] | process[:N] | ray://HEAD:PORT

# Where each other party's node listens:
# [peers.tax]
# address = "tax.example:7443"

# Where each dataset of the policy's catalog is read from (csv | sqlite | parquet):
# [datasets.loan_book]
# kind = "csv"
# path = "data/loan_book.csv"
"""
