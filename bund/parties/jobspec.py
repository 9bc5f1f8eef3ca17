"""A job's spec and its result: what every node, the wire and the ``bund`` command share.

These are plain values over the standard library (no pydantic, no protocol code), so a command
that only shows a job's status (``bund job status``) loads them without the node's modules.
``bund.parties.jobs`` re-exports them beside the ``JobContext`` a protocol role sees.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bund.compute.canonical import canonical_json
from bund.compute.errors import BundError

#: Names of parties, roles, datasets, columns and tags: short, printable, no separators.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")

_JOB_ID = re.compile(r"[0-9a-f]{32}")

JsonScalar = str | int | float | bool | None

#: Bounds on a spec, so that a proposal cannot make a node store much (a spec is kept per job).
MAX_PARTICIPANTS = 64
MAX_PARAMS = 64
MAX_PARAM_TEXT = 4096
MAX_BINDINGS = 256


class InvalidJobSpecError(BundError):
    """A job spec is malformed: the message names the field to fix."""


def is_job_id(value: str) -> bool:
    """Whether ``value`` is a job id: 32 lower-case hex digits (so it may also name a folder)."""
    return _JOB_ID.fullmatch(value) is not None


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid party/role/dataset/column name, else raise."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):  # "$" would allow "x\n"
        raise InvalidJobSpecError(
            f"{kind} {value!r} is not a valid name: use 1-64 letters, digits, '_', '.' or '-'"
        )
    return value


@dataclass(frozen=True)
class Participant:
    """One party's place in a job: its role, the dataset it brings, and its column bindings.

    ``columns`` maps the protocol's logical column names (for PSI: ``id``) to the dataset's own.
    """

    party: str
    role: str
    dataset: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name("party", self.party)
        check_name("role", self.role)
        if self.dataset is not None:
            check_name("dataset", self.dataset)
        if len(self.columns) > MAX_BINDINGS:
            raise InvalidJobSpecError(f"a participant binds at most {MAX_BINDINGS} columns")
        for logical, column in self.columns.items():
            check_name("logical column", logical)
            if not isinstance(column, str) or not column or len(column) > 128:
                raise InvalidJobSpecError(f"column binding {logical!r} must name a column")
        object.__setattr__(self, "columns", dict(sorted(self.columns.items())))


@dataclass(frozen=True)
class JobSpec:
    """What a job computes, between whom, on which data, for whom, and why.

    ``job_id`` is empty until the requester's node assigns one. ``digest()`` covers every field, so
    an approval or an audit record made over it is bound to the exact job.
    """

    protocol: str
    participants: tuple[Participant, ...]
    receivers: tuple[str, ...]
    purpose: str
    requester: str
    params: Mapping[str, JsonScalar] = field(default_factory=dict)
    job_id: str = ""

    def __post_init__(self) -> None:
        check_name("protocol", self.protocol)
        check_name("requester", self.requester)
        if not self.participants:
            raise InvalidJobSpecError("a job needs at least one participant")
        names = [p.party for p in self.participants]
        if len(set(names)) != len(names):
            raise InvalidJobSpecError(f"a party appears twice among the participants: {names}")
        if self.requester not in names:
            raise InvalidJobSpecError(
                f"the requester {self.requester!r} must be one of the participants {names}"
            )
        if not self.receivers:
            raise InvalidJobSpecError("name at least one result receiver")
        for receiver in self.receivers:
            if receiver not in names:
                raise InvalidJobSpecError(f"receiver {receiver!r} is not a participant ({names})")
        if not self.purpose.strip() or len(self.purpose) > 1000:
            raise InvalidJobSpecError("state the job's purpose in 1-1000 characters")
        if len(self.participants) > MAX_PARTICIPANTS or len(self.params) > MAX_PARAMS:
            raise InvalidJobSpecError(
                f"a job has at most {MAX_PARTICIPANTS} participants and {MAX_PARAMS} parameters"
            )
        for key, value in self.params.items():
            check_name("parameter", key)
            if isinstance(value, str) and len(value) > MAX_PARAM_TEXT:
                raise InvalidJobSpecError(
                    f"parameter {key!r} holds {len(value)} characters; at most {MAX_PARAM_TEXT}"
                )
            if not isinstance(value, str | int | float | bool) and value is not None:
                raise InvalidJobSpecError(f"parameter {key!r} must be a string, number or bool")
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidJobSpecError(f"parameter {key!r} must be a finite number")
        if self.job_id and not is_job_id(self.job_id):
            raise InvalidJobSpecError("job_id must be 32 lower-case hex digits")
        object.__setattr__(self, "params", dict(sorted(self.params.items())))
        object.__setattr__(self, "receivers", tuple(self.receivers))
        object.__setattr__(self, "participants", tuple(self.participants))

    @property
    def parties(self) -> tuple[str, ...]:
        """The participating parties' names, in spec order."""
        return tuple(p.party for p in self.participants)

    def participant(self, party: str) -> Participant:
        """The participant entry of ``party``; ``KeyError`` if it takes no part."""
        for p in self.participants:
            if p.party == party:
                return p
        raise KeyError(party)

    def canonical_json(self) -> bytes:
        """The whole spec as canonical JSON (:func:`bund.compute.canonical.canonical_json`, v1).

        Raises:
            InvalidJobSpecError: A parameter is NaN or infinite (JSON has no such number), or a
                text holds a lone surrogate.
        """
        doc: dict[str, Any] = {
            "protocol": self.protocol,
            "participants": [
                {"party": p.party, "role": p.role, "dataset": p.dataset, "columns": dict(p.columns)}
                for p in self.participants
            ],
            "receivers": list(self.receivers),
            "purpose": self.purpose,
            "requester": self.requester,
            "params": dict(self.params),
            "job_id": self.job_id,
        }
        try:
            return canonical_json(doc)
        except ValueError as exc:
            raise InvalidJobSpecError(
                f"the job spec cannot be encoded ({exc}): parameters must be finite numbers and "
                "text valid Unicode"
            ) from None

    def digest(self) -> str:
        """Hex SHA-256 of the canonical encoding: what approvals and audit records refer to.

        Raises:
            InvalidJobSpecError: See :meth:`canonical_json`.
        """
        return hashlib.sha256(self.canonical_json()).hexdigest()


_ARTIFACT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_artifact_name(name: str) -> str:
    """``name`` if it may name an artifact's file: letters, digits, ``._-``, no leading dot."""
    if not _ARTIFACT_NAME.fullmatch(name):
        raise ValueError(f"{name!r} cannot name an artifact file (letters, digits, '._-')")
    return name


@dataclass(frozen=True)
class Result:
    """What a job delivers to a receiver: a small JSON summary and named binary artifacts.

    ``summary`` holds figures a person reads (for PSI: the intersection size); ``artifacts`` holds
    files (for PSI in intersection mode: ``intersection.csv``). ``files`` holds artifacts too
    large for memory (PSI's at 10^8 ids): files a role wrote in its scratch directory, which the
    node's job store moves into its own artifact directory when it stores the result (a stored
    result's artifacts are read in pages, whichever way they arrived).
    """

    summary: Mapping[str, JsonScalar]
    artifacts: Mapping[str, bytes] = field(default_factory=dict)
    files: Mapping[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        both = set(self.artifacts) & set(self.files)
        if both:
            raise ValueError(f"artifacts {sorted(both)} are given both as bytes and as files")
        for name in self.files:
            check_artifact_name(name)

    def held(self) -> Result:
        """This result with its file artifacts read into bytes (an in-memory store, a test run)."""
        if not self.files:
            return self
        read = {name: path.read_bytes() for name, path in self.files.items()}
        return Result(self.summary, {**self.artifacts, **read})
