"""Vertical SecureBoost and tree scoring over the in-memory transport, against the reference."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from bund.compute import insecure
from bund.compute import paillier as pl
from bund.compute.errors import InvalidCiphertextError, InvalidMessageError, ProofError
from bund.compute.learn import logistic as lg
from bund.compute.learn import secureboost as sb
from bund.compute.learn.metrics import auc
from bund.parties.data import Table
from bund.parties.demo_data import generate_finance
from bund.parties.jobs import (
    InvalidJobSpecError,
    JobSpec,
    MemoryResumeStates,
    Participant,
    PriorResultError,
    Result,
    run_in_memory,
)
from bund.parties.protocols import PROTOCOLS
from bund.parties.protocols import vertical_secureboost as proto
from bund.parties.protocols import vertical_tree_score as score
from bund.parties.transport import InMemoryNetwork
from tests.protocols.test_vertical_lr import EXCLUDE, ROLES, joined_raw

LIMITS = {"psi_max_set_size": 100_000, "job_max_messages": 1_000_000, "job_max_bytes": 1 << 34}
PARAMS: dict[str, int | float | str] = {
    "key_bits": 512, "n_estimators": 4, "max_depth": 3, "learning_rate": 0.3, "max_bin": 16,
    "seed": 3, "test_fraction": 0.3, "cutoff": 0.2,
}  # fmt: skip
#: OU test keys: 1024 bits leave room for the guard's headroom and a few packed pairs.
OU_BITS = 1024


@pytest.fixture(autouse=True)
def small_keys() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()  # small keys: tests only
    yield


@pytest.fixture(scope="module")
def data() -> dict[str, Table]:
    return generate_finance(600, 11, applicants=120)


@pytest.fixture(scope="module")
def finance(data: dict[str, Table]) -> dict[str, Table]:
    return {party: data[name] for party, name in ROLES.items()}


def make_spec(**params: int | float | str | None) -> JobSpec:
    parts = (
        Participant(
            "bank", "label_holder", "loan_book", {"id": "company_id", "label": "default_12m"}
        ),
        Participant("tax", "feature_holder", "tax_filings", {"id": "company_id"}),
        Participant("registry", "feature_holder", "business_registry", {"id": "company_id"}),
    )
    return JobSpec(
        "vertical_secureboost", parts, tuple(ROLES), "credit model (trees)", "bank",
        {**PARAMS, **params},
    )  # fmt: skip


def joined(finance: dict[str, Table]) -> tuple[list[np.ndarray], np.ndarray]:
    """The reference's view: each party's raw features at the common ids, and the labels."""
    rows = {c: i for i, c in enumerate(finance["bank"].column("company_id"))}
    common = sorted(
        set(rows)
        & set(finance["tax"].column("company_id"))
        & set(finance["registry"].column("company_id"))
    )
    raw = joined_raw(finance, common)
    y = finance["bank"].numeric("default_12m")[[rows[c] for c in common]]
    return [raw[p] for p in EXCLUDE], y


def reference(
    finance: dict[str, Table], **params: int | float | str | None
) -> tuple[sb.BoostFit, list[sb.LocalSplits], np.ndarray, np.ndarray]:
    blocks, y = joined(finance)
    p = proto.VerticalSecureBoostParams.of(make_spec(**params))
    train = np.zeros(len(y), dtype=bool)
    train[lg.split_rows(len(y), p.test_fraction, p.seed)[0]] = True
    fit, sources = sb.fit(blocks, y, train, proto.config_of(p))
    return fit, sources, y, train


@pytest.fixture(scope="module")
def trained(finance: dict[str, Table]) -> tuple[str, dict[str, Result], InMemoryNetwork]:
    insecure.enable_insecure_test_parameters()
    spec = dataclasses.replace(make_spec(), job_id="ab" * 16)
    net = InMemoryNetwork(list(ROLES))
    results = run_in_memory(spec, proto.DEFINITION, finance, LIMITS, network=net)
    return spec.job_id, {p: r for p, r in results.items() if r is not None}, net


def model(results: dict[str, Result], party: str) -> dict:  # type: ignore[type-arg]
    return json.loads(results[party].artifacts["model.json"])  # type: ignore[no-any-return]


def test_matches_the_plaintext_reference_split_for_split(
    finance: dict[str, Table], trained: tuple[str, dict[str, Result], InMemoryNetwork]
) -> None:
    _, results, _ = trained
    fit, sources, y, train = reference(finance)
    bank = model(results, "bank")
    names = {p: list(bank["features"]) for p in ("bank",)}
    assert len(bank["trees"]) == len(fit.ensemble.trees) == PARAMS["n_estimators"]
    parts = {p: model(results, p) for p in ("tax", "registry")}
    provider_names = {p: parts[p]["features"] for p in parts}
    for stored, tree in zip(bank["trees"], fit.ensemble.trees, strict=True):
        assert {int(k): w for k, w in stored["leaves"].items()} == dict(tree.leaves)
        assert sorted(int(k) for k in stored["splits"]) == sorted(tree.splits)
        for node, split in tree.splits.items():
            entry = stored["splits"][str(node)]
            if split.party == 0:
                assert entry == {"feature": names["bank"][split.ref], "threshold": split.threshold}
            else:
                # The provider kept the reference's feature and cut under the bank's lookup id.
                provider = ("tax", "registry")[split.party - 1]
                assert entry == {"provider": provider, "lookup": split.ref}
                f, k = sources[split.party].lookups[split.ref]
                kept = parts[provider]["splits"][str(split.ref)]
                assert kept["feature"] == provider_names[provider][f]
                assert kept["threshold"] == float(sources[split.party].binning.cuts[f][k])
    joint = auc(y[~train], fit.margins[~train])
    assert results["bank"].summary["auc"] == joint
    assert joint > results["bank"].summary["auc_bank_only"]  # type: ignore[operator]
    # The provider's part holds its own splits only: nothing of the bank's.
    for part in parts.values():
        assert part["label_holder"] == "bank" and "trees" not in part and "leaves" not in part
        assert not set(part["features"]) & set(bank["features"])


def test_the_bank_model_carries_its_held_out_roc_curves(
    trained: tuple[str, dict[str, Result], InMemoryNetwork],
) -> None:
    """The curves a chart beside other models draws: their areas are the reported AUCs."""
    _, results, _ = trained
    metrics = model(results, "bank")["metrics"]
    for which, key in (("joint", "auc"), ("bank_only", "auc_bank_only")):
        fpr, tpr = (np.array(metrics[which]["roc"][k]) for k in ("fpr", "tpr"))
        assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
        area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
        assert area == pytest.approx(results["bank"].summary[key], abs=1e-12), which


def test_providers_learn_no_label_or_feature_in_the_clear(
    finance: dict[str, Table], trained: tuple[str, dict[str, Result], InMemoryNetwork]
) -> None:
    _, _, net = trained
    labels = finance["bank"].column("default_12m")
    tags = {tag.split("/")[1] for _, _, tag, _ in net.captured if tag.startswith("vsb/")}
    assert tags == {"key", "tree", "gh", "m", "lvl", "h", "win", "part"}
    for _, to, tag, payload in net.captured:
        if to != "bank" and tag.startswith("vsb/gh/"):
            assert payload[:4] == b"BNPC"  # gradients travel only encrypted
    assert len(labels) > 0


def test_ou_trains_the_same_model_bit_for_bit(
    finance: dict[str, Table], trained: tuple[str, dict[str, Result], InMemoryNetwork]
) -> None:
    _, paillier, _ = trained
    okamoto = run_in_memory(
        make_spec(scheme="ou", key_bits=OU_BITS), proto.DEFINITION, finance, LIMITS
    )
    for party in ROLES:
        assert model(paillier, party) == json.loads(okamoto[party].artifacts["model.json"])  # type: ignore[union-attr]


def test_sampling_early_stopping_and_complete_secure_match_the_reference(
    finance: dict[str, Table],
) -> None:
    params: dict[str, int | float | str | None] = {
        "n_estimators": 6, "subsample": 0.8, "colsample_bytree": 0.6, "early_stopping_rounds": 2,
        "complete_secure_trees": 1, "max_depth": 2,
    }  # fmt: skip
    net = InMemoryNetwork(list(ROLES))
    results = run_in_memory(make_spec(**params), proto.DEFINITION, finance, LIMITS, network=net)
    fit, _, y, train = reference(finance, **params)
    bank = json.loads(results["bank"].artifacts["model.json"])  # type: ignore[union-attr]
    assert len(bank["trees"]) == len(fit.ensemble.trees)
    for stored, tree in zip(bank["trees"], fit.ensemble.trees, strict=True):
        assert {int(k): w for k, w in stored["leaves"].items()} == dict(tree.leaves)
    assert results["bank"].summary["auc"] == auc(y[~train], fit.margins[~train])  # type: ignore[union-attr]
    # The first tree is the bank's alone: no provider took part in it.
    assert not [t for _, _, t, _ in net.captured if t.startswith(("vsb/tree/0", "vsb/gh/0/"))]
    assert all("feature" in s for s in bank["trees"][0]["splits"].values())


def test_a_restarted_job_resends_the_same_bytes_and_model(finance: dict[str, Table]) -> None:
    """A second run on the same resume stores (a restart after the end) replays byte for byte."""
    spec = dataclasses.replace(make_spec(n_estimators=2, max_depth=2), job_id="cd" * 16)
    stores = {p: MemoryResumeStates() for p in ROLES}
    first, second = InMemoryNetwork(list(ROLES)), InMemoryNetwork(list(ROLES))
    a = run_in_memory(spec, proto.DEFINITION, finance, LIMITS, network=first, states=stores)
    b = run_in_memory(spec, proto.DEFINITION, finance, LIMITS, network=second, states=stores)
    for party in ROLES:
        assert a[party].artifacts["model.json"] == b[party].artifacts["model.json"]  # type: ignore[union-attr]
    sent = {(s, t, tag): p for s, t, tag, p in first.captured}
    again = [(s, t, tag, p) for s, t, tag, p in second.captured if (s, t, tag) in sent]
    assert again and all(sent[(s, t, tag)] == p for s, t, tag, p in again)


# --- what a deviating party can do ---------------------------------------------------------------


def tampered(tag_prefix: str, frm: str, change: Callable[[bytes], bytes]) -> InMemoryNetwork:
    net = InMemoryNetwork(list(ROLES))
    for party in ROLES:
        original = net.mailboxes[party].put

        def put(job_id: str, sender: str, tag: str, payload: bytes, original=original) -> bool:  # type: ignore[no-untyped-def]
            if tag.startswith(tag_prefix) and sender == frm:
                payload = change(payload)
            return original(job_id, sender, tag, payload)  # type: ignore[no-any-return]

        net.mailboxes[party].put = put  # type: ignore[method-assign, assignment]
    return net


def test_a_bank_key_without_a_valid_modulus_proof_is_refused(finance: dict[str, Table]) -> None:
    def break_proof(payload: bytes) -> bytes:
        key, proof = proto.decode_key(payload)
        return proto.encode_key(key, proof[:-40] + bytes(40))

    net = tampered("vsb/key", "bank", break_proof)
    with pytest.raises(ProofError):
        run_in_memory(make_spec(n_estimators=1), proto.DEFINITION, finance, LIMITS, network=net)
    assert not [t for s, _, t, _ in net.captured if s != "bank" and t.startswith("vsb/h/")]

    def drop_proof(payload: bytes) -> bytes:
        return proto.encode_key(proto.decode_key(payload)[0], b"")

    with pytest.raises((ProofError, InvalidMessageError)):
        run_in_memory(
            make_spec(n_estimators=1), proto.DEFINITION, finance, LIMITS,
            network=tampered("vsb/key", "bank", drop_proof),
        )  # fmt: skip


def test_a_malformed_histogram_ciphertext_is_refused(finance: dict[str, Table]) -> None:
    net = tampered("vsb/h/0/0/0", "tax", lambda p: p[:27] + b"\x00" * (len(p) - 27))
    with pytest.raises(InvalidCiphertextError):
        run_in_memory(make_spec(n_estimators=1), proto.DEFINITION, finance, LIMITS, network=net)


def test_a_histogram_with_impossible_sums_is_refused(finance: dict[str, Table]) -> None:
    """The tax bureau sends encrypted sums no rows can have (a negative hessian sum)."""
    seen: dict[str, pl.PublicKey] = {}

    def forge(payload: bytes) -> bytes:
        key = seen["key"]
        count = (len(payload) - 27) // (2 * key.bits // 8)
        value = (key.n - (1 << 40)) % key.n  # one pair with H_L = -2^(40-W) < 0
        return pl.encode_ciphertexts(key, pl.Encryptor(key).encrypt_raw([value] * count))

    net = InMemoryNetwork(list(ROLES))
    for party in ROLES:
        base = net.mailboxes[party].put

        def put(job_id: str, sender: str, tag: str, payload: bytes, base=base) -> bool:  # type: ignore[no-untyped-def]
            if tag == "vsb/key":
                seen["key"] = pl.PublicKey.from_bytes(proto.decode_key(payload)[0])
            if tag == "vsb/h/0/0/0" and sender == "tax":
                payload = forge(payload)
            return base(job_id, sender, tag, payload)  # type: ignore[no-any-return]

        net.mailboxes[party].put = put  # type: ignore[method-assign, assignment]
    with pytest.raises(InvalidMessageError, match="cannot have"):
        run_in_memory(make_spec(n_estimators=1), proto.DEFINITION, finance, LIMITS, network=net)


def test_a_partition_that_does_not_match_the_histogram_is_refused(
    finance: dict[str, Table],
) -> None:
    """A provider that wins a node but returns other rows than its split's is caught by the sums."""

    def flip(payload: bytes) -> bytes:
        parts = proto.decode_parts(payload)
        return proto.encode_parts(
            [(node, picked, lookup, ~left) for node, (picked, lookup, left) in parts.items()]
        )

    net = InMemoryNetwork(list(ROLES))
    for party in ROLES:
        base = net.mailboxes[party].put

        def put(job_id: str, sender: str, tag: str, payload: bytes, base=base) -> bool:  # type: ignore[no-untyped-def]
            if tag.startswith("vsb/part/") and sender != "bank":
                payload = flip(payload)  # both providers lie about every node they win
            return base(job_id, sender, tag, payload)  # type: ignore[no-any-return]

        net.mailboxes[party].put = put  # type: ignore[method-assign, assignment]
    with pytest.raises(InvalidMessageError, match="does not match"):
        run_in_memory(make_spec(n_estimators=2), proto.DEFINITION, finance, LIMITS, network=net)


def test_the_approval_text_and_the_trust_each_side_needs() -> None:
    paillier, okamoto = proto.learns(make_spec()), proto.learns(make_spec(scheme="ou"))
    for provider in ("tax", "registry"):
        assert "DEVIATING bank" in paillier[provider] and "Π^mod" in paillier[provider]
        assert "TRUSTS bank" in okamoto[provider]
        assert "instance space" in paillier[provider]
        assert set(proto.trusts(make_spec(), provider)) == {"bank"}
        assert "Okamoto" in proto.trusts(make_spec(scheme="ou"), provider)["bank"]
    assert "per-bin gradient sums" in paillier["bank"]
    assert set(proto.trusts(make_spec(), "bank")) == {"tax", "registry"}
    assert "complete_secure" not in proto.learns(make_spec(complete_secure_trees=1))["tax"]
    assert "first 1 tree" in proto.learns(make_spec(complete_secure_trees=1))["tax"]
    assert PROTOCOLS["vertical_secureboost"] is proto.DEFINITION
    for bad in ({"max_depth": 11}, {"max_bin": 1}, {"objective": "multi:softmax"},
                {"base_score": 1.5}, {"scheme": "rsa"}):  # fmt: skip
        with pytest.raises(InvalidJobSpecError):
            proto.validate(make_spec(**bad))


# --- scoring new applicants ----------------------------------------------------------------------


def loaders(job_id: str, results: dict[str, Result]) -> dict[str, Callable[[str, str], Result]]:
    def loader(party: str) -> Callable[[str, str], Result]:
        def load(job: str, protocol: str) -> Result:
            if job != job_id or protocol != "vertical_secureboost" or party not in results:
                raise PriorResultError(f"{party} holds no result of a {protocol} job {job}")
            return results[party]

        return load

    return {p: loader(p) for p in ROLES}


def score_spec(model_job: str) -> JobSpec:
    parts = (
        Participant("bank", "label_holder", "applicants", {"id": "company_id"}),
        Participant("tax", "feature_holder", "tax_filings", {"id": "company_id"}),
        Participant("registry", "feature_holder", "business_registry", {"id": "company_id"}),
    )
    return JobSpec(
        "vertical_tree_score", parts, ("bank",), "score applicants (trees)", "bank",
        {"model_job": model_job},
    )  # fmt: skip


def test_scores_equal_the_plaintext_model(
    data: dict[str, Table], trained: tuple[str, dict[str, Result], InMemoryNetwork]
) -> None:
    job_id, results, _ = trained
    tables = {
        "bank": data["applicants"],
        "tax": data["tax_filings"],
        "registry": data["business_registry"],
    }
    net = InMemoryNetwork(list(ROLES))
    out = run_in_memory(
        score_spec(job_id), score.DEFINITION, tables, LIMITS, network=net,
        prior_results=loaders(job_id, results),
    )  # fmt: skip
    bank = out["bank"]
    assert bank is not None and out["tax"] is None and out["registry"] is None
    # The plaintext model applied to the joined applicants, in the clear.
    doc, parts = model(results, "bank"), {p: model(results, p) for p in ("tax", "registry")}
    ids = {p: {c: i for i, c in enumerate(t.column("company_id"))} for p, t in tables.items()}
    common = sorted(set(ids["bank"]) & set(ids["tax"]) & set(ids["registry"]))
    own = {f: tables["bank"].numeric(f)[[ids["bank"][c] for c in common]] for f in doc["features"]}
    decisions = {}
    for p, part in parts.items():
        splits = score.provider_splits(part)
        cols = {f: tables[p].numeric(f)[[ids[p][c] for c in common]] for f in part["features"]}
        decisions[p] = sb.provider_decisions(splits, cols, len(common))
    margin = sb.bank_margins(score.bank_trees(doc), doc["base_margin"], own, decisions, len(common))
    expected = dict(zip(common, sb.sigmoid(margin).tolist(), strict=True))
    rows = [line.split(",") for line in bank.artifacts["scores.csv"].decode().splitlines()[1:]]
    scored = {r[0]: float(r[1]) for r in rows if r[3] == "1"}
    assert scored.keys() == expected.keys() and len(scored) == bank.summary["scored"]
    assert len(scored) > 10
    assert all(abs(scored[k] - expected[k]) < 1e-6 for k in scored)
    assert {r[2] for r in rows if r[3] == "0"} <= {"refer"}
    # Providers received nothing but the alignment: none of the bank's splits or scores.
    assert not [t for _, to, t, _ in net.captured if to != "bank" and not t.startswith("align/")]
