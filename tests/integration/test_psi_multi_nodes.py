"""Multi-party PSI between node processes over mTLS: 3 and 4 parties, and a kill -9 mid-job."""

from __future__ import annotations

from pathlib import Path

import pytest

from bund.parties.audit import SqliteAuditStore
from bund.parties.follow import follow_job
from bund.parties.jobs import JobSpec, Participant
from bund.parties.lifecycle.states import JobState, JobStatus
from tests.conftest import NodeFactory
from tests.integration.test_node import wait_final

pytestmark = pytest.mark.integration

IDS = [f"91310000MA{i:08d}" for i in range(400)]
SETS = {
    "bank": IDS[:240],
    "tax": IDS[60:400],
    "registry": IDS[::2],
    "insurer": IDS[100:300],
}


def spec(parties: list[str], receivers: tuple[str, ...]) -> JobSpec:
    leader, *members = parties
    return JobSpec(
        protocol="psi_multi",
        participants=(
            Participant(leader, "leader", "ids", {"id": "company_id"}),
            *(Participant(m, "member", "ids", {"id": "company_id"}) for m in members),
        ),
        receivers=receivers,
        purpose="one cohort for several parties",
        requester=leader,
        params={"mode": "intersection"},
    )


def spawn_all(f: NodeFactory, sets: dict[str, list[str]]) -> dict[str, Path]:
    paths = {}
    for party, ids in sets.items():
        others = [p for p in sets if p != party]
        paths[party] = f.write_config(
            party, {"ids": {"company_id": ids}}, others, {"ids": ["psi_multi"]}
        )
        f.spawn(party, paths[party])
    return paths


def csv_ids(payload: bytes) -> list[str]:
    return [line for line in payload.decode().split("\n")[1:] if line]


@pytest.mark.parametrize("parties", [3, 4])
def test_psi_multi_between_node_processes_matches_plaintext(
    node_factory: NodeFactory, parties: int
) -> None:
    names = list(SETS)[:parties]
    sets = {p: SETS[p] for p in names}
    spawn_all(node_factory, sets)
    receivers = ("bank", names[-1])
    with node_factory.client("bank") as bank:
        job_id = bank.submit(spec(names, receivers))
        status = wait_final(bank, job_id, timeout=120)
        assert status.state is JobState.SUCCEEDED, status.error
    expected = set.intersection(*(set(v) for v in sets.values()))
    for party in names:
        with node_factory.client(party) as c:
            status = wait_final(c, job_id, timeout=60)
            assert status.state is JobState.SUCCEEDED, (party, status.error)
            if party in receivers:
                result = c.result(job_id)
                assert result.summary["intersection_size"] == len(expected)
                got = csv_ids(result.artifacts["intersection.csv"])
                assert got == [v for v in sets[party] if v in expected]  # own dataset order
            else:
                assert not status.has_result


@pytest.mark.parametrize(("victim", "phase"), [("bank", "query"), ("tax", "answer")])
def test_psi_multi_resumes_after_kill_with_the_exact_intersection(
    node_factory: NodeFactory, victim: str, phase: str
) -> None:
    f = node_factory
    ids = [f"91310000MA{i:08d}" for i in range(60_000)]
    sets = {"bank": ids[:40_000], "tax": ids[15_000:55_000], "registry": ids[::2]}
    paths = spawn_all(f, sets)
    with f.client("bank") as bank:
        job_id = bank.submit(spec(list(sets), ("bank",)))

    def busy(status: JobStatus) -> bool:  # past its first heavy phase, before the end
        return status.phase == phase

    with f.client(victim) as c:
        status = follow_job(c, job_id, until=busy, timeout=120, interval=0.02)
    assert busy(status), f"{victim} ended {status.state.value} before it was mid-job"
    f.kill(victim)  # SIGKILL: no clean-up
    f.spawn(victim, paths[victim])
    with f.client("bank") as bank:
        status = wait_final(bank, job_id, timeout=240)
        assert status.state is JobState.SUCCEEDED, status.error
        result = bank.result(job_id)
    for party in ("tax", "registry"):
        with f.client(party) as c:
            assert wait_final(c, job_id, timeout=60).state is JobState.SUCCEEDED
    expected = set.intersection(*(set(v) for v in sets.values()))
    assert sorted(csv_ids(result.artifacts["intersection.csv"])) == sorted(expected)
    f.stop_all()
    store = SqliteAuditStore(f.workdir / victim / "state" / "audit.db")
    try:
        events = [r.event for r in store.read() if r.job_id == job_id]
    finally:
        store.close()
    assert "job_resumed" in events and events.count("job_closed") == 1  # it really restarted
