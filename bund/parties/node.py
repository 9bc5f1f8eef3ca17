"""The party node: a gRPC server with mTLS only, health, reflection, limits and the Bund services.

``create_node(config)`` builds everything and returns a ``Node`` holding the bound port, so tests
bind ``127.0.0.1:0``. There is no insecure port: every caller presents a client certificate, from
the federation CA (a peer's node) or from this party's operator CA (an operator), and TLS checks
it against both; the node's :class:`~bund.parties.authz.Gate` then tells which it is and what it
may do, against the federation's roster and revocation lists, which the node re-reads when their
files change. Each start draws a fresh instance epoch, signed with the audit key, that the node
sends with every call to a peer. gRPC's TLS stack negotiates TLS 1.2 or 1.3 only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bund.compute.errors import BundError
from bund.compute.executor import create_executor
from bund.parties import servicers, wire
from bund.parties.audit import (
    AuditLog,
    AuditLogCorruptError,
    AuditStore,
    Witness,
    WitnessExchange,
    WitnessStore,
    open_audit_store,
    read_readable,
)
from bund.parties.authz import Gate, Instance, InstancePins, TrustAnchors
from bund.parties.client import PeerClients
from bund.parties.config import NodeConfig, load_config
from bund.parties.data import Table, open_source
from bund.parties.errors import ConfigError
from bund.parties.identity import (
    identity_from_pem,
    load_audit_public_key,
    load_audit_signing_key,
    load_certificate,
    raw_public_key,
)
from bund.parties.jobs import AuditSink, JobSpec, ProtocolDef
from bund.parties.ledger import BudgetLedger
from bund.parties.lifecycle.events import Event, Key
from bund.parties.lifecycle.manager import JobManager, LifecycleTiming, NodeStores
from bund.parties.lifecycle.store import SqliteJobStore
from bund.parties.listeners import HealthListener, listen_failure
from bund.parties.oplog import JobLog, configure_logging, job_records, version
from bund.parties.protocols import PROTOCOLS
from bund.parties.resume import ResumeStore, load_or_create_key
from bund.parties.roster import (
    RevocationList,
    Roster,
    SignedDocumentError,
    WatchedDocument,
    parse_revocations,
    parse_roster,
)
from bund.parties.rpc_audit import RefusalTally
from bund.parties.serving.ledger import ServingLedger
from bund.parties.serving.service import ServingPorts, ServingService
from bund.parties.transport import Mailbox
from bund.v1 import audit_pb2, federation_pb2, job_pb2, serving_pb2

log = logging.getLogger("bund.node")

SERVICES = ("bund.v1.Jobs", "bund.v1.Federation", "bund.v1.Audit", "bund.v1.Serving")
#: Deadline of one witness exchange with a peer.
_WITNESS_TIMEOUT_S = 10.0


def _utc_clock() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class Node:
    """A running node: its server, bound port, and the parts tests and the CLI reach into."""

    config: NodeConfig
    server: grpc.Server
    port: int
    manager: JobManager
    audit: AuditLog
    audit_store: AuditStore
    health: health.HealthServicer
    peers: PeerClients
    refusals: RefusalTally
    #: The thread exchanging signed tree heads with the peers (``docs/audit.md``).
    witness: WitnessExchange | None = None
    #: The plain-HTTP health check (``[health] listen``), if configured.
    health_http: HealthListener | None = None
    #: Its standing contracts' requests (``bund.parties.serving``).
    serving: ServingService | None = None

    def reload(self) -> None:
        """Read node.toml, policy.toml and the dataset catalogue again and apply them.

        Everything is validated before anything changes: a file with an error, a party that is
        not this node's, or a budget below what is spent and reserved keeps the old policy and
        raises with the reason. What needs a restart (the listen address, TLS, the audit
        store, timeouts) keeps its running value; the reload changes the policy, the catalogue
        and the approvers.

        Raises:
            ConfigError | PolicyFileError: Naming the file and what to fix.
        """
        if self.config.source is None:
            raise ConfigError("this node was not started from a node.toml: nothing to reload")
        new = load_config(self.config.source)
        if new.party != self.config.party:
            raise ConfigError(
                f"{self.config.source} now names party {new.party!r}; this node is "
                f"{self.config.party!r}: a node changes its party only by a new start"
            )
        approvers = {n: load_audit_public_key(p) for n, p in new.policy.approvers.items()}
        files = {"node_toml": self.config.source, "policy_toml": new.policy_file}
        digests = {
            name: hashlib.sha256(path.read_bytes()).hexdigest()
            for name, path in files.items()
            if path is not None
        }
        self.manager.reload(new.policy, _table_loaders(new), approvers, digests)
        self.config = dataclasses.replace(self.config, policy=new.policy, datasets=new.datasets)

    def stop(self, grace: float = 5.0) -> None:
        """Stop serving, let in-flight calls finish for ``grace`` seconds, close stores."""
        if self.health_http is not None:
            self.health_http.set_serving(False)
        for service in ("", *SERVICES):
            self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.witness is not None:
            self.witness.close()
        self.server.stop(grace).wait()
        if self.serving is not None:
            self.serving.stop()
        self.manager.shutdown()
        self.refusals.stop()
        try:
            self.audit.append(Event.NODE_STOPPED, "", {Key.PORT: self.port})
        except AuditLogCorruptError as exc:  # sealed: it records nothing more
            log.error("%s stopped without recording it: %s", self.config.party, exc)
        self.peers.close()
        self.manager.store.close()
        self.manager.ledger.close()
        self.manager.resume.close()
        self.audit_store.close()
        if self.health_http is not None:
            self.health_http.close()


def _table_loaders(config: NodeConfig) -> dict[str, Callable[[], Table]]:
    """One loader per catalog dataset; each reads its source once, on first use by a job."""
    cache: dict[str, Table] = {}
    lock = threading.Lock()

    def loader(name: str) -> Table:
        with lock:
            if name not in cache:
                cache[name] = open_source(config.datasets[name], name)
            return cache[name]

    return {name: functools.partial(loader, name) for name in config.datasets}


def _contract_table(manager: JobManager, spec: JobSpec) -> Table:
    """This party's dataset of a serving contract, refused if it is not the version approved."""
    manager.admission.recheck(spec, manager.store.admitted(spec.job_id))
    dataset = spec.participant(manager.party).dataset
    if dataset is None:
        raise ConfigError(f"{manager.party} brings no dataset to contract {spec.job_id}")
    return manager.admission.table(dataset)


def _trust_anchors(config: NodeConfig, audit: AuditSink) -> TrustAnchors:
    """The CAs, roster and revocation lists the node checks callers against.

    Each change of a list's file is audited: a new version loaded, or a changed file refused.
    """
    trust = config.trust
    federation_ca = config.tls.ca.read_bytes()
    operator_ca = load_certificate(trust.operator_ca)
    fed_key = load_certificate(config.tls.ca).public_key()
    op_key = operator_ca.public_key()
    if not isinstance(fed_key, ec.EllipticCurvePublicKey) or not isinstance(
        op_key, ec.EllipticCurvePublicKey
    ):
        raise ConfigError("the federation CA and the operator CA must hold ECDSA keys")

    def noted(path: Path) -> tuple[Callable[[str], None], Callable[[int], None]]:
        def refused(reason: str) -> None:
            try:
                audit.append(Event.TRUST_LIST_REFUSED, "", {"file": str(path), Key.REASON: reason})
            except BundError:
                log.exception("could not audit the refusal of %s", path)

        def loaded(version: int) -> None:
            try:
                audit.append(Event.TRUST_LIST_LOADED, "", {"file": str(path), Key.VERSION: version})
            except BundError:
                log.exception("could not audit the new version of %s", path)

        return refused, loaded

    def watch_roster(path: Path) -> WatchedDocument[Roster]:
        return WatchedDocument(path, lambda d, w: parse_roster(d, fed_key, w), *noted(path))

    def watch_list(path: Path, key: ec.EllipticCurvePublicKey) -> WatchedDocument[RevocationList]:
        return WatchedDocument(path, lambda d, w: parse_revocations(d, key, w), *noted(path))

    try:
        return TrustAnchors(
            federation_ca=federation_ca,
            operator_ca=operator_ca.public_bytes(serialization.Encoding.PEM),
            roster=watch_roster(trust.roster),
            revocations=watch_list(trust.revocations, fed_key),
            operator_revocations=watch_list(trust.operator_revocations, op_key),
        )
    except SignedDocumentError as exc:
        raise ConfigError(
            f"{config.source or 'node.toml'}: {exc} (the federation publishes roster.json and "
            "revocations.json; `bund party init` writes operators_revoked.json)"
        ) from None


def _open_manager(
    config: NodeConfig,
    protocols: Mapping[str, ProtocolDef],
    audit: AuditLog,
    peers: PeerClients,
    on_job_closed: Callable[[JobSpec], None],
    closers: contextlib.ExitStack,
) -> JobManager:
    """The job lifecycle over this node's stores (jobs, resume states, budgets) in its state dir.

    Each store opened is registered on ``closers``, so a node that fails to start closes it.
    """
    store = SqliteJobStore(config.state_dir / "jobs.db", audit)
    closers.callback(store.close)
    store.add_observer(JobLog(config.party))
    resume_key = load_or_create_key(config.state_dir / "resume.key")
    resume = ResumeStore(config.state_dir / "resume.db", resume_key)
    closers.callback(resume.close)
    ledger = BudgetLedger(
        config.state_dir / "budget.db",
        {name: entry.budget_limits for name, entry in config.policy.datasets.items()},
        audit,
    )
    closers.callback(ledger.close)
    approvers = {
        name: load_audit_public_key(path) for name, path in config.policy.approvers.items()
    }
    manager = JobManager(
        party=config.party,
        protocols=protocols,
        policy=config.policy,
        tables=_table_loaders(config),
        stores=NodeStores(audit=audit, jobs=store, resume=resume, ledger=ledger),
        mailbox=Mailbox(config.max_message_bytes, journal=resume),
        peers=peers,
        approvers=approvers,
        code_version=version(),
        timing=LifecycleTiming(
            recv_timeout=config.recv_timeout_s,
            approval_timeout=config.approval_timeout_s,
            heartbeat_interval=config.heartbeat_interval_s,
            peer_silence=config.peer_silence_s,
            job_deadline=config.job_deadline_s,
            unstarted_expiry=config.unstarted_expiry_s,
            max_workers=config.max_workers,
        ),
        executor=create_executor(config.executor),
        on_job_closed=on_job_closed,
    )
    closers.callback(manager.shutdown)
    return manager


def _instance_probe(
    config: NodeConfig, anchors: TrustAnchors, peers: PeerClients
) -> Callable[[str], str | None]:
    """Ask a peer's node for its signed instance epoch (the gate pins each peer's epoch)."""

    def probe(party: str) -> str | None:
        """The epoch of the node answering at ``party``'s address, if it answers and verifies."""
        member = anchors.roster.current().members.get(party)
        try:
            answer = peers.client(party).node_info(timeout=min(config.peer_silence_s, 5.0))
            if member is None:
                return None
            key = ed25519.Ed25519PublicKey.from_public_bytes(member.audit_key)
            statement = Instance.decode(answer.instance, key)
        except (BundError, ValueError):
            return None
        return statement.epoch if statement.party == party else None

    return probe


def _service_handlers(
    config: NodeConfig,
    manager: JobManager,
    audit: AuditLog,
    audit_store: AuditStore,
    witness: Witness,
    serving: ServingService,
    info: wire.NodeInfo,
    gate: Gate,
    refusals: RefusalTally,
) -> list[grpc.GenericRpcHandler[bytes, bytes]]:
    """Bund's four services (Jobs, Federation, Audit, Serving), each behind the gate, audited."""

    def read_audit(start: int, limit: int) -> wire.AuditPage:
        records, unreadable = read_readable(audit_store, start, start + limit)
        return wire.AuditPage(
            records=tuple(records),
            size=len(audit_store),
            audit_public_key=info.audit_public_key,
            unreadable=None if unreadable is None else (start + len(records), str(unreadable)),
        )

    job_methods = {
        **servicers.job_methods(manager),
        **servicers.job_log_methods(manager, functools.partial(job_records, audit_store)),
    }
    audit_methods = servicers.audit_methods(
        config.party,
        read_audit,
        audit.checkpoint,
        witness=witness,
        peers=config.witness_parties,
    )
    return [
        servicers.make_generic_handler(service, methods, audit, gate, refusals)
        for service, methods in (
            ("bund.v1.Jobs", job_methods),
            ("bund.v1.Federation", servicers.federation_methods(info)),
            ("bund.v1.Audit", audit_methods),
            ("bund.v1.Serving", servicers.serving_methods(serving, manager.store)),
        )
    ]


def _grpc_server(
    config: NodeConfig,
    handlers: Sequence[grpc.GenericRpcHandler[bytes, bytes]],
    anchors: TrustAnchors,
    cert_pem: bytes,
) -> tuple[grpc.Server, health.HealthServicer, int]:
    """The mTLS gRPC server with Bund's services, health and reflection, bound but not started.

    Returns the server, its health servicer and the bound port (0 when the address was refused).
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="bund-rpc"),
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=256,
    )
    server.add_generic_rpc_handlers(tuple(handlers))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            job_pb2.DESCRIPTOR.services_by_name["Jobs"].full_name,
            federation_pb2.DESCRIPTOR.services_by_name["Federation"].full_name,
            audit_pb2.DESCRIPTOR.services_by_name["Audit"].full_name,
            serving_pb2.DESCRIPTOR.services_by_name["Serving"].full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    # Client certificates from either CA pass TLS; the gate tells a peer from an operator.
    credentials = grpc.ssl_server_credentials(
        [(config.tls.key.read_bytes(), cert_pem)],
        root_certificates=anchors.federation_ca + b"\n" + anchors.operator_ca,
        require_client_auth=True,
    )
    try:
        port = server.add_secure_port(config.listen, credentials)
    except RuntimeError:  # grpcio raises where older releases returned 0
        port = 0
    return server, health_servicer, port


def create_node(config: NodeConfig, protocols: Mapping[str, ProtocolDef] = PROTOCOLS) -> Node:
    """Build and start a node from its configuration; returns once it serves.

    In order: this party's identity and audit log, the trust anchors, the job lifecycle and its
    stores, the witness exchange, the gRPC server with its gate, the health listener. Whatever
    was opened is closed again if a later step fails (a port in use, a bad file).
    """
    config.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.state_dir, 0o700)
    cert_pem = config.tls.cert.read_bytes()
    me = identity_from_pem(cert_pem)
    if me.name != config.party:
        raise ValueError(
            f"node.toml says party {config.party!r} but {config.tls.cert} was issued to {me.name!r}"
        )
    signing_key = load_audit_signing_key(config.audit_key)
    with contextlib.ExitStack() as closers:
        audit_store = open_audit_store(
            config.audit_store, write_timeout_s=config.audit_write_timeout_s
        )
        closers.callback(audit_store.close)
        audit = AuditLog(audit_store, signing_key, config.party, _utc_clock)
        anchors = _trust_anchors(config, audit)
        instance = Instance.create(config.party, signing_key, _utc_clock())
        peers = PeerClients(config, instance.encode())
        closers.callback(peers.close)
        witness = Witness(
            audit,
            signing_key,
            WitnessStore(config.state_dir / "witness.db", config.party),
            _utc_clock,
        )
        exchange = WitnessExchange(
            witness,
            config.witness_parties,
            lambda peer, head, key: peers.client(peer).witness(head, key, _WITNESS_TIMEOUT_S),
            config.witness_interval_s,
        )
        manager = _open_manager(
            config, protocols, audit, peers, lambda spec: exchange.request(spec.parties), closers
        )
        serving_ledger = ServingLedger(config.state_dir / "serving.db")
        closers.callback(serving_ledger.close)
        serving = ServingService(
            config.party,
            ServingPorts(
                jobs=manager.store,
                keys=manager.resume,
                audit=audit,
                audit_store=audit_store,
                ledger=serving_ledger,
                peers=peers,
                table=functools.partial(_contract_table, manager),
                root_logged=lambda spec: exchange.request(spec.parties),
            ),
        )
        info = wire.NodeInfo(
            party=config.party,
            role=me.role,
            version=version(),
            audit_public_key=raw_public_key(signing_key.public_key()),
            protocols={name: d.version for name, d in protocols.items()},
            instance=instance.encode(),
        )
        gate = Gate(
            config.party,
            me.role,
            anchors,
            InstancePins(_instance_probe(config, anchors, peers), audit.append),
        )

        refusals = RefusalTally(audit)
        handlers = _service_handlers(
            config, manager, audit, audit_store, witness, serving, info, gate, refusals
        )
        server, health_servicer, port = _grpc_server(config, handlers, anchors, cert_pem)
        closers.callback(server.stop, None)
        if port == 0:
            raise listen_failure(config.listen, "listen", config.source)
        health_http = None
        if config.health_listen is not None:
            health_http = HealthListener(config.health_listen, config.source)
        closers.pop_all()  # from here on, Node.stop closes them
    serving.start()  # its index caught up with the log before any request comes in
    server.start()
    for service in ("", *SERVICES):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    if health_http is not None:
        health_http.set_serving(True)
    audit.append(
        Event.NODE_STARTED,
        "",
        {
            Key.LISTEN: config.listen,
            Key.PORT: port,
            Key.VERSION: info.version,
            "epoch": instance.epoch,
            "roster_version": anchors.roster.current().version,
            "revocations_version": anchors.revocations.current().version,
        },
    )
    tmp = config.port_file.with_suffix(".tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(config.port_file)
    log.info("%s serving on port %d (mTLS)", config.party, port)
    manager.recover()
    refusals.start()
    exchange.start()
    return Node(
        config, server, port, manager, audit, audit_store, health_servicer, peers, refusals,
        exchange, health_http, serving,
    )  # fmt: skip


def serve(config: NodeConfig, protocols: Mapping[str, ProtocolDef] = PROTOCOLS) -> None:
    """Run a node until SIGTERM or SIGINT, then stop it cleanly; SIGHUP reloads its policy.

    The node log goes to stderr in ``[logging]``'s format and level; its first line names the
    Bund version.
    """
    configure_logging(config.logging)
    log.info("bund %s: starting %s's node (%s)", version(), config.party, config.source)
    node = create_node(config, protocols)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    def on_hangup(signum: int, frame: object) -> None:
        def reload() -> None:
            try:
                node.reload()
            except BundError as exc:
                log.error("reload refused, the old policy stays: %s", exc)

        threading.Thread(target=reload, name="bund-reload", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    stop.wait()
    node.stop()
    Path(config.port_file).unlink(missing_ok=True)
