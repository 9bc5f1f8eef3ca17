"""The deployment files, checked statically: no image can be pulled or built on this machine.

The Containerfile is parsed instruction by instruction (no hadolint here): every file it copies
exists, it installs with scripts/setup.sh, runs as a non-root user, keeps state in a volume and
bakes no secret in. compose.yaml is parsed as YAML: three nodes, each with its own state volume
and read-only files. The systemd unit is parsed here; scripts/check_unit.sh runs
``systemd-analyze verify`` on it in scripts/test.sh.
"""

from __future__ import annotations

import configparser
import json
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
INSTRUCTIONS = {
    "FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "USER", "VOLUME", "EXPOSE", "HEALTHCHECK",
    "STOPSIGNAL", "ENTRYPOINT", "CMD", "LABEL",
}  # fmt: skip


def instructions() -> list[tuple[str, str]]:
    """The Containerfile's instructions, continuation lines joined, comments dropped."""
    text = (DEPLOY / "Containerfile").read_text(encoding="utf-8")
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "a continuation line ends the file"
    out = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        assert keyword in INSTRUCTIONS, f"unknown instruction {keyword!r}"
        out.append((keyword, rest.strip()))
    return out


def test_the_containerfile_installs_as_the_readme_does_and_runs_unprivileged() -> None:
    steps = instructions()
    keywords = [k for k, _ in steps]
    assert keywords[0] == "FROM"
    base = steps[0][1]
    python = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert re.fullmatch(r"docker\.io/library/python:3\.\d+\.\d+-slim-bookworm", base), base
    assert python == ">=3.11" and ":3.11." in base  # the Python requirements.lock was made for
    for keyword, args in steps:
        if keyword == "COPY":
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    runs = [args for k, args in steps if k == "RUN"]
    assert any("bash scripts/setup.sh" in r for r in runs)  # exactly the README's set-up
    user = keywords.index("USER")
    assert steps[user][1] == "bund" and user < keywords.index("CMD")
    assert "useradd --system --uid 10001" in runs[0]
    assert json.loads(dict(steps)["VOLUME"]) == ["/var/lib/bund"]
    assert json.loads(dict(steps)["ENTRYPOINT"]) == ["bund"]
    assert json.loads(dict(steps)["CMD"]) == ["serve", "--config", "/etc/bund/node.toml"]
    for keyword, args in steps:  # no secret baked in, no key or state copied
        if keyword in ("ENV", "ARG"):
            assert not re.search(r"(?i)(password|secret|token|_key)\s*=", args), args
        if keyword == "COPY":
            assert not re.search(r"\.key\b|state|\.venv|parties", args), args


def test_the_build_context_leaves_out_virtualenvs_state_and_keys() -> None:
    ignored = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".venv", ".git", "deploy/parties", "var"} <= ignored
    assert "/deploy/parties/" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()


def test_compose_runs_three_nodes_each_with_its_own_state_and_read_only_files() -> None:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    services = doc["services"]
    assert set(services) == {"bank", "tax", "registry"}
    ports = set()
    for name, service in services.items():
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Containerfile"}
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        assert f"./parties/nodes/{name}:/etc/bund:ro" in service["volumes"]
        assert f"{name}-state:/var/lib/bund" in service["volumes"]
        ports.add(service["ports"][0].rsplit(":", 2)[1])
    assert len(ports) == 3
    assert set(doc["volumes"]) == {f"{n}-state" for n in services}


def test_the_systemd_unit_runs_serve_hardened_and_reloads_with_sighup() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "bund-node.service", encoding="utf-8")
    service = unit["Service"]
    assert service["ExecStart"] == "/opt/bund/.venv/bin/bund serve --config /etc/bund/node.toml"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert (service["User"], service["ProtectSystem"], service["NoNewPrivileges"]) == (
        "bund",
        "strict",
        "yes",
    )
    assert service["ReadWritePaths"] == "/var/lib/bund" and service["StateDirectory"] == "bund"
    assert service["CapabilityBoundingSet"] == ""
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    test_sh = (ROOT / "scripts" / "test.sh").read_text(encoding="utf-8")
    assert "bash scripts/check_unit.sh" in test_sh
