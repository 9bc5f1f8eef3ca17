"""Budget ledger and policy file: exact, concurrent-safe, durable, clear errors."""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bund.compute.dp.budget import Budget
from bund.compute.errors import InvalidInputError
from bund.parties.audit import AuditLog, MemoryAuditStore, verify_store
from bund.parties.ledger import BudgetExhaustedError, BudgetLedger
from bund.parties.policy import PolicyFileError, load_policy


class _Audit:
    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.key = Ed25519PrivateKey.generate()
        self.log = AuditLog(MemoryAuditStore(), self.key, "bank", lambda: "2026-11-24T00:00:00Z")

    def append(self, event: str, job_id: str = "", fields: object = None) -> object:
        return self.log.append(event, job_id, fields)  # type: ignore[arg-type]


def test_fifty_concurrent_charges_never_exceed_the_budget(tmp_path: Path) -> None:
    audit = _Audit()
    ledger = BudgetLedger(tmp_path / "b.db", {"d": Budget.parse("3")}, audit)
    outcomes: list[bool] = []
    lock = threading.Lock()

    def charge(i: int) -> None:
        try:
            ledger.charge(f"{i:032x}", "d", Budget.parse("1/7"))
            ok = True
        except BudgetExhaustedError:
            ok = False
        with lock:
            outcomes.append(ok)

    threads = [threading.Thread(target=charge, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(True) == 21  # 21 * 1/7 = 3 exactly; a float ledger would get 20 or 22
    assert ledger.line("d").spent == Budget(Fraction(3))
    assert ledger.line("d").remaining == Budget()
    assert verify_store(audit.log.store, audit.key.public_key()).ok
    charged = [r for r in audit.log.store.read() if r.event == "budget_charged"]
    assert len(charged) == 21 and charged[-1].fields["spent"] == "3"


def test_a_second_charge_for_the_same_job_is_free_and_charges_survive_restart(
    tmp_path: Path,
) -> None:
    audit = _Audit()
    ledger = BudgetLedger(tmp_path / "b.db", {"d": Budget.parse("1", "1/1000")}, audit)
    ledger.charge("a" * 32, "d", Budget.parse("1/2", "1/10000"))
    ledger.charge("a" * 32, "d", Budget.parse("1/2", "1/10000"))
    ledger.close()
    again = BudgetLedger(tmp_path / "b.db", {"d": Budget.parse("1", "1/1000")}, audit)
    assert again.line("d").spent == Budget.parse("1/2", "1/10000")
    with pytest.raises(
        BudgetExhaustedError, match="epsilon=1/2, delta=9/10000 of its privacy budget left"
    ):
        again.charge("b" * 32, "d", Budget.parse("3/4"))
    assert again.line("d").spent == Budget.parse("1/2", "1/10000")


@given(st.lists(st.fractions(min_value=0, max_value=2, max_denominator=1000), max_size=20))
def test_budget_arithmetic_is_exact(parts: list[Fraction]) -> None:
    total = Budget()
    for p in parts:
        total = total + Budget(p)
    assert total.epsilon == sum(parts, Fraction(0))


def test_floats_are_refused_for_budgets() -> None:
    with pytest.raises(InvalidInputError, match="exactly"):
        Budget.parse(0.1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[datasets.x]\nlevel = "secret"\n', "level must be one of"),
        ('[datasets.x]\nowner = "tax"\nlevel = "public"\n', "owner is 'tax'"),
        ("[approvals]\nrequired = true\n", "approver_key"),
        ("[counterparties.tax]\nroles = []\n", "needs roles"),
        ("cohort_floor = 0\n", "cohort_floor"),
        ("bogus = 1\n", "unknown keys"),
        ("[approvals]\nrequired = false\n[limits]\npsi_max = 5\n", "unknown limit"),
        ('[datasets.x]\nlevel = "public"\nbudget_epsilon = 0.5\n', "exactly"),
    ],
)
def test_policy_file_errors_name_the_key(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyFileError, match=words):
        load_policy(path, "bank")


def test_policy_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        'cohort_floor = 20\n[approvals]\napprover_key = "a.pub"\n'
        '[counterparties.tax]\nroles = ["tax"]\n'
        '[datasets.loans]\nlevel = "restricted-personal"\nbudget_epsilon = "2"\n',
        encoding="utf-8",
    )
    policy = load_policy(path, "bank")
    assert policy.cohort_floor == 20 and policy.approvals_required
    assert policy.approvers == {"approver": tmp_path / "a.pub"}
    assert policy.datasets["loans"].budget == Budget.parse("2")
    assert "intersection" not in policy.datasets["loans"].rules.outputs
