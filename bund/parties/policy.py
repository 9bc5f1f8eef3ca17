"""A node's own policy (``policy.toml``): catalog, classification, counterparties, floors, budgets.

Every participant checks a job against its own policy before anything runs; a refusal names the
rule and where to change it. The file is read once at start-up and parsed by one declared schema
(:class:`PolicyFile`): unknown keys are refused, suggesting the nearest known one, and every error
names the file and the dotted key to fix.

Classification levels, from least to most protected, and what each allows by default:

=====================  =====================================  ==================================
level                  protocols                              outputs
=====================  =====================================  ==================================
public                 every protocol                         every output, raw export included
internal               every protocol                         every output but raw export
confidential           psi, psi_multi, psi_unbalanced,        intersection, membership,
                       woe_iv, vertical_lr, vertical_score,   cardinality, dp_aggregate, model,
                       vertical_secureboost,                  score, payload
                       vertical_tree_score, serving_contract,
                       dp_stats, ckks_scoring,
                       paillier_scoring, fed_dp_sgd, cox_ph
restricted-personal    psi, psi_multi, psi_unbalanced,        cardinality, dp_aggregate, model,
                       woe_iv, vertical_lr, vertical_score,   score (never which individuals)
                       vertical_secureboost,
                       vertical_tree_score, serving_contract,
                       dp_stats, ckks_scoring,
                       paillier_scoring, fed_dp_sgd, cox_ph
=====================  =====================================  ==================================

A dataset entry may narrow its level's protocols further, never widen them. ``membership`` is
declared per direction (:func:`membership_output`): a protocol that aligns by PSI names each
party that learns which ids another party's dataset holds; a dataset whose level forbids
membership allows it only towards the parties its entry names in ``reveal_membership_to``.
``payload`` (columns of matched records, labeled PSI) is released only for the columns the entry
names in ``payload_columns``. A level that never releases which individuals (``intersection``)
guards membership against every counterparty the entry does not name in
``trusted_counterparties``; protocols read that through :meth:`Policy.guards_membership`
(cardinality PSI, for one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field

from bund.compute.dp.budget import Budget, parse_rational
from bund.compute.dp.pairwise_masks import MAX_CONTRIBUTORS
from bund.compute.errors import BundError, InvalidInputError
from bund.parties.identity import ROLES
from bund.parties.jobs import JobSpec
from bund.parties.ledger import BudgetLimits
from bund.parties.schema import (
    Exact,
    Expect,
    Name,
    OneOf,
    StrictModel,
    Text,
    parse_file,
    read_toml,
)


class PolicyRefusedError(BundError):
    """This node's policy does not allow the job; the message names the rule to change."""


class PolicyFileError(BundError):
    """``policy.toml`` is missing, malformed or inconsistent; the message names the key."""


#: The name of the approver that ``[approvals] approver_key`` declares.
APPROVER = "approver"
#: Every kind of output a protocol can release.
OUTPUTS = frozenset(
    {
        "raw",
        "intersection",
        "membership",
        "cardinality",
        "dp_aggregate",
        "model",
        "score",
        "payload",
    }
)
#: The output kind of a membership revealed in one direction: ``membership:OWNER>LEARNER``.
MEMBERSHIP = "membership"
#: Protocols allowed at the two protected levels.
_PROTECTED_PROTOCOLS = frozenset(
    {
        "psi",
        "psi_multi",
        "psi_unbalanced",
        "woe_iv",
        "vertical_lr",
        "vertical_score",
        "serving_contract",
        "vertical_secureboost",
        "vertical_tree_score",
        "dp_stats",
        "ckks_scoring",
        "paillier_scoring",
        "fed_dp_sgd",
        "cox_ph",
    }
)
#: The logical-column prefix under which a job binds the payload columns it releases.
PAYLOAD_PREFIX = "payload."
ANY_PROTOCOL = "*"


def membership_output(owner: str, learner: str) -> str:
    """The output kind by which ``learner`` learns which ids ``owner``'s dataset holds.

    >>> membership_output("tax", "bank")
    'membership:tax>bank'
    """
    return f"{MEMBERSHIP}:{owner}>{learner}"


def membership_directions(outputs: frozenset[str]) -> list[tuple[str, str]]:
    """The ``(owner, learner)`` pairs of the membership outputs among ``outputs``, sorted."""
    prefix = MEMBERSHIP + ":"
    pairs = (o.removeprefix(prefix).partition(">") for o in outputs if o.startswith(prefix))
    return sorted((owner, learner) for owner, _, learner in pairs)


@dataclass(frozen=True)
class LevelRules:
    """What one classification level allows."""

    protocols: frozenset[str]
    outputs: frozenset[str]

    def allows_protocol(self, protocol: str) -> bool:
        """Whether ``protocol`` may run on data of this level."""
        return ANY_PROTOCOL in self.protocols or protocol in self.protocols


LEVELS: Mapping[str, LevelRules] = {
    "public": LevelRules(frozenset({ANY_PROTOCOL}), OUTPUTS),
    "internal": LevelRules(frozenset({ANY_PROTOCOL}), OUTPUTS - {"raw"}),
    "confidential": LevelRules(
        _PROTECTED_PROTOCOLS,
        frozenset(
            {
                "intersection",
                "membership",
                "cardinality",
                "dp_aggregate",
                "model",
                "score",
                "payload",
            }
        ),
    ),
    "restricted-personal": LevelRules(
        _PROTECTED_PROTOCOLS, frozenset({"cardinality", "dp_aggregate", "model", "score"})
    ),
}


@dataclass(frozen=True)
class DatasetPolicy:
    """One catalog entry: owner, classification, allowed protocols, version pin, budget."""

    owner: str
    level: str
    protocols: frozenset[str] | None = None
    version: str | None = None
    budget: Budget = field(default_factory=Budget)
    #: Who may receive per-record scores of this dataset when it is restricted-personal.
    release_scores_to: frozenset[str] = frozenset()
    #: Who may ask for and receive noise-free survival, log-rank and Cox aggregates of it.
    exact_aggregates_to: frozenset[str] = frozenset()
    #: The most ε one job may charge this dataset (None: up to the total).
    max_epsilon_per_job: Fraction | None = None
    #: The most ε all jobs of one requester may charge this dataset (None: up to the total).
    max_epsilon_per_requester: Fraction | None = None
    #: Counterparties trusted to run unmodified node code with this dataset (semi-honest).
    trusted_counterparties: frozenset[str] = frozenset()
    #: Columns whose values labeled PSI may release for matched records (output ``payload``).
    payload_columns: frozenset[str] = frozenset()
    #: Columns that single out a person (no query may filter or group on them); None: the
    #: column a job binds as ``id``.
    identifiers: frozenset[str] | None = None
    #: Parties that may learn which ids this dataset holds where its level forbids membership.
    reveal_membership_to: frozenset[str] = frozenset()

    def guards_membership(self, counterparty: str) -> bool:
        """Whether this dataset must not reveal to ``counterparty`` which individuals it holds.

        True when its level never releases ``intersection`` and the counterparty is not
        trusted: protocols then keep every value that a modified peer could turn into
        membership (cardinality PSI's re-blinded set, an exact count) from it.
        """
        return (
            "intersection" not in self.rules.outputs
            and counterparty not in self.trusted_counterparties
        )

    @property
    def budget_limits(self) -> BudgetLimits:
        """The total and the caps, as the ledger enforces them."""
        return BudgetLimits(self.budget, self.max_epsilon_per_job, self.max_epsilon_per_requester)

    def identifying(self, bindings: Mapping[str, str]) -> frozenset[str]:
        """The identifier columns for a job that binds ``bindings`` (logical -> own column)."""
        if self.identifiers is not None:
            return self.identifiers
        return frozenset({bindings.get("id", "id")})

    @property
    def rules(self) -> LevelRules:
        """The level's rules, narrowed by this entry's own protocol list."""
        base = LEVELS[self.level]
        if self.protocols is None:
            return base
        narrowed = frozenset(p for p in self.protocols if base.allows_protocol(p))
        return LevelRules(narrowed, base.outputs)


#: Limits a node sets for every job, with their defaults.
DEFAULT_LIMITS: Mapping[str, int] = {
    "psi_max_set_size": 100_000_000,
    "psi_unbalanced_max_queries": 1_000_000,
    "psi_spill_rows": 1 << 20,
    "psi_bucket_points": 1 << 20,
    "job_max_messages": 1_000_000,
    "job_max_bytes": 16 << 30,
}


@dataclass(frozen=True)
class Policy:
    """A node's policy: who it works with, what may touch which dataset, floors and budgets.

    ``counterparties`` maps each allowed party to the certificate roles it may hold.
    """

    counterparties: Mapping[str, frozenset[str]]
    datasets: Mapping[str, DatasetPolicy]
    #: Counterparty -> the protocols in which this node trusts it to follow the protocol where
    #: its own protection rests on that (a semi-honest assumption the protocol cannot check).
    trusted_for: Mapping[str, frozenset[str]] = field(default_factory=dict)
    cohort_floor: int = 10
    approvals_required: bool = True
    #: Named approvers and the public key of each (the single ``approver_key`` is "approver").
    approvers: Mapping[str, Path] = field(default_factory=dict)
    #: How many of them must approve a job, and a larger number for some levels.
    quorum: int = 1
    quorum_by_level: Mapping[str, int] = field(default_factory=dict)
    limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    #: The smallest collusion threshold t whose noise shares this node's DP contributions may
    #: use; None: it always adds the whole noise itself (``docs/protocols/dp-statistics.md``).
    dp_collusion_threshold: int | None = None

    def quorum_for(self, level: str) -> int:
        """How many approvers must approve a job on a dataset of ``level``."""
        return self.quorum_by_level.get(level, self.quorum)

    def check_counterparty(self, party: str, role: str | None = None) -> None:
        """Refuse a party (and, where known from its certificate, a role) not on the allowlist."""
        roles = self.counterparties.get(party)
        if roles is None:
            raise PolicyRefusedError(
                f"this node's policy does not allow jobs with {party}; its operator can add "
                f"[counterparties.{party}] to policy.toml"
            )
        if role is not None and role not in roles:
            raise PolicyRefusedError(
                f"this node's policy allows {party} only in role(s) {sorted(roles)}, but its "
                f"certificate says {role!r}"
            )

    def check(
        self,
        spec: JobSpec,
        party: str,
        outputs: frozenset[str],
        requester_role: str | None = None,
    ) -> None:
        """Raise ``PolicyRefusedError`` unless ``party``'s policy allows ``spec``.

        Args:
            spec: The job.
            party: This node's party.
            outputs: The kinds of output the job releases (from its protocol).
            requester_role: The requester's certificate role, when the requester is the caller.
        """
        try:
            me = spec.participant(party)
        except KeyError:
            raise PolicyRefusedError(f"{party} is not a participant of this job") from None
        for other in spec.parties:
            if other != party:
                self.check_counterparty(other, requester_role if other == spec.requester else None)
        if me.dataset is None:
            return
        entry = self.datasets.get(me.dataset)
        if entry is None:
            raise PolicyRefusedError(
                f"{party} has no dataset {me.dataset!r} in its catalog; its operator can declare "
                f"it under [datasets.{me.dataset}] in policy.toml"
            )
        rules = entry.rules
        if not rules.allows_protocol(spec.protocol):
            raise PolicyRefusedError(
                f"{party}'s dataset {me.dataset!r} is classified {entry.level!r}, which with its "
                f"catalog entry does not allow protocol {spec.protocol!r} (allowed: "
                f"{sorted(rules.protocols)})"
            )
        if "score" in outputs and entry.level == "restricted-personal":
            outside = [r for r in spec.receivers if r != party and r not in entry.release_scores_to]
            if outside:
                raise PolicyRefusedError(
                    f"{party}'s dataset {me.dataset!r} is restricted-personal: per-record scores "
                    f"of it go to {', '.join(outside)} only where its policy names them "
                    f"(release_scores_to under [datasets.{me.dataset}]); make {party} the only "
                    "receiver, or release DP aggregates instead"
                )
        forbidden = {o for o in outputs if not o.startswith(MEMBERSHIP + ":")} - rules.outputs
        if forbidden:
            raise PolicyRefusedError(
                f"{party}'s dataset {me.dataset!r} is classified {entry.level!r}, which never "
                f"releases {', '.join(sorted(forbidden))} (allowed outputs: "
                f'{", ".join(sorted(rules.outputs))}); for PSI choose mode = "cardinality"'
            )
        for owner, learner in membership_directions(outputs):
            if owner == party and MEMBERSHIP not in rules.outputs:
                if learner not in entry.reveal_membership_to:
                    raise PolicyRefusedError(
                        f"{party}'s dataset {me.dataset!r} is classified {entry.level!r}, which "
                        f"never reveals which ids it holds, and this {spec.protocol} job tells "
                        f"{learner} which of them it holds; its owner can allow it with "
                        f'reveal_membership_to = ["{learner}"] under [datasets.{me.dataset}] '
                        "in policy.toml"
                    )
        payload = {c for k, c in me.columns.items() if k.startswith(PAYLOAD_PREFIX)}
        undeclared = sorted(payload - entry.payload_columns) if "payload" in outputs else []
        if undeclared:
            raise PolicyRefusedError(
                f"{party}'s dataset {me.dataset!r} releases no payload column {undeclared[0]!r}; "
                f"its operator can add it to payload_columns under [datasets.{me.dataset}]"
            )

    def check_trusted(self, party: str, protocol: str, why: str) -> None:
        """Refuse a job whose protection of this node's data rests on ``party`` following it.

        ``why`` says, in the protocol's words, what a deviating ``party`` could do.
        """
        if protocol not in self.trusted_for.get(party, frozenset()):
            raise PolicyRefusedError(
                f"this node's policy does not trust {party} to follow {protocol}, and {why}; "
                f"its owner can add {protocol!r} to trusted_for under [counterparties.{party}] in "
                "policy.toml only if it accepts that"
            )

    def identifying(self, dataset: str, bindings: Mapping[str, str]) -> frozenset[str]:
        """The identifier columns of ``dataset`` for a job binding ``bindings``."""
        entry = self.datasets.get(dataset)
        return frozenset() if entry is None else entry.identifying(bindings)

    def exact_aggregates_to(self, dataset: str) -> frozenset[str]:
        """Who may receive noise-free survival, log-rank and Cox aggregates of ``dataset``."""
        entry = self.datasets.get(dataset)
        return frozenset() if entry is None else entry.exact_aggregates_to

    def guards_membership(self, dataset: str, counterparty: str) -> bool:
        """Whether ``dataset`` must not reveal to ``counterparty`` which individuals it holds.

        See :meth:`DatasetPolicy.guards_membership`; an unknown dataset guards it.
        """
        entry = self.datasets.get(dataset)
        return True if entry is None else entry.guards_membership(counterparty)

    def check_cohort(self, dataset: str, size: int) -> None:
        """Refuse a group smaller than the cohort floor (it could single out individuals)."""
        if size < self.cohort_floor:
            raise PolicyRefusedError(
                f"dataset {dataset!r} brings {size} records, below this node's cohort floor of "
                f"{self.cohort_floor}; a group that small could single out individuals"
            )


def _fail(path: Path, message: str) -> PolicyFileError:
    return PolicyFileError(f"{path}: {message}")


# --- the file's schema ------------------------------------------------------------------------

#: The classification levels, least protected first (the keys of ``LEVELS``).
Level = Literal["public", "internal", "confidential", "restricted-personal"]


def _protocol_name(value: str) -> str:
    """A protocol this node knows (or ``"*"``, any the level allows)."""
    from bund.parties.protocols import PROTOCOLS  # the registry is heavy: import it when needed

    return str(OneOf((ANY_PROTOCOL, *sorted(PROTOCOLS))).check(value))


def _some_roles(value: list[str]) -> list[str]:
    if not value:
        raise ValueError(
            'must not be empty: the counterparty needs roles = ["tax", ...], the certificate '
            "roles it may hold"
        )
    return value


class _Counterparty(StrictModel):
    roles: Annotated[list[Annotated[str, OneOf(ROLES)]], AfterValidator(_some_roles)] = Field(
        description="the certificate roles this counterparty may hold"
    )
    trusted_for: list[Annotated[str, AfterValidator(_protocol_name)]] = Field(
        default_factory=list,
        description="protocols in which this node trusts the counterparty to follow the protocol "
        "where its own protection rests on that (the approval summary says what it risks)",
    )


class _Dataset(StrictModel):
    owner: Name | None = Field(default=None, description="this node's party (the default)")
    level: Level = Field(description="the dataset's classification level")
    protocols: list[Annotated[str, AfterValidator(_protocol_name)]] | None = Field(
        default=None, description="narrows the protocols its level allows"
    )
    version: Annotated[str, Expect("the dataset's content hash")] | None = Field(
        default=None, description="refuse jobs once the dataset's content hash differs"
    )
    budget_epsilon: Exact = Field(default="0", description="total ε of the privacy budget")
    budget_delta: Exact = Field(default="0", description="total δ of the privacy budget")
    release_scores_to: list[Name] = Field(
        default_factory=list,
        description="who may receive per-record scores of a restricted-personal dataset",
    )
    exact_aggregates_to: list[Name] = Field(
        default_factory=list,
        description="counterparties that may ask for and receive noise-free (noise = 'off') "
        "survival, log-rank and Cox aggregates of this dataset: exact sums, no DP",
    )
    max_epsilon_per_job: Exact | None = Field(
        default=None, description="the most ε one job may charge (a query's cap)"
    )
    max_epsilon_per_requester: Exact | None = Field(
        default=None,
        description="the most ε all jobs of one requester may charge, in total (the control "
        "against differencing: each query of the same cohort costs its ε)",
    )
    trusted_counterparties: list[Name] = Field(
        default_factory=list,
        description="counterparties trusted to run unmodified node code with this dataset: "
        "protocols may skip their defences against a deviating peer for them",
    )
    payload_columns: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list,
        description="columns whose values labeled PSI may release for matched records",
    )
    identifiers: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        default=None,
        description="columns that single out a person: no DP query may filter or group on them "
        "(default: the column a job binds as id)",
    )
    reveal_membership_to: list[Name] = Field(
        default_factory=list,
        description="parties that may learn which ids this dataset holds (PSI alignment), "
        "where its level forbids membership",
    )


class _Approvals(StrictModel):
    required: bool = Field(default=True, description="whether a person approves every job")
    approver_key: Text | None = Field(
        default=None,
        description="the one approver's Ed25519 public key (PEM); or name several in approvers",
    )
    approvers: dict[Name, Text] = Field(
        default_factory=dict,
        description="named approvers, each with the Ed25519 public key of their own machine",
    )
    quorum: int = Field(default=1, ge=1, description="how many approvers must approve a job")
    quorum_by_level: dict[Level, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict,
        description="a larger quorum for some levels, e.g. restricted-personal = 2",
    )


class _Limits(StrictModel):
    noun: ClassVar[str] = "limit"

    psi_max_set_size: int = Field(
        default=DEFAULT_LIMITS["psi_max_set_size"],
        ge=1,
        description="largest PSI set, own or a peer's",
    )
    psi_unbalanced_max_queries: int = Field(
        default=DEFAULT_LIMITS["psi_unbalanced_max_queries"],
        ge=0,
        description="most ids one counterparty may query against an unbalanced PSI setup, in all",
    )
    psi_spill_rows: int = Field(
        default=DEFAULT_LIMITS["psi_spill_rows"],
        ge=0,
        description="a PSI member whose dataset has more rows keeps its buckets in files",
    )
    psi_bucket_points: int = Field(
        default=DEFAULT_LIMITS["psi_bucket_points"],
        ge=1024,
        description="points per PSI bucket the member aims at: its memory is a few buckets",
    )
    job_max_messages: int = Field(
        default=DEFAULT_LIMITS["job_max_messages"],
        ge=16,
        description="most messages one peer may send one job, for protocols without a plan",
    )
    job_max_bytes: int = Field(
        default=DEFAULT_LIMITS["job_max_bytes"],
        ge=1 << 20,
        description="most bytes one peer may send one job, for protocols without a plan",
    )


class PolicyFile(StrictModel):
    """``policy.toml`` as written: parsed by :func:`parse_policy` into a :class:`Policy`."""

    cohort_floor: int = Field(
        default=10, ge=1, description="refuse a dataset, or a DP count's min_cell, below this"
    )
    dp_collusion_threshold: int | None = Field(
        default=None,
        ge=1,
        le=MAX_CONTRIBUTORS,
        description="accept DP noise shares that meet ε while at most t-1 others collude, for "
        "t at least this (default: add the whole noise alone)",
    )
    counterparties: dict[Name, _Counterparty] = Field(default_factory=dict)
    datasets: dict[Name, _Dataset] = Field(default_factory=dict)
    approvals: _Approvals = Field(default_factory=_Approvals)
    limits: _Limits = Field(default_factory=_Limits)


def parse_policy(doc: Mapping[str, Any], path: Path, party: str | None) -> Policy:
    """Build and validate a ``Policy`` from a parsed ``policy.toml`` of ``party``'s node.

    ``party`` is ``None`` when the file is checked on its own (``bund config check``): then
    the datasets' owners are not compared with the node's party.

    Raises:
        PolicyFileError: Naming the file, each key to fix, and the nearest known key.
    """
    file = parse_file(PolicyFile, doc, path, PolicyFileError)
    datasets: dict[str, DatasetPolicy] = {}
    for name, entry in file.datasets.items():
        where = f"datasets.{name}"
        if party is not None and entry.owner not in (None, party):
            raise _fail(path, f"{where}.owner is {entry.owner!r}, but this node is {party!r}")
        try:
            budget = Budget.parse(entry.budget_epsilon, entry.budget_delta)
            per_job, per_requester = (
                None if cap is None else parse_rational(cap)
                for cap in (entry.max_epsilon_per_job, entry.max_epsilon_per_requester)
            )
        except (InvalidInputError, ValueError) as exc:
            raise _fail(path, f"{where} budget: {exc}") from None
        datasets[name] = DatasetPolicy(
            owner=party or entry.owner or "",
            level=entry.level,
            protocols=None if entry.protocols is None else frozenset(entry.protocols),
            version=entry.version,
            budget=budget,
            max_epsilon_per_job=per_job,
            max_epsilon_per_requester=per_requester,
            release_scores_to=frozenset(entry.release_scores_to),
            exact_aggregates_to=frozenset(entry.exact_aggregates_to),
            identifiers=None if entry.identifiers is None else frozenset(entry.identifiers),
            reveal_membership_to=frozenset(entry.reveal_membership_to),
            trusted_counterparties=frozenset(entry.trusted_counterparties),
            payload_columns=frozenset(entry.payload_columns),
        )
    approvals = file.approvals
    approvers = {name: path.parent / key for name, key in approvals.approvers.items()}
    if approvals.approver_key is not None:
        if APPROVER in approvers:
            raise _fail(path, f"approvals: name the approver {APPROVER!r} only once")
        approvers[APPROVER] = path.parent / approvals.approver_key
    if approvals.required and not approvers:
        raise _fail(
            path,
            'approvals are on by default: set [approvals] approver_key = "approver_ed25519.pub" '
            "or name approvers in [approvals.approvers] (or required = false, which a regulator "
            "will see in every job's record)",
        )
    quorums: dict[str, int] = {"": approvals.quorum}
    quorums.update({str(level): n for level, n in approvals.quorum_by_level.items()})
    for level, quorum in quorums.items():
        if approvals.required and quorum > len(approvers):
            where = f"quorum_by_level.{level}" if level else "quorum"
            raise _fail(
                path,
                f"approvals.{where} is {quorum} but only {len(approvers)} approver(s) are named",
            )
    return Policy(
        counterparties={n: frozenset(c.roles) for n, c in file.counterparties.items()},
        trusted_for={n: frozenset(c.trusted_for) for n, c in file.counterparties.items()},
        datasets=datasets,
        cohort_floor=file.cohort_floor,
        approvals_required=approvals.required,
        approvers=approvers,
        quorum=approvals.quorum,
        quorum_by_level={str(level): n for level, n in approvals.quorum_by_level.items()},
        limits={**DEFAULT_LIMITS, **file.limits.model_dump()},
        dp_collusion_threshold=file.dp_collusion_threshold,
    )


def load_policy(path: Path, party: str | None) -> Policy:
    """Read and validate ``policy.toml`` (``party``: as in :func:`parse_policy`).

    Raises:
        PolicyFileError: The file is missing, not TOML, or invalid; the message names the key.
    """
    return parse_policy(read_toml(path, "policy file", PolicyFileError), path, party)


def policy_template(party: str) -> str:
    """A commented ``policy.toml`` for ``party`` that runs as written (``bund party init``).

    Approvals are on, with the approver key ``bund party init`` makes beside it; no
    counterparty and no dataset yet (the commented tables are examples to copy).
    """
    return f"""\
# Policy of {party}'s node, written by `bund party init`; docs/policy.md explains it.
# Check it:  bund config check policy.toml   (unknown keys are refused)
cohort_floor = 10                        # refuse a dataset (group) smaller than this

[limits]                                 # PSI refuses larger sets, its own and a peer's
psi_max_set_size = {DEFAULT_LIMITS["psi_max_set_size"]}

[approvals]
required = true                          # every job waits for a person's signed approval
approver_key = "approver_ed25519.pub"    # the approver's public key; the private key stays
                                         # with the approver, off this machine in production

# Who this node works with, and the certificate role each must hold:
# [counterparties.tax]
# roles = ["tax"]

# The catalog: each dataset, also declared under [datasets.NAME] in node.toml.
# [datasets.loan_book]
# level = "confidential"                 # public | internal | confidential | restricted-personal
# protocols = ["psi", "vertical_lr"]     # optional: narrows what the level allows
# budget_epsilon = "3"                   # exact rationals ("1/2", "0.25", "1e-6"); never floats
# budget_delta = "1/1000000"
"""
