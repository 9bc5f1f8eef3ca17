"""The tree algorithm against XGBoost on real public data, and its encrypted kernels."""

from __future__ import annotations

import os
from collections.abc import Iterator

import lifelines
import numpy as np
import pytest
import xgboost as xgb  # the dev extra's reference (xgboost-cpu)

from bund.compute import he, insecure
from bund.compute.learn import logistic as lg
from bund.compute.learn import secureboost as sb
from bund.compute.learn.metrics import auc
from bund.parties.demo_data import generate_finance
from bund.parties.protocols.vertical_alignment import feature_matrix, numeric_features

CONFIG = sb.BoostConfig(
    n_estimators=30, max_depth=4, learning_rate=0.3, reg_lambda=1.0, gamma=0.0,
    min_child_weight=1.0, max_bin=32, base_score=0.5, seed=1,
)  # fmt: skip


def split(rows: int, seed: int = 1) -> np.ndarray:
    train = np.zeros(rows, dtype=bool)
    train[lg.split_rows(rows, 0.3, seed)[0]] = True
    return train


def xgboost_auc(
    sources: list[sb.LocalSplits], y: np.ndarray, train: np.ndarray
) -> tuple[float, np.ndarray]:
    """XGBoost's hist trees on the same bins (the bin indices as features) and parameters."""
    bins = np.column_stack([s.bins for s in sources]).astype(np.float64)
    model = xgb.XGBClassifier(
        n_estimators=CONFIG.n_estimators, max_depth=CONFIG.max_depth,
        learning_rate=CONFIG.learning_rate, reg_lambda=CONFIG.reg_lambda, gamma=CONFIG.gamma,
        min_child_weight=CONFIG.min_child_weight, max_bin=CONFIG.max_bin, tree_method="hist",
        base_score=CONFIG.base_score, subsample=1.0, colsample_bytree=1.0, n_jobs=1,
    )  # fmt: skip
    model.fit(bins[train], y[train])
    p = model.predict_proba(bins[~train])[:, 1]
    return auc(y[~train], p), p


def compare(blocks: list[np.ndarray], y: np.ndarray) -> tuple[float, float, float]:
    train = split(len(y))
    fit, sources = sb.fit(blocks, y, train, CONFIG)
    ours = auc(y[~train], fit.margins[~train])
    theirs, p = xgboost_auc(sources, y, train)
    return ours, theirs, float(np.abs(sb.sigmoid(fit.margins[~train]) - p).max())


def test_equals_xgboost_on_breast_cancer_split_three_ways() -> None:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    ours, theirs, gap = compare([x[:, :10], x[:, 10:20], x[:, 20:]], y.astype(np.float64))
    assert abs(ours - theirs) <= 1e-3, (ours, theirs)
    assert gap < 1e-4  # the same trees: probabilities differ by float32 rounding only


def test_equals_xgboost_on_the_actg175_trial_split_three_ways() -> None:
    """ACTG 175 (AIDS Clinical Trials Group study 175, 2,139 patients), shipped by lifelines."""
    import csv

    path = os.path.join(os.path.dirname(lifelines.__file__), "datasets", "ACTG175.csv")
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    drop = {"", "pidnum", "cens", "days", "arms", "cd496", "r"}  # ids, outcome, a column with gaps
    names = [c for c in rows[0] if c not in drop]
    x = np.array([[float(r[c]) for c in names] for r in rows])
    y = np.array([float(r["cens"]) for r in rows])
    third = len(names) // 3
    ours, theirs, gap = compare([x[:, :third], x[:, third : 2 * third], x[:, 2 * third :]], y)
    assert abs(ours - theirs) <= 1e-3, (ours, theirs)
    assert gap < 1e-4


def test_equals_xgboost_on_the_demo_finance_data() -> None:
    data = generate_finance(3000, 5)
    tables = [data["loan_book"], data["tax_filings"], data["business_registry"]]
    ids = [{c: i for i, c in enumerate(t.column("company_id"))} for t in tables]
    common = sorted(set(ids[0]) & set(ids[1]) & set(ids[2]))
    blocks = []
    for table, index, exclude in zip(
        tables, ids, ({"company_id", "default_12m"}, {"company_id"}, {"company_id"}), strict=True
    ):
        names, _ = numeric_features(table, exclude)
        blocks.append(feature_matrix(table, names, [index[c] for c in common]))
    y = tables[0].numeric("default_12m")[[ids[0][c] for c in common]]
    ours, theirs, gap = compare(blocks, y)
    assert abs(ours - theirs) <= 1e-3, (ours, theirs)
    assert gap < 1e-4


def test_each_sides_scoring_part_gives_the_reference_margins() -> None:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    blocks = [x[:, :10], x[:, 10:20], x[:, 20:]]
    train = split(len(y))
    fit, sources = sb.fit(blocks, y.astype(np.float64), train, CONFIG)
    trees = []
    for tree in fit.ensemble.trees:
        nodes = {}
        for node, s in tree.splits.items():
            if s.party == 0:
                nodes[node] = sb.BankNode(feature=f"b{s.ref}", threshold=s.threshold)
            else:
                nodes[node] = sb.BankNode(provider=f"p{s.party}", lookup=s.ref)
        trees.append(sb.BankTree(nodes, tree.leaves))
    decisions = {}
    for party in (1, 2):
        source = sources[party]
        splits = {
            i: sb.ProviderSplit(f"f{f}", float(source.binning.cuts[f][k]))
            for i, (f, k) in enumerate(source.lookups)
        }
        columns = {f"f{j}": blocks[party][:, j] for j in range(blocks[party].shape[1])}
        decisions[f"p{party}"] = sb.provider_decisions(splits, columns, len(y))
    own = {f"b{j}": blocks[0][:, j] for j in range(10)}
    margins = sb.bank_margins(trees, fit.ensemble.base_margin, own, decisions, len(y))
    assert np.array_equal(margins, fit.margins)


def test_bins_never_leave_an_empty_bin_and_cut_below() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(size=1000), rng.integers(0, 3, 1000), np.zeros(1000)])
    binning = sb.fit_binning(x, 8)
    bins = binning.apply(x)
    assert binning.candidates == [7, 2, 0]
    for f in range(3):
        assert set(bins[:, f].tolist()) == set(range(binning.candidates[f] + 1))
        for k, cut in enumerate(binning.cuts[f]):
            assert np.array_equal(bins[:, f] <= k, x[:, f] < cut)


@pytest.fixture
def small_keys() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()
    yield
    insecure.disable_insecure_test_parameters()


@pytest.mark.usefixtures("small_keys")
@pytest.mark.parametrize(("scheme", "bits"), [("paillier", 512), ("ou", 1024)])
def test_encrypted_histograms_equal_the_plaintext_ones(scheme: str, bits: int) -> None:
    rng = np.random.default_rng(1)
    secret = he.create_scheme(scheme).generate_keypair(bits)
    public = secret.public_key
    values = rng.integers(-1000, 1000, 40)
    bins = rng.integers(0, 4, (3, 40))
    bins[2] = np.minimum(bins[2], 1)  # a feature with empty bins
    vector = public.encryptor().encrypt(values)
    hist = vector.histogram(bins, [4, 4, 4])
    expected = np.concatenate([np.bincount(b, weights=values, minlength=4) for b in bins])
    assert secret.decrypt(hist) == expected.astype(np.int64).tolist()
    running = secret.decrypt(hist.prefix_sums([4, 4, 4]))
    assert (
        running
        == np.concatenate([np.cumsum(expected[i : i + 4]) for i in (0, 4, 8)])
        .astype(np.int64)
        .tolist()
    )
    assert secret.decrypt(hist - hist.take([3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8])) == [
        int(a - b)
        for a, b in zip(
            expected, np.concatenate([expected[i : i + 4][::-1] for i in (0, 4, 8)]), strict=True
        )
    ]
    pool = public.encryptor().pool(4)  # an evaluator's own full randomness
    assert pool.refill(4) == 4 and len(pool) == 4
    packed = hist.squeeze(1 << 20, public.packing_bits(10))
    data = packed.to_bytes(pool)
    assert len(pool) == 4 - len(packed)  # each value handed out once
    again = public.packed_from_bytes(
        data, slot_bits=22, slots=packed.layout[1], count=12, bound=1 << 20, frac_bits=0
    )
    assert secret.decrypt_packed(again) == expected.astype(np.int64).tolist()
