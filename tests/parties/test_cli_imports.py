"""`bund --help`, every group's help and the status commands start without the node's modules."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, Federation, NodeFactory
from tests.integration.test_node import psi_spec, start_pair, wait_final

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
    "bund.parties.schema",
    "bund.parties.identity",
    "bund.parties.roster",
    "bund.parties.policy",
    "bund.parties.data",
    "bund.parties.approvals",
    "bund.parties.audit",
    "bund.parties.authz",
    "bund.parties.lifecycle.store",
    "bund.parties.serving.service",
    "bund.parties.protocols",
    "bund.compute.executor",
    "bund.compute.paillier",
)

#: What a status command needs to make its call: gRPC and the generated messages, and the
#: client. Not ``cryptography``: the node checks that the certificate is an operator credential
#: of its party. Not pydantic: typer is kept below 0.29, which builds a pydantic
#: ``TypeAdapter`` for each parameter (pyproject.toml).
STATUS_NEEDS = (
    "grpc",
    "google.protobuf",
    "bund.v1",
    "bund.parties.client",
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
print(MARK)
print("\\n".join(loaded))
"""
#: Where the command's own output ends and the probe's list of modules begins.
_MARK = "--- modules loaded ---"


def _run(*argv: str) -> tuple[str, str, set[str]]:
    """Run ``bund ARGV`` in a fresh interpreter: its stdout, its stderr, the modules it loaded."""
    done = subprocess.run(
        [sys.executable, "-c", f"MARK = {_MARK!r}\n{_SHOW_MODULES}", *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert "Usage:" not in done.stderr, done.stderr
    output, _, modules = done.stdout.rpartition(_MARK)
    return output, done.stderr, set(modules.split())


def _modules_after(*argv: str) -> set[str]:
    return _run(*argv)[2]


def _heavy(loaded: set[str], allowed: tuple[str, ...] = ()) -> list[str]:
    wanted = [h for h in HEAVY if h not in allowed]
    return sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in wanted))


def test_help_loads_none_of_the_heavy_modules() -> None:
    loaded = _modules_after("--help")
    assert "typer" in loaded and "bund.parties.cli" in loaded  # the probe works
    assert _heavy(loaded) == []


@pytest.mark.parametrize("argv", [("job", "--help"), ("job", "status", "--help")])
def test_a_command_s_help_loads_only_what_typer_itself_needs(argv: tuple[str, ...]) -> None:
    assert _heavy(_modules_after(*argv)) == []


def _operator_toml(federation: Federation, directory: Path, address: str) -> Path:
    """A copy of the bank's operator credential with an operator.toml naming ``address``."""
    credential = directory / "alice"
    shutil.copytree(federation.party_dir("bank") / "operator", credential)
    config = credential / "operator.toml"
    config.write_text(f'party = "bank"\nnode = "{address}"\n', encoding="utf-8")
    return config


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "argv",
    [
        ("job", "status", "0" * 32),
        ("job", "status", "0" * 32, "--json"),
        ("job", "list"),
        ("job", "list", "--json"),
    ],
)
def test_a_status_command_reaches_its_call_without_the_node_s_modules(
    argv: tuple[str, ...], federation: Federation, tmp_path: Path
) -> None:
    config = _operator_toml(federation, tmp_path, f"127.0.0.1:{_closed_port()}")
    _, stderr, loaded = _run(*argv, "--config", str(config))
    # It read the credential and made its call: the port refused it.
    assert "does not answer" in stderr and "connection refused" in stderr, stderr
    assert {"bund.parties.client", "bund.parties.operator_file", "grpc"} <= loaded
    assert _heavy(loaded, allowed=STATUS_NEEDS) == []


def test_status_and_list_at_a_real_node_load_none_of_the_node_s_modules(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    start_pair(node_factory)
    with node_factory.client("bank") as bank:
        job_id = bank.submit(psi_spec())
        assert wait_final(bank, job_id).state.value == "succeeded"
    config = str(
        _operator_toml(node_factory.federation, tmp_path, f"127.0.0.1:{node_factory.port('bank')}")
    )
    for argv, shown in (
        (("job", "status", job_id), "succeeded"),
        (("job", "status", job_id, "--json"), '"state": "succeeded"'),
        (("job", "list"), job_id),
    ):
        output, stderr, loaded = _run(*argv, "--config", config)
        assert shown in output, (argv, output, stderr)
        assert _heavy(loaded, allowed=STATUS_NEEDS) == [], argv


def test_a_node_certificate_given_as_the_operator_credential_is_refused_in_words(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    """The command does not read the certificate; the node's refusal says what is wrong."""
    node_factory.start("bank")
    config = _operator_toml(
        node_factory.federation, tmp_path, f"127.0.0.1:{node_factory.port('bank')}"
    )
    node = node_factory.federation.tls("bank")  # the node's own certificate, not an operator's
    shutil.copy(node.cert, config.parent / "operator.pem")
    shutil.copy(node.key, config.parent / "operator.key")
    _, stderr, _ = _run("job", "list", "--config", str(config))
    assert "PERMISSION_DENIED" in stderr, stderr
    assert "operators call with an operator credential (bund operator issue)" in stderr
    tax = node_factory.federation.operator_tls("tax")  # another party's operator
    shutil.copy(tax.cert, config.parent / "operator.pem")
    shutil.copy(tax.key, config.parent / "operator.key")
    _, stderr, _ = _run("job", "list", "--config", str(config))
    assert "does it accept your certificate?" in stderr, stderr
    assert "an operator credential of bank" in stderr
