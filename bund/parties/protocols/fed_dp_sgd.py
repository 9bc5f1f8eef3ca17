"""Horizontal federated DP-SGD across hospitals, combined by drop-out tolerant secure aggregation.

Roles: one ``coordinator`` (no dataset; it must receive the result) and two or more ``hospital``
participants, each with a dataset of patient rows holding the feature columns (public value
ranges, ``bund.compute.learn.fed.HEALTH_RANGES`` or the ``feature_ranges`` parameter) and the label
``event`` (bind other names through the participant's columns). The maths is in
``bund.compute.learn.fed`` (models, Opacus DP-SGD, accounting) and
``bund.compute.dp.dropout_secagg`` (SecAgg). ``docs/protocols/fed-dp-sgd.md`` has the
parameters, what each role learns and the threat model; ``docs/protocols/secure-aggregation.md``
the masking, the shares and the drop-out bound.

The job is a sequence of *steps* ``s = 0, 1, …``; each is a training round, the final evaluation,
or the end. With ``evaluate = "every_round"`` a training step of round ``r ≥ 2`` also evaluates
the incoming model (trained ``r − 1`` rounds), so every trained model is evaluated once; with
``"final"`` only the last one is. A hospital counts the steps it accepts in its resume state and
refuses (:class:`StepLimitError`, failing the job) a training step beyond ``rounds`` or out of
order, and an evaluation beyond the plan's: whatever weights a coordinator sends, it gets at
most the answers the approved spec implies. Each
evaluation is the hospital's own noisy integer vector (``bund.compute.learn.fed.EvalConfig``:
score-bin counts by label and a clipped log-loss sum, discrete Laplace noise sized from its own
``eval_epsilon``), charged to its ledger before it answers. Messages of step ``s`` (H: a
hospital, C: the coordinator):

1. ``fed/go/s`` (C → every H): kind (train, evaluate, done), round and the global weights.
   H checks the step against its limits, charges its round's ε increment (on *train*) and the
   evaluation's ε (when the step evaluates) to its dataset (``ctx.charge``) and draws the
   step's 32-byte seed from ``secrets`` (saved before it sends anything).
2. ``fed/keys/s`` (H → C): its two X25519 public keys and a commitment to its self-mask seed,
   or the budget-exhausted marker.
3. ``fed/roster/s`` (C → H): the keys of the hospitals that answered in time (at least the
   threshold ``t = hospitals − max_dropouts``), or an empty roster: sit this step out.
4. ``fed/shares/s`` (H → C): its Shamir shares of both secrets, AES-GCM-encrypted per peer.
5. ``fed/inbox/s`` (C → H): the encrypted shares addressed to it (or an empty list).
6. ``fed/masked/s`` (H → C): its masked, quantised update and/or its noisy evaluation vector.
7. ``fed/unmask/s`` (C → H): which masked vectors arrived and which did not (or empty).
8. ``fed/reveal/s`` (H → C): shares of the arrived hospitals' self-mask seeds and of the
   missing hospitals' mask keys, never both for one hospital.

The coordinator waits one receive timeout per phase (``upload_patience`` timeouts for the masked
updates, which follow local training) and carries on with whoever answered; fewer than ``t``
aborts the job with :class:`bund.compute.dp.dropout_secagg.DropoutError`. Both roles save their
state before each message that it determines, so a killed node resumes the step it was in, re-sends
identical messages, and is never charged twice for a round (the ledger charges once per part).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import secrets
import struct
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, Field

from bund.compute import insecure
from bund.compute.dp import dropout_secagg
from bund.compute.dp.budget import Budget, format_decimal, format_rational, parse_rational
from bund.compute.errors import BundError, InvalidInputError, InvalidMessageError
from bund.compute.layout import Header
from bund.compute.learn import fed
from bund.parties.jobs import (
    InvalidJobSpecError,
    JobContext,
    JobSpec,
    ProtocolDef,
    ProtocolParams,
    Result,
    RoleRequirement,
)
from bund.parties.ledger import BudgetExhaustedError
from bund.parties.protocols.plots import training_curves
from bund.parties.schema import Exact, OneOf
from bund.parties.transport import (
    JobAbortedError,
    JobInterruptedError,
    PeerTimeoutError,
    TransportError,
)

ROLE_COORDINATOR = "coordinator"
ROLE_HOSPITAL = "hospital"
#: The label column's logical name (bind another column through the participant's columns).
LABEL = "event"
#: Fractional bits of a quantised weight update.
UPDATE_FRAC_BITS = 24
#: Most rows one hospital may bring (keeps the evaluation sums far inside 63 bits).
MAX_ROWS = 1 << 20
#: When the hospitals evaluate: only the final model, or every trained model.
EVALUATE_MODES = ("final", "every_round")
#: The ε one evaluation may cost a hospital: a smaller one would drown every count in noise.
MIN_EVAL_EPSILON, MAX_EVAL_EPSILON = Fraction(1, 1000), Fraction(100)
#: The ``format`` of ``model.json``.
MODEL_FORMAT = "bund.fed_dp_sgd.model/1"

_TRAIN, _EVAL, _DONE = 1, 2, 3
_GO = Header(b"BFDG", 1)
_GO_FIELDS = struct.Struct(">BII")  # kind, round, weight count
_EXHAUSTED = Header(b"BFDX", 1, reserved=3).pack()


class NoiseOffRefusedError(BundError):
    """A job asked for DP-SGD without noise while the test-only switch is off."""


class StepLimitError(BundError):
    """The coordinator asked a hospital for a step beyond what the approved spec allows.

    The hospital computes, charges and sends nothing for it, and its role fails the job.
    """


# --- the plan: what every party derives from the spec alone ---------------------------------


def _delta(value: str | int | float) -> str | int | float:
    try:
        delta = parse_rational(str(value), "delta")
    except InvalidInputError as exc:
        raise ValueError(str(exc)) from None
    if not 0 < delta < 1:
        raise ValueError(f"must lie strictly between 0 and 1, not {value!r}")
    return value


def _feature_ranges(value: str) -> str:
    for item in filter(None, (part.strip() for part in value.split(";"))):
        try:
            _, low, high = item.split(":")
            float(low), float(high)
        except ValueError:
            raise ValueError(
                f"entry {item!r} is not name:low:high (entries separated by ';')"
            ) from None
    return value


class FedDpSgdParams(ProtocolParams):
    """The parameters of a ``fed_dp_sgd`` job (``docs/protocols/fed-dp-sgd.md``)."""

    model: Annotated[str, OneOf(fed.MODEL_KINDS)] = Field(
        default=fed.MODEL_KINDS[0], description="the model every hospital trains"
    )
    hidden: int = Field(default=16, ge=1, le=256, description="hidden units of the mlp model")
    features: str = Field(
        default=",".join(fed.HEALTH_RANGES),
        description="the feature columns, comma-separated, each with a public value range",
    )
    feature_ranges: Annotated[str, AfterValidator(_feature_ranges)] = Field(
        default="",
        description="public value ranges of features beyond the built-in health ones, as "
        "'name:low:high;name:low:high'",
    )
    rounds: int = Field(default=5, ge=1, le=1000, description="training rounds")
    local_steps: int = Field(default=20, ge=1, le=100_000, description="DP-SGD steps per round")
    learning_rate: float = Field(default=0.5, ge=1e-6, le=100, description="the local step size")
    noise_multiplier: float = Field(
        default=1.0,
        ge=0,
        le=100,
        description="DP-SGD noise over the clipping norm; 0 only in tests",
    )
    max_grad_norm: float = Field(
        default=1.0, ge=1e-6, le=1e6, description="per-example gradient clipping norm"
    )
    sample_rate: float = Field(
        default=0.05, ge=1e-6, le=1, description="Poisson sampling rate of each local step"
    )
    delta: Annotated[str | int | float, AfterValidator(_delta)] = Field(
        default="1/100000", description="the δ of the (ε, δ) bound charged per hospital, in (0, 1)"
    )
    accountant: Annotated[str, OneOf(fed.ACCOUNTANTS)] = Field(
        default=fed.ACCOUNTANTS[0], description="the privacy accountant"
    )
    grad_sample_mode: Annotated[str, OneOf(fed.GRAD_SAMPLE_MODES)] = Field(
        default=fed.GRAD_SAMPLE_MODES[0],
        description="how per-example gradients are computed: closed_form (exact formulas for "
        "the logistic and one-hidden-layer models), or Opacus's hooks, ew or ghost",
    )
    max_dropouts: int = Field(
        default=0,
        ge=0,
        le=dropout_secagg.MAX_CLIENTS,
        description="hospitals a round may lose and carry on: below half of them",
    )
    seed: int = Field(
        default=0, ge=0, le=2**63 - 1, description="public seed of the held-out split"
    )
    test_fraction: float = Field(
        default=0.2,
        ge=0,
        le=0.5,
        description="share of each hospital's rows held out for evaluation",
    )
    update_bound: float = Field(
        default=8.0,
        ge=1e-3,
        le=1024,
        description="clamp of each weight update before secure aggregation",
    )
    upload_patience: int = Field(
        default=4,
        ge=1,
        le=100,
        description="receive timeouts the coordinator waits for the updates",
    )
    patience: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="receive timeouts a hospital waits for the coordinator",
    )
    evaluate: Annotated[str, OneOf(EVALUATE_MODES)] = Field(
        default=EVALUATE_MODES[0],
        description="evaluate only the final model, or every trained model (one per round)",
    )
    eval_epsilon: Exact = Field(
        default="1",
        description=f"the ε each evaluation costs each hospital, in [{MIN_EVAL_EPSILON}, "
        f"{MAX_EVAL_EPSILON}]",
    )
    eval_bins: int = Field(
        default=20,
        ge=2,
        le=fed.MAX_BINS,
        description="score bins of the held-out AUC (more: finer, but noisier)",
    )
    eval_clip: Exact = Field(
        default="1/100",
        description="predicted probabilities are clipped to [eval_clip, 1 - eval_clip] for the "
        f"log-loss bound and the AUC bins' range, in [{fed.MIN_CLIP}, 1/4]",
    )


@dataclass(frozen=True)
class Plan:
    """The job's settings, hospitals (in spec order: index 1..n) and drop-out threshold."""

    coordinator: str
    hospitals: tuple[str, ...]
    model: fed.ModelSpec
    features: tuple[str, ...]
    ranges: Mapping[str, tuple[float, float]]
    rounds: int
    dpsgd: fed.DpSgdConfig
    delta: Fraction
    accountant: str
    threshold: int
    seed: int
    test_fraction: float
    update_bound: float
    upload_patience: int
    patience: int
    evaluate: str
    evaluation: fed.EvalConfig

    @property
    def noise(self) -> bool:
        """Whether DP-SGD adds noise (always, unless a test turned it off)."""
        return self.dpsgd.noise_multiplier > 0

    def index(self, hospital: str) -> int:
        """A hospital's secure-aggregation index (1-based, spec order)."""
        return self.hospitals.index(hospital) + 1

    def epsilon(self, rounds: int) -> Fraction:
        """The exact ε bound charged for ``rounds`` rounds of local DP-SGD (0 with noise off)."""
        if not self.noise or rounds == 0:
            return Fraction(0)
        steps = rounds * self.dpsgd.steps
        d = self.dpsgd
        return _epsilon(d.noise_multiplier, d.sample_rate, steps, self.delta, self.accountant)

    @property
    def evaluations(self) -> int:
        """The most evaluations a hospital answers: one per trained model, or the final one."""
        return self.rounds if self.evaluate == "every_round" else 1

    def evaluates(self, kind: int, round_: int) -> bool:
        """Whether a step of ``kind`` (training ``round_``) carries an evaluation."""
        if kind == _EVAL:
            return True
        return kind == _TRAIN and self.evaluate == "every_round" and round_ >= 2

    @property
    def eval_cost(self) -> Budget:
        """What one evaluation costs a hospital: its ``eval_epsilon`` (0 with noise off)."""
        return Budget(self.evaluation.epsilon)

    def planned_cost(self) -> Budget:
        """The most the job can charge one hospital: every round and every evaluation.

        The round increments telescope to ``epsilon(rounds)``, δ is paid once, and a hospital
        answers at most ``evaluations`` evaluations, so no run of the job charges more.
        """
        delta = self.delta if self.noise else Fraction(0)
        total = self.epsilon(self.rounds) + self.evaluations * self.evaluation.epsilon
        return Budget(total, delta)

    def round_cost(self, trained: int) -> Budget:
        """What a hospital that has trained ``trained`` rounds pays for its next one.

        The ε increment telescopes, so after ``k`` rounds a hospital has paid exactly the bound
        for ``k`` rounds; δ is paid once, with its first round.
        """
        increment = max(self.epsilon(trained + 1) - self.epsilon(trained), Fraction(0))
        delta = self.delta if self.noise and trained == 0 else Fraction(0)
        return Budget(increment, delta)


@functools.lru_cache(maxsize=4096)
def _epsilon(sigma: float, rate: float, steps: int, delta: Fraction, accountant: str) -> Fraction:
    """The accountant's ε, rounded up; cached, as every party asks for the same few values."""
    return fed.epsilon_bound(fed.epsilon_spent(sigma, rate, steps, float(delta), accountant))


def _ranges(params: FedDpSgdParams) -> dict[str, tuple[float, float]]:
    ranges = dict(fed.HEALTH_RANGES)
    for item in filter(None, (part.strip() for part in params.feature_ranges.split(";"))):
        name, low, high = item.split(":")
        ranges[name.strip()] = (float(low), float(high))
    return ranges


def plan(spec: JobSpec) -> Plan:
    """Validate ``spec`` as a fed_dp_sgd job and derive its plan.

    Raises:
        InvalidJobSpecError: Naming the participant or parameter to fix.
    """
    DEFINITION.check_roles(spec)
    params = FedDpSgdParams.of(spec)
    coordinator = next(p.party for p in spec.participants if p.role == ROLE_COORDINATOR)
    hospitals = tuple(p.party for p in spec.participants if p.role == ROLE_HOSPITAL)
    ranges = _ranges(params)
    features = tuple(f.strip() for f in params.features.split(","))
    missing = [f for f in features if f not in ranges]
    if not features or missing or len(set(features)) != len(features):
        raise InvalidJobSpecError(
            f"features {missing or list(features)} need distinct names with public value ranges "
            "(add them to feature_ranges as name:low:high)"
        )
    dropouts = params.max_dropouts
    if 2 * dropouts >= len(hospitals):
        raise InvalidJobSpecError(
            f"max_dropouts = {dropouts} must be below half of the {len(hospitals)} hospitals, so "
            "that a coordinator can never collect two disjoint quorums of shares"
        )
    try:
        eval_epsilon = parse_rational(params.eval_epsilon, "eval_epsilon")
        clip = parse_rational(params.eval_clip, "eval_clip")
    except InvalidInputError as exc:
        raise InvalidJobSpecError(f"fed_dp_sgd: {exc}") from None
    if not MIN_EVAL_EPSILON <= eval_epsilon <= MAX_EVAL_EPSILON:
        raise InvalidJobSpecError(
            f"eval_epsilon must lie in [{MIN_EVAL_EPSILON}, {MAX_EVAL_EPSILON}]"
        )
    if not fed.MIN_CLIP <= clip <= Fraction(1, 4):
        raise InvalidJobSpecError(f"eval_clip must lie in [{fed.MIN_CLIP}, 1/4]")
    try:
        model = fed.ModelSpec(params.model, len(features), params.hidden)
        dpsgd = fed.DpSgdConfig(
            steps=params.local_steps,
            learning_rate=params.learning_rate,
            noise_multiplier=params.noise_multiplier,
            max_grad_norm=params.max_grad_norm,
            sample_rate=params.sample_rate,
            grad_sample_mode=params.grad_sample_mode,
        )
        dropout_secagg.check_capacity(len(hospitals), params.update_bound, UPDATE_FRAC_BITS)
    except (ValueError, InvalidInputError) as exc:
        raise InvalidJobSpecError(f"fed_dp_sgd: {exc}") from None
    return Plan(
        coordinator=coordinator,
        hospitals=hospitals,
        model=model,
        features=features,
        ranges={f: ranges[f] for f in features},
        rounds=params.rounds,
        dpsgd=dpsgd,
        delta=parse_rational(str(params.delta), "delta"),
        accountant=params.accountant,
        threshold=len(hospitals) - dropouts,
        seed=params.seed,
        test_fraction=params.test_fraction,
        update_bound=params.update_bound,
        upload_patience=params.upload_patience,
        patience=params.patience,
        evaluate=params.evaluate,
        evaluation=fed.EvalConfig(
            params.eval_bins, clip, eval_epsilon if params.noise_multiplier > 0 else Fraction(0)
        ),
    )


def _check_noise(p: Plan) -> None:
    if not p.noise and not insecure.insecure_test_parameters_enabled():
        raise NoiseOffRefusedError(
            "noise_multiplier = 0 trains without differential privacy and is for tests only; "
            "set a positive noise_multiplier (this node's test-only switch is off)"
        )


def _context(spec: JobSpec, step: int) -> bytes:
    """Binds every key, mask and share of a step to this job and step."""
    return hashlib.sha256(f"bund/fed_dp_sgd/v1/{spec.digest()}/{step}".encode()).digest()


def _vector_length(p: Plan, kind: int, round_: int) -> int:
    """The update's cells (on a training step), then the evaluation's (when it evaluates)."""
    update = p.model.size if kind == _TRAIN else 0
    return update + (p.evaluation.length if p.evaluates(kind, round_) else 0)


# --- messages of this module ------------------------------------------------------------------


def encode_go(kind: int, round_: int, weights: np.ndarray[Any, Any]) -> bytes:
    """The coordinator's step message: a 15-byte header then 8 bytes per weight.

    Layout: magic ``b"BFDG"`` (4), version 1 (1), kind (1: train, 2: evaluate, 3: done),
    training round (4, big-endian), weight count (4), then each weight as little-endian float64.
    """
    vector = np.asarray(weights, dtype="<f8")
    return _GO.pack(_GO_FIELDS.pack(kind, round_, len(vector)), vector.tobytes())


def decode_go(payload: bytes, size: int) -> tuple[int, int, np.ndarray[Any, Any]]:
    """Check a step message: known kind, ``size`` finite weights.

    Raises:
        InvalidMessageError: If anything is out of place.
    """
    body = _GO.split(payload, "a fed_dp_sgd step message")
    if len(body) < _GO_FIELDS.size:
        raise InvalidMessageError("a step message is shorter than its header")
    kind, round_, count = _GO_FIELDS.unpack_from(body)
    if kind not in (_TRAIN, _EVAL, _DONE):
        raise InvalidMessageError(f"a step message names unknown kind {kind}: upgrade the node")
    if count != size or len(body) != _GO_FIELDS.size + 8 * size:
        raise InvalidMessageError(f"a step message carries {count} weights; the model has {size}")
    weights = np.frombuffer(body, dtype="<f8", offset=_GO_FIELDS.size).astype(np.float64)
    if not np.all(np.isfinite(weights)):
        raise InvalidMessageError("a step message carries non-finite weights")
    return kind, round_, weights


# --- a hospital -------------------------------------------------------------------------------


@dataclass
class _HospitalState:
    """A hospital's progress, saved (as JSON) before each message it determines.

    The step counters (``train_steps``, ``evaluations``) count the steps it accepted and persist
    across restarts, so neither a resumed job nor a coordinator's choice of messages resets them.
    """

    step: int = 0
    #: Training steps accepted, and rounds paid for (fewer when a budget ran out).
    train_steps: int = 0
    trained: int = 0
    #: Evaluating steps accepted, and evaluations paid for.
    evaluations: int = 0
    evaluated: int = 0
    go: str = ""
    seed: str = ""
    exhausted: bool = False
    values: list[int] = field(default_factory=list)
    request: list[list[int]] = field(default_factory=list)

    def save(self, ctx: JobContext) -> None:
        ctx.save_state("hospital", json.dumps(asdict(self)).encode())

    @classmethod
    def load(cls, ctx: JobContext) -> _HospitalState:
        saved = ctx.load_state("hospital")
        return cls(**json.loads(saved)) if saved else cls()

    def next_step(self) -> _HospitalState:
        """The state at the start of the next step: the counters carry over, nothing else."""
        return dataclasses.replace(
            self, step=self.step + 1, go="", seed="", exhausted=False, values=[], request=[]
        )


@dataclass(frozen=True)
class _Data:
    """A hospital's rows, split once by the public seed: training rows and held-out rows."""

    x_train: np.ndarray[Any, Any]
    y_train: np.ndarray[Any, Any]
    x_test: np.ndarray[Any, Any]
    y_test: np.ndarray[Any, Any]


def split_salt(p: Plan, hospital: str) -> bytes:
    """The public salt of ``hospital``'s held-out split (``fed.held_out``)."""
    return f"bund/fed_dp_sgd/split/v2/{p.seed}/{p.index(hospital)}/".encode()


def _load_data(ctx: JobContext, p: Plan) -> _Data:
    me = ctx.spec.participant(ctx.party)
    table = ctx.table()
    if not 1 <= table.num_rows <= MAX_ROWS:
        raise InvalidJobSpecError(f"{ctx.party}'s dataset needs 1 to {MAX_ROWS} rows")
    columns = {f: table.numeric(me.columns.get(f, f)) for f in p.features}
    y = table.numeric(me.columns.get(LABEL, LABEL))
    if not np.isin(y, (0.0, 1.0)).all():
        raise InvalidInputError(f"the label column of {ctx.party} must hold 0 and 1 only")
    x = fed.scale_features(columns, p.ranges)
    test = fed.held_out(x, y, p.test_fraction, split_salt(p, ctx.party))
    if test.all():
        raise InvalidJobSpecError(f"{ctx.party} has no training rows left: lower test_fraction")
    return _Data(x[~test], y[~test], x[test], y[test])


def _await(ctx: JobContext, frm: str, tag: str, patience: int) -> bytes:
    """Receive, waiting up to ``patience`` receive timeouts (the coordinator waits on others)."""
    for _ in range(patience - 1):
        try:
            return ctx.recv(frm, tag)
        except PeerTimeoutError:
            continue
    return ctx.recv(frm, tag)


def _stream_key(seed: bytes) -> bytes:
    """The 256-bit key of a step's noise and sampling stream, from its secret seed."""
    return hashlib.sha256(b"bund/fed_dp_sgd/v2/stream" + seed).digest()


def _values(
    p: Plan, kind: int, round_: int, weights: np.ndarray[Any, Any], data: _Data, seed: bytes
) -> list[int]:
    """This hospital's integer vector of a step: its quantised update, its noisy evaluation."""
    out: list[int] = []
    if kind == _TRAIN:
        update = fed.local_update(
            p.model, weights, data.x_train, data.y_train, p.dpsgd, _stream_key(seed)
        )
        out += dropout_secagg.quantize(update.delta, p.update_bound, UPDATE_FRAC_BITS).tolist()
    if p.evaluates(kind, round_):
        logits = fed.scores(p.model, weights, data.x_test)
        counts = fed.evaluation_counts(p.evaluation, logits, data.y_test)
        out += fed.add_evaluation_noise(p.evaluation, counts).tolist()
    return out


def _hospital_step(ctx: JobContext, p: Plan, s: _HospitalState, data: _Data) -> None:
    """Phases 2-8 of one step at a hospital, resuming wherever its state says it stopped."""
    me, c = p.index(ctx.party), p.coordinator
    kind, round_, weights = decode_go(bytes.fromhex(s.go), p.model.size)
    tag = f"{s.step}"
    if s.exhausted:
        ctx.send(c, f"fed/keys/{tag}", _EXHAUSTED)
        _await(ctx, c, f"fed/roster/{tag}", p.patience)  # the coordinator calls the step off
        return
    seed = bytes.fromhex(s.seed)
    mine = dropout_secagg.RoundSecrets.from_seed(seed)
    context = _context(ctx.spec, s.step)
    ctx.send(c, f"fed/keys/{tag}", dropout_secagg.encode_advertised(mine.advertised(context)))
    roster = dropout_secagg.decode_roster(_await(ctx, c, f"fed/roster/{tag}", p.patience))
    if not roster:
        return  # left out of this step (late, or the step was called off)
    ctx.send(
        c,
        f"fed/shares/{tag}",
        dropout_secagg.encode_boxes(mine.share(me, roster, p.threshold, context)),
    )
    inbox = dropout_secagg.decode_boxes(_await(ctx, c, f"fed/inbox/{tag}", p.patience))
    if not inbox:
        return
    opened = mine.open_inbox(me, roster, p.threshold, inbox, context)
    shared = {j: roster[j] for j in opened.s}
    if not s.values:
        s.values = _values(p, kind, round_, weights, data, seed)
        s.save(ctx)  # write-ahead: the masked vector below is determined by it, noise included
    masked = mine.mask(me, np.asarray(s.values, dtype=np.int64), shared, context)
    ctx.send(c, f"fed/masked/{tag}", dropout_secagg.encode_vector(masked))
    survivors, dropped = dropout_secagg.decode_request(
        _await(ctx, c, f"fed/unmask/{tag}", p.patience)
    )
    if not survivors:
        return
    if s.request and s.request != [survivors, dropped]:
        raise InvalidMessageError(
            "the coordinator asked this hospital a second, different unmasking question in one "
            "step; answering both could unmask one hospital's update, so the job stops"
        )
    if not s.request:
        s.request = [survivors, dropped]
        s.save(ctx)  # answer one request per step, even across restarts
    reveal = opened.reveal(me, survivors, dropped)
    ctx.send(c, f"fed/reveal/{tag}", dropout_secagg.encode_reveal(reveal))


_KIND_NAMES = {_TRAIN: "train", _EVAL: "evaluate"}


def _admit(ctx: JobContext, p: Plan, s: _HospitalState, kind: int, round_: int) -> None:
    """Accept a training or evaluating step within the plan's limits and count it, or refuse.

    The limits come from the spec this node approved, never from the coordinator: at most
    ``rounds`` training steps, numbered 1, 2, … in order, and at most ``p.evaluations``
    evaluating steps, whatever their kind.

    Raises:
        StepLimitError: Naming the step, before anything is computed or charged for it.
    """
    problem = ""
    evaluates = p.evaluates(kind, round_)
    if kind == _TRAIN and s.train_steps >= p.rounds:
        problem = f"training round {round_}, beyond the {p.rounds} approved"
    elif kind == _TRAIN and round_ != s.train_steps + 1:
        problem = f"training round {round_} where this hospital's next is {s.train_steps + 1}"
    elif evaluates and s.evaluations >= p.evaluations:
        problem = f"evaluation {s.evaluations + 1}, beyond the {p.evaluations} approved"
    if problem:
        ctx.record(
            "fed_dp_sgd.step_refused",
            {"step": s.step, "kind": _KIND_NAMES[kind], "round": round_, "reason": problem},
        )
        raise StepLimitError(
            f"step {s.step} (fed/go/{s.step}): the coordinator asked {ctx.party} for {problem}. "
            f"The approved spec allows {p.rounds} training round(s) and {p.evaluations} "
            f"evaluation(s) (evaluate = {p.evaluate!r}); {ctx.party} computes, charges and sends "
            "nothing for it and stops the job"
        )
    s.train_steps += kind == _TRAIN
    s.evaluations += evaluates


def _pay(ctx: JobContext, p: Plan, s: _HospitalState, kind: int, round_: int) -> None:
    """Charge the step's round and evaluation to this hospital's dataset, before anything runs.

    A charge that does not fit marks the step exhausted: the hospital then sends only the
    exhausted marker. A round paid before its evaluation's charge failed is not refunded.
    """
    try:
        if kind == _TRAIN:
            cost = p.round_cost(s.trained)
            ctx.charge(f"round-{s.train_steps}", cost)  # its own count, equal to round_
            s.trained += 1
            ctx.record(
                "fed_dp_sgd.round_charged",
                {
                    "round": round_,
                    "epsilon": format_rational(cost.epsilon),
                    "delta": format_rational(cost.delta),
                    "epsilon_total": format_rational(p.epsilon(s.trained)),
                },
            )
        if p.evaluates(kind, round_):
            ctx.charge(f"eval-{s.step}", p.eval_cost)
            s.evaluated += 1
            ctx.record(
                "fed_dp_sgd.evaluation_charged",
                {
                    "step": s.step,
                    "evaluation": s.evaluated,
                    "epsilon": format_rational(p.eval_cost.epsilon),
                },
            )
    except BudgetExhaustedError as exc:
        s.exhausted = True
        ctx.record("fed_dp_sgd.budget_stop", {"round": round_, "step": s.step, "reason": str(exc)})


def run_hospital(ctx: JobContext) -> Result | None:
    """A hospital's side: per step, check the limits, pay, train or evaluate, upload masked.

    Raises:
        NoiseOffRefusedError: If the job turns noise off while the test-only switch is off.
        StepLimitError: If the coordinator asks for a step beyond what the spec allows.
        InvalidMessageError: If the coordinator's or a peer's message is malformed.
        DropoutError: If too few hospitals are left to form a round.
    """
    p = plan(ctx.spec)
    _check_noise(p)
    data = _load_data(ctx, p)
    s = _HospitalState.load(ctx)
    while True:
        if not s.go:
            go = _await(ctx, p.coordinator, f"fed/go/{s.step}", p.patience)
            kind, round_, weights = decode_go(go, p.model.size)
            if kind == _DONE:
                ctx.record(
                    "fed_dp_sgd.finished",
                    {"rounds_trained": s.trained, "evaluations": s.evaluated},
                )
                return _hospital_result(ctx, p, weights, s)
            _admit(ctx, p, s, kind, round_)
            s.go, s.exhausted = go.hex(), False
            _pay(ctx, p, s, kind, round_)
            s.seed = secrets.token_bytes(dropout_secagg.SEED_BYTES).hex()
            s.save(ctx)  # write-ahead: keys, shares and masks all derive from this seed
        _hospital_step(ctx, p, s, data)
        s = s.next_step()
        s.save(ctx)
        ctx.progress("train", s.step, p.rounds + 2)


def _hospital_result(
    ctx: JobContext, p: Plan, weights: np.ndarray[Any, Any], s: _HospitalState
) -> Result | None:
    if ctx.party not in ctx.spec.receivers:
        return None
    spent = p.epsilon(s.trained) + s.evaluated * p.evaluation.epsilon
    summary: dict[str, str | int | float | bool | None] = {
        "rounds_trained_here": s.trained,
        "evaluations_here": s.evaluated,
        "epsilon_spent_here": format_rational(spent),
        "delta": format_rational(p.delta) if p.noise else "0",
    }
    return Result(summary, {"model.json": _model_json(p, weights, [])})


# --- the coordinator --------------------------------------------------------------------------


@dataclass
class _CoordinatorState:
    """The coordinator's progress: the model, the history, and the current step's decisions."""

    step: int = 0
    round: int = 0
    weights: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    #: Per hospital, the training rounds and the evaluations it answered (and so paid for).
    joined: dict[str, int] = field(default_factory=dict)
    evaluated: dict[str, int] = field(default_factory=dict)
    #: Evaluations run (whose noisy sums were unmasked).
    evaluations: int = 0
    stop: str = ""
    kind: int = _TRAIN
    roster: str = ""
    boxes: dict[str, str] = field(default_factory=dict)
    masked: dict[str, str] = field(default_factory=dict)
    request: str = ""
    #: Hospitals whose node could not be reached: out of the job from then on.
    gone: list[str] = field(default_factory=list)

    def save(self, ctx: JobContext) -> None:
        ctx.save_state("coordinator", json.dumps(asdict(self)).encode())

    @classmethod
    def load(cls, ctx: JobContext) -> _CoordinatorState | None:
        saved = ctx.load_state("coordinator")
        return cls(**json.loads(saved)) if saved else None


def _collect(ctx: JobContext, members: list[str], tag: str, patience: int) -> dict[str, bytes]:
    """Receive ``tag`` from every member at once; those silent for ``patience`` timeouts drop."""

    def one(member: str) -> bytes | None:
        for _ in range(patience):
            try:
                return ctx.recv(member, tag)
            except PeerTimeoutError:
                continue
        return None

    if not members:
        return {}
    with ThreadPoolExecutor(max_workers=len(members)) as pool:
        got = dict(zip(members, pool.map(one, members), strict=True))
    return {m: payload for m, payload in got.items() if payload is not None}


def _too_few(p: Plan, step: int, phase: str, count: int) -> dropout_secagg.DropoutError:
    return dropout_secagg.DropoutError(
        f"step {step}: only {count} hospitals answered the {phase} phase in time; the round "
        f"needs {p.threshold} (max_dropouts = {len(p.hospitals) - p.threshold}). Bring the "
        "missing hospitals' nodes back and resume the job, or run with fewer hospitals"
    )


def _send(ctx: JobContext, s: _CoordinatorState, hospital: str, tag: str, payload: bytes) -> None:
    """Send to a hospital; one whose node cannot be reached drops out of the job (``s.gone``).

    Its missing answers then count against ``max_dropouts`` like any other drop-out.
    """
    if hospital in s.gone:
        return
    try:
        ctx.send(hospital, tag, payload)
    except (JobAbortedError, JobInterruptedError):
        raise
    except TransportError:
        s.gone.append(hospital)
        ctx.record("fed_dp_sgd.unreachable", {"hospital": hospital, "step": s.step})


def _tell(
    ctx: JobContext,
    p: Plan,
    s: _CoordinatorState,
    members: set[str],
    tag: str,
    payloads: Mapping[str, bytes],
    empty: bytes,
) -> None:
    """Send each member its payload, and every other hospital ``empty`` (sit this step out)."""
    for h in p.hospitals:
        _send(ctx, s, h, tag, payloads[h] if h in members else empty)


def _coordinator_step(ctx: JobContext, p: Plan, s: _CoordinatorState) -> np.ndarray[Any, Any]:
    """Phases 2-8 of a training or evaluation step: the unmasked sum of the survivors' vectors."""
    tag, everyone = f"{s.step}", list(p.hospitals)
    names = {p.index(h): h for h in p.hospitals}
    if not s.roster:
        answers = _collect(ctx, [h for h in everyone if h not in s.gone], f"fed/keys/{tag}", 1)
        exhausted = sorted(h for h, a in answers.items() if a == _EXHAUSTED)
        evaluates = p.evaluates(s.kind, s.round + 1)
        for h in answers:  # each hospital that answered a step has paid for it
            if h not in exhausted:
                s.joined[h] = s.joined.get(h, 0) + (s.kind == _TRAIN)
                s.evaluated[h] = s.evaluated.get(h, 0) + evaluates
        roster = {
            p.index(h): dropout_secagg.decode_advertised(a)
            for h, a in answers.items()
            if h not in exhausted
        }
        if exhausted:
            s.stop = s.stop or f"privacy budget exhausted at {', '.join(exhausted)}"
        if exhausted and (s.kind == _TRAIN or len(roster) < p.threshold):
            roster = {}  # a round is called off; an evaluation goes on without the exhausted
        elif len(roster) < p.threshold:
            raise _too_few(p, s.step, "keys", len(roster))
        s.roster = dropout_secagg.encode_roster(roster).hex()
        s.save(ctx)
    roster = dropout_secagg.decode_roster(bytes.fromhex(s.roster))
    members = {names[i] for i in roster}
    empty_roster = dropout_secagg.encode_roster({})
    _tell(
        ctx,
        p,
        s,
        members,
        f"fed/roster/{tag}",
        dict.fromkeys(members, bytes.fromhex(s.roster)),
        empty_roster,
    )
    if not roster:
        return np.zeros(0, dtype=np.int64)
    if not s.boxes:
        got = _collect(ctx, sorted(members), f"fed/shares/{tag}", 1)
        s.boxes = {h: payload.hex() for h, payload in got.items()}
        if len(s.boxes) < p.threshold:
            raise _too_few(p, s.step, "share", len(s.boxes))
        s.save(ctx)
    uploads = {h: dropout_secagg.decode_boxes(bytes.fromhex(b)) for h, b in s.boxes.items()}
    for h, boxes in uploads.items():
        if set(boxes) != set(roster) - {p.index(h)}:
            raise InvalidMessageError(f"{h} sent shares for other hospitals than the roster's")
    inboxes = {
        h: dropout_secagg.encode_boxes(
            {p.index(o): uploads[o][p.index(h)] for o in uploads if o != h}
        )
        for h in uploads
    }
    _tell(ctx, p, s, set(uploads), f"fed/inbox/{tag}", inboxes, dropout_secagg.encode_boxes({}))
    length = _vector_length(p, s.kind, s.round + 1)
    if not s.request:
        got = _collect(ctx, sorted(uploads), f"fed/masked/{tag}", p.upload_patience)
        s.masked = {h: payload.hex() for h, payload in got.items()}
        if len(s.masked) < p.threshold:
            raise _too_few(p, s.step, "upload", len(s.masked))
        dropped = [p.index(h) for h in uploads if h not in s.masked]
        s.request = dropout_secagg.encode_request([p.index(h) for h in s.masked], dropped).hex()
        s.save(ctx)  # write-ahead: one unmasking question per step, even across restarts
    masked = {
        p.index(h): dropout_secagg.decode_vector(bytes.fromhex(v), length)
        for h, v in s.masked.items()
    }
    request = bytes.fromhex(s.request)
    alive = {names[i] for i in masked}
    _tell(
        ctx,
        p,
        s,
        alive,
        f"fed/unmask/{tag}",
        dict.fromkeys(alive, request),
        dropout_secagg.encode_request([], []),
    )
    answers = _collect(ctx, sorted(alive), f"fed/reveal/{tag}", 1)
    reveals = {p.index(h): dropout_secagg.decode_reveal(a) for h, a in answers.items()}
    shared = {j: roster[j] for j in (p.index(h) for h in uploads)}
    total = dropout_secagg.unmask(masked, shared, reveals, p.threshold, _context(ctx.spec, s.step))
    s.history.append(
        {"step": s.step, "survivors": len(masked), "dropped": len(members) - len(masked)}
    )
    return total


def _aggregate(p: Plan, s: _CoordinatorState, total: np.ndarray[Any, Any]) -> None:
    """Apply the unmasked sum: FedAvg step on a training round, and the evaluation's metrics.

    An evaluation in a training step is of the incoming model, so ``round`` in the history
    is always the number of rounds the evaluated (or incoming) model was trained.
    """
    entry = s.history[-1]
    survivors = entry["survivors"]
    entry["round"] = s.round
    entry["kind"] = "train" if s.kind == _TRAIN else "evaluate"
    if p.evaluates(s.kind, s.round + 1):
        got = fed.read_evaluation(p.evaluation, total[-p.evaluation.length :], survivors)
        s.evaluations += 1
        entry.update(
            eval_rows=got.rows,
            auc=got.auc,
            auc_band=got.auc_band,
            auc_tolerance=got.auc_tolerance,
            log_loss=got.log_loss,
            log_loss_band=got.log_loss_band,
        )
    if s.kind == _TRAIN:
        mean = dropout_secagg.dequantize(total[: p.model.size], UPDATE_FRAC_BITS) / survivors
        s.weights = (np.asarray(s.weights) + mean).tolist()
        s.round += 1
    training = p.epsilon(s.round)
    evaluation = s.evaluations * p.evaluation.epsilon
    entry["epsilon_training"] = format_rational(training)
    entry["epsilon_evaluation"] = format_rational(evaluation)
    entry["epsilon"] = format_rational(training + evaluation)


def run_coordinator(ctx: JobContext) -> Result:
    """The coordinator's side: drive the rounds, unmask only sums, build the result.

    Raises:
        NoiseOffRefusedError: If the job turns noise off while the test-only switch is off.
        DropoutError: If more hospitals drop out of a round than ``max_dropouts``.
        InvalidMessageError: If a hospital's message is malformed or its shares inconsistent.
    """
    p = plan(ctx.spec)
    _check_noise(p)
    s = _CoordinatorState.load(ctx)
    if s is None:
        s = _CoordinatorState(weights=fed.initial_weights(p.model, p.seed).tolist())
        s.save(ctx)
    while True:
        weights = np.asarray(s.weights)
        kind = s.kind
        for h in p.hospitals:
            _send(ctx, s, h, f"fed/go/{s.step}", encode_go(kind, s.round + 1, weights))
        if kind == _DONE:
            break
        total = _coordinator_step(ctx, p, s)
        if len(total):
            _aggregate(p, s, total)
            entry = s.history[-1]
            ctx.record("fed_dp_sgd.step", {k: v for k, v in entry.items() if k != "step"})
        s.kind = _next_kind(p, s)
        s.step, s.roster, s.boxes, s.masked, s.request = s.step + 1, "", {}, {}, ""
        s.save(ctx)
        ctx.progress("train", s.step, p.rounds + 2)
    return _coordinator_result(ctx, p, s)


def _next_kind(p: Plan, s: _CoordinatorState) -> int:
    if s.kind == _EVAL:
        return _DONE
    return _EVAL if s.stop or s.round >= p.rounds else _TRAIN


def _coordinator_result(ctx: JobContext, p: Plan, s: _CoordinatorState) -> Result:
    final: dict[str, Any] = next((h for h in reversed(s.history) if "eval_rows" in h), {})
    summary: dict[str, str | int | float | bool | None] = {
        "model": p.model.kind,
        "parameters": p.model.size,
        "rounds_run": s.round,
        "rounds_planned": p.rounds,
        "stopped": s.stop or "completed",
        "noise": "gaussian (Opacus DP-SGD)" if p.noise else "off (test only)",
        "noise_multiplier": p.dpsgd.noise_multiplier,
        "delta": format_rational(p.delta) if p.noise else "0",
        "evaluate": p.evaluate,
        "evaluations_run": s.evaluations,
        "eval_epsilon": format_rational(p.evaluation.epsilon),
        "eval_bins": p.evaluation.bins,
        "final_eval_rows": final.get("eval_rows"),
        "final_auc": final.get("auc"),
        "final_auc_band": final.get("auc_band"),
        "final_auc_tolerance": final.get("auc_tolerance"),
        "final_log_loss": final.get("log_loss"),
        "final_log_loss_band": final.get("log_loss_band"),
    }
    for h in p.hospitals:
        training = p.epsilon(s.joined.get(h, 0))
        summary[f"epsilon_training_{h}"] = format_rational(training)
        evaluations = s.evaluated.get(h, 0) * p.evaluation.epsilon
        summary[f"epsilon_{h}"] = format_rational(training + evaluations)
    ctx.record("fed_dp_sgd.finished", {"rounds": s.round, "stopped": summary["stopped"]})
    artifacts = {
        "model.json": _model_json(p, np.asarray(s.weights), s.history),
        "history.csv": _history_csv(s.history),
        "training_curves.png": training_curves(s.history, _chart_title(p, s)),
    }
    return Result(summary, artifacts)


def _model_json(p: Plan, weights: np.ndarray[Any, Any], history: list[dict[str, Any]]) -> bytes:
    doc = {
        "format": MODEL_FORMAT,
        "kind": p.model.kind,
        "hidden": p.model.hidden if p.model.kind == "mlp" else None,
        "features": list(p.features),
        "ranges": {f: list(r) for f, r in p.ranges.items()},
        "scaling": "each feature clipped to its range and mapped onto [-1, 1]",
        "label": LABEL,
        "layout": "torch parameters_to_vector order: weight then bias of each linear layer",
        "weights": [float(w) for w in weights],
        "history": history,
    }
    return json.dumps(doc, indent=1).encode()


#: The columns of ``history.csv``, one row per step that unmasked a sum.
HISTORY_COLUMNS = (
    "step",
    "kind",
    "round",
    "survivors",
    "dropped",
    "eval_rows",
    "auc",
    "auc_band",
    "auc_tolerance",
    "log_loss",
    "log_loss_band",
    "epsilon_training",
    "epsilon_evaluation",
    "epsilon",
)


#: The history's exact ε columns, written to the CSV as decimals (model.json keeps them exact).
_EPSILON_COLUMNS = ("epsilon_training", "epsilon_evaluation", "epsilon")


def _history_csv(history: list[dict[str, Any]]) -> bytes:
    """The history for people and spreadsheets: ε as decimals, rounded up."""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for entry in history:
        shown = {
            k: format_decimal(parse_rational(entry[k])) for k in _EPSILON_COLUMNS if k in entry
        }
        writer.writerow({**entry, **shown})
    return out.getvalue().encode()


def _chart_title(p: Plan, s: _CoordinatorState) -> str:
    """The chart's title: the model, the noise, and what a hospital that took every step paid."""
    if not p.noise:
        return f"fed_dp_sgd {p.model.kind}: no noise (test only)"
    training = p.epsilon(s.round)
    total = training + s.evaluations * p.evaluation.epsilon
    return (
        f"fed_dp_sgd {p.model.kind}: σ = {p.dpsgd.noise_multiplier}, δ = {p.delta}; ε per "
        f"hospital {float(total):.3g} = DP-SGD {float(training):.3g} + {s.evaluations} "
        f"evaluation(s) × {p.evaluation.epsilon}"
    )


# --- the job spec -----------------------------------------------------------------------------


def check(spec: JobSpec) -> None:
    """The checks beyond roles and parameters: features, drop-out bound, capacity, noise.

    Raises:
        InvalidJobSpecError: Naming the parameter to fix.
        NoiseOffRefusedError: If it turns noise off while the test-only switch is off.
    """
    _check_noise(plan(spec))


def validate(spec: JobSpec) -> None:
    """Check that ``spec`` is a runnable fed_dp_sgd job (``DEFINITION.validate``).

    Raises:
        InvalidJobSpecError: Naming the field to fix.
        NoiseOffRefusedError: If it turns noise off while the test-only switch is off.
    """
    DEFINITION.validate(spec)


def outputs(spec: JobSpec) -> frozenset[str]:
    """What the job releases: a model (trained with DP-SGD) and DP held-out metrics."""
    return frozenset({"model", "dp_aggregate"})


def learns(spec: JobSpec) -> dict[str, str]:
    """What each party learns, and what each hospital may pay, as the protocol doc states it."""
    p = plan(spec)
    noise = (
        f"each hospital's vector ε = {p.evaluation.epsilon} DP by its own discrete Laplace noise"
        if p.noise
        else "exact: noise off, test only"
    )
    out = {
        p.coordinator: (
            "per round the sum of the surviving hospitals' DP-SGD updates (never one hospital's), "
            f"hence the global model; at most {p.evaluations} evaluation(s) (evaluate = "
            f"{p.evaluate}), each the sum of the hospitals' held-out score counts by label "
            f"({p.evaluation.bins} bins) and clipped log-loss sums ({noise}); who answered each "
            "phase"
        )
    }
    cost = p.planned_cost()
    for h in p.hospitals:
        out[h] = (
            "the global model of every round; the other hospitals' public keys and the Shamir "
            f"shares they encrypted for it (which alone reveal nothing). It answers at most "
            f"{p.rounds} training round(s) and {p.evaluations} evaluation(s), whatever the "
            f"coordinator asks, so the job charges its dataset at most ε = "
            f"{format_rational(cost.epsilon)}, δ = {format_rational(cost.delta)} (DP-SGD "
            f"{format_rational(p.epsilon(p.rounds))}, evaluations {p.evaluations} × "
            f"{format_rational(p.evaluation.epsilon)})"
        )
    return out


def planned_cost(spec: JobSpec, party: str) -> Budget:
    """The most the job can charge ``party``'s dataset, from the spec alone (nothing without one).

    Every training round's increment and every evaluation a hospital can be made to answer
    (``Plan.planned_cost``): its step limits make this a bound on the sum of its charges. It is
    ``DEFINITION.cost``: the ledger reserves it at acceptance and the approver sees it; the job
    pays as it goes (``ctx.charge`` per round and per evaluation) out of that reservation.
    """
    if spec.participant(party).dataset is None:
        return Budget()
    return plan(spec).planned_cost()


#: The protocol as registered in ``bund.parties.protocols.PROTOCOLS``.
def dropouts(spec: JobSpec, party: str) -> frozenset[str]:
    """Whose silence ``party``'s role handles itself: every hospital but itself.

    The coordinator carries a round on without up to ``max_dropouts`` hospitals (more abort it
    with ``DropoutError``); a hospital talks only to the coordinator, so another hospital's
    silence is no concern of its own.
    """
    return frozenset(p.party for p in spec.participants if p.role == ROLE_HOSPITAL) - {party}


DEFINITION = ProtocolDef(
    name="fed_dp_sgd",
    version="1",
    roles={ROLE_COORDINATOR: run_coordinator, ROLE_HOSPITAL: run_hospital},
    params=FedDpSgdParams,
    role_requirements={
        ROLE_COORDINATOR: RoleRequirement(dataset=False, receives=True, who="the insurer"),
        ROLE_HOSPITAL: RoleRequirement(
            min=2,
            max=dropout_secagg.MAX_CLIENTS,
            who="each with its patients' dataset",
            why="so the coordinator only ever unmasks a sum",
        ),
    },
    check=check,
    outputs=outputs,
    learns=learns,
    description="Federated DP-SGD (Opacus) across hospitals with drop-out tolerant SecAgg",
    dropouts=dropouts,
    # The most the plan can charge a hospital is reserved at acceptance (and shown to its
    # approver); each round and evaluation is charged out of it as it goes.
    cost=planned_cost,
    pays_as_it_goes=True,
    resumable=True,
)
