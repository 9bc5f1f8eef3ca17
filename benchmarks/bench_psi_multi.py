"""Multi-party PSI benchmark: each role's rate per core, against two-party ECDH-PSI in the same run.

Kernel rows, in this process as CPU time (``time.process_time``), each the median of five timed
calls after a warm-up call, per id:

- ``x25519_scalar_mult`` and ``hash_to_group``: as in ``bench_psi``.
- ``okvs_encode`` and ``okvs_decode``: ``bund.compute.okvs`` at the protocol's shape (16-byte
  values, 1.6 cells per key, a band of 55 to 65 bits).
- ``zero_shares`` (one pair key) and ``oprf_values``: the BLAKE2b PRFs of ``bund.compute.mpsi``.
- ``ceiling_leader`` = ``1/(t_hash + (1 + m)·t_mult)`` and ``ceiling_member`` =
  ``1/(t_hash + 2·t_mult)``: the group operations each role cannot avoid (the leader blinds its
  ids once and unblinds each of ``m`` members' answers; a member evaluates its own ids and
  answers the leader's), against the two-party ``1/(t_hash + 2·t_mult)`` of ``bench_psi``.

Protocol rows: ``psi_multi`` with one leader and ``m`` members, ``n`` ids each, every role in its
own spawned process over the real ``RoleContext`` and ``Mailbox`` (a ``multiprocessing`` pipe per
ordered pair of parties as the transport). The sets are the leader's ``[0, n)`` and member ``i``'s
``[i·n/(2m), i·n/(2m) + n)``, so the full intersection is ``n/2`` ids and every pairwise one is
larger. Each process reports its own CPU time for the whole role; ``rate_per_core`` is ``n`` over
it. The same run then times two-party ECDH-PSI (``psi``, both members receivers, half the ids
shared) the same way at the same ``n``, and each role's ``vs_two_party`` is its rate over that
one.

Run: ``python -m benchmarks.bench_psi_multi [--quick] [--json FILE]`` (quick: 10^3 and 10^4
ids; full: 10^5 and 10^6, three parties, and four parties at 10^5).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from bund.compute import mpsi, okvs, psi
from bund.parties.data import Table
from bund.parties.jobs import JobSpec, Participant, RoleContext, new_job_id
from bund.parties.protocols import PROTOCOLS
from bund.parties.protocols.psi import LIMIT_MAX_SET_SIZE
from bund.parties.transport import Mailbox

_PARTIES = ("bank", "tax", "registry", "insurer")
_CONTEXT = bytes(32)


def _ids(index: int, members: int, n: int) -> list[str]:
    """Party ``index``'s ids (0: the leader); the full intersection is ``[n/2, n)``."""
    start = 0 if index == 0 else index * n // (2 * members)
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


def _group_costs(samples: int) -> tuple[float, float]:
    """CPU seconds of one hash to the group and of one X25519 scalar multiplication."""
    items = [s.encode() for s in _ids(0, 2, samples)]
    points = psi.hash_to_points(items, _CONTEXT)
    key = psi.create_blinding_key()
    t_hash = 1 / _cpu_rate(lambda: psi.hash_to_points(items, _CONTEXT), samples)
    return t_hash, 1 / _cpu_rate(lambda: psi.blind(points, key), samples)


def measure_kernels(samples: int) -> list[dict[str, Any]]:
    """Per-id rates of the kernels the roles run, and each role's group-operation ceiling."""
    items = [s.encode() for s in _ids(0, 2, samples)]
    points = psi.hash_to_points(items, _CONTEXT)
    t_hash, t_mult = _group_costs(samples)
    values = np.frombuffer(os.urandom(16 * samples), "<u8").reshape(-1, 2).astype(np.uint64)
    params = okvs.okvs_params(samples, bytes(16))
    fill = os.urandom(16 * params.columns)
    table = okvs.encode(items, values, params, fill)
    seed = os.urandom(32)
    rate = _cpu_rate
    rows: list[tuple[str, float, dict[str, Any]]] = [
        ("x25519_scalar_mult", t_mult, {}),
        ("hash_to_group", t_hash, {}),
        ("okvs_encode", 1 / rate(lambda: okvs.encode(items, values, params, fill), samples), {}),
        ("okvs_decode", 1 / rate(lambda: okvs.decode(table, items, params), samples), {}),
        ("zero_shares", 1 / rate(lambda: mpsi.zero_shares(items, [seed]), samples), {}),
        ("oprf_values", 1 / rate(lambda: mpsi.oprf_values(items, points), samples), {}),
        ("ceiling_two_party", t_hash + 2 * t_mult, {}),
        ("ceiling_member", t_hash + 2 * t_mult, {"members": 2}),
        ("ceiling_leader", t_hash + 3 * t_mult, {"members": 2}),
        ("ceiling_leader", t_hash + 4 * t_mult, {"members": 3}),
    ]
    return [
        {
            "family": "psi_multi",
            "kernel": kernel,
            "params": {"samples": samples, "okvs_width": params.width, **extra},
            "ops_per_s": 1 / t,
        }
        for kernel, t, extra in rows
    ]


class _PipeTransport:
    """Delivers a job's messages to each other process over that pair's pipe."""

    def __init__(self, conns: Mapping[str, Connection]) -> None:
        self._conns = conns

    def deliver(self, job_id: str, to: str, tag: str, payload: bytes) -> None:
        self._conns[to].send((job_id, tag, payload))


class _NoSink:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _party_main(
    spec: JobSpec,
    party: str,
    ids: list[str],
    inboxes: Mapping[str, Connection],
    outboxes: Mapping[str, Connection],
    results: Any,
) -> None:
    """One role in its own process: pump each peer's pipe into a mailbox, run, report CPU."""
    table = Table.from_columns(party, {"id": ids})
    mailbox = Mailbox(max_payload=64 << 20)

    def pump(peer: str, conn: Connection) -> None:
        while True:
            try:
                job_id, tag, payload = conn.recv()
            except EOFError:
                return
            mailbox.put(job_id, peer, tag, payload)

    for peer, conn in inboxes.items():
        threading.Thread(target=pump, args=(peer, conn), daemon=True).start()
    ctx = RoleContext(
        spec,
        party,
        _PipeTransport(outboxes),
        mailbox,
        lambda: table,
        {LIMIT_MAX_SET_SIZE: len(ids)},
        _NoSink(),
        1800.0,
    )
    role = spec.participant(party).role
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        result = PROTOCOLS[spec.protocol].roles[role](ctx)
    except Exception as exc:  # reported to the parent, which would otherwise wait forever
        results.put({"party": party, "error": repr(exc)})
        raise
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    size = result.summary["intersection_size"] if result else None
    results.put(
        {"party": party, "role": role, "cpu_s": cpu, "wall_s": wall, "intersection_size": size}
    )
    for conn in outboxes.values():
        conn.close()


def _run_parties(spec: JobSpec, ids: Mapping[str, list[str]]) -> tuple[dict[str, Any], float]:
    """Every role of ``spec`` in its own spawned process; each one's report, and the wall time."""
    parties = list(spec.parties)
    ctx = mp.get_context("spawn")
    pipes = {(a, b): ctx.Pipe(duplex=False) for a in parties for b in parties if a != b}
    results = ctx.Queue()
    procs = []
    for party in parties:
        inboxes = {a: pipes[(a, party)][0] for a in parties if a != party}
        outboxes = {b: pipes[(party, b)][1] for b in parties if b != party}
        args = (spec, party, ids[party], inboxes, outboxes, results)
        procs.append(ctx.Process(target=_party_main, args=args))
    wall = time.perf_counter()
    for proc in procs:
        proc.start()
    reports = {}
    for _ in procs:
        report = results.get(timeout=3600)
        if "error" in report:
            for proc in procs:
                proc.terminate()
            raise RuntimeError(f"{report['party']} failed: {report['error']}")
        reports[report["party"]] = report
    for proc in procs:
        proc.join()
    return reports, time.perf_counter() - wall


def measure_two_party(n: int) -> dict[str, Any]:
    """Two-party ECDH-PSI (``psi``) at ``n`` ids each, both receivers, the same way."""
    spec = JobSpec(
        protocol="psi",
        participants=tuple(Participant(p, "member", "ids", {"id": "id"}) for p in _PARTIES[:2]),
        receivers=_PARTIES[:2],
        purpose="benchmark",
        requester=_PARTIES[0],
        params={"mode": "intersection"},
        job_id=new_job_id(),
    )
    ids = {p: _ids(i, 1, n) for i, p in enumerate(_PARTIES[:2])}
    reports, wall = _run_parties(spec, ids)
    if any(r["intersection_size"] != n - n // 2 for r in reports.values()):
        raise RuntimeError(f"wrong two-party intersection size at n={n}: {reports}")
    rate = n / max(r["cpu_s"] for r in reports.values())
    return {
        "family": "psi_multi",
        "kernel": "two_party_ecdh_psi",
        "params": {"n": n, "receivers": 2, "overlap": n - n // 2},
        "ops_per_s": rate,
        "rate_per_core": rate,
        "party_cpu_s": {p: r["cpu_s"] for p, r in sorted(reports.items())},
        "job_wall_s_with_process_start": wall,
    }


def measure_protocol(n: int, members: int) -> dict[str, Any]:
    """Run ``psi_multi`` with one leader and ``members`` members at ``n`` ids each."""
    parties = list(_PARTIES[: members + 1])
    spec = JobSpec(
        protocol="psi_multi",
        participants=(
            Participant(parties[0], "leader", "ids", {"id": "id"}),
            *(Participant(p, "member", "ids", {"id": "id"}) for p in parties[1:]),
        ),
        receivers=(parties[0],),
        purpose="benchmark",
        requester=parties[0],
        params={"mode": "intersection"},
        job_id=new_job_id(),
    )
    reports, wall = _run_parties(spec, {p: _ids(i, members, n) for i, p in enumerate(parties)})
    if reports[parties[0]]["intersection_size"] != n - n // 2:
        raise RuntimeError(f"wrong intersection size at n={n}: {reports}")
    leader = reports[parties[0]]
    member_cpu = max(reports[p]["cpu_s"] for p in parties[1:])
    return {
        "family": "psi_multi",
        "kernel": f"protocol_{members + 1}_parties",
        "params": {"n": n, "members": members, "overlap": n - n // 2},
        "ops_per_s": n / max(leader["cpu_s"], member_cpu),
        "leader_rate_per_core": n / leader["cpu_s"],
        "member_rate_per_core": n / member_cpu,
        "party_cpu_s": {p: r["cpu_s"] for p, r in sorted(reports.items())},
        "party_wall_s": {p: r["wall_s"] for p, r in sorted(reports.items())},
        "job_wall_s_with_process_start": wall,
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Kernels, then the protocol at each size beside two-party ECDH-PSI at the same size."""
    samples = 5_000 if quick else 20_000
    rows = measure_kernels(samples)
    sizes = [(10**3, 2), (10**4, 2)] if quick else [(10**5, 2), (10**5, 3), (10**6, 2)]
    two_party: dict[int, float] = {}
    for n, members in sizes:
        row = measure_protocol(n, members)
        if n not in two_party:
            reference = measure_two_party(n)
            rows.append(reference)
            two_party[n] = float(reference["rate_per_core"])
        row["two_party_rate_per_core"] = two_party[n]
        row["leader_vs_two_party"] = row["leader_rate_per_core"] / two_party[n]
        row["member_vs_two_party"] = row["member_rate_per_core"] / two_party[n]
        rows.append(row)
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    table = RichTable(title="Multi-party PSI vs two-party ECDH-PSI, per core; CPU-time rates")
    for column in ("kernel", "params", "ops/s", "leader/s", "member/s", "vs 2-party"):
        table.add_column(column, justify="left" if column in ("kernel", "params") else "right")
    for r in rows:
        leader, member = r.get("leader_rate_per_core"), r.get("member_rate_per_core")
        ratio = (
            f"{r['leader_vs_two_party']:.2f} / {r['member_vs_two_party']:.2f}"
            if "leader_vs_two_party" in r
            else ""
        )
        table.add_row(
            r["kernel"],
            " ".join(f"{k}={v}" for k, v in r["params"].items()),
            f"{r['ops_per_s']:,.0f}",
            "" if leader is None else f"{leader:,.0f}",
            "" if member is None else f"{member:,.0f}",
            ratio,
        )
    Console(width=150).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^3 and 10^4 ids only")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    args = parser.parse_args()
    rows = run(args.quick)
    _print_table(rows)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
