"""What every declared schema shares: safe TOML reading, and errors that name the key and the fix.

Every file a person writes (``node.toml``, ``policy.toml``, job specs, workflow files,
``regulator.toml``) and every protocol's parameters are parsed by one pydantic model, a
:class:`StrictModel`: unknown keys are refused (never silently ignored), values are checked
strictly (``"5"`` is not the integer 5), and each model's fields say in words what they take.
This module turns pydantic's errors into :class:`Problem` values that name the dotted key, what
it must be, and, for an unknown key, the nearest known one; each loader renders them with its own
file name and raises its own error class.

>>> class Limits(StrictModel):
...     max_workers: int = 16
>>> try:
...     Limits.model_validate({"max_worker": 8})
... except ValidationError as exc:
...     print(problems(exc, Limits)[0].suggestion)
max_workers
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    PlainValidator,
    ValidationError,
)
from pydantic.fields import FieldInfo
from pydantic_core import core_schema

from bund.compute.errors import BundError
from bund.parties.tomlfile import MAX_DEPTH as MAX_DEPTH
from bund.parties.tomlfile import NAME_PATTERN, peer_address
from bund.parties.tomlfile import listen_address as listen_address
from bund.parties.tomlfile import read_toml as read_toml

#: How a template marks a value the person must fill in: ``"<a party, e.g. bank>"``.
PLACEHOLDER = re.compile(r"^<[^<>]*>$")

_NAME = f"^{NAME_PATTERN}$"


@dataclass(frozen=True)
class Expect:
    """Field metadata: what a value must be, in words (instead of words derived from its type)."""

    text: str


class StrictModel(BaseModel):
    """A table of a file a person writes: unknown keys refused, values checked strictly."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    #: What a key of this table is called in messages: ``key``, ``limit``, ``parameter``.
    noun: ClassVar[str] = "key"


M = TypeVar("M", bound=StrictModel)


#: A party, role, dataset or column name: what ``bund.parties.jobs.check_name`` accepts.
Name = Annotated[
    str, Field(pattern=_NAME), Expect("a name of 1-64 letters, digits, '_', '.' or '-'")
]
#: A non-empty string.
Text = Annotated[str, Field(min_length=1), Expect("a non-empty string")]
#: A number above zero (an integer is fine).
PositiveNumber = Annotated[float, Field(gt=0), Expect("a positive number")]
#: Where a node listens: ``HOST:PORT``, port 0 letting the OS choose.
ListenAddress = Annotated[
    str, AfterValidator(listen_address), Expect('"HOST:PORT", for example "127.0.0.1:7443"')
]
#: Where another node is reached: ``HOST:PORT``.
PeerAddress = Annotated[
    str, AfterValidator(peer_address), Expect('"HOST:PORT", for example "tax.example:7443"')
]


def _exact(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"must be {EXACT_WORDS}, not {shown(value)}")
    return value


#: How an exact rational is written: floats are refused, their binary rounding drifts.
EXACT_WORDS = 'a rational written exactly, as a string like "1/2", "0.25" or "1e-6"'
#: An exact rational as a file writes it (a string, or an integer); parse it with
#: ``bund.compute.dp.budget.parse_rational``.
Exact = Annotated[str | int, PlainValidator(_exact), Expect(EXACT_WORDS)]


@dataclass(frozen=True)
class OneOf:
    """Field metadata: the value must be one of ``values`` (a registry's names, say).

    ``Literal`` says the same for choices known when the code is written; this is for choices
    another module owns (``Annotated[str, OneOf(fed.ACCOUNTANTS)]``).
    """

    values: tuple[object, ...]

    def check(self, value: object) -> object:
        """``value``, or ``ValueError`` naming the choices and the nearest one."""
        if value not in self.values:
            hint = did_you_mean(value, map(str, self.values)) if isinstance(value, str) else ""
            raise ValueError(f"must be one of {choices(self.values)}, not {shown(value)}{hint}")
        return value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        """Check membership after the type's own validation."""
        return core_schema.no_info_after_validator_function(self.check, handler(source))


#: A job parameter's value as a file writes it: the JSON scalars the wire carries.
Scalar = Annotated[str | int | float | bool, Expect("a string, a number, true or false")]


def nearest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name`` (difflib, or a prefix), or ``None`` when none is close.

    >>> nearest("certificate", ["ca", "cert", "key"])
    'cert'
    """
    names = sorted(set(known))
    matches = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if matches:
        return matches[0]
    prefixes = [k for k in names if min(len(k), len(name)) >= 3 and name.startswith(k)]
    return max(prefixes, key=len) if prefixes else None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``" (did you mean 'psi'?)"`` for the nearest known name, else an empty string."""
    guess = nearest(name, known)
    return f" (did you mean {guess!r}?)" if guess is not None else ""


def shown(value: object) -> str:
    """A short, safe rendering of a value from a file (never the repr of a deep structure)."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str | int | float | bool):
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."
    return f"a {type(value).__name__}"


def choices(values: Sequence[object]) -> str:
    """``"'a', 'b' or 'c'"``."""
    rendered = [repr(v) for v in values]
    if len(rendered) == 1:
        return rendered[0]
    return ", ".join(rendered[:-1]) + " or " + rendered[-1]


# --- reading TOML ------------------------------------------------------------------------------


def placeholders(doc: Mapping[str, Any]) -> list[str]:
    """The dotted keys whose value is still a template placeholder (``"<...>"``)."""
    found: list[str] = []
    stack: list[tuple[object, str]] = [(doc, "")]
    while stack:
        value, key = stack.pop()
        if isinstance(value, dict):
            stack += [(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(v, f"{key}[{i + 1}]") for i, v in enumerate(value)]
        elif isinstance(value, str) and PLACEHOLDER.match(value):
            found.append(key)
    return sorted(found)


# --- what a value must be, in words ------------------------------------------------------------


def _flatten(metadata: Iterable[object]) -> list[object]:
    out: list[object] = []
    for m in metadata:
        if isinstance(m, FieldInfo):
            out += m.metadata
        else:
            out.append(m)
    return out


def _unwrap(tp: object, metadata: list[object]) -> tuple[object, list[object]]:
    """Strip ``Annotated`` (gathering its metadata) and ``X | None`` (keeping X)."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            base, *extra = get_args(tp)
            tp, metadata = base, [*metadata, *_flatten(extra)]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp, metadata
            tp = args[0]
        else:
            return tp, metadata


def _bounds(metadata: Iterable[object]) -> str:
    lo: object = None
    hi: object = None
    lo_open = hi_open = False
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            lo = m.ge
        elif isinstance(m, annotated_types.Gt):
            lo, lo_open = m.gt, True
        elif isinstance(m, annotated_types.Le):
            hi = m.le
        elif isinstance(m, annotated_types.Lt):
            hi, hi_open = m.lt, True
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi}"
    return ""


def expectation(tp: object, metadata: Iterable[object] = ()) -> str:
    """What a value of type ``tp`` (with its constraints) must be, in words.

    >>> expectation(Annotated[int, Field(ge=1, le=10)])
    'an integer in [1, 10]'
    >>> expectation(Literal["on", "off"])
    "one of 'on' or 'off'"
    """
    tp, meta = _unwrap(tp, _flatten(metadata))
    for m in meta:
        if isinstance(m, Expect):
            return m.text
        if isinstance(m, OneOf):
            return "one of " + choices(m.values)
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + choices(get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(expectation(a) for a in get_args(tp) if a is not type(None))
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer" + _bounds(meta)
    if tp is float:
        return "a number" + _bounds(meta)
    if tp is str:
        short = any(isinstance(m, annotated_types.MinLen) and m.min_length > 0 for m in meta)
        return "a non-empty string" if short else "a string"
    if origin in (dict, Mapping) or (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return "a table"
    if origin in (list, tuple, Sequence):
        return "an array"
    return "a value of another kind"


def describe(info: FieldInfo) -> str:
    """A field's description, type and range, and default: what ``bund job init`` prints."""
    parts = [info.description or ""]
    parts.append(expectation(info.annotation, info.metadata))
    if not info.is_required():
        default = info.get_default(call_default_factory=True)
        if default is not None and not isinstance(default, BaseModel):
            parts.append(f"default {default!r}")
    return "; ".join(p for p in parts if p)


# --- pydantic errors as problems ---------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a file or a parameter set.

    Attributes:
        kind: ``"unknown"`` (a key no schema knows), ``"missing"`` or ``"invalid"``.
        key: The dotted key (list entries count from 1: ``participants[2].role``).
        text: For ``invalid``: what the value must be, as a predicate that follows the key
            (``"must be an integer >= 1, not 0"``); for ``missing``: what the key holds.
        suggestion: For ``unknown``: the nearest known key, dotted like ``key``.
        known: For ``unknown``: the keys the table does know.
        noun: What a key of that table is called (``key``, ``limit``, ``parameter``).
    """

    kind: str
    key: str
    text: str = ""
    suggestion: str | None = None
    known: tuple[str, ...] = ()
    noun: str = "key"


def _key(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part + 1}]"
        else:
            text = part if re.fullmatch(r"[A-Za-z0-9_\-]+", part) else f'"{part}"'
            out += f".{text}" if out else text
    return out


@dataclass
class _Where:
    """Where a loc points into a model: how much of it names keys, and the type found there."""

    length: int
    tp: object
    metadata: list[object]
    info: FieldInfo | None
    table: type[StrictModel] | None


def _resolve(model: type[BaseModel], loc: Sequence[int | str]) -> _Where:
    """Follow ``loc`` through the model's fields, tables and arrays; stop at a union's tag."""
    tp: object = model
    metadata: list[object] = []
    info: FieldInfo | None = None
    table: type[StrictModel] | None = model if issubclass(model, StrictModel) else None
    key_type: object = None
    for i, part in enumerate(loc):
        tp, metadata = _unwrap(tp, metadata)
        origin = get_origin(tp)
        if part == "[key]" and key_type is not None:  # the name of a table's entry
            return _Where(i, key_type, [], None, None)
        key_type = None
        if isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            table = tp if issubclass(tp, StrictModel) else None
            info = tp.model_fields[str(part)]
            tp, metadata = info.annotation, list(info.metadata)
        elif origin in (dict, Mapping) and isinstance(part, str):
            key_type, tp = get_args(tp)
            metadata, info, table = [], None, None
        elif origin in (list, tuple, Sequence) and isinstance(part, int):
            tp, metadata, info, table = get_args(tp)[0], [], None, None
        else:
            return _Where(i, tp, metadata, info, table)
    return _Where(len(loc), tp, metadata, info, table)


def _leaves(model: type[BaseModel]) -> dict[str, str]:
    """Every key the model knows, dotted (``peers.NAME.address``), by its last part."""
    out: dict[str, str] = {}
    stack: list[tuple[type[BaseModel], str]] = [(model, "")]
    while stack:
        table, prefix = stack.pop()
        for name, info in table.model_fields.items():
            path = f"{prefix}.{name}" if prefix else name
            out.setdefault(name, path)
            tp, _ = _unwrap(info.annotation, [])
            if get_origin(tp) in (dict, Mapping):
                tp, _ = _unwrap(get_args(tp)[1], [])
                path += ".NAME"
            if isinstance(tp, type) and issubclass(tp, BaseModel) and len(stack) < 64:
                stack.append((tp, path))
    return out


def _elsewhere(name: str, model: type[BaseModel]) -> str | None:
    """A key of another table that ``name`` is close to: ``executor`` for a top-level typo."""
    leaves = _leaves(model)
    guess = nearest(name, leaves)
    return leaves[guess] if guess is not None else None


def problems(exc: ValidationError, model: type[BaseModel]) -> list[Problem]:
    """Turn a validation error of ``model`` into one problem per key, in the file's order."""
    found: dict[str, Problem] = {}
    for error in exc.errors():
        loc = error["loc"]
        kind = error["type"]
        if kind == "extra_forbidden":
            parent = _resolve(model, loc[:-1])
            holder = parent.tp if isinstance(parent.tp, type) else None
            known: tuple[str, ...] = ()
            noun = "key"
            if holder is not None and issubclass(holder, BaseModel):
                known = tuple(holder.model_fields)
                noun = holder.noun if issubclass(holder, StrictModel) else "key"
            guess = nearest(str(loc[-1]), known)
            suggestion = _key([*loc[:-1], guess]) if guess else _elsewhere(str(loc[-1]), model)
            key = _key(loc)
            found.setdefault(
                key, Problem("unknown", key, suggestion=suggestion, known=known, noun=noun)
            )
            continue
        where = _resolve(model, loc)
        key = _key(loc[: where.length])
        if key in found:
            continue  # a union reports once per member: one problem per key is enough
        if kind == "missing":
            about = where.info.description if where.info and where.info.description else ""
            text = f"{about}; " if about else ""
            found[key] = Problem(
                "missing", key, f"{text}set it to {expectation(where.tp, where.metadata)}"
            )
            continue
        if kind in ("value_error", "assertion_error"):
            cause = error.get("ctx", {}).get("error")
            found[key] = Problem("invalid", key, str(cause) if cause else error["msg"])
            continue
        value = error.get("input")
        if where.length < len(loc) and loc[where.length] == "[key]":
            found[key] = Problem(
                "invalid", key, f"is not a valid name: it must be {expectation(where.tp)}"
            )
            continue
        text = f"must be {expectation(where.tp, where.metadata)}, not {shown(value)}"
        if kind == "literal_error" and isinstance(value, str):
            options = [str(v) for v in get_args(_unwrap(where.tp, [])[0])]
            text += did_you_mean(value, options)
        found[key] = Problem("invalid", key, text)
    return list(found.values())


def render(file: object, problem: Problem) -> str:
    """One line for a file: the file, the dotted key, what is wrong and the fix."""
    if problem.kind == "unknown":
        noun = problem.noun
        hint = f"; did you mean {problem.suggestion!r}?" if problem.suggestion else ""
        known = f" Known {noun}s here: {', '.join(problem.known)}." if problem.known else ""
        return (
            f"{file}: {problem.key}: unknown {noun} (unknown {noun}s are refused, not "
            f"ignored){hint or '.'}{known}"
        )
    if problem.kind == "missing":
        return f"{file}: {problem.key} is missing: {problem.text}"
    return f"{file}: {problem.key} {problem.text}"


def parse_file(model: type[M], doc: Mapping[str, Any], file: object, error: type[BundError]) -> M:
    """Validate a parsed file against ``model``; raise ``error`` listing every problem.

    Each line of the message names the file, the dotted key and the fix, and for an unknown
    key the nearest known one.
    """
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise error("\n".join(render(file, p) for p in problems(exc, model))) from None
