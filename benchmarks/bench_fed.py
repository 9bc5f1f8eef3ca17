"""Federated DP-SGD benchmark: DP-SGD step against plain SGD, SecAgg per round, evaluation, metrics.

Rows (timings are the median of five timed repeats after a warm-up, wall time, one torch thread,
except the step rows, which are CPU time):

- ``sgd_step``, ``opacus_dp_sgd_step``, ``dp_sgd_step``: one training step on a fixed batch of
  ``batch`` rows of 7 features, for the ``logistic`` and the ``mlp`` (16 hidden units) models,
  all measured in one run on one torch thread. ``sgd_step`` is plain SGD (autograd);
  ``opacus_dp_sgd_step`` is stock Opacus in ``mode`` (its own noise from torch's generator,
  ``secure_mode`` off): the reference; ``dp_sgd_step`` is Bund's (``fed.make_step``: clipping,
  and the secure-mode noise from the ChaCha20 stream, drawn inside the step) in ``mode``, where
  ``closed_form`` is the closed-form per-sample gradients (compared with stock Opacus's
  ``hooks``). ``cpu_s`` is the median CPU time (``time.process_time``) of one step over
  ``steps`` steps after a warm-up, the variants interleaved in blocks so that the machine's
  load falls on all alike; ``cpu_s_quartiles`` shows the spread. ``ratio_vs_plain`` and
  ``ratio_vs_opacus`` divide by the ``sgd_step`` and ``opacus_dp_sgd_step`` medians of the same
  model and batch. Ops are steps per CPU second.
- ``secagg_round``: one whole secure-aggregation round in one process for ``hospitals`` clients
  and ``cells`` cells, with ``dropouts`` clients dropping out after their upload: every client's
  key derivation, sharing, inbox opening, masking and answer, and the server's unmasking.
  ``client_s`` is one client's share of the time, ``server_s`` the unmasking; ``bytes_per_client``
  what one client uploads in the round. Ops are rounds.
- ``fed_evaluation``: one hospital's DP evaluation of a model on ``rows`` held-out rows with
  ``bins`` score bins (scores, binned counts and clipped log-loss sum, discrete Laplace noise at
  ``epsilon``), and the coordinator's reading of the metrics and noise bands from the sum
  (``read_s``). Ops are evaluations; ``epsilon`` is what each costs a hospital, ``bytes`` the
  cells it adds to the masked vector.
- ``fed_metrics``: held-out binned AUC and clipped log-loss (noisy, with their 95 % noise bands)
  of a short in-memory ``fed_dp_sgd`` job on the health demo (three hospitals) with DP on,
  against the same model trained without privacy on the pooled training rows (plain SGD, same
  steps; exact metrics). Ops is ``None``; the row carries the metrics and the ε they cost.

Run: ``python -m benchmarks.bench_fed [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np

from bund.compute.dp import dropout_secagg
from bund.compute.learn import fed, metrics
from bund.parties.demo_data import generate_health
from bund.parties.jobs import JobSpec, Participant, run_in_memory
from bund.parties.protocols import fed_dp_sgd

HOSPITALS = {"hospital-a": "hospital_a", "hospital-b": "hospital_b", "hospital-c": "hospital_c"}


def _median_seconds(fn: Callable[[], object], repeats: int = 5, inner: int = 1) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def _cpu_per_step(
    steps: dict[str, Callable[[], object]], rounds: int, block: int = 20
) -> dict[str, list[float]]:
    """CPU seconds of each step, ``rounds`` times ``block`` steps of each in turn, after a warm-up.

    Interleaving spreads the shared machine's load over every variant alike, so their ratios
    hold even when the absolute times drift.
    """
    for step in steps.values():
        for _ in range(block):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            for _ in range(block):
                start = time.process_time()
                step()
                samples[name].append(time.process_time() - start)
    return samples


#: The stock Opacus mode each Bund mode is compared with, where it is not the same mode: the
#: closed form computes what Opacus's flat clipping with hooks does.
_OPACUS_MODE = {"closed_form": "hooks"}


def _opacus_step(spec: fed.ModelSpec, mode: str, batch: int) -> Callable[[Any, Any], None]:
    """One step of stock Opacus in ``mode`` (torch's generator, ``secure_mode`` off)."""
    import torch
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.grad_sample.gsm_exp_weights import GradSampleModuleExpandedWeights
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    model = fed.create_model(spec)
    loss = torch.nn.BCEWithLogitsLoss(reduction="mean")
    common = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "expected_batch_size": batch,
              "loss_reduction": "mean"}  # fmt: skip
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    if mode == "ghost":
        gsm = GradSampleModuleFastGradientClipping(model, loss_reduction="mean", max_grad_norm=1.0)
        optimizer = DPOptimizerFastGradientClipping(sgd, **common)
        criterion = DPLossFastGradientClipping(gsm, optimizer, loss, "mean")
    else:
        wrap = GradSampleModuleExpandedWeights if mode == "ew" else GradSampleModule
        gsm, criterion = wrap(model, loss_reduction="mean"), loss
        optimizer = DPOptimizer(sgd, **common)

    def step(x: Any, y: Any) -> None:
        xt = torch.as_tensor(x, dtype=torch.float32)
        yt = torch.as_tensor(y, dtype=torch.float32)
        optimizer.zero_grad()
        criterion(gsm(xt.requires_grad_(True)).squeeze(-1), yt).backward()
        optimizer.step()

    return step


def _steps(kind: str, batch: int, modes: tuple[str, ...], rounds: int) -> list[dict[str, Any]]:
    import torch

    torch.set_num_threads(1)
    spec = fed.ModelSpec(kind, 7, hidden=16)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, 7))
    y = (rng.uniform(size=batch) < 0.3).astype(np.float64)
    steps: dict[str, Callable[[], object]] = {}
    plain = fed.make_step(spec, None, batch, 0)
    steps["plain"] = lambda: plain(x, y)
    for mode in modes:
        reference = _OPACUS_MODE.get(mode, mode)
        if f"opacus/{reference}" not in steps:
            stock = _opacus_step(spec, reference, batch)
            steps[f"opacus/{reference}"] = lambda stock=stock: stock(x, y)  # type: ignore[misc]
        config = fed.DpSgdConfig(1, 0.1, 1.0, 1.0, 0.05, mode)
        bund = fed.make_step(spec, config, batch, secrets.randbits(63))
        steps[f"bund/{mode}"] = lambda bund=bund: bund(x, y)  # type: ignore[misc]
    samples = _cpu_per_step(steps, rounds)
    cpu = {name: statistics.median(times) for name, times in samples.items()}
    params = {"model": kind, "batch": batch, "threads": 1}

    def row(kernel: str, name: str, **extra: Any) -> dict[str, Any]:
        quartiles = statistics.quantiles(samples[name], n=4)
        return {
            "family": "fed", "kernel": kernel, "params": {**params, **extra},
            "ops_per_s": 1 / cpu[name], "cpu_s": cpu[name],
            "cpu_s_quartiles": [quartiles[0], quartiles[2]], "steps": len(samples[name]),
            "ratio_vs_plain": cpu[name] / cpu["plain"],
        }  # fmt: skip

    rows = [row("sgd_step", "plain")]
    for name in steps:
        side, _, mode = name.partition("/")
        if side == "opacus":
            rows.append(row("opacus_dp_sgd_step", name, mode=mode))
        elif side == "bund":
            reference = cpu[f"opacus/{_OPACUS_MODE.get(mode, mode)}"]
            rows.append(
                row("dp_sgd_step", name, mode=mode) | {"ratio_vs_opacus": cpu[name] / reference}
            )
    return rows


def _secagg(n: int, cells: int, dropouts: int) -> dict[str, Any]:
    t = n - dropouts
    context = b"bench"
    values = np.arange(cells, dtype=np.int64)
    timings: dict[str, float] = {}

    def one_round() -> None:
        start = time.perf_counter()
        clients = {
            i: dropout_secagg.RoundSecrets.from_seed(secrets.token_bytes(32))
            for i in range(1, n + 1)
        }
        roster = {i: c.advertised(context) for i, c in clients.items()}
        boxes = {i: c.share(i, roster, t, context) for i, c in clients.items()}
        opened = {
            i: c.open_inbox(i, roster, t, {j: boxes[j][i] for j in roster if j != i}, context)
            for i, c in clients.items()
        }
        masked = {i: c.mask(i, values, roster, context) for i, c in clients.items()}
        answering = list(range(1, t + 1))  # the last `dropouts` clients vanish after uploading
        reveals = {i: opened[i].reveal(i, sorted(masked), []) for i in answering}
        middle = time.perf_counter()
        dropout_secagg.unmask(masked, roster, reveals, t, context)
        timings["client"] = (middle - start) / n
        timings["server"] = time.perf_counter() - middle

    total = _median_seconds(one_round, repeats=3)
    upload = 104 + (8 + 156 * (n - 1)) + (12 + 8 * cells) + (8 + 69 * n)
    return {
        "family": "fed", "kernel": "secagg_round",
        "params": {"hospitals": n, "cells": cells, "dropouts": dropouts},
        "ops_per_s": 1 / total, "client_s": timings["client"], "server_s": timings["server"],
        "bytes_per_client": upload,
    }  # fmt: skip


def _evaluation(rows: int, bins: int) -> dict[str, Any]:
    spec = fed.ModelSpec("logistic", 7)
    config = fed.EvalConfig(bins, Fraction(1, 100), Fraction(1))
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (rows, 7))
    y = (rng.uniform(size=rows) < 0.15).astype(np.float64)
    weights = fed.initial_weights(spec, 0)

    def one() -> np.ndarray:
        counts = fed.evaluation_counts(config, fed.scores(spec, weights, x), y)
        return fed.add_evaluation_noise(config, counts)

    total = one() * 3
    seconds = _median_seconds(one)
    read_s = _median_seconds(lambda: fed.read_evaluation(config, total, 3))
    return {
        "family": "fed", "kernel": "fed_evaluation",
        "params": {"rows": rows, "bins": bins, "epsilon": "1"},
        "ops_per_s": 1 / seconds, "read_s": read_s, "epsilon": str(config.epsilon),
        "bytes": 8 * config.length,
    }  # fmt: skip


def _metrics(rows_per_hospital: int, rounds: int, model: str) -> dict[str, Any]:
    data = generate_health(rows_per_hospital, 7)
    tables = {h: data[t] for h, t in HOSPITALS.items()}
    params = {
        "model": model, "rounds": rounds, "local_steps": 20, "sample_rate": 0.05,
        "noise_multiplier": 1.0, "max_grad_norm": 1.0, "learning_rate": 0.5, "seed": 1,
        "eval_epsilon": "2",
    }  # fmt: skip
    spec = JobSpec(
        protocol="fed_dp_sgd",
        participants=(
            Participant("insurer", "coordinator"),
            *(Participant(h, "hospital", "patients") for h in HOSPITALS),
        ),
        receivers=("insurer",), purpose="benchmark", requester="insurer", params=params,
    )  # fmt: skip
    start = time.perf_counter()
    result = run_in_memory(spec, fed_dp_sgd.DEFINITION, tables)["insurer"]
    job_s = time.perf_counter() - start
    assert result is not None
    plan = fed_dp_sgd.plan(spec)
    # Non-private reference: the same model and steps on the pooled rows, one held-out split.
    xs, ys = [], []
    for table in tables.values():
        columns = {f: table.numeric(f) for f in plan.features}
        xs.append(fed.scale_features(columns, plan.ranges))
        ys.append(table.numeric("event"))
    x, y = np.concatenate(xs), np.concatenate(ys)
    order = np.random.default_rng(0).permutation(len(y))
    cut = int(0.8 * len(y))
    train, test = order[:cut], order[cut:]
    w0 = fed.initial_weights(plan.model, 1)
    batch = max(1, round(0.05 * rows_per_hospital * 0.8))
    update = fed.plain_update(plan.model, w0, x[train], y[train], rounds * 20, 0.5, batch, 0)
    plain = fed.scores(plan.model, w0 + update.delta, x[test])
    clip = float(plan.evaluation.clip)
    s = result.summary
    return {
        "family": "fed", "kernel": "fed_metrics",
        "params": {"model": model, "rows_per_hospital": rows_per_hospital, "rounds": rounds,
                   "noise_multiplier": 1.0, "local_steps": 20, "sample_rate": 0.05,
                   "eval_epsilon": "2", "eval_bins": plan.evaluation.bins},
        "ops_per_s": None, "bytes": len(result.artifacts["model.json"]),
        "dp_auc": s["final_auc"], "dp_auc_band": s["final_auc_band"],
        "dp_auc_tolerance": s["final_auc_tolerance"],
        "dp_log_loss": s["final_log_loss"], "dp_log_loss_band": s["final_log_loss_band"],
        "epsilon_training": s["epsilon_training_hospital-a"],
        "epsilon": s["epsilon_hospital-a"], "delta": s["delta"],
        "plain_auc": metrics.auc(y[test], plain),
        "plain_log_loss": float(metrics.clipped_log_loss(y[test], plain, clip).mean()),
        "job_s": job_s,
    }  # fmt: skip


def run(quick: bool) -> list[dict[str, Any]]:
    """Every row of the family; ``quick`` keeps sizes small (seconds in all)."""
    rows: list[dict[str, Any]] = []
    batches = (64,) if quick else (256, 1024)
    modes = ("hooks", "closed_form") if quick else fed.GRAD_SAMPLE_MODES
    for kind in fed.MODEL_KINDS:
        for batch in batches:
            rows += _steps(kind, batch, modes, rounds=2 if quick else 40)
    sizes = [(3, 8), (5, 1000)] if quick else [
        (n, cells) for n in (3, 5, 10, 20) for cells in (8, 1_000, 100_000)
    ]  # fmt: skip
    for n, cells in sizes:
        rows.append(_secagg(n, cells, (n - 1) // 2))
    rows.append(_evaluation(300 if quick else 1500, 20))
    if quick:
        rows.append(_metrics(60, 1, "logistic"))
    else:
        rows += [_metrics(1500, 10, "logistic"), _metrics(1500, 10, "mlp")]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(args.quick), indent=1, default=str))


if __name__ == "__main__":
    main()
