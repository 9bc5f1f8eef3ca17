"""What a deviating party can try in ``psi_multi``, between real nodes over mTLS.

Three nodes (bank as leader, tax and registry as members) run in this process, each with its own
gRPC server, mailbox, policy and audit log. Every node's registry wraps the ``psi_multi`` roles so
that one party of one job deviates: the test names the job (by its purpose) and the party, and
that party's role runs with a context that changes, adds or drops what it sends, substitutes its
input, and keeps a copy of what it receives and of its own saved secret. Every other party runs
the protocol unchanged. The attacks are those of ``docs/protocols/psi-multi.md``, "What a
deviating party can do":

* input substitution (inherent): a member that brings the leader's set reveals to the leader its
  intersection with the other member, exactly what the ideal functionality gives on that input;
* a curious leader that keeps every message it receives finds no pairwise intersection in them;
* a leader that probes the members' OPRF keys with invalid or repeated points gets no answer;
* a member that sends a hint of another shape than its set size fixes is refused; one that sends
  a random hint removes ids from the intersection but adds none;
* a member with a low-order zero-sharing key is refused by the other member;
* a leader that names an id outside the intersection is refused unless it guessed an id the
  member holds (result integrity is out of scope of this semi-honest protocol);
* a member that parks messages under other tags, or sends more than the plan, is refused at the
  leader's mailbox.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from bund.compute import mpsi
from bund.parties.data import Table
from bund.parties.jobs import JobContext, JobSpec, Participant, ProtocolDef, Result, RoleFn
from bund.parties.lifecycle.states import JobState, JobStatus
from bund.parties.protocols import PROTOCOLS, psi_multi
from tests.conftest import Federation, NodeFactory
from tests.integration.test_node import wait_final
from tests.protocols.test_psi_multi import leader_view, two_inputs, zero_xor_counts

pytestmark = pytest.mark.integration

PARTIES = ("bank", "tax", "registry")
IDS = [f"91310000MA{i:08d}" for i in range(300)]
SETS = {"bank": IDS[:200], "tax": IDS[50:250], "registry": IDS[::2]}
#: The ids all three hold: the even ids from 50 to 198.
COMMON = [v for v in SETS["bank"] if v in set(SETS["tax"]) & set(SETS["registry"])]

#: What one deviating role sends instead of one message: (tag, payload) pairs, in order.
Tamper = Callable[[JobContext, str, str, bytes], list[tuple[str, bytes]]]


def honest(ctx: JobContext, to: str, tag: str, payload: bytes) -> list[tuple[str, bytes]]:
    return [(tag, payload)]


@dataclass
class Attack:
    """How one party deviates in one job, and what it saw.

    Attributes:
        tamper: Replaces each message the party sends.
        ids: The input it brings instead of its dataset's ids (None: its own).
        received: Every message it received: sender, tag, payload.
        saved: What it saved in its resume store, by name (its job secret).
    """

    tamper: Tamper = honest
    ids: Sequence[str] | None = None
    received: list[tuple[str, str, bytes]] = field(default_factory=list)
    saved: dict[str, bytes] = field(default_factory=dict)


#: The deviating party of each job: (purpose, party) -> its attack.
ATTACKS: dict[tuple[str, str], Attack] = {}


class DeviatingContext:
    """A ``JobContext`` through which one role deviates as its :class:`Attack` says."""

    def __init__(self, ctx: JobContext, attack: Attack) -> None:
        self._ctx, self._attack = ctx, attack

    def send(self, to: str, tag: str, payload: bytes) -> None:
        for sent_tag, sent in self._attack.tamper(self._ctx, to, tag, payload):
            self._ctx.send(to, sent_tag, sent)

    def recv(self, frm: str, tag: str) -> bytes:
        payload = self._ctx.recv(frm, tag)
        self._attack.received.append((frm, tag, payload))
        return payload

    def table(self) -> Table:
        if self._attack.ids is None:
            return self._ctx.table()
        column = self._ctx.spec.participant(self._ctx.party).columns[psi_multi.ID_COLUMN]
        return Table.from_columns("substituted", {column: list(self._attack.ids)})

    def save_state(self, name: str, data: bytes) -> None:
        self._attack.saved[name] = data
        self._ctx.save_state(name, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def deviating(role: RoleFn) -> RoleFn:
    """``role``, run through a :class:`DeviatingContext` where the job names this party."""

    def run(ctx: JobContext) -> Result | None:
        attack = ATTACKS.get((ctx.spec.purpose, ctx.party))
        return role(ctx if attack is None else DeviatingContext(ctx, attack))  # type: ignore[arg-type]

    return run


REGISTRY: dict[str, ProtocolDef] = {
    **PROTOCOLS,
    "psi_multi": dataclasses.replace(
        psi_multi.DEFINITION,
        roles={r: deviating(fn) for r, fn in psi_multi.DEFINITION.roles.items()},
    ),
}


@pytest.fixture(scope="module")
def nodes(
    federation: Federation, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeFactory]:
    """The three nodes, each with its ids and the two inputs of the curious-leader test."""
    factory = NodeFactory(federation, tmp_path_factory.mktemp("psi-multi-attacks"))
    a, b = two_inputs()
    try:
        for party in PARTIES:
            datasets = {"ids": SETS[party], "view_a": a[party], "view_b": b[party]}
            factory.start(
                party,
                {name: {"company_id": ids} for name, ids in datasets.items()},
                [p for p in PARTIES if p != party],
                dict.fromkeys(datasets, ["psi_multi"]),
                registry=REGISTRY,
            )
        yield factory
    finally:
        factory.stop_all()
        ATTACKS.clear()


def spec(purpose: str, receivers: Sequence[str] = PARTIES, dataset: str = "ids") -> JobSpec:
    return JobSpec(
        protocol="psi_multi",
        participants=(
            Participant("bank", "leader", dataset, {"id": "company_id"}),
            *(Participant(m, "member", dataset, {"id": "company_id"}) for m in PARTIES[1:]),
        ),
        receivers=tuple(receivers),
        purpose=purpose,
        requester="bank",
        params={"mode": "intersection"},
    )


def run(
    f: NodeFactory, purpose: str, attacker: str, attack: Attack, **kw: Any
) -> tuple[str, dict[str, JobStatus]]:
    """Submit a job in which ``attacker`` deviates; every party's final status."""
    ATTACKS[(purpose, attacker)] = attack
    with f.client("bank") as bank:
        job_id = bank.submit(spec(purpose, **kw))
    statuses = {}
    for party in PARTIES:
        with f.client(party) as c:
            statuses[party] = wait_final(c, job_id, timeout=120)
    return job_id, statuses


def intersection(f: NodeFactory, party: str, job_id: str) -> list[str]:
    with f.client(party) as c:
        payload = c.result(job_id).artifacts["intersection.csv"]
    return [line for line in payload.decode().split("\n")[1:] if line]


def test_a_member_bringing_the_leaders_set_reveals_what_the_ideal_functionality_would(
    nodes: NodeFactory,
) -> None:
    """Input substitution is inherent: the tax bureau, colluding with the bank, brings the bank's
    ids, and the bank learns its intersection with the registry (a pairwise intersection). The
    run gives exactly the ideal functionality's output on the substituted inputs, to every
    receiver, and nothing beyond it."""
    job_id, statuses = run(nodes, "attack: substituted input", "tax", Attack(ids=SETS["bank"]))
    assert all(s.state is JobState.SUCCEEDED for s in statuses.values()), statuses
    pairwise = [v for v in SETS["bank"] if v in set(SETS["registry"])]
    assert len(pairwise) == 100 and len(COMMON) == 75  # more than the honest intersection
    assert intersection(nodes, "bank", job_id) == pairwise
    assert intersection(nodes, "registry", job_id) == pairwise  # the registry's own order
    assert intersection(nodes, "tax", job_id) == pairwise


def test_a_curious_leader_finds_no_pairwise_intersection_in_what_it_receives(
    nodes: NodeFactory,
) -> None:
    """The bank keeps every message it receives and its job secret, and recomputes each member's
    values at its ids, as in the in-memory leak test, on two inputs with the same full
    intersection and swapped pairwise ones (150 and 100 ids): only both members' values together
    XOR to zero, at the 50 common ids, and the counts are the same for both inputs."""
    a, _ = two_inputs()
    counts = {}
    for dataset in ("view_a", "view_b"):
        purpose = f"attack: curious leader {dataset}"
        attack = Attack()
        job_id, statuses = run(nodes, purpose, "bank", attack, receivers=("bank",), dataset=dataset)
        assert statuses["bank"].state is JobState.SUCCEEDED, statuses["bank"].error
        assert len(intersection(nodes, "bank", job_id)) == 50
        held = statuses["bank"].spec
        assert held is not None
        items = [v.encode() for v in a["bank"]]  # the bank's ids are the same in both inputs
        secret = attack.saved["psi_multi.secret"]
        counts[dataset] = zero_xor_counts(leader_view(attack.received, secret, held, items))
    assert counts["view_a"] == {("registry",): 0, ("tax",): 0, ("registry", "tax"): 50}
    assert counts["view_b"] == counts["view_a"]


def _first_point(change: Callable[[bytes], bytes]) -> Tamper:
    def tamper(ctx: JobContext, to: str, tag: str, payload: bytes) -> list[tuple[str, bytes]]:
        return [(tag, change(payload) if tag == "mpsi/query/0" else payload)]

    return tamper


@pytest.mark.parametrize(
    ("probe", "change", "refusal"),
    [
        # A point on the twist: multiplied by the key, it would leak the key modulo small primes.
        ("twist", lambda p: (2).to_bytes(32, "little") + p[32:], "twist"),
        # A point of low order (the identity): the answer would be independent of the input.
        ("low order", lambda p: bytes(32) + p[32:], "order"),
        # One point twice: answers that match would tell the bank the member's key is the same.
        ("repeat", lambda p: p[:32] + p[:32] + p[64:], "repeat"),
    ],
)
def test_a_leader_probing_the_oprf_with_bad_points_gets_no_answer(
    nodes: NodeFactory, probe: str, change: Callable[[bytes], bytes], refusal: str
) -> None:
    attack = Attack(tamper=_first_point(change))
    _, statuses = run(nodes, f"attack: query with a {probe} point", "bank", attack)
    assert not [tag for _, tag, _ in attack.received if "/answer/" in tag]
    # Each member refuses the query, unless the first refusal's abort reached it first.
    refused = [m for m in ("tax", "registry") if statuses[m].state is JobState.FAILED]
    assert refused, statuses
    for member in ("tax", "registry"):
        status = statuses[member]
        if member in refused:
            assert refusal in (status.error or "").lower(), (member, status.error)
        else:
            assert status.state is JobState.ABORTED, (member, status)
    assert statuses["bank"].state is not JobState.SUCCEEDED


def _hint_header(change: Callable[[bytes], bytes]) -> Tamper:
    def tamper(ctx: JobContext, to: str, tag: str, payload: bytes) -> list[tuple[str, bytes]]:
        return [(tag, change(payload) if tag == "mpsi/hint" else payload)]

    return tamper


def _more_positions(header: bytes) -> bytes:
    starts = int.from_bytes(header[16:24], "big")
    return header[:16] + (starts + 1000).to_bytes(8, "big") + header[24:]


@pytest.mark.parametrize(
    ("shape", "change"),
    [
        # A band one bit narrower: an encoding that fails more often than 2^-40.
        ("narrower band", lambda h: h[:7] + bytes([h[7] - 1]) + h[8:]),
        # A longer table: room to encode more ids than the set size the member announced.
        ("longer table", _more_positions),
    ],
)
def test_a_member_whose_hint_has_another_shape_is_refused(
    nodes: NodeFactory, shape: str, change: Callable[[bytes], bytes]
) -> None:
    _, statuses = run(
        nodes, f"attack: hint with a {shape}", "tax", Attack(tamper=_hint_header(change))
    )
    bank = statuses["bank"]
    assert bank.state is JobState.FAILED, bank
    assert "hint's shape" in (bank.error or ""), bank.error
    assert all(s.state is not JobState.SUCCEEDED for s in statuses.values())


def test_a_random_hint_removes_ids_from_the_intersection_but_adds_none(nodes: NodeFactory) -> None:
    """A member can distort the result, never create a match (2^-128 per id)."""

    def random_cells(ctx: JobContext, to: str, tag: str, payload: bytes) -> list[tuple[str, bytes]]:
        return [(tag, os.urandom(len(payload)) if tag.startswith("mpsi/hint/") else payload)]

    job_id, statuses = run(nodes, "attack: random hint", "tax", Attack(tamper=random_cells))
    assert all(s.state is JobState.SUCCEEDED for s in statuses.values()), statuses
    for receiver in PARTIES:
        assert intersection(nodes, receiver, job_id) == []


def test_a_low_order_zero_sharing_key_is_refused_by_the_other_member(nodes: NodeFactory) -> None:
    def zero_key(ctx: JobContext, to: str, tag: str, payload: bytes) -> list[tuple[str, bytes]]:
        return [(tag, bytes(32) if tag == "mpsi/zs" else payload)]

    _, statuses = run(nodes, "attack: low-order zero-sharing key", "tax", Attack(tamper=zero_key))
    registry = statuses["registry"]
    assert registry.state is JobState.FAILED, registry
    assert "order" in (registry.error or "").lower(), registry.error
    assert statuses["bank"].state is not JobState.SUCCEEDED


def _extra_result_id(extra: str) -> Tamper:
    def tamper(ctx: JobContext, to: str, tag: str, payload: bytes) -> list[tuple[str, bytes]]:
        if tag != "mpsi/result" or to != "registry":
            return [(tag, payload)]
        (added,) = mpsi.result_tags([extra.encode()], bytes.fromhex(ctx.spec.digest()))
        tags = [payload[i : i + 16] for i in range(9, len(payload), 16)]
        return [(tag, mpsi.encode_tags([*tags, added]))]

    return tamper


def test_a_leader_naming_an_id_the_member_does_not_hold_is_refused(nodes: NodeFactory) -> None:
    outside = IDS[1]  # the bank's, odd: not the registry's
    attack = Attack(tamper=_extra_result_id(outside))
    _, statuses = run(nodes, "attack: result names a foreign id", "bank", attack)
    registry = statuses["registry"]
    assert registry.state is JobState.FAILED, registry
    assert "does not hold" in (registry.error or ""), registry.error


def test_a_leader_naming_a_guessed_id_of_the_member_is_not_detected(nodes: NodeFactory) -> None:
    """Result integrity is out of scope (the doc says so): a leader that guesses an id the member
    holds can add it to the member's result. It learns nothing by doing so."""
    guessed = IDS[0]  # the bank's and the registry's, not the tax bureau's
    attack = Attack(tamper=_extra_result_id(guessed))
    job_id, statuses = run(nodes, "attack: result names a guessed id", "bank", attack)
    assert all(s.state is JobState.SUCCEEDED for s in statuses.values()), statuses
    assert intersection(nodes, "registry", job_id) == [guessed, *COMMON]
    assert intersection(nodes, "tax", job_id) == COMMON


@pytest.mark.parametrize("how", ["under a tag no role takes", "more messages than the plan"])
def test_a_member_cannot_park_or_flood_messages_at_the_leader(nodes: NodeFactory, how: str) -> None:
    def flood(ctx: JobContext, to: str, tag: str, payload: bytes) -> list[tuple[str, bytes]]:
        if tag != "mpsi/hint/0":
            return [(tag, payload)]
        if how == "under a tag no role takes":
            return [(tag, payload), ("mpsi/parked", b"stored at the leader's node")]
        return [(tag, payload), *((f"mpsi/hint/{i}", bytes(16)) for i in range(1, 12))]

    _, statuses = run(nodes, f"attack: messages {how}", "tax", Attack(tamper=flood))
    tax = statuses["tax"]
    assert tax.state is JobState.FAILED, tax
    assert "refused" in (tax.error or ""), tax.error
