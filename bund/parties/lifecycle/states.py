"""Where a job stands at one node, and the only moves between those places.

:data:`TRANSITIONS` is the single source of the lifecycle: a job store refuses any other move
(:class:`IllegalTransitionError`), and a test enumerates every (from, to) pair against it.

::

    PROPOSED ──► AWAITING_APPROVAL ──► ACCEPTED ──► RUNNING ─────────► SUCCEEDED
       │                │                  │         │  ▲  │              ▲
       │                │                  │         ▼  │  └──► SERVING ──┘
       │                │                  │      INTERRUPTED  (a standing contract)
       ▼                ▼                  ▼         ▼
     REFUSED, FAILED, ABORTED (from any state that is not terminal)

A job that was never started ends REFUSED when someone says no (a policy, an approver, a peer)
and FAILED when something broke; a started job ends SUCCEEDED, FAILED or ABORTED. INTERRUPTED
is not terminal: a fault stopped the role, its resume states are kept, and the node resumes it
by itself once its peers answer again (or an operator does). SERVING is where a standing
contract (``serving_contract``) stands once its roles set it up: it answers requests, each
checked against its terms, until it ends SUCCEEDED (expired, or its limits spent), ABORTED
(revoked by any party) or FAILED.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from bund.compute.errors import BundError
from bund.parties.jobspec import JobSpec


class JobState(enum.Enum):
    """Where a job stands at one node."""

    PROPOSED = "proposed"
    AWAITING_APPROVAL = "awaiting_approval"
    ACCEPTED = "accepted"
    RUNNING = "running"
    #: Stopped by a fault (a silent peer, a missed deadline, a node restart); resumable.
    INTERRUPTED = "interrupted"
    #: A standing contract, set up and answering requests until it is revoked or ends.
    SERVING = "serving"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REFUSED = "refused"
    ABORTED = "aborted"


_S = JobState
#: Every legal move, from each state to the states it may go to next; terminal states go nowhere.
TRANSITIONS: Final[Mapping[JobState, frozenset[JobState]]] = MappingProxyType(
    {
        _S.PROPOSED: frozenset(
            {_S.AWAITING_APPROVAL, _S.ACCEPTED, _S.REFUSED, _S.FAILED, _S.ABORTED}
        ),
        _S.AWAITING_APPROVAL: frozenset({_S.ACCEPTED, _S.REFUSED, _S.FAILED, _S.ABORTED}),
        _S.ACCEPTED: frozenset({_S.RUNNING, _S.REFUSED, _S.FAILED, _S.ABORTED}),
        _S.RUNNING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.ABORTED, _S.INTERRUPTED, _S.SERVING}),
        _S.INTERRUPTED: frozenset({_S.RUNNING, _S.FAILED, _S.ABORTED}),
        _S.SERVING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.ABORTED}),
        _S.SUCCEEDED: frozenset(),
        _S.FAILED: frozenset(),
        _S.REFUSED: frozenset(),
        _S.ABORTED: frozenset(),
    }
)
#: States of a job that has not started running (a refusal ends these, not an abort of a run).
NOT_STARTED: Final = frozenset({_S.PROPOSED, _S.AWAITING_APPROVAL, _S.ACCEPTED})


def is_terminal(state: JobState) -> bool:
    """Whether a job in ``state`` can change no more (succeeded, failed, refused or aborted)."""
    return not TRANSITIONS[state]


def is_resumable(state: JobState) -> bool:
    """Whether a job in ``state`` waits to be resumed from its resume states (interrupted)."""
    return state is JobState.INTERRUPTED


def can_move(from_state: JobState, to_state: JobState) -> bool:
    """Whether the lifecycle allows a job in ``from_state`` to go to ``to_state``."""
    return to_state in TRANSITIONS[from_state]


class IllegalTransitionError(BundError):
    """A job was asked to move between two states that the lifecycle does not connect."""

    def __init__(self, job_id: str, from_state: JobState, to_state: JobState) -> None:
        super().__init__(f"job {job_id} is {from_state.value}; it cannot become {to_state.value}")
        self.from_state = from_state
        self.to_state = to_state


@dataclass(frozen=True)
class PartyView:
    """Another participant's answer to a job, as the requester's node last heard it."""

    party: str
    state: JobState
    #: Its approvers who approved the job, in order.
    approved_by: tuple[str, ...] = ()
    #: Why it refused (its approver's reason for a denial), in its words.
    reason: str = ""


@dataclass(frozen=True)
class JobStatus:
    """One node's view of a job."""

    spec: JobSpec
    state: JobState
    phase: str = ""
    done: int = 0
    total: int = 0
    error: str = ""
    has_result: bool = False
    transcript_digest: str = ""
    updated_at: str = ""
    #: When this node first recorded the job (kept by the node; not sent over the wire).
    created_at: str = ""
    #: The approvers of this node who approved the job, in the order they did.
    approved_by: tuple[str, ...] = ()
    #: At the requester's node: each other participant's answer as last heard, in spec order.
    parties: tuple[PartyView, ...] = ()
