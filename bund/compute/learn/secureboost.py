"""Gradient-boosted trees over vertically split features (SecureBoost): algorithm and reference.

The joint protocol (``bund/parties/protocols/vertical_secureboost.py``,
``docs/protocols/vertical-secureboost.md``) and the plaintext reference :func:`fit` run the same
tree-growing loop, :func:`grow_tree`, over the same integers: only where a party's histograms come
from differs. Each party is a :class:`SplitSource`; the reference's sources compute their
histograms in the clear (:class:`LocalSplits`), the protocol's bank reaches each provider's
through encrypted messages. So the protocol's model equals the reference's split for split.

The algorithm is XGBoost's ``tree_method="hist"`` with ``grow_policy="depthwise"``, with its
parameter names and meanings (Chen and Guestrin, *XGBoost: a scalable tree boosting system*, KDD
2016):

- **Bins.** Each party bins its own features on its training rows (:func:`fit_binning`): at most
  ``max_bin`` bins per feature, cut at quantiles of the column (the distinct values themselves
  when a column has no more than ``max_bin``). A value falls into bin ``b`` = the number of cuts
  at or below it; "bin ≤ k" goes left, i.e. ``x < cuts[k]``, XGBoost's ``x < split_value``.
  Cuts never leave their owner.
- **Gradients.** First- and second-order gradients of the objective at the current margin
  (``binary:logistic``: ``p − y`` and ``p(1 − p)``; ``reg:squarederror``: ``ŷ − y`` and 1),
  rounded to ``GRAD_FRAC_BITS`` fractional bits (:func:`quantize_gradients`). Every histogram
  sum is then an exact integer, in the clear and under encryption alike; rows left out by
  ``subsample`` get ``g = h = 0`` (as XGBoost's uniform sampling does).
- **Splits.** For each node and each candidate (a feature and a cut), the left sums
  ``(G_L, H_L)``; the loss change is ``G_L²/(H_L+λ) + G_R²/(H_R+λ) − G²/(H+λ)`` (XGBoost's
  ``loss_chg``), over candidates whose children both have ``H ≥ min_child_weight``. The best
  candidate splits the node if its loss change exceeds ``1e-6`` and ``gamma``, and both children
  have a positive hessian sum, as XGBoost's ``ExpandEntry::IsValid``. Ties go to the earliest
  candidate in the order (party, feature, cut): the bank's own features first, then each
  provider's in the spec's order.
- **Leaves.** ``learning_rate · (−G/(H+λ))``, or 0 when ``H < min_child_weight`` (XGBoost's
  ``CalcWeight``); the margin starts at ``base_score`` (its logit for ``binary:logistic``).
- **Column sampling.** ``colsample_bytree`` draws each party's own features per tree from the
  public seed, so every party can derive its own draw and the reference the same.

Scoring (:func:`provider_decisions`, :func:`bank_margins`) is split the same way: a provider
turns its rows into the decisions of its own splits, the bank combines them with its own splits
and leaves. ``bund.parties.protocols.vertical_tree_score`` moves those decisions; a serving
contract can call the same two functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from bund.compute.errors import InvalidMessageError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: Fractional bits of the per-row gradients ``g`` and ``h``.
GRAD_FRAC_BITS = 20
#: Deepest tree: node ids stay below ``2^(MAX_DEPTH+1)``.
MAX_DEPTH = 10
#: Most bins per feature.
MAX_BIN = 256
#: XGBoost's ``kRtEps``: a split must reduce the loss by more than this.
MIN_LOSS_CHANGE = 1e-6
#: A margin's magnitude is capped here for the sigmoid (a tree can push it far).
_MARGIN_CLIP = 35.0

Objective = Literal["binary:logistic", "reg:squarederror"]


@dataclass(frozen=True)
class BoostConfig:
    """Hyper-parameters, with XGBoost's names and meanings (every party has the same).

    Attributes:
        n_estimators: Most trees (boosting rounds).
        max_depth: Depth of a tree: nodes at this depth are leaves.
        learning_rate: XGBoost's ``eta``: each leaf's weight is scaled by it.
        reg_lambda: L2 penalty on leaf weights (``λ``).
        gamma: Least loss change that splits a node (``min_split_loss``).
        min_child_weight: Least hessian sum in a child.
        max_bin: Most bins per feature.
        subsample: Share of the training rows each tree uses (drawn from the seed).
        colsample_bytree: Share of each party's features each tree uses (drawn from the seed).
        objective: ``"binary:logistic"`` or ``"reg:squarederror"``.
        base_score: The initial prediction (a probability for ``binary:logistic``).
        early_stopping_rounds: Stop when the held-out loss has not improved for this many trees
            and keep the trees up to the best one; ``None``: grow every tree.
        complete_secure_trees: The first this-many trees use the bank's features only.
        seed: Public seed of the row split, row and column sampling.
    """

    n_estimators: int = 50
    max_depth: int = 3
    learning_rate: float = 0.3
    reg_lambda: float = 1.0
    gamma: float = 0.0
    min_child_weight: float = 1.0
    max_bin: int = 32
    subsample: float = 1.0
    colsample_bytree: float = 1.0
    objective: Objective = "binary:logistic"
    base_score: float = 0.5
    early_stopping_rounds: int | None = None
    complete_secure_trees: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.max_depth <= MAX_DEPTH:
            raise ValueError(f"max_depth lies in [1, {MAX_DEPTH}]")
        if not 2 <= self.max_bin <= MAX_BIN:
            raise ValueError(f"max_bin lies in [2, {MAX_BIN}]")
        if not 0 < self.subsample <= 1 or not 0 < self.colsample_bytree <= 1:
            raise ValueError("subsample and colsample_bytree lie in (0, 1]")
        if self.objective == "binary:logistic" and not 0 < self.base_score < 1:
            raise ValueError("base_score of binary:logistic is a probability in (0, 1)")

    @property
    def base_margin(self) -> float:
        """The margin every row starts at."""
        if self.objective == "binary:logistic":
            return math.log(self.base_score / (1 - self.base_score))
        return self.base_score


# --- bins ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binning:
    """One party's cuts: ``cuts[f]`` ascending; a value's bin is the number of cuts at or below it.

    Candidate ``k`` of feature ``f`` sends bins ``0..k`` left, i.e. ``x < cuts[f][k]``.
    """

    cuts: tuple[FloatArray, ...]

    @property
    def candidates(self) -> list[int]:
        """Candidate splits per feature (its cut count)."""
        return [len(c) for c in self.cuts]

    def apply(self, x: FloatArray) -> IntArray:
        """Bins of ``x`` (rows × features), as an int64 matrix."""
        if x.shape[1] != len(self.cuts):
            raise ValueError(f"x has {x.shape[1]} features, the binning {len(self.cuts)}")
        out = np.empty(x.shape, dtype=np.int64)
        for f, cuts in enumerate(self.cuts):
            out[:, f] = np.searchsorted(cuts, x[:, f], side="right")
        return out


def fit_binning(x: FloatArray, max_bin: int) -> Binning:
    """Cuts of each column of ``x`` (the training rows): at most ``max_bin`` bins, none empty.

    A column with at most ``max_bin`` distinct values gets one bin per value; otherwise the cuts
    are the values at the quantiles ``j/max_bin`` (``inverted_cdf``: data values), deduplicated.
    """
    cuts: list[FloatArray] = []
    for f in range(x.shape[1]):
        column = np.asarray(x[:, f], dtype=np.float64)
        values = np.unique(column)
        if len(values) <= max_bin:
            cuts.append(values[1:].copy())
            continue
        qs = np.quantile(column, np.arange(1, max_bin) / max_bin, method="inverted_cdf")
        found = np.unique(np.asarray(qs, dtype=np.float64))
        cuts.append(found[found > values[0]])
    return Binning(tuple(cuts))


# --- gradients ----------------------------------------------------------------------------------


def sigmoid(z: FloatArray) -> FloatArray:
    """The logistic function, its argument clipped to ``±35``."""
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -_MARGIN_CLIP, _MARGIN_CLIP))))


def gradients(
    margin: FloatArray, y: FloatArray, objective: Objective
) -> tuple[FloatArray, FloatArray]:
    """First- and second-order gradients of the loss at ``margin``."""
    if objective == "binary:logistic":
        p = sigmoid(margin)
        return p - y, p * (1.0 - p)
    return margin - y, np.ones_like(margin)


def quantize_gradients(g: FloatArray, h: FloatArray) -> tuple[IntArray, IntArray]:
    """``g`` and ``h`` as integers with ``GRAD_FRAC_BITS`` fractional bits (what is encrypted)."""
    scale = float(1 << GRAD_FRAC_BITS)
    gq = np.rint(g * scale).astype(np.int64)
    hq = np.rint(h * scale).astype(np.int64)
    if hq.min(initial=0) < 0:
        raise ValueError("a hessian is negative")
    return gq, hq


def loss(margin: FloatArray, y: FloatArray, objective: Objective) -> float:
    """The mean loss (log loss, or half the mean squared error as XGBoost's ``rmse`` ranks)."""
    if not len(y):
        return 0.0
    if objective == "binary:logistic":
        p = np.clip(sigmoid(margin), 1e-15, 1 - 1e-15)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return float(np.sqrt(np.mean((margin - y) ** 2)))


def sample_rows(rows: int, fraction: float, seed: int, tree: int) -> BoolArray:
    """Which of ``rows`` training rows tree ``tree`` uses (all when ``fraction`` is 1)."""
    if fraction >= 1:
        return np.ones(rows, dtype=bool)
    rng = np.random.default_rng([seed, tree, 0x5B])
    keep = max(1, int(round(fraction * rows)))
    mask = np.zeros(rows, dtype=bool)
    mask[rng.choice(rows, size=keep, replace=False)] = True
    return mask


def sample_features(count: int, fraction: float, seed: int, tree: int, party: int) -> IntArray:
    """The features (indices, ascending) party ``party`` (0 the bank) offers in tree ``tree``."""
    if fraction >= 1 or count == 0:
        return np.arange(count, dtype=np.int64)
    rng = np.random.default_rng([seed, tree, party, 0xC5])
    keep = max(1, int(round(fraction * count)))
    return np.sort(rng.choice(count, size=keep, replace=False)).astype(np.int64)


# --- histograms and splits ----------------------------------------------------------------------


def bin_sums(bins: IntArray, values: IntArray, widths: Sequence[int]) -> list[IntArray]:
    """Per feature, the sum of ``values`` in each bin (``widths[f]`` bins), exactly.

    Args:
        bins: Rows × features bins.
        values: One integer per row (``|Σ| < 2^53``: exact in float64).
        widths: Bins per feature.
    """
    out = []
    weights = values.astype(np.float64)
    for f, width in enumerate(widths):
        sums = np.bincount(bins[:, f], weights=weights, minlength=width)
        out.append(np.rint(sums).astype(np.int64))
    return out


def left_sums(sums: Sequence[IntArray], candidates: Sequence[int]) -> IntArray:
    """Cumulative sums ``Σ_{b≤k}`` for every candidate ``k`` of every feature, concatenated."""
    parts = [np.cumsum(s)[:n] for s, n in zip(sums, candidates, strict=True)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def split_gains(
    gl: IntArray, hl: IntArray, g_total: int, h_total: int, config: BoostConfig
) -> FloatArray:
    """XGBoost's loss change of each candidate; ``-inf`` where a child is below min_child_weight.

    The same function on the same integers in the protocol and the reference: gains are equal
    to the last bit, so ties break the same way.
    """
    scale = float(1 << GRAD_FRAC_BITS)
    lam = config.reg_lambda
    g_l, h_l = gl.astype(np.float64) / scale, hl.astype(np.float64) / scale
    g, h = g_total / scale, h_total / scale
    g_r, h_r = g - g_l, h - h_l
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = g_l * g_l / (h_l + lam) + g_r * g_r / (h_r + lam) - g * g / (h + lam)
    ok = (h_l >= config.min_child_weight) & (h_r >= config.min_child_weight) & (hl > 0)
    ok &= hl < h_total
    return np.where(ok & np.isfinite(gain), gain, -np.inf)


def leaf_weight(g_total: int, h_total: int, config: BoostConfig) -> float:
    """``learning_rate · (−G/(H+λ))``, 0 when ``H < min_child_weight`` (XGBoost's CalcWeight)."""
    scale = float(1 << GRAD_FRAC_BITS)
    g, h = g_total / scale, h_total / scale
    if h < config.min_child_weight or h <= 0:
        return 0.0
    return config.learning_rate * (-g / (h + config.reg_lambda))


# --- trees --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """An inner node: whose split it is and, at that party, a reference to it.

    For the bank's own splits ``ref`` is its feature index and ``threshold`` the cut; for a
    provider's, ``ref`` is the lookup id the provider keeps and ``threshold`` is NaN (the bank
    never learns it).
    """

    party: int
    ref: int
    threshold: float
    gain: float


@dataclass(frozen=True)
class Tree:
    """Nodes by id (children of ``k``: ``2k+1`` left, ``2k+2`` right): splits and leaf weights."""

    splits: Mapping[int, Split]
    leaves: Mapping[int, float]


def children(node: int) -> tuple[int, int]:
    """The left and right child ids of ``node``."""
    return 2 * node + 1, 2 * node + 2


def level_nodes(depth: int) -> range:
    """The node ids at ``depth``."""
    return range((1 << depth) - 1, (1 << (depth + 1)) - 1)


@dataclass(frozen=True)
class Candidates:
    """One party's candidate splits of one node: left sums, in the order the party sent them."""

    gl: IntArray
    hl: IntArray


@dataclass(frozen=True)
class Chosen:
    """A party's answer for a node it won.

    Attributes:
        left: Which of the node's aligned rows (ascending) go left.
        index: The candidate it picked (one of the tied ones), in the order it sent them.
        ref: What the bank's model stores for the split (see :class:`Split`).
        threshold: The cut, for the bank's own splits; NaN for a provider's.
    """

    left: BoolArray
    index: int
    ref: int
    threshold: float = float("nan")


class SplitSource(Protocol):
    """One party's side of growing a tree, as the bank sees it.

    Every call is made for all of a level's nodes at once, so a remote party works on them while
    the others do.
    """

    def start_tree(self, tree: int, gq: IntArray, hq: IntArray) -> None:
        """A new tree: the aligned rows' gradients (a remote source receives them encrypted)."""

    def begin_level(self, depth: int, assignment: IntArray) -> None:
        """The node of every aligned row at ``depth`` (``-1``: in no node to split)."""

    def candidates(self, nodes: Sequence[int]) -> list[Candidates]:
        """The candidates of each node of the level, in ``nodes``' order."""

    def choose(self, won: Mapping[int, Sequence[int]]) -> dict[int, Chosen]:
        """For each node won here, its tied candidates (indices): the party's answer.

        The party picks the earliest of the tied candidates in its own (feature, cut) order.
        """


@dataclass
class LocalSplits:
    """A party's source whose histograms are computed in the clear: the reference's, the bank's.

    Attributes:
        bins: Rows × features bins of every aligned row.
        binning: The cuts.
        train: Whether each aligned row is a training row.
        party: Its index (0: the bank).
        config: The hyper-parameters.
        lookups: The (feature, cut) of every split it won, by lookup id.
    """

    bins: IntArray
    binning: Binning
    train: BoolArray
    party: int
    config: BoostConfig
    lookups: list[tuple[int, int]] = field(default_factory=list)
    _gq: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _hq: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _assignment: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _features: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _keys: list[tuple[int, int]] = field(default_factory=list)

    def start_tree(self, tree: int, gq: IntArray, hq: IntArray) -> None:
        """Keep the gradients and draw this tree's features."""
        self._gq, self._hq = gq, hq
        self._features = sample_features(
            self.bins.shape[1], self.config.colsample_bytree, self.config.seed, tree, self.party
        )
        self._keys = candidate_keys(self._features, self.binning)

    def begin_level(self, depth: int, assignment: IntArray) -> None:
        """Keep the assignment."""
        self._assignment = assignment

    def candidates(self, nodes: Sequence[int]) -> list[Candidates]:
        """Left sums of every candidate, in (feature, cut) order."""
        out = []
        for node in nodes:
            rows = np.flatnonzero((self._assignment == node) & self.train)
            out.append(
                node_candidates(
                    self.bins[rows][:, self._features],
                    self._gq[rows],
                    self._hq[rows],
                    [self.binning.candidates[int(f)] for f in self._features],
                )
            )
        return out

    def choose(self, won: Mapping[int, Sequence[int]]) -> dict[int, Chosen]:
        """The earliest tied candidate's left rows; the bank's own splits name feature and cut."""
        out: dict[int, Chosen] = {}
        for node, tied in won.items():
            index = min(tied, key=self._keys.__getitem__)
            feature, cut = self._keys[index]
            rows = np.flatnonzero(self._assignment == node)
            left = self.bins[rows, feature] <= cut
            if self.party == 0:
                threshold = float(self.binning.cuts[feature][cut])
                out[node] = Chosen(left, index, feature, threshold)
            else:
                self.lookups.append((feature, cut))
                out[node] = Chosen(left, index, len(self.lookups) - 1)
        return out

    def goes_left(self, split: Split) -> BoolArray:
        """Every aligned row's side of one of this party's splits (True: left)."""
        if self.party == 0:
            return np.asarray(self.bins[:, split.ref] < 1 + self._cut(split), dtype=bool)
        feature, cut = self.lookups[split.ref]
        return np.asarray(self.bins[:, feature] <= cut, dtype=bool)

    def _cut(self, split: Split) -> int:
        return int(np.searchsorted(self.binning.cuts[split.ref], split.threshold))


def candidate_keys(features: IntArray, binning: Binning) -> list[tuple[int, int]]:
    """The (feature, cut) of every candidate of the offered ``features``, in order."""
    return [(int(f), k) for f in features for k in range(binning.candidates[int(f)])]


def node_candidates(
    bins: IntArray, gq: IntArray, hq: IntArray, candidates: Sequence[int]
) -> Candidates:
    """The left sums of each candidate of one node's training rows (features in column order)."""
    widths = [n + 1 for n in candidates]
    return Candidates(
        left_sums(bin_sums(bins, gq, widths), candidates),
        left_sums(bin_sums(bins, hq, widths), candidates),
    )


@dataclass(frozen=True)
class Decision:
    """The bank's choice for one node: split by ``party``'s tied candidates."""

    party: int
    tied: tuple[int, ...]
    gain: float


def decide(
    candidates: Sequence[Candidates], g_total: int, h_total: int, config: BoostConfig
) -> Decision | None:
    """The best split of a node over every party's candidates, or ``None`` for a leaf.

    Ties at the best loss change go to the earliest party; that party gets every tied index and
    picks its earliest (feature, cut).
    """
    best, best_party = -np.inf, -1
    gains = []
    for party, c in enumerate(candidates):
        gain = split_gains(c.gl, c.hl, g_total, h_total, config)
        gains.append(gain)
        top = gain.max(initial=-np.inf)
        if top > best:
            best, best_party = float(top), party
    if best_party < 0 or not best > MIN_LOSS_CHANGE or best < config.gamma:
        return None
    tied = tuple(int(i) for i in np.flatnonzero(gains[best_party] == best))
    return Decision(best_party, tied, best)


def check_partition(
    left: BoolArray, rows: IntArray, train: BoolArray, gq: IntArray, hq: IntArray, gl: int, hl: int
) -> None:
    """Refuse a returned partition that does not produce the chosen candidate's sums.

    A provider's left rows must add up to exactly the ``(G_L, H_L)`` the bank decrypted for the
    candidate it picked: anything else means it sent the histogram of other rows, or lies about
    the partition.

    Raises:
        InvalidMessageError: If the mask has the wrong length or the sums differ.
    """
    if left.shape != rows.shape:
        raise InvalidMessageError("a partition has the wrong number of rows for its node")
    picked = rows[left & train[rows]]
    if int(gq[picked].sum()) != gl or int(hq[picked].sum()) != hl:
        raise InvalidMessageError(
            "a provider's partition does not match the histogram of the split it won: the "
            "provider deviated from the protocol"
        )


def grow_tree(
    sources: Sequence[SplitSource],
    tree: int,
    gq: IntArray,
    hq: IntArray,
    train: BoolArray,
    config: BoostConfig,
) -> tuple[Tree, IntArray]:
    """Grow one tree level by level over every party's candidates.

    Args:
        sources: The parties taking part in this tree, the bank first.
        tree: The tree's index.
        gq: Quantised first-order gradients of the aligned rows (0 off the training rows).
        hq: Quantised second-order gradients (0 off the training rows).
        train: Whether each aligned row is a training row.
        config: The hyper-parameters.

    Returns:
        The tree, and the leaf each aligned row ends in.

    Raises:
        InvalidMessageError: If a party answers for nodes it did not win, picks a candidate
            that was not tied, or returns a partition that does not match its histogram.
    """
    n = len(train)
    for s in sources:
        s.start_tree(tree, gq, hq)
    assignment = np.zeros(n, dtype=np.int64)
    splits: dict[int, Split] = {}
    leaves: dict[int, float] = {}
    final = np.full(n, -1, dtype=np.int64)
    active = [0]
    for depth in range(config.max_depth + 1):
        totals = {}
        for node in active:
            rows = (assignment == node) & train
            totals[node] = (int(gq[rows].sum()), int(hq[rows].sum()))
        decisions: dict[int, Decision | None] = dict.fromkeys(active)
        per_party: list[list[Candidates]] = []
        if depth < config.max_depth:
            for s in sources:
                s.begin_level(depth, assignment)
            per_party = [s.candidates(active) for s in sources]
            for i, node in enumerate(active):
                decisions[node] = decide([p[i] for p in per_party], *totals[node], config)
        nxt = np.full(n, -1, dtype=np.int64)
        for party, source in enumerate(sources if per_party else ()):
            # Every party hears from every level it took part in, if only that it won nothing.
            won = {node: d.tied for node, d in decisions.items() if d and d.party == party}
            answers = source.choose(won)
            if set(answers) != set(won):
                raise InvalidMessageError(f"party {party} answered for other nodes than it won")
            for node, chosen in answers.items():
                decision = decisions[node]
                if decision is None or chosen.index not in decision.tied:
                    raise InvalidMessageError(f"party {party} picked a candidate that was not tied")
                c = per_party[party][active.index(node)]
                rows = np.flatnonzero(assignment == node)
                gl, hl = int(c.gl[chosen.index]), int(c.hl[chosen.index])
                check_partition(chosen.left, rows, train, gq, hq, gl, hl)
                lc, rc = children(node)
                nxt[rows[chosen.left]] = lc
                nxt[rows[~chosen.left]] = rc
                splits[node] = Split(party, chosen.ref, chosen.threshold, decision.gain)
        for node, d in decisions.items():
            if d is None:
                leaves[node] = leaf_weight(*totals[node], config)
                final[assignment == node] = node
        active = sorted(set(nxt[nxt >= 0].tolist()))
        assignment = nxt
        if not active:
            if depth + 1 < config.max_depth:
                for s in sources:  # the tree is complete before its last level: say so
                    s.begin_level(depth + 1, assignment)
            break
    return Tree(splits, leaves), final


# --- the model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ensemble:
    """The bank's view of a trained model: trees over the parties' splits, and where it starts."""

    trees: tuple[Tree, ...]
    base_margin: float
    objective: Objective


def route(tree: Tree, goes_left: Callable[[int, Split], BoolArray], rows: int) -> IntArray:
    """The leaf each of ``rows`` rows reaches; ``goes_left(node, split)`` decides each split."""
    at = np.zeros(rows, dtype=np.int64)
    for depth in range(MAX_DEPTH + 1):
        for node in level_nodes(depth):
            split = tree.splits.get(node)
            if split is None:
                continue
            here = at == node
            if here.any():
                left = goes_left(node, split)
                lc, rc = children(node)
                at = np.where(here, np.where(left, lc, rc), at)
    return at


def leaf_values(tree: Tree, leaf: IntArray) -> FloatArray:
    """Each row's leaf weight.

    Raises:
        InvalidMessageError: If a row ends in a node that is no leaf.
    """
    try:
        return np.array([tree.leaves[int(k)] for k in leaf.tolist()], dtype=np.float64)
    except KeyError:
        raise InvalidMessageError(
            "a row ended in a node that is no leaf: the model is damaged"
        ) from None


@dataclass(frozen=True)
class BoostFit:
    """The reference's result: the model, the held-out losses, and the margins of every row."""

    ensemble: Ensemble
    losses: tuple[float, ...]
    best_round: int
    margins: FloatArray


@dataclass
class EarlyStop:
    """XGBoost's early stopping on the held-out loss: stop after ``rounds`` without improvement."""

    rounds: int | None
    best: float = math.inf
    best_round: int = -1
    stale: int = 0

    def update(self, round_: int, value: float) -> bool:
        """Record round ``round_``'s held-out loss; ``True`` when training should stop."""
        if value < self.best:
            self.best, self.best_round, self.stale = value, round_, 0
        else:
            self.stale += 1
        return self.rounds is not None and self.stale >= self.rounds

    def kept(self, grown: int) -> int:
        """How many trees the model keeps: all without early stopping, else up to the best."""
        return grown if self.rounds is None else self.best_round + 1


def fit(
    blocks: Sequence[FloatArray],
    y: FloatArray,
    train: BoolArray,
    config: BoostConfig,
) -> tuple[BoostFit, list[LocalSplits]]:
    """The plaintext reference: the protocol's algorithm on the joined table.

    Args:
        blocks: Each party's raw features at the aligned rows, the bank first.
        y: The labels (or targets) of the aligned rows.
        train: Whether each aligned row is a training row; the others are held out.
        config: The hyper-parameters.

    Returns:
        The fit, and each party's source (its bins, cuts and lookups).
    """
    rows = len(y)
    sources = []
    for party, x in enumerate(blocks):
        binning = fit_binning(x[train], config.max_bin)
        sources.append(LocalSplits(binning.apply(x), binning, train, party, config))
    margin = np.full(rows, config.base_margin, dtype=np.float64)
    stop = EarlyStop(config.early_stopping_rounds)
    trees: list[Tree] = []
    losses: list[float] = []
    for t in range(config.n_estimators):
        gq, hq = round_gradients(margin, y, train, config, t)
        parties = sources[:1] if t < config.complete_secure_trees else sources
        tree, leaf = grow_tree(parties, t, gq, hq, train, config)
        margin = margin + leaf_values(tree, leaf)
        trees.append(tree)
        losses.append(loss(margin[~train], y[~train], config.objective))
        if stop.update(t, losses[-1]):
            break
    ensemble = Ensemble(tuple(trees[: stop.kept(len(trees))]), config.base_margin, config.objective)
    margin = predict_local(ensemble, sources, rows)
    return BoostFit(ensemble, tuple(losses), stop.kept(len(trees)) - 1, margin), sources


def predict_local(ensemble: Ensemble, sources: Sequence[LocalSplits], rows: int) -> FloatArray:
    """The margins of the aligned rows, every party's splits applied from its bins."""
    margin = np.full(rows, ensemble.base_margin, dtype=np.float64)
    for tree in ensemble.trees:
        leaf = route(tree, lambda _node, split: sources[split.party].goes_left(split), rows)
        margin = margin + leaf_values(tree, leaf)
    return margin


def round_gradients(
    margin: FloatArray, y: FloatArray, train: BoolArray, config: BoostConfig, tree: int
) -> tuple[IntArray, IntArray]:
    """The quantised gradients of tree ``tree``: 0 off the training rows and its sample."""
    g, h = gradients(margin, y, config.objective)
    gq, hq = quantize_gradients(g, h)
    used = np.zeros(len(y), dtype=bool)
    index = np.flatnonzero(train)
    used[index[sample_rows(len(index), config.subsample, config.seed, tree)]] = True
    gq[~used] = 0
    hq[~used] = 0
    return gq, hq


def probabilities(margin: FloatArray, objective: Objective) -> FloatArray:
    """The prediction from a margin: a probability, or the margin itself for regression."""
    return sigmoid(margin) if objective == "binary:logistic" else margin


# --- scoring: each side's part ------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderSplit:
    """A provider's own split, as it keeps it: a feature of its own and the cut."""

    feature: str
    threshold: float


def provider_decisions(
    splits: Mapping[int, ProviderSplit], columns: Mapping[str, FloatArray], rows: int
) -> tuple[list[int], BoolArray]:
    """A provider's part of scoring: for every row, the side of each of its splits (True: left).

    Args:
        splits: Lookup id -> split, as the provider kept them from training.
        columns: Its raw feature columns by name, ``rows`` values each.
        rows: How many rows are scored.

    Returns:
        The lookup ids in ascending order, and a rows × splits decision matrix.
    """
    ids = sorted(splits)
    out = np.zeros((rows, len(ids)), dtype=bool)
    for j, lookup in enumerate(ids):
        s = splits[lookup]
        out[:, j] = columns[s.feature] < s.threshold
    return ids, out


@dataclass(frozen=True)
class BankNode:
    """A split of the bank's stored model: its own (``feature``, ``threshold``) or a provider's.

    Attributes:
        provider: ``""`` for the bank's own split, else the provider whose split it is.
        feature: The bank's feature (own splits).
        threshold: The cut (own splits): ``x < threshold`` goes left.
        lookup: The provider's lookup id (a provider's split).
    """

    provider: str = ""
    feature: str = ""
    threshold: float = float("nan")
    lookup: int = -1


@dataclass(frozen=True)
class BankTree:
    """One tree of the bank's stored model."""

    splits: Mapping[int, BankNode]
    leaves: Mapping[int, float]


def bank_margins(
    trees: Sequence[BankTree],
    base_margin: float,
    own: Mapping[str, FloatArray],
    decisions: Mapping[str, tuple[Sequence[int], BoolArray]],
    rows: int,
) -> FloatArray:
    """The bank's part of scoring: its own splits and every provider's decisions, to margins.

    Args:
        trees: The bank's stored trees.
        base_margin: The model's starting margin.
        own: The bank's raw feature columns by name.
        decisions: Provider -> (its lookup ids, rows × lookups decisions) from
            :func:`provider_decisions`.
        rows: How many rows are scored.

    Raises:
        InvalidMessageError: If a provider's decisions lack a split the model uses, or the
            model is damaged.
    """
    index = {p: {int(k): j for j, k in enumerate(ids)} for p, (ids, _) in decisions.items()}

    def goes_left(node: BankNode) -> BoolArray:
        if not node.provider:
            return np.asarray(own[node.feature] < node.threshold, dtype=bool)
        where = index.get(node.provider, {}).get(node.lookup)
        if where is None:
            raise InvalidMessageError(f"{node.provider}'s decisions lack split {node.lookup}")
        return np.asarray(decisions[node.provider][1][:, where], dtype=bool)

    out = np.full(rows, base_margin, dtype=np.float64)
    for tree in trees:
        nodes = tree.splits
        shape = Tree({k: Split(0, k, 0.0, 0.0) for k in nodes}, tree.leaves)

        def decide_node(
            node: int, _split: Split, nodes: Mapping[int, BankNode] = nodes
        ) -> BoolArray:
            return goes_left(nodes[node])

        out += leaf_values(shape, route(shape, decide_node, rows))
    return out
