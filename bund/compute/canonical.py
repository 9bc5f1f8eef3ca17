r"""Canonical JSON: the one encoding of every JSON document that Bund signs or hashes.

A signature or digest over JSON is only reproducible if every party turns the same document into
the same bytes. :func:`canonical_json` is that encoding; the audit record body, the job spec
digest and the approval payload all call it, and so must any new signed or hashed document.

The rules of version :data:`CANONICAL_JSON_VERSION` (1):

* Values are ``dict`` (any mapping) with ``str`` keys, ``list``/``tuple``, ``str``, ``int``,
  ``float``, ``bool`` and ``None``; anything else is refused rather than converted, so that no
  two documents encode alike (``json.dumps`` would write the key ``1`` as ``"1"``).
* Object keys are sorted by Unicode code point; no whitespace (``,`` and ``:`` separators).
* Text is UTF-8, written as is: only ``"``, ``\`` and the controls U+0000..U+001F are escaped
  (``\n``, ``\r``, ``\t``, ``\b``, ``\f``, otherwise ``\u00xx``, lower-case hex). A lone
  surrogate is refused: it has no UTF-8 form.
* Integers in decimal, of any size. Floats as Python's ``repr`` (the shortest form that reads
  back the same float, ``1e-06``, ``2.0``); NaN and the infinities are refused, since JSON has
  no such numbers. ``true``, ``false``, ``null``.

Why version 1 is the version of everything written so far: the audit log's record bodies have
used exactly this encoding since its first release. Job spec digests and approval payloads were
written with ``json.dumps`` variants that differ from it only on inputs no node could hold (a
non-finite spec parameter, which the wire refuses; a non-ASCII character in an approval's
fields, which hold names, hex digests, rationals and a package version only). So every spec
digest, approval and audit log written before this module existed verifies unchanged, as
``tests/compute/test_canonical.py`` shows on fixtures made with those old encoders.

Changing any rule above changes signed bytes: it is a new version. Raise
:data:`CANONICAL_JSON_VERSION`, keep the version-1 encoder to verify what was written under it,
and say which version bytes were written in where they are kept (the audit store's schema
version, the ``v1`` of a signing domain).

>>> canonical_json({"b": [1, 2.5, None], "a": "数据", "c": {"y": True, "x": "\n"}})
b'{"a":"\xe6\x95\xb0\xe6\x8d\xae","b":[1,2.5,null],"c":{"x":"\\n","y":true}}'
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Final

#: The version of the rules that :func:`canonical_json` follows (see the module docstring).
CANONICAL_JSON_VERSION: Final = 1

_ENCODER: Final = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)


def _plain(value: object, path: str) -> object:
    """``value`` as plain dicts and lists, after checking every part of it is allowed."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"canonical JSON: {path} is {value}, which JSON cannot hold")
        return value
    if isinstance(value, Mapping):
        plain: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"canonical JSON: {path} has the key {key!r} of type {type(key).__name__}; "
                    "object keys must be str"
                )
            plain[key] = _plain(item, f"{path}[{key!r}]")
        return plain
    if isinstance(value, list | tuple):
        return [_plain(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise TypeError(
        f"canonical JSON: {path} is a {type(value).__name__}; give dict, list, tuple, str, int, "
        "float, bool or None (bytes as hex)"
    )


def canonical_json(value: object) -> bytes:
    r"""The canonical JSON bytes of ``value``, for signing or hashing (version 1).

    Args:
        value: A JSON document of mappings with ``str`` keys, lists or tuples, ``str``, ``int``,
            finite ``float``, ``bool`` and ``None``.

    Returns:
        The UTF-8 bytes described in the module docstring: the same document always gives the
        same bytes, and different documents give different bytes.

    Raises:
        TypeError: A part of ``value`` is of another type, or a key is not a ``str``.
        ValueError: A float is NaN or infinite, or a string holds a lone surrogate.

    >>> canonical_json({"epsilon": 0.5, "purpose": "信贷", "rows": 10**20})
    b'{"epsilon":0.5,"purpose":"\xe4\xbf\xa1\xe8\xb4\xb7","rows":100000000000000000000}'
    >>> canonical_json({"epsilon": float("nan")})
    Traceback (most recent call last):
    ...
    ValueError: canonical JSON: value['epsilon'] is nan, which JSON cannot hold
    """
    text = _ENCODER.encode(_plain(value, "value"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            "canonical JSON: a string holds a lone surrogate, which has no UTF-8 form"
        ) from None
