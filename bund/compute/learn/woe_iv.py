"""Weight of evidence and information value from per-bin counts, and quantile binning.

The feature owner bins its own feature by quantiles (:func:`quantile_edges`, :func:`assign_bins`);
the label holder computes WOE and IV from per-bin counts of events and rows (:func:`woe_iv`).
In the joint protocol (``docs/protocols/woe-iv.md``) the event counts are summed under Paillier
encryption by the feature owner, so neither side sees the other's columns.

Smoothing. With ``e_b`` events (label 1, "bad") and ``g_b`` non-events ("good") in bin ``b`` of
``k`` bins, ``E`` and ``G`` the totals, and ``α = 0.5`` (Laplace-style, Jeffreys prior)::

    dist_bad_b  = (e_b + α) / (E + k·α)
    dist_good_b = (g_b + α) / (G + k·α)
    WOE_b = ln(dist_bad_b / dist_good_b)
    IV    = Σ_b (dist_bad_b − dist_good_b) · WOE_b

so an empty class in a bin gives a large but finite WOE instead of ±inf. A positive WOE means the
bin holds more than its share of events. IV is at least 0; the usual reading: < 0.02 useless,
0.02–0.1 weak, 0.1–0.3 medium, > 0.3 strong.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: The additive smoothing of every bin count.
SMOOTHING = 0.5
#: Most bins per feature.
MAX_BINS = 64


def quantile_edges(values: npt.ArrayLike, bins: int) -> npt.NDArray[np.float64]:
    """Inner cut points of ``bins`` quantile bins of one feature, ties merged.

    Args:
        values: The feature's values (finite).
        bins: Wanted number of bins, 2 to :data:`MAX_BINS`.

    Returns:
        Strictly increasing inner edges (at most ``bins - 1``); a row with value ``v`` falls in
        bin ``searchsorted(edges, v, side="right")``. Repeated quantiles (count features with many
        ties) are merged, so a feature may get fewer bins than asked for.

    Raises:
        ValueError: If ``bins`` is out of range or a value is not finite.

    >>> quantile_edges([1, 2, 3, 4, 5, 6, 7, 8], 4).tolist()
    [2.75, 4.5, 6.25]
    >>> quantile_edges([0, 0, 0, 0, 0, 0, 1, 2], 4).tolist()
    [0.25]
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if not 2 <= bins <= MAX_BINS:
        raise ValueError(f"bins lies in [2, {MAX_BINS}]")
    if x.size == 0 or not np.isfinite(x).all():
        raise ValueError("binning needs at least one value, all finite")
    inner = np.quantile(x, np.arange(1, bins) / bins)
    edges = np.unique(inner)
    # An edge at the minimum would leave bin 0 empty (it holds the values below the first edge).
    kept: npt.NDArray[np.float64] = edges[edges > x.min()]
    return kept


def assign_bins(values: npt.ArrayLike, edges: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """The bin of each value: ``searchsorted(edges, v, side="right")``, in ``[0, len(edges)]``.

    >>> assign_bins([1, 2.75, 3, 9], [2.75, 4.5]).tolist()
    [0, 1, 1, 2]
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    return np.searchsorted(np.asarray(edges, dtype=np.float64), x, side="right").astype(np.int64)


@dataclass(frozen=True)
class WoeIv:
    """WOE per bin and the IV of one feature, with the counts they came from.

    Attributes:
        woe: Weight of evidence of each bin (smoothed, module docstring).
        iv: Information value of the feature.
        events: Events (label 1) per bin.
        rows: Rows per bin.
    """

    woe: tuple[float, ...]
    iv: float
    events: tuple[int, ...]
    rows: tuple[int, ...]


def woe_iv(events: npt.ArrayLike, rows: npt.ArrayLike, alpha: float = SMOOTHING) -> WoeIv:
    """WOE per bin and IV from per-bin event and row counts.

    Args:
        events: Events (label 1) in each bin.
        rows: Rows in each bin; ``0 <= events[b] <= rows[b]``.
        alpha: Additive smoothing of each count (module docstring), above 0.

    Raises:
        ValueError: If the counts are inconsistent or there are no bins.

    >>> r = woe_iv([10, 40], [100, 100])
    >>> [round(w, 4) for w in r.woe], round(r.iv, 4)
    ([-1.0685, 0.6841], 0.6896)
    """
    e = np.asarray(events, dtype=np.int64).ravel()
    n = np.asarray(rows, dtype=np.int64).ravel()
    if e.size == 0 or e.shape != n.shape:
        raise ValueError("give one event count and one row count per bin, at least one bin")
    if (e < 0).any() or (e > n).any():
        raise ValueError("each bin needs 0 <= events <= rows")
    if not alpha > 0:
        raise ValueError("the smoothing alpha is above 0")
    g = n - e
    k = e.size
    dist_bad = (e + alpha) / (e.sum() + k * alpha)
    dist_good = (g + alpha) / (g.sum() + k * alpha)
    woe = np.log(dist_bad / dist_good)
    iv = float(((dist_bad - dist_good) * woe).sum())
    return WoeIv(
        tuple(float(w) for w in woe), iv, tuple(int(v) for v in e), tuple(int(v) for v in n)
    )


def bin_indicator_rows(bins: npt.ArrayLike, count: int) -> list[npt.NDArray[np.int64]]:
    """One 0/1 row per bin marking the rows that fall in it (the feature owner's matrix).

    Its product with the encrypted labels is the encrypted event count per bin.

    >>> [r.tolist() for r in bin_indicator_rows([0, 1, 0], 2)]
    [[1, 0, 1], [0, 1, 0]]
    """
    b = np.asarray(bins, dtype=np.int64).ravel()
    return [(b == k).astype(np.int64) for k in range(count)]


def merge_small_bins(
    bins: npt.ArrayLike, edges: npt.ArrayLike, min_rows: int
) -> npt.NDArray[np.float64]:
    """Drop inner edges until every bin holds at least ``min_rows`` rows (or one bin is left).

    The smallest bin is merged with its smaller neighbour, repeatedly. A bin of few rows would
    tell the label holder the event count of a small group; quantile bins rarely need this, count
    features with many ties (0/1 flags) sometimes do.

    Args:
        bins: Each row's bin under ``edges`` (:func:`assign_bins`).
        edges: The inner edges.
        min_rows: Least rows per bin, at least 1.

    >>> merge_small_bins([0, 0, 0, 1, 2, 2, 2], [1.0, 2.0], 2).tolist()
    [2.0]
    """
    if min_rows < 1:
        raise ValueError("min_rows is at least 1")
    inner = [float(e) for e in np.asarray(edges, dtype=np.float64).ravel()]
    counts = np.bincount(np.asarray(bins, dtype=np.int64), minlength=len(inner) + 1).tolist()
    while len(counts) > 1 and min(counts) < min_rows:
        small = int(np.argmin(counts))
        if small == 0:
            other = 1
        elif small == len(counts) - 1:
            other = small - 1
        else:
            other = small - 1 if counts[small - 1] <= counts[small + 1] else small + 1
        low = min(small, other)
        counts[low : low + 2] = [counts[low] + counts[low + 1]]
        del inner[low]
    return np.asarray(inner, dtype=np.float64)
