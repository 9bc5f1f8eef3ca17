"""``bund config check``: validate any file a person writes without starting anything.

Each kind of file has one loader, the one the node, the CLI or the regulator uses, so a file
that passes here is one they accept: ``node`` (``node.toml``, with the policy it names),
``policy`` (``policy.toml``), ``spec`` (a job spec), ``workflow`` (a workflow file),
``regulator`` (``regulator.toml``) and ``operator`` (``operator.toml``). The kind comes from the
file's name or its keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bund.compute.errors import BundError
from bund.parties.errors import ConfigError
from bund.parties.schema import read_toml

#: The kinds of file ``bund config check`` knows, and the file names that give them away.
KINDS = ("node", "policy", "spec", "workflow", "regulator", "operator")
_NAMES = {
    "node.toml": "node",
    "policy.toml": "policy",
    "regulator.toml": "regulator",
    "operator.toml": "operator",
}


@dataclass(frozen=True)
class CheckResult:
    """What checking one file found: its kind (if known) and its errors (none: it is fine)."""

    path: Path
    kind: str | None
    errors: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Whether the file is valid."""
        return not self.errors


def _schemas() -> dict[str, type[BaseModel]]:
    from bund.parties.config import NodeFile, OperatorFile
    from bund.parties.policy import PolicyFile
    from bund.parties.regulator import RegulatorFile
    from bund.parties.specfile import SpecFile
    from bund.parties.workflow import CreditWorkflowFile

    return {
        "node": NodeFile,
        "policy": PolicyFile,
        "spec": SpecFile,
        "workflow": CreditWorkflowFile,
        "regulator": RegulatorFile,
        "operator": OperatorFile,
    }


def detect_kind(path: Path, doc: dict[str, Any]) -> str | None:
    """The kind of file: from its name, else the schema that knows most of its top-level keys.

    ``None`` when two kinds know as many (say a file holding only ``[limits]``).
    """
    if path.name in _NAMES:
        return _NAMES[path.name]
    scores = {kind: len(set(doc) & set(model.model_fields)) for kind, model in _schemas().items()}
    best = max(scores.values())
    winners = [kind for kind, score in scores.items() if score == best]
    return winners[0] if best and len(winners) == 1 else None


def _check_node(path: Path, party: str | None) -> None:
    from bund.parties.config import load_config

    load_config(path)


def _check_policy(path: Path, party: str | None) -> None:
    from bund.parties.policy import load_policy

    load_policy(path, party)


def _check_spec(path: Path, party: str | None) -> None:
    from bund.parties.specfile import load_spec_file

    load_spec_file(path, party)


def _check_workflow(path: Path, party: str | None) -> None:
    from bund.parties.workflow import load_credit_workflow

    load_credit_workflow(path, party or "bank")


def _check_regulator(path: Path, party: str | None) -> None:
    from bund.parties.regulator import load_regulator_config

    load_regulator_config(path)


def _check_operator(path: Path, party: str | None) -> None:
    from bund.parties.config import load_operator_config

    load_operator_config(path)


_CHECKS: dict[str, Callable[[Path, str | None], None]] = {
    "node": _check_node,
    "policy": _check_policy,
    "spec": _check_spec,
    "workflow": _check_workflow,
    "regulator": _check_regulator,
    "operator": _check_operator,
}


def check_file(path: Path, kind: str | None = None, party: str | None = None) -> CheckResult:
    """Validate ``path`` as a file of ``kind`` (detected when ``None``) with its own loader.

    Args:
        path: The file.
        kind: One of :data:`KINDS`, or ``None`` to tell from the file.
        party: The party whose file it is: a policy's datasets must be its own, and it requests
            a spec (default: the spec's first participant) or a workflow (default: ``bank``).

    Returns:
        The kind and every error found (each naming the file and the key to fix).
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    try:
        doc = read_toml(path, "file", ConfigError)
        kind = kind or detect_kind(path, doc)
        if kind is None:
            why = f"{path}: cannot tell what kind of file this is from its keys"
            return CheckResult(path, None, (f"{why}; pass --kind {'|'.join(KINDS)}",))
        _CHECKS[kind](path, party)
    except (BundError, OSError) as exc:
        return CheckResult(path, kind, tuple(str(exc).splitlines()))
    return CheckResult(path, kind, ())
