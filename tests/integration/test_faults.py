"""Faults between node processes: a frozen peer, a killed node, a restart (issue 9).

The nodes run the test protocol ``relay_test`` (``fault_protocols``): rounds of write-ahead
saved random blinds and a per-round budget charge. Its result does not depend on the blinds,
so a resumed job must end with exactly the uninterrupted result, no round charged twice, every
audit chain intact and the regulator's reconciliation clean.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
from fractions import Fraction
from pathlib import Path

import pytest

from bund.compute import insecure
from bund.parties.audit import SqliteAuditStore, verify_store
from bund.parties.client import NodeClient
from bund.parties.demo_data import generate_finance
from bund.parties.follow import FollowTimeoutError, follow_job, in_state
from bund.parties.identity import load_audit_public_key
from bund.parties.jobs import JobSpec, Participant
from bund.parties.lifecycle.states import JobState, JobStatus
from bund.parties.protocols import PROTOCOLS
from bund.parties.regulator import audit_federation, load_regulator_config
from tests.conftest import NodeFactory, wait_until
from tests.integration.fault_protocols import TEST_PROTOCOLS
from tests.integration.test_node import BANK_IDS, TAX_IDS, psi_spec, wait_final
from tests.integration.test_regulator import write_regulator_config
from tests.protocols.test_vertical_lr import ROLES, make_spec, trust_of

pytestmark = pytest.mark.integration

HEARTBEAT_S = 0.2
SILENCE_S = 3.0
LIMITS = f"heartbeat_interval_s = {HEARTBEAT_S}\npeer_silence_s = {SILENCE_S}"
#: A frozen peer must turn into an interrupted job within the silence plus two heartbeats; the
#: rest is slack for a loaded CI machine.
INTERRUPT_BOUND_S = SILENCE_S + 2 * HEARTBEAT_S + 8


def relay_spec(rounds: int, pause_s: float, other: str = "tax") -> JobSpec:
    return JobSpec(
        protocol="relay_test",
        participants=(
            Participant("bank", "member", "loans"),
            Participant(other, "member", "filings"),
        ),
        receivers=("bank",),
        purpose="fault test",
        requester="bank",
        params={"rounds": rounds, "pause_s": pause_s},
    )


def configs(f: NodeFactory, *others: str) -> dict[str, Path]:
    out = {"bank": f.write_config("bank", {"loans": {"id": BANK_IDS}}, others, level="public",
                                  limits=LIMITS)}  # fmt: skip
    for other in others:
        out[other] = f.write_config(
            other, {"filings": {"id": TAX_IDS}}, ("bank",), level="public", budget_epsilon="1",
            limits=LIMITS,
        )  # fmt: skip
    return out


def start_in_process(f: NodeFactory, name: str, config: Path) -> None:
    f.run(name, config, {**PROTOCOLS, **TEST_PROTOCOLS})


def spent(f: NodeFactory, name: str) -> Fraction:
    """Epsilon charged to ``name``'s dataset, read from its ledger file."""
    db = sqlite3.connect(f.workdir / name / "state" / "budget.db")
    try:
        return sum((Fraction(e) for (e,) in db.execute("SELECT epsilon FROM charges")), Fraction())
    finally:
        db.close()


def expected_sum(rounds: int) -> int:
    return sum(k * k for k in range(rounds))


def wait_progress(f: NodeFactory, name: str, job_id: str, at_least: int) -> None:
    """Follow the job at ``name``'s node until it reports ``at_least`` rounds done."""
    with f.client(name) as c:
        status = follow_job(
            c, job_id, until=lambda s: s.done >= at_least, timeout=60, interval=0.02
        )
    assert status.done >= at_least, f"job {job_id} ended {status.state.value} at {name}"


def wait_interrupted(client: NodeClient, job_id: str) -> JobStatus:
    """Follow the job until it is interrupted (or, wrongly, ends), within the bound a fault has."""
    interrupted = in_state(JobState.INTERRUPTED)
    return follow_job(client, job_id, until=interrupted, timeout=INTERRUPT_BOUND_S, interval=0.02)


#: Thread pools that grow on demand up to a fixed size: bounded by construction, not leaks.
BOUNDED_POOLS = ("bund-job", "bund-heartbeat", "bund-rpc")


def resource_counts() -> tuple[int, int]:
    """Threads outside the bounded pools, and open file descriptors, of this process."""
    threads = [t.name for t in threading.enumerate() if not t.name.startswith(BOUNDED_POOLS)]
    return len(threads), len(os.listdir("/proc/self/fd"))


def resource_names() -> tuple[list[str], list[str]]:
    """What the counts count, for a failure message."""
    threads = sorted(t.name for t in threading.enumerate())
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # closed meanwhile
            continue
    return threads, sorted(fds)


def grown(before: tuple[list[str], list[str]]) -> str:
    """The threads and descriptors that are new since ``before``."""
    now = resource_names()
    return f"new threads {sorted(set(now[0]) - set(before[0]))}, new descriptors " + str(
        sorted(set(now[1]) - set(before[1]))
    )


def no_more_than(baseline: tuple[int, int]) -> bool | None:
    threads, fds = resource_counts()
    return (threads <= baseline[0] and fds <= baseline[1]) or None


def test_frozen_peer_interrupts_the_job_which_resumes_once_it_thaws(
    node_factory: NodeFactory,
) -> None:
    f = node_factory
    paths = configs(f, "tax", "registry")
    start_in_process(f, "bank", paths["bank"])
    start_in_process(f, "registry", paths["registry"])
    f.spawn("tax", paths["tax"])
    rounds = 80
    with f.client("bank") as bank:
        warm = bank.submit(relay_spec(5, 0))
        assert wait_final(bank, warm).state is JobState.SUCCEEDED
        f.wait_closed(warm)
        baseline: tuple[int, int] | None = None
        names: tuple[list[str], list[str]] = ([], [])
        for _ in range(2):
            job_id = bank.submit(relay_spec(rounds, 0.02))
            wait_progress(f, "bank", job_id, 5)
            f.processes["tax"].freeze()
            try:
                status = wait_interrupted(bank, job_id)
                assert status.state is JobState.INTERRUPTED
                assert "DEADLINE_EXCEEDED" in status.error and "tax" in status.error
                # Other jobs on the same node carry on while tax is frozen.
                other = bank.submit(relay_spec(10, 0, other="registry"))
                done = wait_final(bank, other)
                assert done.state is JobState.SUCCEEDED
                assert bank.result(other).summary["sum_of_squares"] == expected_sum(10)
            finally:
                f.processes["tax"].thaw()
            bank.resume(job_id)  # or it heals by itself: either way it must succeed
            try:
                finished = wait_final(bank, job_id)
            except FollowTimeoutError:
                with f.client("tax") as tax:
                    raise AssertionError((bank.status(job_id), tax.status(job_id))) from None
            assert finished.state is JobState.SUCCEEDED, finished.error
            assert bank.result(job_id).summary["sum_of_squares"] == expected_sum(rounds)
            f.wait_closed(job_id)
            # After the first fault the node reached its steady state; the second must not leak.
            if baseline is None:
                baseline, names = resource_counts(), resource_names()
            else:
                wait_until(
                    functools.partial(no_more_than, baseline),
                    10,
                    f"threads and descriptors at {baseline}: {grown(names)}",
                )
    assert spent(f, "tax") == Fraction(5 + 2 * rounds, 1000)


@pytest.mark.parametrize("victim", ["bank", "tax"])
@pytest.mark.parametrize("restart", ["quick", "late"])
def test_killed_node_restarts_and_the_job_resumes_exactly(
    node_factory: NodeFactory, tmp_path: Path, victim: str, restart: str
) -> None:
    f = node_factory
    paths = configs(f, "tax")
    for name in ("bank", "tax"):
        f.spawn(name, paths[name])
    survivor = "tax" if victim == "bank" else "bank"
    rounds = 40
    with f.client("bank") as bank:
        job_id = bank.submit(relay_spec(rounds, 0.03))
    wait_progress(f, survivor, job_id, 8)
    f.kill(victim)  # SIGKILL: mid-phase, no clean-up
    if restart == "late":
        with f.client(survivor) as c:
            status = wait_interrupted(c, job_id)
        assert status.state is JobState.INTERRUPTED
    f.spawn(victim, paths[victim])  # recovers: interrupted by the restart, then resumed
    with f.client("bank") as bank:
        status = wait_final(bank, job_id, timeout=60)
        assert status.state is JobState.SUCCEEDED, status.error
        assert bank.result(job_id).summary["sum_of_squares"] == expected_sum(rounds)
    with f.client("tax") as tax:
        assert wait_final(tax, job_id).state is JobState.SUCCEEDED
    assert spent(f, "tax") == Fraction(rounds, 1000)
    addresses = {n: f"127.0.0.1:{f.port(n)}" for n in ("bank", "tax")}
    regulator = write_regulator_config(tmp_path / "regulator.toml", f.federation, addresses)
    wait_until(
        lambda: audit_federation(load_regulator_config(regulator)).errors == 0 or None,
        20,
        "a clean reconciliation",
    )
    f.stop_all()
    for name in ("bank", "tax"):
        store = SqliteAuditStore(f.workdir / name / "state" / "audit.db")
        try:
            key = load_audit_public_key(f.federation.party_dir(name) / "audit_ed25519.pub")
            report = verify_store(store, key)
            assert report.ok, report
            events = [r.event for r in store.read() if r.job_id == job_id]
        finally:
            store.close()
        # The restarted node resumed; the survivor too if it had given up waiting: always when
        # the restart came late, and in a quick one if the restart outlasted the peer-silence
        # bound (a loaded machine). A node resumes exactly when it was interrupted.
        interrupted = "job_interrupted" in events
        assert interrupted >= (name == victim or restart == "late")
        assert ("job_resumed" in events) == interrupted
        assert events.count("job_closed") == 1


SMALL_KEYS = {insecure.ENV_VAR: insecure.ENV_VALUE}  # 512-bit Paillier keys in the node processes


def run_vertical_lr(f: NodeFactory, victim: str | None) -> dict[str, dict[str, object]]:
    """One vertical-LR job between three node processes; kill ``victim`` mid-training, restart it.

    Returns each party's model.json.
    """
    with f.client("bank") as bank:
        job_id = bank.submit(make_spec(epochs=8, batch_size=48))
    if victim is not None:
        wait_progress(f, "bank", job_id, 12)
        f.kill(victim)
        f.spawn(victim, f.workdir / victim / "node.toml", env=SMALL_KEYS)
    models: dict[str, dict[str, object]] = {}
    for party in ROLES:
        with f.client(party) as c:
            status = wait_final(c, job_id, timeout=240)
            assert status.state is JobState.SUCCEEDED, (party, status.error)
            models[party] = json.loads(c.result(job_id).artifacts["model.json"])
    return models


@pytest.mark.parametrize("victim", ["bank", "tax"])
def test_vertical_lr_resumes_after_kill_with_the_uninterrupted_model(
    node_factory: NodeFactory, victim: str
) -> None:
    f = node_factory
    data = generate_finance(1500, 11)
    for party, dataset in ROLES.items():
        others = [p for p in ROLES if p != party]
        path = f.write_config(
            party, allowed=others, tables={dataset: data[dataset]}, limits=LIMITS,
            trusted_for=trust_of(party),
        )  # fmt: skip
        f.spawn(party, path, env=SMALL_KEYS)
    reference = run_vertical_lr(f, None)
    resumed = run_vertical_lr(f, victim)
    assert resumed == reference  # bit for bit: every party's coefficients, losses and metrics


@pytest.mark.parametrize("victim", ["bank", "tax"])
def test_psi_resumes_after_kill_with_the_exact_intersection(
    node_factory: NodeFactory, victim: str
) -> None:
    f = node_factory
    bank_ids = [f"91310000MA{i:08d}" for i in range(0, 40_000)]
    tax_ids = [f"91310000MA{i:08d}" for i in range(25_000, 60_000)]
    paths = {
        "bank": f.write_config("bank", {"loans": {"company_id": bank_ids}}, ("tax",),
                               {"loans": ["psi"]}, limits=LIMITS),
        "tax": f.write_config("tax", {"filings": {"uscc": tax_ids}}, ("bank",),
                              {"filings": ["psi"]}, limits=LIMITS),
    }  # fmt: skip
    for name, path in paths.items():
        f.spawn(name, path)
    with f.client("bank") as bank:
        job_id = bank.submit(psi_spec())
    survivor = "tax" if victim == "bank" else "bank"

    def busy(status: JobStatus) -> bool:  # the victim is hashing, blinding or re-blinding
        return status.phase in ("blind", "reblind") and status.done >= 8_000

    with f.client(victim) as c:
        status = follow_job(c, job_id, until=busy, timeout=60, interval=0.02)
    assert busy(status), f"{victim} ended {status.state.value} before it was mid-phase"
    f.kill(victim)
    f.spawn(victim, paths[victim])
    with f.client("bank") as bank:
        status = wait_final(bank, job_id, timeout=120)
        assert status.state is JobState.SUCCEEDED, status.error
        result = bank.result(job_id)
    with f.client(survivor) as c:
        assert wait_final(c, job_id).state is JobState.SUCCEEDED
    ids = result.artifacts["intersection.csv"].decode().split()[1:]
    assert sorted(ids) == sorted(set(bank_ids) & set(tax_ids))
    f.stop_all()
    store = SqliteAuditStore(f.workdir / victim / "state" / "audit.db")
    try:
        events = [r.event for r in store.read() if r.job_id == job_id]
    finally:
        store.close()
    assert "job_resumed" in events and events.count("job_closed") == 1  # it really restarted
