"""Unbalanced and labeled PSI over the in-memory transport, checked against plaintext."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Mapping
from typing import Any

import pytest

from bund.compute import psi_oprf
from bund.parties.data import Table
from bund.parties.jobs import (
    InvalidJobSpecError,
    JobContext,
    JobSpec,
    MemoryResumeStates,
    Participant,
    Result,
    new_job_id,
    run_in_memory,
)
from bund.parties.protocols import psi_unbalanced as pu
from bund.parties.transport import InMemoryNetwork

LIMITS = {"psi_max_set_size": 100_000, "psi_unbalanced_max_queries": 1_000}
FIRMS = [f"91310000MA{i:08d}" for i in range(3_000)]
REGISTRY = Table.from_columns(
    "firms",
    {
        "uscc": [*FIRMS, "", FIRMS[5]],
        "registered_capital": [str(i * 1000) for i in range(3_000)] + ["", "999"],
        "years_active": [str(i % 40) for i in range(3_000)] + ["", "1"],
        "owner_name": ["secret"] * 3_002,
    },
)
APPLICANTS = [f"91310000MA{i:08d}" for i in range(2_950, 3_050)] + [" 91310000MA00000007 ", ""]
BANK = Table.from_columns("applicants", {"cid": APPLICANTS})


def holder(labeled: bool = True) -> Participant:
    columns = {"id": "uscc"}
    if labeled:
        columns |= {"payload.capital": "registered_capital", "payload.years": "years_active"}
    return Participant("registry", "holder", "firms", columns)


def setup_spec(labeled: bool = True) -> JobSpec:
    return JobSpec(
        "psi_unbalanced",
        (holder(labeled), Participant("bank", "querier")),
        ("bank",),
        "credit checks",
        "bank",
        {"phase": "setup"},
        job_id=new_job_id(),
    )


def query_spec(setup: JobSpec, labeled: bool = True) -> JobSpec:
    return JobSpec(
        "psi_unbalanced",
        (holder(labeled), Participant("bank", "querier", "applicants", {"id": "cid"})),
        ("bank",),
        "credit checks",
        "bank",
        {"phase": "query", "setup_job": setup.job_id},
        job_id=new_job_id(),
    )


class Federation:
    """Two parties' stores across jobs: kept states (holder) and prior results (querier)."""

    def __init__(self, registry: Table = REGISTRY) -> None:
        self.states = {"registry": MemoryResumeStates(), "bank": MemoryResumeStates()}
        self.results: dict[str, Result] = {}
        self.tables = {"registry": registry, "bank": BANK}

    def prior(self, job_id: str, protocol: str) -> Result:
        return self.results[job_id]

    def run(
        self, spec: JobSpec, limits: Mapping[str, int] = LIMITS, **kwargs: Any
    ) -> dict[str, Result | None]:
        results = run_in_memory(
            spec,
            pu.DEFINITION,
            self.tables,
            limits,
            states=self.states,
            prior_results={"bank": self.prior},
            **kwargs,
        )
        bank = results["bank"]
        assert bank is not None and results["registry"] is None
        self.results[spec.job_id] = bank
        return results


def matches(result: Result) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(result.artifacts["matches.csv"].decode())))


def test_labeled_setup_then_queries_match_plaintext_and_open_only_matched_payloads() -> None:
    fed = Federation()
    setup = setup_spec()
    shipped = fed.run(setup)["bank"]
    assert shipped is not None
    assert shipped.summary["keys"] == 3_000 and shipped.summary["labels"] == 3_001
    assert shipped.summary["payload_columns"] == "capital,years"
    assert 4.0 < float(shipped.summary["filter_bytes_per_id"]) < 7.0  # type: ignore[arg-type]
    result = fed.run(query_spec(setup))["bank"]
    assert result is not None
    expected = sorted({a.strip() for a in APPLICANTS if a.strip()} & set(FIRMS))
    rows = matches(result)
    assert sorted(r["id"] for r in rows) == expected and len(expected) == 51
    for row in rows:
        i = FIRMS.index(row["id"])
        assert (row["capital"], row["years"]) == (str(i * 1000), str(i % 40))
    assert result.summary["queries"] == 101 and result.summary["labels_opened"] == 51
    # A column the spec did not bind never left the registry, in any form.
    assert b"secret" not in b"".join(shipped.artifacts.values())


def test_every_label_of_an_id_not_queried_stays_sealed() -> None:
    fed = Federation()
    setup = setup_spec()
    shipped = fed.run(setup)["bank"]
    assert shipped is not None
    context = bytes.fromhex(str(shipped.summary["context"]))
    width = int(str(shipped.summary["label_width"]))
    table = psi_oprf.LabelTable.from_rows(context, width, shipped.artifacts["labels.bin"])
    rows = b"".join(table.sealed(r) for r in range(len(table.locators)))
    # No record's payload, as encoded before sealing, shows in the sealed rows (the records of
    # the repeated firm and of the last one; whole encodings, so no chance match of 3 bytes).
    for values in (["999", "1"], [str(2_999_000), "39"]):
        assert psi_oprf.encode_label(values, width) not in rows
    assert str(2_999_000).encode() not in rows
    # Without the holder's key, no output the querier can make opens any record.
    guesses = psi_oprf.oprf_outputs([FIRMS[0].encode()], bytes(32), context)
    assert psi_oprf.open_labels(guesses, table, 2) == [None]


def test_the_holder_caps_the_queries_of_each_querier_over_all_its_jobs() -> None:
    fed = Federation()
    setup = setup_spec(labeled=False)
    fed.run(setup)
    limits = {**LIMITS, "psi_unbalanced_max_queries": 250}
    fed.run(query_spec(setup, labeled=False), limits)
    fed.run(query_spec(setup, labeled=False), limits)
    with pytest.raises(pu.QueryLimitError, match="has queried 202 ids .* asks for 101 more"):
        fed.run(query_spec(setup, labeled=False), limits)


def test_a_query_of_a_retired_setup_or_a_changed_dataset_is_refused() -> None:
    fed = Federation()
    first, second = setup_spec(labeled=False), setup_spec(labeled=False)
    fed.run(first)
    shipped = fed.run(second)["bank"]
    assert shipped is not None and shipped.summary["key_version"] == 2
    with pytest.raises(pu.StaleSetupError, match="no longer served"):
        fed.run(query_spec(first, labeled=False))
    fed.run(query_spec(second, labeled=False))
    changed = Table.from_columns(
        "firms",
        {"uscc": FIRMS[:-1], **{c: REGISTRY.column(c)[:2_999] for c in REGISTRY.columns[1:]}},
    )
    fed.tables["registry"] = changed
    with pytest.raises(pu.StaleSetupError, match="changed since setup"):
        fed.run(query_spec(second, labeled=False))


def test_the_holder_sees_only_blinded_points_and_a_count() -> None:
    fed = Federation()
    setup = setup_spec(labeled=False)
    fed.run(setup)
    net = InMemoryNetwork(["registry", "bank"])
    fed.run(query_spec(setup, labeled=False), network=net)
    to_holder = [(tag, p) for frm, to, tag, p in net.captured if to == "registry"]
    assert [t for t, _ in to_holder] == ["psi_u/query", "psi_u/points/0"]
    wire = b"".join(p for *_, p in net.captured)
    assert not any(a.strip().encode() in wire for a in APPLICANTS if a.strip())


class Stop(Exception):
    pass


def test_an_interrupted_precomputation_resumes_from_its_last_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pu, "SETUP_CHUNK_ROWS", 500)
    evaluated: list[int] = []
    real = pu.evaluate_holder_set

    def counting(items: list[bytes], *args: Any) -> psi_oprf.HolderBatch:
        evaluated.append(len(items))
        return real(items, *args)

    monkeypatch.setattr(pu, "evaluate_holder_set", counting)

    class Crash:
        def __init__(self, ctx: JobContext) -> None:
            self._ctx = ctx

        def progress(self, phase: str, done: int, total: int) -> None:
            if phase == "precompute" and done >= 1_500:
                raise Stop("killed")
            self._ctx.progress(phase, done, total)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._ctx, name)

    crashing = dataclasses.replace(
        pu.DEFINITION,
        roles={**pu.DEFINITION.roles, "holder": lambda ctx: pu.run_holder(Crash(ctx))},
    )
    fed = Federation()
    setup = setup_spec()
    with pytest.raises(Stop):
        run_in_memory(setup, crashing, fed.tables, LIMITS, states=fed.states)
    assert sum(evaluated) in (1_500, 2_000)  # three chunks checkpointed; one ahead, in flight
    evaluated.clear()
    fed.run(setup)
    assert sum(evaluated) == 3_002 - 1_500 - 1  # the rest, less one blank id
    result = fed.run(query_spec(setup))["bank"]
    assert result is not None and len(matches(result)) == 51


@pytest.mark.parametrize(
    ("params", "querier", "message"),
    [
        ({"phase": "query"}, Participant("bank", "querier", "a", {"id": "c"}), "needs the param"),
        ({"phase": "query", "setup_job": "a" * 32}, Participant("bank", "querier"), "must name"),
        ({"phase": "setup", "setup_job": "a" * 32}, Participant("bank", "querier"), "takes no"),
        ({"phase": "setup"}, Participant("bank", "querier", "a", {"id": "c"}), "takes no"),
        (
            {"phase": "query", "setup_job": "xyz"},
            Participant("bank", "querier", "a", {"id": "c"}),
            "32 hex digits",
        ),
    ],
)
def test_spec_errors(params: dict[str, str], querier: Participant, message: str) -> None:
    spec = JobSpec("psi_unbalanced", (holder(), querier), ("bank",), "p", "bank", params)
    with pytest.raises(InvalidJobSpecError, match=message):
        pu.DEFINITION.validate(spec)


def test_the_holder_never_receives_a_result() -> None:
    with pytest.raises(InvalidJobSpecError, match="remove \\['registry'\\] from the receivers"):
        pu.DEFINITION.validate(dataclasses.replace(setup_spec(), receivers=("bank", "registry")))


def test_outputs_and_learns_name_the_payload_columns() -> None:
    labeled, plain = setup_spec(), setup_spec(labeled=False)
    assert pu.outputs(labeled) == {"intersection", "payload"}
    assert pu.outputs(plain) == {"intersection"}
    learns = pu.learns(query_spec(labeled))
    assert "registered_capital, years_active" in learns["bank"]
    assert learns["registry"].startswith("how many ids bank queries, not which")


def test_a_long_setup_keeps_the_querier_waiting_on_ticks_not_on_silence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pu, "SETUP_CHUNK_ROWS", 250)
    monkeypatch.setattr(pu, "TICK_CHUNKS", 3)
    fed = Federation()
    net = InMemoryNetwork(["registry", "bank"])
    fed.run(setup_spec(), network=net)
    tags = [tag for frm, to, tag, _ in net.captured]
    ticks = [t for t in tags if t.startswith("psi_u/tick/")]
    # 13 chunks: 4 ticks in the label-width pass, 4 while evaluating, one per shard, the last.
    assert ticks == [f"psi_u/tick/{i}" for i in range(10)]
    assert tags.index("psi_u/tick/9") + 1 == tags.index("psi_u/setup")
    payloads = [p for _, _, tag, p in net.captured if tag.startswith("psi_u/tick/")]
    assert payloads == [b"\x00"] * 9 + [b"\x01"]
