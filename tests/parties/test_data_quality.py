"""Data quality is reported to the data's owner alone: what each role's own data made it drop.

``JobContext.note_quality`` keeps a count at the party's node (its log and its own privacy
receipt); these tests run roles over the in-memory transport and read each party's context. That
the counts reach the owner's receipt and no peer's message over real nodes is in
``tests/integration/test_data_quality.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping

import pytest

from bund.compute import insecure
from bund.compute.dp.stats import parse_query, uncounted
from bund.parties.data import Table
from bund.parties.demo_data import generate_finance, generate_health
from bund.parties.jobs import (
    JobSpec,
    Participant,
    ProtocolDef,
    RoleContext,
    new_job_id,
)
from bund.parties.protocols import dp_stats, psi, woe_iv
from bund.parties.transport import InMemoryNetwork, JobAbortedError

LIMITS = {"psi_max_set_size": 100_000}


class Sink:
    """A message sink that keeps nothing (the node's is the audit log)."""

    def message(self, *args: object) -> None:
        pass

    def replayed(self, *args: object) -> None:
        pass

    def undelivered(self, *args: object) -> None:
        pass

    def record(self, *args: object) -> None:
        pass

    def progress(self, *args: object) -> None:
        pass


def run_roles(
    spec: JobSpec, definition: ProtocolDef, tables: Mapping[str, Table]
) -> tuple[dict[str, RoleContext], InMemoryNetwork]:
    """Run every role in threads; return each party's context (its notes) and the network."""
    spec = dataclasses.replace(spec, job_id=new_job_id())
    definition.validate(spec)
    net = InMemoryNetwork(list(spec.parties))
    contexts = {
        p.party: RoleContext(
            spec, p.party, net.transport_for(p.party), net.mailboxes[p.party],
            lambda party=p.party: tables[party], LIMITS, Sink(), 60.0,
        )
        for p in spec.participants
    }  # fmt: skip
    errors: list[BaseException] = []

    def run(p: Participant) -> None:
        try:
            definition.roles[p.role](contexts[p.party])
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
            net.abort(spec.job_id, str(exc))

    threads = [threading.Thread(target=run, args=(p,)) for p in spec.participants]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise next((e for e in errors if not isinstance(e, JobAbortedError)), errors[0])
    return contexts, net


def one_context(table: Table | None = None) -> RoleContext:
    spec = JobSpec(
        "psi",
        (Participant("bank", "member", "loans"), Participant("tax", "member", "filings")),
        ("bank",),
        "quality",
        "bank",
        job_id=new_job_id(),
    )
    net = InMemoryNetwork(["bank", "tax"])
    given = table or Table.from_columns("loans", {"id": ["1"]})
    return RoleContext(
        spec, "bank", net.transport_for("bank"), net.mailboxes["bank"], lambda: given, {},
        Sink(), 1.0,
    )  # fmt: skip


# --- the hook ----------------------------------------------------------------------------------


def test_a_count_is_kept_replaced_and_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    ctx = one_context()
    caplog.set_level(logging.WARNING, "bund.parties.jobs")
    ctx.note_quality("duplicate_ids_dropped", 0)
    ctx.note_quality("blank_ids_skipped", 4)
    ctx.note_quality("blank_ids_skipped", 4)  # a resumed role counting again
    assert ctx.quality == {"duplicate_ids_dropped": 0, "blank_ids_skipped": 4}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "bank's dataset loans: blank_ids_skipped = 4" in warnings[0]
    assert "kept at this node" in warnings[0]
    ctx.note_quality("blank_ids_skipped", 5)
    assert ctx.quality["blank_ids_skipped"] == 5 and len(caplog.records) == 2
    ctx.quality["blank_ids_skipped"] = 99  # a copy
    assert ctx.quality["blank_ids_skipped"] == 5


@pytest.mark.parametrize(
    ("name", "count", "error"),
    [("has space", 1, "not a valid name"), ("x", -1, "non-negative"), ("x", True, "integer")],
)
def test_names_and_counts_are_checked(name: str, count: int, error: str) -> None:
    with pytest.raises(Exception, match=error):
        one_context().note_quality(name, count)


def test_what_the_loader_counted_is_noted_when_the_role_reads_its_table() -> None:
    table = Table("loans", {"id": ("1", "2")}, {"blank_lines_skipped": 3})
    ctx = one_context(table)
    assert ctx.quality == {}
    assert ctx.table() is table
    assert ctx.quality == {"blank_lines_skipped": 3}


# --- what the protocols count ------------------------------------------------------------------


def test_psi_counts_each_members_blank_and_duplicate_ids_for_it_alone() -> None:
    spec = JobSpec(
        "psi",
        (
            Participant("bank", "member", "loans", {"id": "company_id"}),
            Participant("tax", "member", "filings", {"id": "uscc"}),
        ),
        ("bank",),
        "quality",
        "bank",
        {"mode": "cardinality"},
    )
    bank = ["a", "", "b", " a", "a ", "  ", "c", "b"]  # 2 blank, 3 repeated
    tax = ["a", "x", "", "x"]  # 1 blank, 1 repeated
    tables = {
        "bank": Table.from_columns("loans", {"company_id": bank}),
        "tax": Table.from_columns("filings", {"uscc": tax}),
    }
    contexts, net = run_roles(spec, psi.DEFINITION, tables)
    assert contexts["bank"].quality == {"blank_ids_skipped": 2, "duplicate_ids_dropped": 3}
    assert contexts["tax"].quality == {"blank_ids_skipped": 1, "duplicate_ids_dropped": 1}
    assert net.captured
    assert all(
        b"quality" not in payload and b"blank" not in payload for *_, payload in net.captured
    )


def test_dp_stats_counts_the_records_no_listed_category_takes() -> None:
    data = generate_health(60, 5)
    hospitals = {"hosp-a": "hospital_a", "hosp-b": "hospital_b"}
    tables = {p: data[d] for p, d in hospitals.items()}
    blanked = list(tables["hosp-a"].column("diagnosis"))
    blanked[:3] = ["", " ", ""]
    columns = {c: tables["hosp-a"].column(c) for c in tables["hosp-a"].columns}
    tables["hosp-a"] = Table.from_columns("hospital_a", {**columns, "diagnosis": blanked})
    parts = (
        *(Participant(p, "contributor", d) for p, d in hospitals.items()),
        Participant("insurer", "analyst"),
    )

    def spec(query: Mapping[str, str | int]) -> JobSpec:
        params = {"epsilon": "1/2", "min_cell": 1, **query}
        return JobSpec("dp_stats", parts, ("insurer",), "quality", "insurer", params)

    listed = "I25|I50|E11"
    contexts, _ = run_roles(
        spec({"kind": "histogram", "column": "diagnosis", "categories": listed}),
        dp_stats.DEFINITION,
        tables,
    )
    for party in hospitals:
        cells = tables[party].column("diagnosis")
        outside = sum(1 for c in cells if c.strip() not in listed.split("|"))
        assert contexts[party].quality == {"rows_outside_categories": outside}
    assert contexts["hosp-a"].quality["rows_outside_categories"] >= 3
    assert contexts["insurer"].quality == {}
    contexts, _ = run_roles(spec({"kind": "count"}), dp_stats.DEFINITION, tables)
    assert all(ctx.quality == {} for ctx in contexts.values())


def test_uncounted_records_of_a_contingency_table_and_none_without_categories() -> None:
    query = parse_query(
        {"kind": "contingency", "epsilon": "1", "min_cell": 1, "column": "sex",
         "categories": "M|F", "column2": "dx", "categories2": "I10|E11", "filter": "age>=18"}
    )  # fmt: skip
    columns = {
        "sex": ["M", "F", "", "M", "F"],
        "dx": ["I10", "K80", "E11", "", "E11"],
        "age": ["40", "50", "60", "70", "10"],
    }
    assert uncounted(query, columns, 5) == 3  # the last is filtered out, so never counted
    mean = parse_query(
        {"kind": "mean", "epsilon": "1", "min_cell": 1, "column": "age", "lower": "0",
         "upper": "100"}
    )  # fmt: skip
    assert uncounted(mean, columns, 5) is None


def test_woe_iv_counts_the_feature_columns_it_leaves_out() -> None:
    insecure.enable_insecure_test_parameters()  # small keys: tests only
    data = generate_finance(400, 3)
    tax = data["tax_filings"]
    n = tax.num_rows
    with_gaps = {
        **{c: tax.column(c) for c in tax.columns},
        "audited": ["nan" if i == 7 else "1" for i in range(n)],
        "office": ["" if i == 3 else "12.5" for i in range(n)],
    }
    tables = {
        "bank": data["loan_book"],
        "tax": Table.from_columns("tax_filings", with_gaps),
    }
    spec = JobSpec(
        "woe_iv",
        (
            Participant(
                "bank", "label_holder", "loan_book", {"id": "company_id", "label": "default_12m"}
            ),
            Participant("tax", "feature_holder", "tax_filings", {"id": "company_id"}),
        ),
        ("bank",),
        "screen features",
        "bank",
        {"key_bits": 512, "bins": 4},
    )
    contexts, _ = run_roles(spec, woe_iv.DEFINITION, tables)
    assert contexts["tax"].quality["feature_columns_skipped"] == 3  # grade, audited, office
    assert contexts["tax"].quality["duplicate_ids_dropped"] == 0
    assert "feature_columns_skipped" not in contexts["bank"].quality
