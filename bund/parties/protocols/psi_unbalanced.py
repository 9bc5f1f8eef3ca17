"""Unbalanced and labeled PSI: a large holder's set, precomputed once, queried by a small party.

Two roles: the ``holder`` (a registry or tax bureau with 10^7-10^9 ids) and the ``querier``
(a bank with a few thousand applicants), the only receiver. Two phases, each a job
(``params.phase``); the maths is in ``bund.compute.psi_oprf`` and ``bund.compute.psi_filters``:

``setup`` (offline, once per querier and dataset version). The holder draws a fresh scalar
``k`` for this querier, computes ``F_k(y)`` for every id it holds, builds a binary fuse filter
of their 64-bit match keys, and, when the spec binds payload columns (labeled PSI), seals each
record's payload under a key derived from ``F_k(y)``. It ships the filter and the label table
once; the querier keeps them as its result of the setup job. The holder keeps ``k`` sealed in
its state directory (``JobContext.save_kept``) with the dataset version it was computed on, a
key version and the setup's id: the filter outlives the job at the querier, the key at the
holder, and neither leaves its owner. A later setup for the same querier and dataset draws a
new key (the next key version), which retires the earlier filter.

``query`` (online, as often as the holder's policy allows). The querier names its setup job,
sends its ids blinded (``r·H(x)``, sorted), the holder answers ``k·r·H(x)`` in order, and the
querier unblinds, tests each ``F_k(x)`` against its filter and opens the labels of its
matches. The holder never learns the result; each query costs work proportional to the
query. Every answer is one dictionary test against the filter, so the holder caps the number
of ids each querier may ever query against one setup (``[limits] psi_unbalanced_max_queries``)
and records each query job's count before it answers.

Messages (``docs/protocols/psi_unbalanced.md`` has the layouts):

- setup, holder to querier: ``psi_u/tick/<i>`` (one byte, every few chunks of work, so the
  querier's wait stays short), ``psi_u/setup`` (header: key version, dataset version, key count,
  shard bits, label width, byte counts), ``psi_u/filter/<i>`` and ``psi_u/labels/<i>`` (the
  filter's shards and the label table, in parts of at most 2 MiB).
- query, querier to holder: ``psi_u/query`` (the setup job, the key version, the number of
  ids ``q``), ``psi_u/points/<i>``; holder to querier: ``psi_u/answers/<i>``.

Why the filter stays with the querier (as its own prior result) and not in the holder's state
directory: the querier tests it locally, so it must hold it anyway, and a holder that kept it
would gain nothing but gigabytes at 10^9 ids. What the holder keeps is the one thing that must
never leave it, the key, sealed like resume states, plus the running count of queries.
"""

from __future__ import annotations

import itertools
import json
import re
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from bund.compute.errors import InvalidMessageError, SetTooLargeError
from bund.compute.layout import Header
from bund.compute.psi import (
    MAX_CHUNK_POINTS,
    POINT_SIZE,
    BlindingKey,
    blind_array,
    create_blinding_key,
    hash_and_blind_array,
    normalise_ids,
    validate_point_array,
)
from bund.compute.psi_filters import FuseFilter, ShardedFilter, parse_shards, shard_bits, shard_of
from bund.compute.psi_oprf import (
    LOCATOR_SIZE,
    MAX_LABEL_WIDTH,
    SEAL_OVERHEAD,
    HolderBatch,
    LabelTable,
    QueryBlinding,
    create_query_blinding,
    encode_label,
    evaluate_holder_set,
    match_keys,
    open_labels,
    setup_context,
    unblind_outputs,
)
from bund.parties.durable import replace_file
from bund.parties.jobs import (
    InvalidJobSpecError,
    JobContext,
    JobSpec,
    PriorResultError,
    ProtocolDef,
    ProtocolParams,
    Result,
    RoleRequirement,
    is_job_id,
)
from bund.parties.policy import PAYLOAD_PREFIX, PolicyRefusedError
from bund.parties.protocols.buckets import Buckets, ahead, rechunk
from bund.parties.protocols.psi import LIMIT_MAX_SET_SIZE, check_own_set
from bund.parties.transport import MessagePlan

HOLDER = "holder"
QUERIER = "querier"
ID_COLUMN = "id"
#: The node policy limit on the ids one querier may query against one setup, in all.
LIMIT_MAX_QUERIES = "psi_unbalanced_max_queries"
#: Bytes of one part of the filter or label stream.
PART_BYTES = 2 << 20
#: Ids per checkpointed chunk of the holder's precomputation (about half a second of work).
SETUP_CHUNK_ROWS = 16_384
#: The holder sends the querier a tick after this many chunks of work and after each shard, so
#: that the querier's wait for the next message stays short however long the setup takes.
TICK_CHUNKS = 8

_TAG_SETUP = "psi_u/setup"
_TAG_QUERY = "psi_u/query"
_SETUP = Header(b"BPSU", 1, reserved=3)
_SETUP_FIELDS = struct.Struct(">QQIIQQ32s")  # key version, keys, shard bits, width, bytes x2, ver
_QUERY = Header(b"BPSQ", 1, reserved=3)
_QUERY_FIELDS = struct.Struct(">16sQQ")  # setup job, key version, ids
_PROGRESS = "psi_u.progress"
#: One query at a time per holder updates a querier's kept record (read, add, save).
_KEPT_LOCK = threading.Lock()


class QueryLimitError(PolicyRefusedError):
    """A querier asked for more evaluations than the holder's policy leaves it."""


class StaleSetupError(PolicyRefusedError):
    """A query names a setup that the holder no longer serves (new key, or changed dataset)."""


class PsiUnbalancedParams(ProtocolParams):
    """The parameters of an unbalanced PSI job."""

    phase: Literal["setup", "query"] = Field(
        description="'setup' ships the holder's precomputed filter (and labels) to the querier; "
        "'query' tests the querier's ids against the filter of an earlier setup"
    )
    setup_job: str | None = Field(
        default=None,
        description="the id of the setup job whose filter a query uses (query phase only)",
    )


@dataclass(frozen=True)
class _Roles:
    holder: str
    querier: str


def _roles(spec: JobSpec) -> _Roles:
    holder = next(p.party for p in spec.participants if p.role == HOLDER)
    querier = next(p.party for p in spec.participants if p.role == QUERIER)
    return _Roles(holder, querier)


def payload_columns(spec: JobSpec) -> dict[str, str]:
    """The holder's payload columns: logical name (after ``payload.``) -> its column, sorted."""
    holder = next(p for p in spec.participants if p.role == HOLDER)
    return {
        logical.removeprefix(PAYLOAD_PREFIX): column
        for logical, column in sorted(holder.columns.items())
        if logical.startswith(PAYLOAD_PREFIX)
    }


def _check(spec: JobSpec) -> None:
    params = PsiUnbalancedParams.of(spec)
    querier = next(p for p in spec.participants if p.role == QUERIER)
    if params.phase == "query":
        if params.setup_job is None:
            raise InvalidJobSpecError("a psi_unbalanced query needs the parameter setup_job")
        if not is_job_id(params.setup_job):
            raise InvalidJobSpecError(
                f"setup_job {params.setup_job!r} must be the id of the setup job (32 hex digits)"
            )
        if querier.dataset is None or ID_COLUMN not in querier.columns:
            raise InvalidJobSpecError(
                f"the querier {querier.party!r} of a query must name a dataset and bind the "
                f'logical column {ID_COLUMN!r} (columns = {{ id = "..." }})'
            )
    elif params.setup_job is not None or querier.dataset is not None:
        raise InvalidJobSpecError(
            "a psi_unbalanced setup takes no setup_job and no querier dataset: the querier "
            "brings its ids to the query jobs"
        )


def _kept_name(querier: str, dataset: str) -> str:
    return f"psi_u.{querier}.{dataset}"


# -- setup -------------------------------------------------------------------------------------


def run_holder(ctx: JobContext) -> None:
    """The holder's side of either phase (it never receives a result)."""
    if PsiUnbalancedParams.of(ctx.spec).phase == "setup":
        _holder_setup(ctx)
    else:
        _holder_query(ctx)


def run_querier(ctx: JobContext) -> Result:
    """The querier's side of either phase: the filter (setup) or the matches (query)."""
    if PsiUnbalancedParams.of(ctx.spec).phase == "setup":
        return _querier_setup(ctx)
    return _querier_query(ctx)


def _holder_setup(ctx: JobContext) -> None:
    """Evaluate the OPRF on every id (resumable chunk by chunk), build the filter, ship it."""
    spec, roles = ctx.spec, _roles(ctx.spec)
    me = spec.participant(ctx.party)
    assert me.dataset is not None
    table = ctx.table()
    id_column, labels = me.columns[ID_COLUMN], payload_columns(spec)
    rows = table.num_rows
    check_own_set(ctx, id_column, rows)
    version = table.content_hash()
    key = _setup_key(ctx)
    context = setup_context(bytes.fromhex(spec.digest()))
    scratch = ctx.scratch_dir()
    saved = ctx.load_state(_PROGRESS)
    progress: dict[str, Any] = json.loads(saved) if saved else {}
    bits = shard_bits(rows)
    ticks = _Ticks(ctx, roles.querier, -(-rows // SETUP_CHUNK_ROWS), bool(labels), 1 << bits)
    width = progress.get("width") or _label_width(table, list(labels.values()), ticks)
    keys = Buckets(np.dtype([("k", "<u8")]), 1 << bits, scratch, "keys")
    record = np.dtype([("loc", "<u8"), ("sealed", f"V{width + SEAL_OVERHEAD}")])
    table_rows = Buckets(record, 1 << bits, scratch, "labels")
    done = progress.get("chunks", 0)
    keys.truncate(progress.get("key_sizes") or [0] * keys.count)
    table_rows.truncate(progress.get("label_sizes") or [0] * table_rows.count)
    columns = [id_column, *labels.values()]
    evaluated, blanks = done * SETUP_CHUNK_ROWS, progress.get("blanks", 0)

    def evaluate(chunk: tuple[int, list[list[str]]]) -> tuple[int, HolderBatch]:
        """Normalise, encode and evaluate one chunk (in a thread, ahead of the one appended)."""
        values = chunk[1]
        ids = [v.strip().encode("utf-8") for v in values[0]]
        keep = [i for i, item in enumerate(ids) if item]
        payloads = (
            [encode_label([column[i] for column in values[1:]], width) for i in keep]
            if labels
            else None
        )
        items = [ids[i] for i in keep]
        return len(ids) - len(keep), evaluate_holder_set(
            items, context, key, payloads, ctx.executor
        )

    pending = itertools.islice(enumerate(table.iter_columns(columns, SETUP_CHUNK_ROWS)), done, None)
    for (index, values), (blank, batch) in ahead(pending, evaluate):
        blanks += blank
        chunk_keys = np.frombuffer(batch.keys, dtype="<u8").astype(np.uint64)
        keys.append(shard_of(chunk_keys, bits), chunk_keys.view(keys.dtype))
        if labels:
            locs = np.frombuffer(batch.locators, dtype="<u8").astype(np.uint64)
            entries = np.empty(len(locs), dtype=record)
            entries["loc"] = locs
            entries["sealed"] = np.frombuffer(batch.sealed, dtype=record["sealed"])
            table_rows.append(shard_of(locs, bits), entries)
        keys.sync()
        table_rows.sync()
        evaluated += len(values[0])
        ticks.after_chunk(ticks.evaluate_base, index)  # before the checkpoint: a redo re-sends it
        progress.update(
            chunks=index + 1,
            width=width,
            blanks=blanks,
            key_sizes=keys.sizes(),
            label_sizes=table_rows.sizes(),
        )
        ctx.save_state(_PROGRESS, json.dumps(progress, sort_keys=True).encode())
        ctx.progress("precompute", evaluated, rows)
    filter_bytes = _build_shards(ctx, keys, scratch, context, ticks)
    ticks.last()
    label_bytes = sum(table_rows.sizes()) * record.itemsize if labels else 0
    key_count = sum(FuseFilter.from_bytes(p.read_bytes()).keys for p in _shard_files(scratch, bits))
    key_version = _next_key_version(ctx, roles.querier, me.dataset)
    header = _SETUP_FIELDS.pack(
        key_version, key_count, bits, width if labels else 0, filter_bytes, label_bytes,
        bytes.fromhex(version),
    )  # fmt: skip
    ctx.send(roles.querier, _TAG_SETUP, _SETUP.pack(header))
    stream = (np.frombuffer(p.read_bytes(), dtype=np.uint8) for p in _shard_files(scratch, bits))
    for i, part in enumerate(rechunk(stream, PART_BYTES)):
        ctx.send(roles.querier, f"psi_u/filter/{i}", part.tobytes())
    if labels:
        sorted_rows = (r[np.argsort(r["loc"], kind="stable")].view(np.uint8) for r in table_rows)
        for i, part in enumerate(rechunk(sorted_rows, PART_BYTES)):
            ctx.send(roles.querier, f"psi_u/labels/{i}", part.tobytes())
    kept = {
        "key": key.export_for_resume().hex(),
        "key_version": key_version,
        "dataset_version": version,
        "setup_job": spec.job_id,
        "context": context.hex(),
        "queries": {},
    }
    with _KEPT_LOCK:
        ctx.save_kept(_kept_name(roles.querier, me.dataset), json.dumps(kept).encode())
    ctx.record(
        "psi_unbalanced.setup",
        {
            "querier": roles.querier,
            "dataset_version": version,
            "key_version": key_version,
            "keys": key_count,
            "blank_ids_skipped": blanks,
            "filter_bytes": filter_bytes,
            "label_bytes": label_bytes,
            "payload_columns": ",".join(labels.values()),
        },
    )


def _setup_key(ctx: JobContext) -> BlindingKey:
    """The setup's fresh scalar, saved before anything derived from it is sent."""
    saved = ctx.load_state("psi_u.key")
    if saved is not None:
        return BlindingKey.from_resume_state(saved)
    key = create_blinding_key()
    ctx.save_state("psi_u.key", key.export_for_resume())
    return key


def _next_key_version(ctx: JobContext, querier: str, dataset: str) -> int:
    """One more than the key version the holder kept for this querier and dataset (or 1).

    A resumed setup whose kept record is already its own keeps that version.
    """
    saved = ctx.load_kept(_kept_name(querier, dataset))
    if saved is None:
        return 1
    kept = json.loads(saved)
    if kept["setup_job"] == ctx.spec.job_id:
        return int(kept["key_version"])
    return int(kept["key_version"]) + 1


class _Ticks:
    """The holder's keep-alive messages ``psi_u/tick/<i>`` during a long setup.

    Their indices follow from the work done (the width pass, the evaluation chunks, the shards),
    never from a clock, so a resumed holder that sends one again sends it byte-identical (a
    replay); the last tick says so (payload ``1``) and the setup header follows it.
    """

    def __init__(self, ctx: JobContext, querier: str, chunks: int, labeled: bool, shards: int):
        self._ctx, self._to = ctx, querier
        self.width_base = 0
        self.evaluate_base = chunks // TICK_CHUNKS if labeled else 0
        self._shard_base = self.evaluate_base + chunks // TICK_CHUNKS
        self._last = self._shard_base + shards

    def _send(self, index: int, last: bool = False) -> None:
        self._ctx.send(self._to, f"psi_u/tick/{index}", b"\x01" if last else b"\x00")

    def after_chunk(self, base: int, chunk: int) -> None:
        """Chunk ``chunk`` (0-based) of the phase at ``base`` is done: a tick every few."""
        if (chunk + 1) % TICK_CHUNKS == 0:
            self._send(base + chunk // TICK_CHUNKS)

    def after_shard(self, shard: int) -> None:
        """Shard ``shard`` is built (or was, before a restart: then this is a replay)."""
        self._send(self._shard_base + shard)

    def last(self) -> None:
        """The last tick: the setup header comes next."""
        self._send(self._last, last=True)


def _label_width(table: Any, columns: Sequence[str], ticks: _Ticks) -> int:
    """The padded width that fits every record's payload (a streamed pass over the columns)."""
    if not columns:
        return 0
    widest = 1
    for index, values in enumerate(table.iter_columns(list(columns), SETUP_CHUNK_ROWS)):
        for record in zip(*values, strict=True):
            widest = max(widest, sum(2 + len(v.encode("utf-8")) for v in record))
        ticks.after_chunk(ticks.width_base, index)
    if widest > MAX_LABEL_WIDTH:
        raise InvalidMessageError(
            f"a record's payload columns take {widest} bytes, over {MAX_LABEL_WIDTH}; bind fewer "
            "or narrower payload columns"
        )
    return widest


def _shard_files(scratch: Path, bits: int) -> list[Path]:
    return [scratch / f"filter.{i:05d}" for i in range(1 << bits)]


def _build_shards(
    ctx: JobContext, keys: Buckets, scratch: Path, context: bytes, ticks: _Ticks
) -> int:
    """Build each shard's filter once (a resumed setup keeps the shards it built); total bytes."""
    total = 0
    seed = int.from_bytes(context[:8], "little")
    for index, path in enumerate(_shard_files(scratch, (keys.count - 1).bit_length())):
        if not path.exists():
            shard = FuseFilter.build(keys.read(index)["k"], first_seed=seed)
            replace_file(path, shard.to_bytes())  # synced: a resumed setup trusts what exists
        total += path.stat().st_size
        ticks.after_shard(index)
        ctx.progress("filter", index + 1, keys.count)
    return total


def _querier_setup(ctx: JobContext) -> Result:
    """Receive and check the filter and labels; keep them as this job's result."""
    spec, roles = ctx.spec, _roles(ctx.spec)
    tick = 0
    while (beat := ctx.recv(roles.holder, f"psi_u/tick/{tick}")) != b"\x01":
        if beat != b"\x00":
            raise InvalidMessageError(f"{roles.holder} sent a malformed setup tick")
        tick += 1
    body = _SETUP.split(ctx.recv(roles.holder, _TAG_SETUP), "a PSI setup header")
    if len(body) != _SETUP_FIELDS.size:
        raise InvalidMessageError(f"a PSI setup header is {_SETUP.size + _SETUP_FIELDS.size} bytes")
    key_version, keys, bits, width, filter_bytes, label_bytes, version = _SETUP_FIELDS.unpack(body)
    cap = ctx.limit(LIMIT_MAX_SET_SIZE)
    if keys > cap:
        raise SetTooLargeError(
            f"{roles.holder} announced a filter of {keys:,} ids, over this node's cap "
            f"{LIMIT_MAX_SET_SIZE} = {cap:,}; raise it to accept the setup"
        )
    labels = payload_columns(spec)
    if bits > 16 or bool(width) != bool(labels) or width > MAX_LABEL_WIDTH:
        raise InvalidMessageError("the PSI setup header does not match the spec's payload columns")
    step = LOCATOR_SIZE + width + SEAL_OVERHEAD
    if filter_bytes > _max_filter_bytes(cap) or (labels and label_bytes % step):
        raise InvalidMessageError("the PSI setup header announces impossible sizes")
    data = _receive_stream(ctx, roles.holder, "psi_u/filter", filter_bytes)
    filters = parse_shards(data, bits)
    if filters.keys != keys:
        raise InvalidMessageError("the filter holds another number of ids than announced")
    artifacts = {f"filter-{i:05d}.bin": s.to_bytes() for i, s in enumerate(filters.shards)}
    context = setup_context(bytes.fromhex(spec.digest()))
    if labels:
        rows = _receive_stream(ctx, roles.holder, "psi_u/labels", label_bytes)
        LabelTable.from_rows(context, width, rows)  # refuses a malformed or unsorted table
        artifacts["labels.bin"] = rows
    summary: dict[str, str | int | float | bool | None] = {
        "phase": "setup",
        "holder": roles.holder,
        "dataset_version": version.hex(),
        "key_version": key_version,
        "keys": keys,
        "shard_bits": bits,
        "filter_bytes": filter_bytes,
        "filter_bytes_per_id": round(filter_bytes / max(keys, 1), 3),
        "label_width": width,
        "labels": label_bytes // step if labels else 0,
        "payload_columns": ",".join(labels),
        "context": context.hex(),
    }
    return Result(summary, artifacts)


def _max_filter_bytes(keys: int) -> int:
    """The most bytes a filter of up to ``keys`` ids can take, with every shard's overhead."""
    return 6 * keys + (1 << shard_bits(keys)) * (4096 + 64)


def _receive_stream(ctx: JobContext, sender: str, prefix: str, size: int) -> bytes:
    parts, received, index = [], 0, 0
    while received < size:
        part = ctx.recv(sender, f"{prefix}/{index}")
        if not part or len(part) > PART_BYTES or received + len(part) > size:
            raise InvalidMessageError(f"{sender} sent a part of {prefix} of the wrong size")
        parts.append(part)
        received += len(part)
        index += 1
        ctx.progress("receive", received, size)
    return b"".join(parts)


# -- query -------------------------------------------------------------------------------------


def _querier_query(ctx: JobContext) -> Result:
    """Blind our ids, have the holder evaluate them, unblind, test the filter, open labels."""
    spec, roles = ctx.spec, _roles(ctx.spec)
    params = PsiUnbalancedParams.of(spec)
    assert params.setup_job is not None
    setup = ctx.prior_result(params.setup_job, spec.protocol)
    if setup.summary.get("phase") != "setup" or setup.summary.get("holder") != roles.holder:
        raise PriorResultError(
            f"job {params.setup_job} is not a psi_unbalanced setup with {roles.holder}; name the "
            "setup job whose filter this query should use"
        )
    labels = payload_columns(spec)
    if str(setup.summary.get("payload_columns", "")) != ",".join(labels):
        raise InvalidJobSpecError(
            f"setup {params.setup_job} shipped the payload columns "
            f"{setup.summary.get('payload_columns')!r}; bind the same ones in the query"
        )
    bits = int(str(setup.summary["shard_bits"]))
    shards = tuple(
        FuseFilter.from_bytes(setup.artifacts[f"filter-{i:05d}.bin"]) for i in range(1 << bits)
    )
    filters = ShardedFilter(bits, shards)
    context = bytes.fromhex(str(setup.summary["context"]))
    column = spec.participant(ctx.party).columns[ID_COLUMN]
    ids = normalise_ids(ctx.table().column(column))
    blinding = _query_blinding(ctx)
    blinded = hash_and_blind_array(ids.items, context, blinding.blind, ctx.executor)
    order = np.argsort(blinded, kind="stable")
    header = _QUERY_FIELDS.pack(
        bytes.fromhex(params.setup_job), int(str(setup.summary["key_version"])), len(ids.items)
    )
    ctx.send(roles.holder, _TAG_QUERY, _QUERY.pack(header))
    sizes = _chunk_sizes(len(ids.items))
    for i, points in enumerate(rechunk([blinded[order]], MAX_CHUNK_POINTS)):
        ctx.send(roles.holder, f"psi_u/points/{i}", points.tobytes())
    answers = np.empty(len(ids.items), dtype=blinded.dtype)
    start = 0
    for i, count in enumerate(sizes):
        payload = ctx.recv(roles.holder, f"psi_u/answers/{i}")
        # Multiplied by our unblinding scalar next: every check, twist included.
        answers[order[start : start + count]] = validate_point_array(
            payload,
            count,
            compared_only=True,  # the twist is checked where they are multiplied
        )
        start += count
        ctx.progress("query", start, len(ids.items))
    outputs = unblind_outputs(ids.items, answers, blinding, context, ctx.executor)
    hit = filters.contains(match_keys(outputs)) if outputs else np.zeros(0, dtype=bool)
    matched = np.flatnonzero(hit).tolist()
    values: list[list[str] | None] = [None] * len(matched)
    if labels:
        width = int(str(setup.summary["label_width"]))
        table = LabelTable.from_rows(context, width, setup.artifacts["labels.bin"])
        values = open_labels([outputs[j] for j in matched], table, len(labels))
    rows = [
        [ids.items[j].decode("utf-8"), *(v if v is not None else [""] * len(labels))]
        for j, v in zip(matched, values, strict=True)
    ]
    summary: dict[str, str | int | float | bool | None] = {
        "phase": "query",
        "holder": roles.holder,
        "setup_job": params.setup_job,
        "queries": len(ids.items),
        "matches": len(matched),
        "labels_opened": sum(v is not None for v in values) if labels else 0,
    }
    return Result(summary, {"matches.csv": _csv(["id", *labels], rows)})


def _query_blinding(ctx: JobContext) -> QueryBlinding:
    saved = ctx.load_state("psi_u.blinding")
    if saved is not None:
        return QueryBlinding.from_resume_state(saved)
    blinding = create_query_blinding()
    ctx.save_state("psi_u.blinding", blinding.export_for_resume())
    return blinding


def _chunk_sizes(count: int) -> list[int]:
    full, rest = divmod(count, MAX_CHUNK_POINTS)
    return [MAX_CHUNK_POINTS] * full + ([rest] if rest else [])


def _holder_query(ctx: JobContext) -> None:
    """Check the query against the kept setup and the cap, record it, then answer it."""
    spec, roles = ctx.spec, _roles(ctx.spec)
    me = spec.participant(ctx.party)
    assert me.dataset is not None
    params = PsiUnbalancedParams.of(spec)
    body = _QUERY.split(ctx.recv(roles.querier, _TAG_QUERY), "a PSI query header")
    if len(body) != _QUERY_FIELDS.size:
        raise InvalidMessageError(f"a PSI query header is {_QUERY.size + _QUERY_FIELDS.size} bytes")
    setup_job, key_version, count = _QUERY_FIELDS.unpack(body)
    if setup_job.hex() != params.setup_job:
        raise InvalidMessageError(f"{roles.querier} names another setup than the spec's")
    key = _admit_query(ctx, roles.querier, me.dataset, key_version, count)
    last: bytes | None = None
    for i, size in enumerate(_chunk_sizes(count)):
        payload = ctx.recv(roles.querier, f"psi_u/points/{i}")
        points = validate_point_array(
            payload, size, ascending=True, ascending_after=last, compared_only=True
        )
        last = points[-1:].tobytes()
        answers = blind_array(points, key, ctx.executor, check_curve=True)  # twist checked there
        ctx.send(roles.querier, f"psi_u/answers/{i}", answers.tobytes())


def _admit_query(
    ctx: JobContext, querier: str, dataset: str, version: int, count: int
) -> BlindingKey:
    """The kept key of this querier's setup, once its count fits the cap and is recorded.

    The count is added to the kept record (write-ahead: before any answer leaves), once per
    job, so a resumed query is not counted twice; concurrent queries are serialised.

    Raises:
        StaleSetupError: No setup, another setup, another key version, or a changed dataset.
        QueryLimitError: The querier's queries would exceed ``psi_unbalanced_max_queries``.
    """
    params = PsiUnbalancedParams.of(ctx.spec)
    name = _kept_name(querier, dataset)
    current = ctx.table().content_hash()
    cap = ctx.limit(LIMIT_MAX_QUERIES)
    with _KEPT_LOCK:
        saved = ctx.load_kept(name)
        if saved is None:
            raise StaleSetupError(
                f"this node holds no psi_unbalanced setup of {dataset!r} for {querier}; run a "
                "setup job first"
            )
        kept = json.loads(saved)
        if kept["setup_job"] != params.setup_job or kept["key_version"] != version:
            raise StaleSetupError(
                f"setup {params.setup_job} is no longer served: {querier}'s current setup of "
                f"{dataset!r} is {kept['setup_job']} (key version {kept['key_version']}); query "
                "with that one or run a new setup"
            )
        if kept["dataset_version"] != current:
            raise StaleSetupError(
                f"dataset {dataset!r} changed since setup {params.setup_job}; its filter no "
                "longer describes it: run a new setup"
            )
        used = sum(n for job, n in kept["queries"].items() if job != ctx.spec.job_id)
        if used + count > cap:
            raise QueryLimitError(
                f"{querier} has queried {used:,} ids against setup {params.setup_job} and asks "
                f"for {count:,} more, over this node's {LIMIT_MAX_QUERIES} = {cap:,}; each "
                "answer is a membership test against the filter"
            )
        if ctx.spec.job_id not in kept["queries"]:
            kept["queries"][ctx.spec.job_id] = count
            ctx.save_kept(name, json.dumps(kept).encode())
    ctx.record(
        "psi_unbalanced.query",
        {
            "querier": querier,
            "setup_job": params.setup_job,
            "key_version": version,
            "queries": count,
            "queries_before": used,
            "max_queries": cap,
        },
    )
    return BlindingKey.from_resume_state(bytes.fromhex(kept["key"]))


def _csv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> bytes:
    """A header, then rows, LF-ended; fields with ``,`` ``"`` CR or LF quoted (RFC 4180)."""

    def field(value: str) -> str:
        if any(c in value for c in ',"\r\n'):
            return '"' + value.replace('"', '""') + '"'
        return value

    lines = [",".join(field(v) for v in row) + "\n" for row in [header, *rows]]
    return "".join(lines).encode("utf-8")


# -- declarations ------------------------------------------------------------------------------


def outputs(spec: JobSpec) -> frozenset[str]:
    """Which of the querier's ids the holder holds, and payload columns when labeled."""
    return frozenset({"intersection", *(["payload"] if payload_columns(spec) else [])})


def learns(spec: JobSpec) -> dict[str, str]:
    """What each role learns, as ``docs/protocols/psi_unbalanced.md`` states it."""
    roles = _roles(spec)
    labels = payload_columns(spec)
    payload = (
        f", with the payload columns {', '.join(labels.values())} of each matched record"
        if labels
        else ""
    )
    if PsiUnbalancedParams.of(spec).phase == "setup":
        return {
            roles.querier: (
                f"how many ids {roles.holder} holds; its filter lets later query jobs (each "
                f"counted against {roles.holder}'s cap) test which ids {roles.holder} holds"
                f"{payload}"
            ),
            roles.holder: f"nothing about {roles.querier}'s ids",
        }
    return {
        roles.querier: f"which of its queried ids {roles.holder} holds{payload}",
        roles.holder: f"how many ids {roles.querier} queries, not which, and not the result",
    }


def plan(spec: JobSpec, party: str, limits: Mapping[str, int]) -> MessagePlan:
    """What the peer may send: the holder a capped filter and table; the querier capped ids."""
    roles = _roles(spec)
    if party == roles.querier:
        cap = limits[LIMIT_MAX_SET_SIZE]
        label_bytes = (
            cap * (LOCATOR_SIZE + MAX_LABEL_WIDTH + SEAL_OVERHEAD) if payload_columns(spec) else 0
        )
        total = _max_filter_bytes(cap) + label_bytes + cap * POINT_SIZE
        ticks = 2 * (cap // (SETUP_CHUNK_ROWS * TICK_CHUNKS) + 1) + (1 << shard_bits(cap)) + 1
        return MessagePlan(
            max_messages=3 + ticks + 2 * (total // PART_BYTES + 1),
            max_bytes=4096 + ticks + total,
            tags=(
                re.escape(_TAG_SETUP),
                r"psi_u/tick/\d+",
                r"psi_u/filter/\d+",
                r"psi_u/labels/\d+",
                r"psi_u/answers/\d+",
            ),
        )
    cap = limits[LIMIT_MAX_QUERIES]
    return MessagePlan(
        max_messages=2 + -(-cap // MAX_CHUNK_POINTS),
        max_bytes=4096 + cap * POINT_SIZE,
        tags=(re.escape(_TAG_QUERY), r"psi_u/points/\d+"),
    )


DEFINITION = ProtocolDef(
    name="psi_unbalanced",
    version="1",
    roles={HOLDER: run_holder, QUERIER: run_querier},
    params=PsiUnbalancedParams,
    role_requirements={
        HOLDER: RoleRequirement(columns=(ID_COLUMN,), receives=False, who="the large set"),
        QUERIER: RoleRequirement(dataset=False, receives=True, who="the small set"),
    },
    check=_check,
    outputs=outputs,
    learns=learns,
    description="unbalanced (and labeled) PSI: a precomputed filter of a large set, queried",
    plan=plan,
    resumable=True,
)
