"""Fuzz CKKS loading in its own process (run by test_decoders.py); print a JSON report.

TenSEAL is native code: if a malformed input crashed it, only this child would die, and the
parent test reports the exit status. ``undefined`` lists inputs that raised anything other than
a ``BundError`` or a ``ValueError``.
"""

from __future__ import annotations

import json
import random
import sys

from bund.compute.ckks import CkksContext, CkksParameters
from bund.compute.errors import BundError

#: Fixed seed: the same inputs on every run.
SEED = 20_240_601
ROUNDS = 60


def mutate(rng: random.Random, seed: bytes) -> bytes:
    """Truncated, bit-flipped, spliced, repeated or random bytes (a fixed, seeded choice)."""
    kind = rng.randrange(5)
    if kind == 0:
        return seed[: rng.randrange(len(seed) + 1)]
    if kind == 1:
        out = bytearray(seed)
        for _ in range(rng.randrange(1, 9)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind == 2:
        at = rng.randrange(len(seed) + 1)
        return seed[:at] + rng.randbytes(rng.randrange(1, 64)) + seed[at:]
    if kind == 3:
        return seed * 2
    return rng.randbytes(rng.randrange(512))


def main() -> int:
    """Load mutated public contexts and vectors; report the undefined errors."""
    secret = CkksContext.create(CkksParameters(), galois_keys=False)
    public_bytes = secret.make_public().serialize(galois_keys=False)
    vector_bytes = secret.encrypt([1.0, 2.0, 3.0]).serialize()
    rng = random.Random(SEED)
    undefined: list[str] = []
    counts = {"value": 0, "defined": 0}
    for name, load, seed in (
        ("CkksContext.load", CkksContext.load, public_bytes),
        ("CkksContext.vector_from_bytes", secret.vector_from_bytes, vector_bytes),
    ):
        for data in [b"", seed[:16]] + [mutate(rng, seed) for _ in range(ROUNDS)]:
            try:
                load(data)
                counts["value"] += 1
            except (BundError, ValueError):
                counts["defined"] += 1
            except Exception as exc:  # noqa: BLE001 - the point is to list them
                undefined.append(f"{name}: {type(exc).__name__}: {str(exc)[:120]}")
    json.dump({"counts": counts, "undefined": undefined}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
