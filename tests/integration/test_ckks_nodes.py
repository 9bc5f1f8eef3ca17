"""ckks_scoring between two node processes over mTLS: a hospital and an insurer.

Each node runs as its own process (``NodeFactory.spawn``); every ciphertext crosses the gRPC
mailbox, each node parses the other's CKKS objects only inside its sandbox worker, and both
receivers get the same flooded scores, which match the insurer's plaintext model.
"""

from __future__ import annotations

import csv
import io

import numpy as np

from bund.compute.learn.risk_model import model_from_columns
from bund.parties.demo_data import generate_health
from bund.parties.lifecycle.states import JobState
from bund.parties.protocols import ckks_scoring as cs
from tests.conftest import NodeFactory
from tests.integration.test_node import wait_final

HOSPITAL, INSURER = "hospital-a", "insurer"


def _scores(data: bytes) -> dict[str, float]:
    return {r["patient_id"]: float(r["score"]) for r in csv.DictReader(io.StringIO(data.decode()))}


def test_encrypted_scoring_between_hospital_and_insurer_processes(
    node_factory: NodeFactory,
) -> None:
    f = node_factory
    data = generate_health(400, 23)
    patients = data["hospital_a"]
    model_table = cs.make_demo_model(data["hospital_b"], "logistic")
    hospital = f.write_config(
        HOSPITAL,
        allowed=[INSURER],
        level="restricted-personal",
        tables={"patients": patients},
        trusted_for=[(INSURER, "ckks_scoring")],  # the insurer receives: the hospital trusts it
        release_scores_to=[INSURER],
    )
    insurer = f.write_config(INSURER, allowed=[HOSPITAL], tables={"risk_model": model_table})
    f.spawn(HOSPITAL, hospital)
    f.spawn(INSURER, insurer)
    with f.client(INSURER) as client:
        job_id = client.submit(cs.make_spec(HOSPITAL, INSURER))
        status = wait_final(client, job_id, timeout=120)
        assert status.state is JobState.SUCCEEDED, status.error
        at_insurer = client.result(job_id)
    with f.client(HOSPITAL) as client:
        assert wait_final(client, job_id).state is JobState.SUCCEEDED
        at_hospital = client.result(job_id)
    scores = _scores(at_hospital.artifacts["scores.csv"])
    assert scores == _scores(at_insurer.artifacts["scores.csv"])
    model = model_from_columns(model_table.data, cs.DEMO_FEATURES)
    x = np.column_stack([patients.numeric(c) for c in cs.DEMO_FEATURES])
    expected = dict(zip(patients.column("patient_id"), model.scores(x).tolist(), strict=True))
    assert scores.keys() == expected.keys()
    assert max(abs(scores[p] - expected[p]) for p in scores) <= 1e-3
    assert at_hospital.summary["patients"] == 400
