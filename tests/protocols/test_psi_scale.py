"""PSI in buckets spilled to disk, and cardinality mode where the peer counts (issue 14.3)."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.compute.dp.budget import Budget
from bund.compute.errors import InvalidMessageError
from bund.parties.jobs import InvalidJobSpecError, MemoryResumeStates, Participant, run_in_memory
from bund.parties.policy import DatasetPolicy, Policy, PolicyRefusedError
from bund.parties.protocols import psi
from bund.parties.transport import InMemoryNetwork, Transport
from tests.protocols.test_psi import csv_ids, make_spec, plaintext, tables

#: Spill from 10 rows, 64 points per bucket: every set below takes several bucket files.
SPILLING = {"psi_max_set_size": 100_000, "psi_spill_rows": 10, "psi_bucket_points": 64}
LIMITS = {"psi_max_set_size": 100_000}
ids = st.lists(st.sampled_from([f"C{i}" for i in range(400)] + ["", " C1 "]), max_size=300)


@settings(max_examples=12, deadline=None)
@given(ids, ids, st.sampled_from([("bank",), ("tax",), ("bank", "tax")]))
def test_spilled_buckets_give_the_in_memory_result(
    bank: list[str], tax: list[str], receivers: tuple[str, ...]
) -> None:
    for mode in ("intersection", "cardinality"):
        spec = make_spec(mode, receivers)
        spilled = run_in_memory(spec, psi.DEFINITION, tables(bank, tax), SPILLING)
        in_memory = run_in_memory(
            spec, psi.DEFINITION, tables(bank, tax), {"psi_max_set_size": 999}
        )
        expected = plaintext(bank) & plaintext(tax)
        for party in ("bank", "tax"):
            got, reference = spilled[party], in_memory[party]
            assert (got is None) == (reference is None) == (party not in receivers)
            if got is None or reference is None:
                continue
            assert got.summary == reference.summary
            assert got.summary["intersection_size"] == len(expected)
            if mode == "intersection":
                assert got.artifacts == reference.artifacts
                assert set(csv_ids(got)) == expected


def test_spilled_files_live_in_the_scratch_directory_and_bound_the_buckets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(psi, "MAX_CHUNK_POINTS", 50)
    states = {"bank": MemoryResumeStates(), "tax": MemoryResumeStates()}
    bank, tax = [f"B{i}" for i in range(1000)], [f"B{i}" for i in range(600, 1500)]
    spec = dataclasses.replace(make_spec(), job_id="a" * 32)
    results = run_in_memory(spec, psi.DEFINITION, tables(bank, tax), SPILLING, states=states)
    assert results["bank"] is not None and results["bank"].summary["intersection_size"] == 400
    scratch = states["bank"].scratch_dir("a" * 32, "bank")
    files = sorted(p.name for p in Path(scratch).iterdir())
    own = [f for f in files if f.startswith("own.")]
    assert len(own) == 16  # 1000 rows / 64 points per bucket -> 4 bits
    assert max(Path(scratch, f).stat().st_size for f in own) < 3 * 64 * 40
    assert any(f.startswith("peer_double.") for f in files)
    assert any(f.startswith("own_double.") for f in files)
    # The common rows are re-partitioned by row range (bank's 600..999: the last 7 of 16), and
    # the result is written to a file there, not built in memory.
    hits = {f: Path(scratch, f).stat().st_size for f in files if f.startswith("hits.")}
    assert sorted(hits) == [f"hits.{i:05d}" for i in range(9, 16)]
    assert max(hits.values()) <= -(-1000 // 16) * 8
    written = Path(scratch, "intersection.csv").read_bytes()
    assert written == results["bank"].artifacts["intersection.csv"]
    assert written.split(b"\n")[1:-1] == [f"B{i}".encode() for i in range(600, 1000)]


class Charges:
    def __init__(self) -> None:
        self.parts: list[tuple[str, Budget]] = []

    def __call__(self, part: str, cost: Budget) -> None:
        self.parts.append((part, cost))


def test_a_noisy_count_is_charged_once_to_the_counter_and_says_so() -> None:
    spec = make_spec("cardinality", ("bank",), epsilon="1/2")
    charges = {"bank": Charges(), "tax": Charges()}
    bank, tax = [f"B{i}" for i in range(300)], [f"B{i}" for i in range(100, 400)]
    results = run_in_memory(spec, psi.DEFINITION, tables(bank, tax), LIMITS, chargers=charges)
    result = results["bank"]
    assert result is not None and results["tax"] is None
    assert charges["tax"].parts == [("count", Budget(Fraction(1, 2)))] and not charges["bank"].parts
    assert result.summary["noise_epsilon"] == "1/2" and result.summary["noise_scale"] == "2"
    assert 0 <= int(result.summary["intersection_size"]) <= 300  # type: ignore[arg-type]
    assert psi.cost(spec, "tax") == Budget(Fraction(1, 2)) and psi.cost(spec, "bank") == Budget()
    assert "discrete Laplace" in psi.learns(spec)["bank"]
    assert "computes the count" in psi.learns(spec)["tax"]


def test_noisy_counts_vary_around_the_truth() -> None:
    spec = make_spec("cardinality", ("bank",), epsilon="1")
    bank, tax = [f"B{i}" for i in range(60)], [f"B{i}" for i in range(30, 90)]
    released = []
    for _ in range(12):
        result = run_in_memory(spec, psi.DEFINITION, tables(bank, tax), LIMITS)["bank"]
        assert result is not None
        released.append(int(result.summary["intersection_size"]))  # type: ignore[arg-type]
    assert len(set(released)) > 1 and abs(sum(released) / 12 - 30) < 4


def test_a_count_against_the_spec_is_refused() -> None:
    class Tamper(InMemoryNetwork):
        """Tax's count claims noise that the spec did not ask for."""

        def transport_for(self, party: str) -> Transport:
            inner = super().transport_for(party)

            class Flip:
                def deliver(self, job_id: str, to: str, tag: str, payload: bytes) -> None:
                    if tag == "psi/count":
                        payload = payload[:-1] + b"\x01"
                    inner.deliver(job_id, to, tag, payload)

            return Flip()

    with pytest.raises(InvalidMessageError, match="with noise, against the spec"):
        run_in_memory(
            make_spec("cardinality", ("bank",)),
            psi.DEFINITION,
            tables(["a", "b"], ["b"]),
            LIMITS,
            network=Tamper(["bank", "tax"]),
        )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"epsilon": "1"}, "only in mode = 'cardinality'"),
        ({"epsilon": "100"}, "must be in"),
        ({"epsilon": "x"}, "not a rational"),
    ],
)
def test_epsilon_parameter_errors(params: dict[str, str], message: str) -> None:
    mode = "intersection" if "only in" in message else "cardinality"
    with pytest.raises(InvalidJobSpecError, match=message):
        psi.validate(make_spec(mode, **params))


#: The dataset tax brings to ``make_spec``'s jobs.
TAX_DATASET = "filings"


def entry(level: str, trusted: frozenset[str] = frozenset()) -> Policy:
    """Tax's policy with its one dataset at ``level``, trusting ``trusted`` with it."""
    dataset = DatasetPolicy(owner="tax", level=level, trusted_counterparties=trusted)
    return Policy(counterparties={}, datasets={TAX_DATASET: dataset})


def test_a_data_owner_that_guards_membership_counts_itself_with_noise_or_refuses() -> None:
    check = psi.DEFINITION.check_owner
    restricted = entry("restricted-personal")
    assert restricted.guards_membership(TAX_DATASET, "bank")
    assert not entry("confidential").guards_membership(TAX_DATASET, "x")
    # It releases a count to an untrusted receiver only with noise...
    with pytest.raises(PolicyRefusedError, match="only with noise"):
        check(make_spec("cardinality", ("bank",)), "tax", restricted)
    check(make_spec("cardinality", ("bank",), epsilon="1"), "tax", restricted)
    # ...and never receives one (it would re-blind its peer's set for the peer to match).
    with pytest.raises(PolicyRefusedError, match="make bank the only receiver"):
        check(make_spec("cardinality", ("bank", "tax"), epsilon="1"), "tax", restricted)
    # Unless its policy trusts the counterparty; and intersection mode is the level's business.
    trusted = entry("restricted-personal", frozenset({"bank"}))
    check(make_spec("cardinality", ("bank", "tax")), "tax", trusted)
    check(make_spec("intersection", ("bank",)), "tax", restricted)
    check(make_spec("cardinality", ("bank", "tax")), "tax", entry("confidential"))


def test_the_counter_learns_the_count_and_the_doc_of_each_role_says_so() -> None:
    spec = make_spec(
        "cardinality",
        ("bank",),
        participants=(
            Participant("bank", "member", "loans", {"id": "company_id"}),
            Participant("tax", "member", "filings", {"id": "uscc"}),
        ),
    )
    learns = psi.learns(spec)
    assert learns["bank"].startswith("how many of its ids tax also holds (not which)")
    assert learns["tax"].startswith("how many ids the two sets share")
    assert psi.learns(make_spec("intersection", ("bank",)))["tax"] == (
        "the size of bank's set; nothing else"
    )


def test_a_large_set_ticks_its_small_peer_while_it_blinds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psi, "MAX_CHUNK_POINTS", 50)
    net = InMemoryNetwork(["bank", "tax"])
    bank, tax = [f"B{i}" for i in range(1_000)], ["B1", "B2"]
    run_in_memory(make_spec(), psi.DEFINITION, tables(bank, tax), LIMITS, net)
    to_tax = [(tag, p) for frm, to, tag, p in net.captured if frm == "bank"]
    ticks = [(tag, p) for tag, p in to_tax if tag.startswith("psi/tick/")]
    # 20 chunks of 50 rows: a tick after every second one, then the last tick, then the header.
    assert ticks == [(f"psi/tick/{i}", b"\x00") for i in range(10)] + [("psi/tick/10", b"\x01")]
    tags = [tag for tag, _ in to_tax]
    assert tags.index("psi/tick/10") + 1 == tags.index("psi/header")
