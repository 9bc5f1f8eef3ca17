"""A job's life at one node, one responsibility per module (imports point down this list).

- ``states``: where a job can stand (``JobState``) and the only moves between states
  (``TRANSITIONS``, ``is_terminal``, ``is_resumable``).
- ``events``: every audit event name and field key, written here and read by the regulator.
- ``store``: the job table (``JobStore``: SQLite for a node, memory for tests), whose
  ``transition`` is the one writer of a job's state and appends the move's audit record first.
- ``admission``: a spec against this node's policy, catalog and budget: an approval request or a
  refusal; no peers, no threads.
- ``runner``: one role of a job: its context, the protocol call, the closing exchange (through
  the same recording path as every message), the receipt and the result.
- ``liveness``: heartbeats, deadlines, healing of interrupted jobs, recovery after a restart.
- ``coordinator``: the requester's side: propose, wait for every acceptance, start, call off.
- ``manager``: ``JobManager``, the thin face the RPC servicers call.
"""
