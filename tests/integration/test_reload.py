"""Policy and catalogue reload without a restart: validated first, audited, budgets kept whole."""

from __future__ import annotations

import hashlib
import signal

import pytest

from bund.compute.dp.budget import Budget
from bund.compute.errors import BundError
from bund.parties.lifecycle.events import Event
from bund.parties.lifecycle.states import JobState
from bund.parties.policy import PolicyFileError
from tests.conftest import NodeFactory, wait_until
from tests.integration.test_node import BANK_IDS, TAX_IDS, psi_spec, wait_final


def _start(f: NodeFactory, tax_allows: tuple[str, ...] = ()) -> None:
    f.start("bank", {"loans": {"company_id": BANK_IDS}}, ("tax",), {"loans": ["psi"]})
    f.start(
        "tax",
        {"filings": {"uscc": TAX_IDS}},
        tax_allows,
        {"filings": ["psi"]},
        budget_epsilon="1",
    )


def _allow_bank(f: NodeFactory) -> None:
    policy = f.workdir / "tax" / "policy.toml"
    policy.write_text(policy.read_text() + '\n[counterparties.bank]\nroles = ["bank"]\n')


def test_a_reloaded_policy_applies_at_once_and_is_audited_with_its_digest(
    node_factory: NodeFactory,
) -> None:
    _start(node_factory)
    with node_factory.client("bank") as bank:
        assert wait_final(bank, bank.submit(psi_spec())).state is JobState.REFUSED
        _allow_bank(node_factory)
        node_factory.nodes["tax"].reload()
        assert wait_final(bank, bank.submit(psi_spec())).state is JobState.SUCCEEDED
    policy = (node_factory.workdir / "tax" / "policy.toml").read_bytes()
    (record,) = [
        r for r in node_factory.nodes["tax"].audit_store.read() if r.event == Event.POLICY_RELOADED
    ]
    assert record.fields["policy_toml_sha256"] == hashlib.sha256(policy).hexdigest()


def test_a_bad_file_keeps_the_old_policy_and_says_why(node_factory: NodeFactory) -> None:
    _start(node_factory, tax_allows=("bank",))
    policy = node_factory.workdir / "tax" / "policy.toml"
    good = policy.read_text()
    policy.write_text(good.replace("cohort_floor", "cohort_flor"))
    with pytest.raises(PolicyFileError, match="cohort_flor.*cohort_floor"):
        node_factory.nodes["tax"].reload()
    policy.write_text(good.replace('budget_epsilon = "1"', 'budget_epsilon = "1/1000"'))
    node_factory.nodes["tax"].manager.ledger.reserve(
        "a" * 32, "filings", "bank", Budget.parse("1/2")
    )
    with pytest.raises(PolicyFileError, match="below what is spent and reserved"):
        node_factory.nodes["tax"].reload()
    node_toml = node_factory.workdir / "tax" / "node.toml"
    node_toml.write_text(node_toml.read_text().replace('party = "tax"', 'party = "bank"'))
    with pytest.raises(BundError, match="'bank'"):
        node_factory.nodes["tax"].reload()
    # The old policy still runs jobs.
    with node_factory.client("bank") as bank:
        assert wait_final(bank, bank.submit(psi_spec())).state is JobState.SUCCEEDED
    assert not any(
        r.event == Event.POLICY_RELOADED for r in node_factory.nodes["tax"].audit_store.read()
    )


def test_sighup_reloads_a_node_process(node_factory: NodeFactory) -> None:
    paths = {
        "bank": node_factory.write_config(
            "bank", {"loans": {"company_id": BANK_IDS}}, ("tax",), {"loans": ["psi"]}
        ),
        "tax": node_factory.write_config(
            "tax", {"filings": {"uscc": TAX_IDS}}, (), {"filings": ["psi"]}
        ),
    }
    for name, path in paths.items():
        node_factory.spawn(name, path)
    _allow_bank(node_factory)
    node_factory.processes["tax"].popen.send_signal(signal.SIGHUP)
    with node_factory.client("tax") as tax:
        wait_until(
            lambda: any(r.event == Event.POLICY_RELOADED for r in tax.read_audit().records) or None,
            30,
            "tax to reload its policy",
        )
    with node_factory.client("bank") as bank:
        assert wait_final(bank, bank.submit(psi_spec())).state is JobState.SUCCEEDED
