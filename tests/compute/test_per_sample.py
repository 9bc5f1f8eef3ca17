"""Closed-form per-sample gradients against Opacus's; their clipped sum against DPOptimizer's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

from bund.compute.learn import fed, per_sample


def _model(kind: str) -> torch.nn.Module:
    spec = fed.ModelSpec(kind, 7, hidden=16)
    model = fed.create_model(spec)
    fed.set_weights(model, fed.initial_weights(spec, 3))
    return model


def _batch(rows: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(rows)
    x = rng.uniform(-1, 1, (rows, 7)) * scale
    y = (rng.uniform(size=rows) < 0.3).astype(np.float64)
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)


def _opacus(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float) -> DPOptimizer:
    """Opacus's per-sample gradients (hooks) of a mean loss, clipped and summed, noise-free."""
    gsm = GradSampleModule(model, loss_reduction="mean")
    optimizer = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=len(x),
        loss_reduction="mean",
    )
    optimizer.zero_grad()
    loss = torch.nn.BCEWithLogitsLoss()(gsm(x.requires_grad_(True)).squeeze(-1), y)
    loss.backward()
    optimizer.clip_and_accumulate()
    optimizer.loss = loss.detach()
    return optimizer


@pytest.mark.parametrize("kind", fed.MODEL_KINDS)
@pytest.mark.parametrize("rows", [1, 5, 256])
def test_per_sample_gradients_are_opacus_grad_samples(kind: str, rows: int) -> None:
    model = _model(kind)
    x, y = _batch(rows)
    ours = per_sample.per_sample_gradients(model, x, y)
    _opacus(model, x, y, 1.0)
    theirs = [p.grad_sample for p in model.parameters()]
    assert [g.shape for g in ours] == [g.shape for g in theirs]
    for mine, opacus in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, opacus, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", fed.MODEL_KINDS)
def test_the_clipped_sum_is_opacus_clip_and_accumulate(kind: str) -> None:
    model = _model(kind)
    x, y = _batch(300, scale=4.0)
    norms = torch.stack(
        [g.flatten(1).norm(dim=1) for g in per_sample.per_sample_gradients(model, x, y)], dim=1
    ).norm(dim=1)
    clip = float(norms.median())  # half the records clipped, half not
    sums, loss = per_sample.clipped_sum(model, x, y, clip)
    optimizer = _opacus(model, x, y, clip)
    theirs = [p.summed_grad for p in optimizer.params]
    assert [s.shape for s in sums] == [s.shape for s in theirs]
    for mine, opacus in zip(sums, theirs, strict=True):
        torch.testing.assert_close(mine, opacus, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, optimizer.loss)


def test_other_architectures_are_refused() -> None:
    nn = torch.nn
    assert per_sample.supports(_model("logistic")) and per_sample.supports(_model("mlp"))
    for model in (
        nn.Linear(3, 2),
        nn.Linear(3, 1, bias=False),
        nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)),
        nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
        nn.Sequential(nn.Linear(3, 4), nn.ReLU()),
    ):
        assert not per_sample.supports(model)
        with pytest.raises(ValueError, match="logistic and MLP"):
            per_sample.clipped_sum(model, torch.zeros(2, 3), torch.zeros(2), 1.0)
