"""The model parts a standing contract scores with: one small interface per side, loaders by model.

A contract names a trained model (``model_job``) and the protocol that trained it
(``model_protocol``). Each party holds its own part of that model as its own result of the
training job, and a request needs exactly two things of a part:

* a provider's part (:class:`ProviderPart`) turns the provider's own rows into fixed-point
  partial scores (``SCORE_FRAC_BITS`` fractional bits), and says which rows it can score;
* the bank's part (:class:`BankPart`) turns the bank's own feature values of an applicant and
  the providers' *summed* partial score into a default probability.

So a new kind of model plugs in as one more entry in :data:`LOADERS`, keyed by its training
protocol: logistic regression (``vertical_lr``) today; a tree model (issue 17) adds its own,
whichever way the tree protocol splits a score between the parties, as long as the bank combines
the providers' contributions from their sum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from bund.compute.errors import InvalidInputError
from bund.compute.learn import logistic as lg
from bund.compute.serving import MAX_PARTIAL
from bund.parties.data import DatasetError, Table
from bund.parties.jobs import PriorResultError, Result
from bund.parties.protocols import vertical_score

BoolArray = npt.NDArray[np.bool_]


class ProviderPart(Protocol):
    """What a provider's part of a model does for a request: its rows' partial scores."""

    @property
    def label_holder(self) -> str:
        """The bank the model was trained with (a contract with another bank is refused)."""
        ...

    def partial_scores(self, table: Table) -> tuple[lg.IntArray, BoolArray]:
        """Every row's fixed-point partial score, and whether the row can be scored.

        A row whose features are not all finite numbers cannot be scored: the contract treats
        its id as one the provider lacks.

        Raises:
            DatasetError: The table lacks a feature column, or a score is out of range.
        """
        ...


class BankPart(Protocol):
    """What the bank's part of a model does for a request: the probability from the sum."""

    @property
    def features(self) -> tuple[str, ...]:
        """The bank's own features, by name: every applicant in a request must bring them."""
        ...

    @property
    def providers(self) -> tuple[str, ...]:
        """The providers the model was trained with."""
        ...

    @property
    def cutoff(self) -> float:
        """The training job's cut-off: a default probability at or above it is declined."""
        ...

    def probabilities(self, own: lg.FloatArray, provider_sums: lg.IntArray) -> lg.FloatArray:
        """Default probabilities from the bank's own raw features and the providers' sums.

        Args:
            own: Rows × :attr:`features`, raw (unstandardised) finite values.
            provider_sums: Per row, the providers' summed fixed-point partial scores.
        """
        ...


@dataclass(frozen=True)
class PartLoader:
    """How to read each side's part of one kind of model from a party's training result."""

    #: ``(result, model job, party) -> ProviderPart``; raises ``PriorResultError``.
    provider: Callable[[Result, str, str], ProviderPart]
    #: ``(result, model job, party) -> BankPart``; raises ``PriorResultError``.
    bank: Callable[[Result, str, str], BankPart]


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


@dataclass(frozen=True)
class LogisticProviderPart:
    """A provider's part of a ``vertical_lr`` model: ``x·w`` of its standardised features."""

    part: vertical_score.ModelPart

    @property
    def label_holder(self) -> str:
        """The bank of the training job."""
        return str(self.part.doc.get("label_holder", ""))

    def partial_scores(self, table: Table) -> tuple[lg.IntArray, BoolArray]:
        """``x·w`` of every row, standardised as in training; rows with a blank are unscored."""
        missing = [f for f in self.part.features if f not in table.columns]
        if missing:
            raise DatasetError(
                f"the dataset lacks the model's feature columns {missing}: serve a dataset with "
                "the columns the model was trained on"
            )
        x = np.column_stack(
            [np.array([_number(v) for v in table.column(f)]) for f in self.part.features]
        ).reshape(table.num_rows, len(self.part.features))
        scorable = np.isfinite(x).all(axis=1)
        scores = np.zeros(table.num_rows, dtype=np.int64)
        if scorable.any():
            scaled = self.part.scaler.apply(x[scorable])
            scores[scorable] = lg.quantize_scores(lg.partial_scores(scaled, self.part.weights))
        if len(scores) and int(np.abs(scores).max()) >= MAX_PARTIAL:
            raise DatasetError(
                "a partial score is out of range (|x·w| ≥ 2^20): the model is broken"
            )
        return scores, scorable


@dataclass(frozen=True)
class LogisticBankPart:
    """The bank's part of a ``vertical_lr`` model: its ``x·w + b``, then the sigmoid."""

    part: vertical_score.ModelPart
    bias: float
    trained_cutoff: float

    @property
    def features(self) -> tuple[str, ...]:
        """The bank's features, in the model's order."""
        return tuple(self.part.features)

    @property
    def providers(self) -> tuple[str, ...]:
        """The providers of the training job."""
        names = self.part.doc.get("providers")
        return tuple(str(n) for n in names) if isinstance(names, list) else ()

    @property
    def cutoff(self) -> float:
        """The training job's cut-off."""
        return self.trained_cutoff

    def probabilities(self, own: lg.FloatArray, provider_sums: lg.IntArray) -> lg.FloatArray:
        """``sigmoid(x·w + b + Σ q / 2^24)``, standardised as in training."""
        scores = lg.partial_scores(self.part.scaler.apply(own), self.part.weights)
        return lg.sigmoid(lg.joint_scores(scores, self.bias, [provider_sums]))


def _logistic_provider(result: Result, job: str, party: str) -> ProviderPart:
    part = vertical_score.part_from_result(result, "feature_holder", job, party)
    return LogisticProviderPart(part)


def _logistic_bank(result: Result, job: str, party: str) -> BankPart:
    part = vertical_score.part_from_result(result, "label_holder", job, party)
    bias = float(part.doc.get("intercept", math.nan))
    cutoff = float(part.doc.get("cutoff", 0.5))
    if not math.isfinite(bias) or not 0 <= cutoff <= 1:
        raise PriorResultError(f"{party}'s part of job {job} is damaged")
    return LogisticBankPart(part, bias, cutoff)


#: Each kind of model a contract can serve, by the protocol that trained it.
LOADERS: Mapping[str, PartLoader] = {
    vertical_score.TRAINING: PartLoader(_logistic_provider, _logistic_bank),
}


def loader(protocol: str) -> PartLoader:
    """The part loader of models trained by ``protocol``.

    Raises:
        PriorResultError: No kind of model trained by ``protocol`` can be served.
    """
    found = LOADERS.get(protocol)
    if found is None:
        raise PriorResultError(
            f"a contract serves models trained by {sorted(LOADERS)}, not by {protocol!r}"
        )
    return found


def own_features(part: BankPart, values: Sequence[Mapping[str, float]]) -> lg.FloatArray:
    """The bank's own feature matrix of a request's applicants, checked.

    Raises:
        InvalidInputError: An applicant lacks one of the model's bank features, or a value is
            not finite (the loan system must send every feature the model uses).
    """
    names = part.features
    rows: list[list[float]] = []
    for i, given in enumerate(values):
        lacking = [n for n in names if n not in given]
        if lacking:
            raise InvalidInputError(
                f"applicant {i + 1} lacks the bank features {lacking}: send every feature of the "
                f"model ({', '.join(names)})"
            )
        rows.append([float(given[n]) for n in names])
    matrix = np.array(rows, dtype=np.float64).reshape(len(values), len(names))
    if not np.isfinite(matrix).all():
        raise InvalidInputError("a bank feature value is not a finite number")
    return matrix
