"""Reading the TOML files people write, and the checks of names and addresses in them.

The standard library only: :mod:`bund.parties.schema` builds its pydantic types on these
checks and re-exports them, and :mod:`bund.parties.operator_file` reads ``operator.toml`` with
them without loading pydantic (``bund job status`` starts in a fraction of a second).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bund.compute.errors import BundError

#: Tables and arrays nest at most this deep in any file Bund reads (its schemas need four).
MAX_DEPTH = 8
#: A party, role, dataset or column name, matched against the whole string: 1-64 letters,
#: digits, ``_``, ``.`` or ``-``, not starting with one of the last three.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
_NAME = re.compile(NAME_PATTERN)


def is_name(value: str) -> bool:
    r"""Whether the whole of ``value`` is a name (:data:`NAME_PATTERN`; a newline is not).

    >>> is_name("hospital-a"), is_name("bank\n"), is_name("")
    (True, False, False)
    """
    return _NAME.fullmatch(value) is not None


def _check_address(value: str, lowest_port: int) -> str:
    host, sep, port = value.rpartition(":")
    if (
        not sep
        or not host
        or not port.isdigit()
        or not lowest_port <= int(port) <= 65535
        or any(c.isspace() for c in value)
    ):
        first = "0 (the OS picks one) to" if lowest_port == 0 else "1 to"
        raise ValueError(
            f'must be "HOST:PORT" with a port from {first} 65535, for example '
            f'"127.0.0.1:7443", not {value!r}'
        )
    return value


def listen_address(value: str) -> str:
    """``value`` if a node can listen on it (``HOST:PORT``, port 0 included), else ValueError."""
    return _check_address(value, 0)


def peer_address(value: str) -> str:
    """``value`` if a peer can be reached there (``HOST:PORT``, port 1 up), else ValueError."""
    return _check_address(value, 1)


def _too_deep(doc: Mapping[str, Any]) -> str | None:
    """The dotted key of the first value nested deeper than ``MAX_DEPTH`` (found iteratively)."""
    stack: list[tuple[object, int, str]] = [(doc, 0, "")]
    while stack:
        value, depth, key = stack.pop()
        if depth > MAX_DEPTH:
            return key or "the top level"
        if isinstance(value, dict):
            stack += [(v, depth + 1, f"{key}.{k}" if key else str(k)) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(v, depth + 1, f"{key}[{i + 1}]") for i, v in enumerate(value)]
    return None


def read_toml(path: Path, what: str, error: type[BundError]) -> dict[str, Any]:
    """Read a TOML file a person wrote, or raise ``error`` saying what is wrong with it.

    Args:
        path: The file.
        what: What it is, in words (``"job spec"``), for the messages.
        error: The exception class to raise.

    Raises:
        BundError: ``error``, when the file is missing, unreadable, not UTF-8, not TOML, or
            nested deeper than any Bund file (a clean error, never a ``RecursionError``).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {path} not found") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{path} is not UTF-8 text; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise error(
            f"{path} nests arrays or inline tables too deeply to read; a {what} nests at most "
            f"{MAX_DEPTH} levels"
        ) from None
    deep = _too_deep(doc)
    if deep is not None:
        raise error(
            f"{path}: {deep} is nested too deeply; a {what} nests at most {MAX_DEPTH} levels"
        )
    return doc
