"""The crypto hot-path benchmark suite: run kernel families, print, save JSON and plots.

``bund bench KERNEL [--quick] [--json FILE]`` calls :func:`main`; so does
``python -m benchmarks.suite KERNEL [--quick] [--json FILE] [--plots DIR]``. ``KERNEL`` is a
family of :data:`KERNELS`, ``baselines`` (the families of :data:`BASELINE_FAMILIES`) or
``all``. Each family is a module with ``run(quick: bool) -> list[dict]``; rows carry at least
``family``, ``kernel``, ``params`` and ``ops_per_s`` (``None`` for size rows, which carry
``bytes``), Paillier rows ``ratio_vs_phe``, OU rows ``ratio_vs_phe`` and ``ratio_vs_paillier``,
CKKS rows ``ratio_vs_tenseal``.
Families are imported lazily, so a missing or broken one is reported and skipped, and the
others still run.

The JSON holds ``machine`` (CPU model, cores, load averages at the start and the end, Python,
library versions), ``parameters`` (what was asked for), ``rows`` and ``skipped``. One PNG per family
(``<family>.png``) goes to the plot directory: ``--plots``, or beside ``--json`` by default;
so does ``baselines.png``, every row measured against a library baseline (phe, TenSEAL, Opacus,
the curve ceiling) as Bund's speed relative to it, when the run has any; the report's
``baselines`` holds the same comparisons, and :func:`baseline_table` writes them as Markdown.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import pathlib
import platform
import time
import traceback
from collections.abc import Sequence
from typing import Any

#: Kernel family -> module with ``run(quick: bool) -> list[dict[str, Any]]``.
KERNELS: dict[str, str] = {
    "paillier": "benchmarks.bench_paillier",
    "ou": "benchmarks.bench_ou",
    "ckks": "benchmarks.bench_ckks",
    "ckks_scoring": "benchmarks.bench_ckks_scoring",
    "paillier_scoring": "benchmarks.bench_paillier_scoring",
    "psi": "benchmarks.bench_psi",
    "psi_multi": "benchmarks.bench_psi_multi",
    "psi_unbalanced": "benchmarks.bench_psi_unbalanced",
    "dp": "benchmarks.bench_dp",
    "vertical_lr": "benchmarks.bench_vertical_lr",
    "secureboost": "benchmarks.bench_secureboost",
    "fed": "benchmarks.bench_fed",
    "scaling": "benchmarks.bench_scaling",
    "witness": "benchmarks.bench_witness",
    "serving": "benchmarks.bench_serving",
    "survival": "benchmarks.bench_survival",
    "job": "benchmarks.bench_job",
    "cli": "benchmarks.bench_cli",
}

#: The families whose rows measure a Bund kernel against its library baseline in the same run:
#: ``bund bench baselines`` runs them and compares them in one table and one PNG.
BASELINE_FAMILIES = ("paillier", "ou", "ckks", "psi", "fed")

_LIBRARIES = (
    "gmpy2",
    "phe",
    "tenseal",
    "numpy",
    "cryptography",
    "pynacl",
    "matplotlib",
    "rich",
)


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> list[float]:
    try:
        return list(os.getloadavg())
    except OSError:
        return []


def machine_info() -> dict[str, Any]:
    """Where the numbers were taken: CPU, cores, load, Python and library versions."""
    versions: dict[str, str | None] = {}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "load_average_at_start": _load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": versions,
    }


def run_family(name: str, quick: bool) -> list[dict[str, Any]]:
    """Import one family's module and run it.

    Raises:
        KeyError: If ``name`` is not in :data:`KERNELS`.
        ModuleNotFoundError: If its module (or a dependency) is missing.
    """
    module = importlib.import_module(KERNELS[name])
    rows: list[dict[str, Any]] = module.run(quick)
    return rows


def _params_text(params: dict[str, Any]) -> str:
    shown = {k: v for k, v in params.items() if k not in ("note", "coeff_mod_bits")}
    parts = []
    for key, value in shown.items():
        if isinstance(value, float):
            value = f"{value:.3g}"
        parts.append(f"{key}={value}")
    return " ".join(parts)


def _rate_text(row: dict[str, Any]) -> str:
    if row.get("ops_per_s") is None:
        size = row.get("bytes")
        return "" if size is None else f"{size:,} B"
    return f"{row['ops_per_s']:,.0f} {row.get('unit', 'ops/s')}"


def print_table(rows: Sequence[dict[str, Any]], title: str) -> None:
    """Print the rows as a rich table; the ratio columns show Bund ÷ phe (÷ Paillier for OU)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    ratios = {"vs phe": "ratio_vs_phe", "vs paillier": "ratio_vs_paillier"}
    shown = [name for name, key in ratios.items() if any(key in row for row in rows)]
    for column in ("family", "kernel", "params", "rate", *shown):
        left = column in ("family", "kernel", "params")
        table.add_column(column, justify="left" if left else "right")
    for row in rows:
        cells = [row.get(ratios[name]) for name in shown]
        table.add_row(
            str(row["family"]),
            str(row["kernel"]),
            _params_text(row.get("params", {})),
            _rate_text(row),
            *("" if ratio is None else f"{ratio:,.1f}×" for ratio in cells),
        )
    Console(width=180).print(table)


def _label(row: dict[str, Any]) -> str:
    params = row.get("params", {})
    keys = ("bits", "N", "terms", "n", "threads")
    extra = [
        f"{k}={params[k]}" for k in keys if k in params and not (k == "threads" and params[k] == 1)
    ]
    return " ".join([str(row["kernel"]), *extra])


def plot_family(rows: Sequence[dict[str, Any]], family: str, path: pathlib.Path) -> None:
    """Save one PNG: a horizontal bar per timed row (log scale), annotated with ``vs phe``."""
    from matplotlib.figure import Figure

    timed = [r for r in rows if r.get("ops_per_s")]
    fig = Figure(figsize=(10, 0.32 * max(len(timed), 4) + 1.2))
    ax = fig.add_subplot()
    labels = [_label(r) for r in timed]
    rates = [float(r["ops_per_s"]) for r in timed]
    positions = list(range(len(timed)))
    ax.barh(positions, rates, color="#3b6ea5")
    ax.set_yticks(positions, labels, fontsize=7)
    ax.invert_yaxis()
    if rates:
        ax.set_xscale("log")
    ax.set_xlabel("operations per second (log scale)")
    ax.set_title(f"{family}: rates" + (" and ratio vs phe" if family == "paillier" else ""))
    for pos, row in zip(positions, timed, strict=True):
        ratio = row.get("ratio_vs_phe")
        if ratio is not None:
            ax.text(float(row["ops_per_s"]), pos, f" {ratio:,.1f}×", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


#: The parameters that tell one baseline comparison from another in the table.
_BASELINE_KEYS = ("bits", "N", "terms", "n", "threads", "model", "batch", "mode")


def baseline_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row measured against a library, as Bund's speed relative to it (above 1: faster).

    phe and TenSEAL rows carry rate ratios; Opacus rows carry a CPU-time ratio (inverted here);
    PSI rows carry their fraction of the curve ceiling (at most 1: no PSI on the curve is
    faster). Rows without a baseline are left out.
    """
    out = []
    for row in rows:
        found: list[tuple[str, float]] = []
        if row.get("ratio_vs_phe") is not None:
            found.append(("phe", float(row["ratio_vs_phe"])))
        if row.get("ratio_vs_tenseal") is not None:
            found.append(("TenSEAL", float(row["ratio_vs_tenseal"])))
        if row.get("ratio_vs_opacus"):
            found.append(("Opacus", 1 / float(row["ratio_vs_opacus"])))
        if row.get("fraction_of_ceiling") is not None:
            found.append(("curve ceiling", float(row["fraction_of_ceiling"])))
        shown = {k: v for k, v in row.get("params", {}).items() if k in _BASELINE_KEYS}
        params = _params_text(shown)
        for baseline, speed in found:
            out.append(
                {
                    "family": row["family"],
                    "kernel": row["kernel"],
                    "params": params,
                    "label": f"{row['family']} {row['kernel']} {params}".strip(),
                    "baseline": baseline,
                    "speed_vs_baseline": speed,
                }
            )
    return out


def baseline_table(entries: Sequence[dict[str, Any]]) -> str:
    """The comparisons of :func:`baseline_rows` as a Markdown table."""
    lines = [
        "| family | kernel | params | baseline | Bund's speed ÷ baseline's |",
        "|---|---|---|---|---:|",
    ]
    for e in entries:
        lines.append(
            f"| {e['family']} | `{e['kernel']}` | {e['params']} | {e['baseline']} | "
            f"{e['speed_vs_baseline']:.2f}× |"
        )
    return "\n".join(lines) + "\n"


def plot_baselines(entries: Sequence[dict[str, Any]], path: pathlib.Path) -> None:
    """Save one PNG: a bar per comparison, Bund's speed relative to its baseline (log scale)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    colours = {
        "phe": "#3b6ea5",
        "TenSEAL": "#6a9f58",
        "Opacus": "#d1883f",
        "curve ceiling": "#8c6bb1",
    }
    fig = Figure(figsize=(10, 0.3 * max(len(entries), 4) + 1.4))
    ax = fig.add_subplot()
    positions = list(range(len(entries)))
    speeds = [e["speed_vs_baseline"] for e in entries]
    ax.barh(positions, speeds, color=[colours.get(e["baseline"], "#777777") for e in entries])
    ax.set_yticks(positions, [f"{e['label']} vs {e['baseline']}" for e in entries], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    if speeds:
        ax.set_xscale("log")
    ax.set_xlabel("Bund's speed ÷ the baseline's, same run (log scale; right of 1: faster)")
    ax.set_title("Bund's kernels against their library baselines")
    shown = sorted({e["baseline"] for e in entries})
    handles = [Patch(color=colours.get(name, "#777777"), label=name) for name in shown]
    ax.legend(handles=handles, loc="lower right", fontsize=7)
    for pos, speed in zip(positions, speeds, strict=True):
        ax.text(speed, pos, f" {speed:,.2f}×", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(
    kernel: str,
    quick: bool,
    json_path: pathlib.Path | None,
    plot_dir: pathlib.Path | None,
) -> dict[str, Any]:
    """Run one family (or ``"all"``), print a table, write the JSON and one PNG per family.

    Args:
        kernel: A key of :data:`KERNELS`, ``"baselines"`` or ``"all"``.
        quick: Small sizes only (seconds, not minutes); small test keys where noted in the rows.
        json_path: Where to write the report, or ``None``.
        plot_dir: Where to write ``<family>.png``, or ``None`` for no plots.

    Returns:
        The report: ``machine``, ``parameters``, ``rows``, ``skipped``, ``baselines``.

    Raises:
        ValueError: If ``kernel`` is unknown.
    """
    if kernel not in ("all", "baselines") and kernel not in KERNELS:
        choices = [*KERNELS, "baselines", "all"]
        raise ValueError(f"unknown kernel family {kernel!r}; choose from {choices}")
    families = {"all": list(KERNELS), "baselines": list(BASELINE_FAMILIES)}.get(kernel, [kernel])
    report: dict[str, Any] = {
        "machine": machine_info(),
        "parameters": {"kernel": kernel, "quick": quick, "families": families},
        "rows": [],
        "skipped": {},
    }
    started = time.perf_counter()
    for family in families:
        try:
            rows = run_family(family, quick)
        except ModuleNotFoundError as err:
            report["skipped"][family] = f"not available: {err}"
            print(f"[{family}] skipped: {err}")
            continue
        except Exception as err:  # one broken family must not lose the others' results
            report["skipped"][family] = f"failed: {err!r}"
            traceback.print_exc()
            continue
        report["rows"].extend(rows)
        print_table(rows, f"{family} ({'quick' if quick else 'full'})")
        if plot_dir is not None:
            plot_dir.mkdir(parents=True, exist_ok=True)
            plot_family(rows, family, plot_dir / f"{family}.png")
    report["baselines"] = baseline_rows(report["rows"])
    if report["baselines"]:
        print(baseline_table(report["baselines"]))
        if plot_dir is not None:
            plot_dir.mkdir(parents=True, exist_ok=True)
            plot_baselines(report["baselines"], plot_dir / "baselines.png")
    report["parameters"]["wall_s"] = time.perf_counter() - started
    report["machine"]["load_average_at_end"] = _load_average()
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return report


def _cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Bund crypto hot-path benchmarks")
    parser.add_argument(
        "kernel", choices=[*KERNELS, "baselines", "all"], help="kernel family, baselines, or all"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds, not minutes")
    parser.add_argument("--json", type=pathlib.Path, metavar="FILE", help="write the report here")
    parser.add_argument(
        "--plots", type=pathlib.Path, metavar="DIR", help="PNG directory (default: beside --json)"
    )
    args = parser.parse_args(argv)
    plot_dir = args.plots or (args.json.parent if args.json else None)
    report = main(args.kernel, args.quick, args.json, plot_dir)
    return 1 if report["skipped"] and not report["rows"] else 0


if __name__ == "__main__":
    raise SystemExit(_cli())
