"""Where a user waits: submit-to-result of a 10-id PSI between two nodes, pushed vs polled.

Two nodes (bank, tax) run in this process, each a real gRPC server over mutual TLS on loopback
with its SQLite job store and audit log; the tax bureau's policy needs its approver's signature.
One sample: the bank's operator submits the job; as soon as the tax node shows it awaiting
approval, the benchmark signs and sends the approval (as ``bund job approve`` does); the bank's
operator follows the job (``follow_job``) and reads the result. Wall-clock times, from the two
nodes' own audit records (one clock, in this process) and the operator's side:

- ``admission``: submission to the job awaiting approval at tax (both nodes check their policy
  and load and hash their datasets; the proposal crosses);
- ``approver``: the job awaiting approval at tax to its durable ``job_accepted``: the
  benchmark's approver noticing it, reading the request, signing and sending the approval;
- ``approval_wait``: tax's durable ``job_accepted`` (the last approval) to the bank's durable
  ``job_started``: what the push removes (``NotifyJob``);
- ``start``: the bank's ``job_started`` to tax's (the StartJob call);
- ``protocol``: tax's ``job_started`` to the bank's ``protocol_psi.finished`` (the PSI, its
  messages through the gRPC mailbox, each recorded in the audit log);
- ``closing``: to the bank's ``job_closed`` (the closing exchange, the result stored: ready);
- ``follow_return``: the bank's ``job_closed`` to the follower's return (the WatchJob push, or
  the next status poll);
- ``result_read``: reading the result (``GetJobResult``, its audited read).

A job starts "within 10 ms of its last approval, plus the durable writes it requires": each row
also carries ``durable_append_s``, the median latency of one synced audit append on the same
disk in the same run, and ``approval_wait_beyond_durable_writes_s``, the approval wait less the
``APPROVAL_DURABLE_WRITES`` such writes on its path.

``variant`` ``push`` is the node as it is: participants push their answers, the follower
watches. ``poll`` turns both pushes off in the same run, as before: the requester reads its
participants every 0.2 s and the follower asks every 0.2 s; ``ratio_vs_poll`` is poll's median
over push's. Medians over ``samples`` jobs, the variants interleaved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.bench_psi import append_latency

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from bund.parties.jobs import JobSpec

#: Seconds between the requester's reads of its participants, and a follower's questions,
#: in the ``poll`` variant: what the node did before the push.
POLL_S = 0.2
#: The durable writes inside ``approval_wait``: the last approval's ``job_accepted`` audit
#: record and the job store's row at tax, both synced before tax pushes ``NotifyJob``. (The
#: bank keeps the answers it read after it has started the job, off this path.)
APPROVAL_DURABLE_WRITES = 2
PHASES = (
    "admission",
    "approver",
    "approval_wait",
    "start",
    "protocol",
    "closing",
    "follow_return",
    "result_read",
)


@contextmanager
def two_nodes(directory: Path) -> Iterator[tuple[Any, Any]]:
    """Bank and tax nodes in this process, 10 ids each for PSI; tax's approver must sign.

    Everything lives under ``directory``: each party's identity in ``PARTY/id`` (its operator
    credential in ``PARTY/id/operator``), its node.toml, datasets and state in ``PARTY``.
    """
    from bund.parties import identity
    from bund.parties.config import load_config
    from bund.parties.data import Table, write_csv
    from bund.parties.node import Node, create_node
    from bund.parties.processes import CatalogEntry, NodeFiles, write_node_files, write_peers

    identity.create_federation(directory / "ca", "bench")
    peers_file = directory / "peers.toml"
    nodes: list[Node] = []
    try:
        parties = (("bank", "tax", "loans"), ("tax", "bank", "filings"))
        for party, _, _ in parties:  # both on the roster before either node starts
            identity.create_party(directory / "ca", party, party, directory / party / "id")
        for party, other, dataset in parties:
            ids = Table.from_columns(dataset, {"id": [f"c{i:03d}" for i in range(10)]})
            csv = write_csv(ids, directory / party / f"{dataset}.csv")
            path = write_node_files(
                NodeFiles(
                    party=party,
                    home=directory / party,
                    identity=directory / party / "id",
                    peers_file=peers_file,
                    counterparties=((other, other),),
                    datasets=(CatalogEntry(dataset, csv, "confidential", ("psi",)),),
                    approvals=party == "tax",
                    cohort_floor=5,
                    written_by="bench_job",
                    federation=directory / "ca",
                )
            )
            text = path.read_text(encoding="utf-8")
            path.write_text(text.replace("[audit]\n", "[audit]\nwitness_interval_s = 86400\n"))
            nodes.append(create_node(load_config(path)))
            write_peers(peers_file, {n.config.party: n.port for n in nodes})
        yield nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.stop(grace=0.5)


class _Asked:
    """A node seen only through ``status``: ``follow_job`` asks it every ``interval``."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.party = client.party

    def status(self, job_id: str) -> Any:
        return self._client.status(job_id)


def psi_job(directory: Path) -> tuple[JobSpec, Ed25519PrivateKey]:
    """The benchmark's PSI job between the two nodes, and tax's approver key that signs it."""
    from bund.parties import identity
    from bund.parties.jobs import JobSpec, Participant

    spec = JobSpec(
        protocol="psi",
        participants=(
            Participant("bank", "member", "loans", {"id": "id"}),
            Participant("tax", "member", "filings", {"id": "id"}),
        ),
        receivers=("bank",),
        purpose="benchmark",
        requester="bank",
        params={"mode": "intersection"},
    )
    key = identity.load_audit_signing_key(directory / "tax" / "id" / "approver_ed25519.key")
    return spec, key


def _seconds(stamp: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _records(node: Any, job_id: str) -> dict[str, float]:
    """The first time of each audit event of ``job_id`` at ``node``."""
    seen: dict[str, float] = {}
    for record in node.audit_store.read():
        if record.job_id == job_id and record.event not in seen:
            seen[record.event] = _seconds(record.timestamp)
    return seen


def _sample(bank: Any, tax: Any, directory: Path, push: bool) -> dict[str, float]:
    from bund.parties.client import NodeClient
    from bund.parties.config import operator_of
    from bund.parties.follow import follow_job
    from bund.parties.lifecycle.states import JobState

    spec, key = psi_job(directory)
    original = tax.manager.peers.notify
    bank.manager.coordinator.fallback_poll = 5.0 if push else POLL_S
    if not push:
        tax.manager.peers.notify = lambda to, job_id: None
    clients = [
        NodeClient(f"127.0.0.1:{n.port}", n.config.party, operator_of(n.config).tls)
        for n in (bank, tax)
    ]
    try:
        bank_client, tax_client = clients
        follow = (lambda c: c) if push else _Asked
        interval = 0.01 if push else POLL_S
        submitted = time.time()
        job_id = bank_client.submit(spec)
        awaiting = follow_job(
            follow(tax_client),
            job_id,
            until=lambda s: s.state is JobState.AWAITING_APPROVAL,
            timeout=60,
            interval=interval,
        )
        assert awaiting.state is JobState.AWAITING_APPROVAL, awaiting
        tax_client.approve(job_id, key.sign(tax_client.approval_request(job_id).payload()))
        done = follow_job(follow(bank_client), job_id, timeout=60, interval=interval)
        returned = time.time()
        if done.state is not JobState.SUCCEEDED:
            raise RuntimeError(f"the benchmark job did not succeed: {done}")
        result = bank_client.result(job_id)
        read = time.time()
    finally:
        tax.manager.peers.notify = original
        for c in clients:
            c.close()
    if done.state is not JobState.SUCCEEDED or result.summary.get("intersection_size") != 10:
        raise RuntimeError(f"the benchmark job did not succeed: {done}")
    at_bank, at_tax = _records(bank, job_id), _records(tax, job_id)
    finished = min(t for e, t in at_bank.items() if e.startswith("protocol_") and "finish" in e)
    return {
        "admission": at_tax["job_awaiting_approval"] - submitted,
        "approver": at_tax["job_accepted"] - at_tax["job_awaiting_approval"],
        "approval_wait": at_bank["job_started"] - at_tax["job_accepted"],
        "start": at_tax["job_started"] - at_bank["job_started"],
        "protocol": finished - at_tax["job_started"],
        "closing": at_bank["job_closed"] - finished,
        "follow_return": returned - at_bank["job_closed"],
        "result_read": read - returned,
        "submit_to_result": read - submitted,
    }


def run(quick: bool, samples: int | None = None) -> list[dict[str, Any]]:
    """Rows ``job_submit_to_result`` for ``push`` and ``poll``, with the phases' medians."""
    count = samples or (3 if quick else 15)
    times: dict[str, list[dict[str, float]]] = {"push": [], "poll": []}
    with (
        tempfile.TemporaryDirectory(prefix="bund-bench-job-") as tmp,
        two_nodes(Path(tmp)) as (
            bank,
            tax,
        ),
    ):
        _sample(bank, tax, Path(tmp), push=True)  # warm-up: datasets loaded, channels open
        for _ in range(count):
            for variant in ("push", "poll"):
                times[variant].append(_sample(bank, tax, Path(tmp), push=variant == "push"))
        append_s, _ = append_latency(Path(tmp) / "latency-audit.db", 20 if quick else 100, False)
    medians = {
        variant: {k: statistics.median(s[k] for s in runs) for k in (*PHASES, "submit_to_result")}
        for variant, runs in times.items()
    }
    rows = []
    for variant, median in medians.items():
        poll = medians["poll"]
        rows.append(
            {
                "family": "job",
                "kernel": "job_submit_to_result",
                "params": {"variant": variant, "ids": 10, "samples": count, "approvals": "tax"},
                "ops_per_s": 1 / median["submit_to_result"],
                "unit": "jobs/s",
                "median_s": median,
                "ratio_vs_poll": poll["submit_to_result"] / median["submit_to_result"],
                "phase_ratio_vs_poll": {k: poll[k] / median[k] for k in PHASES if median[k] > 0},
                "durable_append_s": append_s,
                "approval_wait_beyond_durable_writes_s": median["approval_wait"]
                - APPROVAL_DURABLE_WRITES * append_s,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 jobs per variant, not 15")
    parser.add_argument("--samples", type=int, help="jobs per variant")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the rows here")
    args = parser.parse_args()
    rows = run(args.quick, args.samples)
    for row in rows:
        median = row["median_s"]
        phases = ", ".join(f"{k} {median[k] * 1000:.1f}" for k in PHASES)
        total = median["submit_to_result"] * 1000
        print(
            f"{row['params']['variant']:>4}: submit-to-result {total:.1f} ms ({phases} ms); "
            f"poll / this = {row['ratio_vs_poll']:.2f}; the approval wait less its "
            f"{APPROVAL_DURABLE_WRITES} durable writes (one append "
            f"{row['durable_append_s'] * 1000:.2f} ms, same run): "
            f"{row['approval_wait_beyond_durable_writes_s'] * 1000:.1f} ms"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
