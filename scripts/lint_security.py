"""Security lint: unsafe deserialisation anywhere, and non-cryptographic randomness in the maths.

A standard-library ``ast`` walk over ``bund/compute/``, ``bund/parties/``, ``benchmarks/`` and
``scripts/`` (not ``tests/``, which pickle keys on purpose to check that they refuse). It fails,
printing ``file:line: rule: message`` for each finding, on:

- ``pickle-import``: importing ``pickle``, ``_pickle``, ``cPickle``, ``marshal``, ``shelve``,
  ``dill`` or ``cloudpickle`` (also through ``importlib.import_module``/``__import__`` with a
  literal name). Loading any of them runs code chosen by whoever wrote the bytes. Libraries that
  pickle inside themselves (``multiprocessing``, Ray) are not our code and not flagged; what we
  hand them is kept safe by keys that refuse pickling.
- ``pickle-load``: a call passing ``allow_pickle`` as anything but the literal ``False``
  (``np.load(..., allow_pickle=True)``), or any ``read_pickle``/``to_pickle`` call.
- ``torch-load``: ``torch.load`` (or ``from torch import load``) without ``weights_only=True``.
- ``yaml-load``: ``yaml.load``, ``load_all``, ``full_load``, ``unsafe_load`` and their ``_all``
  forms, called or imported; ``yaml.safe_load`` is the one to use.
- ``random-import``: importing ``random`` anywhere in ``bund/compute/`` or ``bund/parties/``. It is
  a Mersenne Twister: predictable from its outputs, so never a key, mask, blinding factor or
  noise. These packages draw those from ``secrets``/``os.urandom`` or OpenSSL, and nothing
  else in them needs ``random``.
- ``numpy-random``: any use of ``numpy.random`` in ``bund/compute/`` or ``bund/parties/`` (the
  module, an attribute of a numpy alias such as ``np.random.default_rng``, or an import from it),
  except in the files of :data:`NUMPY_RANDOM_ALLOWED`, each with the non-secret use that justifies
  it. ``benchmarks/`` and ``scripts/`` may use both generators for synthetic inputs: they never make
  a key, a mask or noise that protects anyone's data.

Run: ``python scripts/lint_security.py [ROOT]`` (default: the repository holding this script);
exit status 0 when clean, 1 with findings.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Directories scanned, relative to the repository root.
SCANNED = ("bund/compute", "bund/parties", "benchmarks", "scripts")
#: Directories where ``random`` and ``numpy.random`` are forbidden (key, mask and noise paths).
SECRET_PATHS = ("bund/compute", "bund/parties")
#: Modules whose loading runs arbitrary code from the bytes loaded.
PICKLE_MODULES = frozenset(
    {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"}
)
#: ``yaml`` functions that can build arbitrary Python objects from a document.
YAML_UNSAFE = frozenset(
    {"load", "load_all", "full_load", "full_load_all", "unsafe_load", "unsafe_load_all"}
)
#: Files of ``bund/compute/`` and ``bund/parties/`` that may use ``numpy.random``, and why.
NUMPY_RANDOM_ALLOWED: dict[str, str] = {
    "bund/compute/learn/logistic.py": (
        "orders mini-batches and splits train/test rows from the job's public seed, which every "
        "party must reproduce; it protects nothing"
    ),
    "bund/compute/learn/secureboost.py": (
        "picks each tree's rows (subsample) and each party's features (colsample_bytree) from the "
        "job's public seed, which the bank and every provider must reproduce alike; it protects "
        "nothing"
    ),
    "bund/compute/learn/risk_model.py": (
        "draws the initial weights of a plaintext model that its owner fits on its own data; "
        "the weights are no secret from anyone who runs the fit"
    ),
    "bund/parties/demo_data.py": (
        "draws the bundled synthetic demo datasets from a fixed, public seed so that they are "
        "reproducible; no key, mask or noise comes from it (only the demo, `bund data generate`, "
        "tests and benchmarks import it)"
    ),
}


@dataclass(frozen=True)
class Finding:
    """One violation: where, which rule, and what to do instead."""

    path: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.message}"


def _root_module(name: str) -> str:
    return name.split(".", 1)[0]


class _Checker(ast.NodeVisitor):
    """Collects the findings of one module; ``path`` is relative to the repository root."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.secret_path = path.startswith(tuple(f"{d}/" for d in SECRET_PATHS))
        self.numpy_random_ok = path in NUMPY_RANDOM_ALLOWED
        self.findings: list[Finding] = []
        self.numpy_names: set[str] = set()
        self.torch_names: set[str] = set()
        self.yaml_names: set[str] = set()
        self.torch_load_names: set[str] = set()

    def _flag(self, node: ast.AST, rule: str, message: str) -> None:
        self.findings.append(Finding(self.path, getattr(node, "lineno", 0), rule, message))

    def _check_module(self, node: ast.AST, module: str) -> None:
        """The rules on importing ``module`` (by statement or by a literal dynamic import)."""
        root = _root_module(module)
        if root in PICKLE_MODULES:
            self._flag(
                node,
                "pickle-import",
                f"{module} runs code from the bytes it loads; use a versioned binary layout, "
                "JSON or protobuf",
            )
        if root == "random" and self.secret_path:
            self._flag(
                node,
                "random-import",
                "random is predictable; draw keys, masks, blinding and noise from secrets",
            )
        if module.startswith("numpy.random"):
            self._numpy_random(node)

    def _numpy_random(self, node: ast.AST) -> None:
        if self.secret_path and not self.numpy_random_ok:
            self._flag(
                node,
                "numpy-random",
                "numpy.random is not a CSPRNG; use secrets, or add this file with its "
                "non-secret reason to NUMPY_RANDOM_ALLOWED in scripts/lint_security.py",
            )

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._check_module(node, alias.name)
            bound = alias.asname or _root_module(alias.name)
            if alias.name == "numpy" or (alias.asname is None and alias.name.startswith("numpy.")):
                self.numpy_names.add(bound)
            if alias.name == "torch" or (alias.asname is None and alias.name.startswith("torch.")):
                self.torch_names.add(bound)
            if alias.name == "yaml":
                self.yaml_names.add(bound)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level == 0:
            self._check_module(node, module)
            for alias in node.names:
                if module == "numpy" and alias.name == "random":
                    self._numpy_random(node)
                if module in PICKLE_MODULES or alias.name in PICKLE_MODULES:
                    self._check_module(node, alias.name)
                if module == "yaml" and alias.name in YAML_UNSAFE:
                    unsafe = f"yaml.{alias.name} builds arbitrary objects; use yaml.safe_load"
                    self._flag(node, "yaml-load", unsafe)
                if module == "torch" and alias.name == "load":
                    self.torch_load_names.add(alias.asname or alias.name)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if (
            node.attr == "random"
            and isinstance(node.value, ast.Name)
            and node.value.id in self.numpy_names
        ):
            self._numpy_random(node)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = None
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            owner = func.value.id
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if name in ("import_module", "__import__") and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                self._check_module(node, first.value)
        if "allow_pickle" in keywords and not _is_constant(keywords["allow_pickle"], False):
            self._flag(node, "pickle-load", "allow_pickle must be False: a pickled array runs code")
        if name in ("read_pickle", "to_pickle"):
            self._flag(node, "pickle-load", f"{name} uses pickle; store Parquet or CSV instead")
        torch_load = (name == "load" and owner in self.torch_names) or (
            isinstance(func, ast.Name) and func.id in self.torch_load_names
        )
        if torch_load and not _is_constant(keywords.get("weights_only"), True):
            self._flag(node, "torch-load", "torch.load unpickles: pass weights_only=True")
        if name in YAML_UNSAFE and owner in self.yaml_names:
            self._flag(node, "yaml-load", f"yaml.{name} builds arbitrary objects; use safe_load")
        self.generic_visit(node)


def _is_constant(node: ast.expr | None, value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def check_source(source: str, path: str) -> list[Finding]:
    """Findings in one module's source; ``path`` (relative, ``/``-separated) selects the rules."""
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        return [Finding(path, exc.lineno or 0, "syntax", f"cannot parse: {exc.msg}")]
    checker = _Checker(path)
    checker.visit(tree)
    return checker.findings


def _python_files(root: Path) -> Iterator[Path]:
    for directory in SCANNED:
        for path in sorted((root / directory).rglob("*.py")):
            if "__pycache__" not in path.parts:
                yield path


def check_tree(root: Path) -> list[Finding]:
    """Findings in every Python file under the scanned directories of ``root``."""
    findings: list[Finding] = []
    for path in _python_files(root):
        relative = path.relative_to(root).as_posix()
        findings += check_source(path.read_text(encoding="utf-8"), relative)
    return findings


def main(argv: Sequence[str] | None = None) -> int:
    """Print every finding under the root (first argument, default this repository); 1 if any."""
    args = list(sys.argv[1:] if argv is None else argv)
    root = Path(args[0]) if args else Path(__file__).resolve().parent.parent
    findings = check_tree(root)
    for finding in findings:
        print(finding)
    files = sum(1 for _ in _python_files(root))
    print(f"lint_security: {len(findings)} finding(s) in {files} files", file=sys.stderr)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
