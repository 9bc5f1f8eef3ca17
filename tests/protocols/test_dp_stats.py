"""DP statistics across three hospitals and an analyst, over the in-memory transport."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections import Counter
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from bund.compute import insecure
from bund.compute.dp import pairwise_masks
from bund.compute.dp.budget import Budget
from bund.compute.dp.stats import contribution, parse_query, release
from bund.parties.data import Table
from bund.parties.demo_data import generate_health
from bund.parties.jobs import (
    InvalidJobSpecError,
    JobSpec,
    MemoryResumeStates,
    Participant,
    Result,
    run_in_memory,
)
from bund.parties.ledger import BudgetExhaustedError, BudgetLedger
from bund.parties.policy import DatasetPolicy, Policy, PolicyRefusedError
from bund.parties.protocols import dp_stats, get_protocol
from bund.parties.transport import InMemoryNetwork

HOSPITALS = {"hosp-a": "hospital_a", "hosp-b": "hospital_b", "hosp-c": "hospital_c"}
PARTS = (
    *(Participant(p, "contributor", d) for p, d in HOSPITALS.items()),
    Participant("insurer", "analyst"),
)
_DATA = generate_health(400, 11)
TABLES: dict[str, Table] = {p: _DATA[d] for p, d in HOSPITALS.items()}
POOLED = {c: sum((TABLES[p].column(c) for p in HOSPITALS), ()) for c in _DATA["hospital_a"].columns}

QUERIES: dict[str, dict[str, str | int]] = {
    "count": {"kind": "count", "filter": "age>=65;sex=M"},
    "sum": {"kind": "sum", "column": "age", "lower": "0", "upper": "100", "filter": "event=1"},
    "mean": {
        "kind": "mean", "column": "hba1c_pct", "lower": "4", "upper": "12", "resolution": "0.1",
    },
    "histogram_categories": {
        "kind": "histogram", "column": "diagnosis", "categories": "I25|I50|E11|I10|K80",
    },
    "histogram_bins": {
        "kind": "histogram", "column": "age", "lower": "20", "upper": "100", "bins": 8,
    },
    "contingency": {
        "kind": "contingency", "column": "sex", "categories": "M|F",
        "column2": "diagnosis", "categories2": "I25|E11|I10",
    },
    "quantiles": {
        "kind": "quantiles", "column": "age", "lower": "0", "upper": "120", "bins": 120,
        "quantiles": "1/4|1/2|9/10",
    },
    "survival": {
        "kind": "survival", "column": "follow_up_days", "event": "event", "lower": "0",
        "upper": "2190", "bins": 12,
    },
}  # fmt: skip


def make_spec(query: Mapping[str, str | int], parts: tuple[Participant, ...] = PARTS,
              **extra: str | int) -> JobSpec:  # fmt: skip
    params: dict[str, str | int] = {"epsilon": "1/2", "min_cell": 5, **query, **extra}
    analyst = next(p.party for p in parts if p.role == "analyst")
    return JobSpec("dp_stats", parts, (analyst,), "cohort study", analyst, params)


def run(spec: JobSpec, net: InMemoryNetwork | None = None) -> Result:
    results = run_in_memory(spec, dp_stats.DEFINITION, TABLES, network=net)
    assert all(results[p] is None for p in spec.parties if p not in spec.receivers)
    out = results[spec.receivers[0]]
    assert out is not None
    return out


def rows(result: Result) -> list[list[str]]:
    return list(csv.reader(io.StringIO(result.artifacts["result.csv"].decode())))[1:]


def suppressed(count: int) -> str:
    return str(count) if count >= 5 else "suppressed"


def num(column: str) -> list[Fraction]:
    return [Fraction(v) for v in POOLED[column]]


@pytest.fixture
def noise_off() -> None:
    insecure.enable_insecure_test_parameters()


@pytest.mark.usefixtures("noise_off")
def test_count_sum_mean_equal_the_pooled_plaintext() -> None:
    count = sum(
        1 for a, s in zip(POOLED["age"], POOLED["sex"], strict=True) if int(a) >= 65 and s == "M"
    )
    assert rows(run(make_spec(QUERIES["count"], noise="off"))) == [["count", suppressed(count)]]
    lo, hi = Fraction(0), Fraction(100)
    ages = [
        min(max(a, lo), hi) for a, e in zip(num("age"), POOLED["event"], strict=True) if e == "1"
    ]
    assert rows(run(make_spec(QUERIES["sum"], noise="off"))) == [
        ["sum", str(sum(ages, Fraction(0)))]
    ]
    hba1c = [min(max(v, Fraction(4)), Fraction(12)) for v in num("hba1c_pct")]
    total = sum(round(v * 10) for v in hba1c) / Fraction(10)
    result = run(make_spec(QUERIES["mean"], noise="off"))
    assert result.summary["count"] == len(hba1c)
    assert Fraction(str(result.summary["sum"])) == total
    assert Fraction(str(result.summary["mean"])) == round(total / len(hba1c), 6)
    assert "mean.png" not in result.artifacts


@pytest.mark.usefixtures("noise_off")
def test_histograms_and_contingency_equal_the_pooled_plaintext() -> None:
    dx = Counter(POOLED["diagnosis"])
    result = run(make_spec(QUERIES["histogram_categories"], noise="off"))
    assert rows(result) == [[c, suppressed(dx[c])] for c in ("I25", "I50", "E11", "I10", "K80")]
    assert result.artifacts["histogram.png"].startswith(b"\x89PNG")
    decades = Counter(min(max(int(a), 20), 99) // 10 for a in POOLED["age"])
    expected = [[f"[{10 * d}, {10 * d + 10})", suppressed(decades[d])] for d in range(2, 10)]
    assert rows(run(make_spec(QUERIES["histogram_bins"], noise="off"))) == expected
    pairs = Counter(zip(POOLED["sex"], POOLED["diagnosis"], strict=True))
    expected = [[s, d, suppressed(pairs[s, d])] for s in "MF" for d in ("I25", "E11", "I10")]
    assert rows(run(make_spec(QUERIES["contingency"], noise="off"))) == expected


@pytest.mark.usefixtures("noise_off")
def test_quantiles_and_survival_equal_the_pooled_plaintext() -> None:
    ages = sorted(int(a) for a in POOLED["age"])
    got = rows(run(make_spec(QUERIES["quantiles"], noise="off")))
    for (q, value), p in zip(got, (0.25, 0.5, 0.9), strict=True):
        # The q-quantile on a grid of whole years: the upper edge of the first year that
        # reaches q of the records, i.e. the smallest age a with #(age <= a) >= q·n, plus one.
        a = next(a for a in ages if sum(1 for x in ages if x <= a) >= p * len(ages))
        assert (q, value) == (str(p), str(a + 1))
    result = run(make_spec(QUERIES["survival"], noise="off"))
    assert result.artifacts["survival.png"].startswith(b"\x89PNG")
    # Kaplan–Meier on follow-up rounded up to 182.5-day bins, by the textbook product.
    times = [min(math.ceil(t / Fraction(365, 2)), 12) for t in num("follow_up_days")]
    died = [e == "1" and Fraction(t) <= 2190 for e, t in
            zip(POOLED["event"], POOLED["follow_up_days"], strict=True)]  # fmt: skip
    survival = Fraction(1)
    for j, row in enumerate(rows(result), start=1):
        at_risk = sum(1 for t in times if t >= j)
        deaths = sum(1 for t, d in zip(times, died, strict=True) if t == j and d)
        survival *= 1 - Fraction(deaths, at_risk)
        assert row[2:4] == [str(at_risk), str(deaths)]
        assert row[5] == f"{float(survival):.6f}"


def test_noise_is_added_when_on() -> None:
    spec = make_spec(QUERIES["histogram_categories"], epsilon="1/100")
    exact = contribution(parse_query(dict(spec.params)), TABLES["hosp-a"].data, 400)
    noisy = [int(r[1]) for r in rows(run(spec)) if r[1] != "suppressed"]
    assert noisy and noisy != exact  # scale 100: P(no noise in all cells) < 1e-9
    result = run(spec)
    assert result.summary["noise"] == "discrete_laplace" and result.summary["scale_bins"] == 100.0


def test_noise_off_is_refused_without_the_test_switch() -> None:
    with pytest.raises(dp_stats.NoiseOffRefusedError, match="tests only"):
        run(make_spec(QUERIES["count"], noise="off"))


@pytest.mark.usefixtures("noise_off")
def test_no_single_hospitals_figures_cross_the_wire() -> None:
    spec = make_spec(QUERIES["histogram_categories"], noise="off")
    net = InMemoryNetwork(list(spec.parties))
    run(spec, net)
    assert {tag for *_, tag, _ in net.captured} == {"dp/key", "dp/masked"}
    assert {(f, t) for f, t, tag, _ in net.captured if tag == "dp/masked"} == {
        (h, "insurer") for h in HOSPITALS
    }
    wire = b"".join(payload for *_, payload in net.captured)
    query = parse_query({k: v for k, v in spec.params.items() if k != "noise"})
    for party, table in TABLES.items():
        own = contribution(query, {"diagnosis": table.column("diagnosis")}, table.num_rows)
        cells = np.array(own, dtype="<u8").tobytes()
        assert cells not in wire, party
        for value in own:
            assert value.to_bytes(8, "little") not in wire, (party, value)


@pytest.mark.usefixtures("noise_off")
def test_a_contributing_analyst() -> None:
    parts = (
        Participant("hosp-a", "analyst", "hospital_a"),
        Participant("hosp-b", "contributor", "hospital_b"),
        Participant("hosp-c", "contributor", "hospital_c"),
        Participant("insurer", "contributor", "hospital_a"),
    )
    tables = {**TABLES, "insurer": TABLES["hosp-a"]}
    spec = make_spec({"kind": "count"}, parts, noise="off")
    results = run_in_memory(spec, dp_stats.DEFINITION, tables)
    assert results["hosp-a"] is not None
    assert results["hosp-a"].summary["count"] == 1600
    plan = dp_stats.plan(spec)
    assert plan.contributors == ("hosp-a", "hosp-b", "hosp-c", "insurer") and plan.shares == 1


def test_cost_is_charged_to_each_dataset_and_an_overspend_is_refused(tmp_path: Path) -> None:
    spec = make_spec({"kind": "mean", "column": "age", "lower": "0", "upper": "100"}, epsilon="3/4")
    assert dp_stats.cost(spec, "hosp-b") == Budget(Fraction(3, 4))
    assert dp_stats.cost(spec, "insurer") == Budget()

    class Audit:
        def __init__(self) -> None:
            self.events: list[tuple[str, str, Mapping[str, object] | None]] = []

        def append(
            self, event: str, job_id: str = "", fields: Mapping[str, object] | None = None
        ) -> object:  # noqa: E501
            self.events.append((event, job_id, fields))
            return None

    audit = Audit()
    ledger = BudgetLedger(tmp_path / "ledger.db", {"hospital_b": Budget.parse("1")}, audit)
    ledger.charge("a" * 32, "hospital_b", dp_stats.cost(spec, "hosp-b"))
    with pytest.raises(BudgetExhaustedError, match="epsilon=1/4, delta=0 of its privacy budget"):
        ledger.charge("b" * 32, "hospital_b", dp_stats.cost(spec, "hosp-b"))
    assert [(e, f and f["epsilon"]) for e, _, f in audit.events] == [("budget_charged", "3/4")]
    ledger.close()


def test_registered_and_definition() -> None:
    assert get_protocol("dp_stats") is dp_stats.DEFINITION
    spec = make_spec(QUERIES["count"])
    assert dp_stats.outputs(spec) == frozenset({"dp_aggregate"})
    learns = dp_stats.learns(spec)
    assert "noisy count" in learns["insurer"] and "alone meets ε = 1/2" in learns["hosp-a"]
    assert "3 times the variance of one draw" in learns["hosp-c"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"kind": "median"}, "kind must be one of"),
        ({"kind": "count", "epsilon": 0.5}, "written exactly"),
        ({"kind": "count", "epsilon": "20"}, "epsilon must be in"),
        ({"kind": "count", "min_cell": 0}, "min_cell"),
        ({"kind": "count", "filter": "age ~ 3"}, "not 'column op value'"),
        ({"kind": "count", "filter": "age>=old"}, "not a rational"),
        ({"kind": "count", "column": "age"}, "does not take \\['column'\\]"),
        ({"kind": "count", "bogus": 1}, "unknown query parameters"),
        ({"kind": "sum", "column": "age", "lower": "0", "upper": "0.5"}, "multiple of the"),
        ({"kind": "sum", "column": "age", "lower": "5", "upper": "1"}, "below upper"),
        ({"kind": "histogram", "column": "dx", "categories": "a|a"}, "distinct"),
        ({"kind": "histogram", "column": "age", "lower": "0", "upper": "1", "bins": 5000}, "bins"),
        (
            {
                "kind": "quantiles",
                "column": "a",
                "lower": "0",
                "upper": "1",
                "bins": 2,
                "quantiles": "1/2|1",
            },
            "quantiles must list",
        ),  # fmt: skip
        (
            {
                "kind": "survival",
                "column": "t",
                "event": "e",
                "lower": "1",
                "upper": "9",
                "bins": 3,
            },
            "lower = 0",
        ),  # fmt: skip
        ({"kind": "count", "noise": "maybe"}, "'on' or 'off'"),
    ],
)
def test_query_errors(query: dict[str, str | int | float], message: str) -> None:
    with pytest.raises(InvalidJobSpecError, match=message):
        dp_stats.validate(make_spec(query))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        (PARTS[:3], "exactly one 'analyst'"),
        ((PARTS[0], PARTS[3]), "at least two contributors besides"),
        ((*PARTS[:3], Participant("insurer", "reader")), "has role 'reader'"),
        ((Participant("hosp-a", "contributor"), *PARTS[1:]), "must name its dataset"),
    ],
)
def test_spec_shape_errors(parts: tuple[Participant, ...], message: str) -> None:
    analyst = next((p.party for p in parts if p.role == "analyst"), parts[0].party)
    spec = JobSpec("dp_stats", parts, (analyst,), "study", analyst,
                   {"kind": "count", "epsilon": "1", "min_cell": 1})  # fmt: skip
    with pytest.raises(InvalidJobSpecError, match=message):
        dp_stats.validate(spec)


def test_only_the_analyst_receives() -> None:
    spec = JobSpec("dp_stats", PARTS, ("insurer", "hosp-a"), "study", "insurer",
                   {"kind": "count", "epsilon": "1", "min_cell": 1})  # fmt: skip
    with pytest.raises(InvalidJobSpecError, match="only receiver"):
        dp_stats.validate(spec)


def test_small_noisy_cells_are_suppressed() -> None:
    query = parse_query({"kind": "histogram", "column": "d", "categories": "a|b|c",
                         "epsilon": "1", "min_cell": 10})  # fmt: skip
    table = release(query, [9, 10, -3])
    assert table.rows == [("a", None), ("b", 10), ("c", None)] and table.suppressed == 2


def _hockey_stick(p: Counter[int], q: Counter[int], epsilon: Fraction, n: int) -> float:
    """Estimated sup over events S of P(S) - e^ε Q(S) for two empirical pmfs of n draws each."""
    bound = math.exp(float(epsilon))
    return sum(max(0.0, p[k] / n - bound * q[k] / n) for k in set(p) | set(q))


@pytest.mark.slow
@pytest.mark.usefixtures("noise_off")
def test_released_count_on_neighbouring_datasets_respects_epsilon() -> None:
    """Empirical privacy audit of the released count: D and D minus one of hospital B's records.

    The exact aggregates come from the protocol itself (noise off); the noisy releases add only
    the draws of the mechanism hospital B adds itself (``plan(spec).mechanisms()``), as if the
    other contributors added none: B's own noise alone must meet ε.
    """
    spec = make_spec({"kind": "count", "filter": "sex=F"})
    neighbour = TABLES["hosp-b"].select(
        [i for i in range(400) if i != TABLES["hosp-b"].column("sex").index("F")]
    )
    exact = []
    for tables in (TABLES, {**TABLES, "hosp-b": neighbour}):
        off = make_spec({"kind": "count", "filter": "sex=F"}, noise="off", min_cell=1)
        result = run_in_memory(off, dp_stats.DEFINITION, tables)["insurer"]
        assert result is not None
        exact.append(int(str(result.summary["count"])))
    assert exact[0] == exact[1] + 1
    (mech,) = dp_stats.plan(spec).mechanisms()
    n = 400_000
    released = [Counter((c + mech.sample(n)).tolist()) for c in exact]
    epsilon = dp_stats.cost(spec, "hosp-a").epsilon
    for a, b in ((0, 1), (1, 0)):
        assert _hockey_stick(released[a], released[b], epsilon, n) < 0.015
    # The audit has power: a mechanism with half the noise fails at the claimed epsilon.
    (weak,) = dp_stats.plan(make_spec({"kind": "count"}, epsilon="1")).mechanisms()
    leaky = [Counter((c + weak.sample(n)).tolist()) for c in exact]
    assert _hockey_stick(leaky[0], leaky[1], epsilon, n) > 0.1


def test_a_resumed_job_sends_the_same_noisy_vectors_and_releases_the_same_table() -> None:
    """Each contributor saves its key and its noisy masked vector before sending them.

    A second run of the same job on the same resume stores (a restart) sends byte-identical
    messages: the noise is drawn once, so a restart can never release a second noisy draw.
    """
    spec = dataclasses.replace(
        make_spec(QUERIES["histogram_categories"], epsilon="1/100"), job_id="c" * 32
    )
    stores = {p: MemoryResumeStates() for p in spec.parties}
    first, second = InMemoryNetwork(list(spec.parties)), InMemoryNetwork(list(spec.parties))
    a = run_in_memory(spec, dp_stats.DEFINITION, TABLES, network=first, states=stores)
    b = run_in_memory(spec, dp_stats.DEFINITION, TABLES, network=second, states=stores)
    assert sorted(first.captured) == sorted(second.captured)
    receiver = spec.receivers[0]
    assert a[receiver] is not None and b[receiver] is not None
    assert a[receiver].artifacts["result.csv"] == b[receiver].artifacts["result.csv"]
    fresh = run_in_memory(
        spec, dp_stats.DEFINITION, TABLES, network=InMemoryNetwork(list(spec.parties))
    )
    assert fresh[receiver] is not None
    assert fresh[receiver].artifacts["result.csv"] != a[receiver].artifacts["result.csv"]


#: A 4096-cell contingency table (age 20..83 by a sex column padded with unused categories): many
#: independent noise draws per run, and no plot to draw.
WIDE = {
    "kind": "contingency", "column": "age", "categories": "|".join(str(a) for a in range(20, 84)),
    "column2": "sex", "categories2": "|".join(["M", "F", *(f"x{i}" for i in range(62))]),
    "min_cell": 1,
}  # fmt: skip


def _released_noise(spec: JobSpec) -> np.ndarray:
    """The noise in the aggregate the analyst unmasks: unmasked from the captured messages."""
    net = InMemoryNetwork(list(spec.parties))
    run(spec, net)
    query = dp_stats.plan(spec).query
    masked = [
        pairwise_masks.decode_vector(payload, query.length)
        for _, _, tag, payload in net.captured
        if tag == "dp/masked"
    ]
    aggregate = np.array(pairwise_masks.unmask_sum(masked))
    exact = sum(np.array(contribution(query, t.data, t.num_rows)) for t in TABLES.values())
    return np.asarray(aggregate - exact)


@pytest.mark.parametrize("order", ["analyst last", "analyst first, hospitals reversed"])
@pytest.mark.parametrize(("threshold", "ratio"), [(None, 3.0), (3, 3.0), (2, 1.5)])
def test_the_release_carries_n_over_k_times_the_variance_of_one_draw(
    order: str, threshold: int | None, ratio: float
) -> None:
    """Every contributor adds its own noise, whatever the spec's order: n whole draws, or n
    shares of 1/k (k = n − t + 1) under a collusion threshold t."""
    parts = PARTS if order == "analyst last" else (PARTS[3], *reversed(PARTS[:3]))
    extra: dict[str, str | int] = {} if threshold is None else {"collusion_threshold": threshold}
    spec = make_spec(WIDE, parts, **extra)
    noise = _released_noise(spec)
    (whole,) = dp_stats.plan(spec).mechanisms()
    assert noise.shape == (4096,)
    assert noise.var() / whole.variance() == pytest.approx(ratio, rel=0.15)
    (summed,) = dp_stats.plan(spec).noises()
    assert summed.variance() == pytest.approx(ratio * whole.variance())


def test_the_approval_summary_states_the_collusion_threshold() -> None:
    spec = make_spec(QUERIES["count"], collusion_threshold=2)
    learns = dp_stats.learns(spec)
    assert "1/2 share of the noise" in learns["hosp-a"]
    assert "at most 1 of the other contributors collude" in learns["hosp-a"]
    assert "collusion threshold t = 2" in learns["hosp-b"]
    result = run(spec)
    assert result.summary["collusion_threshold"] == 2 and result.summary["noise_share"] == "1/2"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"collusion_threshold": 4}, "exceeds the 3 contributors"),
        ({"collusion_threshold": 0}, r"integer in \[1, 64\]"),
        (
            {
                "collusion_threshold": 2,
                "epsilon": "1/1000",
                "kind": "histogram",
                "column": "age",
                "lower": "0",
                "upper": "100",
                "bins": 100,
            },
            "cells × noise scale",
        ),
    ],
)
def test_collusion_threshold_errors(extra: dict[str, str | int], message: str) -> None:
    with pytest.raises(InvalidJobSpecError, match=message):
        dp_stats.validate(make_spec({"kind": "count", **extra}))  # type: ignore[arg-type]


def _policy(
    identifiers: frozenset[str] | None = None, floor: int = 10, threshold: int | None = None
) -> Policy:
    dataset = DatasetPolicy("hosp-a", "restricted-personal", identifiers=identifiers)
    return Policy({}, {"hospital_a": dataset}, cohort_floor=floor, dp_collusion_threshold=threshold)


def test_the_owner_refuses_a_query_on_an_identifier_column() -> None:
    one_patient = make_spec({"kind": "count", "filter": f"patient_id={POOLED['patient_id'][0]}"},
                            min_cell=10)  # fmt: skip
    with pytest.raises(PolicyRefusedError, match=r"declares \['patient_id'\] identifier"):
        dp_stats.check_owner(one_patient, "hosp-a", _policy(frozenset({"patient_id"})))
    # A category column is as good as a filter: a histogram over the ids is refused too.
    by_id = make_spec({"kind": "histogram", "column": "pid", "categories": "P1|P2"}, min_cell=10)
    bound = dataclasses.replace(
        by_id, participants=(Participant("hosp-a", "contributor", "hospital_a",
                                         {"pid": "patient_id"}), *PARTS[1:]))  # fmt: skip
    with pytest.raises(PolicyRefusedError, match=r"declares \['pid'\] identifier"):
        dp_stats.check_owner(bound, "hosp-a", _policy(frozenset({"patient_id"})))
    # With no identifiers declared, the column a job binds as id is one.
    as_id = dataclasses.replace(
        make_spec({"kind": "count", "filter": "id=P1"}, min_cell=10),
        participants=(Participant("hosp-a", "contributor", "hospital_a", {"id": "patient_id"}),
                      *PARTS[1:]),
    )  # fmt: skip
    with pytest.raises(PolicyRefusedError, match="identifier"):
        dp_stats.check_owner(as_id, "hosp-a", _policy())
    dp_stats.check_owner(make_spec(QUERIES["count"], min_cell=10), "hosp-a", _policy())


@pytest.mark.parametrize("name", ["count", "mean", "histogram_bins", "contingency", "quantiles"])
def test_the_cohort_floor_is_the_least_min_cell_of_a_count(name: str) -> None:
    with pytest.raises(PolicyRefusedError, match="below hosp-a's cohort floor of 10"):
        dp_stats.check_owner(make_spec(QUERIES[name], min_cell=9), "hosp-a", _policy())
    dp_stats.check_owner(make_spec(QUERIES[name], min_cell=10), "hosp-a", _policy())


def test_sums_and_survival_tables_are_not_floored() -> None:
    for name in ("sum", "survival"):
        dp_stats.check_owner(make_spec(QUERIES[name], min_cell=1), "hosp-a", _policy())
    # The analyst brings no dataset: nothing of the owner's to check.
    dp_stats.check_owner(make_spec(QUERIES["count"], min_cell=1), "insurer", _policy())


def test_a_collusion_threshold_needs_the_owners_consent() -> None:
    spec = make_spec(QUERIES["count"], min_cell=10, collusion_threshold=2)
    with pytest.raises(PolicyRefusedError, match="accepts no noise shares"):
        dp_stats.check_owner(spec, "hosp-a", _policy())
    with pytest.raises(PolicyRefusedError, match="accepts t >= 3"):
        dp_stats.check_owner(spec, "hosp-a", _policy(threshold=3))
    dp_stats.check_owner(spec, "hosp-a", _policy(threshold=2))
    dp_stats.check_owner(spec, "hosp-a", _policy(threshold=1))


def test_the_columns_a_contributor_reads_through_its_bindings() -> None:
    spec = dataclasses.replace(
        make_spec(QUERIES["contingency"]),
        participants=(Participant("hosp-a", "contributor", "hospital_a", {"sex": "gender"}),
                      *PARTS[1:]),
    )  # fmt: skip
    assert dp_stats.columns(spec, "hosp-a") == frozenset({"gender", "diagnosis"})
    assert dp_stats.columns(spec, "hosp-b") == frozenset({"sex", "diagnosis"})
    assert dp_stats.columns(spec, "insurer") == frozenset()
    assert dp_stats.DEFINITION.missing_columns(spec, "hosp-a", TABLES["hosp-a"].columns) == [
        "gender"
    ]
