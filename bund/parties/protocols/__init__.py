"""Joint computations: one module per protocol, one function per role, and their registry."""

from __future__ import annotations

from collections.abc import Mapping

from bund.parties.jobs import InvalidJobSpecError, ProtocolDef
from bund.parties.protocols import (
    ckks_scoring,
    dp_stats,
    fed_dp_sgd,
    psi,
    psi_multi,
    vertical_lr,
    vertical_score,
    woe_iv,
)
from bund.parties.schema import did_you_mean

#: Every protocol a node can run, by name.
PROTOCOLS: Mapping[str, ProtocolDef] = {
    d.name: d
    for d in (
        psi.DEFINITION,
        psi_multi.DEFINITION,
        dp_stats.DEFINITION,
        ckks_scoring.DEFINITION,
        fed_dp_sgd.DEFINITION,
        woe_iv.DEFINITION,
        vertical_lr.DEFINITION,
        vertical_score.DEFINITION,
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
