"""Real-time scoring under a standing contract: latency and throughput between node processes.

Three node processes on loopback (the bank, the tax bureau and the business registry), every
call over mutual TLS. They train the credit model once (``vertical_lr``; the training is set-up,
not measured, and uses 512-bit test Paillier keys: serving itself involves no Paillier), the bank
opens a serving contract with both providers, and its loan system (an operator client with one
persistent channel to the bank's node) scores applicants that both providers hold:

- ``latency``: one client, one request after the other, ``batch`` applicants a request; median,
  90th and 99th percentile of the whole ``Score`` call (the loan system's call to the bank, the
  bank's record, its parallel calls to both providers, their checks and records, the answers,
  the sum and the decisions); ``ops_per_s`` is ``1 / p50``.
- ``throughput``: ``clients`` loan-system threads at once, each with its own channel, for
  ``requests`` requests of ``batch`` applicants each; ``ops_per_s`` is applicants per second
  (``requests_per_s`` beside it). Concurrent requests share group commits of the audit log.
- ``vertical_score_job``: the baseline in the same run: the batch job (``vertical_score``) that
  scores the same ``batch`` applicants, from ``bund job submit`` to its success at the bank
  (proposal and acceptance at three nodes, PSI alignment, masked scores, closing); each latency
  row carries ``ratio_vs_job``: the job's wall time over the serving p50.

Run: ``PYTHONPATH=. .venv/bin/python -m benchmarks.suite serving [--quick] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bund.compute import insecure
from bund.parties import identity
from bund.parties.client import NodeClient
from bund.parties.config import TlsPaths
from bund.parties.data import Table, write_csv
from bund.parties.demo_data import generate_finance
from bund.parties.follow import follow_job, in_state
from bund.parties.jobs import JobSpec, Participant
from bund.parties.lifecycle.states import JobState
from bund.parties.processes import CatalogEntry, NodeFiles, NodeGroup, write_node_files
from bund.parties.serving.service import Applicant

PARTIES = {"bank": "loan_book", "tax": "tax_filings", "registry": "business_registry"}
_REPO = Path(__file__).resolve().parents[1]
_ID = {"id": "company_id"}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextmanager
def _federation(
    directory: Path, data: dict[str, Table], baselines: dict[str, Table]
) -> Iterator[dict[str, NodeClient]]:
    """Three node processes with the finance data (the bank's with ``baselines`` too)."""
    identity.create_federation(directory / "ca", "bench")
    peers = directory / "peers.toml"
    paths = {}
    for party, dataset in PARTIES.items():
        home = directory / party
        identity.create_party(directory / "ca", party, party, home / "id")
        tables = {dataset: data[dataset]}
        if party == "bank":  # the baseline jobs' applicants, one dataset per batch size
            tables.update(baselines)
        paths[party] = write_node_files(
            NodeFiles(
                party=party,
                home=home,
                identity=home / "id",
                peers_file=peers,
                counterparties=tuple((p, p) for p in PARTIES if p != party),
                # The model is trained without label DP: the bank trusts its providers with it.
                trusted_for=tuple(
                    (p, "vertical_lr") for p in PARTIES if party == "bank" and p != party
                ),
                datasets=tuple(
                    CatalogEntry(name, write_csv(table, home / f"{name}.csv"))
                    for name, table in tables.items()
                ),
                approvals=False,
                cohort_floor=1,
                written_by="bench_serving",
                federation=directory / "ca",
            )
        )
    group = NodeGroup(peers)
    env = {"PYTHONPATH": str(_REPO), insecure.ENV_VAR: insecure.ENV_VALUE}
    clients: dict[str, NodeClient] = {}
    try:
        group.spawn_all(paths, env=env, timeout=120)
        for party in PARTIES:
            d = directory / party / "id" / identity.OPERATOR_DIR
            tls = TlsPaths(d / "ca.pem", d / "operator.pem", d / "operator.key")
            clients[party] = NodeClient(group.address(party), party, tls, timeout=600)
        yield clients
    finally:
        for client in clients.values():
            client.close()
        group.stop()


def _spec(protocol: str, params: dict[str, Any], bank_dataset: str | None) -> JobSpec:
    bank_columns = {} if bank_dataset is None else dict(_ID)
    if protocol == "vertical_lr":
        bank_columns["label"] = "default_12m"
    return JobSpec(
        protocol,
        (
            Participant("bank", "label_holder", bank_dataset, bank_columns),
            Participant("tax", "feature_holder", "tax_filings", _ID),
            Participant("registry", "feature_holder", "business_registry", _ID),
        ),
        ("bank", "tax", "registry") if protocol == "vertical_lr" else ("bank",),
        "benchmark of real-time scoring",
        "bank",
        params,  # type: ignore[arg-type]
    )


def _run_job(bank: NodeClient, spec: JobSpec) -> tuple[str, float]:
    start = time.perf_counter()
    job_id = bank.submit(spec)
    status = follow_job(bank, job_id, timeout=3600, interval=0.01)
    if status.state is not JobState.SUCCEEDED:
        raise RuntimeError(
            f"{spec.protocol} job {job_id} ended {status.state.value}: {status.error}"
        )
    return job_id, time.perf_counter() - start


def _applicants(data: dict[str, Table]) -> list[Applicant]:
    """Applicants in the applicants table's order, with the bank's feature values."""
    table = data["applicants"]
    names = [c for c in table.columns if c != "company_id"]
    return [
        Applicant(company, {n: float(table.column(n)[row]) for n in names})
        for row, company in enumerate(table.column("company_id"))
    ]


def _latency(
    bank: NodeClient, contract: str, pool: list[Applicant], batch: int, requests: int
) -> dict[str, Any]:
    bank.score(contract, pool[-batch:])  # loads each node's model part and dataset: untimed
    times = []
    for i in range(requests):
        asked = [pool[(i * batch + k) % len(pool)] for k in range(batch)]
        start = time.perf_counter()
        bank.score(contract, asked)
        times.append(time.perf_counter() - start)
    p50 = statistics.median(times)
    return {
        "family": "serving",
        "kernel": "latency",
        "params": {"batch": batch, "providers": 2, "requests": requests},
        "ops_per_s": 1 / p50,
        "unit": "requests/s",
        "p50_ms": round(p50 * 1000, 2),
        "p90_ms": round(_percentile(times, 0.90) * 1000, 2),
        "p99_ms": round(_percentile(times, 0.99) * 1000, 2),
        "max_ms": round(max(times) * 1000, 2),
    }


def _throughput(
    address: str, tls: TlsPaths, contract: str, pool: list[Applicant], batch: int, clients: int,
    requests: int,
) -> dict[str, Any]:  # fmt: skip
    errors: list[BaseException] = []
    start_line = threading.Barrier(clients + 1)

    def work(worker: int) -> None:
        with NodeClient(address, "bank", tls, timeout=600) as client:
            client.node_info()  # the channel is up before the clock starts
            start_line.wait()
            try:
                for i in range(requests):
                    first = (worker * requests + i) * batch
                    client.score(contract, [pool[(first + k) % len(pool)] for k in range(batch)])
            except BaseException as exc:  # noqa: BLE001 - reported after the run
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    start_line.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    total = clients * requests
    return {
        "family": "serving",
        "kernel": "throughput",
        "params": {"batch": batch, "clients": clients, "requests": total},
        "ops_per_s": total * batch / seconds,
        "unit": "applicants/s",
        "requests_per_s": round(total / seconds, 1),
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Set up three node processes and a contract; measure latency, throughput and the baseline."""
    batches = (1, 10, 100)
    data = generate_finance(1500 if quick else 5000, 11, applicants=400)
    requests = {1: 30, 10: 20, 100: 10} if quick else {1: 400, 10: 200, 100: 60}
    rows: list[dict[str, Any]] = []
    held = set(data["tax_filings"].column("company_id")) & set(
        data["business_registry"].column("company_id")
    )
    pool = [a for a in _applicants(data) if a.id in held]
    # The baseline job of batch b scores the applicants of the first serving request of b.
    positions = {a: row for row, a in enumerate(data["applicants"].column("company_id"))}
    baselines = {
        f"applicants_{b}": data["applicants"].select([positions[a.id] for a in pool[:b]])
        for b in batches
    }
    with (
        tempfile.TemporaryDirectory() as tmp,
        _federation(Path(tmp), data, baselines) as nodes,
    ):
        bank = nodes["bank"]
        training = {"key_bits": 512, "epochs": 2 if quick else 6, "batch_size": 64, "seed": 3}
        model_job, _ = _run_job(bank, _spec("vertical_lr", training, "loan_book"))
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        terms = {
            "model_job": model_job,
            "expires": expires.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "max_batch": max(batches),
            "max_daily": 10_000_000,
        }
        contract = bank.submit(_spec("serving_contract", terms, None))
        for party in PARTIES:
            status = follow_job(
                nodes[party], contract, until=in_state(JobState.SERVING), timeout=600
            )
            if status.state is not JobState.SERVING:
                raise RuntimeError(f"the contract is {status.state.value}: {status.error}")
        jobs = {}
        for batch in batches:
            _, jobs[batch] = _run_job(
                bank,
                _spec("vertical_score", {"model_job": model_job}, f"applicants_{batch}"),
            )
        for batch in batches:
            row = _latency(bank, contract, pool, batch, requests[batch])
            row["ratio_vs_job"] = round(jobs[batch] / (row["p50_ms"] / 1000), 1)
            rows.append(row)
        for batch in batches:
            rows.append(
                _throughput(
                    bank.address, _bank_tls(Path(tmp)), contract, pool, batch, 4,
                    max(2, requests[batch] // 4),
                )
            )  # fmt: skip
        rows += [
            {"family": "serving", "kernel": "vertical_score_job", "params": {"applicants": b},
             "ops_per_s": b / s, "unit": "applicants/s", "seconds": round(s, 3)}
            for b, s in jobs.items()
        ]  # fmt: skip
    for row in rows:
        row["note"] = "3 node processes on loopback over mTLS; training keys 512-bit (set-up only)"
    return rows


def _bank_tls(directory: Path) -> TlsPaths:
    d = directory / "bank" / "id" / identity.OPERATOR_DIR
    return TlsPaths(d / "ca.pem", d / "operator.pem", d / "operator.key")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(run(parser.parse_args().quick), indent=2))
