"""Governance that fails closed, between nodes over mTLS: each situation of the governance issue.

- An audit store that is locked refuses every action that needs a record (UNAVAILABLE), and
  leaves nothing half-done: no job, no result served, no record.
- A flood of refused calls from one caller costs a bounded number of audit records.
- Proposals from a party that is not a counterparty create no state at all.
- Offsets and indexes beyond 2^53 are INVALID_ARGUMENT, not INTERNAL.
(tests/parties/test_fail_closed.py plays the same lifecycle situations in one process.)
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import grpc
import pytest

from bund.parties.client import RemoteError
from bund.parties.errors import PeerUnavailableError
from bund.parties.lifecycle.events import Event
from bund.parties.lifecycle.states import JobState
from bund.v1 import audit_pb2, job_pb2
from tests.conftest import NodeFactory
from tests.integration.test_node import BANK_IDS, TAX_IDS, psi_spec, wait_final


def _start_pair(f: NodeFactory, write_timeout_s: float = 0.3) -> None:
    """Bank and tax, the bank's audit store giving up on a lock after ``write_timeout_s``."""
    path = f.write_config("bank", {"loans": {"company_id": BANK_IDS}}, ("tax",), {"loans": ["psi"]})
    text = path.read_text().replace("[audit]\n", f"[audit]\nwrite_timeout_s = {write_timeout_s}\n")
    path.write_text(text)
    f.run("bank", path)
    f.start("tax", {"filings": {"uscc": TAX_IDS}}, ("bank",), {"filings": ["psi"]})


class _Locked:
    """Another process holding the write lock of a node's SQLite audit store."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, timeout=5)

    def __enter__(self) -> None:
        self._db.execute("BEGIN EXCLUSIVE")

    def __exit__(self, *exc: object) -> None:
        self._db.execute("ROLLBACK")
        self._db.close()


def _audit_db(f: NodeFactory, name: str) -> Path:
    return f.config(name).state_dir / "audit.db"


def test_a_locked_audit_store_refuses_submission_and_result_reads(
    node_factory: NodeFactory,
) -> None:
    """Before: reads were served with no record, and a submission stuck in PROPOSED."""
    _start_pair(node_factory)
    with node_factory.client("bank") as bank:
        job = bank.submit(psi_spec())
        assert wait_final(bank, job).state is JobState.SUCCEEDED
        before = len(node_factory.nodes["bank"].audit_store)
        with _Locked(_audit_db(node_factory, "bank")):
            with pytest.raises(PeerUnavailableError, match="answered UNAVAILABLE.*audit store"):
                bank.submit(psi_spec())
            with pytest.raises(PeerUnavailableError, match="answered UNAVAILABLE"):
                bank.result(job)
        assert len(node_factory.nodes["bank"].audit_store) == before
        assert [s.spec.job_id for s in bank.list_jobs()] == [job]  # no half-made job
        result = bank.result(job)  # the store is back: served, and recorded first
        assert "intersection.csv" in result.artifacts
    reads = [r for r in node_factory.nodes["bank"].audit_store.read() if r.event == "result_read"]
    assert reads and all(r.job_id == job for r in reads)


def test_a_flood_of_refused_calls_costs_a_bounded_number_of_records(
    node_factory: NodeFactory,
) -> None:
    """Before: random-id status calls made 39,975 signed, fsynced records in 30 s."""
    _start_pair(node_factory)
    node = node_factory.nodes["bank"]
    before = len(node.audit_store)
    with node_factory.client("bank", as_party="tax") as intruder:
        for i in range(300):
            with pytest.raises(RemoteError):
                intruder.status(f"{i:032x}")
    node.refusals.flush()
    records = node.audit_store.read(before)
    refused = [r for r in records if r.event == Event.RPC_REFUSED]
    assert len(records) <= 3 and len(refused) == 1
    assert refused[0].fields["count"] == 300 and refused[0].fields["caller"] == "tax"


def test_proposals_from_a_party_that_is_not_a_counterparty_store_nothing(
    node_factory: NodeFactory,
) -> None:
    """Before: twenty proposals of a stranger stored 101 MB of job specs."""
    node_factory.start("tax", {"filings": {"uscc": TAX_IDS}}, (), {"filings": ["psi"]})
    node_factory.start("bank", {"loans": {"company_id": BANK_IDS}}, ("tax",))
    jobs_db = node_factory.config("tax").state_dir / "jobs.db"
    size = jobs_db.stat().st_size
    with node_factory.client("tax", as_party="bank") as stranger:
        for i in range(20):
            proposal = dataclasses.replace(psi_spec(), purpose="x" * 1000, job_id=f"{i + 1:032x}")
            accepted, reason = stranger.propose(proposal)
            assert not accepted and "does not allow jobs with bank" in reason
    tax = node_factory.nodes["tax"]
    assert tax.manager.store.newest(100) == []
    assert not any(r.job_id for r in tax.audit_store.read())
    assert jobs_db.stat().st_size <= size + 64 * 1024  # no specs kept (WAL pages aside)


def test_offsets_beyond_2_53_are_invalid_arguments_not_internal_errors(
    node_factory: NodeFactory,
) -> None:
    _start_pair(node_factory)
    with node_factory.client("bank") as bank:
        job = bank.submit(psi_spec())
        wait_final(bank, job)
        for offset in (2**53 + 1, 2**63, 2**64 - 1):
            with pytest.raises(RemoteError) as caught:
                bank._call(
                    "Jobs",
                    "ReadArtifact",
                    job_pb2.ReadArtifactRequest(job_id=job, name="intersection.csv", offset=offset),
                    job_pb2.ReadArtifactResponse,
                )
            assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(RemoteError) as caught:
                bank._call(
                    "Audit",
                    "ReadAuditLog",
                    audit_pb2.ReadAuditLogRequest(start=offset, limit=10),
                    audit_pb2.ReadAuditLogResponse,
                )
            assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
