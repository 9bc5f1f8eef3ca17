"""How long the ``bund`` command takes: ``--help``, and a job's status and the job list at a node.

Each sample is a fresh process, as a person or a script runs the command, with Python's bytecode
cached (as an installed package has it: ``PYTHONPYCACHEPREFIX`` in a scratch directory, warmed by
one run of each command before the samples). The node is real: the bank's and the tax bureau's
(``bench_job.two_nodes``), in this process, over mutual TLS on loopback, with one finished PSI
job; the commands present the bank operator's credential from an ``operator.toml``.

Rows (median and minimum wall time, median CPU time of the process, user + system):

- ``interpreter``: ``python -c pass``, the floor every command pays;
- ``help``: ``bund --help``;
- ``job_status``: ``bund job status JOB --config operator.toml``, with ``breakdown_s``:
  ``interpreter``, ``imports`` (a process that imports exactly the modules the command loaded,
  less the interpreter) and ``command`` (the rest: typer building its commands, reading
  operator.toml, the TLS handshake and the call, printing);
- ``job_list``: ``bund job list --config operator.toml``.

``--baseline DIR`` runs the same commands from another checkout of Bund (say the commit before a
change, from ``git archive``) in the same run, against the same node, interleaved with this one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.bench_job import psi_job, two_nodes

REPO_ROOT = Path(__file__).resolve().parent.parent
#: What the ``bund`` console script runs.
_BUND = "import sys\nfrom bund.parties.cli import app\nsys.exit(app(prog_name='bund'))"
#: Run ``bund ARGV``, then write the modules it loaded to the file named by BUND_BENCH_MODULES.
_PROBE = """\
import os, sys
from bund.parties.cli import app
try:
    app(sys.argv[1:], prog_name="bund")
except SystemExit:
    pass
with open(os.environ["BUND_BENCH_MODULES"], "w") as out:
    for name, module in list(sys.modules.items()):
        if type(module).__name__ != "_LazyModule" and name != "__main__":
            out.write(name + "\\n")
"""
#: Import the modules listed in the file named by BUND_BENCH_MODULES, and nothing else.
_IMPORTS = """\
import importlib, os
for name in open(os.environ["BUND_BENCH_MODULES"]).read().split():
    try:
        importlib.import_module(name)
    except ImportError:
        pass
"""


def _finished_job(bank: Any, tax: Any, directory: Path) -> str:
    """Run one PSI job to its end (tax's approver signs); its id."""
    from bund.parties.client import NodeClient
    from bund.parties.config import operator_of
    from bund.parties.follow import follow_job
    from bund.parties.lifecycle.states import JobState

    spec, key = psi_job(directory)
    with (
        NodeClient(f"127.0.0.1:{bank.port}", "bank", operator_of(bank.config).tls) as at_bank,
        NodeClient(f"127.0.0.1:{tax.port}", "tax", operator_of(tax.config).tls) as at_tax,
    ):
        job_id = at_bank.submit(spec)
        follow_job(at_tax, job_id, until=lambda s: s.state is JobState.AWAITING_APPROVAL)
        at_tax.approve(job_id, key.sign(at_tax.approval_request(job_id).payload()))
        if follow_job(at_bank, job_id).state is not JobState.SUCCEEDED:
            raise RuntimeError(f"the benchmark job {job_id} did not succeed")
    return job_id


def _env(tree: Path, cache: Path, modules: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPATH=str(tree), PYTHONPYCACHEPREFIX=str(cache))
    env["BUND_BENCH_MODULES"] = str(modules)
    return env


def _timed(argv: Sequence[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Run ``argv`` to its end: its wall time and its CPU time (user + system), in seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[3:]} failed: {done.stderr.decode(errors='replace')}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def run(
    quick: bool, samples: int | None = None, baseline: Path | None = None
) -> list[dict[str, Any]]:
    """One row per command (and per tree with ``baseline``): wall and CPU times, medians."""
    count = samples or (3 if quick else 15)
    trees = {"this": REPO_ROOT, **({"baseline": baseline.resolve()} if baseline else {})}
    with (
        tempfile.TemporaryDirectory(prefix="bund-bench-cli-") as tmp,
        two_nodes(Path(tmp)) as (
            bank,
            tax,
        ),
    ):
        directory = Path(tmp)
        job_id = _finished_job(bank, tax, directory)
        operator = directory / "bank" / "id" / "operator" / "operator.toml"
        operator.write_text(f'party = "bank"\nnode = "127.0.0.1:{bank.port}"\n', encoding="utf-8")
        python = sys.executable
        commands = {
            "interpreter": [python, "-c", "pass"],
            "help": [python, "-c", _BUND, "--help"],
            "job_status": [python, "-c", _BUND, "job", "status", job_id, "-c", str(operator)],
            "job_list": [python, "-c", _BUND, "job", "list", "-c", str(operator)],
        }
        envs, loaded = {}, {}
        for label, tree in trees.items():
            modules = directory / f"modules-{label}.txt"
            envs[label] = _env(tree, directory / "pycache", modules)
            status = commands["job_status"][3:]
            # In the scratch directory: ``python -c`` looks for modules in its working directory
            # first, and this checkout's would shadow the baseline's.
            subprocess.run(
                [python, "-c", _PROBE, *status],
                env=envs[label],
                cwd=directory,
                capture_output=True,
                check=True,
            )
            loaded[label] = len(modules.read_text().split())
            commands[f"imports_{label}"] = [python, "-c", _IMPORTS]
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        names = [n for n in commands if not n.startswith("imports_")]
        for sample in range(count + 1):  # the first round warms the bytecode cache
            for label in trees:
                for name in [*names, f"imports_{label}"]:
                    measured = _timed(commands[name], envs[label], directory)
                    if sample:
                        times.setdefault((label, name.removesuffix(f"_{label}")), []).append(
                            measured
                        )
    rows = []
    for (label, name), runs in times.items():
        if name == "imports":
            continue
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        row: dict[str, Any] = {
            "family": "cli",
            "kernel": name,
            "params": {"tree": label, "samples": count},
            "ops_per_s": 1 / statistics.median(walls),
            "unit": "runs/s",
            "median_wall_s": statistics.median(walls),
            "min_wall_s": min(walls),
            "median_cpu_s": statistics.median(cpus),
        }
        if name == "job_status":
            start = statistics.median(w for w, _ in times[(label, "interpreter")])
            imports = statistics.median(w for w, _ in times[(label, "imports")])
            row["modules_loaded"] = loaded[label]
            row["breakdown_s"] = {
                "interpreter": start,
                "imports": imports - start,
                "command": row["median_wall_s"] - imports,
            }
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 samples per command, not 15")
    parser.add_argument("--samples", type=int, help="samples per command")
    parser.add_argument("--baseline", type=Path, help="another Bund checkout to run alike")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the rows here")
    args = parser.parse_args()
    rows = run(args.quick, args.samples, args.baseline)
    for row in rows:
        wall, least, cpu = (row[k] * 1000 for k in ("median_wall_s", "min_wall_s", "median_cpu_s"))
        line = (
            f"{row['params']['tree']:>8} {row['kernel']:<12} wall {wall:6.1f} ms "
            f"(min {least:6.1f}), cpu {cpu:6.1f} ms"
        )
        if "breakdown_s" in row:
            parts = ", ".join(f"{k} {v * 1000:.1f}" for k, v in row["breakdown_s"].items())
            line += f"; {parts} ms; {row['modules_loaded']} modules"
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
