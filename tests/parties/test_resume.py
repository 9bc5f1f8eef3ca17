"""The resume store: sealed resume states, the durable inbox, the transcript, and tampering."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from bund.parties.jobs import TranscriptEntry
from bund.parties.resume import ResumeStateTamperedError, ResumeStore, load_or_create_key
from bund.parties.transport import SPOOL_BYTES, JobInterruptedError, Mailbox

JOB = "a" * 32


def store(tmp_path: Path, name: str = "resume") -> ResumeStore:
    return ResumeStore(tmp_path / f"{name}.db", load_or_create_key(tmp_path / f"{name}.key"))


def test_resume_states_round_trip_and_are_sealed_at_rest(tmp_path: Path) -> None:
    s = store(tmp_path)
    secret = b"blinding scalar 0123456789abcdef"
    s.save(JOB, "bank", "psi", secret)
    assert s.load(JOB, "bank", "psi") == secret
    assert s.load(JOB, "bank", "other") is None
    s.save(JOB, "bank", "psi", b"newer")
    assert s.load(JOB, "bank", "psi") == b"newer"
    s.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("resume.db*"))
    assert secret not in raw and b"newer" not in raw


def test_key_is_private_and_refused_when_readable(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "k")
    assert len(key) == 32 and (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(tmp_path / "k") == key
    os.chmod(tmp_path / "k", 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create_key(tmp_path / "k")


def test_tampered_or_moved_resume_state_is_refused(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.save(JOB, "bank", "psi", b"state")
    s.close()
    db = sqlite3.connect(tmp_path / "resume.db")
    (blob,) = db.execute("SELECT blob FROM checkpoints").fetchone()
    flipped = bytes(blob[:-1]) + bytes([blob[-1] ^ 1])
    db.execute("UPDATE checkpoints SET blob = ?", (flipped,))
    # The intact blob copied under another name or job: its associated data no longer matches.
    db.execute("INSERT INTO checkpoints VALUES (?, 'bank', 'moved', ?)", (JOB, blob))
    db.execute("INSERT INTO checkpoints VALUES (?, 'bank', 'psi', ?)", ("b" * 32, blob))
    db.commit()
    db.close()
    s = store(tmp_path)
    for job, name in ((JOB, "psi"), (JOB, "moved"), ("b" * 32, "psi")):
        with pytest.raises(ResumeStateTamperedError, match="failed authentication"):
            s.load(job, "bank", name)
    other = ResumeStore(tmp_path / "resume.db", load_or_create_key(tmp_path / "other.key"))
    with pytest.raises(ResumeStateTamperedError):
        other.load(JOB, "bank", "moved")


def test_saving_state_drops_taken_payloads_but_keeps_their_digests(tmp_path: Path) -> None:
    s = store(tmp_path)
    box = Mailbox(1024, journal=s)
    box.put(JOB, "tax", "one", b"first")
    box.put(JOB, "tax", "two", b"second")
    assert box.take(JOB, "tax", "one", 1).payload == b"first"
    s.save(JOB, "bank", "after-one", b"derived from first")
    kept = {tag: stored for _, tag, _, stored in s.inbox(JOB)}
    assert kept == {"one": False, "two": True}
    assert s.payload(JOB, "tax", "two") == b"second"
    # A node that restarts reloads the inbox: the untaken message waits, the taken one is a
    # replay if it comes again, and different content under its tag is still equivocation.
    fresh = Mailbox(1024, journal=s)
    fresh.reopen(JOB, s.inbox(JOB))
    assert fresh.put(JOB, "tax", "one", b"first") is False
    assert fresh.take(JOB, "tax", "two", 1).payload == b"second"
    with pytest.raises(Exception, match="different payload"):
        fresh.put(JOB, "tax", "one", b"forged")
    s.forget(JOB)
    assert s.inbox(JOB) == [] and s.load(JOB, "bank", "after-one") is None


def test_interrupt_wakes_waiters_and_reopen_clears_it(tmp_path: Path) -> None:
    s = store(tmp_path)
    box = Mailbox(1024, journal=s)
    box.put(JOB, "tax", "x", b"payload")
    box.interrupt(JOB, "DEADLINE_EXCEEDED: tax is silent")
    with pytest.raises(JobInterruptedError, match="DEADLINE_EXCEEDED"):
        box.take(JOB, "tax", "x", 5)
    with pytest.raises(JobInterruptedError):
        box.check(JOB)
    box.forget(JOB)  # the role ended interrupted; the journal keeps the message
    box.reopen(JOB, s.inbox(JOB))
    box.check(JOB)
    assert box.take(JOB, "tax", "x", 1).payload == b"payload"
    with pytest.raises(ValueError, match="journal"):
        Mailbox(1024).reopen(JOB, s.inbox(JOB))


def test_large_payloads_wait_on_disk_and_are_checked_when_taken(tmp_path: Path) -> None:
    s = store(tmp_path)
    box = Mailbox(1 << 20, journal=s)
    big = bytes(range(256)) * (SPOOL_BYTES // 256 + 1)
    box.put(JOB, "tax", "big", big)
    box.put(JOB, "tax", "big2", big[::-1])
    assert box.take(JOB, "tax", "big", 1).payload == big
    db = sqlite3.connect(tmp_path / "resume.db")
    (blob,) = db.execute("SELECT blob FROM inbox WHERE tag = 'big2'").fetchone()
    flipped = bytes(blob[:-1]) + bytes([blob[-1] ^ 1])
    db.execute("UPDATE inbox SET blob = ? WHERE tag = 'big2'", (flipped,))
    db.commit()
    db.close()
    with pytest.raises(ResumeStateTamperedError):
        box.take(JOB, "tax", "big2", 1)


def test_transcript_keeps_order(tmp_path: Path) -> None:
    s = store(tmp_path)
    entries = [TranscriptEntry("sent", "tax", f"t/{i}", f"{i:064x}", i) for i in range(5)]
    for e in entries:
        s.add_transcript(JOB, e)
    assert s.transcript(JOB) == entries
    assert s.transcript("c" * 32) == []
