"""DP statistics benchmark: the integer sampler, the pairwise masks, and a whole in-memory job.

Rows (each the median of five timed calls after a warm-up call, wall time):

- ``discrete_laplace_sample``: ``DiscreteLaplace.sample(n)`` (OpenDP's exact sampler); ops are
  draws.
- ``mask_vector``: ``pairwise_masks.mask_vector`` of one contributor with ``peers`` other
  contributors over ``cells`` cells (X25519 + HKDF + ChaCha20 per peer); ops are masked vectors.
- ``dp_stats_job``: ``run_in_memory`` of a noisy histogram query (8 age bins, PNG included) over
  three hospitals of ``n`` records each and an analyst; ops are jobs.

Run: ``python -m benchmarks.bench_dp [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from bund.compute.dp.mechanisms import DiscreteLaplace
from bund.compute.dp.pairwise_masks import create_masking_key, mask_vector
from bund.parties.demo_data import generate_health
from bund.parties.jobs import JobSpec, Participant, run_in_memory
from bund.parties.protocols import dp_stats


def _median_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _sampler(n: int) -> dict[str, Any]:
    mech = DiscreteLaplace.create(Fraction(1, 2), 1)
    t = _median_seconds(lambda: mech.sample(n))
    return {
        "family": "dp",
        "kernel": "discrete_laplace_sample",
        "params": {"n": n, "scale": 2},
        "ops_per_s": n / t,
    }


def _masking(cells: int, peers: int) -> dict[str, Any]:
    keys = {f"h{i}": create_masking_key() for i in range(peers + 1)}
    public = {name: key.public_bytes() for name, key in keys.items()}
    values = list(range(cells))
    t = _median_seconds(lambda: mask_vector(values, keys["h0"], "h0", public, b"bench"))
    return {
        "family": "dp",
        "kernel": "mask_vector",
        "params": {"cells": cells, "peers": peers},
        "ops_per_s": 1 / t,
    }


def _job(n: int) -> dict[str, Any]:
    data = generate_health(n, 1)
    tables = {"a": data["hospital_a"], "b": data["hospital_b"], "c": data["hospital_c"]}
    parts = (
        *(Participant(p, "contributor", tables[p].name) for p in tables),
        Participant("analyst", "analyst"),
    )
    params: dict[str, str | int] = {
        "kind": "histogram", "column": "age", "lower": "20", "upper": "100", "bins": 8,
        "epsilon": "1", "min_cell": 10,
    }  # fmt: skip
    spec = JobSpec("dp_stats", parts, ("analyst",), "benchmark", "analyst", params)
    t = _median_seconds(lambda: run_in_memory(spec, dp_stats.DEFINITION, tables), repeats=3)
    return {
        "family": "dp",
        "kernel": "dp_stats_job",
        "params": {"records_per_hospital": n, "hospitals": 3, "kind": "histogram"},
        "ops_per_s": 1 / t,
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure the sampler, the masking and a whole job (quick: the smallest sizes only)."""
    sizes = (10_000,) if quick else (10_000, 100_000, 1_000_000)
    rows = [_sampler(n) for n in sizes]
    rows += [_masking(cells, 2) for cells in ((64,) if quick else (64, 4096))]
    rows += [_job(n) for n in ((500,) if quick else (500, 5000))]
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(run(parser.parse_args().quick), indent=2))
