"""Horizontal federated learning maths: models, DP-SGD local updates (Opacus), FedAvg, accounting.

The federated protocol (``bund/parties/protocols/fed_dp_sgd.py``, ``docs/protocols/fed-dp-sgd.md``)
calls these functions; tests and benchmarks call them directly as the plaintext reference.

* Models: ``logistic`` (one linear layer) and ``mlp`` (linear, ReLU, linear) over features scaled
  to ``[-1, 1]`` with *public* ranges (:func:`scale_features`): a data-dependent scaling would
  be a release that DP-SGD does not account for.
* A local update (:func:`local_update`) is ``steps`` DP-SGD steps as Opacus takes them: Poisson
  sampling (as Opacus's ``UniformWithReplacementSampler``), per-sample clipping to
  ``max_grad_norm`` and Gaussian noise of ``noise_multiplier · max_grad_norm`` (Opacus's
  ``DPOptimizer``, with its noise drawn as in ``secure_mode``: the sum of four draws, against
  floating-point attacks). The per-sample gradients are closed-form by default
  (:mod:`bund.compute.learn.per_sample`, the same arithmetic without Opacus's hooks), or
  Opacus's. ``torchcsprng`` does not exist for torch 2.13, so the noise and the Poisson sampling
  come from :class:`SecureStream`, a ChaCha20 keystream under a 256-bit key that the caller
  derives from ``secrets``, never from torch's Mersenne Twister; :class:`GaussianNoise` turns
  it into a step's noise for all parameters at once.
* :func:`fedavg` is the plain, unweighted mean of the clients' updates: the reference the secure
  aggregation must reproduce.
* :func:`epsilon_spent` is Opacus's RDP (or PRV) accountant over ``steps`` DP-SGD steps;
  :func:`epsilon_bound` rounds it *up* to an exact rational for the budget ledger.
* Evaluation (:class:`EvalConfig`): each client counts its held-out rows by score bin and label
  and sums their clipped log-losses, as integers; adds its own discrete Laplace noise sized from
  its own ε and the sensitivity it derives from the settings; and :func:`read_evaluation` reads
  the binned AUC and the mean log-loss, with noise bands, from the securely aggregated sum.
  :func:`held_out` splits the rows per record, so one record's presence moves no other row.

Torch and Opacus are imported on first use, so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from bund.compute.dp.mechanisms import DiscreteLaplace
from bund.compute.errors import InvalidInputError
from bund.compute.learn import metrics

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    #: One DP-SGD step on a batch ``(x, y)`` of tensors, or on an empty batch (``None``, which
    #: releases noise only); it returns the batch's mean loss (``None`` for an empty batch).
    DpStep = Callable[[tuple[Tensor, Tensor] | None], Tensor | None]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Model kinds, by name.
MODEL_KINDS = ("logistic", "mlp")
#: Per-sample gradient modes: the closed form (:mod:`bund.compute.learn.per_sample`), which covers
#: both model kinds and is the default (a fifth of Opacus's step time), and Opacus's three.
GRAD_SAMPLE_MODES = ("closed_form", "hooks", "ew", "ghost")
#: Privacy accountants, by Opacus's name.
ACCOUNTANTS = ("rdp", "prv")
#: Public value ranges of the health demo's numeric columns (clinically plausible limits).
HEALTH_RANGES: Mapping[str, tuple[float, float]] = {
    "age": (18.0, 100.0),
    "systolic_bp_mmhg": (80.0, 220.0),
    "heart_rate_bpm": (35.0, 160.0),
    "bmi_kg_m2": (15.0, 50.0),
    "hba1c_pct": (4.0, 14.0),
    "ldl_mmol_l": (0.5, 8.0),
    "egfr_ml_min_1_73m2": (5.0, 130.0),
}
#: Resolution of the exact privacy charge: epsilon is rounded up to a multiple of this.
EPSILON_RESOLUTION = Fraction(1, 10**6)
#: Fractional bits of one record's clipped log-loss in an evaluation's loss sum.
LOSS_FRAC_BITS = 16
#: The most score bins an evaluation takes.
MAX_BINS = 1000
#: The smallest probability clip: it bounds one record's loss by ln(10^6) ≈ 13.8.
MIN_CLIP = Fraction(1, 10**6)
#: Confidence of the noise bands of :func:`read_evaluation`.
BAND_CONFIDENCE = 0.95
#: The two-sided standard normal quantile of :data:`BAND_CONFIDENCE`.
_Z = 1.959963984540054


def _torch() -> Any:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the install
        raise ImportError("federated training needs torch: pip install 'torch==2.13.0'") from None
    return torch


@dataclass(frozen=True)
class ModelSpec:
    """The architecture every party agrees on: its kind, input width and hidden width."""

    kind: str
    features: int
    hidden: int = 16

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model kind must be one of {MODEL_KINDS}, not {self.kind!r}")
        if not 1 <= self.features <= 1024 or not 1 <= self.hidden <= 1024:
            raise ValueError("features and hidden width must lie in 1..1024")

    @property
    def size(self) -> int:
        """Number of parameters (the length of a weight vector)."""
        if self.kind == "logistic":
            return self.features + 1
        return self.features * self.hidden + self.hidden + self.hidden + 1


def create_model(spec: ModelSpec) -> torch.nn.Module:
    """A fresh torch module of ``spec`` (weights to be loaded with :func:`set_weights`)."""
    torch = _torch()
    nn = torch.nn
    if spec.kind == "logistic":
        return nn.Linear(spec.features, 1)  # type: ignore[no-any-return]
    return nn.Sequential(  # type: ignore[no-any-return]
        nn.Linear(spec.features, spec.hidden), nn.ReLU(), nn.Linear(spec.hidden, 1)
    )


def initial_weights(spec: ModelSpec, seed: int) -> FloatArray:
    """The starting weights from the public ``seed`` (torch's default initialisation)."""
    torch = _torch()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_weights(create_model(spec))


def get_weights(model: torch.nn.Module) -> FloatArray:
    """The module's parameters as one float64 vector."""
    torch = _torch()
    with torch.no_grad():
        vector = torch.nn.utils.parameters_to_vector(model.parameters())
    return np.asarray(vector.detach().numpy(), dtype=np.float64)


def set_weights(model: torch.nn.Module, weights: FloatArray) -> None:
    """Load a weight vector into the module's parameters."""
    torch = _torch()
    params = list(model.parameters())
    if len(weights) != sum(p.numel() for p in params):
        raise InvalidInputError(f"a weight vector of {len(weights)} values does not fit the model")
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(
            torch.as_tensor(np.asarray(weights), dtype=params[0].dtype), params
        )


def scale_features(
    columns: Mapping[str, FloatArray], ranges: Mapping[str, tuple[float, float]]
) -> FloatArray:
    """A row-major feature matrix: each column mapped from its public range onto ``[-1, 1]``.

    Raises:
        InvalidInputError: If a column has no public range or a range is empty.
    """
    out = []
    for name, values in columns.items():
        if name not in ranges:
            raise InvalidInputError(f"feature {name!r} has no public value range")
        low, high = ranges[name]
        if not high > low:
            raise InvalidInputError(f"feature {name!r} has an empty range [{low}, {high}]")
        out.append(np.clip((np.asarray(values, dtype=np.float64) - low) / (high - low), 0, 1))
    return np.stack(out, axis=1) * 2.0 - 1.0


@dataclass(frozen=True)
class DpSgdConfig:
    """One client's local DP-SGD in a round.

    Attributes:
        steps: DP-SGD steps per round (each one Poisson batch).
        learning_rate: Step size of plain SGD on the noisy mean gradient.
        noise_multiplier: Noise standard deviation over the clipping norm (0 only in tests).
        max_grad_norm: Per-sample clipping norm.
        sample_rate: Probability that a row joins a batch (Poisson sampling).
        grad_sample_mode: How per-sample gradients are computed: ``closed_form``
            (:mod:`bund.compute.learn.per_sample`: Opacus's clipping, noise and step, without its
            hooks), or Opacus's ``hooks``, ``ew`` or ``ghost``.
    """

    steps: int
    learning_rate: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    grad_sample_mode: str = GRAD_SAMPLE_MODES[0]

    def __post_init__(self) -> None:
        if self.steps < 1 or self.learning_rate <= 0 or self.max_grad_norm <= 0:
            raise ValueError("steps, learning rate and clipping norm must be positive")
        if self.noise_multiplier < 0 or not 0 < self.sample_rate <= 1:
            raise ValueError("noise multiplier must be >= 0 and sample rate in (0, 1]")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}")


@dataclass(frozen=True)
class LocalUpdate:
    """A client's round: its weight change and the mean training loss of its batches."""

    delta: FloatArray
    loss: float
    rows: int


def _tensors(x: FloatArray, y: FloatArray) -> tuple[torch.Tensor, torch.Tensor]:
    torch = _torch()
    return (
        torch.as_tensor(np.asarray(x), dtype=torch.float32),
        torch.as_tensor(np.asarray(y), dtype=torch.float32),
    )


class SecureStream:
    """Uniform and Gaussian draws from a ChaCha20 keystream: DP-SGD's noise and sampling.

    The key (32 bytes) must come from ``secrets``; the same key gives the same draws, which is
    what lets a resumed hospital rebuild a saved update byte for byte.

    >>> a, b = SecureStream(bytes(32)), SecureStream(bytes(32))
    >>> bool((a.secure_normal(4) == b.secure_normal(4)).all())
    True
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a SecureStream key is 32 bytes")
        cipher = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None)
        self._keystream = cipher.encryptor()

    def uniform(self, n: int) -> FloatArray:
        """``n`` draws from the open interval (0, 1), 53 random bits each."""
        words = np.frombuffer(self._keystream.update(bytes(8 * n)), dtype="<u8")
        return ((words >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53

    def fill(self, buffer: bytearray, zeros: bytes) -> None:
        """Overwrite ``buffer`` with the next ``len(buffer)`` keystream bytes.

        ``zeros`` is ``len(buffer)`` zero bytes (the plaintext, kept by the caller so that no
        step allocates it); the keystream goes straight into ``buffer``, with no copy.
        """
        self._keystream.update_into(zeros, buffer)

    def secure_normal(self, n: int) -> FloatArray:
        """``n`` standard normals as Opacus's ``secure_mode`` makes them: four summed, halved.

        The same values as :class:`GaussianNoise` draws from this point of the stream for
        ``n`` values with a standard deviation of 1 (in float64).
        """
        torch = _torch()
        noise = GaussianNoise(self, [(n,)], torch.float64)
        return np.array(noise.draw(1.0)[0].numpy(), dtype=np.float64)


class GaussianNoise:
    """A DP-SGD step's Gaussian noise for fixed tensor shapes, from a :class:`SecureStream`.

    Each :meth:`draw` takes ``32·n`` keystream bytes for ``n`` values in one call, and turns
    them into noise with whole-buffer torch operations and no loop per tensor:

    * the low 52 bits ``j`` of each 64-bit word (native byte order) become the uniform
      ``u = (j + 1/2)·2⁻⁵²`` in (0, 1): the bits are put under the exponent of [1, 2) and
      ``1 − 2⁻⁵³`` subtracted, both exact;
    * the inverse normal CDF (``torch.special.ndtri``) turns each ``u`` into a standard normal
      ``z`` (|z| < 8.21, symmetric: ``u`` and ``1 − u`` are both on the grid, and ``ndtri`` works
      on ``1 − u`` above one half, which is exact);
    * value ``i`` is ``(z_i + z_{n+i} + z_{2n+i} + z_{3n+i}) / 2`` times ``std``: the sum of four
      standard normals that Opacus's ``secure_mode`` draws against the floating-point attacks on
      a single Gaussian sample (Mironov, CCS 2012; Holohan & Braghin, arXiv 2107.10138), which
      is again a standard normal.

    The tensors :meth:`draw` returns are views of one buffer of ``dtype`` that the next draw
    overwrites: add them to something before drawing again.

    >>> import torch
    >>> noise = GaussianNoise(SecureStream(bytes(32)), [(2, 3), (2,)], torch.float32)
    >>> [tuple(t.shape) for t in noise.draw(1.0)]
    [(2, 3), (2,)]
    """

    def __init__(
        self, stream: SecureStream, shapes: Sequence[tuple[int, ...]], dtype: torch.dtype
    ) -> None:
        torch = _torch()
        sizes = [math.prod(shape) for shape in shapes]
        self._stream, self._n = stream, sum(sizes)
        self._buffer = bytearray(32 * self._n)
        self._zeros = bytes(32 * self._n)
        self._words = torch.frombuffer(self._buffer, dtype=torch.int64) if self._n else None
        self._sums = torch.empty(self._n, dtype=torch.float64)
        self._out = torch.empty(self._n, dtype=dtype)
        ends = np.cumsum(sizes, dtype=np.int64).tolist()
        self._views = [
            self._out[start:end].view(shape)
            for start, end, shape in zip([0, *ends[:-1]], ends, shapes, strict=True)
        ]

    def draw(self, std: float) -> list[Tensor]:
        """The next step's noise of standard deviation ``std``: one tensor per shape."""
        torch = _torch()
        self._stream.fill(self._buffer, self._zeros)
        if self._words is None:
            return self._views
        self._words.bitwise_and_(_MANTISSA).bitwise_or_(_ONE)
        u = self._words.view(torch.float64).sub_(1 - 2.0**-53)
        torch.special.ndtri(u, out=u)
        torch.sum(u.view(4, self._n), 0, out=self._sums)
        torch.mul(self._sums, std / 2, out=self._out)
        return self._views


#: The low 52 bits of a float64 (its mantissa), and the bits of 1.0 (the exponent of [1, 2)).
_MANTISSA = (1 << 52) - 1
_ONE = 0x3FF0000000000000


def _noise_from(stream: SecureStream, base: type) -> type:
    """An Opacus optimizer class whose noise comes from ``stream`` instead of a torch generator."""
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    class SecureNoise(base):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            shapes = [tuple(p.shape) for p in self.params]
            self._secure_noise = GaussianNoise(stream, shapes, self.params[0].dtype).draw

        def add_noise(self) -> None:
            for p in self.params:
                _check_processed_flag(p.summed_grad)
            noises = self._secure_noise(self.noise_multiplier * self.max_grad_norm)
            for p, noise in zip(self.params, noises, strict=True):
                p.grad = (p.summed_grad + noise).view_as(p)
                _mark_as_processed(p.summed_grad)

    return SecureNoise


def _private(
    model: torch.nn.Module, config: DpSgdConfig, batch: int, noise: SecureStream
) -> tuple[Any, Any, Any]:
    """Wrap a module for DP-SGD: (module, DP optimizer, loss) in the chosen Opacus mode."""
    torch = _torch()
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping

    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate)
    loss = torch.nn.BCEWithLogitsLoss(reduction="mean")
    common = {
        "noise_multiplier": config.noise_multiplier,
        "max_grad_norm": config.max_grad_norm,
        "expected_batch_size": batch,
        "loss_reduction": "mean",
    }
    plain_clipping = _noise_from(noise, DPOptimizer)
    fast_clipping = _noise_from(noise, DPOptimizerFastGradientClipping)
    if config.grad_sample_mode == "ghost":
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

        gsm = GradSampleModuleFastGradientClipping(
            model, loss_reduction="mean", max_grad_norm=config.max_grad_norm
        )
        dp_optimizer = fast_clipping(optimizer, **common)
        return gsm, dp_optimizer, DPLossFastGradientClipping(gsm, dp_optimizer, loss, "mean")
    if config.grad_sample_mode == "ew":
        from opacus.grad_sample.gsm_exp_weights import GradSampleModuleExpandedWeights

        gsm = GradSampleModuleExpandedWeights(model, loss_reduction="mean")
    else:
        from opacus import GradSampleModule

        gsm = GradSampleModule(model, loss_reduction="mean")
    return gsm, plain_clipping(optimizer, **common), loss


def _dp_step(
    model: torch.nn.Module, config: DpSgdConfig, batch: int, noise: SecureStream
) -> DpStep:
    """DP-SGD steps on ``model`` in ``config``'s per-sample gradient mode, noise from ``noise``.

    Every mode draws the same noise from the stream (one :meth:`GaussianNoise.draw` over all
    parameters per step, empty batches included), so for one key the modes differ by float
    rounding only.
    """
    torch = _torch()
    if config.grad_sample_mode == "closed_form":
        return _closed_form_step(model, config, batch, noise)
    gsm, optimizer, criterion = _private(model, config, batch, noise)
    params = list(model.parameters())

    def step(data: tuple[Tensor, Tensor] | None) -> Tensor | None:
        optimizer.zero_grad()
        if data is None:
            for p in params:
                p.grad_sample = torch.zeros((0, *p.shape))  # type: ignore[attr-defined]
                p.grad = torch.zeros_like(p)  # ghost clipping sums p.grad, None before a backward
            optimizer.step()
            return None
        x, y = data
        # Opacus's hooks need a graph input that requires grad, or torch warns on every step.
        out = criterion(gsm(x.requires_grad_(True)).squeeze(-1), y)
        out.backward()
        optimizer.step()
        loss: Tensor = out.detach()
        return loss

    return step


def _closed_form_step(
    model: torch.nn.Module, config: DpSgdConfig, batch: int, noise: SecureStream
) -> DpStep:
    """DP-SGD steps with closed-form per-sample gradients: Opacus's arithmetic, without hooks.

    Each step is what ``DPOptimizer`` over ``SGD`` does, in the same order: the clipped sum
    (:func:`bund.compute.learn.per_sample.clipped_sum`), plus the noise, divided by the expected
    batch, times ``-learning_rate`` added to the weights.
    """
    torch = _torch()
    from bund.compute.learn import per_sample

    if not per_sample.supports(model):
        raise ValueError("closed_form per-sample gradients cover the logistic and MLP models only")
    params = list(model.parameters())
    std = config.noise_multiplier * config.max_grad_norm
    draw = GaussianNoise(noise, [tuple(p.shape) for p in params], params[0].dtype).draw

    def step(data: tuple[Tensor, Tensor] | None) -> Tensor | None:
        with torch.no_grad():
            if data is None:
                sums, loss = [torch.zeros_like(p) for p in params], None
            else:
                sums, loss = per_sample.clipped_sum(model, *data, config.max_grad_norm)
            for p, total, drawn in zip(params, sums, draw(std), strict=True):
                p.add_((total + drawn) / batch, alpha=-config.learning_rate)
        return loss

    return step


def local_update(
    spec: ModelSpec,
    weights: FloatArray,
    x: FloatArray,
    y: FloatArray,
    config: DpSgdConfig,
    key: bytes,
) -> LocalUpdate:
    """``config.steps`` steps of DP-SGD from ``weights`` on this client's rows.

    Args:
        spec: The model.
        weights: The global weights of this round.
        x: Scaled features, one row per record.
        y: Labels in {0, 1}.
        config: The DP-SGD settings.
        key: 32 secret bytes (derived from ``secrets``) keying the :class:`SecureStream` of the
            Poisson sampling and the Gaussian noise.

    Returns:
        The weight change and the mean loss over the non-empty batches.
    """
    torch = _torch()
    if len(x) == 0:
        raise InvalidInputError("a client needs at least one training row")
    model = create_model(spec)
    set_weights(model, weights)
    stream = SecureStream(key)
    expected = max(1, round(config.sample_rate * len(x)))
    step = _dp_step(model, config, expected, stream)
    xt, yt = _tensors(x, y)
    losses = []
    for _ in range(config.steps):
        # Poisson sampling, as Opacus's UniformWithReplacementSampler does, from the stream.
        indices = np.flatnonzero(stream.uniform(len(x)) < config.sample_rate)
        if not len(indices):  # an empty Poisson batch: the step releases noise only
            step(None)
            continue
        batch = torch.as_tensor(indices, dtype=torch.long)
        loss = step((xt[batch], yt[batch]))
        if loss is not None:
            losses.append(float(loss))
    new = get_weights(model)
    return LocalUpdate(new - weights, float(np.mean(losses)) if losses else math.nan, len(x))


def make_step(
    spec: ModelSpec, config: DpSgdConfig | None, batch: int, seed: int
) -> Callable[[FloatArray, FloatArray], None]:
    """One training step on a given batch, DP-SGD (``config``) or plain SGD (``None``).

    For benchmarks: the same model, batch and learning rate on both sides of the comparison.
    """
    torch = _torch()
    model = create_model(spec)
    if config is not None:
        key = hashlib.sha256(seed.to_bytes(8, "big")).digest()
        dp_step = _dp_step(model, config, batch, SecureStream(key))

        def private(x: FloatArray, y: FloatArray) -> None:
            dp_step(_tensors(x, y))

        return private
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = torch.nn.BCEWithLogitsLoss()

    def step(x: FloatArray, y: FloatArray) -> None:
        xt, yt = _tensors(x, y)
        optimizer.zero_grad()
        criterion(model(xt).squeeze(-1), yt).backward()
        optimizer.step()

    return step


def plain_update(
    spec: ModelSpec,
    weights: FloatArray,
    x: FloatArray,
    y: FloatArray,
    steps: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
) -> LocalUpdate:
    """``steps`` steps of ordinary mini-batch SGD: the non-private comparison."""
    torch = _torch()
    model = create_model(spec)
    set_weights(model, weights)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    criterion = torch.nn.BCEWithLogitsLoss()
    xt, yt = _tensors(x, y)
    order = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        batch = torch.randint(0, len(x), (batch_size,), generator=order)
        optimizer.zero_grad()
        out = criterion(model(xt[batch]).squeeze(-1), yt[batch])
        out.backward()
        optimizer.step()
        losses.append(float(out.detach()))
    return LocalUpdate(get_weights(model) - weights, float(np.mean(losses)), len(x))


def fedavg(weights: FloatArray, deltas: list[FloatArray]) -> FloatArray:
    """Plain FedAvg: the global weights plus the unweighted mean of the clients' updates."""
    if not deltas:
        raise ValueError("FedAvg needs at least one update")
    mean: FloatArray = np.mean(np.stack(deltas), axis=0)
    return np.asarray(weights, dtype=np.float64) + mean


def scores(spec: ModelSpec, weights: FloatArray, x: FloatArray) -> FloatArray:
    """The model's score (logit) of each row of ``x``."""
    torch = _torch()
    if len(x) == 0:
        return np.zeros(0, dtype=np.float64)
    model = create_model(spec)
    set_weights(model, weights)
    with torch.no_grad():
        logits = model(torch.as_tensor(np.asarray(x), dtype=torch.float32)).squeeze(-1)
    return np.asarray(logits.numpy(), dtype=np.float64)


def held_out(x: FloatArray, y: FloatArray, fraction: float, salt: bytes) -> npt.NDArray[np.bool_]:
    """Which rows are held out for evaluation: each by a hash of the record itself and ``salt``.

    A row is held out when ``SHA-256(salt ‖ its features ‖ its label)``, read as a fraction of
    ``2^64``, is below ``fraction``. Each row's side depends on that row alone, so adding or
    removing one patient moves no other between the training and the held-out rows: DP-SGD's
    guarantee and the evaluation's sensitivity are each about one record. (A split by row
    position, or one cut at a fixed count, would move other rows too.) The salt holds only public
    values (the job's seed), so the split is repeatable and protects nothing.
    """
    if not 0 <= fraction <= 1:
        raise ValueError("the held-out fraction must lie in [0, 1]")
    features = np.ascontiguousarray(x, dtype="<f8")
    labels = np.ascontiguousarray(y, dtype="<f8")
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError("one label per row of features")
    cut = int(fraction * 2**64)
    picks = [
        int.from_bytes(
            hashlib.sha256(salt + features[i].tobytes() + labels[i].tobytes()).digest()[:8], "big"
        )
        < cut
        for i in range(len(labels))
    ]
    return np.asarray(picks, dtype=np.bool_)


@dataclass(frozen=True)
class EvalConfig:
    """One differentially private evaluation of a model on one party's held-out rows.

    The party's integer vector is ``2·bins + 1`` cells: the counts of its held-out rows by score
    bin and label (:func:`bund.compute.learn.metrics.binned_counts`), then the sum of their
    clipped log-losses in units of ``2^-LOSS_FRAC_BITS`` (each record's rounded and capped at
    :attr:`loss_sensitivity`). Adding or removing one record changes one count by 1 and the loss
    sum by at most :attr:`loss_sensitivity`, bounds the party computes from these settings
    alone. Each half of ``epsilon`` pays for one block: discrete Laplace noise of scale
    ``2/epsilon`` on every count and ``2·loss_sensitivity/epsilon`` on the loss sum, so the
    vector is ``epsilon``-DP by basic composition.

    Attributes:
        bins: Equal-width score bins over the clipped logit range (the AUC's resolution).
        clip: Predicted probabilities are clipped to ``[clip, 1 − clip]``, exact.
        epsilon: The ε one evaluation costs the party, exact; 0 adds no noise (tests only).

    >>> config = EvalConfig(bins=20, clip=Fraction(1, 100), epsilon=Fraction(1))
    >>> config.length, config.loss_sensitivity
    (41, 301806)
    """

    bins: int
    clip: Fraction
    epsilon: Fraction

    def __post_init__(self) -> None:
        if isinstance(self.bins, bool) or not 2 <= self.bins <= MAX_BINS:
            raise ValueError(f"an evaluation takes 2 to {MAX_BINS} score bins")
        if not isinstance(self.clip, Fraction) or not MIN_CLIP <= self.clip <= Fraction(1, 4):
            raise ValueError(f"the probability clip must be an exact rational in [{MIN_CLIP}, 1/4]")
        if not isinstance(self.epsilon, Fraction) or self.epsilon < 0:
            raise ValueError("an evaluation's epsilon must be an exact rational >= 0")

    @property
    def length(self) -> int:
        """Cells of the vector: the counts of both labels by bin, and the loss sum."""
        return 2 * self.bins + 1

    @property
    def noise(self) -> bool:
        """Whether the evaluation adds noise (always, unless a test turned it off)."""
        return self.epsilon > 0

    @property
    def loss_bound(self) -> float:
        """The largest clipped log-loss of one record: ``ln(1/clip)``."""
        return -math.log(float(self.clip))

    @property
    def loss_sensitivity(self) -> int:
        """The most one record adds to the integer loss sum: ``⌈ln(1/clip) · 2^F⌉ + 1``.

        One unit above the rounded bound, so float rounding in the bound can never make it
        smaller than a record's rounded loss; records are capped at it anyway.
        """
        return int(math.ceil(self.loss_bound * 2**LOSS_FRAC_BITS)) + 1

    def mechanisms(self) -> tuple[DiscreteLaplace, DiscreteLaplace]:
        """The noise of the counts (sensitivity 1) and of the loss sum, ``epsilon/2`` each.

        Raises:
            ValueError: With noise off (``epsilon`` = 0).
        """
        if not self.noise:
            raise ValueError("an evaluation without noise has no mechanisms")
        half = self.epsilon / 2
        return (
            DiscreteLaplace.create(half, 1),
            DiscreteLaplace.create(half, self.loss_sensitivity),
        )


def evaluation_counts(config: EvalConfig, logits: FloatArray, y: FloatArray) -> IntArray:
    """The exact evaluation vector of one party's held-out rows (``config``'s layout)."""
    counts = metrics.binned_counts(y, logits, config.bins, float(config.clip))
    losses = metrics.clipped_log_loss(y, logits, float(config.clip))
    units = np.minimum(np.rint(losses * 2.0**LOSS_FRAC_BITS), config.loss_sensitivity)
    return np.concatenate([counts, [int(units.sum())]]).astype(np.int64)


def add_evaluation_noise(config: EvalConfig, counts: IntArray) -> IntArray:
    """``counts`` plus this party's own discrete Laplace noise (nothing with noise off).

    The noise is OpenDP's exact integer sampler over CSPRNG bits
    (:class:`bund.compute.dp.mechanisms.DiscreteLaplace`), sized from ``config`` alone.
    """
    if len(counts) != config.length:
        raise ValueError(f"an evaluation vector has {config.length} cells, not {len(counts)}")
    if not config.noise:
        return np.asarray(counts, dtype=np.int64)
    on_counts, on_loss = config.mechanisms()
    noise = np.concatenate([on_counts.sample(2 * config.bins), on_loss.sample(1)])
    noisy: IntArray = np.asarray(counts, dtype=np.int64) + noise
    return noisy


@dataclass(frozen=True)
class EvalMetrics:
    """Held-out metrics read from a (noisy) sum of evaluation vectors.

    Attributes:
        rows: The (noisy) number of rows evaluated.
        auc: The binned AUC (``None`` while a class has no rows).
        auc_band: Half-width of the 95 % noise band of ``auc`` (0 with noise off).
        auc_tolerance: The most binning can move the AUC (:func:`metrics.binned_auc_tolerance`).
        log_loss: The mean clipped log-loss (``None`` without rows).
        log_loss_band: Half-width of the 95 % noise band of ``log_loss``.
    """

    rows: int
    auc: float | None
    auc_band: float | None
    auc_tolerance: float | None
    log_loss: float | None
    log_loss_band: float | None


def read_evaluation(config: EvalConfig, total: IntArray, contributors: int) -> EvalMetrics:
    """The metrics of the sum of ``contributors`` parties' noisy evaluation vectors.

    Post-processing only, so it costs no privacy. The noise bands are the delta method's: each
    metric's gradient in the cells, times the known noise variance of each cell (``contributors``
    draws of each party's mechanism), as a normal 95 % half-width.

    Raises:
        ValueError: If ``total`` does not have ``config``'s length.
    """
    if len(total) != config.length or contributors < 1:
        raise ValueError(f"a sum of evaluation vectors has {config.length} cells")
    cells = np.asarray(total[:-1], dtype=np.float64)
    loss_units = float(total[-1])
    negatives, positives = cells[: config.bins], cells[config.bins :]
    n_neg, n_pos = float(negatives.sum()), float(positives.sum())
    rows = n_neg + n_pos
    if config.noise:
        on_counts, on_loss = config.mechanisms()
        var_cell = contributors * on_counts.variance()
        var_loss = contributors * on_loss.variance()
    else:
        var_cell = var_loss = 0.0
    auc = auc_band = tolerance = None
    if n_neg > 0 and n_pos > 0:
        auc = metrics.binned_auc(cells)
        tolerance = metrics.binned_auc_tolerance(cells)
        below = np.concatenate([[0.0], np.cumsum(negatives)[:-1]])
        above = n_pos - np.cumsum(positives)
        on_pos = ((below + negatives / 2) / n_neg - auc) / n_pos
        on_neg = ((above + positives / 2) / n_pos - auc) / n_neg
        auc_band = _Z * math.sqrt(var_cell * float((on_pos**2).sum() + (on_neg**2).sum()))
    log_loss = log_loss_band = None
    if rows > 0:
        scale = 2.0**LOSS_FRAC_BITS
        loss_sum = loss_units / scale
        log_loss = min(max(loss_sum / rows, 0.0), config.loss_bound)
        on_cells = cells.size * var_cell * (loss_sum / rows**2) ** 2
        variance = var_loss / (scale * rows) ** 2 + on_cells
        log_loss_band = _Z * math.sqrt(variance)
    return EvalMetrics(round(rows), auc, auc_band, tolerance, log_loss, log_loss_band)


def epsilon_spent(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """The ε of ``steps`` DP-SGD steps at ``delta``, by Opacus's accountant (0 for no steps)."""
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}")
    if steps == 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    from opacus.accountants import create_accountant

    ledger = create_accountant(accountant)
    ledger.history = [(noise_multiplier, sample_rate, steps)]
    return float(ledger.get_epsilon(delta=delta))


def epsilon_bound(epsilon: float) -> Fraction:
    """``epsilon`` rounded up to a multiple of :data:`EPSILON_RESOLUTION`: exact, never less."""
    if not math.isfinite(epsilon) or epsilon < 0:
        raise ValueError("epsilon must be finite and non-negative")
    return Fraction(math.ceil(Fraction(epsilon) / EPSILON_RESOLUTION)) * EPSILON_RESOLUTION
