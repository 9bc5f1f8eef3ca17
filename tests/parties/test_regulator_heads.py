"""The regulator's judgement of witnessed heads and clocks, on logs made in memory (no nodes)."""

from __future__ import annotations

import dataclasses
import datetime as dt

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bund.parties.audit import (
    AuditLog,
    AuditRecord,
    Checkpoint,
    MemoryAuditStore,
    WitnessedHead,
    cosign,
)
from bund.parties.regulator import (
    Finding,
    FindingKind,
    PulledLog,
    RegulatorFile,
    Severity,
    assess,
    judge_witnessed,
    log_findings,
    make_pulled_log,
    unwitnessed_finding,
)
from tests.parties.audit_helpers import KEY, PARTY, PUB, resign

TAX_KEY = Ed25519PrivateKey.generate()
KEYS = {PARTY: PUB, "tax": TAX_KEY.public_key()}
SKEW = dt.timedelta(seconds=120)


def at(seconds: float) -> str:
    moment = dt.datetime(2026, 11, 24, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


class Clock:
    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> str:
        return at(self.seconds)


class Bank:
    """The bank's log, growing a record every ten seconds, with the heads it signs."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.log = AuditLog(MemoryAuditStore(), KEY, PARTY, self.clock)

    def grow(self, n: int) -> None:
        for _ in range(n):
            self.clock.seconds += 10
            self.log.append("rpc", "", {"seq": len(self.log.store)})

    def head(self) -> Checkpoint:
        return self.log.checkpoint()

    def records(self) -> list[AuditRecord]:
        return self.log.store.read()


def witnessed(
    head: Checkpoint, after: float = 1.0, witness_key: Ed25519PrivateKey = TAX_KEY
) -> WitnessedHead:
    """``head`` as tax witnessed it, ``after`` seconds after it was signed (tax's clock)."""
    signed = dt.datetime.fromisoformat(head.timestamp) + dt.timedelta(seconds=after)
    received = signed.isoformat(timespec="microseconds").replace("+00:00", "Z")
    return cosign(head, "tax", received, witness_key)


def kinds(findings: list[Finding]) -> list[FindingKind]:
    return [f.kind for f in findings]


def pulled(records: list[AuditRecord], seconds: float, **extra: object) -> PulledLog:
    return make_pulled_log(PARTY, records, PUB, pulled_at=at(seconds), **extra)  # type: ignore[arg-type]


def test_witnessed_heads_are_checked_before_they_count() -> None:
    bank = Bank()
    bank.grow(3)
    good = witnessed(bank.head())
    forged_cosignature = witnessed(bank.head(), witness_key=Ed25519PrivateKey.generate())
    forged_head = witnessed(dataclasses.replace(bank.head(), signature=bytes(64)))
    stranger = dataclasses.replace(good, witness="registry")
    valid, found = judge_witnessed([good, forged_cosignature, forged_head, stranger], KEYS)
    assert valid == [good]
    assert [(f.kind, f.parties, f.witnesses) for f in found] == [
        (FindingKind.CHECKPOINT_INVALID, (PARTY,), ("tax",)),
        (FindingKind.WITNESS_INVALID, ("tax",), ("tax",)),
    ]


def test_a_head_received_far_from_when_it_was_signed_names_both_clocks() -> None:
    bank = Bank()
    bank.grow(2)
    on_time = witnessed(bank.head(), after=119)
    valid, found = judge_witnessed([on_time], KEYS, SKEW)
    assert valid == [on_time] and found == []
    bank.grow(1)
    a_day_late = witnessed(bank.head(), after=86_400)
    valid, found = judge_witnessed([on_time, a_day_late], KEYS, SKEW)
    assert len(valid) == 2
    (skew,) = found
    assert skew.kind is FindingKind.CLOCK_SKEW and skew.severity is Severity.ERROR
    assert skew.parties == (PARTY, "tax") and skew.witnesses == ("tax",)
    assert "24.0 h apart (the worst of 2 heads)" in skew.detail


def test_a_rewrite_after_the_regulators_checkpoint_is_named_from_the_witnessed_head() -> None:
    bank = Bank()
    bank.grow(4)
    regulators = bank.head()  # the regulator's last pull
    bank.grow(4)
    seen = witnessed(bank.head())  # tax witnessed records 4..7 too
    bank.grow(2)
    records = bank.records()
    rewritten = resign(records, 6, {"fields": {"seq": 60}})
    assert log_findings(pulled(rewritten, 200), [regulators]) == []  # as before: unseen
    (finding,) = log_findings(pulled(rewritten, 200), [regulators], [seen])
    assert finding.kind is FindingKind.LOG_REWRITTEN and finding.parties == (PARTY,)
    assert finding.witnesses == ("tax",) and dict(finding.indexes) == {PARTY: 4}
    assert "held by tax (witnessed" in finding.detail
    assert "record 4 is the first one no matching head vouches for" in finding.detail
    assert log_findings(pulled(records, 200), [regulators], [seen]) == []


def test_an_equivocation_does_not_hide_the_rewrite_that_followed() -> None:
    bank = Bank()
    bank.grow(6)
    seen = witnessed(bank.head(), after=1)
    rewritten = resign(bank.records(), 2, {"fields": {"seq": 20}})
    store = MemoryAuditStore()
    for record in rewritten:
        store.append(record)
    forked = witnessed(AuditLog(store, KEY, PARTY, lambda: at(500)).checkpoint(), after=1)
    found = log_findings(pulled(rewritten, 600), (), [forked, seen])
    assert kinds(found) == [FindingKind.EQUIVOCATION, FindingKind.LOG_REWRITTEN]
    assert dict(found[1].indexes) == {PARTY: 0}


def test_a_head_newer_than_the_pull_is_left_for_the_next_audit() -> None:
    bank = Bank()
    bank.grow(3)
    older = witnessed(bank.head())  # tax witnessed 3 records at 30 s
    bank.grow(1)
    fresh = bank.head()  # signed for this audit, just before the pull
    records = bank.records()
    bank.grow(2)
    newer = witnessed(bank.head())  # tax got it while the regulator was pulling
    assert log_findings(pulled(records, 100, fresh_head=fresh), [fresh], [older, newer]) == []
    # Cut to 2 records: the head the cut log signs for the audit is newer than tax's 3-record
    # head, which now covers more than the log holds.
    store = MemoryAuditStore()
    for record in records[:2]:
        store.append(record)
    cut_head = AuditLog(store, KEY, PARTY, lambda: at(90)).checkpoint()
    (cut,) = log_findings(pulled(records[:2], 100, fresh_head=cut_head), [], [older, newer])
    assert cut.kind is FindingKind.LOG_TRUNCATED and dict(cut.indexes) == {PARTY: 2}


def test_a_clock_that_goes_back_in_a_log_is_named_at_the_record() -> None:
    bank = Bank()
    bank.grow(5)
    records = bank.records()
    back = resign(records, 3, {"timestamp": at(5)})
    (finding,) = log_findings(pulled(back, 100))
    assert finding.kind is FindingKind.CLOCK_REGRESSED and dict(finding.indexes) == {PARTY: 3}
    assert log_findings(pulled(records, 100)) == []


def test_the_regulator_compares_each_party_s_fresh_head_with_its_own_clock() -> None:
    bank = Bank()
    bank.grow(2)
    head = bank.head()  # signed at 20 s by the bank's clock
    assert log_findings(pulled(bank.records(), 139, fresh_head=head)) == []
    (skew,) = log_findings(pulled(bank.records(), 20 + 86_400, fresh_head=head))
    assert skew.kind is FindingKind.CLOCK_SKEW and skew.parties == (PARTY,)
    assert skew.witnesses == () and "regulator's clock" in skew.detail


def test_a_refused_head_or_an_unreadable_record_still_yields_the_log() -> None:
    bank = Bank()
    bank.grow(6)
    records = bank.records()
    (refused,) = log_findings(pulled(records, 100, head_refused="store busy"))
    assert refused.kind is FindingKind.PULL_FAILED and "verified" in refused.detail
    log = pulled(records[:3], 100, reported_size=6, unreadable=(3, "fields are not canonical"))
    (invalid,) = log_findings(dataclasses.replace(log, head_refused="cannot sign"))
    assert invalid.kind is FindingKind.LOG_INVALID and dict(invalid.indexes) == {PARTY: 3}
    assert "fields are not canonical" in invalid.detail


def test_records_no_one_witnessed_in_time_are_a_warning() -> None:
    bank = Bank()
    bank.grow(10)  # records 0..9 written at 10..100 s
    log = pulled(bank.records(), 1000)
    window = dt.timedelta(seconds=60)
    assert unwitnessed_finding(log, [(10, at(60))], window, at(0)) is None
    # 0..4 by 55 s, 5..9 by 100 s: each within 60 s of being written.
    assert unwitnessed_finding(log, [(10, at(100)), (5, at(55))], window, at(0)) is None
    gap = unwitnessed_finding(log, [(4, at(30)), (10, at(130))], window, at(0))
    assert gap is not None and gap.kind is FindingKind.UNWITNESSED
    assert gap.severity is Severity.WARNING and dict(gap.indexes) == {PARTY: 4}
    # Records written before witnessing began (75 s) are not judged.
    assert unwitnessed_finding(log, [(4, at(30)), (10, at(130))], window, at(75)) is None
    young = pulled(bank.records(), 120)
    assert unwitnessed_finding(young, [(4, at(30))], window, at(0)) is not None
    assert unwitnessed_finding(young, [(9, at(30))], window, at(0)) is None  # 9 is too young


def test_assess_warns_about_unwitnessed_records_only_where_witnessing_runs() -> None:
    bank = Bank()
    bank.grow(3)
    log = pulled(bank.records(), 10_000)
    assert assess([log]).findings == ()
    tax = AuditLog(MemoryAuditStore(), TAX_KEY, "tax", lambda: at(1))
    tax.append("node_started")
    seen = cosign(tax.checkpoint(), PARTY, at(2), KEY)
    outcome = assess([log], witnessed=[seen])
    assert kinds(list(outcome.findings)) == [FindingKind.UNWITNESSED]


def test_regulator_toml_sets_the_skew_and_the_interval() -> None:
    file = RegulatorFile.model_validate(
        {"limits": {"max_clock_skew_s": 60, "witness_interval_s": 30}}
    )
    assert file.limits.max_clock_skew_s == 60 and file.limits.witness_interval_s == 30
    default = RegulatorFile.model_validate({}).limits
    assert (default.max_clock_skew_s, default.witness_interval_s) == (120, 300)
