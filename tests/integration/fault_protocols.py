"""A protocol for fault tests: many short rounds, randomness, resume states and a per-round charge.

``relay_test`` between two members. In round ``k`` the requester draws a fresh random blind
``r`` (from ``secrets``), saves it *before* sending ``r`` (write-ahead), and sends it; the
other member answers ``r + k²`` and saves that it answered; the requester adds the answer
minus ``r``. The result, ``Σ k²``, does not depend on the blinds, so a resumed run must give
exactly the uninterrupted one, and any blind re-drawn after a restart would be refused by the
peer's mailbox as equivocation. The answering member charges ``1/1000`` epsilon per round to its
dataset, so a double charge after a resume would show in its ledger.
"""

from __future__ import annotations

import json
import secrets
import time
from fractions import Fraction

from pydantic import Field

from bund.compute.dp.budget import Budget
from bund.parties.jobs import JobContext, ProtocolDef, ProtocolParams, Result

ROUND_COST = Budget(Fraction(1, 1000))


class RelayParams(ProtocolParams):
    """A test protocol declares its parameters like any other."""

    rounds: int = Field(default=20, ge=1, le=10_000, description="rounds to relay")
    pause_s: float = Field(
        default=0.0, ge=0, le=60, description="pause after each round, in seconds"
    )


def _relay(ctx: JobContext) -> Result | None:
    params = RelayParams.of(ctx.spec)
    rounds, pause = params.rounds, params.pause_s
    (peer,) = (p for p in ctx.spec.parties if p != ctx.party)
    leader = ctx.party == ctx.spec.requester
    saved = ctx.load_state("relay")
    k, acc, blind = json.loads(saved) if saved else (0, 0, None)
    while k < rounds:
        if leader:
            if blind is None:
                blind = secrets.randbits(64)
                ctx.save_state("relay", json.dumps([k, acc, blind]).encode())  # before sending
            ctx.send(peer, f"x/{k}", str(blind).encode())
            answer = int(ctx.recv(peer, f"y/{k}"))
            acc, blind = acc + answer - blind, None
        else:
            ctx.charge(f"round-{k}", ROUND_COST)
            theirs = int(ctx.recv(peer, f"x/{k}"))
            ctx.send(peer, f"y/{k}", str(theirs + k * k).encode())
        k += 1
        ctx.save_state("relay", json.dumps([k, acc, blind]).encode())
        ctx.progress("relay", k, rounds)
        time.sleep(pause)
    return Result({"sum_of_squares": acc}) if ctx.party in ctx.spec.receivers else None


RELAY = ProtocolDef(
    name="relay_test",
    version="1",
    roles={"member": _relay},
    params=RelayParams,
    outputs=lambda spec: frozenset({"raw"}),
    learns=lambda spec: dict.fromkeys(spec.parties, "the sum of squares of the round numbers"),
    resumable=True,
)

#: Registered in the node processes of fault tests (``serve_test_node``).
TEST_PROTOCOLS = {RELAY.name: RELAY}
