"""Multi-party PSI (``psi_multi``): who sends what to whom (the maths is in ``bund.compute.mpsi``).

One ``leader`` and two or more ``member`` participants, each binding the logical column ``id``.
The leader learns which of its ids every member holds, and sends that intersection to the
members that are receivers; no party learns a pairwise intersection, and members learn nothing
about each other. The parameter ``mode`` is required and takes one value, ``"intersection"``.
Messages, all under this job (``docs/protocols/psi-multi.md`` has layouts, sizes and what each
role learns):

1. ``mpsi/header`` leader <-> each member: PSI ``SetHeader`` (set size, the largest set accepted);
   both refuse an oversized set before any point is sent.
2. ``mpsi/zs`` member -> every other member: an ephemeral X25519 public key (zero-sharing).
3. ``mpsi/query/<i>`` leader -> each member: the leader's ids hashed and blinded, ``r·H(y)``,
   sorted, in chunks (the same to every member).
4. ``mpsi/answer/<i>`` member -> leader: ``k·r·H(y)``, in the order received.
5. ``mpsi/hint`` and ``mpsi/hint/<i>`` member -> leader: the OKVS of the member's OPPRF values
   masked by its zero-share (header, then cells in chunks).
6. ``mpsi/result`` leader -> each receiving member: the tags of the common ids.

The choreography functions (:func:`lead`, :func:`follow`, :func:`send_result`,
:func:`recv_result`) take a tag prefix, so the vertical protocols' alignment runs the same
exchange under ``align/mpsi``. Every party saves its one job secret before its first message
(write-ahead); a resumed party runs again from the start and re-sends identical bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from bund.compute import mpsi, okvs
from bund.compute.errors import InvalidMessageError
from bund.compute.psi import (
    MAX_CHUNK_POINTS,
    POINT_SIZE,
    Disclosure,
    NormalisedIds,
    SetHeader,
    blind,
    hash_and_blind,
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
from bund.parties.protocols.psi import (
    LIMIT_MAX_SET_SIZE,
    check_own_set,
    exchange_headers,
    ids_csv,
)
from bund.parties.transport import MessagePlan

LEADER = "leader"
MEMBER = "member"
ID_COLUMN = "id"
#: Most members of one job (each pair of members exchanges one key).
MAX_MEMBERS = 16
#: The tag prefix of the protocol's own messages.
PREFIX = "mpsi"
_STATE = "psi_multi.secret"


@dataclass(frozen=True)
class Tags:
    """The mailbox tags of one multi-party PSI exchange, under a prefix."""

    prefix: str

    @property
    def header(self) -> str:
        """Message 1: the set header."""
        return f"{self.prefix}/header"

    @property
    def zero_sharing(self) -> str:
        """Message 2: a member's zero-sharing public key."""
        return f"{self.prefix}/zs"

    def query(self, i: int) -> str:
        """Message 3, chunk ``i``: the leader's blinded ids."""
        return f"{self.prefix}/query/{i}"

    def answer(self, i: int) -> str:
        """Message 4, chunk ``i``: a member's answers."""
        return f"{self.prefix}/answer/{i}"

    @property
    def hint(self) -> str:
        """Message 5: the header of a member's hint."""
        return f"{self.prefix}/hint"

    def hint_cells(self, i: int) -> str:
        """Message 5, chunk ``i``: the cells of a member's hint."""
        return f"{self.prefix}/hint/{i}"

    @property
    def result(self) -> str:
        """Message 6: the common ids' tags."""
        return f"{self.prefix}/result"

    def patterns(self) -> tuple[str, ...]:
        """Every tag of the exchange, as the regular expressions of a ``MessagePlan``."""
        p = re.escape(self.prefix)
        return tuple(
            f"{p}/{rest}"
            for rest in ("header", "zs", r"query/\d+", r"answer/\d+", "hint", r"hint/\d+", "result")
        )


def load_secret(ctx: JobContext, name: str) -> mpsi.MpsiSecret:
    """This party's job secret: fresh, and saved (sealed) before anything it determines is sent."""
    saved = ctx.load_state(name)
    if saved is not None:
        return mpsi.MpsiSecret.from_resume_state(saved)
    secret = mpsi.create_mpsi_secret()
    ctx.save_state(name, secret.export_for_resume())
    return secret


def _context(ctx: JobContext) -> bytes:
    return bytes.fromhex(ctx.spec.digest())


def _set_header(size: int, cap: int) -> SetHeader:
    return SetHeader(Disclosure.INTERSECTION, size, cap, MAX_CHUNK_POINTS)


def _send_points(ctx: JobContext, to: str, tag_of: Iterable[str], points: Sequence[bytes]) -> None:
    starts = range(0, len(points), MAX_CHUNK_POINTS)
    for tag, start in zip(tag_of, starts, strict=False):
        ctx.send(to, tag, b"".join(points[start : start + MAX_CHUNK_POINTS]))


@dataclass(frozen=True)
class LeaderOutcome:
    """What the leader learns.

    Attributes:
        common: Positions (in the leader's ids) of the ids every member holds, in ascending
            order of the ids.
        member_set_sizes: Each member's set size, from its header.
    """

    common: list[int]
    member_set_sizes: dict[str, int]


def lead(
    ctx: JobContext,
    items: Sequence[bytes],
    members: Sequence[str],
    tags: Tags,
    cap: int,
    secret: mpsi.MpsiSecret,
) -> LeaderOutcome:
    """The leader's side: query every member's OPRF, decode every hint, keep the zero XORs.

    Raises:
        SetTooLargeError: If a set is over a node's ``psi_max_set_size``.
        InvalidMessageError: If a header, hint or chunk is malformed.
        InvalidPointError: If a member's answers fail validation.
    """
    context, executor = _context(ctx), ctx.executor
    own = _set_header(len(items), cap)
    headers = {m: exchange_headers(ctx, m, tags.header, own) for m in members}
    blinds = mpsi.query_blind(secret)
    query: list[bytes] = []
    for start in range(0, len(items), MAX_CHUNK_POINTS):
        query += blinds.blind_items(items[start : start + MAX_CHUNK_POINTS], context, executor)
        ctx.progress("query", len(query), len(items))
    order = sorted_order(query)
    sent = [query[j] for j in order]
    for member in members:
        _send_points(ctx, member, map(tags.query, range(len(own.chunk_sizes))), sent)
    by_query = [items[j] for j in order]
    shares: list[okvs.Values] = []
    for done, member in enumerate(members, 1):
        seen: set[bytes] = set()
        oprf: list[bytes] = []
        for i, count in enumerate(own.chunk_sizes):
            # Full validation (the twist check too): these points are multiplied by our secret.
            answers = validate_points(ctx.recv(member, tags.answer(i)), count, seen)
            oprf += blinds.unblind(answers, executor)
        table, params = _recv_hint(ctx, member, tags, headers[member].set_size)
        decoded = okvs.decode(table, by_query, params)
        shares.append(decoded ^ mpsi.oprf_values(by_query, oprf))
        ctx.progress("decode", done, len(members))
    found = [order[j] for j in mpsi.matches(shares)] if members else []
    common = sorted(found, key=items.__getitem__)
    return LeaderOutcome(common, {m: h.set_size for m, h in headers.items()})


def _recv_hint(
    ctx: JobContext, member: str, tags: Tags, keys: int
) -> tuple[okvs.Values, okvs.OkvsParams]:
    params = mpsi.decode_hint_header(ctx.recv(member, tags.hint), keys)
    parts: list[bytes] = []
    for i, count in enumerate(mpsi.hint_chunk_sizes(params)):
        payload = ctx.recv(member, tags.hint_cells(i))
        if len(payload) != okvs.VALUE_BYTES * count:
            raise InvalidMessageError(
                f"{member}'s hint chunk {i} holds {len(payload)} bytes, not {count} cells of "
                f"{okvs.VALUE_BYTES}"
            )
        parts.append(payload)
    return okvs.table_from_bytes(b"".join(parts), params.columns), params


def follow(
    ctx: JobContext,
    items: Sequence[bytes],
    leader: str,
    members: Sequence[str],
    tags: Tags,
    cap: int,
    secret: mpsi.MpsiSecret,
) -> int:
    """A member's side: answer the leader's query, then send the hint. Returns the leader's size.

    Raises:
        SetTooLargeError: If a set is over a node's ``psi_max_set_size``.
        InvalidMessageError: If the leader's header is malformed.
        InvalidPointError: If the leader's query or a member's key fails validation.
    """
    context, executor, me = _context(ctx), ctx.executor, ctx.party
    header = exchange_headers(ctx, leader, tags.header, _set_header(len(items), cap))
    others = [m for m in members if m != me]
    sharing = mpsi.ZeroSharingKey(secret)
    for other in others:
        ctx.send(other, tags.zero_sharing, sharing.public_bytes())
    key = mpsi.oprf_key(secret)
    seen: set[bytes] = set()
    done = 0
    for i, count in enumerate(header.chunk_sizes):
        # Full validation: we multiply these points by our OPRF key.
        query = validate_points(ctx.recv(leader, tags.query(i)), count, seen)
        ctx.send(leader, tags.answer(i), b"".join(blind(query, key, executor)))
        done += count
        ctx.progress("answer", done, header.set_size)
    seeds = [sharing.pairwise_seed(ctx.recv(o, tags.zero_sharing), context, me, o) for o in others]
    points: list[bytes] = []
    for start in range(0, len(items), MAX_CHUNK_POINTS):
        points += hash_and_blind(items[start : start + MAX_CHUNK_POINTS], context, key, executor)
        ctx.progress("evaluate", len(points), len(items))
    values = mpsi.oprf_values(items, points) ^ mpsi.zero_shares(items, seeds)
    params, table = mpsi.encode_hint(items, values, secret, b"hint")
    ctx.send(leader, tags.hint, mpsi.encode_hint_header(params))
    cells = okvs.table_to_bytes(table)
    step = okvs.VALUE_BYTES * mpsi.HINT_CHUNK_CELLS
    for i, start in enumerate(range(0, len(cells), step)):
        ctx.send(leader, tags.hint_cells(i), cells[start : start + step])
    return header.set_size


def send_result(
    ctx: JobContext, member: str, tags: Tags, items: Sequence[bytes], common: Sequence[int]
) -> None:
    """Tell ``member`` the common ids, as tags, in the order of ``common``."""
    chosen = [items[i] for i in common]
    ctx.send(member, tags.result, mpsi.encode_tags(mpsi.result_tags(chosen, _context(ctx))))


def recv_result(ctx: JobContext, leader: str, tags: Tags, items: Sequence[bytes]) -> list[int]:
    """Positions in ``items`` of the common ids the leader names, in its order.

    Raises:
        InvalidMessageError: If the result names an id this member does not hold, or one twice.
    """
    own_tags = mpsi.result_tags(items, _context(ctx))
    return mpsi.decode_tags(ctx.recv(leader, tags.result), own_tags)


# --- the protocol -----------------------------------------------------------------------------


def _own_ids(ctx: JobContext) -> tuple[NormalisedIds, int]:
    column = ctx.spec.participant(ctx.party).columns[ID_COLUMN]
    ids = normalise_ids(ctx.table().column(column))
    return ids, check_own_set(ctx, column, len(ids.items))


def roles(spec: JobSpec) -> tuple[str, list[str]]:
    """The leader's name and the members' names in spec order."""
    (leader,) = (p.party for p in spec.participants if p.role == LEADER)
    return leader, [p.party for p in spec.participants if p.role == MEMBER]


def _result(ids: NormalisedIds, common: Iterable[int], parties: int) -> Result:
    in_order = sorted(common)  # the positions of normalised ids follow the dataset's order
    return Result(
        {
            "mode": Disclosure.INTERSECTION.value,
            "intersection_size": len(in_order),
            "own_set_size": len(ids.items),
            "parties": parties,
        },
        {"intersection.csv": ids_csv(ids.items[k] for k in in_order)},
    )


def _record(ctx: JobContext, role: str, ids: NormalisedIds, result: Result | None) -> None:
    ctx.record(
        "psi_multi.finished",
        {
            "role": role,
            "own_set_size": len(ids.items),
            "blank_ids_skipped": ids.blanks,
            "duplicate_ids_dropped": ids.duplicates,
            "receiver": result is not None,
            "intersection_size": None if result is None else result.summary["intersection_size"],
        },
    )


def run_leader(ctx: JobContext) -> Result:
    """Run the leader: it always receives the intersection, and sends it to receiving members.

    Raises:
        SetTooLargeError: If a set is over a node's ``psi_max_set_size``.
        InvalidMessageError: If a member's header or hint is malformed.
        InvalidPointError: If a member's answers fail validation.
    """
    spec = ctx.spec
    ids, cap = _own_ids(ctx)
    leader, members = roles(spec)
    secret = load_secret(ctx, _STATE)
    tags = Tags(PREFIX)
    outcome = lead(ctx, ids.items, members, tags, cap, secret)
    for member in members:
        if member in spec.receivers:
            send_result(ctx, member, tags, ids.items, outcome.common)
    result = _result(ids, outcome.common, len(spec.parties))
    _record(ctx, LEADER, ids, result)
    return result


def run_member(ctx: JobContext) -> Result | None:
    """Run a member; a receiving member gets the intersection of its own ids, the others nothing.

    Raises:
        SetTooLargeError: If a set is over a node's ``psi_max_set_size``.
        InvalidMessageError: If the leader's header or result is malformed.
        InvalidPointError: If the leader's query or a member's key fails validation.
    """
    spec = ctx.spec
    ids, cap = _own_ids(ctx)
    leader, members = roles(spec)
    secret = load_secret(ctx, _STATE)
    tags = Tags(PREFIX)
    follow(ctx, ids.items, leader, members, tags, cap, secret)
    result = None
    if ctx.party in spec.receivers:
        result = _result(ids, recv_result(ctx, leader, tags, ids.items), len(spec.parties))
    _record(ctx, MEMBER, ids, result)
    return result


class PsiMultiParams(ProtocolParams):
    """The parameters of a multi-party PSI job."""

    mode: Literal["intersection"] = Field(
        description=(
            "the disclosure level, with no default because it is a choice: 'intersection' (the "
            "leader and each receiving member learn which of their own ids every party holds); "
            "no other level is offered"
        )
    )


def outputs(spec: JobSpec) -> frozenset[str]:
    """The intersection, and per direction the membership it reveals (``policy.OUTPUTS``).

    Each receiver learns, for its own ids, whether every other party holds them.
    """
    PsiMultiParams.of(spec)
    revealed = {
        membership_output(owner, learner)
        for learner in spec.receivers
        for owner in spec.parties
        if owner != learner
    }
    return frozenset({"intersection", *revealed})


def learns(spec: JobSpec) -> dict[str, str]:
    """What each party learns, as ``docs/protocols/psi-multi.md`` states it."""
    leader, members = roles(spec)
    out = {
        leader: (
            "which of its own ids every member holds (the intersection), and each member's set "
            "size; never which member holds an id outside the intersection (no pairwise "
            "intersection)"
        )
    }
    for m in members:
        if m in spec.receivers:
            out[m] = (
                f"which of its own ids {leader} and every other member hold (the intersection), "
                f"and {leader}'s set size; nothing about another member's set, not even its size"
            )
        else:
            out[m] = f"{leader}'s set size; nothing about any other party's ids"
    return out


def plan(spec: JobSpec, party: str, limits: Mapping[str, int]) -> MessagePlan:
    """What one peer may send: the most the leader receives from a member, and no other tags.

    A member sends the leader a header, the answers to its query (capped set) and a hint for at
    most a capped set; the leader sends a member less (header, query, result); members send
    each other one key.
    """
    cap = limits[LIMIT_MAX_SET_SIZE]
    point_chunks = -(-cap // MAX_CHUNK_POINTS)
    columns = okvs.okvs_params(cap, bytes(okvs.SEED_BYTES)).columns
    hint_chunks = -(-columns // mpsi.HINT_CHUNK_CELLS)
    return MessagePlan(
        max_messages=2 + point_chunks + hint_chunks,
        max_bytes=4096 + POINT_SIZE * cap + okvs.VALUE_BYTES * columns,
        tags=Tags(PREFIX).patterns(),
    )


DEFINITION = ProtocolDef(
    name="psi_multi",
    version="1",
    roles={LEADER: run_leader, MEMBER: run_member},
    params=PsiMultiParams,
    role_requirements={
        LEADER: RoleRequirement(
            columns=(ID_COLUMN,),
            receives=True,
            who="the party that learns the intersection",
        ),
        MEMBER: RoleRequirement(
            min=2,
            max=MAX_MEMBERS,
            columns=(ID_COLUMN,),
            who="each other party",
            why="three or more parties in all; between two, use psi",
        ),
    },
    outputs=outputs,
    learns=learns,
    description=(
        "multi-party PSI (OPPRF and zero-sharing over X25519): the intersection of every set, "
        "and no pairwise intersection"
    ),
    plan=plan,
    resumable=True,
)
