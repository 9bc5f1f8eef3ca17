"""The security lint (scripts/lint_security.py): each rule flags bad sources, spares good ones."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "lint_security", ROOT / "scripts" / "lint_security.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


lint = _load()


def rules(source: str, path: str = "bund/compute/x.py") -> list[tuple[int, str]]:
    return [(f.line, f.rule) for f in lint.check_source(source, path)]


@pytest.mark.parametrize(
    ("source", "path", "rule"),
    [
        ("import pickle", "benchmarks/b.py", "pickle-import"),
        ("import os\nimport cloudpickle as cp", "scripts/s.py", "pickle-import"),
        ("from dill import loads", "bund/parties/p.py", "pickle-import"),
        ("from marshal import loads", "bund/compute/c.py", "pickle-import"),
        ("import shelve", "bund/compute/c.py", "pickle-import"),
        ("import _pickle", "bund/compute/c.py", "pickle-import"),
        (
            "import importlib\nm = importlib.import_module('pickle')",
            "bund/parties/p.py",
            "pickle-import",
        ),
        ("m = __import__('marshal')", "bund/compute/c.py", "pickle-import"),
        (
            "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
            "benchmarks/b.py",
            "pickle-load",
        ),
        ("from numpy import load\nload(f, allow_pickle=flag)", "bund/compute/c.py", "pickle-load"),
        ("import pandas as pd\npd.read_pickle('x')", "scripts/s.py", "pickle-load"),
        ("import torch\ntorch.load('m.pt')", "bund/compute/c.py", "torch-load"),
        (
            "import torch as t\nt.load('m.pt', weights_only=False)",
            "bund/parties/p.py",
            "torch-load",
        ),
        ("from torch import load as tl\ntl('m.pt')", "benchmarks/b.py", "torch-load"),
        ("import yaml\nyaml.load(s, Loader=yaml.Loader)", "scripts/s.py", "yaml-load"),
        ("import yaml as y\ny.unsafe_load(s)", "bund/compute/c.py", "yaml-load"),
        ("from yaml import full_load", "bund/parties/p.py", "yaml-load"),
        ("import random\nkey = random.getrandbits(128)", "bund/compute/dp/m.py", "random-import"),
        ("from random import randbytes", "bund/parties/protocols/p.py", "random-import"),
        (
            "import numpy as np\nmask = np.random.randint(0, 2**31)",
            "bund/compute/c.py",
            "numpy-random",
        ),
        (
            "import numpy\nnoise = numpy.random.default_rng().laplace()",
            "bund/parties/p.py",
            "numpy-random",
        ),
        ("from numpy.random import default_rng", "bund/compute/c.py", "numpy-random"),
        ("from numpy import random as r", "bund/compute/c.py", "numpy-random"),
        ("import numpy.random", "bund/parties/p.py", "numpy-random"),
        ("def f(:", "bund/compute/c.py", "syntax"),
    ],
)
def test_each_rule_flags_its_bad_source(source: str, path: str, rule: str) -> None:
    found = rules(source, path)
    assert rule in {r for _, r in found}
    assert all(line >= 1 for line, _ in found)


@pytest.mark.parametrize(
    ("source", "path"),
    [
        ("import yaml\nyaml.safe_load(s)", "bund/compute/c.py"),
        ("import torch\ntorch.load('m.pt', weights_only=True)", "bund/compute/c.py"),
        (
            "import numpy as np\nnp.load('a.npy', allow_pickle=False)\nnp.load('b.npy')",
            "bund/parties/p.py",
        ),
        ("import secrets\nkey = secrets.token_bytes(32)", "bund/compute/c.py"),
        (
            "rng = make()\nx = rng.random(3)",
            "bund/parties/p.py",
        ),  # a Generator's method, not numpy.random
        ("import random\nids = random.sample(range(9), 3)", "benchmarks/b.py"),
        ("import numpy as np\nrng = np.random.default_rng(0)", "scripts/s.py"),
        ("import numpy as np\norder = np.random.default_rng(1)", "bund/compute/learn/logistic.py"),
        ("json = 'pickle'\nprint('import random')", "bund/compute/c.py"),
        ("from . import pickle_free", "bund/compute/c.py"),
    ],
)
def test_safe_sources_and_allowed_places_pass(source: str, path: str) -> None:
    assert rules(source, path) == []


def test_findings_carry_the_line_and_main_prints_file_colon_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert rules("x = 1\n\nimport pickle\n", "scripts/s.py") == [(3, "pickle-import")]
    (tmp_path / "bund" / "compute").mkdir(parents=True)
    (tmp_path / "bund" / "compute" / "bad.py").write_text(
        "import numpy as np\n\nn = np.random.rand()\n"
    )
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.py").write_text("import pickle\n")  # tests are not scanned
    assert lint.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [f"bund/compute/bad.py:3: numpy-random: {out[0].split(': ', 2)[2]}"]
    (tmp_path / "bund" / "compute" / "bad.py").write_text("import secrets\n")
    assert lint.main([str(tmp_path)]) == 0


def test_every_allow_listed_file_exists_and_says_why() -> None:
    for path, reason in lint.NUMPY_RANDOM_ALLOWED.items():
        assert (ROOT / path).is_file(), path
        assert len(reason) > 20


def test_the_repository_is_clean() -> None:
    findings = lint.check_tree(ROOT)
    assert findings == [], "\n".join(map(str, findings))
