"""`bund --help` and every group's help start without the node's heavy modules."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

#: Modules that only a command's work needs: each costs tens of milliseconds to import.
HEAVY = (
    "grpc",
    "google.protobuf",
    "cryptography",
    "numpy",
    "pydantic",
    "rich.markdown",
    "rich.traceback",
    "torch",
    "tenseal",
    "phe",
    "matplotlib",
    "bund.v1",
    "bund.parties.config",
    "bund.parties.client",
    "bund.parties.jobs",
)

_SHOW_MODULES = """
import sys
from bund.parties.cli import app
try:
    app(sys.argv[1:], prog_name="bund")
except SystemExit:
    pass
# A module that importlib.util.LazyLoader has not executed yet is no cost: leave it out.
loaded = sorted(m for m, mod in list(sys.modules.items()) if type(mod).__name__ != "_LazyModule")
print("\\n".join(loaded))
"""


def _modules_after(*argv: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", _SHOW_MODULES, *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert "Usage:" not in done.stderr, done.stderr
    return set(done.stdout.split())


def _heavy(loaded: set[str], allowed: tuple[str, ...] = ()) -> list[str]:
    wanted = [h for h in HEAVY if h not in allowed]
    return sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in wanted))


def test_help_loads_none_of_the_heavy_modules() -> None:
    loaded = _modules_after("--help")
    assert "typer" in loaded and "bund.parties.cli" in loaded  # the probe works
    assert _heavy(loaded) == []


@pytest.mark.parametrize("argv", [("job", "--help"), ("job", "status", "--help")])
def test_a_command_s_help_loads_only_what_typer_itself_needs(argv: tuple[str, ...]) -> None:
    # Typer builds a pydantic adapter for each parameter of a command it lists: its cost.
    assert _heavy(_modules_after(*argv), allowed=("pydantic",)) == []
