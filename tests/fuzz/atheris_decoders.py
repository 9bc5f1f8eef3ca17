"""Coverage-guided fuzzing of the wire decoders with atheris (optional: ``pip install atheris``).

The first input byte picks a decoder of ``test_decoders.decoders()``, the rest is its input;
every input must decode or raise a defined error (``test_decoders.check``), else atheris stops
and saves the input. Run it for as long as you like::

    python -m tests.fuzz.atheris_decoders -atheris_runs=100000

``test_atheris.py`` runs it briefly when atheris is installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from bund.compute import insecure
    from tests.fuzz.test_decoders import check, decoders

NAMES = sorted(decoders())


def one_input(data: bytes) -> None:
    """Decode ``data[1:]`` with the decoder that ``data[0]`` picks."""
    if not data:
        return
    check(decoders()[NAMES[data[0] % len(NAMES)]], data[1:])


def main() -> None:
    """Seed atheris with each decoder's valid encodings and fuzz until told to stop."""
    insecure.enable_insecure_test_parameters()
    corpus = Path("atheris-seeds")  # in the working directory, beside any crash atheris saves
    corpus.mkdir(exist_ok=True)
    for index, name in enumerate(NAMES):
        for n, seed in enumerate(decoders()[name].seeds):
            (corpus / f"{index}-{n}").write_bytes(bytes([index]) + seed)
    atheris.Setup([*sys.argv, str(corpus)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
