"""Risk models an insurer scores encrypted patients with: logistic, or a square-activation MLP.

Both models take *raw* feature values (the units the hospital stores) and return a logit; the
score is its sigmoid. Training standardises the features and :func:`train_logistic` /
:func:`train_square_mlp` fold the standardisation into the first layer, so the hospital never
needs the insurer's means and scales and the encrypted evaluation is one affine layer (logistic)
or affine → square → affine (MLP):

* logistic: ``z = w·x + b``;
* square MLP: ``h = W x + c`` (``H`` hidden units), ``z = v·(h∘h) + d``.

A model is stored as a table with the columns ``layer, unit, input, weight`` (:data:`COLUMNS`):
layer 1 rows hold ``W`` (``input`` is a feature name, or ``bias`` for ``c``/``b``), layer 2 rows
``v`` (``input`` is ``h<unit>``, or ``bias`` for ``d``). One layer is a logistic model, two a
square MLP. :func:`model_to_columns` and :func:`model_from_columns` convert both ways.

The numpy generator seeded by the caller only initialises training weights (a public, plaintext
computation); it never makes keys, masks or noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bund.compute.errors import InvalidInputError

FloatArray = npt.NDArray[np.float64]

#: The columns of a model table, in order.
COLUMNS = ("layer", "unit", "input", "weight")
#: The ``input`` of a bias row.
BIAS = "bias"
#: Most features and hidden units a model may have (keeps the encrypted evaluation bounded).
MAX_FEATURES = 64
MAX_HIDDEN = 16


@dataclass(frozen=True)
class RiskModel:
    """A logistic model (``output is None``) or a square-activation MLP over raw features.

    Attributes:
        features: Feature names, in the order of ``weights``' columns.
        weights: ``(H, d)`` first-layer weights; a logistic model has ``H = 1``.
        bias: ``(H,)`` first-layer biases.
        output: ``(H,)`` output weights ``v`` of an MLP, or ``None`` for a logistic model.
        output_bias: The MLP's output bias ``d`` (0 for a logistic model).
    """

    features: tuple[str, ...]
    weights: FloatArray
    bias: FloatArray
    output: FloatArray | None = None
    output_bias: float = 0.0

    def __post_init__(self) -> None:
        d = len(self.features)
        if not 1 <= d <= MAX_FEATURES or len(set(self.features)) != d:
            raise InvalidInputError(f"a model has 1-{MAX_FEATURES} distinct features, not {d}")
        hidden = self.weights.shape[0] if self.weights.ndim == 2 else 0
        if self.weights.shape != (hidden, d) or self.bias.shape != (hidden,) or hidden < 1:
            raise InvalidInputError("model weights must be (units × features), biases (units,)")
        if self.output is None and hidden != 1:
            raise InvalidInputError("a logistic model has exactly one unit")
        if self.output is not None and (self.output.shape != (hidden,) or hidden > MAX_HIDDEN):
            raise InvalidInputError(
                f"an MLP has 1-{MAX_HIDDEN} hidden units, one output weight each"
            )
        arrays = [self.weights, self.bias, np.array([self.output_bias])]
        if self.output is not None:
            arrays.append(self.output)
        if not all(np.isfinite(a).all() for a in arrays):
            raise InvalidInputError("model weights must be finite numbers")

    @property
    def kind(self) -> str:
        """``"logistic"`` or ``"mlp"``."""
        return "logistic" if self.output is None else "mlp"

    def logits(self, x: FloatArray) -> FloatArray:
        """The plaintext reference: the logit of each row of ``x`` (rows × features)."""
        h = x @ self.weights.T + self.bias
        if self.output is None:
            out: FloatArray = h[:, 0]
            return out
        z: FloatArray = (h * h) @ self.output + self.output_bias
        return z

    def scores(self, x: FloatArray) -> FloatArray:
        """The plaintext reference scores: the sigmoid of :meth:`logits`."""
        return sigmoid(self.logits(x))


def sigmoid(z: FloatArray) -> FloatArray:
    """The logistic function, stable for large ``|z|``."""
    out: FloatArray = np.exp(-np.logaddexp(0.0, -z))
    return out


def model_to_columns(model: RiskModel) -> dict[str, list[str]]:
    """The model as a table (:data:`COLUMNS` → values as text, exact float round trip)."""
    rows: list[tuple[int, int, str, float]] = []
    for k in range(model.weights.shape[0]):
        rows += [(1, k, f, float(w)) for f, w in zip(model.features, model.weights[k], strict=True)]
        rows.append((1, k, BIAS, float(model.bias[k])))
    if model.output is not None:
        rows += [(2, 0, f"h{k}", float(v)) for k, v in enumerate(model.output)]
        rows.append((2, 0, BIAS, model.output_bias))
    return {
        "layer": [str(r[0]) for r in rows],
        "unit": [str(r[1]) for r in rows],
        "input": [r[2] for r in rows],
        "weight": [repr(r[3]) for r in rows],
    }


def model_from_columns(columns: Mapping[str, Sequence[str]], features: Sequence[str]) -> RiskModel:
    """Parse a model table, checking it covers exactly ``features`` (in that order).

    Raises:
        InvalidInputError: Naming the row or column to fix.
    """
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise InvalidInputError(f"a model table has the columns {list(COLUMNS)}; missing {missing}")
    cells: dict[tuple[int, int, str], float] = {}
    for i, row in enumerate(zip(*(columns[c] for c in COLUMNS), strict=True)):
        try:
            layer, unit, name, weight = int(row[0]), int(row[1]), row[2].strip(), float(row[3])
        except ValueError:
            raise InvalidInputError(
                f"model row {i + 1}: layer/unit are integers, weight a number"
            ) from None
        if layer not in (1, 2) or not 0 <= unit < MAX_HIDDEN or not math.isfinite(weight):
            raise InvalidInputError(f"model row {i + 1}: layer 1 or 2, unit 0-15, finite weight")
        if (layer, unit, name) in cells:
            raise InvalidInputError(f"model row {i + 1} repeats layer {layer} unit {unit} {name}")
        cells[(layer, unit, name)] = weight
    units = sorted({u for (layer, u, _) in cells if layer == 1})
    if not units or units != list(range(len(units))):
        raise InvalidInputError("layer 1 units are numbered 0, 1, 2, … without gaps")
    allowed = {*features, BIAS}
    stray = sorted({n for (layer, _, n) in cells if layer == 1} - allowed)
    if stray:
        raise InvalidInputError(f"layer 1 names inputs {stray} that are not the job's features")
    weights = np.array([[cells.get((1, k, f), 0.0) for f in features] for k in units])
    bias = np.array([cells.get((1, k, BIAS), 0.0) for k in units])
    second = {(u, n): w for (layer, u, n), w in cells.items() if layer == 2}
    if not second:
        return RiskModel(tuple(features), weights, bias)
    hidden = {f"h{k}" for k in units} | {BIAS}
    if any(u != 0 or n not in hidden for u, n in second):
        raise InvalidInputError("layer 2 has unit 0 only, with inputs h0, h1, … and bias")
    output = np.array([second.get((0, f"h{k}"), 0.0) for k in units])
    return RiskModel(tuple(features), weights, bias, output, second.get((0, BIAS), 0.0))


def _standardise(x: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    if x.ndim != 2 or not len(x) or not np.isfinite(x).all():
        raise InvalidInputError("training features are a finite, non-empty 2-D array")
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    scale = np.where(std > 0, std, 1.0)
    return (x - mean) / scale, mean, scale


def _check_labels(x: FloatArray, y: FloatArray) -> None:
    if y.shape != (len(x),) or not np.isin(y, (0.0, 1.0)).all() or len(np.unique(y)) < 2:
        raise InvalidInputError("labels are 0/1, one per row, and both classes occur")


def train_logistic(
    features: Sequence[str], x: FloatArray, y: FloatArray, *, l2: float = 1e-3, epochs: int = 500
) -> RiskModel:
    """Fit a logistic model by full-batch gradient descent on standardised features, then fold.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(50.0, 10.0, (400, 2))
    >>> y = (x[:, 0] + rng.normal(0, 5, 400) > 50).astype(float)
    >>> model = train_logistic(["a", "b"], x, y)
    >>> model.kind, bool(model.weights[0, 0] > 0)
    ('logistic', True)
    """
    _check_labels(x, y)
    z, mean, scale = _standardise(x)
    w = np.zeros(z.shape[1])
    b = 0.0
    for _ in range(epochs):
        r = sigmoid(z @ w + b) - y
        w -= 0.5 * (z.T @ r / len(z) + l2 * w)
        b -= 0.5 * float(r.mean())
    folded = w / scale
    return RiskModel(tuple(features), folded[None, :], np.array([b - float(folded @ mean)]))


def train_square_mlp(
    features: Sequence[str],
    x: FloatArray,
    y: FloatArray,
    *,
    hidden: int = 4,
    seed: int = 0,
    epochs: int = 800,
) -> RiskModel:
    """Fit ``z = v·(Wx + c)² + d`` by full-batch Adam on standardised features, then fold.

    The square is the activation because it costs one ciphertext multiplication; inputs are
    standardised and the initial weights small, so training stays in the square's tame range.
    """
    _check_labels(x, y)
    if not 1 <= hidden <= MAX_HIDDEN:
        raise InvalidInputError(f"hidden units are 1-{MAX_HIDDEN}")
    z, mean, scale = _standardise(x)
    rng = np.random.default_rng(seed)  # initial weights of a public plaintext fit, not a secret
    params = [
        rng.normal(0.0, 0.3 / math.sqrt(z.shape[1]), (hidden, z.shape[1])),
        np.zeros(hidden),
        rng.normal(0.0, 0.3, hidden),
        np.zeros(1),
    ]
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    for t in range(1, epochs + 1):
        w, c, v, d = params
        h = z @ w.T + c
        r = (sigmoid((h * h) @ v + d[0]) - y) / len(z)
        gh = 2.0 * h * np.outer(r, v)
        grads = [
            gh.T @ z + 1e-3 * w,
            gh.sum(axis=0),
            (h * h).T @ r + 1e-3 * v,
            r.sum(keepdims=True),
        ]
        for p, g, (m, s) in zip(params, grads, moments, strict=True):
            m *= 0.9
            m += 0.1 * g
            s *= 0.999
            s += 0.001 * g * g
            p -= 0.02 * (m / (1 - 0.9**t)) / (np.sqrt(s / (1 - 0.999**t)) + 1e-8)
    w, c, v, d = params
    folded = w / scale
    return RiskModel(tuple(features), folded, c - folded @ mean, v, float(d[0]))
