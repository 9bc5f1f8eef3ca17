"""ECDH-PSI between two members: who sends what to whom (the maths is in ``bund.compute.psi``).

Both participants take the role ``member`` and bind the logical column ``id``. The required
parameter ``mode`` is the disclosure level: ``intersection`` (each result receiver learns which of
its own ids the peer also holds) or ``cardinality`` (receivers learn only how many). Messages, per
member, all under this job (``docs/protocols/psi.md`` has sizes and what each role learns):

1. ``psi/header``: mode, set size, largest peer set accepted (this node's
   ``psi_max_set_size``), points per chunk (28 bytes). Both members then refuse a set over either
   cap before any point is sent.
2. ``psi/blinded/<i>``: the member's hashed ids blinded with its fresh scalar, sorted, in chunks.
3. ``psi/double/<i>``: only to a receiver: its blinded points re-blinded by the peer, in the order
   received (intersection mode) or sorted as one set (cardinality mode).

Hashing and blinding, the heavy part, run in batches on the node's executor (``ctx.executor``:
``[compute] executor`` in ``node.toml``, for example ``process:8`` or ``ray://head:10001``); the
messages and the result are the same on every executor.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from bund.compute.errors import InvalidMessageError, SetTooLargeError
from bund.compute.psi import (
    MAX_CHUNK_POINTS,
    POINT_SIZE,
    BlindingKey,
    Disclosure,
    NormalisedIds,
    SetHeader,
    blind,
    cardinality,
    create_blinding_key,
    decode_header,
    encode_header,
    hash_and_blind,
    intersect_indices,
    normalise_ids,
    sorted_order,
    validate_points,
)
from bund.parties.jobs import (
    JobContext,
    JobSpec,
    ProtocolDef,
    ProtocolParams,
    Result,
    RoleRequirement,
)
from bund.parties.policy import membership_output
from bund.parties.transport import MessagePlan

#: The role both participants take.
ROLE = "member"
#: The logical column each participant binds to its identifier column.
ID_COLUMN = "id"
#: The node policy limit on the number of distinct ids in either set.
LIMIT_MAX_SET_SIZE = "psi_max_set_size"

_TAG_HEADER = "psi/header"


@dataclass
class _State:
    """Everything one member holds during a run; the stages below fill it in order."""

    ctx: JobContext
    peer: str
    mode: Disclosure
    ids: NormalisedIds
    context: bytes
    key: BlindingKey
    own_header: SetHeader
    peer_header: SetHeader | None = None
    #: ``sent_order[j]`` is the index in ``ids.items`` of the j-th blinded point sent.
    sent_order: list[int] = field(default_factory=list)
    #: The peer's points re-blinded by us, kept if we match them (we are a receiver) or must
    #: return them sorted (cardinality mode, peer a receiver).
    peer_double: list[bytes] = field(default_factory=list)
    result: Result | None = None

    @property
    def receiver(self) -> bool:
        return self.ctx.party in self.ctx.spec.receivers

    @property
    def peer_receiver(self) -> bool:
        return self.peer in self.ctx.spec.receivers


def run_member(ctx: JobContext) -> Result | None:
    """Run one member's side of PSI; a result receiver gets a ``Result``, the other ``None``.

    Raises:
        SetTooLargeError: If either set exceeds this node's ``psi_max_set_size``.
        InvalidMessageError: If the peer's header is malformed or names another mode.
        InvalidPointError: If a point set from the peer fails validation.
    """
    state = _setup(ctx)
    for stage in (_exchange_headers, _send_blinded, _reblind_peer_set, _match):
        stage(state)
    intersection_size = state.result.summary["intersection_size"] if state.result else None
    ctx.record(
        "psi.finished",
        {
            "mode": state.mode.value,
            "own_set_size": len(state.ids.items),
            "peer_set_size": state.peer_header.set_size if state.peer_header else None,
            "blank_ids_skipped": state.ids.blanks,
            "duplicate_ids_dropped": state.ids.duplicates,
            "receiver": state.receiver,
            "intersection_size": intersection_size,
        },
    )
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


def exchange_headers(ctx: JobContext, peer: str, tag: str, own: SetHeader) -> SetHeader:
    """Send our set header and check the peer's; both refuse an oversized set before any point.

    Raises:
        InvalidMessageError: The peer runs another disclosure mode (a different spec).
        SetTooLargeError: Either set is over the other side's ``psi_max_set_size``.
    """
    ctx.send(peer, tag, encode_header(own))
    header = decode_header(ctx.recv(peer, tag))
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


def _setup(ctx: JobContext) -> _State:
    spec = ctx.spec
    column = spec.participant(ctx.party).columns[ID_COLUMN]
    ids = normalise_ids(ctx.table().column(column))
    note_id_quality(ctx, ids)
    cap = check_own_set(ctx, column, len(ids.items))
    (peer,) = (p for p in spec.parties if p != ctx.party)
    mode = Disclosure(PsiParams.of(spec).mode)
    return _State(
        ctx=ctx,
        peer=peer,
        mode=mode,
        ids=ids,
        context=bytes.fromhex(spec.digest()),
        key=_blinding_key(ctx),
        own_header=SetHeader(mode, len(ids.items), cap, MAX_CHUNK_POINTS),
    )


def _blinding_key(ctx: JobContext) -> BlindingKey:
    """The job's scalar: fresh, and saved before any point it blinds is sent.

    A resumed member restores it and runs the protocol again from the start: its messages come
    out byte-identical (replays, which the peer ignores) and the peer's wait in its inbox.
    """
    saved = ctx.load_state("psi.key")
    if saved is not None:
        return BlindingKey.from_resume_state(saved)
    key = create_blinding_key()
    ctx.save_state("psi.key", key.export_for_resume())
    return key


def _exchange_headers(s: _State) -> None:
    """Message 1 both ways; both refuse an oversized set before any point is sent."""
    s.peer_header = exchange_headers(s.ctx, s.peer, _TAG_HEADER, s.own_header)


def _send_blinded(s: _State) -> None:
    """Message 2: hash and blind our set, then send it sorted (its order then says nothing)."""
    items, total = s.ids.items, len(s.ids.items)
    blinded: list[bytes] = []
    for start in range(0, total, MAX_CHUNK_POINTS):
        chunk = items[start : start + MAX_CHUNK_POINTS]
        blinded += hash_and_blind(chunk, s.context, s.key, s.ctx.executor)
        s.ctx.progress("blind", len(blinded), total)
    s.sent_order = sorted_order(blinded)
    sent = [blinded[j] for j in s.sent_order]
    for i, start in enumerate(range(0, total, s.own_header.chunk_points)):
        payload = b"".join(sent[start : start + s.own_header.chunk_points])
        s.ctx.send(s.peer, f"psi/blinded/{i}", payload)


def _reblind_peer_set(s: _State) -> None:
    """Receive message 2, re-blind it, and send message 3 if the peer is a receiver."""
    assert s.peer_header is not None
    ctx, sizes = s.ctx, s.peer_header.chunk_sizes
    reply_now = s.peer_receiver and s.mode is Disclosure.INTERSECTION
    keep = s.receiver or (s.peer_receiver and s.mode is Disclosure.CARDINALITY)
    seen: set[bytes] = set()
    done = 0
    for i, count in enumerate(sizes):
        points = validate_points(ctx.recv(s.peer, f"psi/blinded/{i}"), count, seen)
        double = blind(points, s.key, ctx.executor)
        if reply_now:
            ctx.send(s.peer, f"psi/double/{i}", b"".join(double))
        if keep:
            s.peer_double += double
        done += count
        ctx.progress("reblind", done, s.peer_header.set_size)
    if s.peer_receiver and s.mode is Disclosure.CARDINALITY:
        shuffled = sorted(s.peer_double)
        for i, start in enumerate(range(0, len(shuffled), s.peer_header.chunk_points)):
            payload = b"".join(shuffled[start : start + s.peer_header.chunk_points])
            ctx.send(s.peer, f"psi/double/{i}", payload)


def _match(s: _State) -> None:
    """Receive message 3 (receivers only) and compare it with the peer's re-blinded set."""
    if not s.receiver:
        return
    assert s.peer_header is not None
    own_double: list[bytes] = []
    seen: set[bytes] = set()
    sizes = s.own_header.chunk_sizes
    for i, count in enumerate(sizes):
        payload = s.ctx.recv(s.peer, f"psi/double/{i}")
        # Only compared with our own re-blinded values, never multiplied: see validate_points.
        own_double += validate_points(payload, count, seen, compared_only=True)
        s.ctx.progress("match", len(own_double), s.own_header.set_size)
    summary: dict[str, str | int | float | bool | None] = {
        "mode": s.mode.value,
        "own_set_size": s.own_header.set_size,
        "peer_set_size": s.peer_header.set_size,
    }
    if s.mode is Disclosure.CARDINALITY:
        summary["intersection_size"] = cardinality(own_double, s.peer_double)
        s.result = Result(summary)
        return
    positions = intersect_indices(own_double, s.peer_double)
    common = sorted(s.sent_order[j] for j in positions)
    summary["intersection_size"] = len(common)
    s.result = Result(summary, {"intersection.csv": _ids_csv(s.ids.items[k] for k in common)})


def _ids_csv(ids: Iterable[bytes]) -> bytes:
    """``intersection.csv``: a header ``id``, then one normalised id per LF-ended row.

    A field holding ``,``, ``"``, CR or LF is quoted as RFC 4180 says (``csv.writer`` leaves a bare
    CR unquoted when rows end in LF, which would split the row on reading).
    """
    rows = ["id\n"]
    for item in ids:
        value = item.decode("utf-8")
        if any(c in value for c in ',"\r\n'):
            value = '"' + value.replace('"', '""') + '"'
        rows.append(value + "\n")
    return "".join(rows).encode("utf-8")


class PsiParams(ProtocolParams):
    """The parameters of a PSI job."""

    mode: Literal["intersection", "cardinality"] = Field(
        description=(
            "the disclosure level, with no default because it is a choice: 'intersection' (each "
            "result receiver learns which of its own ids the peer also holds) or 'cardinality' "
            "(receivers learn only how many)"
        )
    )


def validate(spec: JobSpec) -> None:
    """Check that ``spec`` is a runnable PSI job (``DEFINITION.validate``).

    Raises:
        InvalidJobSpecError: Naming the field to fix: the number of participants, a role, a
            dataset or ``id`` column binding, or the ``mode`` parameter.
    """
    DEFINITION.validate(spec)


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
    intersection = PsiParams.of(spec).mode == Disclosure.INTERSECTION.value
    out: dict[str, str] = {}
    for p in spec.parties:
        (peer,) = (q for q in spec.parties if q != p)
        if p in spec.receivers:
            what = (
                f"which of its own ids {peer} also holds"
                if intersection
                else f"how many of its ids {peer} also holds (not which)"
            )
            out[p] = f"{what}, and the size of {peer}'s set"
        else:
            out[p] = f"the size of {peer}'s set; nothing else"
    return out


#: The protocol as registered in ``bund.parties.protocols.PROTOCOLS``.
def plan(spec: JobSpec, party: str, limits: Mapping[str, int]) -> MessagePlan:
    """What the peer may send: a header, then its points and ours re-blinded, in chunks.

    Both point sets are at most this node's ``psi_max_set_size`` (either set over it is refused
    after the headers), so a peer cannot make this node hold more than two capped sets.
    """
    cap = limits[LIMIT_MAX_SET_SIZE]
    chunks = -(-cap // MAX_CHUNK_POINTS)
    return MessagePlan(
        max_messages=1 + 2 * chunks,
        max_bytes=4096 + 2 * cap * POINT_SIZE,
        tags=(re.escape(_TAG_HEADER), r"psi/blinded/\d+", r"psi/double/\d+"),
    )


DEFINITION = ProtocolDef(
    name="psi",
    version="1",
    roles={ROLE: run_member},
    params=PsiParams,
    role_requirements={ROLE: RoleRequirement(min=2, max=2, columns=(ID_COLUMN,))},
    outputs=outputs,
    learns=learns,
    description="ECDH private set intersection (X25519): the intersection or only its size",
    plan=plan,
    resumable=True,
)
