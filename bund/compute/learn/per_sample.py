"""Closed-form per-sample gradients of the federated models, for DP-SGD without Opacus's hooks.

Both models of :mod:`bund.compute.learn.fed` are chains of linear layers under the logistic loss
``ℓ(z, y) = softplus(z) − y·z`` of one logit ``z``, whose derivative is ``r = σ(z) − y``:

* ``logistic`` (``z = w·x + b``): one record's gradient is ``r·x`` for ``w`` and ``r`` for ``b``.
* ``mlp`` (``a = W₁x + b₁``, ``h = relu(a)``, ``z = w₂·h + b₂``): with ``d = r·w₂ ⊙ [a > 0]``,
  ``r·h`` for ``w₂``, ``r`` for ``b₂``, ``d xᵀ`` for ``W₁`` and ``d`` for ``b₁``.

Each linear layer's per-sample gradient is an outer product ``δ aᵀ`` (and ``δ`` for its bias) of
the layer's input ``a`` and the loss's derivative ``δ`` at its output, so DP-SGD's clipping never
needs the per-sample gradients themselves: a record's squared norm is
``Σ_layers ‖δ‖²(‖a‖² + 1)``, and the clipped sum ``Σᵢ cᵢ gᵢ`` is one matrix product per layer.
:func:`clipped_sum` computes exactly what Opacus's ``DPOptimizer.clip_and_accumulate`` does (the
same clipping factor ``min(1, C / (‖gᵢ‖ + 10⁻⁶))``) without hooks and without a
``batch × parameters`` tensor; :func:`per_sample_gradients` materialises the gradients with
``einsum``, the reference that tests compare with Opacus's ``grad_sample``.

Torch is imported at the top: :mod:`~bund.compute.learn.fed` imports this module on first use.
"""

from __future__ import annotations

import torch
from torch import nn

#: The clipping factor's guard against a zero norm, as Opacus's ``DPOptimizer`` has it.
NORM_EPSILON = 1e-6


def supports(model: nn.Module) -> bool:
    """Whether ``model`` has closed-form per-sample gradients here.

    That is a single-output ``Linear`` with a bias (``logistic``), or ``Linear → ReLU → Linear``
    with biases and one output (``mlp``), as :func:`bund.compute.learn.fed.create_model` builds
    them.
    """
    return _layers(model) is not None


def _layers(model: nn.Module) -> list[nn.Linear] | None:
    """The model's linear layers, or ``None`` for a model this module does not cover."""
    if isinstance(model, nn.Linear):
        layers = [model]
    elif (
        isinstance(model, nn.Sequential)
        and len(model) == 3
        and isinstance(model[0], nn.Linear)
        and isinstance(model[1], nn.ReLU)
        and isinstance(model[2], nn.Linear)
    ):
        layers = [model[0], model[2]]
    else:
        return None
    if layers[-1].out_features != 1 or any(layer.bias is None for layer in layers):
        return None
    return layers


def _backward(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Per linear layer, its input ``a`` (B × in) and the loss's derivative ``δ`` at its output.

    Returns:
        The ``(a, δ)`` pairs in the order of ``model.parameters()``, and the mean loss.

    Raises:
        ValueError: For a model without closed-form gradients here (see :func:`supports`).
    """
    layers = _layers(model)
    if layers is None:
        raise ValueError("closed-form per-sample gradients cover the logistic and MLP models only")
    if len(layers) == 1:
        logits = nn.functional.linear(x, layers[0].weight, layers[0].bias).squeeze(-1)
        residual = (torch.sigmoid(logits) - y).unsqueeze(-1)
        pairs = [(x, residual)]
    else:
        first, last = layers
        pre = nn.functional.linear(x, first.weight, first.bias)
        hidden = torch.relu(pre)
        logits = nn.functional.linear(hidden, last.weight, last.bias).squeeze(-1)
        residual = (torch.sigmoid(logits) - y).unsqueeze(-1)
        inner = (residual * last.weight) * (pre > 0)  # ReLU's derivative, 0 at 0 as torch's
        pairs = [(x, inner), (hidden, residual)]
    loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
    return pairs, loss


def per_sample_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Each record's gradient of its own logistic loss, per parameter, as Opacus's ``grad_sample``.

    One tensor of shape ``(B, *p.shape)`` per parameter ``p`` of ``model.parameters()``: the
    gradient of record ``i``'s loss alone (Opacus's ``GradSampleModule`` under a ``mean`` loss
    rescales to this too).

    >>> model = nn.Linear(2, 1)
    >>> grads = per_sample_gradients(model, torch.ones(3, 2), torch.zeros(3))
    >>> [tuple(g.shape) for g in grads]
    [(3, 1, 2), (3, 1)]
    """
    with torch.no_grad():
        pairs, _ = _backward(model, x, y)
        out: list[torch.Tensor] = []
        for a, delta in pairs:
            out += [torch.einsum("bo,bi->boi", delta, a), delta]
        return out


def clipped_sum(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_grad_norm: float
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The sum of the records' per-sample gradients, each clipped to ``max_grad_norm``.

    Record ``i`` is scaled by ``min(1, C / (‖gᵢ‖ + 10⁻⁶))``, its whole gradient's norm over all
    parameters, as Opacus's flat clipping does; the norms come from the closed form
    ``‖gᵢ‖² = Σ_layers ‖δᵢ‖²(‖aᵢ‖² + 1)``, so no per-sample gradient is built.

    Returns:
        One tensor shaped as each parameter of ``model.parameters()``, and the batch's mean loss.

    >>> model = nn.Linear(2, 1)
    >>> sums, loss = clipped_sum(model, torch.ones(3, 2), torch.zeros(3), 1.0)
    >>> [tuple(s.shape) for s in sums]
    [(1, 2), (1,)]
    """
    with torch.no_grad():
        pairs, loss = _backward(model, x, y)
        terms = [delta.square().sum(1) * (a.square().sum(1) + 1) for a, delta in pairs]
        squared = sum(terms[1:], terms[0])
        factor = (max_grad_norm / (squared.sqrt() + NORM_EPSILON)).clamp(max=1.0).unsqueeze(-1)
        sums: list[torch.Tensor] = []
        for a, delta in pairs:
            scaled = delta * factor
            sums += [scaled.T @ a, scaled.sum(0)]
        return sums, loss
