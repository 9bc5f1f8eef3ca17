"""Multi-party PSI over the in-memory transport: plaintext results, the plan, resume, leaks.

The leak tests read the leader's view the way a curious leader would: from the messages it
received and its own saved secret, it recomputes every member's value ``Ŝ_i(y)`` at each of its
ids, and looks for anything that depends on a pairwise intersection.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.compute import mpsi, okvs, psi
from bund.compute.errors import InvalidMessageError, InvalidPointError, SetTooLargeError
from bund.parties.data import Table
from bund.parties.jobs import (
    InvalidJobSpecError,
    JobContext,
    JobSpec,
    MemoryResumeStates,
    Participant,
    Result,
    new_job_id,
    run_in_memory,
)
from bund.parties.protocols import PROTOCOLS, psi_multi
from bund.parties.protocols.psi import exchange_headers
from bund.parties.transport import InMemoryNetwork

LIMITS = {"psi_max_set_size": 100_000}
POOL = ["91310000MA1FL0001", " 91310000MA1FL0002", "abc", "ABC", "公司-7", "", "a,b", 'q"t']
ids = st.lists(st.sampled_from(POOL) | st.text(max_size=3), max_size=10)


def make_spec(parties: Sequence[str], receivers: Sequence[str] | None = None) -> JobSpec:
    leader, *members = parties
    parts = (Participant(leader, "leader", "d", {"id": "id"}),) + tuple(
        Participant(m, "member", "d", {"id": "id"}) for m in members
    )
    return JobSpec(
        "psi_multi",
        parts,
        tuple(receivers or (leader,)),
        "one cohort for three parties",
        leader,
        {"mode": "intersection"},
        job_id=new_job_id(),
    )


def tables(sets: Mapping[str, Sequence[str]]) -> dict[str, Table]:
    return {p: Table.from_columns("d", {"id": list(v)}) for p, v in sets.items()}


def plaintext(values: Sequence[str]) -> set[str]:
    return {v.strip() for v in values if v.strip()}


def csv_ids(result: Result) -> list[str]:
    import csv
    import io

    rows = list(csv.reader(io.StringIO(result.artifacts["intersection.csv"].decode(), newline="")))
    assert rows[0] == ["id"]
    return [r[0] for r in rows[1:]]


@settings(max_examples=20, deadline=None)
@given(st.lists(ids, min_size=3, max_size=4), st.data())
def test_matches_plaintext_with_three_and_four_parties(
    sets: list[list[str]], data: st.DataObject
) -> None:
    parties = ["bank", "tax", "registry", "insurer"][: len(sets)]
    receivers = ["bank"] + data.draw(st.lists(st.sampled_from(parties[1:]), unique=True))
    spec = make_spec(parties, receivers)
    own = dict(zip(parties, sets, strict=True))
    results = run_in_memory(spec, psi_multi.DEFINITION, tables(own), LIMITS)
    expected = set.intersection(*(plaintext(v) for v in sets))
    for party, result in results.items():
        if party not in receivers:
            assert result is None
            continue
        assert result is not None
        assert result.summary == {
            "mode": "intersection",
            "intersection_size": len(expected),
            "own_set_size": len(plaintext(own[party])),
            "parties": len(parties),
        }
        got = csv_ids(result)
        assert set(got) == expected and len(got) == len(expected)
        # In the receiver's own dataset order.
        order = [v.strip() for v in own[party] if v.strip() in expected]
        assert got == list(dict.fromkeys(order))


def four_sets(n: int = 200) -> dict[str, list[str]]:
    ids_ = [f"91310000MA{i:08d}" for i in range(4 * n)]
    return {
        "bank": ids_[: 2 * n],
        "tax": ids_[n // 2 : 3 * n],
        "registry": ids_[::2],
        "insurer": ids_[n // 4 : n] + ids_[2 * n :],
    }


def test_chunks_and_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psi_multi, "MAX_CHUNK_POINTS", 7)
    monkeypatch.setattr(mpsi, "HINT_CHUNK_CELLS", 16)
    sets = {p: v[:40] for p, v in four_sets(20).items()}
    spec = make_spec(list(sets), ["bank", "registry"])
    net = InMemoryNetwork(list(sets))
    results = run_in_memory(spec, psi_multi.DEFINITION, tables(sets), LIMITS, net)
    expected = set.intersection(*(set(v) for v in sets.values()))
    assert {r.summary["intersection_size"] for r in results.values() if r} == {len(expected)}
    tags = {tag for *_, tag, _ in net.captured}
    assert {"mpsi/query/5", "mpsi/answer/5", "mpsi/hint/3"} <= tags
    assert "mpsi/query/6" not in tags
    assert max(len(p) for *_, tag, p in net.captured if "query" in tag) <= 7 * 32


def test_every_message_fits_the_plan_and_members_learn_nothing_of_each_other() -> None:
    sets = four_sets()
    spec = make_spec(list(sets), ["bank", "tax"])
    net = InMemoryNetwork(list(sets))
    run_in_memory(spec, psi_multi.DEFINITION, tables(sets), LIMITS, net)
    limits = {"psi_max_set_size": 400}  # every set here is at most 400 ids
    for (sender, receiver), group in itertools.groupby(
        sorted(net.captured, key=lambda c: (c[0], c[1])), key=lambda c: (c[0], c[1])
    ):
        sent = list(group)
        plan = psi_multi.DEFINITION.plan(spec, receiver, limits)
        assert len(sent) <= plan.max_messages
        assert sum(len(p) for *_, p in sent) <= plan.max_bytes
        assert all(plan.allows_tag(tag) for _, _, tag, _ in sent)
        if sender != "bank" and receiver != "bank":
            # Between members: one 32-byte key each way, nothing about either set.
            assert [(t, len(p)) for _, _, t, p in sent] == [("mpsi/zs", 32)]
    assert not psi_multi.DEFINITION.plan(spec, "bank", limits).allows_tag("psi/blinded/0")


def test_spec_shape_is_checked() -> None:
    psi_multi.DEFINITION.validate(make_spec(["bank", "tax", "registry"]))
    assert PROTOCOLS["psi_multi"] is psi_multi.DEFINITION
    with pytest.raises(InvalidJobSpecError, match="use psi"):
        psi_multi.DEFINITION.validate(make_spec(["bank", "tax"]))
    with pytest.raises(InvalidJobSpecError, match="receivers"):
        psi_multi.DEFINITION.validate(
            dataclasses.replace(make_spec(["bank", "tax", "registry"]), receivers=("tax",))
        )
    with pytest.raises(InvalidJobSpecError, match="mode"):
        psi_multi.DEFINITION.validate(
            dataclasses.replace(make_spec(["bank", "tax", "registry"]), params={})
        )
    with pytest.raises(InvalidJobSpecError, match="mode"):
        psi_multi.DEFINITION.validate(
            dataclasses.replace(
                make_spec(["bank", "tax", "registry"]), params={"mode": "cardinality"}
            )
        )


def test_outputs_declare_membership_per_direction_and_learns_names_everyone() -> None:
    spec = make_spec(["bank", "tax", "registry"], ["bank", "registry"])
    assert psi_multi.DEFINITION.outputs(spec) == {
        "intersection",
        "membership:tax>bank",
        "membership:registry>bank",
        "membership:bank>registry",
        "membership:tax>registry",
    }
    learns = psi_multi.DEFINITION.learns(spec)
    assert set(learns) == {"bank", "tax", "registry"}
    assert "no pairwise intersection" in learns["bank"]
    assert learns["tax"] == "bank's set size; nothing about any other party's ids"


def test_an_oversized_set_is_refused_before_any_point_is_sent() -> None:
    sets = {p: v[:50] for p, v in four_sets().items()}
    spec = make_spec(["bank", "tax", "registry"])
    net = InMemoryNetwork(["bank", "tax", "registry"])
    with pytest.raises(SetTooLargeError, match="psi_max_set_size"):
        run_in_memory(
            spec,
            psi_multi.DEFINITION,
            tables({p: sets[p] for p in ("bank", "tax", "registry")}),
            {"psi_max_set_size": 49},
            net,
        )
    assert {tag for *_, tag, _ in net.captured} <= {"mpsi/header", "mpsi/zs"}


def _tampering_network(parties: Sequence[str], tag_pattern: str, change: Any) -> InMemoryNetwork:
    net = InMemoryNetwork(list(parties))
    for box in net.mailboxes.values():
        original = box.put

        def put(job_id: str, frm: str, tag: str, payload: bytes, _orig: Any = original) -> None:
            if re.fullmatch(tag_pattern, tag):
                payload = change(payload)
            _orig(job_id, frm, tag, payload)

        box.put = put  # type: ignore[method-assign]
    return net


@pytest.mark.parametrize(
    ("tag", "change", "error"),
    [
        # A member sends a hint one bit narrower than its set size requires.
        ("mpsi/hint", lambda p: p[:7] + bytes([p[7] - 1]) + p[8:], InvalidMessageError),
        # A hint chunk short by one cell.
        (r"mpsi/hint/0", lambda p: p[:-16], InvalidMessageError),
        # The leader's query carries a twist point (the member would multiply it by its key).
        (r"mpsi/query/0", lambda p: (2).to_bytes(32, "little") + p[32:], InvalidPointError),
        # A member answers with a repeated point.
        (r"mpsi/answer/0", lambda p: p[:32] + p[:32] + p[64:], InvalidPointError),
        # A member's zero-sharing key is of low order.
        ("mpsi/zs", lambda p: bytes(32), InvalidPointError),
        # The leader names an id the member does not hold.
        ("mpsi/result", lambda p: p[:9] + bytes(16) + p[25:], InvalidMessageError),
    ],
)
def test_malformed_messages_stop_the_job(tag: str, change: Any, error: type[Exception]) -> None:
    sets = {p: v for p, v in four_sets(30).items() if p != "insurer"}
    spec = make_spec(list(sets), list(sets))
    net = _tampering_network(list(sets), tag, change)
    with pytest.raises(error):
        run_in_memory(spec, psi_multi.DEFINITION, tables(sets), LIMITS, net)


def test_a_rerun_from_saved_state_sends_identical_bytes_and_the_same_result() -> None:
    """Resumption: every party's job secret is saved before its first message.

    A first run fails mid-way (the registry's first hint chunk is lost in transit), then the
    job runs again from the saved states, as a restarted node would: every message that both
    runs sent is byte-identical (the peers' mailboxes would otherwise refuse it as
    equivocation), and the result is the uninterrupted one.
    """
    sets = four_sets(60)
    spec = make_spec(list(sets), list(sets))
    states = {p: MemoryResumeStates() for p in sets}

    def broken(payload: bytes) -> bytes:
        raise RuntimeError("the link drops")

    first = _tampering_network(list(sets), r"mpsi/hint/0", broken)
    with pytest.raises(RuntimeError):
        run_in_memory(spec, psi_multi.DEFINITION, tables(sets), LIMITS, first, states=states)
    second = InMemoryNetwork(list(sets))
    results = run_in_memory(spec, psi_multi.DEFINITION, tables(sets), LIMITS, second, states=states)
    before = {(s, r, t): p for s, r, t, p in first.captured}
    after = {(s, r, t): p for s, r, t, p in second.captured}
    shared = set(before) & set(after)
    # What the registry's lost hint answered went out in both runs (how much else did before
    # the drop depends on the threads); every message sent twice is byte-identical.
    assert {("bank", "registry", "mpsi/header"), ("bank", "registry", "mpsi/query/0")} <= shared
    assert all(after[k] == before[k] for k in shared)
    expected = set.intersection(*(set(v) for v in sets.values()))
    assert all(set(csv_ids(r)) == expected for r in results.values() if r)
    # A fresh job id gives fresh secrets: no message repeats across jobs.
    other = InMemoryNetwork(list(sets))
    fresh = dataclasses.replace(spec, job_id=new_job_id())
    run_in_memory(fresh, psi_multi.DEFINITION, tables(sets), LIMITS, other)
    assert {p for *_, p in other.captured if len(p) > 64}.isdisjoint(p for *_, p in second.captured)


# --- what the leader can see --------------------------------------------------------------


def leader_view(
    received: Iterable[tuple[str, str, bytes]], secret: bytes, spec: JobSpec, items: list[bytes]
) -> dict[str, np.ndarray]:
    """Each member's ``Ŝ_i(y)`` at each of the leader's ids, recomputed from what it received.

    Exactly the leader's computation (unblind the answers, decode the hint, XOR), done again by
    the test from the messages the leader received (sender, tag, payload, in the order each
    sender sent them) and the leader's own saved secret.
    """
    blinds = mpsi.query_blind(mpsi.MpsiSecret(secret))
    context = bytes.fromhex(spec.digest())
    got: dict[tuple[str, str], list[bytes]] = {}
    for sender, tag, payload in received:
        got.setdefault((sender, tag.split("/")[1]), []).append(payload)
    query = blinds.blind_items(items, context)
    order = psi.sorted_order(query)
    in_order = [items[j] for j in order]
    view: dict[str, np.ndarray] = {}
    for member in [p for p in spec.parties if p != "bank"]:
        answers = b"".join(got[(member, "answer")])
        points = blinds.unblind(psi.validate_points(answers, len(items)))
        header = got[(member, "hint")][0]  # the cells follow the header
        keys = int.from_bytes(header[8:16], "big")
        params = mpsi.decode_hint_header(header, keys)
        table = okvs.table_from_bytes(b"".join(got[(member, "hint")][1:]), params.columns)
        values = okvs.decode(table, in_order, params) ^ mpsi.oprf_values(in_order, points)
        unsorted = np.empty_like(values)
        unsorted[order] = values
        view[member] = unsorted
    return view


def bank_view(
    net: InMemoryNetwork, states: MemoryResumeStates, spec: JobSpec, items: list[bytes]
) -> dict[str, np.ndarray]:
    """:func:`leader_view` of the bank, from the in-memory network and its resume states."""
    raw = states.load(spec.job_id, "bank", "psi_multi.secret")
    assert raw is not None
    received = [(sender, tag, payload) for sender, to, tag, payload in net.captured if to == "bank"]
    return leader_view(received, raw, spec, items)


def zero_xor_counts(view: Mapping[str, np.ndarray]) -> dict[tuple[str, ...], int]:
    """For every non-empty set of members: at how many ids their values XOR to zero."""
    members = sorted(view)
    out = {}
    for k in range(1, len(members) + 1):
        for subset in itertools.combinations(members, k):
            acc = np.bitwise_xor.reduce(np.stack([view[m] for m in subset]), axis=0)
            out[subset] = int((acc == 0).all(axis=1).sum())
    return out


def run_and_view(sets: Mapping[str, list[str]]) -> tuple[dict[str, np.ndarray], Result]:
    spec = make_spec(list(sets))
    net = InMemoryNetwork(list(sets))
    states = MemoryResumeStates()
    all_states = {p: (states if p == "bank" else MemoryResumeStates()) for p in sets}
    results = run_in_memory(
        spec, psi_multi.DEFINITION, tables(sets), LIMITS, net, states=all_states
    )
    items = [v.encode() for v in sets["bank"]]
    result = results["bank"]
    assert result is not None
    return bank_view(net, states, spec, items), result


def two_inputs() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Same leader set and full intersection, different pairwise intersections.

    Leader: ids 0-199. Full intersection: 0-49. In A the tax bureau also holds 50-149 (its
    intersection with the leader is 150 ids) and the registry 150-249 (100 ids in common with the
    leader); in B the two swap. Every member holds 150 ids in both inputs.
    """
    ids_ = [f"91310000MA{i:08d}" for i in range(300)]
    full, low, high = ids_[:50], ids_[50:150], ids_[150:250]
    bank = ids_[:200]
    a = {"bank": bank, "tax": full + low, "registry": full + high}
    b = {"bank": bank, "tax": full + high, "registry": full + low}
    return a, b


def test_the_leaders_view_shows_the_full_intersection_and_no_pairwise_one() -> None:
    a, b = two_inputs()
    counts = {}
    for name, sets in (("A", a), ("B", b)):
        view, result = run_and_view(sets)
        assert result.summary["intersection_size"] == 50
        counts[name] = zero_xor_counts(view)
        # Only all the members together XOR to zero, and exactly at the common ids.
        assert counts[name] == {("registry",): 0, ("tax",): 0, ("registry", "tax"): 50}
        # Each member's values at the leader's ids outside the full intersection: the ids that
        # member holds and those it does not hold give the same bit statistics (fair coins).
        for member in ("tax", "registry"):
            held = set(sets[member])
            outside = range(50, 200)
            groups = [
                [i for i in outside if (sets["bank"][i] in held) is flag] for flag in (True, False)
            ]
            for group in groups:
                bits = np.unpackbits(view[member][group].view(np.uint8), axis=1)
                assert abs(bits.mean() - 0.5) < 5 * np.sqrt(0.25 / bits.size)
            # No value at a held id equals one at an id it does not hold, or repeats.
            flat = {bytes(row) for row in view[member][list(outside)].view(np.uint8)}
            assert len(flat) == len(outside)
    assert counts["A"] == counts["B"]


def test_the_same_look_finds_the_pairwise_intersection_without_zero_sharing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The detector above is not blind: drop the zero-sharing and it reads each pairwise size.

    Without the members' shares, ``Ŝ_i(y) = 0`` exactly where member ``i`` holds ``y``, and the
    same count the secure run keeps at 0 becomes the pairwise intersection of input A.
    """
    monkeypatch.setattr(
        mpsi, "zero_shares", lambda items, seeds: np.zeros((len(items), 2), dtype=np.uint64)
    )
    a, _ = two_inputs()
    view, _ = run_and_view(a)
    counts = zero_xor_counts(view)
    assert counts[("tax",)] == 150 and counts[("registry",)] == 100


def test_the_leaders_view_is_simulated_from_its_input_and_the_output_alone() -> None:
    """A simulator that knows the leader's ids, the members' set sizes and the output, and
    nothing else about any member's ids, plays every member. The real leader runs against it
    unchanged, ends with the true output, and its view has the zero-XOR structure of the real one.

    The simulated members answer with OPRF keys of their own; the tax bureau sends a uniformly
    random hint, and the registry one programmed only at the common ids, so that the values
    there XOR to zero with the tax bureau's.
    """
    a, _ = two_inputs()
    real_view, real = run_and_view(a)
    spec = make_spec(["bank", "tax", "registry"])
    context = bytes.fromhex(spec.digest())
    common = [v.encode() for v in a["bank"][:50]]  # the output: all the simulator learns
    sizes = {m: len(a[m]) for m in ("tax", "registry")}
    keys = {m: mpsi.oprf_key(mpsi.create_mpsi_secret()) for m in sizes}
    oprf = {m: mpsi.oprf_values(common, psi.hash_and_blind(common, context, keys[m])) for m in keys}
    hints: dict[str, tuple[okvs.OkvsParams, np.ndarray]] = {}
    tax = okvs.okvs_params(sizes["tax"], os.urandom(16))
    hints["tax"] = tax, okvs.table_from_bytes(os.urandom(16 * tax.columns), tax.columns)
    at_common = okvs.decode(hints["tax"][1], common, tax) ^ oprf["tax"]
    shape = okvs.okvs_params(sizes["registry"], os.urandom(16))
    programmed = okvs.OkvsParams(len(common), shape.starts, shape.width, shape.seed)
    fill = os.urandom(16 * shape.columns)
    hints["registry"] = shape, okvs.encode(common, oprf["registry"] ^ at_common, programmed, fill)

    def simulated_member(ctx: JobContext) -> Result | None:
        me, tags = ctx.party, psi_multi.Tags(psi_multi.PREFIX)
        own = psi.SetHeader(psi.Disclosure.INTERSECTION, sizes[me], 10**5, psi.MAX_CHUNK_POINTS)
        header = exchange_headers(ctx, "bank", tags.header, own)
        query = psi.validate_points(ctx.recv("bank", tags.query(0)), header.set_size)
        ctx.send("bank", tags.answer(0), b"".join(psi.blind(query, keys[me])))
        params, table = hints[me]
        ctx.send("bank", tags.hint, mpsi.encode_hint_header(params))
        ctx.send("bank", tags.hint_cells(0), okvs.table_to_bytes(table))
        return None

    simulator = dataclasses.replace(
        psi_multi.DEFINITION, roles={"leader": psi_multi.run_leader, "member": simulated_member}
    )
    net = InMemoryNetwork(["bank", "tax", "registry"])
    states = MemoryResumeStates()
    sets = {"bank": a["bank"], "tax": [], "registry": []}
    results = run_in_memory(spec, simulator, tables(sets), LIMITS, net, states={"bank": states})
    simulated = results["bank"]
    assert simulated is not None and csv_ids(simulated) == csv_ids(real)
    view = bank_view(net, states, spec, [v.encode() for v in a["bank"]])
    assert zero_xor_counts(view) == zero_xor_counts(real_view)
