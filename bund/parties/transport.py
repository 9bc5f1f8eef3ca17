"""Mailbox send/recv of tagged payloads between the parties of a job.

A ``Mailbox`` holds what one node has received, keyed by (job, sender, tag). Delivery is idempotent
on the payload's digest: the same payload again is a no-op, a different payload under the same key
is equivocation and is refused. ``InMemoryNetwork`` connects mailboxes directly (unit tests);
``bund.parties.client.GrpcTransport`` delivers through the peer node's Job service (real use).
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bund.compute.errors import BundError

_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/:]{0,127}$")
#: Payloads larger than this wait for their role on disk (in a journal), not in memory.
SPOOL_BYTES = 64 << 10
#: Bytes of one job's small messages a mailbox holds in memory; beyond it they wait on disk too.
MEMORY_BYTES_PER_JOB = 16 << 20
#: How often a waiting role asks whether its sender is still alive.
LIVENESS_POLL_S = 0.5


def check_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid mailbox tag, else raise ``ValueError``."""
    if not isinstance(tag, str) or not _TAG.match(tag):
        raise ValueError(f"invalid mailbox tag {tag!r}: 1-128 of [A-Za-z0-9_.-/:]")
    return tag


class TransportError(BundError):
    """A message could not be delivered or received."""


class PeerTimeoutError(TransportError):
    """A peer did not send an expected message in time."""


class EquivocationError(TransportError):
    """A peer sent two different payloads under the same job, tag and sender."""


class PayloadTooLargeError(TransportError):
    """A payload exceeds the configured maximum message size."""


class MessageBudgetExceededError(PayloadTooLargeError):
    """A peer sent a job more messages or bytes than the job's plan allows; refused."""


class JobAbortedError(TransportError):
    """The job was aborted while a role was waiting for a message."""


class JobInterruptedError(TransportError):
    """A fault stopped the job (a silent peer, a missed deadline); it can be resumed."""


class MailboxJournal(Protocol):
    """Durable record of a mailbox (``bund.parties.resume.ResumeStore`` in a node)."""

    def received(self, job_id: str, sender: str, tag: str, sha256: bytes, payload: bytes) -> None:
        """Store a new message durably; called before the delivery is acknowledged."""
        ...

    def taken(self, job_id: str, sender: str, tag: str) -> None:
        """Note that a message was handed to the role."""
        ...

    def payload(self, job_id: str, sender: str, tag: str) -> bytes:
        """A stored message's payload (the mailbox keeps large ones on disk only)."""
        ...


def digest(payload: bytes) -> bytes:
    """SHA-256 of a payload: what the mailbox and the audit log key messages by."""
    return hashlib.sha256(payload).digest()


def envelope_digest(job_id: str, tag: str, payload: bytes) -> bytes:
    """SHA-256 binding a payload to its job and tag: a delivery carries it, the receiver checks it.

    A message replayed into another job or slot no longer matches, so it is refused rather than
    taken for a message of that job.
    """
    h = hashlib.sha256(b"bund/deliver/v1\x00")
    h.update(job_id.encode() + b"\x00" + tag.encode() + b"\x00")
    h.update(digest(payload))
    return h.digest()


@dataclass(frozen=True)
class MessagePlan:
    """What one sender may deliver to one job: how many messages, bytes, and under which tags.

    ``tags`` are regular expressions a tag must match in full (``None``: any valid tag), so a
    peer cannot park data under tags no role will ever take.
    """

    max_messages: int
    max_bytes: int
    tags: tuple[str, ...] | None = None

    def allows_tag(self, tag: str) -> bool:
        """Whether ``tag`` is one the job's roles take."""
        return self.tags is None or any(re.fullmatch(p, tag) for p in self.tags)


@dataclass(frozen=True)
class Envelope:
    """A delivered message: who sent it, under which tag, and its digest."""

    job_id: str
    sender: str
    tag: str
    payload: bytes
    sha256: bytes


class Mailbox:
    """Received messages of one node, for all its jobs; thread-safe, blocking ``take``.

    A payload is handed out once; afterwards only its digest is kept, so a replay stays a no-op
    and memory does not grow with finished messages. With a journal, a payload of more than
    :data:`SPOOL_BYTES` stays on disk until a role takes it, so the messages a fast sender has
    delivered ahead of a slow role cost the receiver disk, not memory.
    """

    def __init__(self, max_payload: int, journal: MailboxJournal | None = None) -> None:
        if max_payload <= 0:
            raise ValueError("max_payload must be positive")
        self._max_payload = max_payload
        self._journal = journal
        self._cond = threading.Condition()
        self._waiting: dict[tuple[str, str, str], Envelope] = {}
        self._seen: dict[tuple[str, str, str], bytes] = {}
        self._aborted: dict[str, str] = {}
        self._interrupted: dict[str, str] = {}
        #: Messages waiting on disk only (their envelopes in ``_waiting`` carry no payload).
        self._spooled: set[tuple[str, str, str]] = set()
        #: Per (job, sender): messages and bytes delivered so far, against the job's plan.
        self._used: dict[tuple[str, str], tuple[int, int]] = {}
        #: Per job: bytes of waiting messages held in memory.
        self._in_memory: dict[str, int] = {}

    def put(
        self,
        job_id: str,
        sender: str,
        tag: str,
        payload: bytes,
        plan: MessagePlan | None = None,
    ) -> bool:
        """Store a message; return False for an identical replay. Raise on equivocation.

        With a ``plan``, a new message beyond the sender's messages or bytes for the job is
        refused (``MessageBudgetExceededError``), so a peer cannot make this node hold more
        than the job needs, in memory or on disk.
        """
        check_tag(tag)
        if len(payload) > self._max_payload:
            raise PayloadTooLargeError(
                f"payload of {len(payload)} bytes exceeds this node's maximum of "
                f"{self._max_payload}; send it in chunks"
            )
        key = (job_id, sender, tag)
        sha = digest(payload)
        with self._cond:
            previous = self._seen.get(key)
            if previous is not None:
                if previous == sha:
                    return False
                raise EquivocationError(
                    f"{sender} sent a different payload under tag {tag!r} of job {job_id}; "
                    "the job cannot continue"
                )
            if plan is not None and not plan.allows_tag(tag):
                raise MessageBudgetExceededError(
                    f"{sender} sent job {job_id} a message under tag {tag!r}, which no role of "
                    "the job takes: refused"
                )
            count, size = self._used.get((job_id, sender), (0, 0))
            if plan is not None and (
                count + 1 > plan.max_messages or size + len(payload) > plan.max_bytes
            ):
                raise MessageBudgetExceededError(
                    f"{sender} has sent job {job_id} {count} messages ({size} bytes); this one "
                    f"would exceed the job's plan of {plan.max_messages} messages and "
                    f"{plan.max_bytes} bytes per sender: refused"
                )
            held = self._in_memory.get(job_id, 0)
            spool = self._journal is not None and (
                len(payload) > SPOOL_BYTES or held + len(payload) > MEMORY_BYTES_PER_JOB
            )
            if self._journal is not None:
                self._journal.received(job_id, sender, tag, sha, payload)
            if spool:
                self._spooled.add(key)
            else:
                self._in_memory[job_id] = held + len(payload)
            self._used[(job_id, sender)] = (count + 1, size + len(payload))
            self._seen[key] = sha
            self._waiting[key] = Envelope(job_id, sender, tag, b"" if spool else payload, sha)
            self._cond.notify_all()
            return True

    def take(
        self,
        job_id: str,
        sender: str,
        tag: str,
        timeout: float,
        sender_alive: Callable[[], bool] | None = None,
    ) -> Envelope:
        """Wait up to ``timeout`` seconds for the message and remove it from the box.

        ``sender_alive``, polled every :data:`LIVENESS_POLL_S`, ends the wait early once the
        sender is known to be gone (its node stopped answering heartbeats).
        """
        key = (job_id, sender, tag)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                left = deadline - time.monotonic()
                slice_s = left if sender_alive is None else min(left, LIVENESS_POLL_S)
                ok = self._cond.wait_for(
                    lambda: (
                        key in self._waiting
                        or job_id in self._aborted
                        or job_id in self._interrupted
                    ),
                    timeout=max(0.0, slice_s),
                )
                if ok or time.monotonic() >= deadline:
                    break
                if sender_alive is not None and not sender_alive():
                    raise PeerTimeoutError(
                        f"DEADLINE_EXCEEDED: {sender} stopped answering heartbeats while this "
                        f"node waited for its message {tag!r} of job {job_id}"
                    )
            self._raise_if_stopped(job_id)
            if not ok:
                raise PeerTimeoutError(
                    f"DEADLINE_EXCEEDED: no message {tag!r} from {sender} for job {job_id} "
                    f"within {timeout:.0f} s; check that {sender}'s node is up and reachable, "
                    "then resume the job"
                )
            envelope = self._waiting.pop(key)
            spooled = key in self._spooled
            self._spooled.discard(key)
            if not spooled:
                self._in_memory[job_id] = self._in_memory.get(job_id, 0) - len(envelope.payload)
        if self._journal is not None:
            if spooled:
                payload = self._journal.payload(job_id, sender, tag)
                if digest(payload) != envelope.sha256:
                    raise TransportError(f"the stored message {tag!r} of {sender} is damaged")
                envelope = Envelope(job_id, sender, tag, payload, envelope.sha256)
            self._journal.taken(job_id, sender, tag)
        return envelope

    def _raise_if_stopped(self, job_id: str) -> None:
        if job_id in self._aborted:
            raise JobAbortedError(f"job {job_id} was aborted: {self._aborted[job_id]}")
        if job_id in self._interrupted:
            raise JobInterruptedError(self._interrupted[job_id])

    def interrupt(self, job_id: str, reason: str) -> None:
        """Wake every role of ``job_id`` with ``JobInterruptedError`` (the job stays resumable)."""
        with self._cond:
            self._interrupted[job_id] = reason
            self._cond.notify_all()

    def reopen(self, job_id: str, kept: list[tuple[str, str, bytes, bool]]) -> None:
        """Clear an interrupted job's marks and offer again the messages its journal kept.

        ``kept`` holds (sender, tag, sha256, whether the payload is still stored); a payload no
        longer stored was consumed before the role last saved its state, and only its digest is
        remembered, to spot replays. Stored payloads are read from the journal when taken.
        """
        if kept and self._journal is None:
            raise ValueError("only a mailbox with a journal can reopen kept messages")
        with self._cond:
            self._interrupted.pop(job_id, None)
            self._aborted.pop(job_id, None)
            for sender, tag, sha, stored in kept:
                key = (job_id, sender, tag)
                self._seen[key] = sha
                count, size = self._used.get((job_id, sender), (0, 0))
                self._used[(job_id, sender)] = (count + 1, size)
                if stored:
                    self._waiting[key] = Envelope(job_id, sender, tag, b"", sha)
                    self._spooled.add(key)
            self._cond.notify_all()

    def check(self, job_id: str) -> None:
        """Raise if ``job_id`` was aborted or interrupted (long computations poll this)."""
        with self._cond:
            self._raise_if_stopped(job_id)

    def abort(self, job_id: str, reason: str) -> None:
        """Wake every role waiting on ``job_id`` with ``JobAbortedError``."""
        with self._cond:
            self._aborted[job_id] = reason
            self._cond.notify_all()

    def forget(self, job_id: str) -> None:
        """Drop everything held for a finished job except its abort mark."""
        with self._cond:
            self._interrupted.pop(job_id, None)
            for key in [k for k in self._seen if k[0] == job_id]:
                self._seen.pop(key, None)
                self._waiting.pop(key, None)
                self._spooled.discard(key)
            self._in_memory.pop(job_id, None)
            for used in [u for u in self._used if u[0] == job_id]:
                self._used.pop(used, None)


class Transport(Protocol):
    """Delivery of a job's messages from this node to a peer node."""

    def deliver(self, job_id: str, to: str, tag: str, payload: bytes) -> None:
        """Put ``payload`` into ``to``'s mailbox under (job, this party, tag)."""
        ...


class InMemoryNetwork:
    """Mailboxes of several parties in one process, for unit tests of protocols."""

    def __init__(self, parties: list[str], max_payload: int = 64 << 20) -> None:
        self.mailboxes = {p: Mailbox(max_payload) for p in parties}
        #: Every payload delivered, in order, as (sender, receiver, tag, payload): for leak tests.
        self.captured: list[tuple[str, str, str, bytes]] = []
        self._lock = threading.Lock()

    def transport_for(self, party: str) -> Transport:
        """The transport that ``party`` sends with."""
        return _InMemoryTransport(self, party)

    def abort(self, job_id: str, reason: str) -> None:
        """Abort ``job_id`` at every party."""
        for box in self.mailboxes.values():
            box.abort(job_id, reason)


@dataclass
class _InMemoryTransport:
    network: InMemoryNetwork
    party: str

    def deliver(self, job_id: str, to: str, tag: str, payload: bytes) -> None:
        try:
            box = self.network.mailboxes[to]
        except KeyError:
            raise TransportError(f"unknown party {to!r}") from None
        with self.network._lock:
            self.network.captured.append((self.party, to, tag, bytes(payload)))
        box.put(job_id, self.party, tag, bytes(payload))


#: Called for every message sent or received: (direction, peer, tag, sha256, size).
MessageObserver = Callable[[str, str, str, bytes, int], None]
