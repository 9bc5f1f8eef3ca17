"""Joint computations: one module per protocol, one function per role, and their registry."""

from __future__ import annotations

from collections.abc import Mapping

from bund.parties.jobs import InvalidJobSpecError, ProtocolDef
from bund.parties.protocols import (
    ckks_scoring,
    cox_ph,
    dp_stats,
    fed_dp_sgd,
    paillier_scoring,
    psi,
    psi_multi,
    psi_unbalanced,
    serving_contract,
    vertical_lr,
    vertical_score,
    vertical_secureboost,
    vertical_tree_score,
    woe_iv,
)
from bund.parties.schema import did_you_mean

#: Every protocol a node can run, by name.
PROTOCOLS: Mapping[str, ProtocolDef] = {
    d.name: d
    for d in (
        psi.DEFINITION,
        psi_multi.DEFINITION,
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
        vertical_secureboost.DEFINITION,
        vertical_tree_score.DEFINITION,
    )
}


def get_protocol(name: str) -> ProtocolDef:
    """The protocol called ``name``; ``InvalidJobSpecError`` naming the known ones otherwise."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise InvalidJobSpecError(
            f"unknown protocol {name!r}: this node knows {sorted(PROTOCOLS)}"
            f"{did_you_mean(name, PROTOCOLS)}"
        ) from None
