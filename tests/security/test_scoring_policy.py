"""Scoring's policy guards: CKKS only where the hospital trusts the insurer; per-record scores of
restricted-personal data only to counterparties the owner names (issue 14, attack 1)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bund.parties.jobs import JobSpec, Participant
from bund.parties.lifecycle.states import JobState
from bund.parties.protocols import PROTOCOLS
from tests.parties.lifecycle_harness import Loopback, PartySetup

PATIENTS = {"patient_id": [f"P{i}" for i in range(12)], "age": [str(40 + i) for i in range(12)]}
MODEL = {"layer": ["1", "1"], "unit": ["0", "0"], "input": ["age", "bias"], "weight": ["0.1", "-4"]}


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loopback]:
    federation = Loopback(tmp_path, PROTOCOLS)
    yield federation
    federation.close()


def _spec(protocol: str, receivers: tuple[str, ...]) -> JobSpec:
    params = {"features": "age", **({"model": "logistic"} if protocol == "ckks_scoring" else {})}
    return JobSpec(
        protocol=protocol,
        participants=(
            Participant("hospital", "feature_holder", "patients", {"id": "patient_id"}),
            Participant("insurer", "model_holder", "model"),
        ),
        receivers=receivers,
        purpose="risk scoring",
        requester="insurer",
        params=params,
    )


def _hospital(loop: Loopback, **policy: object) -> None:
    setup = PartySetup(
        {"patients": PATIENTS},
        level="restricted-personal",
        approvals=True,
        **policy,  # type: ignore[arg-type]
    )
    loop.add("hospital", setup, ["insurer"])
    loop.add("insurer", PartySetup({"model": MODEL}, level="internal"), ["hospital"])


def test_ckks_scores_to_the_insurer_need_the_hospitals_trust(loop: Loopback) -> None:
    """Before: the hospital decrypted whatever the insurer returned and released it to it."""
    _hospital(loop, release_scores_to=frozenset({"insurer"}))
    job = loop.managers["insurer"].submit(_spec("ckks_scoring", ("insurer",)), "insurer")
    status = loop.wait("insurer", job)
    assert status.state is JobState.REFUSED
    assert "does not trust insurer to follow ckks_scoring" in status.error
    assert "receive its decryption" in status.error


def test_with_trust_named_ckks_scoring_is_admitted(loop: Loopback) -> None:
    _hospital(
        loop,
        release_scores_to=frozenset({"insurer"}),
        trusted_for={"insurer": frozenset({"ckks_scoring"})},
    )
    job = loop.managers["insurer"].submit(_spec("ckks_scoring", ("insurer",)), "insurer")
    loop.wait_state("hospital", job, JobState.AWAITING_APPROVAL)  # admitted: its approver decides
    request = loop.managers["hospital"].approval_request(job, "hospital")
    assert any("your columns used: id = patient_id" in line for line in request.summary_lines())
    loop.managers["insurer"].cancel(job, "insurer")


def test_scores_of_restricted_personal_data_go_only_where_the_policy_names(
    loop: Loopback,
) -> None:
    _hospital(loop)
    job = loop.managers["insurer"].submit(_spec("paillier_scoring", ("insurer",)), "insurer")
    status = loop.wait("insurer", job)
    assert status.state is JobState.REFUSED
    assert "per-record scores" in status.error and "release_scores_to" in status.error


def test_paillier_scoring_needs_no_trust_once_the_receiver_is_named(loop: Loopback) -> None:
    _hospital(loop, release_scores_to=frozenset({"insurer"}))
    job = loop.managers["insurer"].submit(_spec("paillier_scoring", ("insurer",)), "insurer")
    loop.wait_state("hospital", job, JobState.AWAITING_APPROVAL)
    loop.managers["insurer"].cancel(job, "insurer")
