"""Scaling benchmark: the same PSI and Paillier kernels on inline, process:N and ray:N executors.

What one party's node gains from more workers (``[compute] executor`` in ``node.toml``). All rates
are wall-clock (the point is the wall time a pool of N workers saves), each the median of the
samples (quick: 1, full: 3) after a warm-up that starts the workers; the start-up itself is its
own row. Rows, per executor (named ``kernel@spec``, e.g. ``psi_party@process:2``):

- ``psi_party``: one member's heavy PSI work on ``n`` ids: ``bund.compute.psi.hash_and_blind`` of
  its own ids and ``bund.compute.psi.blind`` of the peer's ``n`` points (the re-blinding).
  ``ops_per_s`` is ids per second.
- ``psi_job``: the whole two-member job (intersection mode, both receivers, sets overlapping by
  half) in memory through ``bund.parties.jobs.run_in_memory``; both members share the executor, as
  two nodes on one machine would share its cores. ``ops_per_s`` is ids per member per second.
- ``paillier_encrypt`` and ``paillier_matvec``: a vertical-LR epoch's Paillier kernels on
  ``rows`` rows: the label holder encrypts its ``rows`` residuals (a public-key ``Encryptor``,
  as a worker process must use: the key owner's refuses to leave the process), and a provider
  multiplies its ``features × rows`` matrix into them (``pl.matvec``). ``ops_per_s`` is rows per
  second. Quick mode uses a 512-bit test key; full mode 2048 bits.
- ``startup``: seconds until the executor's workers answered a first batch (``ops_per_s`` None,
  ``seconds`` set).

Every row's ``params`` carries ``executor`` and ``workers``; full mode adds ``peak_rss_mib`` of
this process and of its reaped children (``resource.getrusage``; Ray's workers are not children
of this process and are not counted). Ray rows are left out when Ray is not installed.

Run: ``python -m benchmarks.bench_scaling [--quick] [--psi-n N] [--rows N] [--json FILE]``;
``--psi-n 1000000`` is the optional 10^6 x 10^6 run (minutes).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bund.compute import insecure, psi
from bund.compute import paillier as pl
from bund.compute.executor import Executor, create_executor
from bund.parties.data import Table
from bund.parties.jobs import JobSpec, Participant, run_in_memory
from bund.parties.protocols import psi as psi_protocol

_CONTEXT = bytes(32)
_FEATURES = 10


def executor_specs() -> list[str]:
    """``inline``, then ``process:N`` and (if Ray is installed) ``ray:N`` for N = 1, 2."""
    specs = ["inline", "process:1", "process:2"]
    if importlib.util.find_spec("ray") is not None:
        specs += ["ray:1", "ray:2"]
    return specs


def _ids(offset: int, n: int) -> list[str]:
    return [f"91310000{i:010d}" for i in range(offset, offset + n)]


def _median_seconds(fn: Callable[[], object], samples: int) -> float:
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_rss_mib() -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mib": round(own, 1), "peak_rss_children_mib": round(children, 1)}


def _psi_spec() -> JobSpec:
    parts = (
        Participant("bank", "member", "loans", {"id": "company_id"}),
        Participant("tax", "member", "filings", {"id": "uscc"}),
    )
    return JobSpec("psi", parts, ("bank", "tax"), "benchmark", "bank", {"mode": "intersection"})


def measure_psi(ex: Executor, n: int, samples: int) -> list[tuple[str, dict[str, Any], float]]:
    """Rates of one member's kernels and of the whole job, both on ``n`` ids per member."""
    own = [i.encode() for i in _ids(0, n)]
    key = psi.create_blinding_key()
    peer = psi.hash_and_blind([i.encode() for i in _ids(n - n // 2, n)], _CONTEXT, key)

    def party() -> None:
        psi.hash_and_blind(own, _CONTEXT, key, ex)
        psi.blind(peer, key, ex)

    tables = {
        "bank": Table.from_columns("loans", {"company_id": _ids(0, n)}),
        "tax": Table.from_columns("filings", {"uscc": _ids(n - n // 2, n)}),
    }
    limits = {psi_protocol.LIMIT_MAX_SET_SIZE: n}

    def job() -> None:
        out = run_in_memory(_psi_spec(), psi_protocol.DEFINITION, tables, limits, executor=ex)
        result = out["bank"]
        assert result is not None and result.summary["intersection_size"] == n // 2

    params = {"n": n}
    return [
        ("psi_party", params, n / _median_seconds(party, samples)),
        ("psi_job", {**params, "overlap": n // 2}, n / _median_seconds(job, samples)),
    ]


def measure_paillier(
    ex: Executor, rows: int, bits: int, samples: int
) -> list[tuple[str, dict[str, Any], float]]:
    """Rates of one epoch's encryption of ``rows`` residuals and its ``features × rows`` matvec."""
    public, _ = pl.generate_keypair(bits)
    encryptor = pl.Encryptor(public)
    rng = np.random.default_rng(7)  # synthetic plaintext values, no secret
    residuals = rng.integers(-(2**39), 2**39, size=rows).tolist()
    features = rng.integers(-(2**20), 2**20, size=(_FEATURES, rows))
    vector = pl.encrypt(encryptor, residuals)
    params = {"rows": rows, "features": _FEATURES, "key_bits": bits}
    encrypt = _median_seconds(lambda: pl.encrypt(encryptor, residuals, executor=ex), samples)
    matvec = _median_seconds(lambda: pl.matvec(features, vector, executor=ex), samples)
    return [
        ("paillier_encrypt", params, rows / encrypt),
        ("paillier_matvec", params, rows / matvec),
    ]


def measure_executor(
    spec: str, psi_n: int, rows: int, bits: int, samples: int, rss: bool
) -> list[dict[str, Any]]:
    """Every row for one executor spec; its workers start, are warmed up, and are closed."""
    with create_executor(spec) as ex:
        start = time.perf_counter()
        warm = [f"{i}".encode() for i in range(64)]
        psi.hash_and_blind(warm, _CONTEXT, psi.create_blinding_key(), ex)
        startup = time.perf_counter() - start
        measured = measure_psi(ex, psi_n, samples) + measure_paillier(ex, rows, bits, samples)
        base = {"executor": spec, "workers": ex.workers}
    rows_out: list[dict[str, Any]] = [
        {
            "family": "scaling",
            "kernel": f"startup@{spec}",
            "params": dict(base),
            "ops_per_s": None,
            "seconds": startup,
        }
    ]
    for kernel, params, rate in measured:
        rows_out.append(
            {
                "family": "scaling",
                "kernel": f"{kernel}@{spec}",
                "params": {**base, **params, **(_peak_rss_mib() if rss else {})},
                "ops_per_s": rate,
                "unit": "ids/s" if kernel.startswith("psi") else "rows/s",
            }
        )
    return rows_out


def run(quick: bool, psi_n: int | None = None, rows: int | None = None) -> list[dict[str, Any]]:
    """Every kernel on every executor: PSI on 10^4 ids (quick) or 10^5, Paillier on 200 or 10^4."""
    psi_n = psi_n or (10**4 if quick else 10**5)
    rows = rows or (200 if quick else 10**4)
    samples = 1 if quick else 3
    bits = 512 if quick else 2048
    was_on = insecure.insecure_test_parameters_enabled()
    if quick:
        insecure.enable_insecure_test_parameters()
    try:
        out: list[dict[str, Any]] = []
        for spec in executor_specs():
            out += measure_executor(spec, psi_n, rows, bits, samples, rss=not quick)
        return out
    finally:
        if quick and not was_on:
            insecure.disable_insecure_test_parameters()


def main() -> None:
    """Command line: print one line per row, optionally save them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--psi-n", type=int, default=None, help="ids per PSI member")
    parser.add_argument("--rows", type=int, default=None, help="rows of the Paillier epoch")
    parser.add_argument("--json", default=None, help="write the rows to this file")
    args = parser.parse_args()
    out = run(args.quick, args.psi_n, args.rows)
    for row in out:
        rate = row["ops_per_s"]
        what = f"{rate:12,.0f} /s" if rate is not None else f"{row['seconds']:10.2f} s"
        print(f"{row['kernel']:28} {what}  {row['params']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
