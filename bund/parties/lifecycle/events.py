"""The one vocabulary of audit records: every event name and field key a node writes.

The lifecycle, the ledger, the node and the RPC layer write these; the regulator and the report
read them. Both import this module, so a name cannot drift between writer and reader, and a
test checks that every event has a meaning on the reader's side (:data:`KINDS`).

Records that change a job's state are written by the job store's one ``transition`` and carry
the new state in the field ``state``; the reader takes the state from there. Logs written before
that field existed are read with :data:`LEGACY_STATE_AFTER`.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from bund.parties.lifecycle.states import JobState

#: Mailbox tag of the closing exchange, outside every protocol's own tags.
CLOSE_TAG: Final = "bund/close"
#: Prefix of the records a protocol adds through ``JobContext.record`` (``protocol_psi.finished``).
PROTOCOL_PREFIX: Final = "protocol_"
#: Prefix of the fields of a closing record that hold each peer's transcript digest.
PEER_TRANSCRIPT_PREFIX: Final = "peer_transcript."


class Event(StrEnum):
    """Every audit event a node writes, by name."""

    # A job's life (each written with the job's new state, except approvals).
    JOB_SUBMITTED = "job_submitted"
    JOB_PROPOSED = "job_proposed"
    JOB_AWAITING_APPROVAL = "job_awaiting_approval"
    JOB_APPROVED = "job_approved"
    JOB_DENIED = "job_denied"
    JOB_ACCEPTED = "job_accepted"
    JOB_REFUSED = "job_refused"
    JOB_REFUSED_BY_PEER = "job_refused_by_peer"
    JOB_STARTED = "job_started"
    JOB_CANCELLED = "job_cancelled"
    JOB_ABORTED = "job_aborted"
    JOB_FAILED = "job_failed"
    JOB_INTERRUPTED = "job_interrupted"
    JOB_RESUMED = "job_resumed"
    #: Proposed or accepted here, and never started within ``unstarted_expiry_s``.
    JOB_EXPIRED = "job_expired"
    JOB_CLOSED = "job_closed"
    #: A standing contract ended by its own terms: it expired, or its total limit was spent.
    CONTRACT_ENDED = "contract_ended"
    PRIVACY_RECEIPT = "privacy_receipt"
    #: This node's operator read a result or a page of an artifact (recorded before it is served).
    RESULT_READ = "result_read"
    # Messages, by digest and size, never content.
    MESSAGE_SENT = "message_sent"
    MESSAGE_RECEIVED = "message_received"
    MESSAGE_REPLAYED = "message_replayed"
    MESSAGE_DUPLICATE = "message_duplicate"
    MESSAGE_REFUSED = "message_refused"
    #: A message recorded as sent (write-ahead) that could not be delivered.
    MESSAGE_UNDELIVERED = "message_undelivered"
    MESSAGE_AFTER_CLOSE = "message_after_close"
    EQUIVOCATION = "equivocation"
    # The privacy-budget ledger.
    BUDGET_RESERVED = "budget_reserved"
    BUDGET_CHARGED = "budget_charged"
    BUDGET_RELEASED = "budget_released"
    # Requests to a standing contract (``bund.parties.serving``), by digest, never the ids.
    #: A request taken and answered (recorded before the answer is released).
    SERVING_REQUEST = "serving_request"
    #: A request refused (replayed nonce, past a limit or the expiry, the contract ended).
    SERVING_REFUSED = "serving_refused"
    #: The Merkle root of the digests of the requests taken since the last root.
    SERVING_ROOT = "serving_root"
    # Witnessing other parties' signed tree heads (``bund.parties.audit.witness``).
    #: A party presented a tree head that contradicts one this node holds of it (kept as
    #: evidence): two logs of one size, or a log that shrank.
    WITNESS_CONFLICT = "witness_conflict"
    #: A party presented a tree head with another audit key than the one this node pinned.
    WITNESS_KEY_CHANGED = "witness_key_changed"
    # The node itself.
    NODE_STARTED = "node_started"
    NODE_STOPPED = "node_stopped"
    #: The node took a new policy and dataset catalogue without a restart.
    POLICY_RELOADED = "policy_reloaded"
    RPC = "rpc"
    #: Refused or failed calls, counted per caller, method and status over an interval.
    RPC_REFUSED = "rpc_refused"
    # Identities: which run of a peer this node works with, and its trust lists.
    #: A call from a second running node with a peer's identity, refused.
    DUPLICATE_INSTANCE = "duplicate_instance"
    #: A peer's node restarted (or moved): its new instance epoch is pinned.
    PEER_INSTANCE_CHANGED = "peer_instance_changed"
    #: A new version of the roster or of a revocation list was loaded.
    TRUST_LIST_LOADED = "trust_list_loaded"
    #: A changed roster or revocation list was refused (bad signature, older version, gone).
    TRUST_LIST_REFUSED = "trust_list_refused"


class Key(StrEnum):
    """Field keys that a writer and a reader of the audit log both name."""

    STATE = "state"
    REASON = "reason"
    BY = "by"
    PEER = "peer"
    TAG = "tag"
    SHA256 = "sha256"
    SIZE = "size"
    DIRECTION = "direction"
    WHY = "why"
    PROTOCOL = "protocol"
    REQUESTER = "requester"
    PARTIES = "parties"
    RECEIVERS = "receivers"
    PURPOSE = "purpose"
    SPEC_SHA256 = "spec_sha256"
    DATASET = "dataset"
    DATASET_VERSION = "dataset_version"
    CODE_VERSION = "code_version"
    APPROVER = "approver"
    SIGNATURE = "signature"
    APPROVALS_REQUIRED = "approvals_required"
    OUTCOME = "outcome"
    TRANSCRIPT_SHA256 = "transcript_sha256"
    MESSAGES = "messages"
    RESULT_TO = "result_to"
    HOLDS_RESULT = "holds_result"
    DROPPED = "dropped"
    PART = "part"
    EPSILON = "epsilon"
    DELTA = "delta"
    SPENT = "spent"
    SPENT_DELTA = "spent_delta"
    TOTAL = "total"
    TOTAL_DELTA = "total_delta"
    METHOD = "method"
    CALLER = "caller"
    CODE = "code"
    REQUEST_BYTES = "request_bytes"
    MS = "ms"
    LISTEN = "listen"
    PORT = "port"
    VERSION = "version"
    ARTIFACT = "artifact"
    OFFSET = "offset"
    BYTES = "bytes"
    TREE_SIZE = "tree_size"
    ROOT_HASH = "root_hash"
    HEAD_TIMESTAMP = "head_timestamp"
    HELD_TREE_SIZE = "held_tree_size"
    HELD_ROOT_HASH = "held_root_hash"
    HELD_TIMESTAMP = "held_timestamp"
    KEY_ID = "key_id"
    PINNED_KEY_ID = "pinned_key_id"
    SEQ = "seq"
    NONCE = "nonce"
    REQUEST_SHA256 = "request_sha256"
    IDS = "ids"
    DAY = "day"
    FIRST_SEQ = "first_seq"
    COUNT = "count"


class EventKind(StrEnum):
    """What a reader of the log does with an event."""

    #: A step of a job's life; most change its state at that party.
    LIFECYCLE = "lifecycle"
    #: A message of a job, reconciled between sender and receiver.
    MESSAGE = "message"
    #: Something about a message that needs no counterpart (a replay, a refusal).
    MESSAGE_NOTE = "message_note"
    #: What a party received and spent in a job (the privacy receipt).
    RECEIPT = "receipt"
    #: A privacy-budget charge.
    BUDGET = "budget"
    #: Someone read what a job released here (a result, an artifact page).
    ACCESS = "access"
    #: The node started or stopped.
    NODE = "node"
    #: An RPC the node served.
    RPC = "rpc"
    #: Refused or failed calls, counted per caller, method and status over an interval.
    RPC_REFUSED = "rpc_refused"
    #: Who the node trusts: peers' instances, the roster and the revocation lists.
    IDENTITY = "identity"
    #: What this node saw while witnessing another party's tree heads.
    WITNESS = "witness"
    #: A request to a standing contract, or the Merkle root of a batch of them.
    SERVING = "serving"


_E = Event
#: The kind of every event; a test checks that none is missing.
KINDS: Final[Mapping[Event, EventKind]] = MappingProxyType(
    {
        **dict.fromkeys(
            (
                _E.JOB_SUBMITTED,
                _E.JOB_PROPOSED,
                _E.JOB_AWAITING_APPROVAL,
                _E.JOB_APPROVED,
                _E.JOB_DENIED,
                _E.JOB_ACCEPTED,
                _E.JOB_REFUSED,
                _E.JOB_REFUSED_BY_PEER,
                _E.JOB_STARTED,
                _E.JOB_CANCELLED,
                _E.JOB_ABORTED,
                _E.JOB_FAILED,
                _E.JOB_INTERRUPTED,
                _E.JOB_RESUMED,
                _E.JOB_EXPIRED,
                _E.JOB_CLOSED,
                _E.CONTRACT_ENDED,
            ),
            EventKind.LIFECYCLE,
        ),
        _E.PRIVACY_RECEIPT: EventKind.RECEIPT,
        _E.RESULT_READ: EventKind.ACCESS,
        _E.MESSAGE_SENT: EventKind.MESSAGE,
        _E.MESSAGE_RECEIVED: EventKind.MESSAGE,
        **dict.fromkeys(
            (
                _E.MESSAGE_REPLAYED,
                _E.MESSAGE_DUPLICATE,
                _E.MESSAGE_REFUSED,
                _E.MESSAGE_UNDELIVERED,
                _E.MESSAGE_AFTER_CLOSE,
                _E.EQUIVOCATION,
            ),
            EventKind.MESSAGE_NOTE,
        ),
        _E.BUDGET_RESERVED: EventKind.BUDGET,
        _E.BUDGET_CHARGED: EventKind.BUDGET,
        _E.BUDGET_RELEASED: EventKind.BUDGET,
        _E.SERVING_REQUEST: EventKind.SERVING,
        _E.SERVING_REFUSED: EventKind.SERVING,
        _E.SERVING_ROOT: EventKind.SERVING,
        _E.WITNESS_CONFLICT: EventKind.WITNESS,
        _E.WITNESS_KEY_CHANGED: EventKind.WITNESS,
        _E.NODE_STARTED: EventKind.NODE,
        _E.NODE_STOPPED: EventKind.NODE,
        _E.POLICY_RELOADED: EventKind.NODE,
        _E.RPC: EventKind.RPC,
        _E.RPC_REFUSED: EventKind.RPC,
        **dict.fromkeys(
            (
                _E.DUPLICATE_INSTANCE,
                _E.PEER_INSTANCE_CHANGED,
                _E.TRUST_LIST_LOADED,
                _E.TRUST_LIST_REFUSED,
            ),
            EventKind.IDENTITY,
        ),
    }
)
#: Lifecycle events that record a decision without changing the job's state by themselves.
STATELESS_LIFECYCLE: Final = frozenset({_E.JOB_APPROVED})
#: The events that carry a job's spec (protocol, requester, parties, receivers, purpose).
SPEC_EVENTS: Final = frozenset({_E.JOB_SUBMITTED, _E.JOB_PROPOSED})
#: Message records and the direction each names.
MESSAGE_DIRECTIONS: Final[Mapping[Event, str]] = MappingProxyType(
    {_E.MESSAGE_SENT: "sent", _E.MESSAGE_RECEIVED: "received"}
)

#: The state a lifecycle record left the job in, for logs written before records carried it.
#: ``job_closed`` named its state in ``outcome``; an abort before the start was a refusal, which
#: these old records do not tell apart, so they read as aborted.
LEGACY_STATE_AFTER: Final[Mapping[Event, JobState]] = MappingProxyType(
    {
        _E.JOB_SUBMITTED: JobState.PROPOSED,
        _E.JOB_PROPOSED: JobState.PROPOSED,
        _E.JOB_AWAITING_APPROVAL: JobState.AWAITING_APPROVAL,
        _E.JOB_ACCEPTED: JobState.ACCEPTED,
        _E.JOB_REFUSED: JobState.REFUSED,
        _E.JOB_REFUSED_BY_PEER: JobState.REFUSED,
        _E.JOB_DENIED: JobState.REFUSED,
        _E.JOB_STARTED: JobState.RUNNING,
        _E.JOB_CANCELLED: JobState.ABORTED,
        _E.JOB_ABORTED: JobState.ABORTED,
        _E.JOB_FAILED: JobState.FAILED,
        _E.JOB_INTERRUPTED: JobState.INTERRUPTED,
        _E.JOB_RESUMED: JobState.RUNNING,
        _E.JOB_EXPIRED: JobState.FAILED,
        _E.CONTRACT_ENDED: JobState.SUCCEEDED,
    }
)


def state_after(event: str, fields: Mapping[str, object]) -> JobState | None:
    """The state a job was in at a party once it wrote this record; None if it did not change.

    Records written by a job store's transition name the state (``state``); older ones are read
    by their event (and a closing record by its ``outcome``).
    """
    lifecycle = KINDS.get(event) is EventKind.LIFECYCLE  # type: ignore[call-overload]
    named = fields.get(Key.STATE) if lifecycle else None
    if named is None and event == Event.JOB_CLOSED:
        named = fields.get(Key.OUTCOME)
    if isinstance(named, str):
        try:
            return JobState(named)
        except ValueError:
            return None
    try:
        return LEGACY_STATE_AFTER.get(Event(event))
    except ValueError:
        return None
