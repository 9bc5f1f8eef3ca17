"""What a node keeps so an interrupted job can resume: role states, inbox and transcript.

A node that is killed mid-job loses its memory but not this store. On restart (or on
``bund job resume``) the job's role runs again: it loads its last saved state, finds the
messages it had received since then in the inbox, and re-sends what its resume state determines,
which peers' mailboxes treat as no-ops.

Everything lives in one SQLite file (``state_dir/resume.db``, WAL, ``synchronous=FULL``) and every
saved state and message payload is sealed with AES-256-GCM under the node's resume key
(``state_dir/resume.key``, 32 bytes from the OS, mode 0600, never sent anywhere). The associated
data binds each blob to its job, party, kind and name, so a blob copied to another slot, another
job or another node fails authentication: a tampered or moved state is refused, never used.

Rows of a job are deleted when the job ends, whatever the outcome, except while it is
interrupted (resumable). So is the job's scratch directory (``state_dir/scratch/JOB``), where a
role spills data too large for memory (PSI's buckets of blinded values); its files are not
sealed and hold nothing secret. States kept beyond every job (``JobContext.save_kept``) are
rows under the reserved job id ``kept``, sealed like the others and never deleted by a job.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bund.compute.errors import BundError
from bund.parties.jobs import TranscriptEntry
from bund.parties.jobspec import is_job_id

_KEY_BYTES = 32
_NONCE_BYTES = 12
_AAD = b"bund/resume/v1\x00"


class ResumeStateTamperedError(BundError):
    """A stored resume state or message failed authentication: altered, moved, or another key."""


def load_or_create_key(path: Path) -> bytes:
    """The node's resume key: created 0600 on first use; refused if others may read it."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(AESGCM.generate_key(bit_length=8 * _KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(f"{path} is readable by others (mode {oct(mode & 0o777)}); chmod 600")
    key = path.read_bytes()
    if len(key) != _KEY_BYTES:
        raise ValueError(f"{path} must hold a {_KEY_BYTES}-byte key")
    return key


def _aad(kind: str, job_id: str, party: str, name: str) -> bytes:
    return _AAD + "\x00".join((kind, job_id, party, name)).encode()


class ResumeStore:
    """Sealed resume states, the durable inbox and the transcript of every unfinished job."""

    def __init__(self, path: Path, key: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._scratch = path.parent / "scratch"
        self._aead = AESGCM(key)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS checkpoints (job_id TEXT NOT NULL, party TEXT NOT NULL,"
                " name TEXT NOT NULL, blob BLOB NOT NULL, PRIMARY KEY (job_id, party, name))"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS inbox (job_id TEXT NOT NULL, sender TEXT NOT NULL, "
                "tag TEXT NOT NULL, sha256 BLOB NOT NULL, blob BLOB, taken INTEGER NOT NULL "
                "DEFAULT 0, PRIMARY KEY (job_id, sender, tag))"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS transcript (job_id TEXT NOT NULL, seq INTEGER NOT NULL,"
                " direction TEXT NOT NULL, peer TEXT NOT NULL, tag TEXT NOT NULL, "
                "sha256 TEXT NOT NULL, size INTEGER NOT NULL, PRIMARY KEY (job_id, seq))"
            )

    def _seal(self, aad: bytes, data: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data, aad)

    def _open(self, aad: bytes, blob: bytes, what: str) -> bytes:
        try:
            return self._aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], aad)
        except (InvalidTag, ValueError):
            raise ResumeStateTamperedError(
                f"{what} failed authentication: it was altered, moved, or sealed under another "
                "node's key; the job cannot resume from it"
            ) from None

    # -- resume states (parties.jobs.ResumeStateStore) ------------------------------------------
    # On disk they keep the table name `checkpoints` and the sealing label "checkpoint", so the
    # state directory of a node written before the rename still opens.

    def save(self, job_id: str, party: str, name: str, state: bytes) -> None:
        """Seal and store a role's resume state; drop the payloads of messages already taken.

        A resume state captures everything the role derived from the messages it took so far, so
        their payloads are no longer needed (their digests stay, to recognise replays).
        """
        blob = self._seal(_aad("checkpoint", job_id, party, name), state)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO checkpoints (job_id, party, name, blob) "
                    "VALUES (?, ?, ?, ?)",
                    (job_id, party, name, blob),
                )
                self._db.execute(
                    "UPDATE inbox SET blob = NULL WHERE job_id = ? AND taken = 1", (job_id,)
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def load(self, job_id: str, party: str, name: str) -> bytes | None:
        """A role's resume state, authenticated; ``None`` if none was saved."""
        with self._lock:
            row = self._db.execute(
                "SELECT blob FROM checkpoints WHERE job_id = ? AND party = ? AND name = ?",
                (job_id, party, name),
            ).fetchone()
        if row is None:
            return None
        return self._open(
            _aad("checkpoint", job_id, party, name), bytes(row[0]), f"resume state {name!r}"
        )

    def scratch_dir(self, job_id: str, party: str) -> Path:
        """The job's scratch directory for ``party``'s role (0700), created if needed."""
        if not is_job_id(job_id):
            raise ValueError(f"{job_id!r} is not a job id")
        path = self._scratch / job_id / party
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

        # -- the durable inbox (parties.transport.MailboxJournal) ---------------------------------

    def received(self, job_id: str, sender: str, tag: str, sha256: bytes, payload: bytes) -> None:
        """Store a new message durably before the mailbox acknowledges it."""
        blob = self._seal(_aad("message", job_id, sender, tag), payload)
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO inbox (job_id, sender, tag, sha256, blob) "
                "VALUES (?, ?, ?, ?, ?)",
                (job_id, sender, tag, sha256, blob),
            )

    def taken(self, job_id: str, sender: str, tag: str) -> None:
        """Mark a message as handed to the role."""
        with self._lock:
            self._db.execute(
                "UPDATE inbox SET taken = 1 WHERE job_id = ? AND sender = ? AND tag = ?",
                (job_id, sender, tag),
            )

    def inbox(self, job_id: str) -> list[tuple[str, str, bytes, bool]]:
        """Every message of a job kept here: (sender, tag, sha256, whether its payload is kept)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sender, tag, sha256, blob IS NOT NULL FROM inbox WHERE job_id = ?",
                (job_id,),
            ).fetchall()
        return [(sender, tag, bytes(sha), bool(kept)) for sender, tag, sha, kept in rows]

    def payload(self, job_id: str, sender: str, tag: str) -> bytes:
        """A kept message's payload, authenticated.

        Raises:
            ResumeStateTamperedError: If it was altered or moved, or is no longer kept.
        """
        with self._lock:
            row = self._db.execute(
                "SELECT blob FROM inbox WHERE job_id = ? AND sender = ? AND tag = ?",
                (job_id, sender, tag),
            ).fetchone()
        if row is None or row[0] is None:
            raise ResumeStateTamperedError(f"message {tag!r} of {sender} is no longer kept here")
        return self._open(_aad("message", job_id, sender, tag), bytes(row[0]), f"message {tag!r}")

    # -- the transcript ------------------------------------------------------------------------

    def add_transcript(self, job_id: str, entry: TranscriptEntry) -> None:
        """Append one message record of this node's view of a job."""
        with self._lock:
            self._db.execute(
                "INSERT INTO transcript (job_id, seq, direction, peer, tag, sha256, size) "
                "SELECT ?, COALESCE(MAX(seq), -1) + 1, ?, ?, ?, ?, ? FROM transcript "
                "WHERE job_id = ?",
                (job_id, entry.direction, entry.peer, entry.tag, entry.sha256, entry.size, job_id),
            )

    def transcript(self, job_id: str) -> list[TranscriptEntry]:
        """This node's message records of a job, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT direction, peer, tag, sha256, size FROM transcript WHERE job_id = ? "
                "ORDER BY seq",
                (job_id,),
            ).fetchall()
        return [TranscriptEntry(*row) for row in rows]

    def forget(self, job_id: str) -> None:
        """Delete everything kept for a job that ended."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for table in ("checkpoints", "inbox", "transcript"):
                    self._db.execute(
                        f"DELETE FROM {table} WHERE job_id = ?",  # noqa: S608 - fixed names
                        (job_id,),
                    )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        if is_job_id(job_id):
            shutil.rmtree(self._scratch / job_id, ignore_errors=True)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
