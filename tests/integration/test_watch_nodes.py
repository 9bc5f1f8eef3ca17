"""WatchJob over mTLS: pushed status, role checks, per-caller limits, and the end at node stop."""

from __future__ import annotations

import threading

import grpc
import pytest

from bund.parties.client import NodeClient, RemoteError
from bund.parties.errors import PeerUnavailableError
from bund.parties.follow import WatchSource, follow_job
from bund.parties.lifecycle.states import JobState, JobStatus
from tests.conftest import NodeFactory
from tests.integration.test_governance import approve
from tests.integration.test_node import BANK_IDS, TAX_IDS, psi_spec


def _start(f: NodeFactory) -> None:
    f.start("bank", {"loans": {"company_id": BANK_IDS}}, ("tax",), {"loans": ["psi"]})
    f.start("tax", {"filings": {"uscc": TAX_IDS}}, ("bank",), {"filings": ["psi"]}, approvals=True)
    f.start("registry", {"firms": {"id": BANK_IDS}}, ("bank",), {"firms": ["psi"]})


def _awaiting(f: NodeFactory, bank: NodeClient) -> str:
    job_id = bank.submit(psi_spec())
    with f.client("tax") as tax:
        follow_job(tax, job_id, until=lambda s: s.state is JobState.AWAITING_APPROVAL, timeout=30)
    return job_id


def test_a_watch_pushes_each_change_until_the_job_ends(node_factory: NodeFactory) -> None:
    _start(node_factory)
    with node_factory.client("bank") as bank:
        assert isinstance(bank, WatchSource)  # follow_job watches a node client
        job_id = _awaiting(node_factory, bank)
        watch = bank.watch(job_id, timeout=60)
        first = next(watch)
        approve(node_factory, "tax", job_id)
        rest = list(watch)
        status = follow_job(bank, job_id, timeout=60)
    assert first.state is JobState.ACCEPTED
    assert rest[-1].state is JobState.SUCCEEDED and status.state is JobState.SUCCEEDED
    assert any(s.state is JobState.RUNNING for s in rest)
    assert status.has_result


def test_watches_are_role_checked_and_bounded_per_caller(node_factory: NodeFactory) -> None:
    _start(node_factory)
    with node_factory.client("bank") as bank:
        job_id = _awaiting(node_factory, bank)
        with node_factory.client("bank", as_party="registry") as stranger:
            with pytest.raises(RemoteError) as refused:
                next(stranger.watch(job_id))
        assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
        limit = node_factory.nodes["bank"].manager.watches.per_caller
        held = [bank.watch(job_id, timeout=60) for _ in range(limit)]
        for watch in held:
            assert next(watch).state is JobState.ACCEPTED
        with pytest.raises(RemoteError) as exhausted:
            next(bank.watch(job_id))
        assert exhausted.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        # A follower at the limit asks instead of watching.
        status = follow_job(bank, job_id, until=lambda s: s.state is JobState.ACCEPTED)
        assert status.state is JobState.ACCEPTED
        for watch in held:
            watch.close()  # type: ignore[attr-defined]


def test_stopping_the_node_ends_its_watches(node_factory: NodeFactory) -> None:
    _start(node_factory)
    with node_factory.client("bank") as bank:
        job_id = _awaiting(node_factory, bank)
        seen: list[JobStatus] = []
        errors: list[Exception] = []
        first = threading.Event()

        def follow() -> None:
            try:
                for status in bank.watch(job_id, timeout=120):
                    seen.append(status)
                    first.set()
            except PeerUnavailableError as exc:
                errors.append(exc)

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        assert first.wait(30)
        node_factory.nodes.pop("bank").stop(grace=30.0)
        thread.join(30)
        assert not thread.is_alive()
    assert seen and all(s.state is JobState.ACCEPTED for s in seen)  # ended by the stop
