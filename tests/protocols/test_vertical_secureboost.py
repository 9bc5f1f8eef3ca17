"""Vertical SecureBoost over the in-memory transport, checked against the plaintext reference."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

from bund.compute import insecure
from bund.compute.learn import logistic as lg
from bund.compute.learn import secureboost as sb
from bund.compute.learn.metrics import auc
from bund.parties.data import Table
from bund.parties.demo_data import generate_finance
from bund.parties.jobs import JobSpec, Participant, run_in_memory
from bund.parties.protocols import vertical_secureboost as proto
from bund.parties.transport import InMemoryNetwork
from tests.protocols.test_vertical_lr import EXCLUDE, ROLES, joined_raw

LIMITS = {"psi_max_set_size": 100_000, "job_max_messages": 1_000_000, "job_max_bytes": 1 << 34}
PARAMS: dict[str, int | float | str] = {
    "key_bits": 512, "n_estimators": 4, "max_depth": 3, "learning_rate": 0.3, "max_bin": 16,
    "seed": 3, "test_fraction": 0.3, "cutoff": 0.2,
}  # fmt: skip


@pytest.fixture(autouse=True)
def small_keys() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()  # small keys: tests only
    yield


@pytest.fixture(scope="module")
def finance() -> dict[str, Table]:
    data = generate_finance(600, 11)
    return {party: data[name] for party, name in ROLES.items()}


def make_spec(**params: int | float | str) -> JobSpec:
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


def reference(finance: dict[str, Table], **params: int | float | str) -> sb.BoostFit:
    raw = joined_raw(finance)
    rows = {c: i for i, c in enumerate(finance["bank"].column("company_id"))}
    common = sorted(set(rows) & set(finance["tax"].column("company_id")) & set(finance["registry"].column("company_id")))
    y = finance["bank"].numeric("default_12m")[[rows[c] for c in common]]
    spec_params = proto.VerticalSecureBoostParams.of(make_spec(**params))
    train = np.zeros(len(y), dtype=bool)
    train[lg.split_rows(len(y), spec_params.test_fraction, spec_params.seed)[0]] = True
    fit, _ = sb.fit([raw[p] for p in EXCLUDE], y, train, proto.config_of(spec_params))
    return fit


def run(finance: dict[str, Table], **params: int | float | str) -> dict:  # type: ignore[type-arg]
    return run_in_memory(make_spec(**params), proto.DEFINITION, finance, LIMITS)


def test_matches_the_plaintext_reference(finance: dict[str, Table]) -> None:
    results = run(finance)
    fit = reference(finance)
    bank = json.loads(results["bank"].artifacts["model.json"])
    assert len(bank["trees"]) == len(fit.ensemble.trees)
    for stored, tree in zip(bank["trees"], fit.ensemble.trees, strict=True):
        assert {int(k): v for k, v in stored["leaves"].items()} == dict(tree.leaves)
        assert sorted(int(k) for k in stored["splits"]) == sorted(tree.splits)
    print(results["bank"].summary)
