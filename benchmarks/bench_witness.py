"""Witness cosigning benchmark: what one exchange of signed tree heads costs a node.

Rows (each the median of timed calls after a warm-up call, wall time):

- ``checkpoint``: ``AuditLog.checkpoint`` of a log of ``n`` records, one record appended before
  each call so the root changes (O(log n) hashes from the Merkle frontier, one Ed25519 signature).
- ``witness_receive``: ``Witness.receive`` of a new head: the party's signature checked, the
  consistency checks against the heads held, the head kept in ``witness.db`` (SQLite, WAL,
  ``synchronous=FULL``: one fsync) and countersigned.
- ``exchange_mtls``: one whole exchange between two nodes in this process over mutual TLS on
  loopback (``Witness.present`` through the gRPC client to the peer's ``Audit/Witness``): both
  logs grew since the last exchange, so each side signs a head, checks the other's, keeps it and
  countersigns it.
- ``exchange_mtls_idle``: the same with neither log grown: both heads are already held, so
  nothing is written (what a quiet federation pays every interval).
- ``witness_request`` / ``witness_response``: bytes of the two messages on the wire.

Run: ``python -m benchmarks.bench_witness [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bund.parties import identity, wire
from bund.parties.audit import AuditLog, MemoryAuditStore, Witness, WitnessStore
from bund.parties.config import load_config
from bund.parties.node import Node, create_node
from bund.parties.processes import NodeFiles, write_node_files, write_peers
from bund.v1 import audit_pb2

_CLOCK = "2026-11-24T09:30:00.000000Z"


def _median_seconds(
    fn: Callable[[], object], repeats: int, setup: Callable[[], object] = lambda: None
) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after a warm-up; ``setup`` is untimed."""
    setup()
    fn()
    times = []
    for _ in range(repeats):
        setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _row(kernel: str, params: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {
        "family": "witness",
        "kernel": kernel,
        "params": params,
        "ops_per_s": 1 / seconds,
        "ms": round(seconds * 1000, 3),
    }


def _grown_log(n: int, key: Ed25519PrivateKey, party: str) -> AuditLog:
    log = AuditLog(MemoryAuditStore(), key, party, lambda: _CLOCK)
    for i in range(n):
        log.append("rpc", "", {"i": i})
    log.checkpoint()  # builds the frontier once, as a node does at start
    return log


def _checkpoint(n: int, repeats: int) -> dict[str, Any]:
    log = _grown_log(n, Ed25519PrivateKey.generate(), "bank")
    seconds = _median_seconds(log.checkpoint, repeats, lambda: log.append("rpc"))
    return _row("checkpoint", {"n": n}, seconds)


def _receive(directory: Path, repeats: int) -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()
    log = _grown_log(10, key, "bank")
    raw = identity.raw_public_key(key.public_key())
    witness_log = _grown_log(1, Ed25519PrivateKey.generate(), "tax")
    store = WitnessStore(directory / "witness.db", "tax")
    witness = Witness(witness_log, Ed25519PrivateKey.generate(), store, lambda: _CLOCK)
    heads = []
    for _ in range(repeats + 1):
        log.append("rpc")
        heads.append(log.checkpoint())
    pending = iter(heads)
    try:
        seconds = _median_seconds(lambda: witness.receive(next(pending), raw, "bank"), repeats)
    finally:
        store.close()
    return _row("witness_receive", {}, seconds)


@contextmanager
def _two_nodes(directory: Path) -> Iterator[tuple[Node, Node]]:
    identity.create_federation(directory / "ca", "bench")
    peers_file = directory / "peers.toml"
    nodes: list[Node] = []
    try:
        for party, other in (("bank", "tax"), ("tax", "bank")):
            identity.create_party(directory / "ca", party, party, directory / party / "id")
            path = write_node_files(
                NodeFiles(
                    party=party,
                    home=directory / party,
                    identity=directory / party / "id",
                    peers_file=peers_file,
                    counterparties=((other, other),),
                    approvals=False,
                    written_by="bench_witness",
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


def _exchanges(directory: Path, repeats: int) -> list[dict[str, Any]]:
    with _two_nodes(directory) as (bank, tax):
        assert bank.witness is not None
        witness = bank.witness.witness

        def send(head: Any, key: bytes) -> Any:
            return bank.peers.client("tax").witness(head, key, 10.0)

        def grow() -> None:
            bank.audit.append("rpc")
            tax.audit.append("rpc")

        def exchange() -> object:
            return witness.present("tax", send)

        rows = [
            _row("exchange_mtls", {"grown": True}, _median_seconds(exchange, repeats, grow)),
            _row(
                "exchange_mtls_idle",
                {},
                _median_seconds(lambda: witness.present("tax", send), repeats),
            ),
        ]
        head = bank.audit.checkpoint()
        bank_key = identity.raw_public_key(identity.load_audit_public_key(bank.config.audit_pub))
        request = audit_pb2.WitnessRequest(
            head=wire.checkpoint_to_proto(head), audit_public_key=bank_key
        )
        assert tax.witness is not None
        reply = wire.witness_reply_to_proto(tax.witness.witness.answer(head, bank_key, "bank"))
    sizes = (("witness_request", request), ("witness_response", reply))
    return rows + [
        {"family": "witness", "kernel": kernel, "params": {}, "ops_per_s": None,
         "bytes": len(message.SerializeToString()), "unit": "bytes"}
        for kernel, message in sizes
    ]  # fmt: skip


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure a checkpoint, a witness's receipt and whole exchanges (quick: fewer repeats)."""
    repeats = 5 if quick else 50
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        rows = [_checkpoint(n, repeats) for n in ((1000,) if quick else (1000, 100_000))]
        rows.append(_receive(directory, repeats))
        rows += _exchanges(directory, repeats)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(run(parser.parse_args().quick), indent=2))
