"""Vertical LR over the in-memory transport, checked against the plaintext reference."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

from bund.compute import insecure
from bund.compute.learn import logistic as lg
from bund.compute.learn.metrics import auc
from bund.parties.data import Table
from bund.parties.demo_data import generate_finance
from bund.parties.jobs import InvalidJobSpecError, JobSpec, Participant, run_in_memory
from bund.parties.protocols import PROTOCOLS
from bund.parties.protocols import vertical_lr as proto
from bund.parties.protocols.vertical_alignment import feature_matrix, numeric_features
from bund.parties.transport import InMemoryNetwork

LIMITS = {"psi_max_set_size": 100_000}
ROLES = {"bank": "loan_book", "tax": "tax_filings", "registry": "business_registry"}
PARAMS: dict[str, int | float] = {
    "key_bits": 512, "epochs": 6, "batch_size": 64, "learning_rate": 0.5, "lr_decay": 0.05,
    "l2": 1e-3, "seed": 3, "test_fraction": 0.3, "cutoff": 0.2,
}  # fmt: skip


@pytest.fixture(autouse=True)
def small_keys() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()  # small keys: tests only
    yield


@pytest.fixture(scope="module")
def finance() -> dict[str, Table]:
    data = generate_finance(1500, 11)
    return {party: data[name] for party, name in ROLES.items()}


def make_spec(receivers: tuple[str, ...] = tuple(ROLES), **params: int | float) -> JobSpec:
    parts = (
        Participant(
            "bank", "label_holder", "loan_book", {"id": "company_id", "label": "default_12m"}
        ),
        Participant("tax", "feature_holder", "tax_filings", {"id": "company_id"}),
        Participant("registry", "feature_holder", "business_registry", {"id": "company_id"}),
    )
    return JobSpec("vertical_lr", parts, receivers, "credit model", "bank", {**PARAMS, **params})


EXCLUDE = {"bank": {"company_id", "default_12m"}, "tax": {"company_id"}, "registry": {"company_id"}}


def joined_raw(tables: dict[str, Table], ids: list[str] | None = None) -> dict[str, np.ndarray]:
    """Each party's raw numeric features at ``ids`` (default: the common ids, ascending)."""
    rows = {p: {c: i for i, c in enumerate(t.column("company_id"))} for p, t in tables.items()}
    if ids is None:
        ids = sorted(set(rows["bank"]) & set(rows["tax"]) & set(rows["registry"]))
    out = {}
    for party, exclude in EXCLUDE.items():
        names, _ = numeric_features(tables[party], exclude)
        out[party] = feature_matrix(tables[party], names, [rows[party][c] for c in ids])
    return out


def joined(
    tables: dict[str, Table],
) -> tuple[list[lg.IntArray], np.ndarray, np.ndarray, np.ndarray]:
    """The plaintext reference's view: the three parties joined on company id."""
    rows = {p: {c: i for i, c in enumerate(t.column("company_id"))} for p, t in tables.items()}
    common = sorted(set(rows["bank"]) & set(rows["tax"]) & set(rows["registry"]))
    y = tables["bank"].numeric("default_12m")[[rows["bank"][c] for c in common]]
    train, test = lg.split_rows(len(common), PARAMS["test_fraction"], int(PARAMS["seed"]))
    raw = joined_raw(tables, common)
    blocks = [lg.prepare_features(raw[party], train) for party in EXCLUDE]
    return blocks, y, train, test


def config() -> lg.TrainConfig:
    keys = ("epochs", "batch_size", "learning_rate", "lr_decay", "l2", "seed")
    return lg.TrainConfig(**{k: PARAMS[k] for k in keys})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def run(finance: dict[str, Table]) -> tuple[dict, InMemoryNetwork]:  # type: ignore[type-arg]
    insecure.enable_insecure_test_parameters()
    net = InMemoryNetwork(list(ROLES))
    results = run_in_memory(make_spec(), proto.DEFINITION, finance, LIMITS, network=net)
    insecure.disable_insecure_test_parameters()
    return results, net


def test_matches_the_plaintext_reference(finance: dict[str, Table], run: tuple) -> None:  # type: ignore[type-arg]
    results, _ = run
    blocks, y, train, test = joined(finance)
    raw = joined_raw(finance)
    fit = lg.fit_vertical(blocks, y, train, config())
    bank = results["bank"]
    model = json.loads(bank.artifacts["model.json"])
    assert np.allclose(list(model["coefficients"].values()), fit.weights[0], atol=1e-4, rtol=0)
    assert model["intercept"] == pytest.approx(fit.bias, abs=1e-4)
    for k, party in enumerate(("tax", "registry"), start=1):
        own = json.loads(results[party].artifacts["model.json"])
        assert np.allclose(list(own["coefficients"].values()), fit.weights[k], atol=1e-4, rtol=0)
        # Each part keeps the standardisation of its training rows, to score with it later.
        scaler = lg.Standardiser(
            np.array([own["mean"][f] for f in own["features"]]),
            np.array([own["scale"][f] for f in own["features"]]),
        )
        assert np.array_equal(scaler.apply(raw[party]), blocks[k])
        assert own["format"] == proto.MODEL_FORMAT and own["label_holder"] == "bank"
        assert "intercept" not in own and "metrics" not in own  # nothing of the bank's
    assert model["providers"] == ["tax", "registry"] and model["role"] == "label_holder"
    ref_auc = auc(y[test], lg.predict_scores(blocks, fit, test))
    assert bank.summary["auc"] == pytest.approx(ref_auc, abs=1e-3)
    assert bank.summary["epochs_run"] == fit.epochs_run
    assert bank.summary["test_rows"] == len(test)


def test_joint_beats_bank_only_and_reports_both(run: tuple) -> None:  # type: ignore[type-arg]
    bank = run[0]["bank"]
    assert bank.summary["auc"] > bank.summary["auc_bank_only"] + 0.05, bank.summary
    assert 0 < bank.summary["ks"] <= 1
    cells = ("true_positive", "false_positive", "true_negative", "false_negative")
    assert sum(int(bank.summary[c]) for c in cells) == bank.summary["test_rows"]
    for name in ("roc.png", "ks.png"):
        assert bank.artifacts[name].startswith(b"\x89PNG")
    # The providers' weights never reach the bank.
    assert "tax_credit_score" not in bank.artifacts["model.json"].decode()


def test_no_label_feature_or_id_crosses_the_wire(finance: dict[str, Table], run: tuple) -> None:  # type: ignore[type-arg]
    _, net = run
    wire = b"".join(p for _, _, _, p in net.captured)
    for party in ROLES:
        for v in finance[party].column("company_id")[:40]:
            assert v.encode() not in wire
    for name in ("annual_revenue_10k_cny", "tax_credit_score"):
        for v in finance["tax"].column(name)[:30]:
            if len(v) >= 5:
                assert v.encode() not in wire
    for _sender, _, tag, payload in net.captured:
        if tag.startswith(("vlr/r/", "vlr/g/")):
            assert payload[:4] == b"BNPC"  # residuals and gradients only as ciphertexts


def test_small_batches_are_refused(finance: dict[str, Table]) -> None:
    with pytest.raises(InvalidJobSpecError, match="too small"):
        run_in_memory(make_spec(batch_size=12, epochs=1), proto.DEFINITION, finance, LIMITS)


def test_spec_validation() -> None:
    spec = make_spec()
    proto.validate(spec)
    assert PROTOCOLS["vertical_lr"] is proto.DEFINITION
    # Each party learns which of its ids the others hold: declared per direction.
    assert proto.outputs(spec) == {"model"} | {
        "membership:tax>bank",
        "membership:registry>bank",
        "membership:bank>tax",
        "membership:registry>tax",
        "membership:bank>registry",
        "membership:tax>registry",
    }
    assert set(proto.learns(spec)) == set(ROLES)
    with pytest.raises(InvalidJobSpecError, match="batch_size"):
        proto.validate(make_spec(batch_size=0))
    with pytest.raises(InvalidJobSpecError, match="unknown parameter"):
        proto.validate(make_spec(bins=3))
    # A provider that received nothing could not apply its part of the model later.
    with pytest.raises(InvalidJobSpecError, match=r"add \['tax', 'registry'\] to the receivers"):
        proto.validate(make_spec(("bank",)))


def _attacks(
    blocks: list[lg.IntArray], y: np.ndarray, train: np.ndarray, reshuffle: bool, epochs: int
) -> tuple[float, float, float]:
    """Label-inference AUCs of what the tax bureau sees: its per-batch gradients Σ x·(p − y).

    The protocol test above shows the federated run equals the reference bit for bit, so the
    reference's gradient trace is exactly the provider's view.
    """
    import dataclasses

    cfg = dataclasses.replace(config(), epochs=epochs, tol=0.0)
    fit = lg.fit_vertical(blocks, y, train, cfg, reshuffle=reshuffle)
    x = blocks[1].astype(float)
    pos = {int(r): k for k, r in enumerate(train)}
    eqs, rhs, proj = [], [], np.zeros(len(train))
    for rows, g in fit.gradient_trace[0]:
        cols = [pos[int(r)] for r in rows]
        for j in range(x.shape[1]):
            row = np.zeros(len(train))
            row[cols] = x[rows, j]
            eqs.append(row)
            rhs.append(float(g[j]))
        proj[cols] += -x[rows] @ g.astype(float)
    # Solve every batch equation X_S^T r_S = g for per-row residuals (taken as constant).
    r_hat = np.linalg.lstsq(np.array(eqs), np.array(rhs), rcond=None)[0]
    own_model = auc(y[train], x[train] @ fit.weights[1])
    return auc(y[train], -r_hat), auc(y[train], proj), own_model


def test_gradient_label_leakage_is_no_more_than_the_providers_own_model(
    finance: dict[str, Table],
) -> None:
    blocks, y, train, _ = joined(finance)
    solve, direction, own = _attacks(blocks, y, train, reshuffle=False, epochs=30)
    # Fixed batch membership: the attacks do no better than scoring with the provider's own
    # final weights, which it holds by design (measured: 0.849, 0.800 vs 0.863).
    assert solve <= own + 0.02 and direction <= own + 0.02, (solve, direction, own)
    # The same attack against batches reshuffled every epoch recovers the labels (measured
    # 0.989): why the batches are fixed.
    solve_reshuffled, _, own_reshuffled = _attacks(blocks, y, train, reshuffle=True, epochs=30)
    assert solve_reshuffled >= 0.95 > own_reshuffled + 0.05, (solve_reshuffled, own_reshuffled)


def test_a_forged_gradient_ciphertext_is_refused(finance: dict[str, Table]) -> None:
    from bund.compute.errors import InvalidCiphertextError

    net = InMemoryNetwork(list(ROLES))
    original = net.mailboxes["bank"].put

    def put(job_id: str, frm: str, tag: str, payload: bytes) -> bool:
        if tag == "vlr/g/0/0" and frm == "tax":
            payload = payload[:27] + b"\x00" * (len(payload) - 27)  # 0 is outside (0, n²)
        return original(job_id, frm, tag, payload)

    net.mailboxes["bank"].put = put  # type: ignore[method-assign, assignment]
    with pytest.raises(InvalidCiphertextError):
        run_in_memory(make_spec(epochs=1), proto.DEFINITION, finance, LIMITS, network=net)
