"""SecureBoost between three nodes over mTLS: policies, model parts, scoring, kill -9 and resume.

The jobs of tests/protocols/test_vertical_secureboost.py, every message through the gRPC
mailbox. Each side's policy must trust the other for the protocol (a deviating bank could read a
provider's bins, a deviating provider probe the labels), so a node that does not is refused at
admission, naming the risk; the same for scoring. Deviating nodes (a modified role in one node's
registry, the others honest): a bank whose Π^mod proof fails gets no histogram, and a provider
that returns other rows than its winning split's fails the job at the bank.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bund.compute import insecure
from bund.parties.demo_data import generate_finance
from bund.parties.follow import follow_job
from bund.parties.jobs import JobContext, Result
from bund.parties.lifecycle.states import JobState
from bund.parties.protocols import PROTOCOLS
from bund.parties.protocols import vertical_secureboost as proto
from bund.parties.regulator import audit_federation, load_regulator_config
from tests.conftest import NodeFactory
from tests.integration.test_faults import LIMITS, SMALL_KEYS
from tests.integration.test_node import wait_final
from tests.integration.test_regulator import write_regulator_config
from tests.protocols.test_vertical_lr import ROLES
from tests.protocols.test_vertical_secureboost import make_spec, score_spec

Role = Callable[[JobContext], Result | None]

pytestmark = pytest.mark.integration


def trust(party: str) -> list[tuple[str, str]]:
    """What each party's policy trusts: the bank its providers, the providers the bank."""
    if party == "bank":
        return [(p, "vertical_secureboost") for p in ("tax", "registry")]
    return [("bank", "vertical_secureboost"), ("bank", "vertical_tree_score")]


@pytest.fixture
def small_keys() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()  # 512-bit Paillier keys: tests only
    yield
    insecure.disable_insecure_test_parameters()


@pytest.mark.usefixtures("small_keys")
def test_secureboost_and_tree_scoring_between_three_nodes(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    data = generate_finance(1500, 11, applicants=200)
    tables = {
        "bank": {"loan_book": data["loan_book"], "applicants": data["applicants"]},
        "tax": {"tax_filings": data["tax_filings"]},
        "registry": {"business_registry": data["business_registry"]},
    }
    for party in ROLES:
        others = [p for p in ROLES if p != party]
        node_factory.start(
            party, allowed=others, tables=tables[party],
            trusted_for=[] if party == "registry" else trust(party),
        )  # fmt: skip
    with node_factory.client("bank") as bank:
        refused = wait_final(bank, bank.submit(make_spec()))
    assert refused.state is JobState.REFUSED
    assert "registry" in refused.error and "trusted_for" in refused.error, refused.error
    node_factory.write_config("registry", allowed=["bank", "tax"], tables=tables["registry"],
                              trusted_for=trust("registry"))  # fmt: skip
    node_factory.nodes["registry"].reload()
    with node_factory.client("bank") as bank:
        job_id = bank.submit(make_spec())
        status = wait_final(bank, job_id, timeout=240)
        assert status.state is JobState.SUCCEEDED, status.error
        result = bank.result(job_id)
    assert result.summary["auc"] > result.summary["auc_bank_only"]  # type: ignore[operator]
    receipt = json.loads(result.artifacts["receipt.json"])
    assert (
        receipt["protocol"] == "vertical_secureboost" and "DEVIATING bank" in receipt["learned.tax"]
    )
    node_factory.wait_closed(job_id)
    with node_factory.client("tax") as tax:
        own = json.loads(tax.result(job_id).artifacts["model.json"])
    assert set(own["features"]) <= set(data["tax_filings"].columns)
    assert "trees" not in own and "default_12m" not in json.dumps(own)

    # Scores can reveal a provider's split sides (leaf indices in the low bits of leaf weights):
    # a provider that trusts the bank for training only refuses to score.
    def tax_trusts(pairs: list[tuple[str, str]]) -> None:
        node_factory.write_config("tax", allowed=["bank", "registry"], tables=tables["tax"],
                                  trusted_for=pairs)  # fmt: skip
        node_factory.nodes["tax"].reload()

    tax_trusts([("bank", "vertical_secureboost")])
    with node_factory.client("bank") as bank:
        refused = wait_final(bank, bank.submit(score_spec(job_id)))
    assert refused.state is JobState.REFUSED
    assert "tax" in refused.error and "trusted_for" in refused.error, refused.error
    tax_trusts(trust("tax"))
    with node_factory.client("bank") as bank:
        scoring = bank.submit(score_spec(job_id))
        status = wait_final(bank, scoring, timeout=240)
        assert status.state is JobState.SUCCEEDED, status.error
        scores = bank.result(scoring)
    assert 0 < scores.summary["scored"] < scores.summary["applicants"]  # type: ignore[operator]
    node_factory.wait_closed(scoring)
    addresses = {n: f"127.0.0.1:{node.port}" for n, node in node_factory.nodes.items()}
    config = write_regulator_config(tmp_path / "regulator.toml", node_factory.federation, addresses)
    outcome = audit_federation(load_regulator_config(config))
    assert outcome.errors == 0, outcome.findings


def run_trees(f: NodeFactory, victim: str | None) -> dict[str, dict[str, object]]:
    """One SecureBoost job between three node processes; kill ``victim`` after a tree, restart."""
    with f.client("bank") as bank:
        job_id = bank.submit(make_spec(n_estimators=4, max_depth=3))
    if victim is not None:
        with f.client("bank") as c:  # after the first tree: past the alignment
            follow_job(c, job_id, until=lambda s: s.phase == "trees" and s.done >= 1, timeout=120)
        f.kill(victim)
        f.spawn(victim, f.workdir / victim / "node.toml", env=SMALL_KEYS)
    models: dict[str, dict[str, object]] = {}
    for party in ROLES:
        with f.client(party) as c:
            status = wait_final(c, job_id, timeout=240)
            assert status.state is JobState.SUCCEEDED, (party, status.error)
            models[party] = json.loads(c.result(job_id).artifacts["model.json"])
    return models


@pytest.mark.parametrize("victim", ["bank", "tax"])
def test_secureboost_resumes_after_kill_with_the_uninterrupted_model(
    node_factory: NodeFactory, victim: str
) -> None:
    f = node_factory
    data = generate_finance(1500, 11)
    for party, dataset in ROLES.items():
        others = [p for p in ROLES if p != party]
        path = f.write_config(
            party, allowed=others, tables={dataset: data[dataset]}, limits=LIMITS,
            trusted_for=trust(party),
        )  # fmt: skip
        f.spawn(party, path, env=SMALL_KEYS)
    reference = run_trees(f, None)
    resumed = run_trees(f, victim)
    assert resumed == reference  # bit for bit: every tree, leaf, split and metric


class _Tampering:
    """A deviating node's job context: every message whose tag matches is altered before sending."""

    def __init__(
        self, ctx: JobContext, matches: Callable[[str], bool], alter: Callable[[bytes], bytes]
    ) -> None:
        self._ctx, self._matches, self._alter = ctx, matches, alter

    def send(self, peer: str, tag: str, payload: bytes) -> None:
        self._ctx.send(peer, tag, self._alter(payload) if self._matches(tag) else payload)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def deviating(role: str, matches: Callable[[str], bool], alter: Callable[[bytes], bytes]) -> Any:
    """``vertical_secureboost`` with ``role`` altering the messages ``matches`` selects."""
    honest: Role = proto.DEFINITION.roles[role]

    def run(ctx: JobContext) -> Result | None:
        return honest(_Tampering(ctx, matches, alter))

    roles = {**proto.DEFINITION.roles, role: run}
    return {**PROTOCOLS, "vertical_secureboost": dataclasses.replace(proto.DEFINITION, roles=roles)}


def start_three(f: NodeFactory, registries: dict[str, Any]) -> None:
    data = generate_finance(1500, 11)
    for party, dataset in ROLES.items():
        others = [p for p in ROLES if p != party]
        f.start(
            party, allowed=others, tables={dataset: data[dataset]}, trusted_for=trust(party),
            registry=registries.get(party),
        )  # fmt: skip


def sent_tags(f: NodeFactory, party: str, job_id: str) -> list[str]:
    """The tags of every message ``party``'s node recorded sending for ``job_id``."""
    records = f.nodes[party].audit_store.read()
    return [
        str(r.fields["tag"]) for r in records if r.job_id == job_id and r.event == "message_sent"
    ]


@pytest.mark.usefixtures("small_keys")
def test_a_bank_node_whose_modulus_proof_fails_gets_no_histogram(node_factory: NodeFactory) -> None:
    """The bank's node sends its key with a corrupted Π^mod proof (as a bank would whose modulus
    let it undo weak re-randomisation): both providers' nodes refuse before any histogram."""

    def break_proof(payload: bytes) -> bytes:
        key, proof = proto.decode_key(payload)
        return proto.encode_key(key, proof[:-40] + bytes(40))

    start_three(
        node_factory, {"bank": deviating("label_holder", lambda tag: tag == "vsb/key", break_proof)}
    )
    with node_factory.client("bank") as bank:
        job_id = bank.submit(make_spec(n_estimators=1))
        assert wait_final(bank, job_id, timeout=240).state in (JobState.FAILED, JobState.ABORTED)
    refused = []
    for provider in ("tax", "registry"):
        with node_factory.client(provider) as c:
            status = wait_final(c, job_id, timeout=120)
        # The provider that checks the key first refuses it on record; the other may be aborted
        # by that refusal before it reads the key. Neither sends a histogram.
        if status.state is JobState.FAILED:
            assert "proof" in status.error.lower(), status.error
            refused.append(provider)
        else:
            assert status.state is JobState.ABORTED, status
        tags = sent_tags(node_factory, provider, job_id)
        assert not [t for t in tags if t.startswith(("vsb/h/", "vsb/m/"))], tags
    assert refused, "no provider refused the broken proof on record"


@pytest.mark.usefixtures("small_keys")
def test_a_provider_node_that_lies_about_its_partition_is_caught(node_factory: NodeFactory) -> None:
    """The tax bureau's node wins nodes and returns the opposite rows: the bank's node checks the
    partition against the histogram sums of the split it chose and fails the job."""

    def flip(payload: bytes) -> bytes:
        parts = proto.decode_parts(payload)
        return proto.encode_parts(
            [(node, picked, lookup, ~left) for node, (picked, lookup, left) in parts.items()]
        )

    lie = deviating("feature_holder", lambda tag: tag.startswith("vsb/part/"), flip)
    start_three(node_factory, {"tax": lie, "registry": lie})
    with node_factory.client("bank") as bank:
        job_id = bank.submit(make_spec(n_estimators=2))
        status = wait_final(bank, job_id, timeout=240)
    assert status.state is JobState.FAILED and "does not match" in status.error, status.error
    assert not [t for t in sent_tags(node_factory, "bank", job_id) if t.startswith("vsb/tree/1")]
