r"""Unbalanced and labeled PSI maths: an OPRF on the X25519 group, what its outputs key, labels.

The holder of a large set (a registry) holds a secret scalar ``k`` per querying party. The
oblivious PRF is 2HashDH (Jarecki, Kiayias and Krawczyk, 2014) on the group of ``bund.compute.psi``:

    ``F_k(x) = SHA-512("bund/psi-u/v1\0" ‖ len(ctx) ‖ ctx ‖ len(x) ‖ x ‖ u(k·H(x)))``

where ``H`` is PSI's hash to the group under the context ``ctx`` (fixed per setup, not per job,
so that outputs stay comparable across query jobs). The holder computes ``F_k(y)`` for each of
its ``y`` itself (one hash to the group and one scalar multiplication each). A querier learns
``F_k(x)`` for its own ``x`` without showing ``x``: it sends ``r·H(x)`` for a scalar ``r`` of
its own, the holder answers ``k·r·H(x)``, and the querier multiplies by ``r⁻¹ mod ℓ``.

Unblinding with OpenSSL's X25519. X25519 only multiplies by clamped scalars ``2^254 + 8·j``,
``0 ≤ j < 2^251``, but every point here lies in the subgroup of prime order ``ℓ`` (the clamped
``r`` already cleared the cofactor), where only the scalar mod ``ℓ`` matters. So the querier
draws ``r`` until ``r⁻¹ mod ℓ`` has a clamped representative, which happens for about half of
all ``r`` (:func:`create_query_blinding`); unblinding is then one more X25519 multiplication,
at OpenSSL's constant-time speed. ``u(·)`` is x-only, which is harmless: ``u(s·P)`` depends only
on ``u(P)``.

What an output keys. Each output ``F`` keys three values, each a keyed BLAKE2b of ``F`` (a PRF
with ``F`` as its key) over a distinct label, so none says anything about the others:

- ``match_key(F)`` (64 bits, label ``match``): what the holder's binary fuse filter stores
  (``bund.compute.psi_filters``) and what the querier tests;
- ``locator(F)`` (64 bits, label ``locate``): where a labeled record sits in the label table;
- ``label_key(F)`` (256 bits, label ``label``): the AES-256-GCM key of that record's payload.

A payload is sealed under its own key, used once, so the nonce is fixed (zero) and the setup's
context is the associated data. Without ``F(y)``, a record is unreadable: unmatched payloads
stay sealed. Payloads are padded to one width per setup, so their lengths say only the widest.

Payload encoding: per column, a 2-byte big-endian length and the value's UTF-8, then zero bytes
up to the width.

Label table wire layout: records sorted by locator, each the 8-byte little-endian locator and
the sealed payload (``width + 16`` bytes); the width travels in the setup header.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import NoReturn

import gmpy2
import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bund.compute.errors import InvalidMessageError
from bund.compute.executor import Executor
from bund.compute.psi import (
    POINT_SIZE,
    BlindingKey,
    KeyHandle,
    PointArray,
    blind_array,
    hash_to_points,
    map_with_key,
    multiply_points,
)

#: Order of the prime-order subgroup of Curve25519.
GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493
#: Domain-separation prefix of every OPRF output.
OPRF_DOMAIN = b"bund/psi-u/v1\x00"
#: Bytes of one OPRF output (SHA-512).
OUTPUT_SIZE = 64
#: Bytes a sealed payload adds to its padded plaintext (the GCM tag).
SEAL_OVERHEAD = 16
#: Bytes of one label-table record beyond its sealed payload (the locator).
LOCATOR_SIZE = 8
#: The widest padded payload accepted (all payload columns of one record together).
MAX_LABEL_WIDTH = 4096

_NONCE = bytes(12)
_INV8 = pow(8, -1, GROUP_ORDER)
_U64 = npt.NDArray[np.uint64]


def _clamp(raw: bytes) -> int:
    value = int.from_bytes(raw, "little")
    return (value & ~7 & ((1 << 255) - 1)) | (1 << 254)


@dataclass(frozen=True, eq=False)
class QueryBlinding:
    """A querier's blinding scalar ``r`` and the clamped scalar that undoes it on the subgroup.

    Both are :class:`~bund.compute.psi.BlindingKey` objects, so neither pickles or copies.
    """

    blind: BlindingKey
    unblind: BlindingKey

    def export_for_resume(self) -> bytes:
        """``r`` (32 bytes), for the node's sealed resume store only; the inverse follows."""
        return self.blind.export_for_resume()

    @classmethod
    def from_resume_state(cls, raw: bytes) -> QueryBlinding:
        """The blinding saved by :meth:`export_for_resume`.

        Raises:
            ValueError: If ``raw`` is not a scalar whose inverse has a clamped form.
        """
        inverse = _clamped_inverse(raw)
        if inverse is None:
            raise ValueError("a saved query blinding must have an invertible clamped form")
        return cls(
            BlindingKey.from_resume_state(raw),
            BlindingKey(X25519PrivateKey.from_private_bytes(inverse)),
        )


def _clamped_inverse(raw: bytes) -> bytes | None:
    """The clamped scalar ``c'`` with ``c'·clamp(raw) ≡ 1 (mod ℓ)``, or None if none exists."""
    if len(raw) != 32:
        raise ValueError("a scalar is 32 bytes")
    inverse = int(gmpy2.invert(_clamp(raw) % GROUP_ORDER, GROUP_ORDER))
    j = (inverse - (1 << 254)) * _INV8 % GROUP_ORDER
    if j >= 1 << 251:
        return None
    return ((1 << 254) + 8 * j).to_bytes(32, "little")


def create_query_blinding() -> QueryBlinding:
    """A fresh ``r`` from the OS CSPRNG whose inverse has a clamped form (about half qualify).

    >>> from bund.compute import psi
    >>> q = create_query_blinding()
    >>> p = psi.hash_to_points([b"id"], b"ctx")
    >>> k = psi.create_blinding_key()
    >>> psi.blind(psi.blind(psi.blind(p, q.blind), k), q.unblind) == psi.blind(p, k)
    True
    """
    while True:
        raw = os.urandom(32)
        if _clamped_inverse(raw) is not None:
            return QueryBlinding.from_resume_state(raw)


def setup_context(*parts: bytes) -> bytes:
    """The 32-byte hash context of one setup: SHA-256 of its parts, each length-prefixed."""
    digest = hashlib.sha256(OPRF_DOMAIN)
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def oprf_outputs(items: Sequence[bytes], evaluated: bytes, context: bytes) -> list[bytes]:
    """``F_k(x)`` for each item, from ``evaluated``: the concatenated ``u(k·H(x))`` in order."""
    if len(evaluated) != POINT_SIZE * len(items):
        raise ValueError("one evaluated point per item")
    prefix = hashlib.sha512(OPRF_DOMAIN + bytes([len(context)]) + context)
    out = []
    for index, item in enumerate(items):
        h = prefix.copy()
        h.update(len(item).to_bytes(8, "big"))
        h.update(item)
        h.update(evaluated[index * POINT_SIZE : (index + 1) * POINT_SIZE])
        out.append(h.digest())
    return out


def _derive(outputs: Sequence[bytes], label: bytes, size: int) -> bytes:
    blake = hashlib.blake2b
    return b"".join(blake(label, key=f, digest_size=size).digest() for f in outputs)


def match_keys(outputs: Sequence[bytes]) -> _U64:
    """The 64-bit key of each output that the filter stores (label ``match``)."""
    return np.frombuffer(_derive(outputs, b"match", 8), dtype="<u8").astype(np.uint64)


def locators(outputs: Sequence[bytes]) -> _U64:
    """The 64-bit locator of each output in the label table (label ``locate``)."""
    return np.frombuffer(_derive(outputs, b"locate", 8), dtype="<u8").astype(np.uint64)


def label_key(output: bytes) -> bytes:
    """The AES-256-GCM key of the payload keyed by one output (label ``label``)."""
    return hashlib.blake2b(b"label", key=output, digest_size=32).digest()


def encode_label(values: Sequence[str], width: int) -> bytes:
    r"""A record's payload columns, length-prefixed UTF-8, zero-padded to ``width`` bytes.

    Raises:
        ValueError: If the encoding is wider than ``width`` or a value exceeds 65,535 bytes.

    >>> encode_label(["12.5", "7"], 10)
    b'\x00\x0412.5\x00\x017\x00'
    """
    parts = []
    for value in values:
        raw = value.encode("utf-8")
        if len(raw) > 0xFFFF:
            raise ValueError("a payload value is at most 65,535 bytes")
        parts.append(struct.pack(">H", len(raw)) + raw)
    data = b"".join(parts)
    if len(data) > width:
        raise ValueError(f"the payload needs {len(data)} bytes, over the width {width}")
    return data + bytes(width - len(data))


def label_width(records: Sequence[Sequence[str]]) -> int:
    """The width that fits every record's encoded payload (at least 1)."""
    widest = max((sum(2 + len(v.encode("utf-8")) for v in record) for record in records), default=0)
    return max(1, widest)


def decode_label(data: bytes, columns: int) -> list[str]:
    """The ``columns`` values of a decoded payload.

    Raises:
        InvalidMessageError: If the payload does not parse.
    """
    values, at = [], 0
    try:
        for _ in range(columns):
            (size,) = struct.unpack_from(">H", data, at)
            if at + 2 + size > len(data):
                raise ValueError("truncated")
            values.append(data[at + 2 : at + 2 + size].decode("utf-8"))
            at += 2 + size
    except (struct.error, ValueError) as exc:
        raise InvalidMessageError(f"a PSI label does not decode ({exc})") from None
    if any(data[at:]):
        raise InvalidMessageError("a PSI label has non-zero padding")
    return values


@dataclass(frozen=True)
class HolderBatch:
    """What the holder derives from a batch of its ids: filter keys and, if labeled, records."""

    keys: bytes
    locators: bytes = b""
    sealed: bytes = b""


def evaluate_holder_set(
    items: Sequence[bytes],
    context: bytes,
    key: BlindingKey,
    labels: Sequence[bytes] | None = None,
    executor: Executor | None = None,
) -> HolderBatch:
    """The holder's offline step for a batch: ``F_k(y)``, its filter keys, sealed payloads.

    Args:
        items: Distinct normalised ids.
        context: The setup's hash context (:func:`setup_context`).
        key: The holder's scalar for this querier.
        labels: Each item's encoded payload (:func:`encode_label`, one width), or None.
        executor: Where the batches run; an out-of-process one receives the scalar (as for
            balanced PSI, ``bund.compute.psi``).

    Returns:
        The 8-byte little-endian filter keys in item order; with labels, the locators and the
        sealed payloads in item order too (the caller sorts the table).
    """
    if labels is not None and len(labels) != len(items):
        raise ValueError("one label per item")
    pairs = list(zip(items, labels if labels is not None else [None] * len(items), strict=True))
    parts = map_with_key(partial(_holder_task, context), pairs, key, executor)
    return HolderBatch(
        b"".join(p.keys for p in parts),
        b"".join(p.locators for p in parts),
        b"".join(p.sealed for p in parts),
    )


def _holder_task(
    context: bytes, key: KeyHandle, pairs: Sequence[tuple[bytes, bytes | None]]
) -> HolderBatch:
    items = [item for item, _ in pairs]
    evaluated = b"".join(multiply_points(key, hash_to_points(items, context)))
    outputs = oprf_outputs(items, evaluated, context)
    keys = match_keys(outputs).astype("<u8").tobytes()
    if not pairs or pairs[0][1] is None:
        return HolderBatch(keys)
    sealed = b"".join(
        AESGCM(label_key(f)).encrypt(_NONCE, label or b"", context)
        for f, (_, label) in zip(outputs, pairs, strict=True)
    )
    return HolderBatch(keys, locators(outputs).astype("<u8").tobytes(), sealed)


def unblind_outputs(
    items: Sequence[bytes],
    answers: PointArray,
    blinding: QueryBlinding,
    context: bytes,
    executor: Executor | None = None,
) -> list[bytes]:
    """The querier's ``F_k(x)`` from the holder's answers ``k·r·H(x)``, in order.

    ``answers`` passed ``validate_point_array(..., compared_only=True)``; the twist check runs
    here, in the executor's batches, before the unblinding multiplication.
    """
    unblinded = blind_array(answers, blinding.unblind, executor, check_curve=True)
    return oprf_outputs(items, unblinded.tobytes(), context)


def open_labels(
    outputs: Sequence[bytes], table: LabelTable, columns: int
) -> list[list[str] | None]:
    """Each output's payload from the label table, or None where no record opens under it.

    Raises:
        InvalidMessageError: If a record that opens does not decode.
    """
    found: list[list[str] | None] = []
    wanted = locators(outputs)
    left = np.searchsorted(table.locators, wanted, side="left")
    right = np.searchsorted(table.locators, wanted, side="right")
    for output, lo, hi in zip(outputs, left.tolist(), right.tolist(), strict=True):
        found.append(None)
        aead = AESGCM(label_key(output))
        for row in range(lo, hi):
            try:
                plain = aead.decrypt(_NONCE, table.sealed(row), table.context)
            except InvalidTag:
                continue
            found[-1] = decode_label(plain, columns)
            break
    return found


@dataclass(frozen=True, eq=False)
class LabelTable:
    """The label table a querier received: locators ascending, sealed records beside them."""

    context: bytes
    width: int
    locators: _U64
    records: bytes

    @property
    def record_size(self) -> int:
        """Bytes of one sealed payload."""
        return self.width + SEAL_OVERHEAD

    def sealed(self, row: int) -> bytes:
        """The sealed payload of one row."""
        size = self.record_size
        return self.records[row * size : (row + 1) * size]

    @classmethod
    def from_rows(cls, context: bytes, width: int, rows: bytes) -> LabelTable:
        """Parse concatenated ``locator ‖ sealed`` rows and check they are ascending.

        Raises:
            InvalidMessageError: If the rows do not parse or are not in ascending order.
        """
        if not 1 <= width <= MAX_LABEL_WIDTH:
            _bad_table(f"width {width} is outside 1..{MAX_LABEL_WIDTH}")
        step = LOCATOR_SIZE + width + SEAL_OVERHEAD
        if len(rows) % step:
            _bad_table(f"{len(rows)} bytes is not a whole number of {step}-byte records")
        raw = np.frombuffer(rows, dtype=np.uint8).reshape(-1, step)
        locs = raw[:, :LOCATOR_SIZE].copy().view("<u8").reshape(-1).astype(np.uint64)
        if np.any(locs[1:] < locs[:-1]):
            _bad_table("the locators are not in ascending order")
        return cls(context, width, locs, raw[:, LOCATOR_SIZE:].tobytes())


def _bad_table(what: str) -> NoReturn:
    raise InvalidMessageError(f"invalid PSI label table from the holder: {what}")


def sort_label_rows(locs: bytes, sealed: bytes, width: int) -> bytes:
    """``locator ‖ sealed`` rows sorted by locator (ties in input order), as they are sent."""
    count = len(locs) // LOCATOR_SIZE
    size = width + SEAL_OVERHEAD
    if len(sealed) != count * size:
        raise ValueError("one sealed payload per locator")
    keys = np.frombuffer(locs, dtype="<u8")
    order = np.argsort(keys, kind="stable")
    rows = np.concatenate(
        (
            np.frombuffer(locs, dtype=np.uint8).reshape(count, LOCATOR_SIZE),
            np.frombuffer(sealed, dtype=np.uint8).reshape(count, size),
        ),
        axis=1,
    )
    return rows[order].tobytes()
