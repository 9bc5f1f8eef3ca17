"""Joint WOE/IV screening, and the alignment stage that ``woe_iv`` and ``vertical_lr`` share.

Roles: one ``label_holder`` (the bank: labels, the Paillier key) and one or more
``feature_holder`` (tax bureau, business registry). Each binds the logical column ``id`` to its
company-id column; the label holder also binds ``label`` to its 0/1 label column. A feature
holder's features are every numeric column of its dataset but the id; each is binned by quantiles
of its own values on the aligned rows. ``docs/protocols/woe-iv.md`` has the messages, sizes and
what each role learns. In short:

1. **Align** (:func:`align_label_holder` / :func:`align_feature_holder`): ECDH-PSI (the kernels of
   ``compute.psi``) between the label holder and each feature holder, in which only the label
   holder learns the pairwise intersection; it then tells each feature holder the positions of
   the final common rows (present at every party) among the points that feature holder sent, in
   the agreed order (ascending company id). Feature holders learn which of their own ids are in
   the common set, nothing about other ids.
2. ``woe/key``: the label holder's Paillier public key; ``woe/labels/<i>``: the encrypted 0/1
   labels of the common rows, in chunks below 2 MiB.
3. ``woe/meta``: each feature holder's feature names, bins per feature and rows per bin;
   ``woe/events``: the encrypted event count of every (feature, bin), an encrypted
   matrix-vector product of its bin indicators with the encrypted labels, squeezed (packed)
   and re-randomised.

The label holder decrypts the event counts and computes WOE and IV (``compute.learn.woe_iv``);
it never sees a feature value, an edge or which row fell in which bin.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from compute import paillier as pl
from compute.encoding import squeeze_layout
from compute.errors import InvalidMessageError, SetTooLargeError
from compute.learn.woe_iv import (
    MAX_BINS,
    assign_bins,
    bin_indicator_rows,
    merge_small_bins,
    quantile_edges,
    woe_iv,
)
from compute.psi import (
    MAX_CHUNK_POINTS,
    Disclosure,
    SetHeader,
    blind,
    create_blinding_key,
    decode_header,
    encode_header,
    hash_to_points,
    sorted_order,
    validate_points,
)
from parties.data import DatasetError, Table
from parties.jobs import InvalidJobSpecError, JobContext, JobSpec, ProtocolDef, Result

LABEL_HOLDER = "label_holder"
FEATURE_HOLDER = "feature_holder"
ID_COLUMN = "id"
LABEL_COLUMN = "label"
#: Node policy limit on the ids a party aligns (shared with PSI).
LIMIT_MAX_SET_SIZE = "psi_max_set_size"
#: Largest wire message this protocol sends (2 MiB, as PSI).
MAX_MESSAGE_BYTES = 2 << 20
#: Most features a feature holder may bring.
MAX_FEATURES = 4096

_ROWS = struct.Struct(">4sBI")
_ROWS_MAGIC = b"BVAL"
_META_MAGIC = b"BWOE"
_WIRE_VERSION = 1


# --- alignment ------------------------------------------------------------------------------


def _own_ids(table: Table, column: str) -> tuple[list[bytes], list[int]]:
    """Distinct non-blank ids (as ``compute.psi.normalise_ids``) and the table row of each."""
    first: dict[bytes, int] = {}
    for row, value in enumerate(table.column(column)):
        item = value.strip().encode("utf-8")
        if item and item not in first:
            first[item] = row
    return list(first), list(first.values())


def _check_cap(ctx: JobContext, size: int, who: str) -> int:
    cap = ctx.limit(LIMIT_MAX_SET_SIZE)
    if size > cap:
        raise SetTooLargeError(
            f"{who} holds {size:,} distinct ids, over this node's cap {LIMIT_MAX_SET_SIZE} = "
            f"{cap:,}; raise {LIMIT_MAX_SET_SIZE} in this node's policy or use a smaller set"
        )
    return cap


def _exchange_headers(ctx: JobContext, peer: str, size: int, cap: int) -> SetHeader:
    ctx.send(
        peer,
        "align/header",
        encode_header(SetHeader(Disclosure.INTERSECTION, size, cap, MAX_CHUNK_POINTS)),
    )
    header = decode_header(ctx.recv(peer, "align/header"))
    if header.mode is not Disclosure.INTERSECTION:
        raise InvalidMessageError(f"{peer} runs the alignment in another mode")
    _check_cap(ctx, header.set_size, peer)
    if size > header.max_peer_set_size:
        raise SetTooLargeError(
            f"{peer}'s node accepts at most {header.max_peer_set_size:,} ids and this party's set "
            f"has {size:,}; ask {peer} to raise its {LIMIT_MAX_SET_SIZE}"
        )
    return header


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


def align_label_holder(ctx: JobContext, providers: list[str]) -> Alignment:
    """The label holder's side of the alignment with every feature holder.

    Runs ECDH-PSI with each feature holder in turn (a fresh blinding key for each), learns the
    pairwise intersections, and sends each feature holder its positions of the final common rows
    (``align/rows``), ordered by ascending company id.

    Raises:
        SetTooLargeError: If a set is over a node's ``psi_max_set_size``.
        InvalidPointError: If a peer's points fail validation.
    """
    column = ctx.spec.participant(ctx.party).columns[ID_COLUMN]
    items, item_rows = _own_ids(ctx.table(), column)
    cap = _check_cap(ctx, len(items), "this party")
    context = _context(ctx)
    hashed = hash_to_points(items, context)
    # For each provider: our item index -> that provider's sent position.
    matches: list[dict[int, int]] = []
    for peer in providers:
        header = _exchange_headers(ctx, peer, len(items), cap)
        key = create_blinding_key()
        blinded = blind(hashed, key)
        order = sorted_order(blinded)
        peer_points = _recv_points(ctx, peer, "align/blinded", header)
        _send_points(ctx, peer, "align/blinded", [blinded[j] for j in order])
        own_header = SetHeader(Disclosure.INTERSECTION, len(items), cap, MAX_CHUNK_POINTS)
        own_double = _recv_points(ctx, peer, "align/double", own_header, compared_only=True)
        peer_double = {value: j for j, value in enumerate(blind(peer_points, key))}
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
        positions = [found[i] for i in common]
        body = _ROWS.pack(_ROWS_MAGIC, _WIRE_VERSION, len(positions))
        ctx.send(peer, "align/rows", body + np.asarray(positions, dtype=">u4").tobytes())
    return Alignment([item_rows[i] for i in common], len(items))


def align_feature_holder(ctx: JobContext, label_holder: str) -> Alignment:
    """A feature holder's side of the alignment: it learns only its rows of the common set.

    Raises:
        SetTooLargeError: If a set is over a node's ``psi_max_set_size``.
        InvalidPointError: If the label holder's points fail validation.
        InvalidMessageError: If the row list is malformed.
    """
    column = ctx.spec.participant(ctx.party).columns[ID_COLUMN]
    items, item_rows = _own_ids(ctx.table(), column)
    cap = _check_cap(ctx, len(items), "this party")
    header = _exchange_headers(ctx, label_holder, len(items), cap)
    key = create_blinding_key()
    blinded = blind(hash_to_points(items, _context(ctx)), key)
    order = sorted_order(blinded)
    _send_points(ctx, label_holder, "align/blinded", [blinded[j] for j in order])
    bank_points = _recv_points(ctx, label_holder, "align/blinded", header)
    double = blind(bank_points, key)
    _send_points(ctx, label_holder, "align/double", double)
    payload = ctx.recv(label_holder, "align/rows")
    if len(payload) < _ROWS.size:
        raise InvalidMessageError("the aligned row list is too short")
    magic, version, count = _ROWS.unpack_from(payload)
    if magic != _ROWS_MAGIC or version != _WIRE_VERSION:
        raise InvalidMessageError("not a version-1 aligned row list: upgrade the older node")
    if len(payload) != _ROWS.size + 4 * count or count > len(items):
        raise InvalidMessageError("the aligned row list has the wrong length")
    positions = np.frombuffer(payload, dtype=">u4", offset=_ROWS.size).astype(np.int64)
    if count and (positions.max() >= len(items) or len(set(positions.tolist())) != count):
        raise InvalidMessageError("the aligned row list names unknown or repeated positions")
    return Alignment([item_rows[order[int(p)]] for p in positions], len(items))


# --- helpers shared with vertical_lr ----------------------------------------------------------


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


def max_ciphertexts_per_message(key: pl.PublicKey) -> int:
    """How many ciphertexts fit one message below 2 MiB."""
    return max(1, (MAX_MESSAGE_BYTES - 64) // (2 * ((key.bits + 7) // 8)))


def send_vector(
    ctx: JobContext, to: str, tag: str, vector: pl.EncryptedVector, source: pl.RandomnessSource
) -> None:
    """Send an encrypted vector in chunks below 2 MiB (``tag/0``, ``tag/1``, ...)."""
    per = max_ciphertexts_per_message(vector.public_key)
    for i, start in enumerate(range(0, max(1, len(vector)), per)):
        part = pl.EncryptedVector(
            vector.public_key,
            vector.ciphertexts[start : start + per],
            vector.frac_bits,
            vector.fresh,
        )
        ctx.send(to, f"{tag}/{i}", part.to_bytes(source))


def recv_vector(
    ctx: JobContext, frm: str, tag: str, key: pl.PublicKey, count: int, frac_bits: int
) -> pl.EncryptedVector:
    """Receive and validate a vector of exactly ``count`` ciphertexts sent by :func:`send_vector`.

    Raises:
        InvalidMessageError: If a chunk has the wrong number of ciphertexts.
        InvalidCiphertextError: If a ciphertext fails the engine's validation.
    """
    per = max_ciphertexts_per_message(key)
    cts: list[Any] = []
    for i, start in enumerate(range(0, max(1, count), per)):
        want = min(per, count - start)
        part = pl.EncryptedVector.from_bytes(
            key, ctx.recv(frm, f"{tag}/{i}"), frac_bits=frac_bits, max_count=want
        )
        if len(part) != want:
            raise InvalidMessageError(f"expected {want} ciphertexts in {tag}/{i}, got {len(part)}")
        cts += part.ciphertexts
    return pl.EncryptedVector(key, tuple(cts), frac_bits)


def encode_meta(doc: dict[str, Any]) -> bytes:
    """A small metadata message: magic ``b"BWOE"``, version 1, then canonical UTF-8 JSON."""
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return _META_MAGIC + bytes([_WIRE_VERSION]) + body


def decode_meta(payload: bytes, limit: int = 1 << 20) -> dict[str, Any]:
    """Parse :func:`encode_meta`'s message.

    Raises:
        InvalidMessageError: If the envelope, the size or the JSON is wrong.
    """
    if len(payload) > limit or payload[:4] != _META_MAGIC or payload[4:5] != b"\x01":
        raise InvalidMessageError("not a version-1 metadata message: upgrade the older node")
    try:
        doc = json.loads(payload[5:].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidMessageError("the metadata message is not valid JSON") from None
    if not isinstance(doc, dict):
        raise InvalidMessageError("the metadata message is not a JSON object")
    return doc


def png(figure: Any) -> bytes:
    """Render a matplotlib ``Figure`` to PNG bytes (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=100)
    return out.getvalue()


def key_bits_param(spec: JobSpec) -> int:
    """The job's Paillier modulus size (``key_bits``, default 2048)."""
    return int(spec.params.get("key_bits", 2048) or 2048)


# --- WOE / IV -------------------------------------------------------------------------------


def run_label_holder(ctx: JobContext) -> Result | None:
    """The bank's side: align, send encrypted labels, turn encrypted bin counts into WOE/IV.

    Raises:
        SetTooLargeError: If a set is over a node's cap.
        InvalidMessageError: If a feature holder's message is malformed.
        InvalidCiphertextError: If a ciphertext fails validation.
    """
    spec = ctx.spec
    _, providers = roles_of(spec)
    me = spec.participant(ctx.party)
    alignment = align_label_holder(ctx, providers)
    y = label_vector(ctx.table(), me.columns[LABEL_COLUMN], alignment.rows)
    n = len(y)
    public, private = pl.generate_keypair(key_bits_param(spec))
    source = pl.Encryptor(private)
    labels = pl.encrypt(source, y.astype(np.int64).tolist())
    for peer in providers:
        ctx.send(peer, "woe/key", public.to_bytes())
        send_vector(ctx, peer, "woe/labels", labels, source)
    report: dict[str, dict[str, Any]] = {}
    summary: dict[str, str | int | float | bool | None] = {
        "aligned_rows": n,
        "events": int(y.sum()),
    }
    for peer in providers:
        meta = decode_meta(ctx.recv(peer, "woe/meta"))
        names, bin_rows = _check_meta(meta, n)
        total_bins = sum(len(r) for r in bin_rows)
        width, per = _events_layout(n, public.bits)
        packed = pl.PackedVector.from_bytes(
            public,
            ctx.recv(peer, "woe/events"),
            slot_bits=width,
            slots=per,
            count=total_bins,
            bound=n,
        )
        events = pl.decrypt_packed(private, packed)
        at = 0
        for name, rows in zip(names, bin_rows, strict=True):
            counts = events[at : at + len(rows)]
            at += len(rows)
            if any(not 0 <= e <= r for e, r in zip(counts, rows, strict=True)):
                raise InvalidMessageError(f"{peer}'s event counts for {name!r} are impossible")
            stats = woe_iv(counts, rows)
            report[f"{peer}.{name}"] = {
                "party": peer,
                "feature": name,
                "iv": stats.iv,
                "woe": list(stats.woe),
                "rows": list(stats.rows),
                "events": list(stats.events),
            }
            summary[f"iv.{peer}.{name}"] = round(stats.iv, 6)
    ctx.record("woe_iv.finished", {"aligned_rows": n, "features": len(report)})
    if ctx.party not in spec.receivers:
        return None
    artifacts = {
        "woe_iv.json": json.dumps(report, indent=1, sort_keys=True).encode(),
        "iv.png": _iv_chart(report),
    }
    return Result(summary, artifacts)


def _events_layout(n: int, key_bits: int) -> tuple[int, int]:
    return squeeze_layout(max(1, n), key_bits)


def _check_meta(meta: dict[str, Any], n: int) -> tuple[list[str], list[list[int]]]:
    names, rows = meta.get("features"), meta.get("rows")
    if (
        not isinstance(names, list)
        or not isinstance(rows, list)
        or len(names) != len(rows)
        or len(names) > MAX_FEATURES
        or not all(isinstance(x, str) and 0 < len(x) <= 128 for x in names)
    ):
        raise InvalidMessageError("the WOE metadata must list feature names and rows per bin")
    for r in rows:
        if (
            not isinstance(r, list)
            or not 1 <= len(r) <= MAX_BINS
            or not all(isinstance(v, int) and v >= 0 for v in r)
            or sum(r) != n
        ):
            raise InvalidMessageError("each feature's rows per bin must add up to the aligned rows")
    return names, rows


def run_feature_holder(ctx: JobContext) -> Result | None:
    """A feature holder's side: align, bin its features, sum encrypted labels per bin.

    Raises:
        InvalidKeyError: If the label holder's key fails validation.
        InvalidCiphertextError: If a ciphertext fails validation.
    """
    spec = ctx.spec
    bank, _ = roles_of(spec)
    me = spec.participant(ctx.party)
    alignment = align_feature_holder(ctx, bank)
    n = len(alignment.rows)
    public = pl.PublicKey.from_bytes(ctx.recv(bank, "woe/key"))
    labels = recv_vector(ctx, bank, "woe/labels", public, n, 0)
    table = ctx.table()
    names, _ = numeric_features(table, {me.columns[ID_COLUMN]})
    if len(names) > MAX_FEATURES:
        raise InvalidJobSpecError(f"at most {MAX_FEATURES} features per party")
    x = feature_matrix(table, names, alignment.rows)
    bins = int(spec.params.get("bins", 10) or 10)
    min_rows = int(spec.params.get("min_bin_rows", 5) or 5)
    indicator: list[npt.NDArray[np.int64]] = []
    rows_per_bin: list[list[int]] = []
    edges_out: dict[str, list[float]] = {}
    for j, name in enumerate(names):
        column = x[:, j]
        edges = quantile_edges(column, bins) if n else np.zeros(0)
        edges = merge_small_bins(assign_bins(column, edges), edges, min_rows) if n else edges
        assigned = assign_bins(column, edges)
        count = len(edges) + 1
        indicator += bin_indicator_rows(assigned, count)
        rows_per_bin.append(np.bincount(assigned, minlength=count).tolist())
        edges_out[name] = edges.tolist()
    ctx.send(bank, "woe/meta", encode_meta({"features": names, "rows": rows_per_bin}))
    events = pl.matvec(indicator, labels) if indicator else pl.EncryptedVector(public, ())
    packed = events.squeeze(max(1, n))
    ctx.send(bank, "woe/events", packed.to_bytes(pl.Encryptor(public)))
    ctx.record("woe_iv.finished", {"aligned_rows": n, "features": len(names)})
    if ctx.party not in spec.receivers:
        return None
    summary: dict[str, str | int | float | bool | None] = {
        "aligned_rows": n,
        "features": len(names),
    }
    return Result(summary, {"bins.json": json.dumps(edges_out, indent=1).encode()})


def _iv_chart(report: dict[str, dict[str, Any]]) -> bytes:
    from matplotlib.figure import Figure

    items = sorted(report.values(), key=lambda r: r["iv"])
    fig = Figure(figsize=(7, 0.3 * len(items) + 1.5))
    ax = fig.add_subplot()
    ax.barh([f"{r['party']}: {r['feature']}" for r in items], [r["iv"] for r in items])
    for level in (0.02, 0.1, 0.3):
        ax.axvline(level, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("information value (dotted: 0.02 weak, 0.1 medium, 0.3 strong)")
    ax.set_title("Joint feature screening: IV against the bank's default label")
    fig.tight_layout()
    return png(fig)


# --- the job spec ---------------------------------------------------------------------------

_PARAMS: dict[str, tuple[type, float, float]] = {
    "bins": (int, 2, MAX_BINS),
    "min_bin_rows": (int, 1, 1_000_000),
    "key_bits": (int, 256, 8192),
}


def validate_roles(spec: JobSpec, name: str) -> None:
    """One label holder with ``id`` and ``label`` bound, and at least one feature holder.

    Raises:
        InvalidJobSpecError: Naming the participant or binding to fix.
    """
    labels = [p for p in spec.participants if p.role == LABEL_HOLDER]
    features = [p for p in spec.participants if p.role == FEATURE_HOLDER]
    if len(labels) != 1 or not features or len(labels) + len(features) != len(spec.participants):
        raise InvalidJobSpecError(
            f"{name} needs exactly one {LABEL_HOLDER!r} and at least one {FEATURE_HOLDER!r}, and "
            "no other role"
        )
    for p in spec.participants:
        needed = [ID_COLUMN] + ([LABEL_COLUMN] if p.role == LABEL_HOLDER else [])
        if p.dataset is None or any(c not in p.columns for c in needed):
            raise InvalidJobSpecError(
                f"participant {p.party!r} must name a dataset and bind the logical columns "
                f"{needed} (columns={{'{ID_COLUMN}': ...}})"
            )


def validate_params(spec: JobSpec, allowed: dict[str, tuple[type, float, float]]) -> None:
    """Every parameter known, of its type and within its range.

    Raises:
        InvalidJobSpecError: Naming the parameter to fix.
    """
    for key, value in spec.params.items():
        if key not in allowed:
            raise InvalidJobSpecError(f"unknown parameter {key!r}; known: {sorted(allowed)}")
        kind, low, high = allowed[key]
        ok_type = isinstance(value, int | float) and not isinstance(value, bool)
        if kind is int:
            ok_type = isinstance(value, int) and not isinstance(value, bool)
        if not ok_type or not low <= float(value) <= high:  # type: ignore[arg-type]
            raise InvalidJobSpecError(
                f"parameter {key!r} must be a{'n integer' if kind is int else ' number'} in "
                f"[{low}, {high}]; got {value!r}"
            )


def validate(spec: JobSpec) -> None:
    """Check that ``spec`` is a runnable ``woe_iv`` job.

    Raises:
        InvalidJobSpecError: Naming the field to fix.
    """
    validate_roles(spec, "woe_iv")
    validate_params(spec, _PARAMS)


def outputs(spec: JobSpec) -> frozenset[str]:
    """What the job releases: a screening model summary (``policy.OUTPUTS``)."""
    return frozenset({"model"})


def learns(spec: JobSpec) -> dict[str, str]:
    """What each party learns, as ``docs/protocols/woe-iv.md`` states it."""
    bank, providers = roles_of(spec)
    out = {
        bank: (
            "which of its ids each feature holder also holds (pairwise intersections) and their "
            "set sizes; per feature of each feature holder: its name, rows and events per "
            "quantile bin, hence WOE per bin and IV; never a feature value, bin edge or which "
            "row fell in which bin"
        )
    }
    for p in providers:
        out[p] = (
            f"which of its own ids are in the common set of {bank} and every feature holder, "
            f"and the size of {bank}'s set; nothing about labels (they arrive encrypted)"
        )
    return out


#: The protocol as registered in ``parties.protocols.PROTOCOLS``.
DEFINITION = ProtocolDef(
    name="woe_iv",
    version="1",
    roles={LABEL_HOLDER: run_label_holder, FEATURE_HOLDER: run_feature_holder},
    validate=validate,
    outputs=outputs,
    learns=learns,
    description="joint WOE/IV screening: encrypted labels summed per bin of each provider feature",
)
