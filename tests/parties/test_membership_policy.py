"""Membership as an output (issue 14.3): declared per direction, refused at admission by policy.

Every protocol that aligns by PSI tells some party which ids another party's dataset holds: the
bank learns which of its applicants the providers hold, and the providers learn which of their
firms are the bank's. A ``restricted-personal`` dataset never reveals membership unless its
owner's policy names the party that would learn it (``reveal_membership_to``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from bund.parties.demo_data import generate_finance
from bund.parties.jobs import JobSpec, Participant
from bund.parties.lifecycle.states import JobState
from bund.parties.policy import (
    DatasetPolicy,
    Policy,
    PolicyFileError,
    PolicyRefusedError,
    load_policy,
    membership_directions,
)
from bund.parties.protocols import PROTOCOLS
from tests.parties.lifecycle_harness import Loopback, PartySetup
from tests.protocols.test_vertical_lr import make_spec as vertical_lr_spec

ROLES = {"bank": "loan_book", "tax": "tax_filings", "registry": "business_registry"}


def policy(level: str, reveal: frozenset[str] = frozenset(), party: str = "bank") -> Policy:
    others = [p for p in ROLES if p != party]
    return Policy(
        counterparties={o: frozenset({o}) for o in others},
        datasets={ROLES[party]: DatasetPolicy(party, level, reveal_membership_to=reveal)},
    )


def outputs(spec: JobSpec) -> frozenset[str]:
    return PROTOCOLS[spec.protocol].outputs(spec)


def psi_spec(mode: str, receivers: tuple[str, ...]) -> JobSpec:
    parts = (
        Participant("bank", "member", "loan_book", {"id": "company_id"}),
        Participant("tax", "member", "tax_filings", {"id": "company_id"}),
    )
    return JobSpec("psi", parts, receivers, "align", "bank", {"mode": mode})


def test_directions_are_read_back_from_the_outputs() -> None:
    spec = vertical_lr_spec()
    assert membership_directions(outputs(spec)) == sorted(
        (owner, learner) for owner in ROLES for learner in ROLES if owner != learner
    )
    assert membership_directions(outputs(psi_spec("intersection", ("bank",)))) == [("tax", "bank")]
    assert membership_directions(outputs(psi_spec("cardinality", ("bank", "tax")))) == []


@pytest.mark.parametrize("party", list(ROLES))
def test_restricted_personal_data_refuses_vertical_lr_until_the_learners_are_named(
    party: str,
) -> None:
    spec = vertical_lr_spec()
    learners = frozenset(p for p in ROLES if p != party)
    with pytest.raises(PolicyRefusedError, match="never reveals which ids it holds") as err:
        policy("restricted-personal", party=party).check(spec, party, outputs(spec))
    assert "reveal_membership_to" in str(err.value) and ROLES[party] in str(err.value)
    # Naming only one of the two parties that would learn it is not enough.
    (first, second) = sorted(learners)
    with pytest.raises(PolicyRefusedError, match=second):
        policy("restricted-personal", frozenset({first}), party).check(spec, party, outputs(spec))
    policy("restricted-personal", learners, party).check(spec, party, outputs(spec))
    policy("confidential", party=party).check(spec, party, outputs(spec))


def test_psi_modes_and_directions() -> None:
    spec = psi_spec("intersection", ("bank",))
    assert outputs(spec) == {"intersection", "membership:tax>bank"}
    policy("confidential", party="tax").check(spec, "tax", outputs(spec))
    # At restricted-personal, intersection mode is refused as before ...
    with pytest.raises(PolicyRefusedError, match="never releases intersection"):
        policy("restricted-personal", frozenset({"bank"}), "tax").check(spec, "tax", outputs(spec))
    # ... and the membership check looks only at the owner's own direction: the bank learns
    # which of its ids tax holds, which tax's policy must allow and the bank's need not.
    only = frozenset({"membership:tax>bank"})
    with pytest.raises(PolicyRefusedError, match="tells bank which of them it holds"):
        policy("restricted-personal", party="tax").check(spec, "tax", only)
    policy("restricted-personal", frozenset({"bank"}), "tax").check(spec, "tax", only)
    policy("restricted-personal", party="bank").check(spec, "bank", only)
    # Cardinality mode declares no membership (how many, not which).
    spec = psi_spec("cardinality", ("bank", "tax"))
    policy("restricted-personal", party="tax").check(spec, "tax", outputs(spec))


def test_policy_file_names_the_learners(tmp_path: Path) -> None:
    text = """\
[approvals]
required = false
[counterparties.tax]
roles = ["tax"]
[datasets.loan_book]
level = "restricted-personal"
reveal_membership_to = ["tax"]
"""
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    assert load_policy(path, "bank").datasets["loan_book"].reveal_membership_to == {"tax"}
    path.write_text(text.replace("reveal_membership_to", "reveal_membership"), encoding="utf-8")
    with pytest.raises(
        PolicyFileError, match="did you mean 'datasets.loan_book.reveal_membership_to'"
    ):
        load_policy(path, "bank")
    path.write_text(text.replace('["tax"]\n', '["no such party!"]\n'), encoding="utf-8")
    with pytest.raises(PolicyFileError, match="reveal_membership_to"):
        load_policy(path, "bank")


# --- at admission, between managers -----------------------------------------------------------


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loopback]:
    federation = Loopback(tmp_path, PROTOCOLS)
    yield federation
    federation.close()


def _federation(loop: Loopback, restricted: str, reveal: frozenset[str] = frozenset()) -> None:
    data = generate_finance(300, 11)  # the demo's finance data, smaller
    for party, dataset in ROLES.items():
        columns = {c: data[dataset].column(c) for c in data[dataset].columns}
        level = "restricted-personal" if party == restricted else "confidential"
        # The bank trusts its providers with its labels (no label DP): only membership is at issue.
        trusted = {p: frozenset({"vertical_lr"}) for p in ROLES if p != "bank"}
        setup = PartySetup(
            {dataset: columns},
            level=level,
            reveal_membership_to=reveal,
            trusted_for=trusted if party == "bank" else {},
        )
        loop.add(party, setup, [p for p in ROLES if p != party])


@pytest.mark.parametrize("restricted", ["bank", "registry"])
def test_vertical_lr_on_the_demo_data_is_refused_at_admission(
    loop: Loopback, restricted: str
) -> None:
    _federation(loop, restricted)
    job = loop.managers["bank"].submit(vertical_lr_spec(), "bank")
    status = loop.wait("bank", job)
    assert status.state is JobState.REFUSED
    assert "never reveals which ids it holds" in status.error
    assert "reveal_membership_to" in status.error
    if restricted != "bank":
        assert f"refused by {restricted}" in status.error
    for party in ROLES:  # refused before a single protocol message
        assert "message_sent" not in loop.events(party, job)


def test_naming_the_learners_admits_the_job(loop: Loopback) -> None:
    _federation(loop, "bank", frozenset({"tax", "registry"}))
    spec = dataclasses.replace(vertical_lr_spec(), job_id="a" * 32)
    request = loop.managers["bank"].admission.check(spec, None)
    assert request is not None
    assert (
        "membership:bank>tax" in request.outputs and "membership:bank>registry" in request.outputs
    )
    summary = "\n".join(request.summary_lines())
    assert "releases: membership:bank>registry" in summary
    assert "tax learns which of its own ids are in the common set" in summary
