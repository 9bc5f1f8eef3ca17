"""Scoring applicants with a trained vertical model, in memory, against the plaintext model."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from bund.compute import insecure
from bund.compute.dp import pairwise_masks
from bund.compute.learn import logistic as lg
from bund.parties.data import DatasetError, Table
from bund.parties.demo_data import generate_finance
from bund.parties.jobs import (
    InvalidJobSpecError,
    JobSpec,
    Participant,
    PriorResultError,
    Result,
    new_job_id,
    run_in_memory,
)
from bund.parties.protocols import PROTOCOLS
from bund.parties.protocols import vertical_lr as training
from bund.parties.protocols import vertical_score as proto
from bund.parties.transport import InMemoryNetwork
from tests.protocols.test_vertical_lr import (
    LIMITS,
    PARAMS,
    ROLES,
    config,
    joined,
    joined_raw,
    make_spec,
)

APPLICANTS = 200
CUTOFF = 0.3
Trained = tuple[str, dict[str, Result]]


@pytest.fixture(autouse=True)
def small_keys() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()  # small keys: tests only
    yield


@pytest.fixture(scope="module")
def data() -> dict[str, Table]:
    return generate_finance(1500, 11, applicants=APPLICANTS)


def train(tables: dict[str, Table], parties: tuple[str, ...]) -> Trained:
    """Run vertical_lr between ``parties`` and return its job id and every party's result."""
    spec = make_spec()
    spec = dataclasses.replace(
        spec,
        job_id=new_job_id(),
        participants=tuple(p for p in spec.participants if p.party in parties),
        receivers=parties,
    )
    insecure.enable_insecure_test_parameters()
    results = run_in_memory(spec, training.DEFINITION, tables, LIMITS)
    return spec.job_id, {p: r for p, r in results.items() if r is not None}


@pytest.fixture(scope="module")
def trained(data: dict[str, Table]) -> Trained:
    return train({p: data[d] for p, d in ROLES.items()}, tuple(ROLES))


def loaders(trained: Trained) -> dict[str, Callable[[str, str], Result]]:
    """Each party's store of earlier results: just its own result of the training job."""
    job_id, results = trained

    def loader(party: str) -> Callable[[str, str], Result]:
        def load(job: str, protocol: str) -> Result:
            if job != job_id or protocol != "vertical_lr" or party not in results:
                raise PriorResultError(f"{party} holds no result of a {protocol} job {job}")
            return results[party]

        return load

    return {p: loader(p) for p in ROLES}


def score_spec(
    model_job: str, providers: tuple[str, ...] = ("tax", "registry"), **params: object
) -> JobSpec:
    parts = [Participant("bank", "label_holder", "applicants", {"id": "company_id"})]
    parts += [Participant(p, "feature_holder", ROLES[p], {"id": "company_id"}) for p in providers]
    return JobSpec(
        "vertical_score",
        tuple(parts),
        ("bank",),
        "score new SME applicants",
        "bank",
        {"model_job": model_job, **params},  # type: ignore[dict-item]
    )


def scoring_tables(data: dict[str, Table]) -> dict[str, Table]:
    return {
        "bank": data["applicants"],
        "tax": data["tax_filings"],
        "registry": data["business_registry"],
    }


def read_scores(result: Result) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(result.artifacts["scores.csv"].decode())))


def reference(data: dict[str, Table], ids: list[str]) -> np.ndarray:
    """The plaintext model, trained on the joined data, applied to the joined applicants."""
    finance = {p: data[d] for p, d in ROLES.items()}
    blocks, y, train_rows, _ = joined(finance)
    fit = lg.fit_vertical(blocks, y, train_rows, config())
    raw_train = joined_raw(finance)
    tables = dict(finance, bank=data["applicants"])
    raw = joined_raw(tables, ids)
    scaled = [
        lg.Standardiser.fit(raw_train[p][train_rows]).apply(raw[p])
        for p in ("bank", "tax", "registry")
    ]
    return lg.sigmoid(lg.predict_scores(scaled, fit, np.arange(len(ids))))


def test_scores_match_the_plaintext_model(data: dict[str, Table], trained: Trained) -> None:
    net = InMemoryNetwork(list(ROLES))
    results = run_in_memory(
        score_spec(trained[0], cutoff=CUTOFF),
        proto.DEFINITION,
        scoring_tables(data),
        LIMITS,
        network=net,
        prior_results=loaders(trained),
    )
    bank = results["bank"]
    assert bank is not None and results["tax"] is None and results["registry"] is None
    rows = read_scores(bank)
    applicants = data["applicants"].column("company_id")
    assert [r["id"] for r in rows] == list(applicants)
    held = set(data["tax_filings"].column("company_id")) & set(
        data["business_registry"].column("company_id")
    )
    matched = sorted(c for c in applicants if c in held)
    assert 0 < len(matched) < APPLICANTS
    expected = dict(zip(matched, reference(data, matched).tolist(), strict=True))
    for r in rows:
        if r["id"] in expected:
            p = expected[r["id"]]
            assert float(r["probability"]) == pytest.approx(p, abs=2e-6)
            assert (
                r["decision"] == ("decline" if p >= CUTOFF else "approve") and r["matched"] == "1"
            )
        else:  # not held by every provider: no score, referred to a person
            assert r["probability"] == "" and r["decision"] == "refer" and r["matched"] == "0"
    summary = bank.summary
    assert summary["scored"] == len(matched) and summary["unmatched"] == APPLICANTS - len(matched)
    assert summary["approve"] + summary["decline"] == len(matched) > summary["decline"] > 0  # type: ignore[operator]
    # Neither an id nor a provider's own partial scores cross the wire: the bank gets them masked.
    wire = b"".join(p for _, _, _, p in net.captured)
    assert not any(c.encode() in wire for c in applicants)
    tax = [p for frm, _, tag, p in net.captured if frm == "tax" and tag.startswith("vsc/s/")]
    registry = [
        p for frm, _, tag, p in net.captured if frm == "registry" and tag.startswith("vsc/s/")
    ]
    a, b = (pairwise_masks.decode_vector(m[0], len(matched)) for m in (tax, registry))
    tax_alone = np.array(pairwise_masks.unmask_sum([a]), dtype=np.float64) / (
        1 << lg.SCORE_FRAC_BITS
    )
    assert np.abs(tax_alone).min() > 1e3  # uniform mod 2^64: nothing like a score of a few logits
    total = np.array(pairwise_masks.unmask_sum([a, b]), dtype=np.float64) / (
        1 << lg.SCORE_FRAC_BITS
    )
    assert np.abs(total).max() < 20


def test_one_provider_scores_without_masks(data: dict[str, Table]) -> None:
    tables = {"bank": data["loan_book"], "tax": data["tax_filings"]}
    model = train(tables, ("bank", "tax"))
    results = run_in_memory(
        score_spec(model[0], ("tax",)),
        proto.DEFINITION,
        {"bank": data["applicants"], "tax": data["tax_filings"]},
        LIMITS,
        prior_results=loaders(model),
    )
    bank = results["bank"]
    assert bank is not None
    in_tax = set(data["tax_filings"].column("company_id"))
    assert bank.summary["scored"] == sum(
        c in in_tax for c in data["applicants"].column("company_id")
    )
    assert bank.summary["cutoff"] == PARAMS["cutoff"]  # the training job's cut-off by default
    assert "sum of the providers" not in proto.learns(score_spec(model[0], ("tax",)))["bank"]


def test_a_party_without_the_model_refuses(data: dict[str, Table], trained: Trained) -> None:
    stores = loaders(trained)
    stores["registry"] = loaders(("0" * 32, {}))["registry"]
    with pytest.raises(PriorResultError, match="registry holds no result"):
        run_in_memory(
            score_spec(trained[0]),
            proto.DEFINITION,
            scoring_tables(data),
            LIMITS,
            prior_results=stores,
        )


def test_other_providers_than_in_training_are_refused(
    data: dict[str, Table], trained: Trained
) -> None:
    with pytest.raises(InvalidJobSpecError, match="score with exactly those"):
        run_in_memory(
            score_spec(trained[0], ("tax",)),
            proto.DEFINITION,
            scoring_tables(data),
            LIMITS,
            prior_results=loaders(trained),
        )


def test_applicants_lacking_a_model_column_are_refused(
    data: dict[str, Table], trained: Trained
) -> None:
    applicants = data["applicants"]
    cut = Table.from_columns(
        "applicants",
        {c: list(applicants.column(c)) for c in applicants.columns if c != "collateral"},
    )
    tables = dict(scoring_tables(data), bank=cut)
    with pytest.raises(DatasetError, match="collateral"):
        run_in_memory(
            score_spec(trained[0]), proto.DEFINITION, tables, LIMITS, prior_results=loaders(trained)
        )


def test_a_damaged_model_is_refused(data: dict[str, Table], trained: Trained) -> None:
    job_id, results = trained
    broken = Result(results["tax"].summary, {"model.json": b'{"format": "something else"}'})
    stores = loaders((job_id, dict(results, tax=broken)))
    with pytest.raises(PriorResultError, match="not a feature_holder part"):
        run_in_memory(
            score_spec(job_id), proto.DEFINITION, scoring_tables(data), LIMITS, prior_results=stores
        )


def test_spec_validation() -> None:
    job = "a" * 32
    spec = score_spec(job)
    proto.validate(spec)
    assert PROTOCOLS["vertical_score"] is proto.DEFINITION
    # The providers learn which of their ids are the bank's applicants, per direction.
    assert proto.outputs(spec) == {"score"} | {
        "membership:tax>bank",
        "membership:registry>bank",
        "membership:bank>tax",
        "membership:registry>tax",
        "membership:bank>registry",
        "membership:tax>registry",
    }
    assert set(proto.learns(spec)) == set(ROLES)
    with pytest.raises(InvalidJobSpecError, match="model_job"):
        proto.validate(score_spec("not-a-job"))
    with pytest.raises(InvalidJobSpecError, match="cutoff"):
        proto.validate(score_spec(job, cutoff=2))
    with pytest.raises(InvalidJobSpecError, match="unknown parameters"):
        proto.validate(score_spec(job, epochs=3))
    with pytest.raises(InvalidJobSpecError, match="receivers"):
        proto.validate(dataclasses.replace(spec, receivers=("bank", "tax")))
    with pytest.raises(InvalidJobSpecError, match="exactly one"):
        proto.validate(score_spec(job, ()))
