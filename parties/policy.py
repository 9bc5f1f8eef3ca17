"""A node's own policy: the counterparties it works with, the protocols allowed on each dataset.

Every participant checks a job against its own policy before anything runs; a refusal names the
rule and where to change it. Richer governance (classification levels, approvals, budgets, cohort
floors) builds on this check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from compute.errors import BundError
from parties.jobs import JobSpec


class PolicyRefusedError(BundError):
    """This node's policy does not allow the job; the message names the rule to change."""


@dataclass(frozen=True)
class DatasetPolicy:
    """What may be done with one dataset of the catalog."""

    protocols: frozenset[str]


#: Limits a node sets for every job, with their defaults.
DEFAULT_LIMITS: Mapping[str, int] = {
    "psi_max_set_size": 2_000_000,
}


@dataclass(frozen=True)
class Policy:
    """Counterparty allowlist, per-dataset protocol allowlist, and numeric limits."""

    allowed_counterparties: frozenset[str]
    datasets: Mapping[str, DatasetPolicy]
    limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))

    def check(self, spec: JobSpec, party: str) -> None:
        """Raise ``PolicyRefusedError`` unless ``party``'s policy allows ``spec``."""
        try:
            me = spec.participant(party)
        except KeyError:
            raise PolicyRefusedError(f"{party} is not a participant of this job") from None
        for other in spec.parties:
            if other != party and other not in self.allowed_counterparties:
                raise PolicyRefusedError(
                    f"{party}'s policy does not allow jobs with {other}; its operator can add "
                    f"{other!r} to [policy] allowed_counterparties in node.toml"
                )
        if me.dataset is None:
            return
        rules = self.datasets.get(me.dataset)
        if rules is None:
            raise PolicyRefusedError(
                f"{party} has no dataset {me.dataset!r} in its policy; its operator can declare "
                f"it under [policy.datasets.{me.dataset}]"
            )
        if spec.protocol not in rules.protocols:
            raise PolicyRefusedError(
                f"{party}'s policy does not allow protocol {spec.protocol!r} on dataset "
                f"{me.dataset!r} (allowed: {sorted(rules.protocols)}); its operator can add it to "
                f"[policy.datasets.{me.dataset}] protocols"
            )
