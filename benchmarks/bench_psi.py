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
buckets in files; it adds each member's peak RSS. With ``--executor SPEC`` each member's kernels
run on that executor, and the row splits its CPU into the node process and its workers. With
``--bucket-points P`` each member aims at buckets of ``P`` points (``psi_bucket_points``, 2^20 by
default): a set of 10^6 ids then spans several buckets, which shows the memory bound.

Run: ``python -m benchmarks.bench_psi [--quick] [--json FILE] [--bucketed-n N] [--executor SPEC]
[--bucket-points P] [--only-bucketed]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable, Mapping
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
    def message(
        self,
        job_id: str,
        direction: str,
        peer: str,
        tag: str,
        sha: str,
        n: int,
        in_transcript: bool = True,
    ) -> None:
        pass

    def replayed(self, job_id: str, direction: str, peer: str, tag: str, sha: str, n: int) -> None:
        pass

    def undelivered(self, job_id: str, peer: str, tag: str, sha: str, n: int) -> None:
        pass

    def record(self, job_id: str, event: str, fields: Mapping[str, object]) -> None:
        pass

    def progress(self, job_id: str, phase: str, done: int, total: int) -> None:
        pass


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
    ctx = RoleContext(
        spec,
        party,
        _PipeTransport(outbox),
        mailbox,
        lambda: table,
        limits,
        _NoSink(),
        3600.0,
        states=store,
        executor=executor,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_member(ctx)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    executor.close()  # its worker processes are reaped, so their CPU time is counted below
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    size = result.summary["intersection_size"] if result else None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results.put(
        {
            "party": party,
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
        extra = {"party_peak_rss_mib": {p: round(r["rss_mib"], 1) for p, r in reports.items()}}
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


def measure_nodes(n: int, samples: int) -> dict[str, Any]:
    """The whole job between two `bund serve` processes over mTLS gRPC, timed by wall clock.

    From the bank operator's submission to SUCCEEDED at both nodes: proposal, acceptance,
    the protocol with every message through the gRPC mailbox, audit records for every message
    (SQLite, synchronous=FULL) and the closing exchange. Each node has one core of its own.
    """
    import tempfile

    from bund.parties import identity
    from bund.parties.client import NodeClient
    from bund.parties.config import load_config, operator_of
    from bund.parties.data import write_csv
    from bund.parties.demo import DemoParty, node_files
    from bund.parties.follow import follow_job
    from bund.parties.processes import NodeGroup, write_node_files

    before = _group_costs(samples)
    with tempfile.TemporaryDirectory(prefix="bund-bench-psi-") as tmp:
        root = Path(tmp)
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
            ports = group.spawn_all(paths)
            spec = JobSpec(
                protocol="psi",
                participants=tuple(Participant(p, "member", "ids", {"id": "id"}) for p in _PARTIES),
                receivers=_PARTIES,
                purpose="benchmark",
                requester=_PARTIES[0],
                params={"mode": "intersection"},
            )
            clients = {  # each party's operator credential, from `party init`
                p: NodeClient(f"127.0.0.1:{ports[p]}", p, operator_of(configs[p]).tls)
                for p in _PARTIES
            }
            try:
                wall = time.perf_counter()
                job_id = clients["bank"].submit(spec)
                statuses = {
                    p: follow_job(c, job_id, timeout=600, interval=0.1) for p, c in clients.items()
                }
                wall = time.perf_counter() - wall
                summary = clients["bank"].result(job_id).summary
            finally:
                for c in clients.values():
                    c.close()
    if any(st.state.value != "succeeded" for st in statuses.values()):
        raise RuntimeError(f"node job failed at n={n}: {statuses}")
    if summary["intersection_size"] != n // 2:
        raise RuntimeError(f"wrong intersection size at n={n}: {summary}")
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
    args = parser.parse_args()
    if args.only_bucketed:
        samples = 20_000
        rows = measure_kernels(samples)
        n = args.bucketed_n or 10**6
        rows.append(measure_protocol(n, samples, True, args.executor, args.bucket_points))
    else:
        rows = run(args.quick, args.bucketed_n)
    _print_table(rows)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
