"""Live updates of a job for the console's pages: the one place they come from.

:func:`job_updates` yields a node's view of a job each time it changes: the node pushes each
change over its ``WatchJob`` stream (:func:`bund.parties.follow.status_changes`), and the
console asks again only where the node cannot be watched (too many watches, an older node).
:func:`event_stream` frames the updates as Server-Sent Events of ``bund job status --json``
documents.
"""

from __future__ import annotations

from collections.abc import Iterator

from bund.compute.errors import BundError
from bund.parties.follow import StatusSource, status_changes
from bund.parties.lifecycle.states import JobStatus
from bund.parties.views import dumps, status_document

#: Seconds between two status calls where the node cannot be watched.
POLL_INTERVAL_S = 0.5
#: How long one stream follows a job before it ends (the browser then reconnects by itself).
STREAM_S = 120.0


def job_updates(source: StatusSource, job_id: str, *, timeout: float) -> Iterator[JobStatus]:
    """``job_id``'s status at ``source``'s node, first as it is, then each time it changes.

    Ends after a terminal status or after ``timeout`` seconds.

    Raises:
        RemoteError: The node does not know the job, or refused to answer.
        PeerUnavailableError: The node cannot be reached.
    """
    return status_changes(
        source, job_id, timeout=timeout, interval=POLL_INTERVAL_S, not_found_grace=0
    )


def event_stream(source: StatusSource, job_id: str, timeout: float = STREAM_S) -> Iterator[str]:
    """Server-Sent Events: a ``status`` event per change, an ``error`` event if it fails.

    Every event's data is one line of JSON, so it needs no escaping in the stream; the page's
    script sets it as text, never as markup.
    """
    yield "retry: 3000\n\n"
    try:
        for status in job_updates(source, job_id, timeout=timeout):
            yield f"event: status\ndata: {dumps(status_document(status))}\n\n"
    except BundError as exc:
        yield f"event: error\ndata: {dumps({'error': str(exc)})}\n\n"
