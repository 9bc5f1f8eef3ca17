"""Why a request to a standing contract is refused: one class per reason a caller can cause."""

from __future__ import annotations

from bund.compute.errors import BundError


class ServingRefusedError(BundError):
    """A request that the contract's terms refuse; the message says which term and what next."""


class ContractEndedError(ServingRefusedError):
    """The contract does not serve (any more): revoked, expired, its limits spent, or not set up."""


class ReplayedRequestError(ServingRefusedError):
    """A request with a nonce the contract has seen: reused masks would let the bank subtract."""


class ServingLimitError(ServingRefusedError):
    """A request beyond the contract's per-request, daily or total limit."""


class RequestProofError(BundError):
    """A request's proof of inclusion does not verify, or no proof can be made for it (yet)."""
