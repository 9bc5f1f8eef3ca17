"""Paillier risk scoring against a model holder who deviates (the exact protocol code paths).

The insurer's key is proved (Π^mod), every weight is range-proved (Π^enc) against the hospital's
ring-Pedersen parameters (Π^prm), the hospital adds its own noise and fresh r^N, and it decrypts
nothing. Small keys run behind the test-only switch; one test runs at 2048 bits.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import secrets
import struct
from collections.abc import Iterator

import gmpy2
import numpy as np
import pytest

from bund.compute import insecure, paillier
from bund.compute.errors import ProofError
from bund.compute.learn.risk_model import RiskModel, model_to_columns
from bund.compute.zk.enc import prove_enc_many
from bund.compute.zk.mod import prove_mod
from bund.parties.data import Table
from bund.parties.jobs import JobContext, JobSpec, Participant, Result, run_in_memory
from bund.parties.protocols import paillier_scoring as ps
from bund.parties.transport import InMemoryNetwork

FEATURES = ("age", "bmi", "sbp")
KEY_BITS = 768


@pytest.fixture
def small_keys() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()
    yield
    insecure.disable_insecure_test_parameters()


def _patients(n: int = 40) -> Table:
    rng = np.random.default_rng(7)
    return Table.from_columns(
        "patients",
        {
            "patient_id": [f"P{i:04d}" for i in range(n)],
            "age": [f"{v:.0f}" for v in rng.integers(20, 90, n)],
            "bmi": [f"{v:.1f}" for v in rng.normal(26, 4, n)],
            "sbp": [f"{v:.0f}" for v in rng.normal(130, 15, n)],
            "ssn": [f"{secrets.randbelow(10**9):09d}" for _ in range(n)],
        },
    )


MODEL = RiskModel(FEATURES, np.array([[0.04, -0.05, 0.012]]), np.array([-3.1]))


def _spec(**params: object) -> JobSpec:
    return JobSpec(
        protocol="paillier_scoring",
        participants=(
            Participant("hospital", ps.FEATURE_HOLDER, "patients", {"id": "patient_id"}),
            Participant("insurer", ps.MODEL_HOLDER, "model"),
        ),
        receivers=("insurer",),
        purpose="risk scoring",
        requester="insurer",
        params={"features": ",".join(FEATURES), "key_bits": KEY_BITS, **params},  # type: ignore[dict-item]
    )


def _tables() -> dict[str, Table]:
    return {
        "hospital": _patients(),
        "insurer": Table.from_columns("model", model_to_columns(MODEL)),
    }


def _scores(result: Result) -> dict[str, float]:
    rows = csv.DictReader(io.StringIO(result.artifacts["scores.csv"].decode()))
    return {r["patient_id"]: float(r["score"]) for r in rows}


def test_scores_match_the_plaintext_model_within_the_hospitals_rounding(small_keys: None) -> None:
    tables = _tables()
    result = run_in_memory(_spec(tolerance=1e-3), ps.DEFINITION, tables)["insurer"]
    assert result is not None
    got = _scores(result)
    table = tables["hospital"]
    x = np.column_stack([table.numeric(f) for f in FEATURES])
    want = MODEL.scores(x)
    ids = table.column("patient_id")
    assert set(got) == set(ids)
    # ±1e-3 on the logit moves a sigmoid by at most 2.5e-4; the CSV keeps six decimals.
    assert max(abs(got[i] - w) for i, w in zip(ids, want, strict=True)) <= 2.5e-4 + 1e-6


def test_nothing_the_hospital_sends_is_its_data_in_the_clear(small_keys: None) -> None:
    tables = _tables()
    network = InMemoryNetwork(["hospital", "insurer"])
    run_in_memory(_spec(), ps.DEFINITION, tables, network=network)
    sent = b"".join(p for frm, _, _, p in network.captured if frm == "hospital")
    table = tables["hospital"]
    # A whole record as text, or one value as a float64 either way round, is 8+ bytes: a chance
    # match inside kilobytes of ciphertext has odds of about 2^-50 (three-digit values alone
    # would match by chance in one run of ten).
    for record in zip(*(table.column(c) for c in ("age", "sbp")), strict=True):
        assert ",".join(record).encode() not in sent, record
    for ssn in table.column("ssn"):
        assert ssn.encode() not in sent, ssn
    for column in ("age", "sbp"):
        for value in table.numeric(column):
            for order in ("<", ">"):
                assert struct.pack(f"{order}d", value) not in sent, (column, value)


def _with_model_holder(role: object) -> object:
    return dataclasses.replace(
        ps.DEFINITION,
        roles={ps.FEATURE_HOLDER: ps.run_feature_holder, ps.MODEL_HOLDER: role},
    )


def _deviating_insurer(tamper: str) -> object:
    """An insurer that ships weights (or a key) its proofs do not cover."""

    def run(ctx: JobContext) -> Result | None:
        p = ps.plan(ctx.spec)
        job = ctx.spec.job_id
        _, setup, _ = ps.decode_setup(ctx.recv(p.hospital, "pls/setup"))
        public, private = paillier.generate_keypair(p.key_bits)
        honest = [2**20, -(2**19), 2**18, -(2**21)]
        cts = paillier.Encryptor(private).encrypt_raw([w % public.n for w in honest])
        proofs = prove_enc_many(private, cts, setup, p.context(job, "weights"), parameters=p.enc)
        mod_proof = prove_mod(private, p.context(job, "mod"))
        if tamper == "wide_weight":
            # Pack the second column 2^200 higher: one score would carry two columns.
            (wide,) = paillier.Encryptor(private).encrypt_raw([2**200])
            cts = [cts[0], wide, *cts[2:]]
        elif tamper == "bad_modulus":
            p_ = gmpy2.next_prime(2 ** (p.key_bits // 2 - 20))
            while True:
                k = secrets.randbits(p.key_bits // 2 + 18) | 1
                q_ = 2 * k * p_ + 1
                if gmpy2.is_prime(q_):
                    break
            public = paillier.PublicKey(p_ * q_, 4)  # gcd(N, φ(N)) = p: r^N keeps a fingerprint
            cts = [gmpy2.powmod(c, 1, public.n_square) | 1 for c in cts]
        model = ps.Model(public, mod_proof, tuple(cts), tuple(proofs))
        ctx.send(p.hospital, "pls/model", model.to_bytes())
        ctx.recv(p.hospital, "pls/scores/0")  # what it hoped to read
        return Result({})

    return run


def test_a_weight_outside_its_proved_range_is_refused_before_any_score_leaves(
    small_keys: None,
) -> None:
    network = InMemoryNetwork(["hospital", "insurer"])
    with pytest.raises(ProofError):
        run_in_memory(
            _spec(),
            _with_model_holder(_deviating_insurer("wide_weight")),
            _tables(),  # type: ignore[arg-type]
            network=network,
        )
    assert not [t for _, _, t, _ in network.captured if t.startswith("pls/scores")]


def test_a_modulus_that_is_not_paillier_blum_is_refused_before_it_is_used(
    small_keys: None,
) -> None:
    network = InMemoryNetwork(["hospital", "insurer"])
    with pytest.raises(ProofError):
        run_in_memory(
            _spec(),
            _with_model_holder(_deviating_insurer("bad_modulus")),
            _tables(),  # type: ignore[arg-type]
            network=network,
        )
    assert not [t for _, _, t, _ in network.captured if t.startswith("pls/scores")]


@pytest.mark.slow
def test_at_2048_bits(small_keys: None) -> None:
    spec = _spec(key_bits=2048)
    tables = {"hospital": _patients(8), "insurer": _tables()["insurer"]}
    result = run_in_memory(spec, ps.DEFINITION, tables)["insurer"]
    assert result is not None and len(_scores(result)) == 8
