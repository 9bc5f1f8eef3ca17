"""Failures a user or a peer can cause at a node, and the one catalog that maps them to gRPC.

Each RPC runs inside ``rpc_error_translator``: a ``BundError`` becomes its catalog status with its
own message (written to be safe for the peer); anything else becomes INTERNAL with a reference the
operator finds in the node log, and the detail never leaves the node.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import NoReturn, Protocol

import grpc

from bund.compute.errors import (
    BundError,
    EncodingOverflowError,
    InvalidCiphertextError,
    InvalidInputError,
    InvalidKeyError,
    InvalidPointError,
    KeySizeError,
    SetTooLargeError,
)
from bund.parties.jobspec import InvalidJobSpecError
from bund.parties.serving.errors import (
    ReplayedRequestError,
    RequestProofError,
    ServingLimitError,
    ServingRefusedError,
)
from bund.parties.transport import (
    EquivocationError,
    JobAbortedError,
    PayloadTooLargeError,
    PeerTimeoutError,
    TransportError,
)

log = logging.getLogger("bund.rpc")


class NotAuthorizedError(BundError):
    """The caller's certificate identity may not call this RPC or act on this job."""


class UnknownJobError(BundError):
    """No job with this id is known to this node."""


class JobStateError(BundError):
    """The job is not in a state that allows the request (for example a result of a running job)."""


class MalformedRequestError(BundError):
    """A request could not be parsed or misses a required field."""


class PeerUnavailableError(TransportError):
    """A peer node could not be reached; the message names it and its configured address."""


class TooManyWatchesError(BundError):
    """The caller holds as many job watches as the node allows, or the node serves its maximum."""


class ConfigError(BundError):
    """A node configuration file is missing, malformed or inconsistent."""


@functools.cache
def catalog() -> Mapping[type[BaseException], grpc.StatusCode]:
    """Exception class -> gRPC status. The most specific class wins (walk the MRO).

    Built at its first use, so that a client (``bund job status``) that imports this module for
    its error classes loads none of the node's modules that the other classes live in.
    """
    from bund.parties.approvals import ApprovalError
    from bund.parties.audit import AuditStoreUnavailableError
    from bund.parties.data import DatasetError
    from bund.parties.identity import IdentityError
    from bund.parties.ledger import BudgetExhaustedError
    from bund.parties.policy import PolicyFileError, PolicyRefusedError

    return MappingProxyType(
        {
            BundError: grpc.StatusCode.FAILED_PRECONDITION,
            InvalidJobSpecError: grpc.StatusCode.INVALID_ARGUMENT,
            MalformedRequestError: grpc.StatusCode.INVALID_ARGUMENT,
            InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
            InvalidPointError: grpc.StatusCode.INVALID_ARGUMENT,
            InvalidCiphertextError: grpc.StatusCode.INVALID_ARGUMENT,
            InvalidKeyError: grpc.StatusCode.INVALID_ARGUMENT,
            EncodingOverflowError: grpc.StatusCode.INVALID_ARGUMENT,
            KeySizeError: grpc.StatusCode.INVALID_ARGUMENT,
            DatasetError: grpc.StatusCode.FAILED_PRECONDITION,
            PolicyRefusedError: grpc.StatusCode.PERMISSION_DENIED,
            NotAuthorizedError: grpc.StatusCode.PERMISSION_DENIED,
            UnknownJobError: grpc.StatusCode.NOT_FOUND,
            JobStateError: grpc.StatusCode.FAILED_PRECONDITION,
            PayloadTooLargeError: grpc.StatusCode.RESOURCE_EXHAUSTED,
            SetTooLargeError: grpc.StatusCode.RESOURCE_EXHAUSTED,
            EquivocationError: grpc.StatusCode.ABORTED,
            JobAbortedError: grpc.StatusCode.ABORTED,
            PeerTimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
            PeerUnavailableError: grpc.StatusCode.UNAVAILABLE,
            TransportError: grpc.StatusCode.UNAVAILABLE,
            ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
            PolicyFileError: grpc.StatusCode.FAILED_PRECONDITION,
            IdentityError: grpc.StatusCode.FAILED_PRECONDITION,
            BudgetExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
            TooManyWatchesError: grpc.StatusCode.RESOURCE_EXHAUSTED,
            ApprovalError: grpc.StatusCode.PERMISSION_DENIED,
            AuditStoreUnavailableError: grpc.StatusCode.UNAVAILABLE,
            ServingRefusedError: grpc.StatusCode.FAILED_PRECONDITION,
            ReplayedRequestError: grpc.StatusCode.ALREADY_EXISTS,
            ServingLimitError: grpc.StatusCode.RESOURCE_EXHAUSTED,
            RequestProofError: grpc.StatusCode.FAILED_PRECONDITION,
        }
    )


#: Longest message sent to a peer; longer ones are cut (messages are ours, but bound them anyway).
_MAX_PUBLIC_MESSAGE = 1000


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The catalog status of an exception (INTERNAL for anything not a ``BundError``)."""
    statuses = catalog()
    for cls in type(exc).__mro__:
        if cls in statuses:
            return statuses[cls]
    return grpc.StatusCode.INTERNAL


def public_message(exc: BaseException) -> str:
    """What the peer may read about ``exc``: its message for a ``BundError``, nothing else."""
    if isinstance(exc, BundError):
        text = str(exc) or type(exc).__name__
        return text[:_MAX_PUBLIC_MESSAGE]
    return "internal error"


#: Trailing metadata key set on every error a node itself answers, so a client can tell a node
#: that answered UNAVAILABLE (its audit store is down) from one it could not reach at all.
ANSWERED_BY_NODE = "bund-error"


class _Abortable(Protocol):
    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn: ...

    def set_trailing_metadata(self, trailing_metadata: tuple[tuple[str, str], ...]) -> None: ...


@contextmanager
def rpc_error_translator(context: _Abortable, rpc_name: str) -> Iterator[None]:
    """Run one RPC body; map a raised error to its status and public message, and log it."""
    try:
        yield
    except BundError as err:
        code = status_for(err)
        log.warning("[%s] %s: %s", rpc_name, type(err).__name__, err)
        context.set_trailing_metadata(((ANSWERED_BY_NODE, type(err).__name__),))
        context.abort(code, public_message(err))
    except Exception:
        ref = secrets.token_hex(4)
        log.exception("[%s] unexpected error (ref %s)", rpc_name, ref)
        context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error (ref {ref}); the node's operator can find it in the node log",
        )
