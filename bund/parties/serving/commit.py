"""One thread that writes a node's serving records in groups: one sync of the log per group.

Every request to a standing contract is recorded before its answer leaves. Requests that arrive
while one group is being written queue, and go together into the next
(:meth:`bund.parties.audit.AuditLog.append_many`): one transaction, one sync of the audit store,
however many requests. Requests get their sequence numbers here, in the order they are
written, so a contract's numbers have no gaps whatever fails. Once the records are durable the
ledger indexes them; if it cannot, the node stops taking requests (the index would not know the
numbers given), and its next start repairs the index from the log.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from bund.parties.audit import AuditLog, AuditRecord, JsonScalar
from bund.parties.errors import JobStateError
from bund.parties.lifecycle.events import Event, Key
from bund.parties.serving.ledger import Root, ServingLedger, TakenRequest

log = logging.getLogger("bund.serving")

#: Most records in one group commit.
MAX_GROUP = 512


@dataclass
class Pending:
    """One record for the committer, and what its success indexes."""

    event: Event
    contract: str
    fields: dict[str, JsonScalar]
    #: A request's (nonce, digest, ids, day): indexed under the sequence number it is given.
    request: tuple[bytes, bytes, int, str] | None = None
    #: A root's (first sequence number, count, root): indexed once recorded.
    root: tuple[int, int, bytes] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    record: AuditRecord | None = None


class GroupCommitter:
    """The writer thread (see the module docstring); :meth:`submit` blocks until durable."""

    def __init__(self, audit: AuditLog, ledger: ServingLedger) -> None:
        self._audit = audit
        self._ledger = ledger
        self._queue: list[Pending] = []
        self._wake = threading.Condition()
        self._stopping = False
        self._broken: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bund-serving-commit", daemon=True)
        self._thread.start()

    def submit(self, item: Pending) -> AuditRecord:
        """Write ``item``'s record with whatever else is queued; return it once durable."""
        with self._wake:
            if self._broken is not None:
                raise JobStateError(
                    f"this node's serving index failed ({self._broken}); it takes no request "
                    "until its operator restarts it"
                )
            if self._stopping:
                raise JobStateError("this node is stopping; it takes no request")
            self._queue.append(item)
            self._wake.notify()
        item.done.wait()
        if item.error is not None:
            raise item.error
        assert item.record is not None
        return item.record

    def stop(self) -> None:
        """Write what is queued, then stop the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
            self._write(batch)

    def _write(self, batch: list[Pending]) -> None:
        seqs = self._ledger.next_seqs(i.contract for i in batch if i.request is not None)
        for item in batch:
            if item.request is not None:
                item.fields[Key.SEQ] = seqs[item.contract]
                seqs[item.contract] += 1
        try:
            records = self._audit.append_many([(i.event, i.contract, i.fields) for i in batch])
        except BaseException as exc:  # noqa: BLE001 - every waiter gets the store's error
            for item in batch:
                item.error = exc
                item.done.set()
            return
        requests: list[TakenRequest] = []
        roots: list[Root] = []
        for item, record in zip(batch, records, strict=True):
            item.record = record
            if item.request is not None:
                nonce, digest, ids, day = item.request
                seq = int(item.fields[Key.SEQ])  # type: ignore[arg-type]
                requests.append(
                    TakenRequest(item.contract, seq, nonce, digest, ids, day, record.index)
                )
            if item.root is not None and item.root[1] > 0:
                roots.append(Root(item.contract, *item.root, record.index))
        try:
            self._ledger.recorded(requests, roots, records[-1].index + 1)
        except Exception as exc:  # noqa: BLE001 - recorded in the log; the index is repaired
            log.exception("the serving index could not take %d records", len(batch))
            with self._wake:
                self._broken = exc
        for item in batch:
            item.done.set()
