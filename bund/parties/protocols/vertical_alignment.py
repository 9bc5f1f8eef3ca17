"""What the vertical protocols (``woe_iv``, ``vertical_lr``, ``vertical_score``) share.

Roles: one ``label_holder`` (the bank: labels, the Paillier key) and one or more
``feature_holder`` (tax bureau, business registry). Each binds the logical column ``id`` to its
company-id column; the label holder also binds ``label`` to its 0/1 label column.

Alignment (:func:`align_label_holder` / :func:`align_feature_holder`) runs ECDH-PSI (the kernels
of ``bund.compute.psi`` and the header checks of ``bund.parties.protocols.psi``) between the label
holder and each feature holder, in which only the label holder learns the pairwise intersection; it
then tells each feature holder the positions of the final common rows (present at every party) among
the points that feature holder sent, in the agreed order (ascending company id). Feature holders
learn which of their own ids are in the common set, nothing about other ids.
``docs/protocols/woe-iv.md`` and ``docs/protocols/vertical-lr.md`` have the messages.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field

from bund.compute import he
from bund.compute.canonical import canonical_json
from bund.compute.errors import InvalidMessageError
from bund.compute.layout import Header
from bund.compute.psi import (
    MAX_CHUNK_POINTS,
    BlindingKey,
    Disclosure,
    NormalisedIds,
    SetHeader,
    blind,
    create_blinding_key,
    hash_and_blind,
    hash_to_points,
    normalise_ids,
    sorted_order,
    validate_points,
)
from bund.parties.data import DatasetError, Table
from bund.parties.jobs import JobContext, JobSpec, ProtocolParams, RoleRequirement
from bund.parties.protocols.psi import check_own_set, exchange_headers, note_id_quality

LABEL_HOLDER = "label_holder"
FEATURE_HOLDER = "feature_holder"
ID_COLUMN = "id"
LABEL_COLUMN = "label"
#: Largest wire message these protocols send (2 MiB, as PSI).
MAX_MESSAGE_BYTES = 2 << 20
#: Most features a feature holder may bring.
MAX_FEATURES = 4096
#: The data-quality count of the columns left out of the features (a blank, text or NaN in them).
QUALITY_SKIPPED_COLUMNS = "feature_columns_skipped"

#: Version of the aligned row list and of the metadata layout.
_WIRE_VERSION = 1
_ROWS = Header(b"BVAL", _WIRE_VERSION)
_ROWS_COUNT = struct.Struct(">I")
_META = Header(b"BWOE", _WIRE_VERSION)


# --- alignment ------------------------------------------------------------------------------


def _own_ids(ctx: JobContext) -> tuple[NormalisedIds, int]:
    """This party's distinct ids (with their rows) and its node's cap, checked against it."""
    column = ctx.spec.participant(ctx.party).columns[ID_COLUMN]
    ids = normalise_ids(ctx.table().column(column))
    note_id_quality(ctx, ids)
    return ids, check_own_set(ctx, column, len(ids.items))


def _exchange_headers(ctx: JobContext, peer: str, size: int, cap: int) -> SetHeader:
    own = SetHeader(Disclosure.INTERSECTION, size, cap, MAX_CHUNK_POINTS)
    return exchange_headers(ctx, peer, "align/header", own)


def _send_points(ctx: JobContext, peer: str, tag: str, points: list[bytes]) -> None:
    for i, start in enumerate(range(0, len(points), MAX_CHUNK_POINTS)):
        ctx.send(peer, f"{tag}/{i}", b"".join(points[start : start + MAX_CHUNK_POINTS]))


def _recv_points(
    ctx: JobContext, peer: str, tag: str, header: SetHeader, *, compared_only: bool = False
) -> list[bytes]:
    seen: set[bytes] = set()
    out: list[bytes] = []
    for i, count in enumerate(header.chunk_sizes):
        out += validate_points(
            ctx.recv(peer, f"{tag}/{i}"), count, seen, compared_only=compared_only
        )
    return out


def _context(ctx: JobContext) -> bytes:
    return bytes.fromhex(ctx.spec.digest())


@dataclass(frozen=True)
class Alignment:
    """This party's rows of the common set, in the agreed order.

    Attributes:
        rows: Positions in this party's table, one per common row, in the agreed order.
        own_set_size: Distinct ids this party brought.
    """

    rows: list[int]
    own_set_size: int


def _blinding_keys(ctx: JobContext, peers: list[str]) -> dict[str, BlindingKey]:
    """A fresh blinding key per peer, all saved before the first point is sent.

    All at once: a resume state releases the messages taken before it, and a resumed alignment
    runs from the start, so no key may be saved after a peer's points were taken.
    """
    saved = ctx.load_state("align.keys")
    if saved is not None and len(saved) == 32 * len(peers):
        return {
            p: BlindingKey.from_resume_state(saved[32 * i : 32 * i + 32])
            for i, p in enumerate(peers)
        }
    keys = {p: create_blinding_key() for p in peers}
    ctx.save_state("align.keys", b"".join(k.export_for_resume() for k in keys.values()))
    return keys


def align_label_holder(ctx: JobContext, providers: list[str]) -> Alignment:
    """The label holder's side of the alignment with every feature holder.

    Runs ECDH-PSI with each feature holder in turn (a fresh blinding key for each), learns the
    pairwise intersections, and sends each feature holder its positions of the final common rows
    (``align/rows``), ordered by ascending company id.

    Raises:
        SetTooLargeError: If a set is over a node's ``psi_max_set_size``.
        InvalidPointError: If a peer's points fail validation.
    """
    ids, cap = _own_ids(ctx)
    items, item_rows = ids.items, ids.rows
    context = _context(ctx)
    keys = _blinding_keys(ctx, providers)
    hashed = hash_to_points(items, context)
    # For each provider: our item index -> that provider's sent position.
    matches: list[dict[int, int]] = []
    for peer in providers:
        header = _exchange_headers(ctx, peer, len(items), cap)
        key = keys[peer]
        blinded = blind(hashed, key, ctx.executor)
        order = sorted_order(blinded)
        peer_points = _recv_points(ctx, peer, "align/blinded", header)
        _send_points(ctx, peer, "align/blinded", [blinded[j] for j in order])
        own_header = SetHeader(Disclosure.INTERSECTION, len(items), cap, MAX_CHUNK_POINTS)
        own_double = _recv_points(ctx, peer, "align/double", own_header, compared_only=True)
        peer_double = {value: j for j, value in enumerate(blind(peer_points, key, ctx.executor))}
        found: dict[int, int] = {}
        for sent, value in enumerate(own_double):
            j = peer_double.get(value)
            if j is not None:
                found[order[sent]] = j
        matches.append(found)
        ctx.progress("align", len(matches), len(providers))
    common = sorted(
        (i for i in range(len(items)) if all(i in m for m in matches)), key=items.__getitem__
    )
    for peer, found in zip(providers, matches, strict=True):
        ctx.send(peer, "align/rows", encode_rows([found[i] for i in common]))
    return Alignment([item_rows[i] for i in common], len(items))


def align_feature_holder(ctx: JobContext, label_holder: str) -> Alignment:
    """A feature holder's side of the alignment: it learns only its rows of the common set.

    Raises:
        SetTooLargeError: If a set is over a node's ``psi_max_set_size``.
        InvalidPointError: If the label holder's points fail validation.
        InvalidMessageError: If the row list is malformed.
    """
    ids, cap = _own_ids(ctx)
    items, item_rows = ids.items, ids.rows
    header = _exchange_headers(ctx, label_holder, len(items), cap)
    key = _blinding_keys(ctx, [label_holder])[label_holder]
    blinded = hash_and_blind(items, _context(ctx), key, ctx.executor)
    order = sorted_order(blinded)
    _send_points(ctx, label_holder, "align/blinded", [blinded[j] for j in order])
    bank_points = _recv_points(ctx, label_holder, "align/blinded", header)
    double = blind(bank_points, key, ctx.executor)
    _send_points(ctx, label_holder, "align/double", double)
    positions = decode_rows(ctx.recv(label_holder, "align/rows"), len(items))
    return Alignment([item_rows[order[int(p)]] for p in positions], len(items))


def encode_rows(positions: list[int]) -> bytes:
    """The aligned row list the label holder sends a feature holder: 9 bytes then 4 per row.

    Layout: magic ``b"BVAL"`` (4), version 1 (1), row count (4, big-endian), then each common
    row's position in the feature holder's sorted points (4, big-endian).
    """
    return _ROWS.pack(
        _ROWS_COUNT.pack(len(positions)), np.asarray(positions, dtype=">u4").tobytes()
    )


def decode_rows(payload: bytes, points: int) -> npt.NDArray[np.int64]:
    """Check an aligned row list: distinct positions among the ``points`` this party sent.

    Raises:
        InvalidMessageError: If the layout, version or length is wrong, or a position is
            unknown or repeated.
    """
    body = _ROWS.split(payload, "the aligned row list")
    if len(body) < _ROWS_COUNT.size:
        raise InvalidMessageError("the aligned row list is too short")
    (count,) = _ROWS_COUNT.unpack_from(body)
    if len(body) != _ROWS_COUNT.size + 4 * count or count > points:
        raise InvalidMessageError("the aligned row list has the wrong length")
    positions = np.frombuffer(body, dtype=">u4", offset=_ROWS_COUNT.size).astype(np.int64)
    if count and (positions.max() >= points or len(set(positions.tolist())) != count):
        raise InvalidMessageError("the aligned row list names unknown or repeated positions")
    return positions


# --- helpers of both protocols ------------------------------------------------------------


def roles_of(spec: JobSpec) -> tuple[str, list[str]]:
    """The label holder's name and the feature holders' names in spec order."""
    (bank,) = (p.party for p in spec.participants if p.role == LABEL_HOLDER)
    return bank, [p.party for p in spec.participants if p.role == FEATURE_HOLDER]


def numeric_features(table: Table, exclude: set[str]) -> tuple[list[str], list[str]]:
    """The numeric columns of ``table`` (every value parses as a finite float) and the others."""
    numeric: list[str] = []
    skipped: list[str] = []
    for name in table.columns:
        if name in exclude:
            continue
        try:
            values = table.numeric(name)
        except DatasetError:
            skipped.append(name)
            continue
        (numeric if np.isfinite(values).all() else skipped).append(name)
    return numeric, skipped


def feature_matrix(table: Table, names: list[str], rows: list[int]) -> npt.NDArray[np.float64]:
    """The named numeric columns at ``rows`` as a rows × columns float array."""
    if not names:
        return np.zeros((len(rows), 0))
    return np.column_stack([table.numeric(n)[rows] for n in names])


def label_vector(table: Table, column: str, rows: list[int]) -> npt.NDArray[np.float64]:
    """The 0/1 labels at ``rows``.

    Raises:
        DatasetError: If a label is not 0 or 1.
    """
    y = table.numeric(column)[rows]
    if not np.isin(y, (0.0, 1.0)).all():
        raise DatasetError(f"the label column {column!r} must hold only 0 and 1")
    return y


def max_ciphertexts_per_message(key: he.HePublicKey) -> int:
    """How many ciphertexts fit one message below 2 MiB."""
    return max(1, (MAX_MESSAGE_BYTES - 64) // key.ciphertext_bytes)


def vector_chunks(vector: he.HeVector, source: he.HeEncryptor) -> list[bytes]:
    """An encrypted vector as the payloads of :func:`send_chunks`, each below 2 MiB.

    Each export of a computed vector re-randomises it with ``source`` (an evaluator's: its own
    full randomness), so a role that must re-send the same bytes after a restart saves these
    payloads before sending them.
    """
    per = max_ciphertexts_per_message(vector.public_key)
    return [part.to_bytes(source) for part in vector.split(per)]


def send_chunks(ctx: JobContext, to: str, tag: str, chunks: list[bytes]) -> None:
    """Send payloads as ``tag/0``, ``tag/1``, ... (what :func:`recv_vector` reads)."""
    for i, chunk in enumerate(chunks):
        ctx.send(to, f"{tag}/{i}", chunk)


def send_vector(
    ctx: JobContext, to: str, tag: str, vector: he.HeVector, source: he.HeEncryptor
) -> None:
    """Send an encrypted vector in chunks below 2 MiB (``tag/0``, ``tag/1``, ...)."""
    send_chunks(ctx, to, tag, vector_chunks(vector, source))


def aligned_once(ctx: JobContext, align: Callable[[], Alignment]) -> Alignment:
    """Run ``align``, or restore the alignment an earlier run of this job saved.

    The alignment is saved once it is complete, so a resumed role goes straight to the
    phase after it (a restart in the middle of the alignment itself runs it again).
    """
    saved = ctx.load_state("align")
    if saved is not None:
        doc = json.loads(saved)
        return Alignment([int(r) for r in doc["rows"]], int(doc["own_set_size"]))
    alignment = align()
    state = {"rows": alignment.rows, "own_set_size": alignment.own_set_size}
    ctx.save_state("align", json.dumps(state).encode())
    return alignment


_STATE = struct.Struct(">I")


def pack_state(doc: dict[str, Any], blobs: list[bytes]) -> bytes:
    """A role's resume state: a JSON document and binary blobs (for ``ctx.save_state``)."""
    head = json.dumps(doc).encode()
    parts = [_STATE.pack(len(head)), head, _STATE.pack(len(blobs))]
    for blob in blobs:
        parts += [_STATE.pack(len(blob)), blob]
    return b"".join(parts)


def unpack_state(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """The document and blobs of :func:`pack_state` (resume states are authenticated at rest)."""
    view = memoryview(data)
    (n,) = _STATE.unpack_from(view)
    doc = json.loads(bytes(view[4 : 4 + n]))
    at = 4 + n
    (count,) = _STATE.unpack_from(view, at)
    at += 4
    blobs: list[bytes] = []
    for _ in range(count):
        (size,) = _STATE.unpack_from(view, at)
        blobs.append(bytes(view[at + 4 : at + 4 + size]))
        at += 4 + size
    if at != len(data) or not isinstance(doc, dict):
        raise ValueError("a malformed resume state")
    return doc, blobs


def recv_vector(
    ctx: JobContext, frm: str, tag: str, key: he.HePublicKey, count: int, frac_bits: int
) -> he.HeVector:
    """Receive and validate a vector of exactly ``count`` ciphertexts sent by :func:`send_vector`.

    Every ciphertext goes through the engine's validation (key id, exponent, and each one a unit
    below the modulus: ``gcd(c, N) = 1``).

    Raises:
        InvalidMessageError: If a chunk has the wrong number of ciphertexts.
        InvalidCiphertextError: If a ciphertext fails the engine's validation.
    """
    per = max_ciphertexts_per_message(key)
    parts: list[he.HeVector] = []
    for i, start in enumerate(range(0, max(1, count), per)):
        want = min(per, count - start)
        part = key.vector_from_bytes(
            ctx.recv(frm, f"{tag}/{i}"), frac_bits=frac_bits, max_count=want
        )
        if len(part) != want:
            raise InvalidMessageError(f"expected {want} ciphertexts in {tag}/{i}, got {len(part)}")
        parts.append(part)
    return parts[0].extended(parts[1:])


def encode_meta(doc: dict[str, Any]) -> bytes:
    """A small metadata message: magic ``b"BWOE"``, version 1, then canonical UTF-8 JSON."""
    return _META.pack(canonical_json(doc))


def decode_meta(payload: bytes, limit: int = 1 << 20) -> dict[str, Any]:
    """Parse :func:`encode_meta`'s message.

    Raises:
        InvalidMessageError: If the envelope, the size or the JSON is wrong.
    """
    if len(payload) > limit:
        raise InvalidMessageError(f"a metadata message is over its limit of {limit} bytes")
    body = _META.split(payload, "a metadata message")
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InvalidMessageError("the metadata message is not valid JSON") from None
    if not isinstance(doc, dict):
        raise InvalidMessageError("the metadata message is not a JSON object")
    return doc


class PaillierParams(ProtocolParams):
    """The parameter every Paillier-based vertical protocol takes."""

    key_bits: int = Field(
        default=2048,
        ge=256,
        le=8192,
        description="size of the label holder's Paillier modulus, in bits",
    )


# --- the job spec ---------------------------------------------------------------------------

#: The label holder of ``woe_iv`` and ``vertical_lr``: the bank, binding ``id`` and ``label``.
LABEL_HOLDER_NEEDS = RoleRequirement(
    columns=(ID_COLUMN, LABEL_COLUMN), who="the bank: the 0/1 labels and the Paillier key"
)
#: A feature holder of ``woe_iv`` and ``vertical_lr``: a provider of features, binding ``id``.
FEATURE_HOLDER_NEEDS = RoleRequirement(
    min=1, max=None, columns=(ID_COLUMN,), who="a provider of features"
)
