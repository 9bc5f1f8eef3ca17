"""Unbalanced PSI benchmark: the holder's offline rate against the curve, the filter, queries.

Rows, all from one run (``docs/protocols/psi_unbalanced.md`` and ``docs/scaling.md`` quote them):

- ``x25519_scalar_mult``, ``hash_to_group``: the group's costs (CPU time, median of five), as in
  ``bench_psi``; ``offline_ceiling`` is ``1 / (t_hash + t_mult)`` ids per second per core, the
  least an OPRF evaluation of one id can cost (one hash to the group, one multiplication).
- ``fuse_build``, ``fuse_query``: the binary fuse filter (keys per second).
- ``setup_holder``: the holder's whole setup job (``psi_unbalanced`` with ``phase = "setup"``)
  at ``n`` ids streamed from a CSV file: normalisation, the OPRF of every id, the spilled
  keys, the filter shards and shipping them. ``ops_per_s`` is ids per CPU-second of the
  holder's role, ``fraction_of_ceiling`` its ratio to the ceiling measured just before and
  just after the run; the row states the filter's bytes per id and the run's peak RSS. The
  holder evaluates the next chunk in a second thread while it files the last one, so its CPU
  time is the process's during the job less the querier thread's.
- ``query``: a query job of ``q`` ids against that setup: the job's wall time (both roles in
  this process), each role's CPU time and ids per second.

The two roles run in threads of this process over the in-memory transport (``run_in_memory``),
each role's CPU time taken with ``time.thread_time`` inside it (the holder's setup aside, above).

Run: ``python -m benchmarks.bench_psi_unbalanced [--quick] [--holder-n N] [--json FILE]``;
``--holder-n 10000000`` is the 10^7 run (about ten minutes of one core).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_psi import _cpu_rate
from bund.compute import psi
from bund.compute.psi_filters import FuseFilter
from bund.parties.data import DataSource, Table, open_source
from bund.parties.jobs import (
    JobContext,
    JobSpec,
    MemoryResumeStates,
    Participant,
    ProtocolDef,
    Result,
    new_job_id,
    run_in_memory,
)
from bund.parties.protocols import psi_unbalanced as pu

_CONTEXT = bytes(32)


def _write_ids(path: Path, n: int) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write("uscc\n")
        for lo in range(0, n, 1 << 20):
            f.write("".join(f"91310000{i:010d}\n" for i in range(lo, min(lo + (1 << 20), n))))


def _offline_costs(samples: int) -> tuple[float, float]:
    items = [f"91310000{i:010d}".encode() for i in range(samples)]
    points = psi.hash_to_points(items, _CONTEXT)
    key = psi.create_blinding_key()
    t_hash = 1 / _cpu_rate(lambda: psi.hash_to_points(items, _CONTEXT), samples)
    t_mult = 1 / _cpu_rate(lambda: psi.blind(points, key), samples)
    return t_hash, t_mult


def _rows_for_kernels(samples: int) -> list[dict[str, Any]]:
    t_hash, t_mult = _offline_costs(samples)
    keys = np.frombuffer(os.urandom(8 * 10**6), dtype=np.uint64)
    built = FuseFilter.build(keys)
    t_build = 1 / _cpu_rate(lambda: FuseFilter.build(keys), 10**6, repeats=3)
    probe = np.frombuffer(os.urandom(8 * 10**6), dtype=np.uint64)
    t_query = 1 / _cpu_rate(lambda: built.contains(probe), 10**6)
    params = {"samples": samples}
    return [
        {"family": "psi_unbalanced", "kernel": k, "params": p, "ops_per_s": 1 / t}
        for k, p, t in (
            ("x25519_scalar_mult", params, t_mult),
            ("hash_to_group", params, t_hash),
            ("offline_ceiling", params, t_hash + t_mult),
            ("fuse_build", {"keys": 10**6}, t_build),
            ("fuse_query", {"keys": 10**6}, t_query),
        )
    ]


def _spec(phase: str, setup_job: str | None = None) -> JobSpec:
    querier = (
        Participant("bank", "querier", "applicants", {"id": "cid"})
        if phase == "query"
        else Participant("bank", "querier")
    )
    params = {"phase": phase, **({"setup_job": setup_job} if setup_job else {})}
    return JobSpec(
        "psi_unbalanced",
        (Participant("registry", "holder", "firms", {"id": "uscc"}), querier),
        ("bank",),
        "benchmark",
        "bank",
        params,
        job_id=new_job_id(),
    )


def _timed(cpu: dict[str, float]) -> ProtocolDef:
    """The protocol with each role's thread CPU time recorded into ``cpu``."""

    def wrap(role: Any) -> Any:
        def run(ctx: JobContext) -> Result | None:
            start = time.thread_time()
            try:
                result: Result | None = role(ctx)
                return result
            finally:
                cpu[ctx.party] = time.thread_time() - start

        return run

    return dataclasses.replace(
        pu.DEFINITION, roles={name: wrap(fn) for name, fn in pu.DEFINITION.roles.items()}
    )


def measure(n: int, queries: tuple[int, ...], samples: int) -> list[dict[str, Any]]:
    """One setup at ``n`` holder ids, then one query job per entry of ``queries``."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bund-bench-psiu-") as tmp:
        path = Path(tmp) / "firms.csv"
        _write_ids(path, n)
        firms = open_source(DataSource("csv", path), "firms")
        states = {"registry": MemoryResumeStates(), "bank": MemoryResumeStates()}
        limits = {"psi_max_set_size": n, "psi_unbalanced_max_queries": sum(queries)}
        before = _offline_costs(samples)
        cpu: dict[str, float] = {}
        setup = _spec("setup")
        wall, process = time.perf_counter(), time.process_time()
        shipped = run_in_memory(setup, _timed(cpu), {"registry": firms}, limits, states=states)
        wall, process = time.perf_counter() - wall, time.process_time() - process
        cpu["registry"] = process - cpu["bank"]  # both of the holder's threads
        after = _offline_costs(samples)
        t = [(b + a) / 2 for b, a in zip(before, after, strict=True)]
        ceiling = 1 / (t[0] + t[1])
        result = shipped["bank"]
        assert result is not None and result.summary["keys"] == n
        rate = n / cpu["registry"]
        rows.append(
            {
                "family": "psi_unbalanced",
                "kernel": "setup_holder",
                "params": {"n": n},
                "ops_per_s": rate,
                "offline_ceiling_ids_per_s": ceiling,
                "ceiling_before_after": [1 / sum(before), 1 / sum(after)],
                "fraction_of_ceiling": rate / ceiling,
                "holder_cpu_s": cpu["registry"],
                "querier_cpu_s": cpu["bank"],
                "job_wall_s": wall,
                "filter_bytes": result.summary["filter_bytes"],
                "filter_bytes_per_id": result.summary["filter_bytes_per_id"],
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )

        def prior(job_id: str, protocol: str) -> Result:
            return result

        for q in queries:
            # Half of the queried ids are the registry's.
            ids = [f"91310000{i:010d}" for i in range(n - q // 2, n - q // 2 + q)]
            tables = {"registry": firms, "bank": Table.from_columns("applicants", {"cid": ids})}
            cpu = {}
            wall = time.perf_counter()
            out = run_in_memory(
                _spec("query", setup.job_id),
                _timed(cpu),
                tables,
                limits,
                states=states,
                prior_results={"bank": prior},
            )
            wall = time.perf_counter() - wall
            answer = out["bank"]
            assert answer is not None and answer.summary["matches"] == q // 2
            rows.append(
                {
                    "family": "psi_unbalanced",
                    "kernel": "query",
                    "params": {"n": n, "q": q},
                    "ops_per_s": q / wall,
                    "unit": "ids/s",
                    "job_wall_s": wall,
                    "holder_cpu_s": cpu["registry"],
                    "querier_cpu_s": cpu["bank"],
                }
            )
    return rows


def run(quick: bool, holder_n: int | None = None) -> list[dict[str, Any]]:
    """Kernels, then a setup at 10^4 (quick) or 10^6 (or ``holder_n``) and its queries."""
    samples = 5_000 if quick else 20_000
    n = holder_n or (10**4 if quick else 10**6)
    queries = (10**2, 10**3) if quick else (10**3, 10**5)
    return _rows_for_kernels(samples) + measure(n, tuple(q for q in queries if q <= n), samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^4 holder ids, small queries")
    parser.add_argument("--holder-n", type=int, metavar="N", help="ids of the holder (10^7)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    args = parser.parse_args()
    rows = run(args.quick, args.holder_n)
    for row in rows:
        extra = {k: v for k, v in row.items() if k not in ("family", "kernel", "params")}
        print(row["kernel"], row["params"], json.dumps(extra, default=str))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
