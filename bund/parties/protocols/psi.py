"""ECDH-PSI between two members: who sends what to whom (the maths is in ``bund.compute.psi``).

Both participants take the role ``member`` and bind the logical column ``id``. The required
parameter ``mode`` is the disclosure level: ``intersection`` (each result receiver learns which of
its own ids the peer also holds) or ``cardinality`` (receivers learn only how many). Messages, per
member, all under this job (``docs/protocols/psi.md`` has sizes and what each role learns):

1. ``psi/header``: mode, set size, largest peer set accepted (this node's
   ``psi_max_set_size``), points per chunk (28 bytes). Both members then refuse a set over either
   cap before any point is sent.
2. ``psi/blinded/<i>``: the member's hashed ids blinded with its fresh scalar, sorted, in chunks.
3. ``psi/double/<i>``: the peer's points re-blinded. In intersection mode, to a receiver, in the
   order received. In cardinality mode, *from* a receiver to its peer, sorted as one set: the
   peer counts, so a receiver never gets its own set back (which a modified receiver that
   blinds each id with its own scalar would turn into membership).
4. ``psi/count`` (cardinality mode, to a receiver): the count its peer computed, with discrete
   Laplace noise when the spec sets ``epsilon`` (charged to the counting member's dataset).

The member streams its id column from its source and holds its points as packed arrays in
buckets by their first bits (``bund.parties.protocols.buckets``): in memory for small sets, in
files in its scratch directory above ``psi_spill_rows`` rows (a node limit), so that its memory
is bounded by the bucket size (``psi_bucket_points``) and not by the set size. Hashing and
blinding run in batches on the node's executor (``ctx.executor``); the messages and the result
are the same on every executor and in every bucketing. A member that spills checkpoints after
every chunk, so a restarted node resumes where it stopped; a member that does not re-runs from
its saved scalar (its messages are then byte-identical replays).
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from bund.compute.dp.budget import Budget, parse_rational
from bund.compute.dp.mechanisms import DiscreteLaplace
from bund.compute.dp.stats import MAX_EPSILON, MIN_EPSILON
from bund.compute.errors import (
    InvalidInputError,
    InvalidMessageError,
    InvalidPointError,
    SetTooLargeError,
)
from bund.compute.layout import Header
from bund.compute.psi import (
    MAX_CHUNK_POINTS,
    POINT_SIZE,
    BlindingKey,
    Disclosure,
    NormalisedIds,
    PointArray,
    SetHeader,
    blind_array,
    bucket_of,
    create_blinding_key,
    decode_header,
    encode_header,
    hash_and_blind_array,
    validate_point_array,
)
from bund.parties.data import STREAM_MAX_ROWS
from bund.parties.durable import replace_file
from bund.parties.jobs import (
    InvalidJobSpecError,
    JobContext,
    JobSpec,
    OwnerTerms,
    ProtocolDef,
    ProtocolParams,
    Result,
    RoleRequirement,
)
from bund.parties.policy import PolicyRefusedError, membership_output
from bund.parties.protocols.buckets import Buckets, ahead, chunks, rechunk
from bund.parties.schema import Exact
from bund.parties.transport import MessagePlan

#: The role both participants take.
ROLE = "member"
#: The logical column each participant binds to its identifier column.
ID_COLUMN = "id"
#: The node policy limit on the number of distinct ids in either set.
LIMIT_MAX_SET_SIZE = "psi_max_set_size"
#: Node limit: a member whose dataset has more rows spills its buckets to files (else memory).
LIMIT_SPILL_ROWS = "psi_spill_rows"
#: Node limit: points per bucket that the bucket count aims at (a bucket of 2^20 is 40 MB).
LIMIT_BUCKET_POINTS = "psi_bucket_points"
#: What a node that sets neither limit uses (``policy.DEFAULT_LIMITS`` has the same values).
DEFAULT_SPILL_ROWS = 1 << 20
DEFAULT_BUCKET_POINTS = 1 << 20

_TAG_HEADER = "psi/header"
_TAG_COUNT = "psi/count"
#: Before its header, a member sends a tick every this many chunks it has blinded, so that a
#: peer with a smaller set waits on ticks, not on silence, however large this member's set is.
TICK_CHUNKS = 2
_PROGRESS = "progress.json"
_COUNT_STATE = "psi.count"
#: A point with its dataset row; a bare point.
_WITH_ROW = np.dtype([("p", f"S{POINT_SIZE}"), ("row", "<i8")])
_POINT = np.dtype([("p", f"S{POINT_SIZE}")])
#: A row number alone (the common rows, partitioned by row range).
_ROW = np.dtype([("row", "<i8")])
#: ``psi/count``: magic, version; the count (8, big-endian), whether noise was added (1).
_COUNT = Header(b"BPSC", 1)
_COUNT_FIELDS = struct.Struct(">QB")


def bucket_bits(size: int, bucket_points: int = DEFAULT_BUCKET_POINTS) -> int:
    """How many first bits of a point pick its bucket, so buckets hold ~``bucket_points``.

    >>> bucket_bits(10**6), bucket_bits(10**7), bucket_bits(10**8)
    (0, 4, 7)
    """
    bits = 0
    while size > bucket_points << bits and bits < 16:
        bits += 1
    return bits


def limit_or(ctx: JobContext, name: str, default: int) -> int:
    """A node limit, or ``default`` for a context whose limits do not name it (a unit test's)."""
    try:
        return ctx.limit(name)
    except KeyError:
        return default


@dataclass
class _State:
    """Everything one member holds during a run; the stages below fill it in order."""

    ctx: JobContext
    peer: str
    mode: Disclosure
    epsilon: Fraction | None
    column: str
    rows: int
    bucket_points: int
    context: bytes
    key: BlindingKey
    scratch: Path | None
    #: The resume document of a member that spills (replaced at every checkpoint).
    progress: dict[str, Any]
    own: Buckets
    own_size: int = 0
    blanks: int = 0
    duplicates: int = 0
    own_header: SetHeader | None = None
    peer_header: SetHeader | None = None
    #: Bits of the buckets of double-blinded values (the same at both ends of the join).
    join_bits: int = 0
    #: The peer's points re-blinded by us, when we match or count against them.
    peer_double: Buckets | None = None
    #: Our points as the peer re-blinded them (with our rows, in intersection mode).
    own_double: Buckets | None = None
    released: int | None = None
    result: Result | None = None
    extra: dict[str, str | int | float | bool | None] = field(default_factory=dict)

    @property
    def receiver(self) -> bool:
        return self.ctx.party in self.ctx.spec.receivers

    @property
    def peer_receiver(self) -> bool:
        return self.peer in self.ctx.spec.receivers

    @property
    def counts_for_peer(self) -> bool:
        """Cardinality mode with the peer a receiver: we compute its count and release it."""
        return self.mode is Disclosure.CARDINALITY and self.peer_receiver

    def checkpoint(self, **parts: Any) -> None:
        """Save the progress document with ``parts`` (only a member that spills checkpoints).

        It goes to the scratch directory beside the bucket files it describes (written to a
        new file, synced, renamed), not to the sealed resume store: it holds nothing secret
        (counts, sizes, the peer's header, a blinded point), and a resume-store save would drop
        the inbox copies of messages taken ahead of it, which a pipelined stage takes.
        """
        if self.scratch is None:
            return
        self.progress.update(parts)
        replace_file(self.scratch / _PROGRESS, json.dumps(self.progress, sort_keys=True).encode())


def run_member(ctx: JobContext) -> Result | None:
    """Run one member's side of PSI; a result receiver gets a ``Result``, the other ``None``.

    Raises:
        SetTooLargeError: If either set exceeds this node's ``psi_max_set_size``.
        InvalidMessageError: If the peer's header or count is malformed or names another mode.
        InvalidPointError: If a point set from the peer fails validation.
    """
    state = _setup(ctx)
    saved = ctx.load_state(_COUNT_STATE)
    if saved is not None:  # the count was released before a restart: release it again, once
        _release_saved_count(state, json.loads(saved))
    else:
        for stage in (
            _blind_own_set,
            _exchange_headers,
            _send_blinded,
            _reblind_peer_set,
            _return_sorted,
            _collect_own_double,
            _match,
        ):
            stage(state)
    fields: dict[str, str | int | float | bool | None] = {
        "mode": state.mode.value,
        "own_set_size": state.own_size,
        "peer_set_size": state.peer_header.set_size if state.peer_header else None,
        "blank_ids_skipped": state.blanks,
        "duplicate_ids_dropped": state.duplicates,
        "receiver": state.receiver,
        "intersection_size": state.result.summary["intersection_size"] if state.result else None,
    }
    if state.mode is Disclosure.CARDINALITY:
        fields["count_released"] = state.released
        fields["noise_epsilon"] = None if state.epsilon is None else str(state.epsilon)
    ctx.record("psi.finished", fields)
    return state.result


def check_own_set(ctx: JobContext, column: str, size: int) -> int:
    """This node's ``psi_max_set_size``, or ``SetTooLargeError`` if ``size`` ids exceed it."""
    cap = ctx.limit(LIMIT_MAX_SET_SIZE)
    if size > cap:
        raise SetTooLargeError(
            f"this party's column {column!r} holds {size:,} distinct ids, over this "
            f"node's cap {LIMIT_MAX_SET_SIZE} = {cap:,}; raise {LIMIT_MAX_SET_SIZE} in this "
            "node's policy or use a smaller set"
        )
    return cap


def note_id_quality(ctx: JobContext, ids: NormalisedIds) -> None:
    """Note the blank and duplicate ids normalisation dropped, for this party's receipt only."""
    ctx.note_quality("blank_ids_skipped", ids.blanks)
    ctx.note_quality("duplicate_ids_dropped", ids.duplicates)


def check_peer_header(peer: str, own: SetHeader, header: SetHeader) -> SetHeader:
    """Refuse a peer header of another mode or over either side's cap; return it."""
    if header.mode is not own.mode:
        raise InvalidMessageError(
            f"{peer} runs this job in mode {header.mode.value!r}, this node in "
            f"{own.mode.value!r}; the two nodes hold different specs"
        )
    if header.set_size > own.max_peer_set_size:
        raise SetTooLargeError(
            f"{peer} announced a set of {header.set_size:,} ids, over this node's cap "
            f"{LIMIT_MAX_SET_SIZE} = {own.max_peer_set_size:,}; raise {LIMIT_MAX_SET_SIZE} in "
            "this node's policy to accept it"
        )
    if own.set_size > header.max_peer_set_size:
        raise SetTooLargeError(
            f"{peer}'s node accepts at most {header.max_peer_set_size:,} ids and this party's "
            f"set has {own.set_size:,}; ask {peer} to raise its {LIMIT_MAX_SET_SIZE} "
            "or split the set"
        )
    return header


def exchange_headers(ctx: JobContext, peer: str, tag: str, own: SetHeader) -> SetHeader:
    """Send our set header and check the peer's; both refuse an oversized set before any point.

    Raises:
        InvalidMessageError: The peer runs another disclosure mode (a different spec).
        SetTooLargeError: Either set is over the other side's ``psi_max_set_size``.
    """
    ctx.send(peer, tag, encode_header(own))
    return check_peer_header(peer, own, decode_header(ctx.recv(peer, tag)))


def _setup(ctx: JobContext) -> _State:
    spec = ctx.spec
    column = spec.participant(ctx.party).columns[ID_COLUMN]
    params = PsiParams.of(spec)
    table = ctx.table()
    rows = table.num_rows
    spill = rows > limit_or(ctx, LIMIT_SPILL_ROWS, DEFAULT_SPILL_ROWS)
    scratch = ctx.scratch_dir() if spill else None
    bucket_points = limit_or(ctx, LIMIT_BUCKET_POINTS, DEFAULT_BUCKET_POINTS)
    path = scratch / _PROGRESS if scratch is not None else None
    saved = path.read_text(encoding="utf-8") if path is not None and path.exists() else None
    (peer,) = (p for p in spec.parties if p != ctx.party)
    return _State(
        ctx=ctx,
        peer=peer,
        mode=Disclosure(params.mode),
        epsilon=params.noise_epsilon(),
        column=column,
        rows=rows,
        bucket_points=bucket_points,
        context=bytes.fromhex(spec.digest()),
        key=_blinding_key(ctx),
        scratch=scratch,
        progress=json.loads(saved) if saved else {},
        own=Buckets(_WITH_ROW, 1 << bucket_bits(rows, bucket_points), scratch, "own"),
    )


def _blinding_key(ctx: JobContext) -> BlindingKey:
    """The job's scalar: fresh, and saved before any point it blinds is sent.

    A resumed member restores it: what it sends again comes out byte-identical (replays, which
    the peer ignores) and the peer's messages it has not consumed wait in its inbox.
    """
    saved = ctx.load_state("psi.key")
    if saved is not None:
        return BlindingKey.from_resume_state(saved)
    key = create_blinding_key()
    ctx.save_state("psi.key", key.export_for_resume())
    return key


def _blind_own_set(s: _State) -> None:
    """Stream our ids, hash and blind them, bucket, then sort and de-duplicate each bucket.

    Blank ids are skipped; repeated ids hash to equal points, so the first row of each point
    (the lowest: rows go in ascending) is kept. Refuses a set over our cap before anything is
    sent.
    """
    ctx = s.ctx
    done = s.progress.get("own")
    if done is None:
        s.own.truncate([0] * s.own.count)  # a restart mid-stage left half-written buckets
        bits = bucket_bits(s.rows, s.bucket_points)
        row = 0
        chunks_in = enumerate(ctx.table().iter_column(s.column, MAX_CHUNK_POINTS))
        for (chunk, values), (keep, points) in ahead(chunks_in, partial(_hash_chunk, s)):
            s.blanks += len(values) - len(keep)
            records = np.empty(len(keep), dtype=_WITH_ROW)
            records["p"] = points
            records["row"] = row + np.asarray(keep, dtype=np.int64)
            s.own.append(bucket_of(points, bits), records)
            if (chunk + 1) % TICK_CHUNKS == 0:
                ctx.send(s.peer, f"psi/tick/{chunk // TICK_CHUNKS}", b"\x00")
            row += len(values)
            ctx.progress("blind", row, s.rows)
        for index in range(s.own.count):
            records = s.own.read(index)
            records = records[np.argsort(records["p"], kind="stable")]
            first = _first_of_runs(records["p"])
            s.duplicates += int(len(records) - first.sum())
            s.own.write(index, records[first])
            s.own_size += int(first.sum())
        s.own.sync()
        s.checkpoint(own=[s.own_size, s.blanks, s.duplicates])
    else:
        s.own_size, s.blanks, s.duplicates = done
    ctx.note_quality("blank_ids_skipped", s.blanks)
    ctx.note_quality("duplicate_ids_dropped", s.duplicates)
    cap = check_own_set(ctx, s.column, s.own_size)
    s.own_header = SetHeader(s.mode, s.own_size, cap, MAX_CHUNK_POINTS)


def _hash_chunk(s: _State, chunk: tuple[int, list[str]]) -> tuple[list[int], PointArray]:
    """The positions of a chunk's non-blank ids, and their points ``a·H(x)`` (in a thread)."""
    encoded = [v.strip().encode("utf-8") for v in chunk[1]]
    keep = [i for i, item in enumerate(encoded) if item]
    items = [encoded[i] for i in keep]
    return keep, hash_and_blind_array(items, s.context, s.key, s.ctx.executor)


def _first_of_runs(values: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Where each run of equal values in a sorted array starts."""
    first = np.ones(len(values), dtype=bool)
    first[1:] = values[1:] != values[:-1]
    return first


def _exchange_headers(s: _State) -> None:
    """Message 1 both ways, after the last tick; both refuse an oversized set before any point.

    The ticks' count follows from the rows, so a resumed member sends the same last tick.
    """
    assert s.own_header is not None
    saved = s.progress.get("peer_header")
    last = -(-s.rows // MAX_CHUNK_POINTS) // TICK_CHUNKS
    s.ctx.send(s.peer, f"psi/tick/{last}", b"\x01")
    if saved is None:
        tick = 0
        while (beat := s.ctx.recv(s.peer, f"psi/tick/{tick}")) != b"\x01":
            if beat != b"\x00":
                raise InvalidMessageError(f"{s.peer} sent a malformed PSI tick")
            tick += 1
        s.peer_header = exchange_headers(s.ctx, s.peer, _TAG_HEADER, s.own_header)
        s.checkpoint(peer_header=encode_header(s.peer_header).hex())
    else:  # consumed before a checkpoint: the peer's inbox copy is gone, ours is saved
        s.ctx.send(s.peer, _TAG_HEADER, encode_header(s.own_header))
        s.peer_header = decode_header(bytes.fromhex(saved))
    s.join_bits = bucket_bits(max(s.own_size, s.peer_header.set_size), s.bucket_points)


def _send_blinded(s: _State) -> None:
    """Message 2: our blinded set in ascending order (buckets in order, each sorted), in chunks.

    Sent sorted, its order says nothing about the dataset's; a resumed member re-sends the same
    bytes, which the peer's mailbox ignores.
    """
    assert s.own_header is not None
    for i, points in enumerate(chunks(s.own, s.own_header.chunk_points, "p")):
        s.ctx.send(s.peer, f"psi/blinded/{i}", points.tobytes())


def _reblind_peer_set(s: _State) -> None:
    """Receive message 2, check and re-blind it; message 3 in intersection mode; keep it."""
    assert s.peer_header is not None
    ctx, sizes = s.ctx, s.peer_header.chunk_sizes
    reply_now = s.peer_receiver and s.mode is Disclosure.INTERSECTION
    if s.receiver or s.mode is Disclosure.CARDINALITY:
        s.peer_double = Buckets(_POINT, 1 << s.join_bits, s.scratch, "peer_double")
    done = s.progress.get("reblind", {"next": 0, "last": "", "sizes": None})
    if s.peer_double is not None:
        s.peer_double.truncate(done["sizes"] or [0] * s.peer_double.count)
    last = bytes.fromhex(done["last"]) or None
    finished = sum(sizes[: done["next"]])

    def reblind(i: int, payload: bytes, after: bytes | None) -> PointArray:
        points = validate_point_array(
            payload, sizes[i], ascending=True, ascending_after=after, compared_only=True
        )
        return blind_array(points, s.key, ctx.executor, check_curve=True)  # twist checked there

    def handle(i: int, double: PointArray, last: bytes | None) -> None:
        nonlocal finished
        if reply_now:
            ctx.send(s.peer, f"psi/double/{i}", double.tobytes())
        if s.peer_double is not None:
            s.peer_double.append(bucket_of(double, s.join_bits), double.view(_POINT))
            s.peer_double.sync()
        finished += sizes[i]
        sizes_now = s.peer_double.sizes() if s.peer_double is not None else None
        hex_last = last.hex() if last else ""
        s.checkpoint(reblind={"next": i + 1, "last": hex_last, "sizes": sizes_now})
        ctx.progress("reblind", finished, s.peer_header.set_size if s.peer_header else 0)

    # Chunk i+1 is taken and checked on the executor while chunk i is sent and bucketed.
    with ThreadPoolExecutor(1, thread_name_prefix="bund-psi-ahead") as pool:
        pending: tuple[int, Future[PointArray], bytes | None] | None = None
        for i in range(done["next"], len(sizes)):
            payload = ctx.recv(s.peer, f"psi/blinded/{i}")
            computing = pool.submit(reblind, i, payload, last)
            last = payload[-POINT_SIZE:] if payload else last
            if pending is not None:
                handle(pending[0], pending[1].result(), pending[2])
            pending = (i, computing, last)
        if pending is not None:
            handle(pending[0], pending[1].result(), pending[2])


def _return_sorted(s: _State) -> None:
    """Cardinality mode, we receive: send the peer its set re-blinded, sorted, so it counts.

    The peer, not we, holds both double-blinded sets: a receiver that got its own set back
    could match it against ids blinded each with a scalar of its own.
    """
    if s.mode is not Disclosure.CARDINALITY or not s.receiver:
        return
    assert s.peer_double is not None and s.peer_header is not None
    for i, points in enumerate(_sorted_chunks(s.peer_double, s.peer_header.chunk_points)):
        s.ctx.send(s.peer, f"psi/double/{i}", points.tobytes())


def _sorted_chunks(buckets: Buckets, size: int) -> Iterator[npt.NDArray[Any]]:
    """The points of ``buckets`` in ascending order (each bucket sorted), in chunks of ``size``."""
    return rechunk((np.sort(records["p"]) for records in buckets), size)


def _collect_own_double(s: _State) -> None:
    """Receive our set re-blinded by the peer: to match it (intersection), to count (cardinality).

    Intersection mode: in the order we sent it, so each value maps back to our row. Cardinality
    mode: sorted, so no value maps back to anything; it only counts.
    """
    intersection = s.mode is Disclosure.INTERSECTION
    if not ((intersection and s.receiver) or s.counts_for_peer):
        return
    assert s.own_header is not None
    dtype = _WITH_ROW if intersection else _POINT
    s.own_double = Buckets(dtype, 1 << s.join_bits, s.scratch, "own_double")
    done = s.progress.get("collect", {"next": 0, "last": "", "sizes": None})
    s.own_double.truncate(done["sizes"] or [0] * s.own_double.count)
    last = bytes.fromhex(done["last"]) or None
    sizes = s.own_header.chunk_sizes
    rows = chunks(s.own, s.own_header.chunk_points, "row", skip=done["next"])
    received = sum(sizes[: done["next"]])
    for i in range(done["next"], len(sizes)):
        payload = s.ctx.recv(s.peer, f"psi/double/{i}")
        # Only compared with values we computed from validated points, never multiplied.
        points = validate_point_array(
            payload, sizes[i], ascending=not intersection, ascending_after=last, compared_only=True
        )
        last = points[-1:].tobytes()
        records = np.empty(len(points), dtype=dtype)
        records["p"] = points
        if intersection:
            records["row"] = next(rows)
        s.own_double.append(bucket_of(points, s.join_bits), records)
        s.own_double.sync()
        received += sizes[i]
        s.checkpoint(collect={"next": i + 1, "last": last.hex(), "sizes": s.own_double.sizes()})
        s.ctx.progress("match", received, s.own_header.set_size)


def _match(s: _State) -> None:
    """Join bucket by bucket: the common ids (intersection), or the count we release."""
    if s.mode is Disclosure.INTERSECTION:
        if s.receiver:
            s.result = _intersection_result(s)
        return
    if s.counts_for_peer:
        _release_count(s, _count(s))
    _receive_count(s)


def _summary(s: _State) -> dict[str, str | int | float | bool | None]:
    assert s.own_header is not None and s.peer_header is not None
    return {
        "mode": s.mode.value,
        "own_set_size": s.own_header.set_size,
        "peer_set_size": s.peer_header.set_size,
    }


def _join_buckets(s: _State) -> Iterator[tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]]:
    """Per bucket: our records and which of them occur among the peer's double-blinded values.

    Our values must be distinct: a peer that returned one value twice could make a receiver
    report an id it does not share, or inflate a count.
    """
    assert s.own_double is not None and s.peer_double is not None
    for index in range(s.own_double.count):
        own = s.own_double.read(index)
        own = own[np.argsort(own["p"], kind="stable")]
        if not _first_of_runs(own["p"]).all():
            raise InvalidPointError(
                "invalid PSI point set from the peer: a point repeats within the set; an honest "
                "party sends distinct points; the job must stop"
            )
        peer = np.sort(s.peer_double.read(index)["p"])
        at = np.minimum(np.searchsorted(peer, own["p"]), max(len(peer) - 1, 0))
        hit = (peer[at] == own["p"]) if len(peer) else np.zeros(len(own), dtype=bool)
        yield own, hit


def _common_rows(s: _State) -> Iterator[npt.NDArray[np.int64]]:
    """Our rows whose ids the peer holds, ascending, in parts (one bucket of rows at a time).

    The join goes by buckets of blinded values, whose rows are scattered; the hits are
    re-partitioned by row range (in files, for a member that spills), so that no part holds
    more than about a bucket's rows, whatever the intersection's size.
    """
    hits = Buckets(_ROW, s.own.count, s.scratch, "hits")
    hits.truncate([0] * hits.count)  # a restart during the join left half-written buckets
    for index, (own, hit) in enumerate(_join_buckets(s)):
        rows = np.empty(int(hit.sum()), dtype=_ROW)
        rows["row"] = own["row"][hit]
        hits.append(rows["row"] * hits.count // max(s.rows, 1), rows)
        s.ctx.progress("join", index + 1, hits.count)
    hits.sync()
    return (np.sort(part["row"]) for part in hits)


def _intersection_result(s: _State) -> Result:
    """``intersection.csv`` with the intersection's size: in a scratch file when we spill.

    The file is synced before the result names it; the node's job store then moves it into its
    artifact folder (``Result.files``), so no copy of the whole intersection is ever in memory.
    """
    summary = _summary(s)
    if s.scratch is None:
        buffer = io.BytesIO()
        summary["intersection_size"] = _write_ids_csv(s, _common_rows(s), buffer)
        return Result(summary, {"intersection.csv": buffer.getvalue()})
    path = s.scratch / "intersection.csv"
    with path.open("wb") as f:
        summary["intersection_size"] = _write_ids_csv(s, _common_rows(s), f)
        f.flush()
        os.fsync(f.fileno())
    return Result(summary, files={"intersection.csv": path})


def _count(s: _State) -> int:
    return sum(int(hit.sum()) for _, hit in _join_buckets(s))


def _release_count(s: _State, exact: int) -> None:
    """Message 4: the count we computed, noised if the spec says so; saved before it is sent.

    The noise is drawn once (after the charge, which a resumed job never pays twice) and saved,
    so a restart re-sends the same value instead of a fresh draw that would average out.
    """
    assert s.peer_header is not None
    released, noised = exact, s.epsilon is not None
    if s.epsilon is not None:
        s.ctx.charge("count", Budget(s.epsilon))
        noise = int(DiscreteLaplace.create(s.epsilon, 1).sample(1)[0])
        released = min(max(exact + noise, 0), min(s.own_size, s.peer_header.set_size))
    s.released = released
    state = {
        "count": released,
        "noised": noised,
        "own_set_size": s.own_size,
        "peer_header": encode_header(s.peer_header).hex(),
        "blanks": s.blanks,
        "duplicates": s.duplicates,
    }
    s.ctx.save_state(_COUNT_STATE, json.dumps(state, sort_keys=True).encode())
    s.ctx.send(s.peer, _TAG_COUNT, _COUNT.pack(_COUNT_FIELDS.pack(released, noised)))


def _release_saved_count(s: _State, saved: Mapping[str, Any]) -> None:
    """A member restarted after it released its count: send the same count, then finish."""
    s.own_size, s.blanks, s.duplicates = saved["own_set_size"], saved["blanks"], saved["duplicates"]
    s.peer_header = decode_header(bytes.fromhex(saved["peer_header"]))
    s.own_header = SetHeader(s.mode, s.own_size, s.ctx.limit(LIMIT_MAX_SET_SIZE), MAX_CHUNK_POINTS)
    s.released = saved["count"]
    payload = _COUNT.pack(_COUNT_FIELDS.pack(saved["count"], saved["noised"]))
    s.ctx.send(s.peer, _TAG_COUNT, payload)
    _receive_count(s)


def _receive_count(s: _State) -> None:
    """Message 4 from the peer, if we receive: checked against the sizes and the spec's noise."""
    if not s.receiver:
        return
    assert s.peer_header is not None and s.own_header is not None
    body = _COUNT.split(s.ctx.recv(s.peer, _TAG_COUNT), "a PSI count")
    if len(body) != _COUNT_FIELDS.size:
        raise InvalidMessageError(f"a PSI count is {_COUNT_FIELDS.size} bytes after its header")
    count, noised = _COUNT_FIELDS.unpack(body)
    if noised != (s.epsilon is not None):
        raise InvalidMessageError(
            f"{s.peer} released a count {'with' if noised else 'without'} noise, against the "
            "spec's epsilon; the two nodes hold different specs"
        )
    if count > min(s.own_header.set_size, s.peer_header.set_size):
        raise InvalidMessageError(f"{s.peer} released a count larger than either set")
    summary = _summary(s)
    summary["intersection_size"] = int(count)
    if s.epsilon is not None:
        summary["noise_epsilon"] = str(s.epsilon)
        summary["noise_scale"] = str(DiscreteLaplace.create(s.epsilon, 1).scale)
    s.result = Result(summary)


def _csv_field(value: str) -> str:
    """One field, quoted as RFC 4180 says if it holds ``,``, ``"``, CR or LF.

    (``csv.writer`` leaves a bare CR unquoted when rows end in LF, which would split the row on
    reading.)
    """
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\r\n') else value


def ids_csv(ids: Iterable[bytes]) -> bytes:
    """``intersection.csv`` of ids held in memory: a header ``id``, then one id per LF-ended row."""
    return "".join(["id\n", *(_csv_field(i.decode("utf-8")) + "\n" for i in ids)]).encode()


def _write_ids_csv(s: _State, rows: Iterable[npt.NDArray[np.int64]], out: BinaryIO) -> int:
    """Write ``intersection.csv`` to ``out``: a header ``id``, then each common id, in row order.

    ``rows`` are the common rows, ascending, in parts. The ids are read again from the dataset,
    streamed, a chunk at a time; fields are quoted as :func:`ids_csv` quotes them. Returns how
    many ids were written.
    """
    out.write(b"id\n")
    parts = iter(rows)
    pending = next(parts, None)
    written = start = 0
    for values in s.ctx.table().iter_column(s.column, MAX_CHUNK_POINTS):
        end = start + len(values)
        lines: list[str] = []
        while pending is not None:
            here = int(np.searchsorted(pending, end))
            lines.extend(
                _csv_field(values[r - start].strip()) + "\n" for r in pending[:here].tolist()
            )
            if here < len(pending):
                pending = pending[here:]
                break
            pending = next(parts, None)
        out.write("".join(lines).encode("utf-8"))
        written += len(lines)
        start = end
        s.ctx.progress("result", start, s.rows)
        if pending is None:
            break
    return written


class PsiParams(ProtocolParams):
    """The parameters of a PSI job."""

    mode: Literal["intersection", "cardinality"] = Field(
        description=(
            "the disclosure level, with no default because it is a choice: 'intersection' (each "
            "result receiver learns which of its own ids the peer also holds) or 'cardinality' "
            "(receivers learn only how many)"
        )
    )
    epsilon: Exact | None = Field(
        default=None,
        description=(
            "cardinality mode: each member that releases a count adds discrete Laplace noise of "
            f"this ε (in [{MIN_EPSILON}, {MAX_EPSILON}]), charged to its dataset; a dataset "
            "that never reveals membership releases a count to an untrusted receiver only so"
        ),
    )

    def noise_epsilon(self) -> Fraction | None:
        """The count's ε, parsed and checked; None for an exact count.

        Raises:
            InvalidJobSpecError: ``epsilon`` with intersection mode, or out of range.
        """
        if self.epsilon is None:
            return None
        if self.mode != Disclosure.CARDINALITY.value:
            raise InvalidJobSpecError("psi takes epsilon only in mode = 'cardinality'")
        try:
            value = parse_rational(self.epsilon, "parameter epsilon")
        except InvalidInputError as exc:
            raise InvalidJobSpecError(str(exc)) from None
        if not MIN_EPSILON <= value <= MAX_EPSILON:
            raise InvalidJobSpecError(
                f"parameter epsilon must be in [{MIN_EPSILON}, {MAX_EPSILON}]"
            )
        return value


def validate(spec: JobSpec) -> None:
    """Check that ``spec`` is a runnable PSI job (``DEFINITION.validate``).

    Raises:
        InvalidJobSpecError: Naming the field to fix: the number of participants, a role, a
            dataset or ``id`` column binding, or the ``mode`` or ``epsilon`` parameter.
    """
    DEFINITION.validate(spec)


def _check(spec: JobSpec) -> None:
    PsiParams.of(spec).noise_epsilon()


def outputs(spec: JobSpec) -> frozenset[str]:
    """What the job releases: which ids are shared, or only how many (``policy.OUTPUTS``).

    In intersection mode, per direction, the membership each receiver learns of its peer's set.
    """
    mode = PsiParams.of(spec).mode
    if mode != Disclosure.INTERSECTION.value:
        return frozenset({mode})
    peer = {p: q for p in spec.parties for q in spec.parties if q != p}
    return frozenset({mode, *(membership_output(peer[r], r) for r in spec.receivers)})


def learns(spec: JobSpec) -> dict[str, str]:
    """What each member learns, as ``docs/protocols/psi.md`` states it."""
    params = PsiParams.of(spec)
    intersection = params.mode == Disclosure.INTERSECTION.value
    noise = (
        "" if params.epsilon is None else f", with discrete Laplace noise of ε = {params.epsilon}"
    )
    out: dict[str, str] = {}
    for p in spec.parties:
        (peer,) = (q for q in spec.parties if q != p)
        parts = []
        if p in spec.receivers:
            parts.append(
                f"which of its own ids {peer} also holds"
                if intersection
                else f"how many of its ids {peer} also holds (not which){noise}"
            )
        if not intersection and peer in spec.receivers:
            parts.append(
                f"how many ids the two sets share (it computes the count it releases to {peer})"
            )
        parts.append(f"the size of {peer}'s set")
        out[p] = ", and ".join(parts) + ("" if len(parts) > 1 else "; nothing else")
    return out


def cost(spec: JobSpec, party: str) -> Budget:
    """ε of the noisy count ``party`` releases (cardinality mode, peer a receiver), else zero."""
    params = PsiParams.of(spec)
    epsilon = params.noise_epsilon()
    if epsilon is None or not any(p in spec.receivers for p in spec.parties if p != party):
        return Budget()
    return Budget(epsilon)


def check_owner(spec: JobSpec, party: str, policy: OwnerTerms) -> None:
    """Refuse, at admission, a cardinality job that could reveal membership this data guards.

    A dataset guards membership against the peer when its level never releases which
    individuals it holds and its policy does not trust the peer. Then it never receives a
    count (receiving means re-blinding the peer's set for the peer, which a modified peer node
    turns into membership of our ids), and it releases a count only with noise (an exact count
    of a padded set with one real candidate is that candidate's membership).

    Raises:
        PolicyRefusedError: Naming what to change.
    """
    params = PsiParams.of(spec)
    (peer,) = (p for p in spec.parties if p != party)
    dataset = spec.participant(party).dataset
    if (
        params.mode != Disclosure.CARDINALITY.value
        or dataset is None
        or not policy.guards_membership(dataset, peer)
    ):
        return
    why = (
        f"{party}'s dataset {dataset!r} is classified to never reveal to {peer} which "
        "individuals it holds"
    )
    if party in spec.receivers:
        raise PolicyRefusedError(
            f"{why}: receiving a cardinality count means re-blinding {peer}'s set for {peer}, "
            f"which a modified {peer} node turns into exactly that; make {peer} the only "
            f"receiver, or name {peer} in trusted_counterparties under [datasets.{dataset}]"
        )
    if params.epsilon is None:
        raise PolicyRefusedError(
            f"{why}: it releases the count to {peer} only with noise (an exact count of a "
            "padded set with one real candidate is that candidate's membership); set the "
            f"parameter epsilon, charged to {dataset!r}, or name {peer} in "
            f"trusted_counterparties under [datasets.{dataset}]"
        )


def plan(spec: JobSpec, party: str, limits: Mapping[str, int]) -> MessagePlan:
    """What the peer may send: a header, its points, a re-blinded set, a count, in chunks.

    Both point sets are at most this node's ``psi_max_set_size`` (either set over it is refused
    after the headers), so a peer cannot make this node hold more than two capped sets.
    """
    cap = limits[LIMIT_MAX_SET_SIZE]
    chunk_count = -(-cap // MAX_CHUNK_POINTS)
    ticks = STREAM_MAX_ROWS // (MAX_CHUNK_POINTS * TICK_CHUNKS) + 1  # the peer's rows: unknown
    return MessagePlan(
        max_messages=2 + ticks + 2 * chunk_count,
        max_bytes=4096 + ticks + 2 * cap * POINT_SIZE,
        tags=(
            re.escape(_TAG_HEADER),
            r"psi/tick/\d+",
            r"psi/blinded/\d+",
            r"psi/double/\d+",
            re.escape(_TAG_COUNT),
        ),
    )


#: The protocol as registered in ``bund.parties.protocols.PROTOCOLS``.
DEFINITION = ProtocolDef(
    name="psi",
    version="2",
    roles={ROLE: run_member},
    params=PsiParams,
    role_requirements={ROLE: RoleRequirement(min=2, max=2, columns=(ID_COLUMN,))},
    check=_check,
    outputs=outputs,
    learns=learns,
    cost=cost,
    description="ECDH private set intersection (X25519): the intersection or only its size",
    plan=plan,
    pays_as_it_goes=True,
    resumable=True,
    check_owner=check_owner,
)
