"""Mailbox send/recv of tagged payloads between the parties of a job.

A ``Mailbox`` holds what one node has received, keyed by (job, sender, tag). Delivery is idempotent
on the payload's digest: the same payload again is a no-op, a different payload under the same key
is equivocation and is refused. ``InMemoryNetwork`` connects mailboxes directly (unit tests);
``parties.client.GrpcTransport`` delivers through the peer node's Job service (real use).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from compute.errors import BundError

_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/:]{0,127}$")


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


class JobAbortedError(TransportError):
    """The job was aborted while a role was waiting for a message."""


def digest(payload: bytes) -> bytes:
    """SHA-256 of a payload: what the mailbox and the audit log key messages by."""
    return hashlib.sha256(payload).digest()


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
    and memory does not grow with finished messages.
    """

    def __init__(self, max_payload: int) -> None:
        if max_payload <= 0:
            raise ValueError("max_payload must be positive")
        self._max_payload = max_payload
        self._cond = threading.Condition()
        self._waiting: dict[tuple[str, str, str], Envelope] = {}
        self._seen: dict[tuple[str, str, str], bytes] = {}
        self._aborted: dict[str, str] = {}

    def put(self, job_id: str, sender: str, tag: str, payload: bytes) -> bool:
        """Store a message; return False for an identical replay. Raise on equivocation."""
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
            self._seen[key] = sha
            self._waiting[key] = Envelope(job_id, sender, tag, payload, sha)
            self._cond.notify_all()
            return True

    def take(self, job_id: str, sender: str, tag: str, timeout: float) -> Envelope:
        """Wait up to ``timeout`` seconds for the message and remove it from the box."""
        key = (job_id, sender, tag)
        with self._cond:
            ok = self._cond.wait_for(
                lambda: key in self._waiting or job_id in self._aborted, timeout=timeout
            )
            if job_id in self._aborted:
                raise JobAbortedError(f"job {job_id} was aborted: {self._aborted[job_id]}")
            if not ok:
                raise PeerTimeoutError(
                    f"no message {tag!r} from {sender} for job {job_id} within {timeout:.0f} s; "
                    f"check that {sender}'s node is up and reachable"
                )
            return self._waiting.pop(key)

    def check(self, job_id: str) -> None:
        """Raise ``JobAbortedError`` if ``job_id`` was aborted (long computations poll this)."""
        with self._cond:
            reason = self._aborted.get(job_id)
        if reason is not None:
            raise JobAbortedError(f"job {job_id} was aborted: {reason}")

    def abort(self, job_id: str, reason: str) -> None:
        """Wake every role waiting on ``job_id`` with ``JobAbortedError``."""
        with self._cond:
            self._aborted[job_id] = reason
            self._cond.notify_all()

    def forget(self, job_id: str) -> None:
        """Drop everything held for a finished job except its abort mark."""
        with self._cond:
            for key in [k for k in self._seen if k[0] == job_id]:
                self._seen.pop(key, None)
                self._waiting.pop(key, None)


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
