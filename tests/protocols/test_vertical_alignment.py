"""The vertical protocols' alignment: pairwise with one provider, multi-party PSI with more."""

from __future__ import annotations

import json

import pytest

from bund.parties.data import Table
from bund.parties.jobs import JobContext, JobSpec, Participant, ProtocolDef, Result, run_in_memory
from bund.parties.protocols import vertical_alignment as va
from bund.parties.transport import InMemoryNetwork

LIMITS = {"psi_max_set_size": 10_000}
IDS = [f"91310000MA{i:08d}" for i in range(400)]
SETS = {
    "bank": IDS[:300][::-1],  # rows in another order than the ids
    "tax": IDS[100:],
    "registry": IDS[::3],
    "insurer": IDS[50:350],
}


def _label_holder(ctx: JobContext) -> Result:
    _, providers = va.roles_of(ctx.spec)
    return Result({"rows": json.dumps(va.align_label_holder(ctx, providers).rows)})


def _feature_holder(ctx: JobContext) -> Result:
    bank, _ = va.roles_of(ctx.spec)
    return Result({"rows": json.dumps(va.align_feature_holder(ctx, bank).rows)})


ALIGN = ProtocolDef(
    name="align_test",
    version="1",
    roles={va.LABEL_HOLDER: _label_holder, va.FEATURE_HOLDER: _feature_holder},
    outputs=va.alignment_outputs,
    learns=lambda spec: {},
)


def spec(providers: list[str]) -> JobSpec:
    parts = (Participant("bank", va.LABEL_HOLDER, "d", {"id": "id"}),) + tuple(
        Participant(p, va.FEATURE_HOLDER, "d", {"id": "id"}) for p in providers
    )
    return JobSpec("align_test", parts, ("bank", *providers), "align", "bank")


@pytest.mark.parametrize(
    "providers", [["tax"], ["tax", "registry"], ["tax", "registry", "insurer"]]
)
def test_rows_are_the_common_ids_in_ascending_order_at_every_party(providers: list[str]) -> None:
    parties = ["bank", *providers]
    net = InMemoryNetwork(parties)
    tables = {p: Table.from_columns("d", {"id": SETS[p]}) for p in parties}
    results = run_in_memory(spec(providers), ALIGN, tables, LIMITS, net)
    common = sorted(set.intersection(*(set(SETS[p]) for p in parties)))
    assert common  # the test data has a common set
    for party in parties:
        result = results[party]
        assert result is not None
        rows = json.loads(str(result.summary["rows"]))
        assert [SETS[party][r] for r in rows] == common
    tags = {tag for *_, tag, _ in net.captured}
    if len(providers) == 1:  # pairwise ECDH-PSI, as before
        assert "align/double/0" in tags and not any(t.startswith("align/mpsi") for t in tags)
    else:  # the bank never sees a provider's doubly blinded set, only the multi-party exchange
        assert not any(t.startswith("align/double") for t in tags)
        assert {"align/mpsi/hint", "align/mpsi/result", "align/mpsi/zs"} <= tags


def test_alignment_declares_the_membership_each_party_learns() -> None:
    assert va.alignment_outputs(spec(["tax"])) == {"membership:tax>bank", "membership:bank>tax"}
    assert va.alignment_outputs(spec(["tax", "registry"])) == {
        "membership:tax>bank",
        "membership:registry>bank",
        "membership:bank>tax",
        "membership:registry>tax",
        "membership:bank>registry",
        "membership:tax>registry",
    }
    assert va.label_holder_aligns(spec(["tax"])) == "which of its ids tax also holds"
    assert "never which ids one holds alone" in va.label_holder_aligns(spec(["tax", "registry"]))
