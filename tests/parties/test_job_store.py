"""One contract, two job stores: memory (in-process tests) and SQLite (a node)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Mapping
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bund.compute.errors import BundError
from bund.parties.audit import AuditLog, MemoryAuditStore
from bund.parties.errors import JobStateError, UnknownJobError
from bund.parties.jobs import AuditSink, JobSpec, JsonScalar, Participant, Result
from bund.parties.lifecycle.events import Event, Key
from bund.parties.lifecycle.states import IllegalTransitionError, JobState, PartyView
from bund.parties.lifecycle.store import JobNote, JobStore, MemoryJobStore, SqliteJobStore

KEY = Ed25519PrivateKey.generate()


def _clock() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _spec(n: int) -> JobSpec:
    return JobSpec(
        protocol="psi",
        participants=(Participant("bank", "member", "loans", {"id": "客户"}),),
        receivers=("bank",),
        purpose="小微企业 credit",
        requester="bank",
        params={"mode": "cardinality", "n": n},
        job_id=f"{n:032x}",
    )


def _running(store: JobStore) -> str:
    """Job 1 created, accepted and started in ``store``: its id."""
    store.create(_spec(1), Event.JOB_SUBMITTED)
    for state in (JobState.ACCEPTED, JobState.RUNNING):
        store.transition(_spec(1).job_id, state, Event.JOB_STARTED)
    return _spec(1).job_id


class _DownAudit:
    """An audit log whose store is down: every append fails."""

    def append(
        self, event: str, job_id: str = "", fields: Mapping[str, JsonScalar] | None = None
    ) -> object:
        raise BundError("audit store unavailable")


class JobStoreContract:
    """What every job store does; subclasses say how to make one."""

    __test__ = False

    def make(self, tmp_path: Path, audit: AuditSink) -> JobStore:
        raise NotImplementedError

    @pytest.fixture
    def audit(self) -> MemoryAuditStore:
        return MemoryAuditStore()

    @pytest.fixture
    def store(self, tmp_path: Path, audit: MemoryAuditStore) -> JobStore:
        jobs = self.make(tmp_path, AuditLog(audit, KEY, "bank", _clock))
        yield jobs
        jobs.close()

    def test_create_records_first_and_refuses_a_known_id(
        self, store: JobStore, audit: MemoryAuditStore
    ) -> None:
        status = store.create(_spec(1), Event.JOB_SUBMITTED, {Key.PURPOSE: "p"})
        assert status.state is JobState.PROPOSED and status.spec == _spec(1)
        assert [r.event for r in audit.read()] == ["job_submitted"]
        assert audit.read()[0].fields[Key.STATE] == "proposed"
        with pytest.raises(JobStateError, match="already known"):
            store.create(_spec(1), Event.JOB_PROPOSED)
        assert len(audit) == 1
        with pytest.raises(UnknownJobError):
            store.get("f" * 32)
        assert store.find("f" * 32) is None

    def test_a_move_is_recorded_with_its_state_and_an_illegal_one_is_not(
        self, store: JobStore, audit: MemoryAuditStore
    ) -> None:
        store.create(_spec(1), Event.JOB_SUBMITTED)
        store.transition(_spec(1).job_id, JobState.ACCEPTED, Event.JOB_ACCEPTED, error="")
        with pytest.raises(IllegalTransitionError, match="cannot become succeeded"):
            store.transition(_spec(1).job_id, JobState.SUCCEEDED, Event.JOB_CLOSED)
        status = store.transition(
            _spec(1).job_id, JobState.FAILED, Event.JOB_FAILED, {Key.REASON: "r"}, error="why"
        )
        assert (status.state, status.error) == (JobState.FAILED, "why")
        assert [(r.event, r.fields[Key.STATE]) for r in audit.read()] == [
            ("job_submitted", "proposed"),
            ("job_accepted", "accepted"),
            ("job_failed", "failed"),
        ]

    def test_write_ahead_an_audit_failure_changes_nothing(self, tmp_path: Path) -> None:
        store = self.make(tmp_path, _DownAudit())
        try:
            with pytest.raises(BundError, match="unavailable"):
                store.create(_spec(1), Event.JOB_SUBMITTED)
            assert store.find(_spec(1).job_id) is None
        finally:
            store.close()

    def test_the_result_is_stored_with_the_success_in_one_step(self, store: JobStore) -> None:
        job = _running(store)
        assert store.load_result(job) is None and not store.get(job).has_result
        result = Result({"n": 3, "name": "交集"}, {"b.csv": b"0123456789", "a.bin": b"\x00\x01"})
        status = store.transition(
            job, JobState.SUCCEEDED, Event.JOB_CLOSED, transcript="ab" * 32, result=result
        )
        assert status.has_result and status.transcript_digest == "ab" * 32
        info = store.load_result(job)
        assert info is not None
        assert dict(info.summary) == {"n": 3, "name": "交集"}
        assert dict(info.artifact_sizes) == {"a.bin": 2, "b.csv": 10}
        full = store.load_full_result(job)
        assert full is not None and dict(full.artifacts) == dict(result.artifacts)
        assert store.read_artifact(job, "b.csv", 3, 4) == (b"3456", 10)
        assert store.read_artifact(job, "b.csv", 8, 100) == (b"89", 10)
        with pytest.raises(JobStateError, match="no artifact"):
            store.read_artifact(job, "missing", 0, 1)

    def test_a_file_artifact_is_read_like_one_held_in_bytes(
        self, store: JobStore, tmp_path: Path
    ) -> None:
        job = _running(store)
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        (scratch / "big.csv").write_bytes(b"id\n" + b"x" * 1000)
        result = Result({"n": 1}, {"small.txt": b"ab"}, {"big.csv": scratch / "big.csv"})
        store.transition(job, JobState.SUCCEEDED, Event.JOB_CLOSED, result=result)
        info = store.load_result(job)
        assert info is not None and dict(info.artifact_sizes) == {"big.csv": 1003, "small.txt": 2}
        assert store.read_artifact(job, "big.csv", 1000, 10) == (b"xxx", 1003)
        assert store.read_artifact(job, "big.csv", 2000, 10) == (b"", 1003)
        full = store.load_full_result(job)
        assert full is not None
        assert dict(full.artifacts) == {"big.csv": b"id\n" + b"x" * 1000, "small.txt": b"ab"}

    def test_listing_newest_first_and_unfinished_includes_interrupted(
        self, store: JobStore
    ) -> None:
        for n in range(1, 5):
            store.create(_spec(n), Event.JOB_SUBMITTED)
        store.transition(_spec(1).job_id, JobState.REFUSED, Event.JOB_REFUSED)
        for state in (JobState.ACCEPTED, JobState.RUNNING, JobState.INTERRUPTED):
            store.transition(_spec(2).job_id, state, Event.JOB_STARTED)
        assert [s.spec.job_id for s in store.newest(2)] == [_spec(4).job_id, _spec(3).job_id]
        assert [s.spec.job_id for s in store.unfinished()] == [
            _spec(2).job_id,
            _spec(3).job_id,
            _spec(4).job_id,
        ]

    def test_other_parties_answers_are_kept_in_spec_order_and_not_audited(
        self, store: JobStore, audit: MemoryAuditStore
    ) -> None:
        spec = dataclasses.replace(
            _spec(1),
            participants=(
                *_spec(1).participants,
                Participant("tax", "member", "filings"),
                Participant("registry", "member", "firms"),
            ),
        )
        seen = store.create(spec, Event.JOB_SUBMITTED)
        job = spec.job_id
        store.note_party(job, PartyView("registry", JobState.REFUSED, (), "不在协议范围"))
        store.note_party(job, PartyView("tax", JobState.AWAITING_APPROVAL))
        store.note_party(job, PartyView("tax", JobState.ACCEPTED, ("alice", "bob")))
        status = store.wait_for_change(job, seen, 0.0)
        assert status.parties == (
            PartyView("tax", JobState.ACCEPTED, ("alice", "bob")),
            PartyView("registry", JobState.REFUSED, (), "不在协议范围"),
        )
        assert store.newest(1)[0].parties == status.parties
        assert len(audit) == 1  # the submission only

    def test_listing_by_state(self, store: JobStore) -> None:
        for n in range(1, 4):
            store.create(_spec(n), Event.JOB_SUBMITTED)
        store.transition(_spec(2).job_id, JobState.AWAITING_APPROVAL, Event.JOB_AWAITING_APPROVAL)
        waiting = store.newest(10, frozenset({JobState.AWAITING_APPROVAL}))
        assert [s.spec.job_id for s in waiting] == [_spec(2).job_id]

    def test_progress_is_kept_but_not_audited(
        self, store: JobStore, audit: MemoryAuditStore
    ) -> None:
        store.create(_spec(1), Event.JOB_SUBMITTED)
        store.progress(_spec(1).job_id, "blinding", 5, 10)
        status = store.get(_spec(1).job_id)
        assert (status.phase, status.done, status.total) == ("blinding", 5, 10)
        assert len(audit) == 1

    def test_a_waiter_wakes_on_the_change_without_polling(self, store: JobStore) -> None:
        job = _spec(1).job_id
        seen = store.create(_spec(1), Event.JOB_SUBMITTED)
        woke: list[JobState] = []
        waiter = threading.Thread(
            target=lambda: woke.append(store.wait_for_change(job, seen, 30.0).state)
        )
        waiter.start()
        store.transition(job, JobState.ACCEPTED, Event.JOB_ACCEPTED)
        waiter.join(30.0)
        assert woke == [JobState.ACCEPTED]
        # An unchanged status returns once the timeout passes.
        now = store.get(job)
        assert store.wait_for_change(job, now, 0.01) == now

    def test_observers_hear_each_lifecycle_record_and_progress_after_it(
        self, store: JobStore, audit: MemoryAuditStore
    ) -> None:
        job = _spec(1).job_id
        heard: list[tuple[str | None, str, int]] = []

        def observe(note: JobNote) -> None:
            # Called after the record is durable: the log holds it already.
            heard.append((note.event, note.status.state.value, len(audit)))
            assert note.event is None or note.fields[Key.STATE] == note.status.state.value

        def broken(note: JobNote) -> None:
            raise RuntimeError("an observer's failure changes nothing")

        store.add_observer(broken)
        store.add_observer(observe)
        created = store.create(_spec(1), Event.JOB_SUBMITTED)
        assert created.created_at and created.created_at == created.updated_at
        store.transition(job, JobState.AWAITING_APPROVAL, Event.JOB_AWAITING_APPROVAL)
        assert store.approve(job, "alice", {Key.APPROVER: "alice"}) == ("alice",)
        store.transition(job, JobState.ACCEPTED, Event.JOB_ACCEPTED)
        store.transition(job, JobState.RUNNING, Event.JOB_STARTED)
        store.progress(job, "blind", 1, 2)
        store.record(job, Event.MESSAGE_SENT, {Key.PEER: "tax"})  # not the job's life: unheard
        store.transition(job, JobState.SUCCEEDED, Event.JOB_CLOSED)
        store.record(job, Event.JOB_CLOSED, {Key.OUTCOME: "succeeded"})
        assert heard == [
            ("job_submitted", "proposed", 1),
            ("job_awaiting_approval", "awaiting_approval", 2),
            ("job_approved", "awaiting_approval", 3),
            ("job_accepted", "accepted", 4),
            ("job_started", "running", 5),
            (None, "running", 5),
            ("job_closed", "succeeded", 7),
            ("job_closed", "succeeded", 8),
        ]
        assert store.get(job).created_at == created.created_at


class TestMemoryJobStore(JobStoreContract):
    __test__ = True

    def make(self, tmp_path: Path, audit: AuditSink) -> JobStore:
        return MemoryJobStore(audit)


class TestSqliteJobStore(JobStoreContract):
    __test__ = True

    def make(self, tmp_path: Path, audit: AuditSink) -> JobStore:
        return SqliteJobStore(tmp_path / "jobs.db", audit)

    def test_file_artifacts_move_into_the_store_and_survive_reopening(self, tmp_path: Path) -> None:
        audit = AuditLog(MemoryAuditStore(), KEY, "bank", _clock)
        store = SqliteJobStore(tmp_path / "state" / "jobs.db", audit)
        job = _running(store)
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        (scratch / "c.csv").write_bytes(b"c.csv" * 100)
        result = Result({"n": 2}, files={"c.csv": scratch / "c.csv"})
        store.transition(job, JobState.SUCCEEDED, Event.JOB_CLOSED, result=result)
        folder = tmp_path / "state" / "artifacts" / job
        assert sorted(p.name for p in folder.iterdir()) == ["c.csv"]
        assert not (scratch / "c.csv").exists()  # moved, not copied
        store.close()
        again = SqliteJobStore(tmp_path / "state" / "jobs.db", audit)
        try:
            assert again.read_artifact(job, "c.csv", 0, 7) == (b"c.csvc.", 500)
            (folder / "c.csv").unlink()
            with pytest.raises(JobStateError, match="missing"):
                again.read_artifact(job, "c.csv", 0, 5)
        finally:
            again.close()

    def test_an_artifact_file_name_cannot_leave_its_folder(self, tmp_path: Path) -> None:
        for name in ("../jobs.db", "a/b", ".hidden", ""):
            with pytest.raises(ValueError, match="cannot name an artifact file"):
                Result({}, files={name: tmp_path / "x"})

    def test_jobs_and_results_survive_reopening(self, tmp_path: Path) -> None:
        audit = AuditLog(MemoryAuditStore(), KEY, "bank", _clock)
        store = SqliteJobStore(tmp_path / "jobs.db", audit)
        job = _running(store)
        store.transition(job, JobState.SUCCEEDED, Event.JOB_CLOSED, result=Result({"n": 1}))
        store.close()
        again = SqliteJobStore(tmp_path / "jobs.db", audit)
        try:
            status = again.get(job)
            assert status.state is JobState.SUCCEEDED and status.spec == _spec(1)
            info = again.load_result(job)
            assert info is not None and dict(info.summary) == {"n": 1}
        finally:
            again.close()
