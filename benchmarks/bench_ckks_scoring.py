"""Encrypted risk scoring (``ckks_scoring``): patients/s at N = 8192 and 16384, by phase.

One batch is ``N/2`` patients (one ciphertext per feature, feature-major), the health demo's
seven features tiled to fill it, the demo models (``bund.parties.protocols.ckks_scoring``) with the
scoring chain of ``bund.compute.ckks`` (scale 2^50). Rates are patients/s, best of ``repeats`` runs:

- ``encrypt``: the hospital encrypts the batch's seven feature vectors;
- ``evaluate``: the insurer's model on them (logistic: one layer; mlp: four square units);
- ``decrypt_flood``: the hospital decrypts the logits, floods and rounds them;
- ``total``: the three in sequence (no transport);
- ``sandboxed_total``: the same through two ``bund.compute.ckks_sandbox`` workers (parsing and
  checks of every received object included), keygen and context loading excluded.

Size rows: ``public_context_bytes``, ``feature_ciphertext_bytes``, ``logits_ciphertext_bytes``.
The flooding's cost is reported on each ``decrypt_flood`` row: ``error_bound`` (evaluation),
``flooding_sigma`` and ``score_error_bound`` for ``M = N/2`` released scores at
``s = 30`` bits.

``--quick`` runs N = 8192 only with one repeat.
Run: ``PYTHONPATH=. .venv/bin/python -m benchmarks.suite ckks_scoring [--quick] [--json FILE]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bund.compute import ckks
from bund.compute.ckks_sandbox import CkksSandbox
from bund.compute.learn.risk_model import RiskModel, model_from_columns, model_to_columns
from bund.parties.demo_data import generate_health
from bund.parties.protocols import ckks_scoring as cs

FAMILY = "ckks_scoring"


def _best(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _sandboxed(
    degree: int, kind: str, model: RiskModel, x: np.ndarray, ranges: list[tuple[float, float]]
) -> float:
    """Seconds for encrypt → evaluate → decrypt+flood of one batch through two workers."""
    columns = [np.ascontiguousarray(c, dtype="<f8").tobytes() for c in x.T]
    header = {
        "model": model_to_columns(model),
        "features": list(cs.DEMO_FEATURES),
        "ranges": [list(r) for r in ranges],
        "size": len(x),
    }
    with CkksSandbox() as hospital, CkksSandbox() as insurer:
        _, (public,) = hospital.call("keygen", {"degree": degree, "relin": kind == "mlp"})
        insurer.call("load", {"relin": kind == "mlp"}, [public])
        start = time.perf_counter()
        _, vectors = hospital.call("encrypt", {}, columns)
        answer, logits = insurer.call("evaluate", header, vectors)
        sigma = ckks.flooding_sigma(float(answer["error_bound"]), len(x))
        level = ckks.result_level(kind, ckks.CkksParameters.for_scoring(degree))
        decrypt = {"sizes": [len(x)], "level": level, "sigma": sigma, "precision": 12}
        hospital.call("decrypt", decrypt, logits)
        return time.perf_counter() - start


def _run(degree: int, kind: str, quick: bool) -> list[dict[str, Any]]:
    params = ckks.CkksParameters.for_scoring(degree)
    repeats = 1 if quick else 3
    data = generate_health(1500, 5)
    model = model_from_columns(cs.make_demo_model(data["hospital_b"], kind).data, cs.DEMO_FEATURES)
    demo = np.column_stack([data["hospital_a"].numeric(f) for f in cs.DEMO_FEATURES])
    x = np.resize(demo, (params.slots, demo.shape[1]))
    ranges = [ckks.coarse_range(float(c.min()), float(c.max())) for c in x.T]
    secret = ckks.CkksContext.create(params, galois_keys=False)
    public_bytes = secret.make_public().serialize(galois_keys=False, relin_keys=kind == "mlp")
    public = ckks.load_public_context(public_bytes, relin_keys=kind == "mlp", threads=None)
    vectors = [public.vector_from_bytes(secret.encrypt(c).serialize()) for c in x.T]
    evaluation = ckks.evaluate_model(model, vectors, ranges)
    result = secret.vector_from_bytes(evaluation.logits.serialize())
    sigma = ckks.flooding_sigma(evaluation.error_bound, params.slots)
    base = {"N": degree, "model": kind, "patients": params.slots, "features": x.shape[1]}
    rows: list[dict[str, Any]] = []

    def row(kernel: str, seconds: float | None, **extra: Any) -> None:
        rate = None if seconds is None else params.slots / seconds
        unit = "bytes" if seconds is None else "patients/s"
        rows.append(
            {
                "family": FAMILY,
                "kernel": kernel,
                "params": {**base, "repeats": repeats},
                "ops_per_s": rate,
                "unit": unit,
                **extra,
            }
        )

    t_enc = _best(lambda: [secret.encrypt(c) for c in x.T], repeats)
    t_eval = _best(lambda: ckks.evaluate_model(model, vectors, ranges), repeats)
    t_dec = _best(lambda: ckks.flood_and_round(result.decrypt(), sigma), repeats)
    row("encrypt", t_enc)
    row("evaluate", t_eval)
    row(
        "decrypt_flood",
        t_dec,
        error_bound=evaluation.error_bound,
        flooding_sigma=sigma,
        score_error_bound=ckks.released_error_bound(evaluation.error_bound, sigma) / 4,
    )
    row("total", t_enc + t_eval + t_dec)
    sandboxed = min(_sandboxed(degree, kind, model, x, ranges) for _ in range(repeats))
    row("sandboxed_total", sandboxed)
    row("public_context_bytes", None, bytes=len(public_bytes))
    row("feature_ciphertext_bytes", None, bytes=len(vectors[0].serialize()))
    row("logits_ciphertext_bytes", None, bytes=len(evaluation.logits.serialize()))
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """Scoring throughput by phase for the logistic and the MLP model (quick: N = 8192 only)."""
    degrees = (8192,) if quick else (8192, 16384)
    return [row for degree in degrees for kind in cs.KINDS for row in _run(degree, kind, quick)]
