"""What a deviating bank or provider can do in vertical LR, played between real nodes.

In-process nodes over mTLS (``tests/conftest.py``'s ``node_factory``): the bank, the tax bureau
and the business registry of ``generate_finance(1500, 11)``, with 512-bit test keys. Each test
plays one attack of issue 14 (``docs/protocols/vertical-lr.md``, "What a deviating party can do")
with a modified node of the attacker's own, and shows what stops it:

- 4. a bank whose Paillier key comes without a valid Π^mod is refused by each provider before the
  provider sends anything; a bank whose key is honest but whose DJN base ``h_s`` has order 2 gets
  back exports re-randomised with the provider's own ``r^N``, from which its guess test of a
  chosen row's features fails (with the old DJN re-randomisation it succeeds: the control);
- 8. a provider that packs the encrypted residuals in place of its gradient reads every training
  label when the bank's policy trusts it (the documented risk), and only the randomised labels,
  agreeing with the truth at the randomised-response rate, when the bank uses label DP; with
  neither, the bank's node refuses the job at admission.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from fractions import Fraction
from typing import Any

import gmpy2
import numpy as np
import pytest

from bund.compute import he, insecure
from bund.compute import paillier as pl
from bund.compute.dp.budget import Budget
from bund.compute.dp.mechanisms import RandomizedResponse
from bund.compute.errors import InvalidMessageError
from bund.compute.learn import logistic as lg
from bund.parties.data import Table
from bund.parties.demo_data import generate_finance
from bund.parties.jobs import JobContext, JobSpec, ProtocolDef, Result, new_job_id
from bund.parties.lifecycle.events import CLOSE_TAG
from bund.parties.lifecycle.states import JobState
from bund.parties.node import Node
from bund.parties.protocols import PROTOCOLS, vertical_lr
from bund.parties.protocols.proved_key import encode_key_message, key_context, send_proved_key
from bund.parties.protocols.vertical_alignment import (
    FEATURE_HOLDER,
    ID_COLUMN,
    LABEL_COLUMN,
    LABEL_HOLDER,
    align_feature_holder,
    align_label_holder,
    aligned_once,
    encode_meta,
    roles_of,
    send_chunks,
)
from tests.conftest import NodeFactory
from tests.integration.test_node import wait_final
from tests.protocols.test_vertical_lr import ROLES, joined, make_spec, trust_of

DATA = generate_finance(1500, 11)
TABLES = {party: DATA[dataset] for party, dataset in ROLES.items()}
#: What the modified nodes saw, for the test to read (the nodes run in the test's process).
SEEN: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _small_keys() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()  # 512-bit Paillier keys: tests only
    SEEN.clear()
    yield


def start(
    factory: NodeFactory,
    registries: Mapping[str, Mapping[str, ProtocolDef]] | None = None,
    trusted: bool = True,
    budget: str | None = None,
) -> dict[str, Node]:
    """The three parties' nodes; ``registries`` runs a modified protocol at some of them."""
    nodes = {}
    for party, dataset in ROLES.items():
        others = [p for p in ROLES if p != party]
        nodes[party] = factory.start(
            party, allowed=others, tables={dataset: TABLES[party]},
            trusted_for=trust_of(party) if trusted else (),
            budget_epsilon=budget if party == "bank" else None,
            registry=(registries or {}).get(party),
        )  # fmt: skip
    return nodes


def with_role(role: str, run: Any) -> dict[str, ProtocolDef]:
    """The node's protocols, with ``vertical_lr``'s ``role`` replaced by ``run``."""
    roles = {**vertical_lr.DEFINITION.roles, role: run}
    return {**PROTOCOLS, "vertical_lr": dataclasses.replace(vertical_lr.DEFINITION, roles=roles)}


def sent_tags(factory: NodeFactory, party: str, job_id: str) -> list[str]:
    """The protocol messages ``party``'s node recorded sending in ``job_id``."""
    return [
        str(r.fields["tag"])
        for r in factory.nodes[party].audit_store.read()
        if r.job_id == job_id and r.event == "message_sent" and r.fields["tag"] != CLOSE_TAG
    ]


# -- 4. the key owner's trapdoor -----------------------------------------------------------------


def _key_then_wait(ctx: JobContext, proof: bytes, secret: he.HeSecretKey) -> Result:
    """Send the key with ``proof``, then wait for what the providers send (nothing, we expect)."""
    _, providers = roles_of(ctx.spec)
    message = encode_key_message(secret.public_key.to_bytes(), proof)
    for peer in providers:
        ctx.send(peer, vertical_lr.KEY_TAG, message)
    ctx.recv(providers[0], "align/header/0")  # the job fails first: a provider refused the key
    raise AssertionError("a provider answered a bank whose key it could not verify")


def run_unproved_bank(ctx: JobContext) -> Result:
    """A modified bank: its key comes with no proof at all."""
    return _key_then_wait(ctx, b"", he.create_scheme("paillier").generate_keypair(512))


def run_misproved_bank(ctx: JobContext) -> Result:
    """A modified bank: its key's Π^mod was made for another job (a replayed, invalid proof)."""
    secret = he.create_scheme("paillier").generate_keypair(512)
    other = dataclasses.replace(ctx.spec, job_id=new_job_id())
    proof = secret.prove_modulus(key_context(other, ctx.party, vertical_lr.KEY_TAG))
    return _key_then_wait(ctx, proof, secret)


@pytest.mark.parametrize(
    ("bank", "why"),
    [(run_unproved_bank, "without the proof"), (run_misproved_bank, "fails at repetition")],
)
def test_a_bank_key_without_a_valid_proof_is_refused_before_the_providers_send_anything(
    node_factory: NodeFactory, bank: Any, why: str
) -> None:
    start(node_factory, {"bank": with_role(LABEL_HOLDER, bank)})
    with node_factory.client("bank") as client:
        job_id = client.submit(make_spec(epochs=1))
        status = wait_final(client, job_id, timeout=120)
    assert status.state is JobState.ABORTED and why in status.error, status
    node_factory.wait_closed(job_id)
    for provider in ("tax", "registry"):
        with node_factory.client(provider) as client:
            own = wait_final(client, job_id)
        assert own.state in (JobState.FAILED, JobState.ABORTED), own
        assert sent_tags(node_factory, provider, job_id) == []  # not even a PSI header


def _order_two_key(bits: int) -> he.HeSecretKey:
    """An honest modulus (its Π^mod verifies) with a DJN base ``h_s`` of order 2.

    ``h_s ≡ 1 (mod p²)``, ``h_s ≡ −1 (mod q²)``: a unit, an ``N``-th residue, not ±1; every
    public check accepts it, and the owner's ``h_s^r`` takes two values.
    """
    honest, private = pl.generate_keypair(bits)
    p2, q2 = private._p**2, private._q**2
    h = 1 + p2 * ((q2 - 2) * gmpy2.invert(p2, q2) % q2)
    bad = pl.PublicKey(honest.n, h)
    owner = pl.PrivateKey(bad, private._p, private._q)
    return he.create_scheme("paillier").secret_key_from_resume_state(owner.export_for_resume())


#: The target: the first row of the first batch of epoch 0 (a position among the aligned rows).
TARGET = 0


def run_order_two_bank(ctx: JobContext) -> Result:
    """A modified bank with an order-2 ``h_s`` that plays the issue's feature-recovery attack.

    It sends residual ciphertexts ``c_i = (1 + r_i·N)`` for every row but the target, and
    ``c_t = (1 + r_t·N)·s^N`` for the target, with an ``s`` it knows. The tax bureau's packed
    gradient is then ``C = (1 + M·N)·s^(N·X)·ρ``, with ``M`` the packed plaintext the bank
    decrypts, ``X`` the target's packed features and ``ρ`` the tax bureau's re-randomiser: the
    bank keeps ``S = C/(1 + M·N)`` to test guesses of ``X`` (with ``ρ ∈ {1, h_s}``, the DJN
    case, a right guess always matches; a discrete logarithm gives ``X`` outright).
    """
    spec = ctx.spec
    _, providers = roles_of(spec)
    secret = _order_two_key(512)
    send_proved_key(ctx, secret, providers, vertical_lr.KEY_TAG)  # a valid Π^mod
    rows = align_label_holder(ctx, providers).rows
    config = vertical_lr._config(spec)
    test_fraction = vertical_lr.VerticalLrParams.of(spec).test_fraction
    train, _ = lg.split_rows(len(rows), test_fraction, config.seed)
    batch = lg.epoch_batches(train, config.batch_size, config.seed, 0)[0]
    counts = vertical_lr._provider_feature_counts(ctx, providers, len(batch))
    for peer in providers:
        vertical_lr._recv_scores(ctx, peer, "vlr/s/0/0", len(batch))
    key = pl.PublicKey.from_bytes(secret.public_key.to_bytes())
    n, n2 = key.n, key.n_square
    s = gmpy2.mpz(0xB0D5_EC2E7)
    cts = [(1 + (i + 1) * n) % n2 for i in range(len(batch))]
    cts[TARGET] = cts[TARGET] * gmpy2.powmod(s, n, n2) % n2
    message = pl.encode_ciphertexts(key, cts, lg.RESIDUAL_FRAC_BITS)
    for peer in providers:
        send_chunks(ctx, peer, "vlr/r/0/0", [message])
    capacity = key.bits - 2
    _, width, per = vertical_lr.mask_layout(len(batch), capacity)
    packed = pl.PackedVector.from_bytes(
        key,
        ctx.recv("tax", "vlr/g/0/0"),
        slot_bits=width,
        slots=per,
        count=counts[0],
        bound=vertical_lr._masked_bound(len(batch)),
        frac_bits=lg.GRADIENT_FRAC_BITS,
    )
    owner = pl.PrivateKey.from_resume_state(secret.export_for_resume())
    c = packed.ciphertexts[0]
    (m,) = owner.decrypt_raw([c])
    SEEN.update(key=key, s=s, width=width, per=per, rows=batch, S=c * (1 - m * n) % n2)
    raise InvalidMessageError("the modified bank stops after its first batch")


def attack_matches(finance: dict[str, Table]) -> bool:
    """Whether the bank's guess test recognises the tax bureau's true features of the target."""
    blocks, _, _, _ = joined(finance)
    x = blocks[1][SEEN["rows"][TARGET]][: SEEN["per"]].tolist()  # the first packed ciphertext
    packed_x = sum(int(v) << (j * SEEN["width"]) for j, v in enumerate(x))
    key = SEEN["key"]
    guess = pow(int(SEEN["s"]), int(key.n) * packed_x, int(key.n_square))
    return int(SEEN["S"]) in {guess, guess * int(key.hs) % int(key.n_square)}


def _djn_randomness(self: Any) -> Any:
    """The provider's randomness before issue 14: the key owner's DJN base (the control)."""
    return he._PaillierEncryptor(pl.Encryptor(self.key), self)


@pytest.mark.parametrize("old_randomness", [True, False], ids=["control-djn", "full-r^N"])
def test_an_order_two_base_reads_nothing_from_the_providers_exports(
    node_factory: NodeFactory, monkeypatch: pytest.MonkeyPatch, old_randomness: bool
) -> None:
    if old_randomness:  # how the provider re-randomised before: with the bank's own h_s
        monkeypatch.setattr(he._PaillierPublicKey, "encryptor", _djn_randomness)
    start(node_factory, {"bank": with_role(LABEL_HOLDER, run_order_two_bank)})
    with node_factory.client("bank") as client:
        job_id = client.submit(make_spec(epochs=1))
        status = wait_final(client, job_id, timeout=120)
    assert status.state is JobState.FAILED and "first batch" in status.error
    assert "S" in SEEN, "the tax bureau did not export its gradient"
    # With DJN randomness the guess test recognises the target's features exactly; with the
    # provider's own r^N, S is a uniform N-th residue and no guess can be tested.
    assert attack_matches(TABLES) is old_randomness


# -- 8. labels through the decryption service ---------------------------------------------------

#: Residuals per slot of the packing attack, each in 26 bits with an offset of 2^25.
PER_SLOT, SUB_BITS = 3, 26
PACKING = {"epochs": 2, "batch_size": 100}


def run_packing_provider(ctx: JobContext) -> Result:
    """A modified tax bureau: it packs the encrypted residuals in place of its gradient.

    It announces ``⌈rows/3⌉`` features (within the bank's rows-per-feature floor), and per batch
    sends ``Σ_k [[r_{3j+k} + 2^25]]·2^(26k)`` for each "feature" ``j``, unmasked; the bank's
    decryption returns every residual of the batch, whose sign is the (training) label.
    """
    spec = ctx.spec
    bank, _ = roles_of(spec)
    config = vertical_lr._config(spec)
    public = vertical_lr._provider_key(ctx, vertical_lr.scheme_of(spec), bank)
    rows = aligned_once(ctx, lambda: align_feature_holder(ctx, bank)).rows
    test_fraction = vertical_lr.VerticalLrParams.of(spec).test_fraction
    train, test = lg.split_rows(len(rows), test_fraction, config.seed)
    biggest = max(len(b) for b in lg.epoch_batches(train, config.batch_size, config.seed, 0))
    features = -(-biggest // PER_SLOT)
    ctx.send(bank, "vlr/meta", encode_meta({"features": features}))
    ids = ctx.table().column(ctx.spec.participant(ctx.party).columns[ID_COLUMN])
    capacity = public.packing_bits(1)
    source = public.encryptor()
    offset = sum(1 << (SUB_BITS * k + SUB_BITS - 1) for k in range(PER_SLOT))
    for epoch in range(config.epochs):
        read: dict[str, int] = {}
        for t, batch in enumerate(lg.epoch_batches(train, config.batch_size, config.seed, epoch)):
            size = len(batch)
            vertical_lr._send_scores(ctx, bank, f"vlr/s/{epoch}/{t}", np.zeros(size, np.int64))
            residuals = vertical_lr.recv_vector(
                ctx, bank, f"vlr/r/{epoch}/{t}", public, size, lg.RESIDUAL_FRAC_BITS
            )
            picks = np.zeros((features, size), dtype=np.int64)
            for i in range(size):
                picks[i // PER_SLOT, i] = 1 << (SUB_BITS * (i % PER_SLOT))
            packed = (
                public.matvec(picks, residuals, lg.FEATURE_FRAC_BITS)
                .add_plain([offset] * features)
                .squeeze(vertical_lr._masked_bound(size), capacity)
            )
            ctx.send(bank, f"vlr/g/{epoch}/{t}", packed.to_bytes(source))
            _, width, _ = vertical_lr.mask_layout(size, capacity)
            values = vertical_lr._decode_ints(
                vertical_lr._UNMASK_MAGIC,
                ctx.recv(bank, f"vlr/u/{epoch}/{t}"),
                vertical_lr._int_bytes(width),
                features,
            )
            for i in range(size):
                sub = values[i // PER_SLOT] >> (SUB_BITS * (i % PER_SLOT))
                residual = (sub & ((1 << SUB_BITS) - 1)) - (1 << (SUB_BITS - 1))
                read[ids[rows[batch[i]]].strip()] = int(residual < 0)  # r < 0: label 1
        SEEN[f"labels/{epoch}"] = read
        if ctx.recv(bank, f"vlr/c/{epoch}") == b"\x00":
            break
    vertical_lr._send_scores(ctx, bank, "vlr/eval", np.zeros(len(test), np.int64))
    return Result({"features": features}, {})


def bank_labels() -> dict[str, int]:
    loans = TABLES["bank"]
    label = make_spec().participant("bank").columns[LABEL_COLUMN]
    ids = loans.column(make_spec().participant("bank").columns[ID_COLUMN])
    return {i.strip(): int(v) for i, v in zip(ids, loans.numeric(label), strict=True)}


def run_packing_job(factory: NodeFactory, spec: JobSpec) -> tuple[str, Result]:
    with factory.client("bank") as client:
        job_id = client.submit(spec)
        status = wait_final(client, job_id, timeout=240)
        assert status.state is JobState.SUCCEEDED, status.error
        result = client.result(job_id)
    factory.wait_closed(job_id)
    return job_id, result


def agreement(read: dict[str, int], truth: dict[str, int]) -> float:
    return sum(read[i] == truth[i] for i in read) / len(read)


def test_a_trusted_provider_that_deviates_reads_every_training_label(
    node_factory: NodeFactory,
) -> None:
    """With trust, the packing attack works: the documented risk the bank's approver accepts."""
    start(node_factory, {"tax": with_role(FEATURE_HOLDER, run_packing_provider)})
    job_id, result = run_packing_job(node_factory, make_spec(**PACKING))
    truth = bank_labels()
    read = SEEN["labels/0"]
    assert len(read) == result.summary["aligned_rows"] - result.summary["test_rows"]  # type: ignore[operator]
    assert agreement(read, truth) == 1.0  # every training label
    assert "vlr/meta" in sent_tags(node_factory, "tax", job_id)  # what the audit shows of a send
    receipt = result.artifacts["receipt.json"].decode()
    assert "TRUSTS tax" in receipt and "every training label" in receipt


def test_label_dp_leaves_a_deviating_provider_only_the_randomised_labels(
    node_factory: NodeFactory,
) -> None:
    """Without trust the job is refused; with label DP the attack reads randomised labels only.

    They agree with the truth at the randomised-response rate (ε = 1: 0.731), not at 1, and are
    the same in every epoch: randomised once per job, so repetition does not average them out.
    The bank's ledger is charged ε = 1.
    """
    start(
        node_factory,
        {"tax": with_role(FEATURE_HOLDER, run_packing_provider)},
        trusted=False,
        budget="10",
    )
    with node_factory.client("bank") as client:
        refused = wait_final(client, client.submit(make_spec(**PACKING)))
    assert refused.state is JobState.REFUSED
    assert "trusted_for" in refused.error and "label_epsilon" in refused.error, refused.error
    job_id, result = run_packing_job(node_factory, make_spec(**PACKING, label_epsilon="1"))  # type: ignore[arg-type]
    truth = bank_labels()
    first, second = SEEN["labels/0"], SEEN["labels/1"]
    assert first == second  # one randomisation per job
    keep = float(RandomizedResponse.create(Fraction(1)).keep)
    rate = agreement(first, truth)
    assert abs(rate - keep) < 5 * math.sqrt(keep * (1 - keep) / len(first)), rate
    assert rate < 0.9
    assert result.summary["label_epsilon"] == "1"
    line = node_factory.nodes["bank"].manager.ledger.line("loan_book")
    assert line.spent == Budget(Fraction(1))
    receipt = result.artifacts["receipt.json"].decode()
    assert "post-processing" in receipt and "TRUSTS" not in receipt
