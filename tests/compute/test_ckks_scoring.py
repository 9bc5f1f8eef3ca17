"""CKKS scoring kernels: received-object validation, model evaluation vs plaintext, flooding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tenseal as ts

from bund.compute import ckks
from bund.compute.errors import InvalidCiphertextError, InvalidInputError, InvalidKeyError
from bund.compute.learn.risk_model import (
    RiskModel,
    model_from_columns,
    model_to_columns,
    train_logistic,
    train_square_mlp,
)

PARAMS = ckks.CkksParameters.for_scoring(8192)
FEATURES = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def secret() -> ckks.CkksContext:
    return ckks.CkksContext.create(PARAMS, galois_keys=False, threads=1)


@pytest.fixture(scope="module")
def public(secret: ckks.CkksContext) -> ckks.CkksContext:
    data = secret.make_public().serialize(galois_keys=False)
    return ckks.load_public_context(data, relin_keys=True)


@pytest.fixture(scope="module")
def patients() -> np.ndarray:
    rng = np.random.default_rng(3)  # test data, not a secret
    centre = np.array([60.0, 130.0, 6.0, 90.0])
    spread = np.array([12.0, 15.0, 1.0, 20.0])
    return centre + spread * rng.standard_normal((500, 4))


def _encrypt(
    secret: ckks.CkksContext, public: ckks.CkksContext, x: np.ndarray
) -> list[ckks.CkksVector]:
    return [
        ckks.load_vector(public, secret.encrypt(col).serialize(), size=len(col), level=2)
        for col in x.T
    ]


def _ranges(x: np.ndarray) -> list[tuple[float, float]]:
    return [ckks.coarse_range(float(c.min()), float(c.max())) for c in x.T]


def _decrypt(secret: ckks.CkksContext, ev: ckks.Evaluation, kind: str, size: int) -> np.ndarray:
    level = ckks.result_level(kind, PARAMS)
    return np.array(
        ckks.load_vector(secret, ev.logits.serialize(), size=size, level=level).decrypt()
    )


def _labels(x: np.ndarray) -> np.ndarray:
    score = (x[:, 0] - 60) / 12 + (x[:, 2] - 6) - (x[:, 3] - 90) / 20
    return (score > 0.3).astype(float)


def test_logistic_matches_plaintext_within_its_error_bound(
    secret: ckks.CkksContext, public: ckks.CkksContext, patients: np.ndarray
) -> None:
    model = train_logistic(FEATURES, patients, _labels(patients))
    ev = ckks.evaluate_model(model, _encrypt(secret, public, patients), _ranges(patients))
    error = np.abs(_decrypt(secret, ev, "logistic", len(patients)) - model.logits(patients))
    assert error.max() <= ev.error_bound
    assert ev.error_bound < 2.0**-30  # the 2^-36 rescaling bias is compensated


def test_square_mlp_matches_plaintext_within_its_error_bound(
    secret: ckks.CkksContext, public: ckks.CkksContext, patients: np.ndarray
) -> None:
    model = train_square_mlp(FEATURES, patients, _labels(patients), hidden=3, epochs=200)
    # A negative output weight and a unit that ignores the features exercise every branch.
    output = model.output.copy() if model.output is not None else np.ones(3)
    output[0] = -abs(output[0])
    weights = model.weights.copy()
    weights[2] = 0.0
    mlp = RiskModel(FEATURES, weights, model.bias, output, 0.5)
    ev = ckks.evaluate_model(mlp, _encrypt(secret, public, patients), _ranges(patients))
    error = np.abs(_decrypt(secret, ev, "mlp", len(patients)) - mlp.logits(patients))
    assert error.max() <= ev.error_bound < 2.0**-20


def test_evaluation_refuses_models_it_cannot_hold(
    secret: ckks.CkksContext, public: ckks.CkksContext, patients: np.ndarray
) -> None:
    vectors = _encrypt(secret, public, patients[:10])
    ranges = _ranges(patients)
    huge = RiskModel(FEATURES, np.full((1, 4), 10.0), np.zeros(1))
    with pytest.raises(InvalidInputError, match="cap 256"):
        ckks.evaluate_model(huge, vectors, ranges)
    empty = RiskModel(FEATURES, np.zeros((1, 4)), np.ones(1))
    with pytest.raises(InvalidInputError, match="no nonzero weight"):
        ckks.evaluate_model(empty, vectors, ranges)
    with pytest.raises(InvalidInputError, match="4 feature"):
        ckks.evaluate_model(huge, vectors[:3], ranges)


def test_model_table_round_trip_and_errors() -> None:
    rng = np.random.default_rng(1)  # test data, not a secret
    mlp = RiskModel(FEATURES, rng.normal(size=(2, 4)), rng.normal(size=2), rng.normal(size=2), 0.1)
    back = model_from_columns(model_to_columns(mlp), FEATURES)
    assert back.kind == "mlp" and np.array_equal(back.weights, mlp.weights)
    assert back.output is not None and mlp.output is not None
    assert np.array_equal(back.output, mlp.output)
    columns = model_to_columns(mlp)
    with pytest.raises(InvalidInputError, match="not the job's features"):
        model_from_columns(columns, ("a", "b", "c", "x"))
    bad = {k: [*v, v[0]] for k, v in columns.items()}
    with pytest.raises(InvalidInputError, match="repeats"):
        model_from_columns(bad, FEATURES)
    with pytest.raises(InvalidInputError, match="missing"):
        model_from_columns({"layer": ["1"]}, FEATURES)


def test_received_context_is_checked(secret: ckks.CkksContext) -> None:
    public_bytes = secret.make_public().serialize(galois_keys=False, relin_keys=False)
    assert not ckks.load_public_context(public_bytes, relin_keys=False).is_private
    with pytest.raises(InvalidKeyError, match="relinearisation"):
        ckks.load_public_context(public_bytes, relin_keys=True)
    with_secret = bytes(secret._ctx.serialize(save_secret_key=True, save_galois_keys=False))
    with pytest.raises(InvalidKeyError, match="secret key"):
        ckks.load_public_context(with_secret, relin_keys=False)
    other = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60], n_threads=1)
    other.global_scale = 2.0**40
    other.make_context_public()
    with pytest.raises(InvalidKeyError, match="allowed sets"):
        ckks.load_public_context(bytes(other.serialize()), relin_keys=False)
    galois = ckks.CkksContext.create(ckks.CkksParameters(), galois_keys=True, threads=1)
    with pytest.raises(InvalidKeyError):  # Galois keys: refused by size or by name
        ckks.load_public_context(galois.make_public().serialize(), relin_keys=False)
    for garbage in (b"", b"\x00" * 64, public_bytes[: len(public_bytes) // 2]):
        with pytest.raises(InvalidKeyError):
            ckks.load_public_context(garbage, relin_keys=False)
    with pytest.raises(InvalidKeyError, match="6291456"):
        ckks.load_public_context(b"\x00" * (ckks.MAX_CONTEXT_BYTES + 1), relin_keys=False)


def test_received_vector_is_checked(secret: ckks.CkksContext, public: ckks.CkksContext) -> None:
    data = secret.encrypt([1.0, 2.0, 3.0]).serialize()
    assert len(ckks.load_vector(public, data, size=3, level=2)) == 3
    with pytest.raises(InvalidCiphertextError, match="4 slots"):
        ckks.load_vector(public, data, size=4, level=2)
    with pytest.raises(InvalidCiphertextError, match="level 1"):  # a fresh one is too big
        ckks.load_vector(public, data, size=3, level=1)
    product = (public.vector_from_bytes(data) * 2.0).serialize()
    with pytest.raises(InvalidCiphertextError, match="level 1, not 2"):
        ckks.load_vector(public, product, size=3, level=2)
    for garbage in (b"", data[:100], data[:-7], b"\xff" * 1000):
        with pytest.raises(InvalidCiphertextError):
            ckks.load_vector(public, garbage, size=3, level=2)
    too_big = b"\x00" * (ckks.max_vector_bytes(PARAMS, 2) + 1)
    with pytest.raises(InvalidCiphertextError, match="at most"):
        ckks.load_vector(public, too_big, size=3, level=2)


def test_flooding_level_and_rounding() -> None:
    sigma = ckks.flooding_sigma(2.0**-34, 2048, 30)
    assert sigma == pytest.approx(2.0**-34 * math.sqrt(4096) * 2.0**15)
    assert ckks.flooding_sigma(2.0**-34, 4 * 2048, 30) == pytest.approx(2 * sigma)
    values = np.linspace(-3.0, 3.0, 20_000)
    released = ckks.flood_and_round(values, 1e-3, 12)
    assert released.dtype == np.int64
    noise = released / 4096.0 - values
    bound = ckks.released_error_bound(0.0, 1e-3, 12)
    assert np.abs(noise).max() <= bound
    assert 0.9e-3 < noise.std() < 1.1e-3 and abs(noise.mean()) < 1e-4
    assert np.abs(ckks.secure_gaussian(50_000)).max() <= ckks.TAIL_SIGMAS
    with pytest.raises(ValueError):
        ckks.flood_and_round([0.0], 0.0)


def test_coarse_ranges_hide_extremes() -> None:
    lo, hi = ckks.coarse_range(18.0, 98.0)
    assert lo <= 18.0 and hi >= 98.0 and (lo, hi) == (16.0, 112.0)
    assert ckks.coarse_range(-0.3, 0.2) == (-0.3125, 0.25)
    with pytest.raises(InvalidInputError):
        ckks.coarse_range(2.0, 1.0)


def test_quick_benchmark_reports_every_phase_and_the_flooding_cost() -> None:
    from benchmarks import bench_ckks_scoring

    rows = bench_ckks_scoring.run(quick=True)
    kernels = {(r["params"]["model"], r["kernel"]) for r in rows}
    phases = ("encrypt", "evaluate", "decrypt_flood", "total", "sandboxed_total")
    assert {(m, k) for m in ("logistic", "mlp") for k in phases} <= kernels
    for r in rows:
        assert r["family"] == "ckks_scoring" and r["params"]["N"] == 8192
        assert (r["ops_per_s"] or r["bytes"]) > 0
    flood = [r for r in rows if r["kernel"] == "decrypt_flood"]
    assert all(r["flooding_sigma"] > r["error_bound"] > 0 for r in flood)
    logistic = next(r for r in flood if r["params"]["model"] == "logistic")
    assert logistic["score_error_bound"] <= 1e-3
