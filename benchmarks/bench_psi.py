"""ECDH-PSI benchmark: the group's own cost (the ceiling) and the whole protocol, in one run.

Kernel rows, measured in this process as CPU time (``time.process_time``), each the median of five
timed calls after a warm-up call:

- ``x25519_scalar_mult``: ``bund.compute.psi.blind`` over distinct points (OpenSSL X25519).
- ``hash_to_group``: ``bund.compute.psi.hash_to_points`` (SHA-512 + x-only Elligator 2 in gmpy2).
- ``hash_to_group_libsodium``: for comparison, the route not taken: libsodium's
  ``crypto_core_ed25519_from_uniform`` plus the Edwards-to-Montgomery inversion.
- ``validate_points``: ``bund.compute.psi.validate_points`` on a received payload.
- ``ceiling``: ``1 / (t_hash + 2 * t_mult)`` elements per second per party: one hash and two
  scalar multiplications per element, the cost no PSI framework on this group can go below.

Protocol rows: intersection mode, both parties receivers (the most work: each also validates and
matches the returned set), sets of n ids each overlapping by half. The two members run
``bund.parties.protocols.psi.run_member`` in two spawned processes, so each can have a core, over
the real ``RoleContext`` and ``Mailbox`` with a ``multiprocessing`` pipe as the transport. Each
process reports its own CPU time for the whole role (normalisation, hashing, blinding, sorting,
chunking, transport, validation, re-blinding, matching); ``elements_per_s_per_party`` is n over the
larger of the two CPU times, and ``fraction_of_ceiling`` compares it with the ceiling measured
again in this process just before and just after that run (their mean; both are in the row, with the
rates they came from).
CPU time rather than wall time keeps the figure meaningful on a shared machine; wall time is
reported too.

The bucketed row (``bucketed_intersection_two_receivers``) runs each member as a node does at
scale: ids streamed from a CSV file, the peer's messages spooled to a sealed on-disk journal,
buckets in files; it adds each member's peak RSS, and by how much that peak grew in each phase
(``setup``: the process and its dataset opened, then ``blind``, ``reblind``, ``match``,
``join`` and ``result``, the common ids written): what grows with the set shows there.
With ``--executor SPEC`` each member's kernels run on that executor, and the row splits its CPU
into the node process and its workers. With ``--bucket-points P`` each member aims at buckets of
``P`` points (``psi_bucket_points``, 2^20 by default): a set of 10^6 ids then spans several
buckets, which shows the memory bound.

The audit row (only with ``--audit-overhead N``): what write-ahead auditing costs the node job at
N ids, measured in one run: the latency of one durable append through the real store and log on
the same disk, each node's durable appends during the job (traced by ``benchmarks.audit_node``,
counted again in its ``audit.db``), their share of the job's wall time and of the node's CPU
time, and the job's wall and CPU time with the audit store's sync switched off, as a ratio
(:func:`measure_audit_overhead`).

Run: ``python -m benchmarks.bench_psi [--quick] [--json FILE] [--bucketed-n N] [--executor SPEC]
[--bucket-points P] [--only-bucketed]``, or
``python -m benchmarks.bench_psi --audit-overhead 100000 [--pairs 3] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import hashlib
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import gmpy2
from nacl.bindings import crypto_core_ed25519_from_uniform

from bund.compute import psi
from bund.compute.executor import create_executor
from bund.parties.data import DataSource, Table, open_source
from bund.parties.jobs import JobSpec, Participant, RoleContext, new_job_id
from bund.parties.protocols.psi import LIMIT_MAX_SET_SIZE, run_member
from bund.parties.resume import ResumeStore
from bund.parties.transport import Mailbox

_PARTIES = ("bank", "tax")
_CONTEXT = bytes(32)


def _ids(party: str, n: int) -> list[str]:
    """USCC-like 18-character ids; the two parties' sets overlap in n // 2 ids."""
    start = 0 if party == _PARTIES[0] else n - n // 2
    return [f"91310000{i:010d}" for i in range(start, start + n)]


def _cpu_rate(fn: Callable[[], object], count: int, repeats: int = 5) -> float:
    """Median of ``repeats`` CPU-time rates after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return count / statistics.median(times)


def _libsodium_hash(items: list[bytes], context: bytes) -> list[bytes]:
    """The hash route not taken: libsodium's map (cofactor cleared), then u = (1+y)/(1-y)."""
    p, mask = psi.FIELD_PRIME, (1 << 255) - 1
    out = []
    for item in items:
        prefix = psi.HASH_DOMAIN + bytes([len(context)]) + context
        r = hashlib.sha512(prefix + item).digest()[:32]
        y = int.from_bytes(crypto_core_ed25519_from_uniform(r), "little") & mask
        u = (1 + y) * gmpy2.invert(1 - y, p) % p
        out.append(int(u).to_bytes(32, "little"))
    return out


def _group_costs(samples: int) -> tuple[float, float]:
    """CPU seconds of one hash to the group and of one scalar multiplication."""
    items = [s.encode() for s in _ids("bank", samples)]
    points = psi.hash_to_points(items, _CONTEXT)
    key = psi.create_blinding_key()
    t_hash = 1 / _cpu_rate(lambda: psi.hash_to_points(items, _CONTEXT), samples)
    t_mult = 1 / _cpu_rate(lambda: psi.blind(points, key), samples)
    return t_hash, t_mult


def measure_kernels(samples: int) -> list[dict[str, Any]]:
    """Rates of the group operations, and the ceiling they imply."""
    context = _CONTEXT
    items = [s.encode() for s in _ids("bank", samples)]
    points = psi.hash_to_points(items, context)
    key = psi.create_blinding_key()
    t_hash, t_mult = _group_costs(samples)
    t_sodium = 1 / _cpu_rate(lambda: _libsodium_hash(items, context), samples)
    payload = b"".join(psi.blind(points, key))
    t_valid = 1 / _cpu_rate(lambda: psi.validate_points(payload, samples), samples)
    params = {"samples": samples}
    rows = [
        ("x25519_scalar_mult", t_mult),
        ("hash_to_group", t_hash),
        ("hash_to_group_libsodium", t_sodium),
        ("validate_points", t_valid),
        ("ceiling", t_hash + 2 * t_mult),
    ]
    return [
        {"family": "psi", "kernel": kernel, "params": params, "ops_per_s": 1 / t}
        for kernel, t in rows
    ]


class _PipeTransport:
    """Delivers a job's messages to the other process over one end of a pipe."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def deliver(self, job_id: str, to: str, tag: str, payload: bytes) -> None:
        self._conn.send((job_id, tag, payload))


class _NoSink:
    """A ``MessageSink`` that records nothing: the protocol rows run without an audit log."""

    def message(
        self,
        job_id: str,
        direction: str,
        peer: str,
        tag: str,
        sha256: str,
        size: int,
        in_transcript: bool = True,
    ) -> None:
        pass

    def replayed(
        self, job_id: str, direction: str, peer: str, tag: str, sha256: str, size: int
    ) -> None:
        pass

    def undelivered(self, job_id: str, peer: str, tag: str, sha256: str, size: int) -> None:
        pass

    def record(self, job_id: str, event: str, fields: Mapping[str, object]) -> None:
        pass

    def progress(self, job_id: str, phase: str, done: int, total: int) -> None:
        pass


class _PhaseSink(_NoSink):
    """A ``_NoSink`` that notes in which phase the member's peak RSS grew (``ctx.progress``).

    The role reports progress after each chunk or bucket of its phases (``blind``,
    ``reblind``, ``match``, ``join``, ``result``); growth of the peak between two reports is put
    on the phase of the earlier one.
    """

    def __init__(self) -> None:
        self.phase = "setup"
        self.grew: dict[str, float] = {}
        self._peak = _peak_rss_mib()

    def progress(self, job_id: str, phase: str, done: int, total: int) -> None:
        self.note(phase)

    def note(self, phase: str) -> None:
        """Put the peak's growth since the last note on the phase until now; enter ``phase``."""
        peak = _peak_rss_mib()
        if peak > self._peak:
            self.grew[self.phase] = round(self.grew.get(self.phase, 0.0) + peak - self._peak, 1)
            self._peak = peak
        self.phase = phase


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _party_main(
    spec: JobSpec,
    party: str,
    n: int,
    inbox: Connection,
    outbox: Connection,
    results: Any,
    home: Path | None = None,
    executor_spec: str = "inline",
    bucket_points: int | None = None,
) -> None:
    """One member in its own process: pump the pipe into a mailbox, run the role, report CPU.

    With ``home`` the member runs as a node would at scale: its ids streamed from a CSV file
    in ``home``, the peer's messages spooled to a sealed on-disk journal, its buckets spilled
    to a scratch directory (``psi_spill_rows = 0``); it also reports its peak RSS.
    """
    peer = next(p for p in spec.parties if p != party)
    limits: dict[str, int] = {LIMIT_MAX_SET_SIZE: n}
    store: ResumeStore | None = None
    if home is None:
        table = Table.from_columns(party, {"id": _ids(party, n)})
    else:
        table = open_source(DataSource("csv", home / f"{party}.csv"), party)
        store = ResumeStore(home / f"{party}-state" / "resume.db", os.urandom(32))
        limits["psi_spill_rows"] = 0
        if bucket_points is not None:
            limits["psi_bucket_points"] = bucket_points
    mailbox = Mailbox(max_payload=64 << 20, journal=store)
    executor = create_executor(executor_spec)

    def pump() -> None:
        while True:
            try:
                job_id, tag, payload = inbox.recv()
            except EOFError:
                return
            mailbox.put(job_id, peer, tag, payload)

    threading.Thread(target=pump, daemon=True).start()
    sink = _PhaseSink()
    ctx = RoleContext(
        spec,
        party,
        _PipeTransport(outbox),
        mailbox,
        lambda: table,
        limits,
        sink,
        3600.0,
        states=store,
        executor=executor,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_member(ctx)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    sink.note("done")
    executor.close()  # its worker processes are reaped, so their CPU time is counted below
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    size = result.summary["intersection_size"] if result else None
    rss = _peak_rss_mib()
    results.put(
        {
            "party": party,
            "rss_growth_mib_by_phase": sink.grew,
            "cpu_s": cpu,
            "worker_cpu_s": children.ru_utime + children.ru_stime,
            "wall_s": wall,
            "intersection_size": size,
            "rss_mib": rss,
        }
    )
    outbox.close()


def measure_protocol(
    n: int,
    samples: int,
    bucketed: bool = False,
    executor: str = "inline",
    bucket_points: int | None = None,
) -> dict[str, Any]:
    """Run both members at n ids each in two processes, between two measurements of the ceiling.

    This machine's speed drifts by a few per cent over minutes, so the ceiling for the fraction
    is the mean of the group costs measured just before and just after the run. ``bucketed``
    runs each member as at scale (see :func:`_party_main`): streamed CSV, spooled inbox,
    spilled buckets; the row then reports each member's peak RSS.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bund-bench-psi-") as tmp:
        home = Path(tmp) if bucketed else None
        if home is not None:
            for party in _PARTIES:
                _write_ids(home / f"{party}.csv", party, n)
        return _measure_protocol(n, samples, home, executor, bucket_points)


def _write_ids(path: Path, party: str, n: int) -> None:
    """A one-column CSV of ``_ids(party, n)``, written in slices (10^7 rows: 190 MB)."""
    start = 0 if party == _PARTIES[0] else n - n // 2
    with path.open("w", encoding="utf-8") as f:
        f.write("id\n")
        for lo in range(start, start + n, 1 << 20):
            hi = min(lo + (1 << 20), start + n)
            f.write("".join(f"91310000{i:010d}\n" for i in range(lo, hi)))


def _measure_protocol(
    n: int,
    samples: int,
    home: Path | None,
    executor: str = "inline",
    bucket_points: int | None = None,
) -> dict[str, Any]:
    before = _group_costs(samples)
    spec = JobSpec(
        protocol="psi",
        participants=tuple(Participant(p, "member", p, {"id": "id"}) for p in _PARTIES),
        receivers=_PARTIES,
        purpose="benchmark",
        requester=_PARTIES[0],
        params={"mode": "intersection"},
        job_id=new_job_id(),
    )
    ctx = mp.get_context("spawn")
    to_tax_r, to_tax_w = ctx.Pipe(duplex=False)
    to_bank_r, to_bank_w = ctx.Pipe(duplex=False)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_party_main,
            args=(spec, "bank", n, to_bank_r, to_tax_w, results, home, executor, bucket_points),
        ),
        ctx.Process(
            target=_party_main,
            args=(spec, "tax", n, to_tax_r, to_bank_w, results, home, executor, bucket_points),
        ),
    ]
    wall = time.perf_counter()
    for proc in procs:
        proc.start()
    reports = {r["party"]: r for r in (results.get(timeout=4 * 3600) for _ in procs)}
    for proc in procs:
        proc.join()
    wall = time.perf_counter() - wall
    after = _group_costs(samples)
    t_hash, t_mult = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
    ceiling = 1 / (t_hash + 2 * t_mult)
    if any(r["intersection_size"] != n // 2 for r in reports.values()):
        raise RuntimeError(f"wrong intersection size at n={n}: {reports}")
    rate = n / max(r["cpu_s"] + r["worker_cpu_s"] for r in reports.values())
    kernel = "protocol_intersection_two_receivers"
    extra: dict[str, Any] = {}
    if home is not None:
        kernel = "bucketed_intersection_two_receivers"
        extra = {
            "party_peak_rss_mib": {p: round(r["rss_mib"], 1) for p, r in reports.items()},
            "party_peak_rss_growth_mib_by_phase": {
                p: r["rss_growth_mib_by_phase"] for p, r in reports.items()
            },
        }
    if executor != "inline":
        kernel += f"@{executor}"
        extra["party_node_cpu_us_per_id"] = {p: 1e6 * r["cpu_s"] / n for p, r in reports.items()}
        extra["party_worker_cpu_us_per_id"] = {
            p: 1e6 * r["worker_cpu_s"] / n for p, r in reports.items()
        }
    return {
        **extra,
        "family": "psi",
        "kernel": kernel,
        "params": {
            "n": n,
            "mode": "intersection",
            "receivers": 2,
            "overlap": n // 2,
            **({"bucket_points": bucket_points} if bucket_points is not None else {}),
        },
        "ops_per_s": rate,
        "elements_per_s_per_party": rate,
        "ceiling_elements_per_s": ceiling,
        "ceiling_before_after": [1 / (h + 2 * m) for h, m in (before, after)],
        "scalar_mults_per_s": 1 / t_mult,
        "hashes_per_s": 1 / t_hash,
        "fraction_of_ceiling": rate / ceiling,
        "party_cpu_s": {p: r["cpu_s"] for p, r in sorted(reports.items())},
        "party_wall_s": {p: r["wall_s"] for p, r in sorted(reports.items())},
        "elements_per_s_per_party_wall": n / max(r["wall_s"] for r in reports.values()),
        "job_wall_s_with_process_start": wall,
    }


@dataclass(frozen=True)
class _NodeJob:
    """One PSI job between two node processes, as the harness saw it.

    Attributes:
        job_id: the job's id.
        wall_s: from the bank operator's submission until both nodes reported it succeeded.
        window_unix: (start, end) of that span by ``time.time()``, to compare with audit records.
        window_monotonic: the same span by ``time.monotonic()``, to compare with node traces.
        party_cpu_s: each node process's CPU seconds (user + system) during the span.
        homes: each party's node directory (``node.toml``, ``state/audit.db``).
    """

    job_id: str
    wall_s: float
    window_unix: tuple[float, float]
    window_monotonic: tuple[float, float]
    party_cpu_s: dict[str, float]
    homes: dict[str, Path]


def _process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a live process, from ``/proc/<pid>/stat``."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = stat[stat.rindex(")") + 2 :].split()  # the fields after the command's name
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _node_job(root: Path, n: int, command: Sequence[str] | None = None) -> _NodeJob:
    """Set up two parties under ``root`` and run one n-id PSI job between their node processes.

    Args:
        root: an empty directory for the federation, the data and the two nodes.
        n: ids per party (half of them shared).
        command: the server command (``BUND_SERVE`` when None); the node.toml path is appended.

    Raises:
        RuntimeError: the job did not succeed at both nodes, or found the wrong intersection.
    """
    from bund.parties import identity
    from bund.parties.client import NodeClient
    from bund.parties.config import load_config, operator_of
    from bund.parties.data import write_csv
    from bund.parties.demo import DemoParty, node_files
    from bund.parties.follow import follow_job
    from bund.parties.processes import BUND_SERVE, NodeGroup, write_node_files

    identity.create_federation(root / "federation", "bench")
    parties = [DemoParty(p, p, "ids", f"{p}.csv", "id") for p in _PARTIES]
    paths, configs = {}, {}
    for party in parties:
        table = Table.from_columns("ids", {"id": _ids(party.name, n)})
        write_csv(table, root / "data" / party.csv)
        identity.create_party(root / "federation", party.name, party.role, root / party.name)
        others = [p for p in parties if p is not party]
        # Approvals off: the benchmark times the machines, not a person's signature.
        files = node_files(root, party, root / "data", others, root / "peers.toml", False)
        paths[party.name] = write_node_files(files)
        configs[party.name] = load_config(paths[party.name])
    with NodeGroup(root / "peers.toml") as group:
        ports = group.spawn_all(paths, command=BUND_SERVE if command is None else command)
        pids = {p: group.processes[p].pid for p in _PARTIES}
        spec = JobSpec(
            protocol="psi",
            participants=tuple(Participant(p, "member", "ids", {"id": "id"}) for p in _PARTIES),
            receivers=_PARTIES,
            purpose="benchmark",
            requester=_PARTIES[0],
            params={"mode": "intersection"},
        )
        clients = {  # each party's operator credential, from `party init`
            p: NodeClient(f"127.0.0.1:{ports[p]}", p, operator_of(configs[p]).tls) for p in _PARTIES
        }
        try:
            cpu = {p: _process_cpu_s(pid) for p, pid in pids.items()}
            unix, mono, wall = time.time(), time.monotonic(), time.perf_counter()
            job_id = clients["bank"].submit(spec)
            statuses = {
                p: follow_job(c, job_id, timeout=600, interval=0.1) for p, c in clients.items()
            }
            wall = time.perf_counter() - wall
            window_unix, window_mono = (unix, time.time()), (mono, time.monotonic())
            cpu = {p: _process_cpu_s(pid) - cpu[p] for p, pid in pids.items()}
            summary = clients["bank"].result(job_id).summary
        finally:
            for c in clients.values():
                c.close()
    if any(st.state.value != "succeeded" for st in statuses.values()):
        raise RuntimeError(f"node job failed at n={n}: {statuses}")
    if summary["intersection_size"] != n // 2:
        raise RuntimeError(f"wrong intersection size at n={n}: {summary}")
    homes = {p: path.parent for p, path in paths.items()}
    return _NodeJob(job_id, wall, window_unix, window_mono, cpu, homes)


def measure_nodes(n: int, samples: int) -> dict[str, Any]:
    """The whole job between two `bund serve` processes over mTLS gRPC, timed by wall clock.

    From the bank operator's submission to SUCCEEDED at both nodes: proposal, acceptance,
    the protocol with every message through the gRPC mailbox, audit records for every message
    (SQLite, synchronous=FULL) and the closing exchange. Each node has one core of its own.
    """
    import tempfile

    before = _group_costs(samples)
    with tempfile.TemporaryDirectory(prefix="bund-bench-psi-") as tmp:
        wall = _node_job(Path(tmp), n).wall_s
    after = _group_costs(samples)
    t_hash, t_mult = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
    ceiling = 1 / (t_hash + 2 * t_mult)
    rate = n / wall
    return {
        "family": "psi",
        "kernel": "job_over_mtls_nodes",
        "params": {"n": n, "mode": "intersection", "receivers": 2, "overlap": n // 2},
        "ops_per_s": rate,
        "elements_per_s_per_party": rate,
        "ceiling_elements_per_s": ceiling,
        "fraction_of_ceiling": rate / ceiling,
        "job_wall_s": wall,
    }


def append_latency(path: Path, count: int, relaxed: bool) -> tuple[float, float]:
    """Median wall and thread-CPU seconds of one ``AuditLog.append`` to a new ``audit.db``.

    Each append is a ``message_sent`` record like the node's (peer, tag, sha256, size): chained,
    signed and committed through the real :class:`SqliteAuditStore`, which syncs it to disk
    (``synchronous = FULL``) unless ``relaxed`` (the benchmark-only ``synchronous = OFF``).
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from benchmarks.audit_node import RelaxedSqliteAuditStore
    from bund.parties.audit import AuditLog, SqliteAuditStore
    from bund.parties.audit.records import JsonScalar

    def clock() -> str:
        return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    store = (RelaxedSqliteAuditStore if relaxed else SqliteAuditStore)(path)
    walls, cpus = [], []
    try:
        log = AuditLog(store, Ed25519PrivateKey.generate(), "bank", clock)
        sha = hashlib.sha256(b"payload").hexdigest()
        for i in range(count + 5):  # five warm-up appends
            fields: dict[str, JsonScalar] = {
                "peer": "tax",
                "tag": f"psi/blinded/{i}",
                "sha256": sha,
                "size": 1 << 20,
            }
            wall, cpu = time.perf_counter(), time.thread_time()
            log.append("message_sent", "job-latency", fields)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.thread_time() - cpu)
    finally:
        store.close()
    return statistics.median(walls[5:]), statistics.median(cpus[5:])


def _audit_at_node(job: _NodeJob, party: str, latency_s: float) -> dict[str, Any]:
    """What one node's audit cost during ``job``: its ``audit.db`` records and its append trace.

    Its shares: ``durable appends x latency_s`` (one durable append measured in this run) and the
    traced appends' wall time, over the job's wall time; the appends' CPU time over the node's.
    Records counted are the job's and the node-level ones (no job id) stamped within the job's
    span; traced appends are the node's ``AuditLog`` calls that began within it, each one durable
    commit (a group commit holds several records).
    """
    from benchmarks.audit_node import TRACE_FILE
    from bund.parties.audit import SqliteAuditStore
    from bund.parties.audit.records import parse_timestamp

    home = job.homes[party]
    with SqliteAuditStore(home / "state" / "audit.db", read_only=True) as store:
        records = store.read()
    start, end = job.window_unix
    of_job = [r for r in records if r.job_id == job.job_id]
    node_level = [
        r
        for r in records
        if not r.job_id and start <= parse_timestamp(r.timestamp).timestamp() <= end
    ]
    events = collections.Counter(r.event for r in of_job + node_level)
    trace = json.loads((home / TRACE_FILE).read_text(encoding="utf-8"))
    lo, hi = job.window_monotonic
    calls = [t for t in trace["appends"] if lo <= t["start"] <= hi]
    append_wall, append_cpu = sum(t["wall_s"] for t in calls), sum(t["cpu_s"] for t in calls)
    cpu = job.party_cpu_s[party]
    return {
        "records_of_job": len(of_job),
        "records_node_level": len(node_level),
        "events": dict(sorted(events.items())),
        "durable_appends": len(calls),
        "traced_records": sum(t["records"] for t in calls),
        "append_wall_s": append_wall,
        "append_cpu_s": append_cpu,
        "process_cpu_s": cpu,
        "share_of_wall_by_latency": len(calls) * latency_s / job.wall_s,
        "share_of_wall_traced": append_wall / job.wall_s,
        "share_of_cpu": append_cpu / cpu if cpu else None,
    }


def measure_audit_overhead(n: int, pairs: int = 2, latency_appends: int = 300) -> dict[str, Any]:
    """What write-ahead auditing costs a two-node PSI job of n ids, measured in one run.

    In one temporary directory (one disk): the median latency of a durable append through the
    real store and log (and of a relaxed one); then ``pairs`` pairs of the node job, ordered
    full, relaxed, relaxed, full, ... so that drift falls on both sides. Every node runs
    ``benchmarks.audit_node``: ``bund serve`` with each audit append timed, and in the relaxed
    runs the audit store's ``synchronous = OFF``. Per party, from the full runs: the records the
    job left in ``audit.db``, the durable appends, their share of the job's wall time
    (``appends x median latency / wall``, and the traced sum of the appends' wall times) and of the
    node's CPU time (``/proc``). ``ratio_full_vs_relaxed`` is the mean wall time of the full jobs
    over that of the relaxed ones; ``cpu_ratio_full_vs_relaxed`` the same for the two nodes' CPU
    seconds, which a shared machine's load disturbs less.
    """
    import tempfile

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bund-bench-audit-") as tmp:
        root = Path(tmp)
        latency_full = append_latency(root / "latency-full.db", latency_appends, relaxed=False)
        latency_relaxed = append_latency(root / "latency-off.db", latency_appends, relaxed=True)
        order = [m for i in range(pairs) for m in (("full", "relaxed"), ("relaxed", "full"))[i % 2]]
        for i, mode in enumerate(order):
            command = (sys.executable, "-m", "benchmarks.audit_node", mode)
            job = _node_job(root / f"run{i}-{mode}", n, command)
            at = {p: _audit_at_node(job, p, latency_full[0]) for p in _PARTIES}
            runs.append({"mode": mode, "job_wall_s": job.wall_s, "parties": at})
    full = [r["job_wall_s"] for r in runs if r["mode"] == "full"]
    relaxed = [r["job_wall_s"] for r in runs if r["mode"] == "relaxed"]
    cpu = {
        mode: statistics.mean(
            sum(a["process_cpu_s"] for a in r["parties"].values())
            for r in runs
            if r["mode"] == mode
        )
        for mode in ("full", "relaxed")
    }
    first_full = next(r for r in runs if r["mode"] == "full")
    ratio = statistics.mean(full) / statistics.mean(relaxed)
    return {
        "family": "psi",
        "kernel": "audit_overhead_nodes",
        "params": {"n": n, "mode": "intersection", "pairs": pairs, "order": order},
        "ops_per_s": n / statistics.mean(full),
        "append_latency_s": latency_full[0],
        "append_cpu_s": latency_full[1],
        "append_latency_relaxed_s": latency_relaxed[0],
        "append_cpu_relaxed_s": latency_relaxed[1],
        "job_wall_full_s": full,
        "job_wall_relaxed_s": relaxed,
        "ratio_full_vs_relaxed": ratio,
        "overhead_fraction": ratio - 1,
        "cpu_ratio_full_vs_relaxed": cpu["full"] / cpu["relaxed"],
        "parties": first_full["parties"],
        "runs": runs,
    }


def run(quick: bool, bucketed_n: int | None = None) -> list[dict[str, Any]]:
    """Measure the kernels and the ceiling, then the protocol at 10^3-10^4 (quick) or 10^4-10^6.

    Then the same protocol at scale, bucketed (10^4 quick; 10^6, or ``bucketed_n``), and the
    job between two node processes over mTLS gRPC (10^3 quick; 10^4 to 10^6).
    """
    samples = 5_000 if quick else 20_000
    rows = measure_kernels(samples)
    for n in (10**3, 10**4) if quick else (10**4, 10**5, 10**6):
        rows.append(measure_protocol(n, samples))
    rows.append(measure_protocol(bucketed_n or (10**4 if quick else 10**6), samples, True))
    for n in (10**3,) if quick else (10**4, 10**5, 10**6):
        rows.append(measure_nodes(n, samples))
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    table = RichTable(title="ECDH-PSI (X25519), per core; CPU-time rates")
    for column in ("kernel", "params", "ops/s", "elements/s/party", "of ceiling"):
        table.add_column(column, justify="left" if column in ("kernel", "params") else "right")
    for r in rows:
        per_party = r.get("elements_per_s_per_party")
        fraction = r.get("fraction_of_ceiling")
        table.add_row(
            r["kernel"],
            " ".join(f"{k}={v}" for k, v in r["params"].items()),
            f"{r['ops_per_s']:,.0f}",
            "" if per_party is None else f"{per_party:,.0f}",
            "" if fraction is None else f"{fraction:.1%}",
        )
    Console(width=140).print(table)


def _print_audit(row: dict[str, Any]) -> None:
    """The audit overhead row in words: latency, per-party shares, the paired ratio."""
    from rich.console import Console

    console = Console(width=140)
    console.print(
        f"write-ahead audit at n={row['params']['n']}: one durable append "
        f"{row['append_latency_s'] * 1e3:.2f} ms wall, {row['append_cpu_s'] * 1e3:.3f} ms CPU "
        f"(synchronous=OFF: {row['append_latency_relaxed_s'] * 1e3:.3f} ms)"
    )
    for party, a in row["parties"].items():
        console.print(
            f"  {party}: {a['records_of_job']} job records + {a['records_node_level']} node-level, "
            f"{a['durable_appends']} durable appends; share of the job's wall "
            f"{a['share_of_wall_by_latency']:.2%} (appends x latency), "
            f"{a['share_of_wall_traced']:.2%} (traced); "
            f"CPU {a['append_cpu_s']:.3f} of {a['process_cpu_s']:.2f} s ({a['share_of_cpu']:.2%})"
        )
    full = ", ".join(f"{w:.2f}" for w in row["job_wall_full_s"])
    relaxed = ", ".join(f"{w:.2f}" for w in row["job_wall_relaxed_s"])
    console.print(
        f"  job wall full [{full}] s, relaxed [{relaxed}] s: "
        f"ratio full/relaxed {row['ratio_full_vs_relaxed']:.3f} "
        f"(both nodes' CPU seconds: {row['cpu_ratio_full_vs_relaxed']:.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^3 and 10^4 elements only")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    parser.add_argument(
        "--bucketed-n", type=int, metavar="N", help="ids per member of the bucketed run (10^7)"
    )
    parser.add_argument(
        "--only-bucketed", action="store_true", help="the ceiling and the bucketed run only"
    )
    parser.add_argument(
        "--executor",
        default="inline",
        help="each member's executor in the bucketed run, e.g. process:1: the row then splits "
        "each member's CPU into its node process (serial) and its workers (parallel)",
    )
    parser.add_argument(
        "--bucket-points",
        type=int,
        metavar="P",
        help="points per bucket in the bucketed run (psi_bucket_points; default 2^20)",
    )
    parser.add_argument(
        "--audit-overhead",
        type=int,
        metavar="N",
        help="only the write-ahead audit overhead row, at N ids per party",
    )
    parser.add_argument(
        "--pairs", type=int, default=2, help="full/relaxed job pairs of --audit-overhead"
    )
    args = parser.parse_args()
    if args.audit_overhead is not None:
        rows = [measure_audit_overhead(args.audit_overhead, args.pairs)]
        _print_audit(rows[0])
    elif args.only_bucketed:
        samples = 20_000
        rows = measure_kernels(samples)
        n = args.bucketed_n or 10**6
        rows.append(measure_protocol(n, samples, True, args.executor, args.bucket_points))
        _print_table(rows)
    else:
        rows = run(args.quick, args.bucketed_n)
        _print_table(rows)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
