"""A node's own policy (``policy.toml``): catalog, classification, counterparties, floors, budgets.

Every participant checks a job against its own policy before anything runs; a refusal names the
rule and where to change it. The file is read once at start-up and validated with errors that name
the key to fix.

Classification levels, from least to most protected, and what each allows by default:

=====================  =====================================  ==================================
level                  protocols                              outputs
=====================  =====================================  ==================================
public                 every protocol                         every output, raw export included
internal               every protocol                         every output but raw export
confidential           psi, woe_iv, vertical_lr,              intersection, cardinality,
                       vertical_score, dp_stats,              dp_aggregate, model, score
                       ckks_scoring, fed_dp_sgd
restricted-personal    psi, woe_iv, vertical_lr,              cardinality, dp_aggregate, model,
                       vertical_score, dp_stats,              score (never which individuals)
                       ckks_scoring, fed_dp_sgd
=====================  =====================================  ==================================

A dataset entry may narrow its level's protocols further, never widen them.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bund.compute.dp.budget import Budget
from bund.compute.errors import BundError, InvalidInputError
from bund.parties.jobs import JobSpec


class PolicyRefusedError(BundError):
    """This node's policy does not allow the job; the message names the rule to change."""


class PolicyFileError(BundError):
    """``policy.toml`` is missing, malformed or inconsistent; the message names the key."""


#: Every kind of output a protocol can release.
OUTPUTS = frozenset({"raw", "intersection", "cardinality", "dp_aggregate", "model", "score"})
#: Protocols allowed at the two protected levels.
_PROTECTED_PROTOCOLS = frozenset(
    {"psi", "woe_iv", "vertical_lr", "vertical_score", "dp_stats", "ckks_scoring", "fed_dp_sgd"}
)
ANY_PROTOCOL = "*"


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
        frozenset({"intersection", "cardinality", "dp_aggregate", "model", "score"}),
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
    "psi_max_set_size": 2_000_000,
}


@dataclass(frozen=True)
class Policy:
    """A node's policy: who it works with, what may touch which dataset, floors and budgets.

    ``counterparties`` maps each allowed party to the certificate roles it may hold.
    """

    counterparties: Mapping[str, frozenset[str]]
    datasets: Mapping[str, DatasetPolicy]
    cohort_floor: int = 10
    approvals_required: bool = True
    approver_key: Path | None = None
    limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))

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
        forbidden = outputs - rules.outputs
        if forbidden:
            raise PolicyRefusedError(
                f"{party}'s dataset {me.dataset!r} is classified {entry.level!r}, which never "
                f"releases {', '.join(sorted(forbidden))} (allowed outputs: "
                f'{", ".join(sorted(rules.outputs))}); for PSI choose mode = "cardinality"'
            )

    def check_cohort(self, dataset: str, size: int) -> None:
        """Refuse a group smaller than the cohort floor (it could single out individuals)."""
        if size < self.cohort_floor:
            raise PolicyRefusedError(
                f"dataset {dataset!r} brings {size} records, below this node's cohort floor of "
                f"{self.cohort_floor}; a group that small could single out individuals"
            )


def _fail(path: Path, message: str) -> PolicyFileError:
    return PolicyFileError(f"{path}: {message}")


def _str_list(doc: Mapping[str, Any], key: str, path: Path, where: str) -> frozenset[str] | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(path, f"{where} {key} must be a list of names")
    return frozenset(value)


def parse_policy(doc: Mapping[str, Any], path: Path, party: str) -> Policy:
    """Build and validate a ``Policy`` from a parsed ``policy.toml`` of ``party``'s node."""
    known = {"cohort_floor", "counterparties", "datasets", "approvals", "limits"}
    unknown = set(doc) - known
    if unknown:
        raise _fail(path, f"unknown keys {sorted(unknown)}; known: {sorted(known)}")
    floor = doc.get("cohort_floor", 10)
    if isinstance(floor, bool) or not isinstance(floor, int) or floor < 1:
        raise _fail(path, "cohort_floor must be a positive integer")

    counterparties: dict[str, frozenset[str]] = {}
    for name, entry in doc.get("counterparties", {}).items():
        if not isinstance(entry, dict):
            raise _fail(path, f"[counterparties.{name}] must be a table with roles = [...]")
        roles = _str_list(entry, "roles", path, f"[counterparties.{name}]")
        if not roles:
            raise _fail(path, f'[counterparties.{name}] needs roles = ["bank", ...]')
        counterparties[name] = roles

    datasets: dict[str, DatasetPolicy] = {}
    for name, entry in doc.get("datasets", {}).items():
        where = f"[datasets.{name}]"
        if not isinstance(entry, dict):
            raise _fail(path, f"{where} must be a table")
        owner = entry.get("owner", party)
        if owner != party:
            raise _fail(path, f"{where} owner is {owner!r}, but this node is {party!r}")
        level = entry.get("level")
        if not isinstance(level, str) or level not in LEVELS:
            raise _fail(path, f"{where} level must be one of {list(LEVELS)}, not {level!r}")
        version = entry.get("version")
        if version is not None and not isinstance(version, str):
            raise _fail(path, f"{where} version must be the dataset's content hash")
        try:
            budget = Budget.parse(entry.get("budget_epsilon", "0"), entry.get("budget_delta", "0"))
        except (InvalidInputError, ValueError) as exc:
            raise _fail(path, f"{where} budget: {exc}") from None
        datasets[name] = DatasetPolicy(
            owner=party,
            level=level,
            protocols=_str_list(entry, "protocols", path, where),
            version=version,
            budget=budget,
        )

    approvals = doc.get("approvals", {})
    if not isinstance(approvals, dict):
        raise _fail(path, "[approvals] must be a table")
    required = approvals.get("required", True)
    if not isinstance(required, bool):
        raise _fail(path, "[approvals] required must be true or false")
    key = approvals.get("approver_key")
    if required and not isinstance(key, str):
        raise _fail(
            path,
            'approvals are on by default: set [approvals] approver_key = "approver_ed25519.pub" '
            "(or required = false, which a regulator will see in every job's record)",
        )

    limits = dict(DEFAULT_LIMITS)
    for name, value in doc.get("limits", {}).items():
        if name not in DEFAULT_LIMITS:
            raise _fail(path, f"unknown limit {name!r}; known: {sorted(DEFAULT_LIMITS)}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _fail(path, f"[limits] {name} must be a positive integer")
        limits[name] = value
    return Policy(
        counterparties=counterparties,
        datasets=datasets,
        cohort_floor=floor,
        approvals_required=required,
        approver_key=(path.parent / key) if isinstance(key, str) else None,
        limits=limits,
    )


def load_policy(path: Path, party: str) -> Policy:
    """Read and validate ``policy.toml``."""
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise PolicyFileError(f"policy file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyFileError(f"{path} is not valid TOML: {exc}") from None
    return parse_policy(doc, path, party)
