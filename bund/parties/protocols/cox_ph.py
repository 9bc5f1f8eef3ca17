"""Cox proportional-hazards regression across hospitals: Newton iterations over masked DP sums.

Roles: two or more ``hospital`` participants, each with a dataset of whole patient records
(follow-up ``time``, 0/1 ``event``, the covariates; bind other names through the participant's
columns), and one ``analyst`` (no dataset; it receives the result). The maths is in
``bund.compute.learn.cox``; ``docs/protocols/cox-ph.md`` has the parameters, what each role
learns and the threat model.

The job is a fixed sequence of ``steps``: ``iterations`` Newton iterations, then (unless
``concordance_bins = 0``) one concordance step. Messages (H: a hospital, A: the analyst):

1. ``cox/key`` (H → every other H): its fresh X25519 masking key (40 B), once per job.
2. ``cox/go/s`` (A → every H): the step's kind, its number and the coefficients ``β``
   (``BCXG``: 14 + 8·p bytes). A hospital accepts step ``s`` only of the kind the approved spec
   puts there, with finite coefficients within ``beta_bound``; it charges the step's ε to its
   dataset before computing anything.
3. ``cox/masked/s`` (H → A): its integer vector for the step (per-bin sums at ``β``, or
   deaths and censorings per time and score bin) plus its own discrete Laplace noise, masked
   with masks bound to the job and the step (12 + 8·cells bytes).

A hospital answers exactly the spec's steps and then ends its role, so an analyst gets no more
releases than the spec its approver signed, whatever it sends.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import AfterValidator, Field

from bund.compute import insecure
from bund.compute.dp import pairwise_masks
from bund.compute.dp.budget import Budget, format_rational, parse_rational
from bund.compute.dp.mechanisms import MAX_SCALE, DiscreteLaplace
from bund.compute.dp.survival import Z_95, normal_sf
from bund.compute.errors import BundError, InvalidInputError, InvalidMessageError
from bund.compute.layout import Header
from bund.compute.learn import cox
from bund.compute.learn.fed import HEALTH_RANGES
from bund.parties.jobs import (
    InvalidJobSpecError,
    JobContext,
    JobSpec,
    OwnerTerms,
    ProtocolDef,
    ProtocolParams,
    Result,
    RoleRequirement,
)
from bund.parties.policy import PolicyRefusedError
from bund.parties.protocols.plots import forest_plot
from bund.parties.schema import Exact
from bund.parties.transport import MessagePlan

ROLE_HOSPITAL = "hospital"
ROLE_ANALYST = "analyst"
#: The logical columns of follow-up time and the event flag.
TIME, EVENT = "time", "event"
#: The ε one Newton iteration or a concordance step may cost: below, noise swamps everything.
MIN_STEP_EPSILON, MAX_EPSILON = Fraction(1, 1000), Fraction(10)
#: Noise redraws behind the coefficients' noise standard errors (post-processing).
NOISE_DRAWS = 40

_NEWTON, _CONCORDANCE = 1, 2
_KIND_NAMES = {_NEWTON: "newton", _CONCORDANCE: "concordance"}
_GO = Header(b"BCXG", 1)
_GO_FIELDS = struct.Struct(">BII")  # kind, step, coefficient count
_TAG_KEY = "cox/key"


class NoiseOffRefusedError(BundError):
    """A job asked for noise-free Cox regression while the test-only switch is off."""


class StepLimitError(BundError):
    """The analyst asked a hospital for a step the approved spec does not hold.

    The hospital computes, charges and sends nothing for it, and its role fails the job.
    """


def _ranges_text(value: str) -> str:
    for item in filter(None, (part.strip() for part in value.split(";"))):
        try:
            _, low, high = item.split(":")
            if not float(high) > float(low):
                raise ValueError
        except ValueError:
            raise ValueError(f"entry {item!r} is not name:low:high with low < high") from None
    return value


class CoxPhParams(ProtocolParams):
    """The parameters of a ``cox_ph`` job (``docs/protocols/cox-ph.md``)."""

    features: str = Field(description="the covariates, comma-separated, each with a public range")
    feature_ranges: Annotated[str, AfterValidator(_ranges_text)] = Field(
        default="",
        description="public ranges of covariates beyond the built-in health ones, "
        "'name:low:high;…'; values are clipped to them",
    )
    upper: Exact = Field(
        description="the horizon: the end of the time grid; later follow-up is censored there"
    )
    bins: int = Field(ge=1, le=16384, description="equal time bins (a, b] over [0, upper]")
    iterations: int = Field(
        default=6, ge=1, le=50, description="Newton iterations: each is one release"
    )
    epsilon: Exact = Field(
        default="1",
        description="the ε of all Newton iterations together (split evenly), charged to every "
        "hospital",
    )
    concordance_bins: int = Field(
        default=20, ge=0, le=1000, description="risk-score bins of the concordance (0: none)"
    )
    concordance_epsilon: Exact = Field(
        default="1/10", description="the ε of the concordance step, charged to every hospital"
    )
    beta_bound: float = Field(
        default=10.0,
        gt=0,
        le=50,
        description="the largest coefficient on covariates scaled onto [-1, 1]",
    )
    min_cell: int = Field(
        default=10,
        ge=1,
        le=1 << 30,
        description="risk sets below it are left out: the deaths from that bin on are censored",
    )
    noise: str = Field(
        default="on", pattern="^(on|off)$", description="'off' only under the test-only switch"
    )


@dataclass(frozen=True)
class Plan:
    """What every party derives from the spec alone."""

    analyst: str
    hospitals: tuple[str, ...]
    features: tuple[str, ...]
    ranges: Mapping[str, tuple[float, float]]
    upper: Fraction
    layout: cox.Layout
    iterations: int
    epsilon: Fraction
    concordance_bins: int
    concordance_epsilon: Fraction
    beta_bound: float
    min_cell: int
    noise: bool

    @property
    def steps(self) -> int:
        """The steps a hospital answers: every iteration, then the concordance if any."""
        return self.iterations + (1 if self.concordance_bins else 0)

    def kind(self, step: int) -> int:
        """The kind the spec puts at ``step``."""
        return _NEWTON if step < self.iterations else _CONCORDANCE

    def step_epsilon(self, step: int) -> Fraction:
        """What ``step`` costs a hospital."""
        return (
            self.epsilon / self.iterations
            if self.kind(step) == _NEWTON
            else (self.concordance_epsilon)
        )

    def cells(self, step: int) -> int:
        """The cells of ``step``'s vector."""
        if self.kind(step) == _NEWTON:
            return self.layout.length
        return 2 * self.layout.bins * self.concordance_bins

    def mechanism(self, step: int) -> DiscreteLaplace:
        """The discrete Laplace mechanism each hospital applies to its own vector of ``step``."""
        if self.kind(step) == _NEWTON:
            sensitivity = self.layout.sensitivity << cox.FRAC_BITS
        else:
            sensitivity = 1
        return DiscreteLaplace.create(self.step_epsilon(step), sensitivity)

    def planned_cost(self) -> Budget:
        """Every step's ε: the most the job charges a hospital."""
        return Budget(sum((self.step_epsilon(s) for s in range(self.steps)), Fraction(0)))


def _ranges(params: CoxPhParams) -> dict[str, tuple[float, float]]:
    ranges = dict(HEALTH_RANGES)
    for item in filter(None, (part.strip() for part in params.feature_ranges.split(";"))):
        name, low, high = item.split(":")
        ranges[name.strip()] = (float(low), float(high))
    return ranges


def plan(spec: JobSpec) -> Plan:
    """Validate ``spec`` as a cox_ph job and derive its plan.

    Raises:
        InvalidJobSpecError: Naming the participant or parameter to fix.
    """
    DEFINITION.check_roles(spec)
    params = CoxPhParams.of(spec)
    analyst = next(p.party for p in spec.participants if p.role == ROLE_ANALYST)
    hospitals = tuple(p.party for p in spec.participants if p.role == ROLE_HOSPITAL)
    ranges = _ranges(params)
    features = tuple(f.strip() for f in params.features.split(","))
    missing = [f for f in features if f not in ranges]
    if not all(features) or missing or len(set(features)) != len(features):
        raise InvalidJobSpecError(
            f"features {missing or list(features)} need distinct names with public ranges "
            "(add them to feature_ranges as name:low:high)"
        )
    if len(features) > cox.MAX_FEATURES:
        raise InvalidJobSpecError(f"a Cox model takes at most {cox.MAX_FEATURES} covariates")
    try:
        upper = parse_rational(str(params.upper), "upper")
        epsilon = parse_rational(str(params.epsilon), "epsilon")
        c_epsilon = parse_rational(str(params.concordance_epsilon), "concordance_epsilon")
    except InvalidInputError as exc:
        raise InvalidJobSpecError(f"cox_ph: {exc}") from None
    return Plan(
        analyst=analyst,
        hospitals=hospitals,
        features=features,
        ranges={f: ranges[f] for f in features},
        upper=upper,
        layout=cox.Layout(len(features), params.bins),
        iterations=params.iterations,
        epsilon=epsilon,
        concordance_bins=params.concordance_bins,
        concordance_epsilon=c_epsilon,
        beta_bound=params.beta_bound,
        min_cell=params.min_cell,
        noise=params.noise == "on",
    )


def _check_noise(p: Plan) -> None:
    if not p.noise and not insecure.insecure_test_parameters_enabled():
        raise NoiseOffRefusedError(
            "noise='off' releases exact sums and is for tests only; remove it (this node's "
            "test-only switch is off, as it must be in production)"
        )


def check(spec: JobSpec) -> None:
    """The checks beyond roles and parameters: ε per step, vector sizes, the noise switch.

    Raises:
        InvalidJobSpecError: Naming the parameter to fix.
        NoiseOffRefusedError: If it asks for noise off while the test-only switch is off.
    """
    p = plan(spec)
    _check_noise(p)
    if not p.upper > 0:
        raise InvalidJobSpecError("upper, the horizon, must be positive")
    if p.epsilon / p.iterations < MIN_STEP_EPSILON or p.epsilon > MAX_EPSILON:
        raise InvalidJobSpecError(
            f"epsilon / iterations must be at least {MIN_STEP_EPSILON} and epsilon at most "
            f"{MAX_EPSILON}: raise epsilon or use fewer iterations"
        )
    if p.concordance_bins and not MIN_STEP_EPSILON <= p.concordance_epsilon <= MAX_EPSILON:
        raise InvalidJobSpecError(
            f"concordance_epsilon must lie in [{MIN_STEP_EPSILON}, {MAX_EPSILON}]"
        )
    for step in range(p.steps):
        if p.cells(step) > pairwise_masks.MAX_LENGTH:
            what = (
                "bins × (2·(2 + p + p(p+1)/2) + p)"
                if p.kind(step) == _NEWTON
                else ("2 × bins × concordance_bins")
            )
            raise InvalidJobSpecError(
                f"a {_KIND_NAMES[p.kind(step)]} step would release {p.cells(step)} cells "
                f"({what}), beyond {pairwise_masks.MAX_LENGTH}: use fewer bins or covariates"
            )
    scale = Fraction(p.layout.sensitivity << cox.FRAC_BITS) * p.iterations / p.epsilon
    if scale > MAX_SCALE:
        raise InvalidJobSpecError("the noise scale is beyond reach: raise epsilon")


# --- messages ---------------------------------------------------------------------------------


def encode_go(kind: int, step: int, beta: npt.ArrayLike) -> bytes:
    """The analyst's step message: ``BCXG``, version 1, kind, step, count, then float64 LE."""
    vector = np.asarray(beta, dtype="<f8")
    return _GO.pack(_GO_FIELDS.pack(kind, step, len(vector)), vector.tobytes())


def decode_go(payload: bytes, features: int) -> tuple[int, int, npt.NDArray[np.float64]]:
    """Check a step message's layout and return ``(kind, step, β)``.

    Raises:
        InvalidMessageError: If the layout, the kind or the coefficient count is wrong.
    """
    body = _GO.split(payload, "a cox_ph step message")
    if len(body) != _GO_FIELDS.size + 8 * features:
        raise InvalidMessageError(f"a cox_ph step message must carry {features} coefficients")
    kind, step, count = _GO_FIELDS.unpack_from(body)
    if kind not in _KIND_NAMES or count != features:
        raise InvalidMessageError(f"a cox_ph step message names kind {kind}, count {count}")
    beta = np.frombuffer(body, dtype="<f8", offset=_GO_FIELDS.size).astype(np.float64)
    return kind, step, beta


def _context(spec: JobSpec, step: int) -> bytes:
    """Binds a step's masks to the job and the step: no two vectors share a mask."""
    return hashlib.sha256(f"bund/cox_ph/v1/{spec.digest()}/{step}".encode()).digest()


# --- a hospital -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Data:
    x: npt.NDArray[np.float64]
    times: npt.NDArray[np.float64]
    events: npt.NDArray[np.float64]


def _load(ctx: JobContext, p: Plan) -> _Data:
    me = ctx.spec.participant(ctx.party)
    table = ctx.table()
    if not 1 <= table.num_rows <= cox.MAX_ROWS:
        raise InvalidJobSpecError(f"{ctx.party}'s dataset needs 1 to {cox.MAX_ROWS} rows")
    columns = {f: table.numeric(me.columns.get(f, f)) for f in p.features}
    times = table.numeric(me.columns.get(TIME, TIME))
    events = table.numeric(me.columns.get(EVENT, EVENT))
    if not np.isin(events, (0.0, 1.0)).all():
        raise InvalidInputError(f"the event column of {ctx.party} must hold 0 and 1 only")
    if not np.all(np.isfinite(times)):
        raise InvalidInputError(f"the time column of {ctx.party} must hold finite numbers")
    clipped = sum(
        int(np.sum((columns[f] < lo) | (columns[f] > hi))) for f, (lo, hi) in p.ranges.items()
    )
    ctx.note_quality("cells_clipped_to_range", clipped)
    return _Data(cox.scale_features(columns, p.ranges), times, events)


def _exchange_keys(ctx: JobContext, p: Plan, key: pairwise_masks.MaskingKey) -> dict[str, bytes]:
    keys = {ctx.party: key.public_bytes()}
    peers = [h for h in p.hospitals if h != ctx.party]
    for peer in peers:
        ctx.send(peer, _TAG_KEY, pairwise_masks.encode_public_key(keys[ctx.party]))
    for peer in peers:
        public = pairwise_masks.decode_public_key(ctx.recv(peer, _TAG_KEY))
        if public in keys.values():
            raise InvalidMessageError(f"{peer} sent a masking key another hospital also uses")
        keys[peer] = public
    return keys


def _admit(ctx: JobContext, p: Plan, step: int, kind: int, sent: int, beta: Any) -> None:
    """Accept step ``step`` only as the spec has it, or refuse before anything is computed."""
    problem = ""
    if sent != step:
        problem = f"step {sent} under the tag of step {step}"
    elif kind != p.kind(step):
        problem = (
            f"a {_KIND_NAMES[kind]} step where the approved spec has a "
            f"{_KIND_NAMES[p.kind(step)]} step ({p.iterations} Newton iteration(s), then "
            f"{'one concordance step' if p.concordance_bins else 'nothing'})"
        )
    elif not np.all(np.isfinite(beta)) or np.abs(beta).max(initial=0.0) > p.beta_bound:
        problem = f"coefficients outside the approved bound of {p.beta_bound}"
    if problem:
        ctx.record(
            "cox_ph.step_refused", {"step": step, "kind": _KIND_NAMES[kind], "reason": problem}
        )
        raise StepLimitError(
            f"step {step} (cox/go/{step}): the analyst asked {ctx.party} for {problem}; "
            f"{ctx.party} computes, charges and sends nothing for it and stops the job"
        )


def _vector(p: Plan, step: int, data: _Data, beta: npt.NDArray[np.float64]) -> list[int]:
    upper = float(p.upper)
    if p.kind(step) == _NEWTON:
        values = cox.contribution(p.layout, data.x, data.times, data.events, upper, beta)
    else:
        values = cox.concordance_vector(
            data.x, data.times, data.events, upper, p.layout.bins, beta, p.concordance_bins
        )
    if p.noise:
        values = values + p.mechanism(step).sample(len(values))
    return [int(v) for v in values]


def run_hospital(ctx: JobContext) -> None:
    """A hospital's side: exchange masking keys, then answer exactly the spec's steps.

    Raises:
        NoiseOffRefusedError: If the job asks for noise off and the test-only switch is off.
        StepLimitError: If the analyst asks for a step the spec does not hold.
        InvalidMessageError: If the analyst's or a peer's message is malformed.
    """
    p = plan(ctx.spec)
    _check_noise(p)
    data = _load(ctx, p)
    key = pairwise_masks.create_masking_key()
    keys = _exchange_keys(ctx, p, key)
    for step in range(p.steps):
        kind, sent, beta = decode_go(ctx.recv(p.analyst, f"cox/go/{step}"), len(p.features))
        _admit(ctx, p, step, kind, sent, beta)
        epsilon = p.step_epsilon(step)
        ctx.charge(f"{_KIND_NAMES[kind]}-{step}", Budget(epsilon))
        values = _vector(p, step, data, beta)
        masked = pairwise_masks.mask_vector(values, key, ctx.party, keys, _context(ctx.spec, step))
        ctx.send(p.analyst, f"cox/masked/{step}", pairwise_masks.encode_vector(masked))
        ctx.record(
            "cox_ph.answered",
            {
                "step": step,
                "kind": _KIND_NAMES[kind],
                "epsilon": format_rational(epsilon),
                "cells": len(values),
                "noise_added_here": p.noise,
            },
        )
        ctx.progress("steps", step + 1, p.steps)


# --- the analyst ------------------------------------------------------------------------------


@dataclass
class _Fit:
    beta: npt.NDArray[np.float64]
    history: list[dict[str, Any]] = field(default_factory=list)
    last: cox.Efron | None = None
    last_sums: cox.Sums | None = None
    last_beta: npt.NDArray[np.float64] | None = None
    kept: int = 0


def _gather(ctx: JobContext, p: Plan, step: int, beta: npt.NDArray[np.float64]) -> list[int]:
    go = encode_go(p.kind(step), step, beta)
    for h in p.hospitals:
        ctx.send(h, f"cox/go/{step}", go)
    vectors = [
        pairwise_masks.decode_vector(ctx.recv(h, f"cox/masked/{step}"), p.cells(step))
        for h in p.hospitals
    ]
    return pairwise_masks.unmask_sum(vectors)


def _noise_se(p: Plan, fit: _Fit) -> npt.NDArray[np.float64]:
    """The coefficients' spread from the DP noise alone (scaled units), by redrawing it.

    The last iteration's sums plus fresh draws of the summed noise (continuous Laplace, as wide
    as every hospital's discrete Laplace together) each give a Newton step from the same
    coefficients; their standard deviation is the noise's share of the error. Post-processing.
    """
    if not p.noise or fit.last_sums is None or fit.last_beta is None:
        return np.zeros(len(p.features))
    mechanism = p.mechanism(0)
    scale = float(mechanism.scale) / float(1 << cox.FRAC_BITS)
    sums = fit.last_sums
    base = np.concatenate([sums.at, sums.dead, sums.x_dead], axis=1).ravel()
    draws = sum(cox.laplace_draws(scale, (NOISE_DRAWS, len(base))) for _ in range(len(p.hospitals)))
    betas = []
    for row in np.asarray(draws):
        noisy = cox.Sums.from_vector(p.layout, (base + row) * float(1 << cox.FRAC_BITS))
        e = cox.efron(noisy, fit.last_beta, noisy.kept_bins(p.min_cell))
        betas.append(cox.newton_step(e, fit.last_beta, p.beta_bound))
    return np.asarray(np.std(np.asarray(betas), axis=0), dtype=np.float64)


def run_analyst(ctx: JobContext) -> Result:
    """Drive the Newton iterations and the concordance step; report the model.

    Raises:
        NoiseOffRefusedError: If the job asks for noise off and the test-only switch is off.
        InvalidMessageError: If a masked vector has the wrong layout or length.
    """
    p = plan(ctx.spec)
    _check_noise(p)
    fit = _Fit(np.zeros(len(p.features)))
    for step in range(p.iterations):
        sums = cox.Sums.from_vector(p.layout, _gather(ctx, p, step, fit.beta))
        kept = sums.kept_bins(p.min_cell)
        e = cox.efron(sums, fit.beta, kept)
        new = cox.newton_step(e, fit.beta, p.beta_bound)
        fit.history.append(
            {
                "iteration": step + 1,
                "log_likelihood": round(e.log_likelihood, 6),
                "step_norm": float(np.abs(new - fit.beta).max()),
                "deaths_used": round(e.deaths),
                "bins_kept": kept,
            }
        )
        fit.last, fit.last_sums, fit.last_beta, fit.kept = e, sums, fit.beta, kept
        fit.beta = new
        ctx.progress("steps", step + 1, p.steps)
    found: cox.Concordance | None = None
    if p.concordance_bins:
        total = _gather(ctx, p, p.iterations, fit.beta)
        found = cox.concordance(total, p.layout.bins, p.concordance_bins)
    return _result(ctx, p, fit, found)


#: The columns of ``coefficients.csv``.
COEFFICIENT_COLUMNS = (
    "covariate",
    "coef",
    "se",
    "se_sampling",
    "se_noise",
    "hazard_ratio",
    "hr_lower_95",
    "hr_upper_95",
    "z",
    "p",
)


def _result(ctx: JobContext, p: Plan, fit: _Fit, found: cox.Concordance | None) -> Result:
    assert fit.last is not None
    unit = np.array([2.0 / (hi - lo) for lo, hi in p.ranges.values()])
    coef = fit.beta * unit
    sampling = np.sqrt(np.maximum(np.diag(cox.covariance(fit.last)), 0.0)) * unit
    noise = _noise_se(p, fit) * unit
    se = np.sqrt(sampling**2 + noise**2)
    rows: list[dict[str, Any]] = []
    for k, name in enumerate(p.features):
        z = coef[k] / se[k] if se[k] > 0 else math.nan
        rows.append(
            {
                "covariate": name,
                "coef": coef[k],
                "se": se[k],
                "se_sampling": sampling[k],
                "se_noise": noise[k],
                "hazard_ratio": math.exp(coef[k]),
                "hr_lower_95": math.exp(coef[k] - Z_95 * se[k]),
                "hr_upper_95": math.exp(coef[k] + Z_95 * se[k]),
                "z": z,
                "p": 2 * normal_sf(abs(z)) if math.isfinite(z) else math.nan,
            }
        )
    summary: dict[str, str | int | float | bool | None] = {
        "covariates": len(p.features),
        "hospitals": len(p.hospitals),
        "iterations": p.iterations,
        "ties": "efron",
        "time_grid": f"{p.layout.bins} bins (a, b] up to {format_rational(p.upper)}",
        "bins_kept": fit.kept,
        "deaths_used": round(fit.last.deaths),
        "log_likelihood": round(fit.last.log_likelihood, 6),
        "last_step": fit.history[-1]["step_norm"],
        "noise": "discrete_laplace" if p.noise else "off (test only)",
        "epsilon": format_rational(p.planned_cost().epsilon),
        "epsilon_newton": format_rational(p.epsilon),
        "epsilon_concordance": format_rational(p.concordance_epsilon)
        if p.concordance_bins
        else "0",
    }
    if found is not None:
        summary.update(
            concordance=round(found.value, 6) if math.isfinite(found.value) else None,
            concordance_tolerance=round(found.tolerance, 6)
            if math.isfinite(found.tolerance)
            else None,
            concordance_bins=p.concordance_bins,
        )
    for row in rows:
        summary[f"hr_{row['covariate']}"] = round(row["hazard_ratio"], 6)
    ctx.record(
        "cox_ph.released",
        {"steps": p.steps, "epsilon": summary["epsilon"], "noise": p.noise},
    )
    title = (
        f"Cox PH across {len(p.hospitals)} hospitals, ε = {summary['epsilon']} "
        f"({'noise on' if p.noise else 'noise off'})"
    )
    artifacts = {
        "coefficients.csv": _csv(COEFFICIENT_COLUMNS, rows),
        "history.csv": _csv(tuple(fit.history[0]), fit.history),
        "hazard_ratios.png": forest_plot(
            [(r["covariate"], r["hazard_ratio"], r["hr_lower_95"], r["hr_upper_95"]) for r in rows],
            title,
        ),
    }
    return Result(summary, artifacts)


def _csv(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.9g}" if isinstance(v, float) else v for k, v in row.items()})
    return out.getvalue().encode()


# --- the job spec -----------------------------------------------------------------------------


def outputs(spec: JobSpec) -> frozenset[str]:
    """What the job releases: a model fitted on noisy (DP) aggregates."""
    return frozenset({"model", "dp_aggregate"})


def learns(spec: JobSpec) -> dict[str, str]:
    """What each party learns, and what each hospital may pay, as the protocol doc states it."""
    p = plan(spec)
    cost = format_rational(p.planned_cost().epsilon)
    noise = (
        "each hospital's vector DP by its own discrete Laplace noise"
        if p.noise
        else ("exact: noise off, test only")
    )
    concordance = (
        f", then one table of deaths and censorings by time bin and {p.concordance_bins} "
        f"risk-score bins (ε = {p.concordance_epsilon})"
        if p.concordance_bins
        else ""
    )
    out = {
        p.analyst: (
            f"{p.iterations} releases of the pooled per-time-bin risk-set and death sums at "
            f"coefficients it chooses (ε = {p.epsilon} together){concordance}, {noise}; never "
            "one hospital's sums; hence the fitted model"
        )
    }
    for h in p.hospitals:
        out[h] = (
            "the other hospitals' masking keys and the coefficients the analyst sends. It "
            f"answers exactly {p.iterations} Newton iteration(s)"
            f"{' and one concordance step' if p.concordance_bins else ''}, whatever the analyst "
            f"asks, so the job charges its dataset at most ε = {cost}"
        )
    return out


def planned_cost(spec: JobSpec, party: str) -> Budget:
    """The most the job charges ``party``'s dataset: every step's ε (nothing without one)."""
    if spec.participant(party).dataset is None:
        return Budget()
    return plan(spec).planned_cost()


def columns(spec: JobSpec, party: str) -> frozenset[str]:
    """The columns of ``party``'s dataset the job reads: covariates, time and event."""
    me = spec.participant(party)
    if me.dataset is None:
        return frozenset()
    names = (*plan(spec).features, TIME, EVENT)
    return frozenset(me.columns.get(c, c) for c in names)


def check_owner(spec: JobSpec, party: str, policy: OwnerTerms) -> None:
    """A hospital's own terms at its admission: no identifier columns, its cohort floor.

    Raises:
        PolicyRefusedError: Naming the rule and the fix.
    """
    me = spec.participant(party)
    if me.dataset is None:
        return
    p = plan(spec)
    identifying = policy.identifying(me.dataset, me.columns)
    hits = sorted(c for c in (*p.features, TIME, EVENT) if me.columns.get(c, c) in identifying)
    if hits:
        raise PolicyRefusedError(
            f"{party}'s dataset {me.dataset!r} declares {hits} identifier columns: a Cox model "
            "may not use an identifier as a covariate, time or event"
        )
    if p.min_cell < policy.cohort_floor:
        raise PolicyRefusedError(
            f"min_cell = {p.min_cell} is below {party}'s cohort floor of {policy.cohort_floor}: "
            f"set min_cell to at least {policy.cohort_floor}"
        )


def plan_messages(spec: JobSpec, party: str, limits: Mapping[str, int]) -> MessagePlan:
    """What one peer may send ``party``, from the spec: nothing beyond the spec's steps.

    A hospital gets one key from each peer hospital and one step message per step from the
    analyst; the analyst one masked vector per step from each hospital.
    """
    p = plan(spec)
    if party == p.analyst:
        largest = max(p.cells(s) for s in range(p.steps))
        return MessagePlan(
            max_messages=p.steps,
            max_bytes=p.steps * (64 + 8 * largest),
            tags=(r"cox/masked/\d+",),
        )
    return MessagePlan(
        max_messages=p.steps + 1,
        max_bytes=64 + p.steps * (64 + 8 * len(p.features)),
        tags=(re.escape(_TAG_KEY), r"cox/go/\d+"),
    )


#: The protocol as registered in ``bund.parties.protocols.PROTOCOLS``.
DEFINITION = ProtocolDef(
    name="cox_ph",
    version="1",
    roles={ROLE_HOSPITAL: run_hospital, ROLE_ANALYST: run_analyst},
    params=CoxPhParams,
    role_requirements={
        ROLE_HOSPITAL: RoleRequirement(
            min=2,
            max=pairwise_masks.MAX_CONTRIBUTORS,
            receives=False,
            who="each with its patients' dataset",
            why="so that the analyst only ever unmasks a sum",
        ),
        ROLE_ANALYST: RoleRequirement(dataset=False, receives=True, who="who receives the model"),
    },
    check=check,
    outputs=outputs,
    learns=learns,
    cost=planned_cost,
    pays_as_it_goes=True,
    description="Cox proportional-hazards regression across hospitals: Newton iterations over "
    "masked per-bin sums, each hospital adding its own discrete Laplace noise",
    plan=plan_messages,
    columns=columns,
    check_owner=check_owner,
)
