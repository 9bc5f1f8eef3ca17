"""Survival and Cox benchmarks: Bund's jobs against lifelines on the pooled plaintext.

Rows (wall time, each the median of ``repeats`` runs after a warm-up; the lifelines baseline is
measured in the same run, so ``ratio_vs_lifelines`` compares like with like):

- ``km_logrank``: a ``dp_stats`` survival job in memory over three hospitals holding GBSG2 (686
  patients), stratified by hormone therapy, one bin per day (2,659 bins): two curves with bands
  and the log-rank test; ``noise`` off or on. Baseline: lifelines' two ``KaplanMeierFitter``
  fits, two ``NelsonAalenFitter`` fits and ``logrank_test`` on the pooled table.
- ``km_16384``: the same job unstratified over 16,384 daily bins (44.9 years), noise on; with
  ``masked_bytes``, the size of one hospital's masked vector. Baseline: one
  ``KaplanMeierFitter`` and one ``NelsonAalenFitter`` fit on the pooled table.
- ``cox``: a ``cox_ph`` job in memory over three hospitals holding Rossi (432 people, 7
  covariates, 52 weekly bins, 8 Newton iterations and the concordance), noise off. Baseline:
  ``CoxPHFitter().fit`` on the pooled table (lifelines also computes its concordance).
- ``cox_accuracy``: the demo's Cox model (4,500 patients, age and eGFR, 6 yearly bins, one
  Newton step) at ε = 1 and ε = 4: the RMSE of each coefficient over ``runs`` noisy jobs against
  the noise-off job, beside the sampling standard error, and ``rmse_vs_sampling``, their ratio
  (``ops_per_s`` is None). The noise-off job runs 8 iterations, so the RMSE also holds the
  one-step estimate's distance from the converged fit (``coef_one_step_noise_off``).

Run: ``PYTHONPATH=. python -m benchmarks.bench_survival [--quick]``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from bund.compute import insecure
from bund.parties.demo import COX_PARAMS
from bund.parties.demo_data import DEMO_PATIENTS_PER_SCALE, DEMO_SEED, generate_health
from bund.parties.jobs import JobSpec, Participant, run_in_memory
from bund.parties.protocols import cox_ph, dp_stats

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")


def _median(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _tables(frame: Any) -> dict[str, Any]:
    from bund.parties.data import Table

    return {
        h: Table.from_columns(h, {c: [str(v) for v in frame.iloc[k::3][c]] for c in frame.columns})
        for k, h in enumerate(HOSPITALS)
    }


def _spec(protocol: str, role: str, params: dict[str, Any], columns: dict[str, str]) -> JobSpec:
    return JobSpec(
        protocol=protocol,
        participants=(
            *(Participant(h, role, "d", columns) for h in HOSPITALS),
            Participant("insurer", "analyst"),
        ),
        receivers=("insurer",),
        purpose="benchmark",
        requester="insurer",
        params=params,
    )


def _row(kernel: str, params: dict[str, Any], seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "family": "survival",
        "kernel": kernel,
        "params": params,
        "ops_per_s": 1 / seconds,
        "unit": "jobs/s",
        "ms": round(seconds * 1000, 1),
        **extra,
    }


def _km(repeats: int) -> list[dict[str, Any]]:
    from lifelines import KaplanMeierFitter, NelsonAalenFitter
    from lifelines.datasets import load_gbsg2
    from lifelines.statistics import logrank_test

    g = load_gbsg2()
    tables = _tables(g)

    def baseline() -> None:
        for group in ("no", "yes"):
            sub = g[g.horTh == group]
            KaplanMeierFitter().fit(sub.time, sub.cens)
            NelsonAalenFitter(nelson_aalen_smoothing=False).fit(sub.time, sub.cens)
        logrank_test(
            g.time[g.horTh == "no"],
            g.time[g.horTh == "yes"],
            g.cens[g.horTh == "no"],
            g.cens[g.horTh == "yes"],
        )

    reference = _median(baseline, repeats)
    rows = []
    for noise in ("off", "on"):
        params = {
            "kind": "survival", "column": "time", "event": "cens", "lower": "0",
            "upper": "2659", "bins": 2659, "epsilon": "1", "min_cell": 5, "noise": noise,
            "column2": "horTh", "categories2": "no|yes",
        }  # fmt: skip
        job = _spec("dp_stats", "contributor", params, {})
        seconds = _median(lambda job=job: run_in_memory(job, dp_stats.DEFINITION, tables), repeats)
        rows.append(
            _row(
                "km_logrank",
                {"bins": 2659, "strata": 2, "noise": noise, "patients": len(g)},
                seconds,
                lifelines_ms=round(reference * 1000, 1),
                ratio_vs_lifelines=round(seconds / reference, 1),
            )
        )
    params = {
        "kind": "survival", "column": "time", "event": "cens", "lower": "0",
        "upper": "16384", "bins": 16384, "epsilon": "1", "min_cell": 5,
    }  # fmt: skip
    job = _spec("dp_stats", "contributor", params, {})
    seconds = _median(lambda: run_in_memory(job, dp_stats.DEFINITION, tables), repeats)

    def pooled() -> None:
        KaplanMeierFitter().fit(g.time, g.cens)
        NelsonAalenFitter(nelson_aalen_smoothing=False).fit(g.time, g.cens)

    single = _median(pooled, repeats)
    rows.append(
        _row(
            "km_16384",
            {"bins": 16384, "noise": "on", "patients": len(g)},
            seconds,
            masked_bytes=12 + 8 * (2 * 16384 + 1),
            lifelines_ms=round(single * 1000, 1),
            ratio_vs_lifelines=round(seconds / single, 1),
        )
    )
    return rows


ROSSI_RANGES = "fin:0:1;age:17:44;race:0:1;wexp:0:1;mar:0:1;paro:0:1;prio:0:18"


def _cox(repeats: int) -> list[dict[str, Any]]:
    from lifelines import CoxPHFitter
    from lifelines.datasets import load_rossi

    r = load_rossi()
    tables = _tables(r)
    reference = _median(lambda: CoxPHFitter().fit(r, "week", "arrest"), repeats)
    params = {
        "features": "fin,age,race,wexp,mar,paro,prio", "feature_ranges": ROSSI_RANGES,
        "upper": "52", "bins": 52, "iterations": 8, "min_cell": 5, "noise": "off",
        "concordance_bins": 50,
    }  # fmt: skip
    job = _spec("cox_ph", "hospital", params, {"time": "week", "event": "arrest"})
    seconds = _median(lambda: run_in_memory(job, cox_ph.DEFINITION, tables), repeats)
    return [
        _row(
            "cox",
            {"patients": len(r), "covariates": 7, "bins": 52, "iterations": 8},
            seconds,
            lifelines_ms=round(reference * 1000, 1),
            ratio_vs_lifelines=round(seconds / reference, 1),
        )
    ]


def _coefficients(job: JobSpec, tables: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    result = run_in_memory(job, cox_ph.DEFINITION, tables)["insurer"]
    assert result is not None
    rows = list(csv.DictReader(io.StringIO(result.artifacts["coefficients.csv"].decode())))
    return (
        np.array([float(x["coef"]) for x in rows]),
        np.array([float(x["se_sampling"]) for x in rows]),
    )


def _accuracy(runs: int) -> list[dict[str, Any]]:
    data = generate_health(DEMO_PATIENTS_PER_SCALE, DEMO_SEED)  # the shipped demo data
    tables = dict(zip(HOSPITALS, data.values(), strict=True))
    params: dict[str, Any] = {**COX_PARAMS, "concordance_bins": 0}
    del params["epsilon"], params["concordance_epsilon"]
    columns = {"time": "follow_up_days"}
    exact, sampling = _coefficients(
        _spec("cox_ph", "hospital", {**params, "noise": "off", "iterations": 8}, columns), tables
    )
    one_step, _ = _coefficients(
        _spec("cox_ph", "hospital", {**params, "noise": "off"}, columns), tables
    )
    rows = []
    for epsilon in ("1", "4"):
        job = _spec("cox_ph", "hospital", {**params, "epsilon": epsilon}, columns)
        errors = np.array([_coefficients(job, tables)[0] - exact for _ in range(runs)])
        rmse = np.sqrt((errors**2).mean(axis=0))
        rows.append(
            {
                "family": "survival",
                "kernel": "cox_accuracy",
                "params": {
                    "epsilon": epsilon,
                    "runs": runs,
                    "patients": 3 * DEMO_PATIENTS_PER_SCALE,
                    "iterations": params["iterations"],
                },
                "ops_per_s": None,
                "coef_exact": [round(float(x), 5) for x in exact],
                "coef_one_step_noise_off": [round(float(x), 5) for x in one_step],
                "rmse": [round(float(x), 5) for x in rmse],
                "se_sampling": [round(float(x), 5) for x in sampling],
                "rmse_vs_sampling": [round(float(x), 1) for x in rmse / sampling],
            }
        )
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """Every row; ``quick`` times one repeat and averages the accuracy over 2 runs, not 20."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        insecure.enable_insecure_test_parameters()
    try:
        repeats = 1 if quick else 5
        return [*_km(repeats), *_cox(repeats), *_accuracy(2 if quick else 20)]
    finally:
        insecure.disable_insecure_test_parameters()


def main() -> None:
    """Print the rows as JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    for row in run(parser.parse_args().quick):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
