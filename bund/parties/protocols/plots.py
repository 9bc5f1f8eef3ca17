"""Charts in protocol results: PNG rendering, and the federated training curves."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any


def png(figure: Any) -> bytes:
    """Render a matplotlib ``Figure`` to PNG bytes (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=100)
    return out.getvalue()


def training_curves(history: Sequence[Mapping[str, Any]], title: str) -> bytes:
    """Held-out AUC and log-loss of each evaluated model, with noise bands and the ε spent.

    ``history`` holds ``fed_dp_sgd``'s history entries: each with an ``eval_rows`` is one
    evaluation, drawn at ``round`` (rounds the model was trained) with ``auc_band`` and
    ``log_loss_band`` as error bars; under each round the ε a hospital had spent by then
    (``epsilon``: training and evaluations).
    """
    from matplotlib.figure import Figure

    points = [h for h in history if "eval_rows" in h]
    figure = Figure(figsize=(9, 3.8), dpi=100)
    left, right = figure.subplots(1, 2)
    panels = (
        (left, "auc", "held-out AUC (binned)", "#4c72b0"),
        (right, "log_loss", "held-out log-loss (clipped)", "#c44e52"),
    )
    for axes, key, label, colour in panels:
        shown = [h for h in points if h.get(key) is not None]
        axes.errorbar(
            [h["round"] for h in shown],
            [h[key] for h in shown],
            yerr=[h.get(f"{key}_band") or 0.0 for h in shown],
            marker="o",
            capsize=4,
            color=colour,
            label="noisy value, 95 % noise band",
        )
        axes.set_xticks(
            [h["round"] for h in points],
            [f"{h['round']}\nε {float(Fraction(str(h['epsilon']))):.2f}" for h in points],
        )
        axes.set_xlabel("rounds trained (ε per hospital spent by then)")
        axes.set_ylabel(label)
        axes.legend(fontsize=8)
    left.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return png(figure)


def forest_plot(rows: Sequence[tuple[str, float, float, float]], title: str) -> bytes:
    """Hazard ratios with their 95 % intervals on a log axis, one row per covariate.

    ``rows`` holds ``(covariate, hazard ratio, lower, upper)``; the line at 1 is no effect.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 0.9 + 0.45 * max(len(rows), 1)), dpi=100)
    axes = figure.add_subplot()
    y = list(range(len(rows)))[::-1]
    for k, (_, hr, low, high) in zip(y, rows, strict=True):
        axes.plot([low, high], [k, k], color="#4c72b0", linewidth=2)
        axes.plot([hr], [k], marker="s", color="#4c72b0")
    axes.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    axes.set_xscale("log")
    axes.set_yticks(y, [f"{name}  {hr:.3g} ({low:.3g}–{high:.3g})" for name, hr, low, high in rows])
    axes.set_xlabel("hazard ratio per unit (95 % interval: sampling and DP noise)")
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    return png(figure)
