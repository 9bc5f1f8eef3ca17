"""Joint WOE/IV over the in-memory transport, checked against the same maths on joined data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from bund.compute import insecure
from bund.compute import paillier as pl
from bund.compute.errors import InvalidCiphertextError, ProofError
from bund.compute.learn.woe_iv import assign_bins, merge_small_bins, quantile_edges, woe_iv
from bund.compute.zk.mod import MOD_REPETITIONS, ModProof
from bund.compute.zk.randomness import FullRandomness
from bund.parties.data import Table
from bund.parties.demo_data import generate_finance
from bund.parties.jobs import InvalidJobSpecError, JobSpec, Participant, run_in_memory
from bund.parties.protocols import PROTOCOLS
from bund.parties.protocols import woe_iv as proto
from bund.parties.protocols.proved_key import decode_key_message, encode_key_message
from bund.parties.transport import InMemoryNetwork

LIMITS = {"psi_max_set_size": 100_000}
ROLES = {"bank": "loan_book", "tax": "tax_filings", "registry": "business_registry"}


@pytest.fixture(autouse=True)
def small_keys() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()  # small keys: tests only
    yield


@pytest.fixture(scope="module")
def finance() -> dict[str, Table]:
    data = generate_finance(1500, 11)
    return {party: data[name] for party, name in ROLES.items()}


def make_spec(receivers: tuple[str, ...] = ("bank",), **params: int) -> JobSpec:
    parts = (
        Participant(
            "bank", "label_holder", "loan_book", {"id": "company_id", "label": "default_12m"}
        ),
        Participant("tax", "feature_holder", "tax_filings", {"id": "company_id"}),
        Participant("registry", "feature_holder", "business_registry", {"id": "company_id"}),
    )
    return JobSpec(
        "woe_iv",
        parts,
        receivers,
        "screen features",
        "bank",
        {"key_bits": 512, "bins": 8, **params},
    )


def plaintext(
    tables: dict[str, Table], bins: int, min_rows: int
) -> dict[str, tuple[float, list[float]]]:
    rows = {p: {c: i for i, c in enumerate(t.column("company_id"))} for p, t in tables.items()}
    common = sorted(set(rows["bank"]) & set(rows["tax"]) & set(rows["registry"]))
    y = tables["bank"].numeric("default_12m")[[rows["bank"][c] for c in common]]
    out = {}
    for party in ("tax", "registry"):
        t = tables[party]
        names, _ = proto.numeric_features(t, {"company_id"})
        for name in names:
            x = t.numeric(name)[[rows[party][c] for c in common]]
            edges = quantile_edges(x, bins)
            edges = merge_small_bins(assign_bins(x, edges), edges, min_rows)
            b = assign_bins(x, edges)
            k = len(edges) + 1
            events = np.bincount(b, weights=y, minlength=k).astype(int)
            stats = woe_iv(events, np.bincount(b, minlength=k))
            out[f"{party}.{name}"] = (stats.iv, list(stats.woe))
    return out


def test_matches_plaintext_and_ranks_the_strong_features(finance: dict[str, Table]) -> None:
    net = InMemoryNetwork(list(ROLES))
    results = run_in_memory(make_spec(), proto.DEFINITION, finance, LIMITS, network=net)
    bank = results["bank"]
    assert bank is not None and results["tax"] is None and results["registry"] is None
    report = json.loads(bank.artifacts["woe_iv.json"])
    expected = plaintext(finance, 8, 5)
    assert set(report) == set(expected)
    for key, (iv, woe) in expected.items():
        assert report[key]["iv"] == pytest.approx(iv, abs=1e-12)
        assert report[key]["woe"] == pytest.approx(woe, abs=1e-12)
    assert bank.artifacts["iv.png"].startswith(b"\x89PNG")
    ranked = sorted(report, key=lambda k: report[k]["iv"], reverse=True)
    assert "tax.tax_credit_score" in ranked[:3], ranked[:5]
    # tax_credit_grade and industry_code are text: not screened (categorical WOE is not done).
    assert "tax.tax_credit_grade" not in report and "registry.industry_code" not in report
    assert bank.summary["aligned_rows"] == len(
        set(finance["bank"].column("company_id"))
        & set(finance["tax"].column("company_id"))
        & set(finance["registry"].column("company_id"))
    )


def test_no_feature_value_label_or_id_crosses_the_wire(finance: dict[str, Table]) -> None:
    net = InMemoryNetwork(list(ROLES))
    run_in_memory(make_spec(), proto.DEFINITION, finance, LIMITS, network=net)
    wire = b"".join(payload for _, _, _, payload in net.captured)
    ids = finance["bank"].column("company_id")[:50] + finance["tax"].column("company_id")[:50]
    for value in ids:
        assert value.encode() not in wire
    for party in ("tax", "registry"):
        for name in ("annual_revenue_10k_cny", "tax_credit_score", "registered_capital_10k_cny"):
            if name in finance[party].columns:
                for v in finance[party].column(name)[:30]:
                    if len(v) >= 5:
                        assert v.encode() not in wire, (name, v)
    # The labels travel only as ciphertexts: no message from the bank is a short 0/1 string.
    for sender, _, tag, payload in net.captured:
        if sender == "bank" and tag.startswith("woe/labels"):
            assert payload[:4] == b"BNPC"


def test_provider_receives_its_edges_when_a_receiver(finance: dict[str, Table]) -> None:
    results = run_in_memory(make_spec(("bank", "tax")), proto.DEFINITION, finance, LIMITS)
    tax = results["tax"]
    assert tax is not None
    edges = json.loads(tax.artifacts["bins.json"])
    assert "tax_credit_score" in edges and "woe" not in json.dumps(tax.summary)


def test_a_forged_ciphertext_is_refused(finance: dict[str, Table]) -> None:
    net = InMemoryNetwork(list(ROLES))
    original = net.mailboxes["bank"].put

    def put(job_id: str, frm: str, tag: str, payload: bytes) -> None:
        if tag == "woe/events" and frm == "tax":
            width = len(payload) - 27
            payload = payload[:27] + b"\x00" * width  # ciphertext 0 is outside (0, n²)
        original(job_id, frm, tag, payload)

    net.mailboxes["bank"].put = put  # type: ignore[method-assign]
    with pytest.raises(InvalidCiphertextError):
        run_in_memory(make_spec(), proto.DEFINITION, finance, LIMITS, network=net)


def test_a_bank_key_without_its_proof_is_refused_before_a_provider_sends_anything(
    finance: dict[str, Table],
) -> None:
    """Issue 14, attack 4: the bank's key arrives without Π^mod; the providers refuse it.

    A provider verifies the proof first, before the PSI alignment: nothing of its own leaves it.
    """
    net = InMemoryNetwork(list(ROLES))
    for provider in ("tax", "registry"):
        original = net.mailboxes[provider].put

        def put(job_id: str, frm: str, tag: str, payload: bytes, original: Any = original) -> None:
            if tag == proto.KEY_TAG:
                key, _ = decode_key_message(payload)
                payload = encode_key_message(key, b"")  # the proof stripped
            original(job_id, frm, tag, payload)

        net.mailboxes[provider].put = put  # type: ignore[method-assign]
    with pytest.raises(ProofError, match="without the proof"):
        run_in_memory(make_spec(), proto.DEFINITION, finance, LIMITS, network=net)
    assert [(s, t) for s, _, t, _ in net.captured if s != "bank"] == []


def test_the_providers_rerandomise_with_their_own_full_randomness(
    finance: dict[str, Table], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every events ciphertext a provider returns is re-randomised by its own r^N, never h_s."""
    drawn: list[int] = []
    full = FullRandomness.rerandomize

    def spy(self: FullRandomness, cts: Any, executor: Any = None) -> Any:
        drawn.append(len(cts))
        return full(self, cts, executor)

    monkeypatch.setattr(FullRandomness, "rerandomize", spy)
    net = InMemoryNetwork(list(ROLES))
    run_in_memory(make_spec(), proto.DEFINITION, finance, LIMITS, network=net)
    (key_message,) = {p for _, to, t, p in net.captured if t == proto.KEY_TAG}
    key, proof = decode_key_message(key_message)
    assert ModProof.from_bytes(proof).repetitions == MOD_REPETITIONS
    public = pl.PublicKey.from_bytes(key)
    exported = [
        len(pl.decode_ciphertexts(public, p, frac_bits=0, max_count=64))
        for _, _, t, p in net.captured
        if t == "woe/events"
    ]
    assert sorted(drawn) == sorted(exported) and len(exported) == 2


def test_spec_validation() -> None:
    ok = make_spec()
    proto.validate(ok)
    assert PROTOCOLS["woe_iv"] is proto.DEFINITION
    assert proto.outputs(ok) == {"model"}
    assert "encrypted" in proto.learns(ok)["tax"]
    with pytest.raises(InvalidJobSpecError, match="bins"):
        proto.validate(make_spec(bins=1))
    with pytest.raises(InvalidJobSpecError, match="unknown parameter"):
        proto.validate(make_spec(epochs=3))
    bad = JobSpec(
        "woe_iv",
        (
            Participant("bank", "label_holder", "l", {"id": "c"}),
            Participant("tax", "feature_holder", "t", {"id": "c"}),
        ),
        ("bank",),
        "x",
        "bank",
    )
    with pytest.raises(InvalidJobSpecError, match="label"):
        proto.validate(bad)
