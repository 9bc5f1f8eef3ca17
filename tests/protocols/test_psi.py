"""PSI choreography over the in-memory transport, checked against plaintext set intersection."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import threading
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bund.compute.errors import InvalidPointError, SetTooLargeError
from bund.parties.data import Table
from bund.parties.jobs import (
    InvalidJobSpecError,
    JobSpec,
    Participant,
    Result,
    RoleContext,
    new_job_id,
    run_in_memory,
)
from bund.parties.protocols import psi
from bund.parties.transport import InMemoryNetwork, Transport

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo" / "finance"
LIMITS = {"psi_max_set_size": 100_000}
POOL = [
    "91310000MA1FL0001",
    "91310000MA1FL0002",
    " 91310000MA1FL0003",
    "abc",
    "ABC",
    "公司-7",
    "",
    "  ",
    "a,b",
    'q"t',
    "x\ry",
    "l1\nl2",
]
ids = st.lists(st.sampled_from(POOL) | st.text(max_size=4), max_size=12)


def make_spec(
    mode: str | None = "intersection",
    receivers: tuple[str, ...] = ("bank", "tax"),
    participants: tuple[Participant, ...] | None = None,
    **params: str,
) -> JobSpec:
    parts = participants or (
        Participant("bank", "member", "loans", {"id": "company_id"}),
        Participant("tax", "member", "filings", {"id": "uscc"}),
    )
    all_params = dict(params)
    if mode is not None:
        all_params["mode"] = mode
    return JobSpec("psi", parts, receivers, "align customers", parts[0].party, all_params)


def tables(bank: list[str], tax: list[str]) -> dict[str, Table]:
    return {
        "bank": Table.from_columns("loans", {"company_id": bank, "amount": ["1"] * len(bank)}),
        "tax": Table.from_columns("filings", {"uscc": tax}),
    }


def plaintext(values: list[str]) -> set[str]:
    return {v.strip() for v in values if v.strip()}


def csv_ids(result: Result) -> list[str]:
    text = result.artifacts["intersection.csv"].decode()
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == ["id"]
    return [r[0] for r in rows[1:]]


@settings(max_examples=25, deadline=None)
@given(
    ids,
    ids,
    st.sampled_from(["intersection", "cardinality"]),
    st.sampled_from([("bank",), ("tax",), ("bank", "tax")]),
)
def test_matches_plaintext(
    bank: list[str], tax: list[str], mode: str, receivers: tuple[str, ...]
) -> None:
    results = run_in_memory(make_spec(mode, receivers), psi.DEFINITION, tables(bank, tax), LIMITS)
    expected = plaintext(bank) & plaintext(tax)
    own = {"bank": bank, "tax": tax}
    for party, result in results.items():
        if party not in receivers:
            assert result is None
            continue
        assert result is not None
        peer = "tax" if party == "bank" else "bank"
        assert result.summary == {
            "mode": mode,
            "intersection_size": len(expected),
            "own_set_size": len(plaintext(own[party])),
            "peer_set_size": len(plaintext(own[peer])),
        }
        if mode == "cardinality":
            assert result.artifacts == {}
        else:
            assert set(csv_ids(result)) == expected


def test_intersection_csv_keeps_own_order_and_quotes() -> None:
    bank = ["C3", "a,b", " C1 ", "C9", "C1", 'q"t', "x\ry"]
    tax = ["C1", "C2", "C3", 'q"t', "a,b", "x\ry"]
    results = run_in_memory(make_spec(), psi.DEFINITION, tables(bank, tax), LIMITS)
    assert results["bank"] is not None and results["tax"] is not None
    assert csv_ids(results["bank"]) == ["C3", "a,b", "C1", 'q"t', "x\ry"]
    assert csv_ids(results["tax"]) == ["C1", "C3", 'q"t', "a,b", "x\ry"]
    assert results["bank"].artifacts["intersection.csv"] == (b'id\nC3\n"a,b"\nC1\n"q""t"\n"x\ry"\n')


def test_chunks_larger_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psi, "MAX_CHUNK_POINTS", 7)
    bank, tax = [f"B{i}" for i in range(40)], [f"B{i}" for i in range(25, 60)]
    for mode in ("intersection", "cardinality"):
        net = InMemoryNetwork(["bank", "tax"])
        results = run_in_memory(make_spec(mode), psi.DEFINITION, tables(bank, tax), LIMITS, net)
        assert all(r is not None and r.summary["intersection_size"] == 15 for r in results.values())
        tags = {tag for _, _, tag, _ in net.captured}
        assert {"psi/blinded/5", "psi/double/5"} <= tags and "psi/blinded/6" not in tags
        assert max(len(payload) for *_, payload in net.captured) <= 7 * 32


def test_cardinality_mode_never_returns_a_receiver_its_own_set() -> None:
    net = InMemoryNetwork(["bank", "tax"])
    bank = [f"B{i}" for i in range(30)]
    tax = [f"B{i}" for i in range(20, 45)]
    run_in_memory(
        make_spec("cardinality", ("bank",)), psi.DEFINITION, tables(bank, tax), LIMITS, net
    )
    double = [(frm, to, p) for frm, to, tag, p in net.captured if tag.startswith("psi/double/")]
    # Message 3 goes from the receiver to the counting peer: the peer's 25 points, re-blinded,
    # as one sorted set. The receiver never gets a double-blinded value; it gets one count.
    assert [(frm, to) for frm, to, _ in double] == [("bank", "tax")]
    points = [double[0][2][i : i + 32] for i in range(0, 25 * 32, 32)]
    assert points == sorted(points) and len(set(points)) == 25 and len(double[0][2]) == 25 * 32
    to_bank = {tag for frm, to, tag, _ in net.captured if to == "bank"}
    assert to_bank == {"psi/tick/0", "psi/header", "psi/count", "psi/blinded/0"}


class _Sink:
    def __init__(self) -> None:
        self.records: list[tuple[str, Mapping[str, object]]] = []

    def message(self, *args: object) -> None:
        pass

    def record(self, job_id: str, event: str, fields: Mapping[str, object]) -> None:
        self.records.append((event, dict(fields)))

    def progress(self, *args: object) -> None:
        pass


def run_roles(
    spec: JobSpec, data: Mapping[str, Table], caps: Mapping[str, int], abort_on_error: bool = True
) -> tuple[dict[str, BaseException | Result | None], InMemoryNetwork, dict[str, _Sink]]:
    """Run both roles in threads with a different psi_max_set_size per node and own sinks."""
    spec = dataclasses.replace(spec, job_id=new_job_id())
    net = InMemoryNetwork(list(spec.parties))
    out: dict[str, BaseException | Result | None] = {}
    sinks = {p: _Sink() for p in spec.parties}

    def run(party: str) -> None:
        limits = {"psi_max_set_size": caps[party]}
        ctx = RoleContext(
            spec, party, net.transport_for(party), net.mailboxes[party],
            lambda: data[party], limits, sinks[party], 10.0,
        )  # fmt: skip
        try:
            out[party] = psi.run_member(ctx)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out[party] = exc
            if abort_on_error:
                net.abort(spec.job_id, str(exc))

    threads = [threading.Thread(target=run, args=(p,)) for p in spec.parties]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out, net, sinks


def test_own_set_over_cap_is_refused_before_sending_anything() -> None:
    out, net, _ = run_roles(make_spec(), tables(["a", "b", "c"], ["a"]), {"bank": 2, "tax": 9})
    assert isinstance(out["bank"], SetTooLargeError)
    assert "3 distinct ids" in str(out["bank"]) and "psi_max_set_size = 2" in str(out["bank"])
    assert not [c for c in net.captured if c[0] == "bank"]


def test_peer_set_over_cap_is_refused_by_both_before_any_point_is_sent() -> None:
    caps = {"bank": 9, "tax": 2}
    out, net, _ = run_roles(make_spec(), tables(["a", "b", "c"], ["a"]), caps, abort_on_error=False)
    assert isinstance(out["tax"], SetTooLargeError)
    assert "bank announced a set of 3 ids" in str(out["tax"])
    assert "raise psi_max_set_size" in str(out["tax"])
    assert isinstance(out["bank"], SetTooLargeError)
    assert "accepts at most 2" in str(out["bank"])
    assert {tag for _, _, tag, _ in net.captured} == {"psi/tick/0", "psi/header"}  # no point


def test_size_cap_through_run_in_memory() -> None:
    with pytest.raises(SetTooLargeError, match="psi_max_set_size"):
        run_in_memory(
            make_spec(), psi.DEFINITION, tables(["a", "b"], ["a"]), {"psi_max_set_size": 1}
        )


def test_audit_record_carries_counts_only() -> None:
    data = tables(["s1", "s1", " ", "s2"], ["s2", "s3"])
    out, _, sinks = run_roles(make_spec(receivers=("bank",)), data, {"bank": 9, "tax": 9})
    assert isinstance(out["bank"], Result) and out["tax"] is None
    expected = {
        "mode": "intersection",
        "own_set_size": 2,
        "peer_set_size": 2,
        "blank_ids_skipped": 1,
        "duplicate_ids_dropped": 1,
        "receiver": True,
        "intersection_size": 1,
    }
    assert sinks["bank"].records == [("psi.finished", expected)]
    [(event, fields)] = sinks["tax"].records
    assert fields["receiver"] is False and fields["intersection_size"] is None


def test_tampered_blinded_set_is_refused() -> None:
    class Tamper(InMemoryNetwork):
        """Tax's transport repeats its first blinded point over the second."""

        def transport_for(self, party: str) -> Transport:
            inner = super().transport_for(party)

            class Repeat:
                def deliver(self, job_id: str, to: str, tag: str, payload: bytes) -> None:
                    if party == "tax" and tag == "psi/blinded/0":
                        payload = payload[:32] + payload[:32] + payload[64:]
                    inner.deliver(job_id, to, tag, payload)

            return Repeat()

    with pytest.raises(InvalidPointError, match="repeats"):
        run_in_memory(
            make_spec(),
            psi.DEFINITION,
            tables(["a", "b", "c"], ["a", "b", "c"]),
            LIMITS,
            Tamper(["bank", "tax"]),
        )


@pytest.mark.parametrize(
    ("spec_args", "message"),
    [
        ({"mode": None}, "needs the parameter mode"),
        ({"mode": "both"}, "'intersection'.*'cardinality'"),
        ({"mode": "intersection", "reveal": "yes"}, "remove \\['reveal'\\]"),
    ],
)
def test_spec_parameter_errors(spec_args: dict[str, str | None], message: str) -> None:
    mode = spec_args.pop("mode")
    spec = make_spec(mode, **{k: v for k, v in spec_args.items() if v is not None})
    with pytest.raises(InvalidJobSpecError, match=message):
        psi.validate(spec)


@pytest.mark.parametrize(
    ("participants", "message"),
    [
        (
            (
                Participant("bank", "member", "l", {"id": "c"}),
                Participant("tax", "member", "f", {"id": "u"}),
                Participant("hosp", "member", "h", {"id": "p"}),
            ),
            "exactly two participants",
        ),
        ((Participant("bank", "member", "l", {"id": "c"}),), "exactly two participants"),
        (
            (
                Participant("bank", "server", "l", {"id": "c"}),
                Participant("tax", "member", "f", {"id": "u"}),
            ),
            "has role 'server'",
        ),
        (
            (
                Participant("bank", "member", "l", {"key": "c"}),
                Participant("tax", "member", "f", {"id": "u"}),
            ),
            "bind the logical column 'id'",
        ),
        (
            (
                Participant("bank", "member", None, {"id": "c"}),
                Participant("tax", "member", "f", {"id": "u"}),
            ),
            "must name a dataset",
        ),
    ],
)
def test_spec_shape_errors(participants: tuple[Participant, ...], message: str) -> None:
    spec = make_spec(participants=participants, receivers=(participants[0].party,))
    with pytest.raises(InvalidJobSpecError, match=message):
        psi.validate(spec)


def test_registered() -> None:
    from bund.parties.protocols import get_protocol

    assert get_protocol("psi") is psi.DEFINITION
    assert psi.DEFINITION.version == "2" and set(psi.DEFINITION.roles) == {"member"}


def _demo_ids() -> tuple[list[str], list[str]]:
    """Ids from the shipped finance demo data if present, else USCC-like generated ones."""
    found: list[list[str]] = []
    for path in sorted(DEMO.glob("*.csv")) if DEMO.is_dir() else []:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            continue
        names = [n for n in rows[0] if n and any(k in n.lower() for k in ("uscc", "credit", "id"))]
        if names:
            found.append([r[names[0]] for r in rows if r[names[0]]][:1500])
    if len(found) >= 2:
        return found[0], found[1]
    if len(found) == 1:
        half = len(found[0]) // 2
        return found[0][: half + half // 2], found[0][half // 2 :]
    uscc = [f"91310000MA1FL{i:05d}" for i in range(1500)]
    return uscc[:1000], uscc[500:]


def test_no_raw_identifier_in_any_byte_sent() -> None:
    bank, tax = _demo_ids()
    net = InMemoryNetwork(["bank", "tax"])
    for mode in ("intersection", "cardinality"):
        run_in_memory(make_spec(mode), psi.DEFINITION, tables(bank, tax), LIMITS, net)
    assert net.captured
    wire = b"\x00".join(payload for *_, payload in net.captured)
    checked = 0
    for raw in {v.strip() for v in bank + tax if v.strip()}:
        data = raw.encode("utf-8")
        digest = hashlib.sha256(data).digest()
        assert digest not in wire and digest.hex().encode() not in wire, raw
        # Shorter needles would turn up by chance in ~256 KB of pseudorandom points.
        if len(data) >= 6:
            assert data not in wire and raw.encode("utf-16-le") not in wire, raw
            checked += 1
    assert checked >= 1000
