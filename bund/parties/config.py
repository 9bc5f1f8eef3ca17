"""Node configuration: read once from TOML at start-up; nothing else in a node reads env or files.

``node.toml`` is parsed by one declared schema (:class:`NodeFile`): unknown keys are refused
(suggesting the nearest known one), ``listen`` must be ``HOST:PORT``, and every error names the
file and the dotted key to fix. Paths in the file are relative to the file's own directory.

The exceptions to "read once" are the peer directory (``peers_file``), which an operator may
update while the node runs, so that nodes started on OS-chosen ports can learn each other's
addresses, and the federation's signed roster and revocation lists, which the node re-reads
whenever their files change (``bund.parties.roster.WatchedDocument``).

``operator.toml`` (:class:`OperatorFile`) is an operator's own file, on their workstation: where
the party's node listens and the operator credential that ``bund job ...`` presents to it. Its
loaders (and ``OperatorConfig``, ``TlsPaths``) live in :mod:`bund.parties.operator_file`, which
loads no pydantic for a well-formed file; they are re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field

from bund.compute import insecure
from bund.compute.executor import create_executor
from bund.parties.data import DEFAULT_STATEMENT_TIMEOUT_S, DataSource
from bund.parties.errors import ConfigError
from bund.parties.identity import APPROVER_KEY, CA_CERT, OPERATOR_CERT, OPERATOR_KEY
from bund.parties.operator_file import OPERATOR_TLS_DEFAULTS
from bund.parties.operator_file import OperatorConfig as OperatorConfig
from bund.parties.operator_file import TlsPaths as TlsPaths
from bund.parties.operator_file import is_operator_file as is_operator_file
from bund.parties.operator_file import load_cli_config as load_cli_config
from bund.parties.operator_file import load_operator_config as load_operator_config
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
class TrustPaths:
    """What a node checks its callers against (``docs/identity.md``).

    Attributes:
        roster: The federation's signed roster: each party's name, role, certificates, audit key.
        revocations: The federation's signed revocation list.
        operator_ca: This party's operator CA certificate: it issues operator credentials.
        operator_revocations: This party's signed list of revoked operator credentials.
    """

    roster: Path
    revocations: Path
    operator_ca: Path
    operator_revocations: Path


#: How the node writes its log: one line of text per entry, or one JSON object per line.
LogFormat = Literal["text", "json"]
#: The node log's threshold.
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


@dataclass(frozen=True)
class LoggingConfig:
    """How ``bund serve`` writes the node log (``[logging]``; ``docs/deploy.md``)."""

    format: LogFormat = "text"
    level: LogLevel = "INFO"


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
    trust: TrustPaths
    #: The operator credential (a directory holding operator.pem, operator.key and ca.pem) that
    #: ``bund`` commands on this host present; the node itself never reads it.
    operator_credential: Path | None = None
    max_message_bytes: int = 8 * _MIB
    #: How long an audit record waits for a locked store before its action is refused.
    audit_write_timeout_s: float = 10.0
    recv_timeout_s: float = 300.0
    approval_timeout_s: float = 86_400.0
    #: How often a node asks each peer of a running job how it stands.
    heartbeat_interval_s: float = 5.0
    #: A peer silent this long (no heartbeat answered) interrupts the job (resumable).
    peer_silence_s: float = 60.0
    #: The longest a job may run at this node; past it the job is aborted.
    job_deadline_s: float = 7 * 86_400.0
    #: A job not started this long after it was proposed or accepted here expires.
    unstarted_expiry_s: float = 90_000.0
    max_workers: int = 16
    #: Where heavy kernel batches run: ``inline``, ``thread[:N]``, ``process[:N]`` and any
    #: back-end ``bund.compute.executor.create_executor`` knows (``[compute] executor``).
    executor: str = "inline"
    logging: LoggingConfig = LoggingConfig()
    #: Where the plain-HTTP health check listens (``[health] listen``); None: no such listener.
    health_listen: str | None = None
    source: Path | None = field(default=None, compare=False)
    #: The policy file it was read from (a reload reads it again).
    policy_file: Path | None = field(default=None, compare=False)
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


class _Federation(StrictModel):
    roster: Text = Field(default="roster.json", description="the federation's signed roster")
    revocations: Text = Field(
        default="revocations.json", description="the federation's signed revocation list"
    )


class _Operators(StrictModel):
    ca: Text = Field(default="operator_ca.pem", description="this party's operator CA")
    revocations: Text = Field(
        default="operators_revoked.json", description="its signed list of revoked operators"
    )
    credential: Text | None = Field(
        default=None,
        description="the operator credential `bund` commands on this host use (a directory)",
    )


class _Audit(StrictModel):
    signing_key: Text = Field(
        default="audit_ed25519.key", description="the log's Ed25519 signing key"
    )
    public_key: Text = Field(default="audit_ed25519.pub", description="its public key")
    store: Annotated[Text, AfterValidator(_audit_store)] | None = Field(
        default=None, description="a SQLite file, or a postgresql:// URL (default: state/audit.db)"
    )
    write_timeout_s: PositiveNumber = Field(
        default=10,
        description="how long a record waits for a locked audit store before the action that "
        "needs it is refused (UNAVAILABLE)",
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
    unstarted_expiry_s: PositiveNumber = Field(
        default=90_000,
        description="a proposed or accepted job that has not started after this long expires, "
        "releasing its budget reservation",
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


class _Logging(StrictModel):
    format: LogFormat = Field(
        default="text", description="text: one line per entry; json: one JSON object per line"
    )
    level: LogLevel = Field(default="INFO", description="DEBUG | INFO | WARNING | ERROR")


class _Health(StrictModel):
    listen: ListenAddress | None = Field(
        default=None,
        description="HOST:PORT of a plain-HTTP health check for load balancers (no client "
        "certificate; answers 200 serving or 503 not serving, nothing else); off when unset",
    )


class _Peer(StrictModel):
    address: PeerAddress = Field(description="where the peer's node listens")


class _Dataset(StrictModel):
    kind: Text = Field(description="csv | sqlite | parquet | postgres")
    path: Text | None = Field(
        default=None,
        description="the file of a csv, sqlite or parquet source, relative to node.toml",
    )
    query: str | None = Field(
        default=None, description="the SELECT statement of a sqlite or postgres source"
    )
    encoding: Literal["utf-8", "utf-8-sig", "gbk", "gb18030"] = Field(
        default="utf-8", description="the text encoding of a csv source"
    )
    url: Text | None = Field(
        default=None,
        description="a postgres source's postgresql://USER@HOST:PORT/DATABASE, with no password",
    )
    table: Text | None = Field(
        default=None, description='the "schema.table" a postgres source reads (or query)'
    )
    password_env: Text | None = Field(
        default=None, description="the environment variable holding a postgres role's password"
    )
    password_file: Text | None = Field(
        default=None,
        description="a file (0600, relative to node.toml) holding a postgres role's password",
    )
    statement_timeout_s: PositiveNumber = Field(
        default=DEFAULT_STATEMENT_TIMEOUT_S,
        description="a postgres source's statement timeout, in seconds",
    )


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
    federation: _Federation = Field(default_factory=_Federation)
    operators: _Operators = Field(default_factory=_Operators)
    audit: _Audit = Field(default_factory=_Audit)
    limits: _Limits = Field(default_factory=_Limits)
    compute: _Compute = Field(default_factory=_Compute)
    logging: _Logging = Field(default_factory=_Logging)
    health: _Health = Field(default_factory=_Health)
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
            datasets[name] = DataSource(
                kind=entry.kind,
                path=rel(entry.path) if entry.path is not None else None,
                query=entry.query,
                encoding=entry.encoding,
                url=entry.url,
                table=entry.table,
                password=_dataset_password(entry, rel),
                statement_timeout_s=float(entry.statement_timeout_s),
            )
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
        trust=TrustPaths(
            roster=rel(file.federation.roster),
            revocations=rel(file.federation.revocations),
            operator_ca=rel(file.operators.ca),
            operator_revocations=rel(file.operators.revocations),
        ),
        operator_credential=(
            rel(file.operators.credential) if file.operators.credential is not None else None
        ),
        max_message_bytes=limits.max_message_bytes,
        audit_write_timeout_s=file.audit.write_timeout_s,
        recv_timeout_s=limits.recv_timeout_s,
        approval_timeout_s=limits.approval_timeout_s,
        heartbeat_interval_s=limits.heartbeat_interval_s,
        peer_silence_s=limits.peer_silence_s,
        job_deadline_s=limits.job_deadline_s,
        unstarted_expiry_s=limits.unstarted_expiry_s,
        max_workers=limits.max_workers,
        executor=file.compute.executor,
        logging=LoggingConfig(format=file.logging.format, level=file.logging.level),
        health_listen=file.health.listen,
        source=path,
        policy_file=rel(file.policy_file),
        witness_interval_s=file.audit.witness_interval_s,
        regulator=file.audit.regulator,
    )


def _dataset_password(entry: _Dataset, rel: Callable[[str], Path]) -> str | None:
    """A postgres source's password, from the variable or the file its entry names.

    Read here, once at start-up like the rest of the configuration (and again by a reload), so a
    missing variable or an unreadable file stops the node before it serves. The password never
    sits in ``node.toml``; a file must be private to the node's user (mode 0600), as libpq
    requires of a ``.pgpass`` file.

    Raises:
        ValueError: if both are named, they are named for another kind of source, the variable
            is unset or empty, or the file is missing, readable by others or empty.
    """
    env, file = entry.password_env, entry.password_file
    if env is None and file is None:
        return None
    if entry.kind != "postgres":
        raise ValueError("password_env and password_file belong to postgres sources only")
    if env is not None and file is not None:
        raise ValueError("set password_env or password_file, not both")
    if env is not None:
        value = os.environ.get(env, "")
        if not value:
            raise ValueError(
                f"password_env names {env}, which is not set in the node's environment"
            )
        return value
    assert file is not None
    secret = rel(file)
    try:
        mode = secret.stat().st_mode
        if mode & 0o077:
            raise ValueError(
                f"password_file {secret} may be read by other users; chmod 600 {secret}"
            )
        value = secret.read_text(encoding="utf-8").strip("\r\n")
    except OSError as exc:
        raise ValueError(f"password_file {secret} cannot be read ({exc.strerror})") from None
    if not value:
        raise ValueError(f"password_file {secret} is empty")
    return value


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

[federation]                        # from the federation; the node re-reads them when they change
roster = "roster.json"              # signed: each party's name, role, certificates, audit key
revocations = "revocations.json"    # signed: revoked certificates

[operators]                         # this party's operators (docs/identity.md)
ca = "operator_ca.pem"              # the operator CA; keep operator_ca.key off this machine
revocations = "operators_revoked.json"   # signed by the operator CA: revoked credentials
credential = "operator"             # what `bund job ...` on this host presents (not the node)

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

[logging]                           # the node log, on stderr (docs/deploy.md)
format = "text"                     # text | json (one JSON object per line)
level = "INFO"                      # DEBUG | INFO | WARNING | ERROR

# A plain-HTTP health check for a load balancer: no client certificate, answers 200 (serving)
# or 503 (not serving) and nothing else. Off unless set.
# [health]
# listen = "127.0.0.1:8081"

# Where each other party's node listens:
# [peers.tax]
# address = "tax.example:7443"

# Where each dataset of the policy's catalog is read from (csv | sqlite | parquet | postgres;
# docs/datasets.md has an example of each):
# [datasets.loan_book]
# kind = "csv"
# path = "data/loan_book.csv"
# encoding = "utf-8"                # or "gbk", "gb18030", "utf-8-sig"
"""


# --- an operator's file -------------------------------------------------------------------------


class _OperatorTls(StrictModel):
    ca: Text = Field(
        default=OPERATOR_TLS_DEFAULTS["ca"], description="the federation CA: it verifies the node"
    )
    cert: Text = Field(default=OPERATOR_TLS_DEFAULTS["cert"], description="the operator credential")
    key: Text = Field(default=OPERATOR_TLS_DEFAULTS["key"], description="its private key (0600)")


class OperatorFile(StrictModel):
    """``operator.toml`` as written: the schema of :func:`load_operator_config`.

    ``bund.parties.operator_file`` reads a well-formed file without it (no pydantic import for
    ``bund job status``) and hands it every other file; keep its keys those of
    ``OPERATOR_KEYS`` and ``OPERATOR_TLS_DEFAULTS`` there.
    """

    party: Name = Field(description="the party whose node this operator works")
    node: PeerAddress | None = Field(default=None, description="where the party's node listens")
    port_file: Text | None = Field(
        default=None, description="or: the port file of a node on this host (listen port 0)"
    )
    approver_key: Text | None = Field(
        default=None, description="the approver's Ed25519 key, when this operator approves jobs"
    )
    tls: _OperatorTls = Field(default_factory=_OperatorTls)


def operator_of(config: NodeConfig) -> OperatorConfig:
    """The operator side of a ``node.toml``: its address and ``[operators] credential``.

    Raises:
        ConfigError: The file names no operator credential.
    """
    where = config.source or "node.toml"
    if config.operator_credential is None:
        raise ConfigError(
            f"{where}: names no operator credential; set [operators] credential = "
            '"operator" (a directory from `bund operator issue`), or pass --config '
            "operator.toml"
        )
    host, _, port = config.listen.rpartition(":")
    if host in ("0.0.0.0", "[::]", ""):  # noqa: S104 - a wildcard listen is reached on loopback
        host = "127.0.0.1"
    d = config.operator_credential
    return OperatorConfig(
        party=config.party,
        node=None if port == "0" else f"{host}:{port}",
        port_file=config.port_file if port == "0" else None,
        tls=TlsPaths(ca=d / CA_CERT, cert=d / OPERATOR_CERT, key=d / OPERATOR_KEY),
        approver_key=config.source.parent / APPROVER_KEY if config.source is not None else None,
        max_message_bytes=config.max_message_bytes,
        source=config.source,
    )


def operator_template(party: str, node: str | None, port_file: str | None) -> str:
    """A commented ``operator.toml`` beside a credential from ``bund operator issue``."""
    where = (
        f'node = "{node}"                # where {party}\'s node listens'
        if node is not None
        else f'port_file = "{port_file}"    # the port file of {party}\'s node on this host'
    )
    return f"""\
# An operator credential of {party}, written by `bund operator issue`.
# Use it:  bund job list --config operator.toml   (docs/identity.md)
party = "{party}"
{where}
# approver_key = "approver_ed25519.key"   # when this operator approves jobs (stays here)

[tls]
ca = "ca.pem"                      # the federation CA: verifies the node
cert = "operator.pem"              # the operator credential (OU=operator, O={party})
key = "operator.key"               # 0600; never leaves this machine
"""
