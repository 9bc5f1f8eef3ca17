"""``bund serve`` with the test protocols registered: the node process of fault tests.

Usage: ``python -m tests.integration.serve_test_node NODE_TOML``. With the environment variable
``BUND_TEST_CRASH_AFTER_SEND=TAG`` the process dies (``os._exit``, as abruptly as ``kill -9``)
right after any of its roles sent the message ``TAG``: a drop-out at an exact protocol step.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

from bund.parties.config import load_config
from bund.parties.jobs import JobContext, ProtocolDef, Result, RoleFn
from bund.parties.node import serve
from bund.parties.protocols import PROTOCOLS
from tests.integration.fault_protocols import TEST_PROTOCOLS

CRASH_ENV = "BUND_TEST_CRASH_AFTER_SEND"


class _CrashingContext:
    """A JobContext that ends the process right after sending one chosen message."""

    def __init__(self, ctx: JobContext, tag: str) -> None:
        self._ctx, self._tag = ctx, tag

    def send(self, to: str, tag: str, payload: bytes) -> None:
        self._ctx.send(to, tag, payload)
        if tag == self._tag:
            os._exit(137)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def _crashing(role: RoleFn, tag: str) -> RoleFn:
    def run(ctx: JobContext) -> Result | None:
        return role(_CrashingContext(ctx, tag))  # type: ignore[arg-type]

    return run


def registry() -> dict[str, ProtocolDef]:
    """Every protocol, with the crash injected when the environment asks for it."""
    protocols = {**PROTOCOLS, **TEST_PROTOCOLS}
    tag = os.environ.get(CRASH_ENV)
    if not tag:
        return protocols
    return {
        name: dataclasses.replace(d, roles={r: _crashing(fn, tag) for r, fn in d.roles.items()})
        for name, d in protocols.items()
    }


if __name__ == "__main__":
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve(load_config(Path(sys.argv[1])), registry())
