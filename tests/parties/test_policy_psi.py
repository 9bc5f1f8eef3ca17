"""Policy keys of the PSI protocols: trusted counterparties, payload columns, PSI limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from bund.parties.jobs import JobSpec, Participant
from bund.parties.policy import (
    DEFAULT_LIMITS,
    Policy,
    PolicyFileError,
    PolicyRefusedError,
    load_policy,
)
from bund.parties.protocols import psi_unbalanced

POLICY = """\
[approvals]
required = false
[counterparties.bank]
roles = ["bank"]
[datasets.firms]
level = "confidential"
payload_columns = ["registered_capital", "years_active"]
trusted_counterparties = ["bank"]
[limits]
psi_unbalanced_max_queries = 5000
psi_spill_rows = 0
"""


def load(tmp_path: Path, text: str) -> Policy:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return load_policy(path, "registry")


def spec(**columns: str) -> JobSpec:
    return JobSpec(
        "psi_unbalanced",
        (
            Participant("registry", "holder", "firms", {"id": "uscc", **columns}),
            Participant("bank", "querier"),
        ),
        ("bank",),
        "credit checks",
        "bank",
        {"phase": "setup"},
    )


def test_the_keys_load_and_payload_columns_gate_the_payload_output(tmp_path: Path) -> None:
    policy = load_policy_file(tmp_path)
    entry = policy.datasets["firms"]
    assert entry.payload_columns == {"registered_capital", "years_active"}
    assert entry.trusted_counterparties == {"bank"} and not entry.guards_membership("bank")
    assert policy.limits["psi_unbalanced_max_queries"] == 5000
    assert policy.limits["psi_bucket_points"] == DEFAULT_LIMITS["psi_bucket_points"]
    declared = spec(**{"payload.capital": "registered_capital"})
    policy.check(declared, "registry", psi_unbalanced.outputs(declared))
    undeclared = spec(**{"payload.capital": "registered_capital", "payload.owner": "owner_name"})
    with pytest.raises(PolicyRefusedError, match="no payload column 'owner_name'") as err:
        policy.check(undeclared, "registry", psi_unbalanced.outputs(undeclared))
    assert "registered_capital" not in str(err.value)  # the declared ones are not named


def load_policy_file(tmp_path: Path) -> Policy:
    return load(tmp_path, POLICY)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (("payload_columns = [", "payload_columns = [1, "), "payload_columns"),
        (('trusted_counterparties = ["bank"]', "trusted_counterparties = ['a b']"), "name"),
        (("psi_unbalanced_max_queries = 5000", "psi_unbalanced_max_queries = -1"), ">= 0"),
        (("psi_spill_rows = 0", "psi_spil_rows = 0"), "psi_spill_rows"),
    ],
)
def test_bad_keys_name_the_key(tmp_path: Path, change: tuple[str, str], words: str) -> None:
    with pytest.raises(PolicyFileError, match=words):
        load(tmp_path, POLICY.replace(*change))


def test_restricted_personal_data_releases_no_payload(tmp_path: Path) -> None:
    policy = load(tmp_path, POLICY.replace('"confidential"', '"restricted-personal"'))
    labeled = spec(**{"payload.capital": "registered_capital"})
    with pytest.raises(PolicyRefusedError, match="never releases intersection, payload"):
        policy.check(labeled, "registry", psi_unbalanced.outputs(labeled))
