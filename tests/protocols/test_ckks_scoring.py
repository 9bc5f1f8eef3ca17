"""ckks_scoring in memory: an insurer's model on a hospital's encrypted patients vs plaintext."""

from __future__ import annotations

import csv
import dataclasses
import io
import struct

import numpy as np
import pytest

from bund.compute import ckks
from bund.compute.ckks_sandbox import CkksSandbox
from bund.compute.errors import InvalidKeyError, InvalidMessageError
from bund.compute.learn.risk_model import model_from_columns
from bund.parties.data import Table
from bund.parties.demo_data import generate_health
from bund.parties.jobs import InvalidJobSpecError, Participant, Result, run_in_memory
from bund.parties.protocols import PROTOCOLS
from bund.parties.protocols import ckks_scoring as cs

HOSPITAL, INSURER = "hospital-a", "insurer"


@pytest.fixture(scope="module")
def data() -> dict[str, Table]:
    return generate_health(300, 17)


def _run(
    data: dict[str, Table], kind: str, receivers: tuple[str, ...], **params: object
) -> tuple[dict[str, Result | None], np.ndarray, Table]:
    model_table = cs.make_demo_model(data["hospital_b"], kind)
    spec = cs.make_spec(HOSPITAL, INSURER, kind=kind, receivers=receivers)
    if params:
        spec = dataclasses.replace(spec, params={**spec.params, **params})
    tables = {HOSPITAL: data["hospital_a"], INSURER: model_table}
    results = run_in_memory(spec, PROTOCOLS["ckks_scoring"], tables)
    model = model_from_columns(model_table.data, cs.DEMO_FEATURES)
    x = np.column_stack([data["hospital_a"].numeric(f) for f in cs.DEMO_FEATURES])
    return results, model.scores(x), data["hospital_a"]


def _scores(result: Result | None) -> tuple[list[str], np.ndarray]:
    assert result is not None
    rows = list(csv.DictReader(io.StringIO(result.artifacts["scores.csv"].decode())))
    return [r["patient_id"] for r in rows], np.array([float(r["score"]) for r in rows])


def test_logistic_scores_match_the_plaintext_model_at_both_receivers(
    data: dict[str, Table],
) -> None:
    results, expected, patients = _run(data, "logistic", (HOSPITAL, INSURER))
    ids, scores = _scores(results[HOSPITAL])
    assert ids == list(patients.column("patient_id"))
    assert _scores(results[INSURER])[0] == ids
    assert np.array_equal(_scores(results[INSURER])[1], scores)  # one release, two receivers
    diff = np.abs(scores - expected)
    summary = results[HOSPITAL].summary  # type: ignore[union-attr]
    bound = float(summary["score_error_bound"])  # type: ignore[arg-type]
    assert diff.max() <= min(1e-3, bound + 5e-7)  # + the csv's 6-decimal rounding
    assert np.count_nonzero(diff > 1e-6) > len(diff) // 2  # flooded: not the exact scores
    assert summary["patients"] == 300 and summary["model"] == "logistic"
    assert summary["security_bits"] == ckks.STATISTICAL_SECURITY_BITS


def test_mlp_scores_match_within_their_bound_and_go_to_the_hospital_only(
    data: dict[str, Table],
) -> None:
    results, expected, _ = _run(data, "mlp", (HOSPITAL,))
    assert results[INSURER] is None
    _, scores = _scores(results[HOSPITAL])
    bound = float(results[HOSPITAL].summary["score_error_bound"])  # type: ignore[union-attr, arg-type]
    assert bound <= cs.DEFAULT_TOLERANCE["mlp"]
    assert np.abs(scores - expected).max() <= bound + 5e-7


def test_insurer_only_receiver(data: dict[str, Table]) -> None:
    results, expected, _ = _run(data, "logistic", (INSURER,))
    assert results[HOSPITAL] is None
    assert np.abs(_scores(results[INSURER])[1] - expected).max() <= 1e-3


def test_a_tolerance_the_flooding_cannot_meet_is_refused(data: dict[str, Table]) -> None:
    with pytest.raises(cs.ScoreToleranceError, match="tolerance"):
        _run(data, "logistic", (HOSPITAL,), tolerance=1e-6)


def test_a_context_with_a_secret_key_is_never_sent_and_always_refused() -> None:
    with CkksSandbox() as hospital:
        _, (public,) = hospital.call("keygen", {"degree": 8192, "relin": False})
        assert not ckks.load_public_context(public, relin_keys=False).is_private
    secret = ckks.CkksContext.create(ckks.CkksParameters.for_scoring(8192), galois_keys=False)
    assert not ckks.CkksContext.load(secret.serialize(galois_keys=False)).is_private
    leaked = bytes(secret._ctx.serialize(save_secret_key=True, save_galois_keys=False))
    with CkksSandbox() as insurer, pytest.raises(InvalidKeyError, match="secret key"):
        insurer.call("load", {"relin": False}, [leaked])


def test_spec_validation() -> None:
    good = cs.make_spec(HOSPITAL, INSURER)
    cs.validate(good)
    assert cs.DEFINITION.outputs(good) == frozenset({"score"})
    assert "no feature value" in cs.DEFINITION.learns(good)[INSURER]
    bad_params = [
        {"features": ""},
        {"model": "forest"},
        {"degree": 4096},
        {"tolerance": 0},
        {"colour": "red"},
    ]
    for change in bad_params:
        spec = dataclasses.replace(good, params={**good.params, **change})
        with pytest.raises(InvalidJobSpecError):
            cs.validate(spec)
    no_id = dataclasses.replace(
        good,
        participants=(
            Participant(HOSPITAL, cs.FEATURE_HOLDER, "patients"),
            Participant(INSURER, cs.MODEL_HOLDER, "risk_model"),
        ),
    )
    with pytest.raises(InvalidJobSpecError, match="binds 'id'"):
        cs.validate(no_id)


def test_wire_layouts_round_trip_and_refuse_malformed_messages() -> None:
    p = cs.plan(cs.make_spec(HOSPITAL, INSURER))
    ranges = [(0.0, 8.0)] * len(p.features)
    data = cs.encode_context(8192, 10, ranges, b"ctx")
    assert cs.decode_context(data, p) == (10, ranges, b"ctx")
    for broken in (data[:20], b"XXXX" + data[4:], cs.encode_context(16384, 10, ranges, b"c")):
        with pytest.raises(InvalidMessageError):
            cs.decode_context(broken, p)
    nan_range = cs.encode_context(8192, 10, [(float("nan"), 1.0)] * len(p.features), b"c")
    with pytest.raises(InvalidMessageError, match="range"):
        cs.decode_context(nan_range, p)
    assert cs.decode_vector(cs.encode_vector(1, 2, 3, b"v"), 1, 2, 3) == b"v"
    with pytest.raises(InvalidMessageError):
        cs.decode_vector(cs.encode_vector(1, 2, 3, b"v"), 1, 3, 3)
    assert cs.decode_result(cs.encode_result(0, 5, 1e-9, b"z"), 0, 5) == (1e-9, b"z")
    with pytest.raises(InvalidMessageError, match="error bound"):
        cs.decode_result(cs.encode_result(0, 5, 1.0, b"z"), 0, 5)
    released = cs.Released(["a", "b"], [4096, -8192], ckks.PRECISION_BITS, 1e-4, 3e-4)
    assert cs.decode_scores(cs.encode_scores(released), 2) == released
    encoded = cs.encode_scores(released)
    for broken in (encoded[:-1], encoded + b"\x00", cs.encode_scores(released)[:30]):
        with pytest.raises(InvalidMessageError):
            cs.decode_scores(broken, 2)
    twice = cs.Released(["a", "a"], [1, 2], ckks.PRECISION_BITS, 1e-4, 3e-4)
    with pytest.raises(InvalidMessageError, match="repeats"):
        cs.decode_scores(cs.encode_scores(twice), 2)
    huge = encoded[:-8] + struct.pack(">q", 1 << 40)
    with pytest.raises(InvalidMessageError, match="beyond"):
        cs.decode_scores(huge, 2)
