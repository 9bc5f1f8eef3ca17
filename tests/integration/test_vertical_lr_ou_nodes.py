"""Vertical LR on Okamoto–Uchiyama between three nodes over mTLS: the same model as Paillier's.

The job of tests/integration/test_vertical_lr_nodes.py with ``scheme = "ou"``: the bank's OU key,
the providers' validation and re-randomisation, and the bank's guarded decryptions all go
through real nodes, each of which checks the job against its own policy first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from bund.compute import insecure
from bund.parties.demo_data import generate_finance
from bund.parties.lifecycle.states import JobState
from tests.conftest import NodeFactory
from tests.integration.test_node import wait_final
from tests.protocols.test_vertical_lr import ROLES, make_spec, trust_of


@pytest.fixture
def small_keys() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()  # 1024-bit OU keys: tests only
    yield
    insecure.disable_insecure_test_parameters()


@pytest.mark.usefixtures("small_keys")
def test_vertical_lr_on_ou_between_three_nodes(node_factory: NodeFactory) -> None:
    data = generate_finance(1500, 11)
    for party, dataset in ROLES.items():
        others = [p for p in ROLES if p != party]
        # The tax bureau trusts the bank's OU key; the registry does not, at first.
        trust = [("bank", "vertical_lr")] if party == "tax" else list(trust_of(party))
        node_factory.start(
            party, allowed=others, tables={dataset: data[dataset]}, trusted_for=trust
        )
    with node_factory.client("bank") as bank:
        refused = wait_final(bank, bank.submit(make_spec(scheme="ou", key_bits=1024, epochs=2)))
    assert refused.state is JobState.REFUSED
    assert "registry" in refused.error and "trusted_for" in refused.error, refused.error
    # Its owner accepts the risk the refusal named: policy.toml trusts the bank, reloaded live.
    node_factory.write_config(
        "registry", allowed=["bank", "tax"], tables={ROLES["registry"]: data[ROLES["registry"]]},
        trusted_for=[("bank", "vertical_lr")],
    )  # fmt: skip
    node_factory.nodes["registry"].reload()
    models = {}
    for scheme, bits in (("ou", 1024), ("paillier", 512)):
        with node_factory.client("bank") as bank:
            job_id = bank.submit(make_spec(scheme=scheme, key_bits=bits, epochs=2))
            status = wait_final(bank, job_id, timeout=240)
            assert status.state is JobState.SUCCEEDED, status.error
            result = bank.result(job_id)
        receipt = json.loads(result.artifacts["receipt.json"])
        if scheme == "ou":
            assert "TRUSTS bank" in receipt["learned.tax"]
        models[scheme] = json.loads(result.artifacts["model.json"])
        node_factory.wait_closed(job_id)
    assert models["ou"] == models["paillier"]  # the same integers are decrypted
