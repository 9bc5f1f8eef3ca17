"""A short coverage-guided run of ``atheris_decoders.py``; skipped where atheris is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris is optional: pip install atheris")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_atheris_finds_no_undefined_error_in_a_short_run(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.atheris_decoders", "-atheris_runs=3000", "-seed=1"],
        cwd=tmp_path,  # where atheris would save a crashing input
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])},
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
