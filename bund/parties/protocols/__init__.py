"""Joint computations: one module per protocol, one function per role, and their registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from bund.parties.jobs import InvalidJobSpecError, JobSpec, ProtocolDef
from bund.parties.protocols import (
    ckks_scoring,
    cox_ph,
    dp_stats,
    fed_dp_sgd,
    paillier_scoring,
    psi,
    psi_unbalanced,
    serving_contract,
    vertical_lr,
    vertical_score,
    woe_iv,
)
from bund.parties.schema import did_you_mean

if TYPE_CHECKING:
    from bund.parties.policy import DatasetPolicy

#: Every protocol a node can run, by name.
PROTOCOLS: Mapping[str, ProtocolDef] = {
    d.name: d
    for d in (
        psi.DEFINITION,
        psi_unbalanced.DEFINITION,
        dp_stats.DEFINITION,
        cox_ph.DEFINITION,
        ckks_scoring.DEFINITION,
        paillier_scoring.DEFINITION,
        fed_dp_sgd.DEFINITION,
        woe_iv.DEFINITION,
        vertical_lr.DEFINITION,
        vertical_score.DEFINITION,
        serving_contract.DEFINITION,
    )
}


#: A protocol's own check of a job against a data owner's catalog entry, at that owner's
#: admission (``Policy.check`` calls it): it raises ``PolicyRefusedError``.
OwnerCheck = Callable[[JobSpec, str, "DatasetPolicy"], None]

#: The protocols whose admission depends on the owner's policy beyond levels and outputs.
OWNER_CHECKS: Mapping[str, OwnerCheck] = {psi.DEFINITION.name: psi.check_owner}


def get_protocol(name: str) -> ProtocolDef:
    """The protocol called ``name``; ``InvalidJobSpecError`` naming the known ones otherwise."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise InvalidJobSpecError(
            f"unknown protocol {name!r}: this node knows {sorted(PROTOCOLS)}"
            f"{did_you_mean(name, PROTOCOLS)}"
        ) from None
