"""Job spec files (``bund job submit SPEC.toml``): their schema, their loader, their templates.

A spec file is parsed by one declared schema (:class:`SpecFile`), then by its protocol's own
(:meth:`bund.parties.jobs.ProtocolDef.validate`: roles, parameters, its checks), so a typo'd key or
parameter is refused naming the nearest known one before anything reaches a node.
:func:`spec_template` writes a commented template for any protocol from its declarations (each
parameter with its description, type, range and default), which ``bund job init`` prints.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field
from pydantic.fields import FieldInfo

from bund.compute.errors import BundError
from bund.parties.jobs import (
    InvalidJobSpecError,
    JobSpec,
    NoParams,
    Participant,
    ProtocolDef,
    RoleRequirement,
)
from bund.parties.schema import (
    Name,
    OneOf,
    Scalar,
    StrictModel,
    Text,
    expectation,
    parse_file,
    placeholders,
    read_toml,
)


def _known_protocol(value: str) -> str:
    from bund.parties.protocols import PROTOCOLS  # the registry is heavy: import it when needed

    return str(OneOf(tuple(sorted(PROTOCOLS))).check(value))


class _Participant(StrictModel):
    party: Name = Field(description="the participant's party")
    role: Name = Field(description="its role in the protocol")
    dataset: Name | None = Field(default=None, description="the dataset it brings")
    columns: dict[Name, Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=dict, description="the protocol's logical column -> the dataset's own"
    )


class SpecFile(StrictModel):
    """A job spec file as written; the requester is the submitting node's party."""

    protocol: Annotated[str, AfterValidator(_known_protocol)] = Field(
        description="the joint computation"
    )
    purpose: Text = Field(description="why the job runs: approvers and the regulator read it")
    receivers: list[Name] = Field(description="the participants that get the result")
    participants: list[_Participant] = Field(description="one [[participants]] table each")
    params: dict[Name, Scalar] = Field(
        default_factory=dict, description="the protocol's parameters"
    )


def parse_spec(doc: dict[str, Any], requester: str, where: object) -> JobSpec:
    """Build and validate the job spec of a parsed spec file.

    Raises:
        InvalidJobSpecError: Naming the file, the key to fix and the nearest known one, or the
            protocol's own refusal (``dp_stats`` with noise off without the test-only switch).
    """
    from bund.parties.protocols import get_protocol

    unfilled = placeholders(doc)
    if unfilled:
        raise InvalidJobSpecError(
            "\n".join(
                f'{where}: {key} is still a template placeholder "<...>": fill it in'
                for key in unfilled
            )  # fmt: skip
        )
    file = parse_file(SpecFile, doc, where, InvalidJobSpecError)
    try:
        spec = JobSpec(
            protocol=file.protocol,
            participants=tuple(
                Participant(p.party, p.role, p.dataset, p.columns) for p in file.participants
            ),
            receivers=tuple(file.receivers),
            purpose=file.purpose,
            requester=requester,
            params=file.params,
        )
        get_protocol(spec.protocol).validate(spec)
    except BundError as exc:
        raise InvalidJobSpecError(f"{where}: {exc}") from None
    return spec


def load_spec_file(path: Path, requester: str | None = None) -> JobSpec:
    """Read a job spec file; the requester is this node's party (the first participant if None).

    Raises:
        InvalidJobSpecError: The file is missing, not TOML, or not a runnable spec; the message
            names the file and the key to fix.
    """
    doc = read_toml(path, "job spec", InvalidJobSpecError)
    if requester is None:
        first = doc.get("participants")
        party = first[0].get("party") if isinstance(first, list) and first else None
        requester = party if isinstance(party, str) else ""
    return parse_spec(doc, requester, path)


# --- templates ---------------------------------------------------------------------------------


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def _comment(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, 98, initial_indent=f"# {indent}", subsequent_indent=f"# {indent}")


def _param_lines(name: str, info: FieldInfo) -> list[str]:
    required = info.is_required()
    lines = _comment(f"{name}{' (required)' if required else ''}: {info.description or ''}")
    default = None if required else info.get_default(call_default_factory=True)
    what = expectation(info.annotation, info.metadata)
    shown = f"; default {_toml(default)}" if default is not None else ""
    lines += _comment(f"{what}{shown}", "  ")
    if required:
        lines.append(f'{name} = "<{name}>"')
    else:
        value = _toml(default) if default is not None else _toml(f"<{name}>")
        lines.append(f"# {name} = {value}")
    return lines


def _participant_lines(n: int, role: str, need: RoleRequirement) -> list[str]:
    lines = ["[[participants]]", f'party = "<party {n}>"', f"role = {_toml(role)}"]
    if need.dataset or need.columns:
        lines.append(f'dataset = "<dataset of party {n}>"')
    if need.columns:
        binds = ", ".join(f'{c} = "<its {c} column>"' for c in need.columns)
        lines.append(f"columns = {{ {binds} }}")
    return lines


def spec_template(definition: ProtocolDef) -> str:
    """A commented spec file for ``definition``: every parameter, every role, placeholders.

    Once its ``"<...>"`` placeholders are filled in, ``bund config check`` accepts it.
    """
    name = definition.name
    lines = [
        f"# A {name} job spec (protocol version {definition.version}): `bund job init {name}`.",
        *_comment(definition.description),
        '# Fill in every "<...>", then check it:  bund config check THIS-FILE',
        "# and submit it from your node:          bund job submit THIS-FILE --config node.toml",
        "# docs/jobs.md explains each key; docs/protocols/ says what each party learns.",
        f"protocol = {_toml(name)}",
        "# why the job runs, in 1-1000 characters: approvers and the regulator read it",
        'purpose = "<purpose>"',
    ]
    seats: list[tuple[int, str, RoleRequirement]] = []
    for role in definition.roles:
        need = definition.requirement(role)
        for _ in range(max(need.min, 1)):
            seats.append((len(seats) + 1, role, need))
    receive = [f"<party {n}>" for n, _, need in seats if need.receives]
    rules = [
        f"every {role!r} receives"
        if need.receives
        else f"no {role!r} receives"
        if need.receives is False
        else f"a {role!r} may receive"
        for role, need in ((r, definition.requirement(r)) for r in definition.roles)
    ]
    lines += _comment(f"who gets the result: {'; '.join(rules)}")
    lines.append(f"receivers = {json.dumps(receive or ['<party 1>'])}")
    lines += ["", "[params]"]
    if definition.params is NoParams or not definition.params.model_fields:
        lines.append(f"# {name} takes no parameters")
    for param, info in definition.params.model_fields.items():
        lines += [*_param_lines(param, info), ""]
    described: set[str] = set()
    for n, role, need in seats:
        lines.append("")
        if role not in described:
            described.add(role)
            extra = need.max is None or need.max > max(need.min, 1)
            more = "; add a [[participants]] table for each more" if extra else ""
            lines += _comment(f"{role}: {need.phrase(role)}{more}")
        lines += _participant_lines(n, role, need)
    return "\n".join(lines).rstrip() + "\n"
