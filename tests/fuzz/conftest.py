"""The atheris harness imports atheris at module level: without it, doctest collection skips it."""

from __future__ import annotations

import importlib.util

collect_ignore = [] if importlib.util.find_spec("atheris") else ["atheris_decoders.py"]
