"""Cross-hospital DP statistics: who sends what to whom (the maths is in ``bund.compute.dp``).

Roles: every hospital is a ``contributor`` with its dataset; one ``analyst`` (an insurer, a
regulator's statistician, or a hospital that contributes too when it names a dataset) receives
the result. The query is the job's flat parameters (``bund.compute.dp.stats.parse_query``) plus
``noise`` (``"on"``, the default; ``"off"`` only under the test-only switch).

Messages (``docs/protocols/dp-statistics.md`` has layouts and what each role learns):

1. ``dp/key``: each contributor to every other contributor: its fresh X25519 masking key (40 B).
2. ``dp/masked``: each contributor to the analyst: its integer vector plus its own discrete
   Laplace noise plus its pairwise masks, mod 2^64 (12 + 8·cells bytes). Every contributor noises
   its own vector with noise that alone meets the query's ε (or, under a collusion threshold ``t``
   its policy accepts, a share that meets ε while at most ``t − 1`` others collude), sized from the
   query it parsed itself; whatever the others add, the analyst unmasks only a noisy aggregate.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from bund.compute import insecure
from bund.compute.dp import pairwise_masks
from bund.compute.dp.budget import Budget, format_rational
from bund.compute.dp.mechanisms import (
    MAX_SHARE_WORK,
    DiscreteLaplace,
    DiscreteLaplaceShare,
    SummedNoise,
)
from bund.compute.dp.stats import (
    MAX_CELLS,
    MAX_EPSILON,
    MAX_SURVIVAL_BINS,
    MIN_EPSILON,
    Query,
    QueryKind,
    Release,
    parse_query,
    survival_curves,
    uncounted,
)
from bund.compute.dp.stats import contribution as compute_contribution
from bund.compute.dp.stats import release as compute_release
from bund.compute.errors import BundError, InvalidInputError, InvalidMessageError
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
from bund.parties.protocols.plots import png
from bund.parties.schema import Exact

ROLE_CONTRIBUTOR = "contributor"
ROLE_ANALYST = "analyst"
#: The parameter that turns noise off; only ``"on"`` is accepted without the test-only switch.
PARAM_NOISE = "noise"
#: The parameter that lets contributors add noise shares (``collusion_threshold = t``).
PARAM_THRESHOLD = "collusion_threshold"
#: Confidence of the noise band drawn on histograms and survival curves.
BAND_CONFIDENCE = 0.95
#: Noise redraws behind the survival curve's noise band (post-processing, no privacy cost).
BAND_DRAWS = 200

#: The kinds of query, as a job spec names them (``bund.compute.dp.stats.QueryKind``).
QueryKindName = Literal["count", "sum", "mean", "histogram", "contingency", "quantiles", "survival"]

_TAG_KEY = "dp/key"
_TAG_MASKED = "dp/masked"


class NoiseOffRefusedError(BundError):
    """A job asked for noise-free DP statistics while the test-only switch is off."""


@dataclass(frozen=True)
class Plan:
    """What every party derives from the spec alone: the query, who contributes, how they noise.

    Every contributor adds noise to its own vector. Without a collusion threshold each adds a
    whole draw of every block's mechanism, which alone makes the release ε-DP for its records;
    with ``threshold = t`` each adds a ``1/shares`` part, ``shares = n − t + 1``: any ``shares``
    honest contributors' parts add up to a whole draw.
    """

    query: Query
    analyst: str
    contributors: tuple[str, ...]
    noise: bool
    threshold: int | None = None

    @property
    def shares(self) -> int:
        """How many contributors' parts add up to one whole draw (1: each adds a whole draw)."""
        if self.threshold is None:
            return 1
        return max(1, len(self.contributors) - self.threshold + 1)

    def mechanisms(self) -> list[DiscreteLaplace]:
        """One discrete Laplace mechanism per block: a whole draw meets the block's share of ε."""
        return [DiscreteLaplace.create(b.epsilon, b.sensitivity) for b in self.query.blocks]

    def noises(self) -> list[SummedNoise]:
        """Per block, the noise the release carries: every contributor's part added up."""
        return [SummedNoise(m, len(self.contributors), self.shares) for m in self.mechanisms()]


class DpStatsParams(ProtocolParams):
    """The parameters of a ``dp_stats`` job: the query, and the noise switch.

    Which of the optional ones a query takes depends on its kind; ``query()`` checks the whole
    query with ``bund.compute.dp.stats.parse_query``.
    """

    noun: ClassVar[str] = "query parameters"

    kind: QueryKindName = Field(description="the statistic to release")
    epsilon: Exact = Field(
        description=f"the query's privacy loss, in [{MIN_EPSILON}, {MAX_EPSILON}]; charged to "
        "every contributing dataset"
    )
    min_cell: int = Field(
        ge=1, le=1 << 30, description="cells whose noisy count is below it are suppressed"
    )
    filter: str | None = Field(
        default=None,
        description="cohort filter such as 'age>=65;sex=M;diagnosis=I50|I21' (default: all)",
    )
    column: str | None = Field(
        default=None,
        description="the value column (sum, mean, numeric histogram, quantiles), the row "
        "category column (contingency) or the follow-up time column (survival)",
    )
    lower: Exact | None = Field(
        default=None,
        description="lower clamping bound or bin range (sum, mean, histogram, quantiles); "
        "0 for survival",
    )
    upper: Exact | None = Field(
        default=None, description="upper clamping bound or bin range; the horizon for survival"
    )
    resolution: Exact | None = Field(
        default=None, description="the unit values are rounded to (sum, mean; default 1)"
    )
    bins: int | None = Field(
        default=None,
        ge=1,
        le=max(MAX_CELLS, MAX_SURVIVAL_BINS),
        description=f"equal-width bins in [lower, upper] (numeric histogram and quantiles: up to "
        f"{MAX_CELLS}; survival time grid: up to {MAX_SURVIVAL_BINS})",
    )
    categories: str | None = Field(
        default=None, description="'a|b|c' categories (categorical histogram; contingency rows)"
    )
    column2: str | None = Field(
        default=None,
        description="the column category column (contingency); the stratum column (survival)",
    )
    categories2: str | None = Field(
        default=None,
        description="'a|b|c' column categories (contingency); the strata (survival: one curve "
        "each, and the log-rank test across them)",
    )
    event: str | None = Field(default=None, description="the 0/1 event column (survival)")
    quantiles: str | None = Field(
        default=None, description="the quantiles to release, '1/4|1/2|3/4'"
    )
    noise: Literal["on", "off"] = Field(
        default="on", description="'off' releases exact statistics: only under the test-only switch"
    )
    collusion_threshold: int | None = Field(
        default=None,
        ge=1,
        le=pairwise_masks.MAX_CONTRIBUTORS,
        description="t: each contributor adds a 1/(n-t+1) share of the noise, which meets ε only "
        "while at most t-1 other contributors collude with the analyst; every contributor's "
        "policy must accept t (dp_collusion_threshold). Default: each adds the whole noise",
    )

    def query(self) -> Query:
        """The validated query.

        Raises:
            InvalidJobSpecError: Naming the query parameter to fix.
        """
        try:
            query = self.model_dump(exclude_none=True, exclude={PARAM_NOISE, PARAM_THRESHOLD})
            return parse_query(query)
        except InvalidInputError as exc:
            raise InvalidJobSpecError(f"dp_stats query: {exc}") from None


def plan(spec: JobSpec) -> Plan:
    """Validate ``spec`` as a dp_stats job and derive its plan.

    Raises:
        InvalidJobSpecError: Naming the participant or parameter to fix.
    """
    DEFINITION.check_roles(spec)
    params = DpStatsParams.of(spec)
    analyst = next(p.party for p in spec.participants if p.role == ROLE_ANALYST)
    contributors = tuple(p.party for p in spec.participants if p.dataset is not None)
    if len(contributors) > pairwise_masks.MAX_CONTRIBUTORS:
        raise InvalidJobSpecError(f"at most {pairwise_masks.MAX_CONTRIBUTORS} contributors")
    return Plan(
        params.query(), analyst, contributors, params.noise == "on", params.collusion_threshold
    )


def _check_noise(p: Plan) -> None:
    if not p.noise and not insecure.insecure_test_parameters_enabled():
        raise NoiseOffRefusedError(
            f"{PARAM_NOISE}='off' releases exact statistics and is for tests only; remove it (this "
            "node's test-only switch is off, as it must be in production)"
        )


@dataclass
class _State:
    """One contributor's run: its plan, its masking key, and the peers' keys as they arrive."""

    ctx: JobContext
    plan: Plan
    key: pairwise_masks.MaskingKey
    public_keys: dict[str, bytes] = field(default_factory=dict)
    noise_added: bool = False


def _masking_key(ctx: JobContext) -> pairwise_masks.MaskingKey:
    """The job's masking key: fresh, and saved before its public half is sent."""
    saved = ctx.load_state("dp.key")
    if saved is not None:
        return pairwise_masks.MaskingKey.from_resume_state(saved)
    key = pairwise_masks.create_masking_key()
    ctx.save_state("dp.key", key.export_for_resume())
    return key


def _own_vector(s: _State) -> list[int]:
    """This party's contribution, computed from its own table through its column bindings."""
    query = s.plan.query
    me = s.ctx.spec.participant(s.ctx.party)
    table = s.ctx.table()
    columns = {name: table.column(me.columns.get(name, name)) for name in query.columns}
    vector = compute_contribution(query, columns, table.num_rows)
    outside = uncounted(query, columns, table.num_rows)
    if outside is not None:
        s.ctx.note_quality("rows_outside_categories", outside)
    return vector


def _exchange_keys(s: _State) -> None:
    """Message 1 both ways between every pair of contributors."""
    me, ctx = s.ctx.party, s.ctx
    s.public_keys[me] = s.key.public_bytes()
    peers = [c for c in s.plan.contributors if c != me]
    for peer in peers:
        ctx.send(peer, _TAG_KEY, pairwise_masks.encode_public_key(s.public_keys[me]))
    for peer in peers:
        public = pairwise_masks.decode_public_key(ctx.recv(peer, _TAG_KEY))
        if public in s.public_keys.values():
            raise InvalidMessageError(f"{peer} sent a masking key another contributor also uses")
        s.public_keys[peer] = public


def _masked_vector(s: _State) -> npt.NDArray[np.uint64]:
    """This party's contribution plus its own noise, masked.

    The noise is sized here, from the query this party parsed from the spec and the clamping its
    own contribution applies, never from a figure another party sent: a whole draw of each
    block's mechanism, or the ``1/shares`` part the spec's collusion threshold (which this
    node's policy accepted at admission) allows.
    """
    vector = np.array(_own_vector(s), dtype=object)
    if s.plan.noise:
        blocks = zip(s.plan.mechanisms(), s.plan.query.blocks, strict=True)
        parts = [DiscreteLaplaceShare.create(m, s.plan.shares) for m, _ in blocks]
        noise = [part.sample(b.length) for part, b in zip(parts, s.plan.query.blocks, strict=True)]
        vector = vector + np.concatenate(noise).astype(object)
        s.noise_added = True
    context = bytes.fromhex(s.ctx.spec.digest())
    return pairwise_masks.mask_vector(
        [int(v) for v in vector], s.key, s.ctx.party, s.public_keys, context
    )


def _contribute(ctx: JobContext) -> tuple[_State, npt.NDArray[np.uint64]]:
    """Agree the masks and make the masked vector, or restore the one an earlier run made.

    The masked vector is saved before it is sent: a resumed contributor re-sends the same
    bytes, so the noise is drawn once, whatever happens (a second draw would release more).
    """
    s = _State(ctx, plan(ctx.spec), _masking_key(ctx))
    _check_noise(s.plan)
    _exchange_keys(s)
    saved = ctx.load_state("dp.masked")
    if saved is not None:
        masked = pairwise_masks.decode_vector(saved[1:], s.plan.query.length)
        s.noise_added = saved[:1] == b"\x01"
        return s, masked
    masked = _masked_vector(s)
    ctx.save_state(
        "dp.masked", (b"\x01" if s.noise_added else b"\x00") + pairwise_masks.encode_vector(masked)
    )
    return s, masked


def run_contributor(ctx: JobContext) -> None:
    """Run one hospital's side: agree masks, send its masked, noised vector.

    Raises:
        NoiseOffRefusedError: If the job asks for noise off and the test-only switch is off.
        InvalidMessageError: If a peer's key message is malformed or repeats another's key.
        InvalidKeyError: If a peer's public key is of low order.
    """
    s, masked = _contribute(ctx)
    ctx.send(s.plan.analyst, _TAG_MASKED, pairwise_masks.encode_vector(masked))
    ctx.record("dp_stats.contributed", _audit_fields(s.plan, noise_added=s.noise_added))


def run_analyst(ctx: JobContext) -> Result:
    """Collect the masked vectors, unmask only the noisy aggregate, and build the release.

    Raises:
        NoiseOffRefusedError: If the job asks for noise off and the test-only switch is off.
        InvalidMessageError: If a masked vector has the wrong layout or length.
    """
    p = plan(ctx.spec)
    _check_noise(p)
    vectors: list[npt.NDArray[np.uint64]] = []
    if ctx.party in p.contributors:
        _, own = _contribute(ctx)
        vectors.append(own)
    for c in p.contributors:
        if c != ctx.party:
            vectors.append(pairwise_masks.decode_vector(ctx.recv(c, _TAG_MASKED), p.query.length))
    aggregate = pairwise_masks.unmask_sum(vectors)
    draws = _noise_draws(p)
    table = compute_release(p.query, aggregate, draws)
    artifacts = {"result.csv": _csv(table)}
    plot = _plot(p, aggregate, draws)
    if plot is not None:
        artifacts[f"{p.query.kind.value}.png"] = plot
    fields = _audit_fields(p, noise_added=False)
    fields["suppressed_cells"] = table.suppressed
    ctx.record("dp_stats.released", fields)
    summary: dict[str, str | int | float | bool | None] = {
        "kind": p.query.kind.value,
        "epsilon": format_rational(p.query.epsilon),
        "noise": "discrete_laplace" if p.noise else "off (test only)",
        "cells": p.query.length,
        "suppressed_cells": table.suppressed,
        "contributors": len(p.contributors),
        "noise_share": f"1/{p.shares}",
        "collusion_threshold": p.threshold,
    }
    for block, noise in zip(p.query.blocks, p.noises(), strict=True):
        summary[f"scale_{block.name}"] = float(noise.whole.scale)
        if p.noise:
            summary[f"noise_sd_{block.name}"] = round(noise.variance() ** 0.5, 6)
    if len(table.rows) <= 3 and table.header == ("statistic", "value"):
        for name, value in table.rows:
            summary[str(name)] = value
    summary.update(table.figures)
    return Result(summary, artifacts)


def _noise_draws(p: Plan) -> npt.NDArray[np.int64] | None:
    """Fresh draws of a survival release's summed noise, for its bands; None otherwise.

    Post-processing: the draws describe the noise the release carries and protect nothing.
    """
    if not p.noise or p.query.kind is not QueryKind.SURVIVAL:
        return None
    (noise,) = p.noises()
    return noise.sample(BAND_DRAWS * p.query.length).reshape(BAND_DRAWS, -1)


def _audit_fields(p: Plan, *, noise_added: bool) -> dict[str, str | int | float | bool | None]:
    return {
        "kind": p.query.kind.value,
        "epsilon": format_rational(p.query.epsilon),
        "cells": p.query.length,
        "noise": p.noise,
        "noise_added_here": noise_added,
        "noise_share": f"1/{p.shares}",
        "collusion_threshold": p.threshold,
    }


def _csv(table: Release) -> bytes:
    """``result.csv``: the header, then one row per cell; a suppressed cell is ``suppressed``."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.header)
    for row in table.rows:
        writer.writerow(["suppressed" if c is None else c for c in row])
    return out.getvalue().encode()


def _plot(p: Plan, aggregate: list[int], draws: npt.NDArray[np.int64] | None) -> bytes | None:
    """A PNG with the noise band for histograms and survival curves; None for other kinds."""
    kind = p.query.kind
    if kind not in (QueryKind.HISTOGRAM, QueryKind.SURVIVAL):
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    (noise,) = p.noises()
    noise_note = (
        f"discrete Laplace from each of {noise.parties}, sd {noise.variance() ** 0.5:.3g}"
        if p.noise
        else "noise off"
    )
    if kind is QueryKind.HISTOGRAM:
        labels = list(p.query.categories) or [f"{float(a):g}" for a in p.query.bin_edges()[:-1]]
        shown = [x if x >= p.query.min_cell else 0 for x in aggregate]
        axes.bar(range(len(shown)), shown, color="#4c72b0", label="noisy count")
        if p.noise:
            k = noise.half_width(BAND_CONFIDENCE)
            axes.errorbar(
                range(len(shown)),
                shown,
                yerr=k,
                fmt="none",
                ecolor="#c44e52",
                label=f"{BAND_CONFIDENCE:.0%} noise band (±{k})",
            )
        axes.set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
        axes.set_ylabel("records")
        axes.set_title(f"{p.query.column}: ε = {p.query.epsilon} ({noise_note})")
    else:
        _survival_axes(axes, p, aggregate, draws)
        axes.set_title(f"Kaplan–Meier, ε = {p.query.epsilon} ({noise_note})")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return png(figure)


def _survival_axes(
    axes: Any, p: Plan, aggregate: list[int], draws: npt.NDArray[np.int64] | None
) -> None:
    """Each stratum's step curve and its 95 % band (sampling and, with noise on, DP noise)."""
    curves = survival_curves(p.query, aggregate, draws)
    times = [0.0, *(float(e) for e in p.query.bin_edges()[1:])]
    colours = ("#4c72b0", "#c44e52", "#55a868", "#8172b2", "#ccb974", "#64b5cd")
    names = p.query.categories2 or ("KM",)
    band = "Greenwood + noise" if p.noise else "Greenwood"
    for k, (name, c) in enumerate(zip(names, curves, strict=True)):
        colour = colours[k % len(colours)]
        axes.step(times, [1.0, *c.survival], where="post", color=colour, label=name)
        axes.fill_between(
            times,
            [1.0, *c.lower],
            [1.0, *c.upper],
            step="post",
            alpha=0.2,
            color=colour,
            label=f"{BAND_CONFIDENCE:.0%} band ({band})" if k == 0 else None,
        )
    axes.set_ylim(0, 1.02)
    axes.set_xlabel(p.query.column or "time")
    axes.set_ylabel("survival")


def check(spec: JobSpec) -> None:
    """The checks beyond roles and parameters: the query, the noise switch, the threshold.

    Raises:
        InvalidJobSpecError: Naming the query parameter to fix.
        NoiseOffRefusedError: If it asks for noise off while the test-only switch is off.
    """
    p = plan(spec)
    _check_noise(p)
    n = len(p.contributors)
    if p.threshold is not None and p.threshold > n:
        raise InvalidJobSpecError(
            f"{PARAM_THRESHOLD} = {p.threshold} exceeds the {n} contributors; t = {n} already "
            f"has every contributor add the whole noise: set t to at most {n} or leave it out"
        )
    if p.noise and p.shares > 1:
        blocks = zip(p.query.blocks, p.mechanisms(), strict=True)
        work = sum(b.length * max(1, math.ceil(m.scale)) for b, m in blocks)
        if work > MAX_SHARE_WORK:
            raise InvalidJobSpecError(
                f"noise shares are drawn exactly, in time that grows with cells × noise scale "
                f"({work} here, at most {MAX_SHARE_WORK}): raise epsilon, narrow the bounds, use "
                f"fewer cells, or leave {PARAM_THRESHOLD} out"
            )


def columns(spec: JobSpec, party: str) -> frozenset[str]:
    """The columns of ``party``'s dataset the job reads: the query's, through its bindings."""
    me = spec.participant(party)
    if me.dataset is None:
        return frozenset()
    query = DpStatsParams.of(spec).query()
    return frozenset({me.columns.get(c, c) for c in query.columns} | set(me.columns.values()))


def check_owner(spec: JobSpec, party: str, policy: OwnerTerms) -> None:
    """A contributor's own terms, at its admission: identifiers, its floor, its threshold.

    The query may not read a column the owner's policy declares an identifier (a filter or a
    category on a patient id singles out one person); a query whose released counts are
    suppressed below ``min_cell`` must set it at least to the owner's cohort floor (survival is
    exempt: its noise is its protection); a collusion threshold must be one the owner's policy
    accepts. The floor is a heuristic against a careless analyst, since the analyst suppresses:
    the noise and the ε charged for it are the control.

    Raises:
        PolicyRefusedError: Naming the rule and the fix.
    """
    me = spec.participant(party)
    if me.dataset is None:
        return
    p = plan(spec)
    identifying = policy.identifying(me.dataset, me.columns)
    hits = sorted(c for c in p.query.columns if me.columns.get(c, c) in identifying)
    if hits:
        raise PolicyRefusedError(
            f"{party}'s dataset {me.dataset!r} declares {hits} identifier columns: a DP query may "
            "not filter or group on an identifier, which can single out one person; query the "
            "cohort by its attributes instead"
        )
    if p.query.floored and p.query.min_cell < policy.cohort_floor:
        raise PolicyRefusedError(
            f"min_cell = {p.query.min_cell} is below {party}'s cohort floor of "
            f"{policy.cohort_floor}: set min_cell to at least {policy.cohort_floor}"
        )
    accepted = policy.dp_collusion_threshold
    if p.threshold is not None and (accepted is None or p.threshold < accepted):
        lowest = "accepts no noise shares" if accepted is None else f"accepts t >= {accepted}"
        raise PolicyRefusedError(
            f"{PARAM_THRESHOLD} = {p.threshold} lets each contributor add a share of the noise "
            f"that meets ε only while at most {p.threshold - 1} others collude; {party}'s policy "
            f"{lowest} (dp_collusion_threshold in policy.toml): leave {PARAM_THRESHOLD} out"
        )


def validate(spec: JobSpec) -> None:
    """Check that ``spec`` is a runnable dp_stats job (``DEFINITION.validate``).

    Raises:
        InvalidJobSpecError: Naming the field to fix.
        NoiseOffRefusedError: If it asks for noise off while the test-only switch is off.
    """
    DEFINITION.validate(spec)


def outputs(spec: JobSpec) -> frozenset[str]:
    """What the job releases: a differentially private aggregate, nothing else."""
    return frozenset({"dp_aggregate"})


def _noise_terms(p: Plan) -> str:
    """How a contributor noises its figures, in words, for the approver."""
    eps = p.query.epsilon
    n = len(p.contributors)
    if p.threshold is None or p.shares == 1:
        return (
            f"it adds noise to its own figures that alone meets ε = {eps} whoever else colludes "
            f"(the release carries {n} times the variance of one draw)"
        )
    return (
        f"it adds a 1/{p.shares} share of the noise, which meets ε = {eps} only while at most "
        f"{p.threshold - 1} of the other contributors collude with the analyst (collusion "
        f"threshold t = {p.threshold}; a contributing analyst counts among them)"
    )


def learns(spec: JobSpec) -> dict[str, str]:
    """What each party learns, as ``docs/protocols/dp-statistics.md`` states it."""
    p = plan(spec)
    out: dict[str, str] = {}
    for party in spec.parties:
        if party == p.analyst:
            out[party] = (
                f"the noisy {p.query.kind.value} over all contributors' pooled records "
                f"(ε = {p.query.epsilon}), with cells below min_cell = {p.query.min_cell} "
                "suppressed; no single hospital's figures"
            )
            if party in p.contributors:
                out[party] += f"; as a contributor, {_noise_terms(p)}"
        else:
            out[party] = f"nothing but the other contributors' masking keys; {_noise_terms(p)}"
    return out


def cost(spec: JobSpec, party: str) -> Budget:
    """The query's ε, charged to every contributing dataset; nothing for a party without one.

    The ε is the sum of the shares of the query's blocks, each the loss bound of its discrete
    Laplace mechanism, so the cost is what the mechanisms guarantee, exactly.
    """
    if spec.participant(party).dataset is None:
        return Budget()
    p = plan(spec)
    total = sum((mech.epsilon for mech in p.mechanisms()), Fraction(0))
    return Budget(total)


#: The protocol as registered in ``bund.parties.protocols.PROTOCOLS``.
DEFINITION = ProtocolDef(
    name="dp_stats",
    version="1",
    roles={ROLE_CONTRIBUTOR: run_contributor, ROLE_ANALYST: run_analyst},
    params=DpStatsParams,
    role_requirements={
        ROLE_CONTRIBUTOR: RoleRequirement(
            min=2,
            max=pairwise_masks.MAX_CONTRIBUTORS,
            receives=False,
            who="a hospital",
            why="at least two contributors besides the analyst, so that the analyst never "
            "unmasks a single other hospital's figures",
        ),
        ROLE_ANALYST: RoleRequirement(dataset=False, receives=True, who="who receives the result"),
    },
    check=check,
    outputs=outputs,
    learns=learns,
    cost=cost,
    description="Cross-hospital DP statistics: secure aggregation, each hospital adding its own "
    "discrete Laplace noise",
    resumable=True,
    columns=columns,
    check_owner=check_owner,
)
