"""DP statistics as integer vectors: queries, per-party contributions, and the released table.

Every query Bund answers across hospitals is *linear*: the statistic of the pooled cohort is the
sum over records of a small integer vector ``f(record)``, so it is the sum of each hospital's
contribution and can be aggregated with masks (``bund.compute.dp.pairwise_masks``). A query is
cut into *blocks*; block ``b`` has a length, an L1 sensitivity ``Δ_b`` (the most one record
changes it, after the clamping that is part of the query) and its share ``ε_b`` of the query's ``ε``
(``Σ ε_b = ε``). Discrete Laplace noise of scale ``Δ_b/ε_b`` on block ``b``
(``bund.compute.dp.mechanisms``) makes the whole release ``ε``-DP under adding or removing one
record of any one dataset (basic composition over the blocks).

=============  ==============================================  ===========================
kind           blocks (cells, L1 sensitivity, share of ε)      released
=============  ==============================================  ===========================
count          1 cell, Δ 1, ε                                  the cohort size
sum            1 cell, Δ max(|lower|, |upper|)/resolution, ε   the sum of clamped values
mean           sum block (ε/2) + count block (ε/2)             sum, count and their ratio
histogram      bins or categories cells, Δ 1, ε                one count per bin
contingency    rows × columns cells, Δ 1, ε                    one count per cell
quantiles      bins cells, Δ 1, ε                              quantiles of the noisy CDF
survival       per stratum: deaths per time bin, censored per     Kaplan–Meier and
               time bin, followed past the horizon; Δ 1, ε     Nelson–Aalen per bin with
                                                               bands, log-rank across strata
=============  ==============================================  ===========================

Everything after the noise (suppression of small cells, ratios, quantiles, the Kaplan–Meier
product) is post-processing of the noisy vector and costs no privacy. With noise off (tests only)
the released table equals the plaintext computation on the pooled records exactly.

>>> q = parse_query({"kind": "count", "epsilon": "1/2", "min_cell": 1, "filter": "age>=65"})
>>> contribution(q, {"age": ["70", "40", "65"]}, rows=3)
[2]
>>> release(q, [2]).rows
[('count', 2)]
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from bund.compute.dp import survival
from bund.compute.dp.budget import parse_rational
from bund.compute.errors import InvalidInputError

#: The most cells (bins, categories, table cells) one query may release.
MAX_CELLS = 4096
#: The most time bins of a survival query: 16,384 days is 44.9 years at one bin a day.
MAX_SURVIVAL_BINS = 1 << 14
#: The most cells of a survival query, strata × (2·bins + 1): one masked vector's limit.
MAX_SURVIVAL_CELLS = 1 << 16
#: Bounds on ε per query: below, the noise swamps everything; above, the guarantee is void.
MIN_EPSILON, MAX_EPSILON = Fraction(1, 1000), Fraction(10)
#: The largest clamping bound in units of the resolution.
MAX_UNITS = 1 << 32
#: Every parameter a query may carry (beyond these the protocol adds ``noise``).
QUERY_PARAMS = frozenset(
    {
        "kind",
        "epsilon",
        "min_cell",
        "filter",
        "column",
        "lower",
        "upper",
        "resolution",
        "bins",
        "categories",
        "column2",
        "categories2",
        "event",
        "quantiles",
    }
)

Cell = str | int | None


class QueryKind(enum.Enum):
    """What a query computes."""

    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    HISTOGRAM = "histogram"
    CONTINGENCY = "contingency"
    QUANTILES = "quantiles"
    SURVIVAL = "survival"


@dataclass(frozen=True)
class Filter:
    """One clause of a cohort filter: ``column op value``.

    ``=`` and ``!=`` compare text against one or more ``|``-separated values; ``<``, ``<=``,
    ``>``, ``>=`` compare numbers exactly (as rationals).
    """

    column: str
    op: str
    values: tuple[str, ...]

    def matches(self, cell: str) -> bool:
        """Whether a record's ``cell`` passes this clause."""
        if self.op == "=":
            return cell.strip() in self.values
        if self.op == "!=":
            return cell.strip() not in self.values
        left, right = _number(cell, self.column), Fraction(self.values[0])
        return {
            "<": left < right,
            "<=": left <= right,
            ">": left > right,
            ">=": left >= right,
        }[self.op]


@dataclass(frozen=True)
class Block:
    """A part of a query's vector with its own sensitivity and share of ε."""

    name: str
    length: int
    sensitivity: int
    epsilon: Fraction


@dataclass(frozen=True)
class Query:
    """A validated query. Build it with :func:`parse_query` from a job's flat parameters."""

    kind: QueryKind
    epsilon: Fraction
    min_cell: int
    filters: tuple[Filter, ...] = ()
    column: str | None = None
    lower: Fraction = Fraction(0)
    upper: Fraction = Fraction(0)
    resolution: Fraction = Fraction(1)
    bins: int = 0
    categories: tuple[str, ...] = ()
    column2: str | None = None
    categories2: tuple[str, ...] = ()
    event: str | None = None
    quantiles: tuple[Fraction, ...] = ()

    @property
    def blocks(self) -> tuple[Block, ...]:
        """The query's vector, block by block; the shares of ε add up to ``epsilon`` exactly."""
        kind, eps = self.kind, self.epsilon
        if kind is QueryKind.COUNT:
            return (Block("count", 1, 1, eps),)
        if kind is QueryKind.SUM:
            return (Block("sum", 1, self.sum_sensitivity, eps),)
        if kind is QueryKind.MEAN:
            return (Block("sum", 1, self.sum_sensitivity, eps / 2), Block("count", 1, 1, eps / 2))
        if kind is QueryKind.HISTOGRAM:
            return (Block("bins", len(self.categories) or self.bins, 1, eps),)
        if kind is QueryKind.CONTINGENCY:
            return (Block("cells", len(self.categories) * len(self.categories2), 1, eps),)
        if kind is QueryKind.QUANTILES:
            return (Block("bins", self.bins, 1, eps),)
        # One record lands in one cell: its stratum's death or censoring in its bin, or its
        # stratum's past-horizon count.
        return (Block("events_censored", self.strata * (2 * self.bins + 1), 1, eps),)

    @property
    def strata(self) -> int:
        """Survival: the number of strata (curves), 1 when the query is not stratified."""
        return len(self.categories2) if self.kind is QueryKind.SURVIVAL and self.column2 else 1

    @property
    def floored(self) -> bool:
        """Whether ``min_cell`` suppresses released counts a data owner's cohort floor bounds.

        Count, mean (its count), histogram, contingency and quantiles (the total) are; a sum
        releases no count, and a survival table's per-bin event counts are small by nature and
        protected by the noise alone (its ``min_cell`` applies to the number at risk).
        """
        return self.kind not in (QueryKind.SUM, QueryKind.SURVIVAL)

    @property
    def length(self) -> int:
        """Cells in the whole vector."""
        return sum(b.length for b in self.blocks)

    @property
    def sum_sensitivity(self) -> int:
        """``max(|lower|, |upper|)`` in units of the resolution: one record's largest share."""
        return max(1, int(max(abs(self.lower), abs(self.upper)) / self.resolution))

    @property
    def columns(self) -> tuple[str, ...]:
        """Every logical column the query reads."""
        names = [f.column for f in self.filters]
        names += [c for c in (self.column, self.column2, self.event) if c is not None]
        return tuple(dict.fromkeys(names))

    def bin_edges(self) -> list[Fraction]:
        """The ``bins + 1`` edges of a numeric histogram, quantile grid or survival time grid."""
        width = (self.upper - self.lower) / self.bins
        return [self.lower + i * width for i in range(self.bins + 1)]


def _number(cell: str, column: str) -> Fraction:
    try:
        return Fraction(cell.strip())
    except (ValueError, ZeroDivisionError):
        raise InvalidInputError(
            f"column {column!r} holds {cell!r}, which is not a number; fix the data or bind "
            "another column"
        ) from None


_CLAUSE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9_.\-]{0,63})\s*(>=|<=|!=|=|<|>)\s*(\S.*?)\s*$")


def _parse_filter(text: str) -> tuple[Filter, ...]:
    clauses: list[Filter] = []
    for part in text.split(";"):
        if not part.strip():
            continue
        match = _CLAUSE.match(part)
        if match is None:
            raise InvalidInputError(
                f"filter clause {part.strip()!r} is not 'column op value' with op one of "
                "= != < <= > >= (for example 'age>=65;sex=M;diagnosis=I50|I21')"
            )
        column, op, value = match.groups()
        values = tuple(v.strip() for v in value.split("|"))
        if op in ("=", "!="):
            if not all(values):
                raise InvalidInputError(f"filter clause {part.strip()!r} has an empty value")
        else:
            if len(values) != 1:
                raise InvalidInputError(f"filter clause {part.strip()!r}: '|' only with = or !=")
            _exact(values[0], f"filter value of {column!r}", signed=True)
        clauses.append(Filter(column, op, values))
    return tuple(clauses)


def _exact(value: object, what: str, signed: bool = False) -> Fraction:
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise InvalidInputError(f'{what} must be written exactly, as a string like "1/2" or "0.5"')
    text = str(value).strip()
    negative = signed and text.startswith("-")
    magnitude = parse_rational(text[1:] if negative else text, what)
    return -magnitude if negative else magnitude


def _int(params: Mapping[str, object], key: str, low: int, high: int) -> int:
    value = params.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInputError(f"parameter {key} must be an integer in [{low}, {high}]")
    return value


def _name(params: Mapping[str, object], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", value):
        raise InvalidInputError(f"parameter {key} must name a column (letters, digits, _ . -)")
    return value


def _categories(params: Mapping[str, object], key: str) -> tuple[str, ...]:
    value = params.get(key)
    if not isinstance(value, str):
        raise InvalidInputError(f"parameter {key} must list categories as 'a|b|c'")
    cats = tuple(c.strip() for c in value.split("|"))
    if not all(cats) or len(set(cats)) != len(cats) or len(cats) > MAX_CELLS:
        raise InvalidInputError(
            f"parameter {key} must list distinct, non-empty categories as 'a|b|c'"
        )
    return cats


def _bounds(params: Mapping[str, object], resolution: Fraction | None) -> tuple[Fraction, Fraction]:
    """``lower < upper``; for sums (``resolution`` given) whole multiples of it, for bins any."""
    lower = _exact(params.get("lower"), "parameter lower", signed=True)
    upper = _exact(params.get("upper"), "parameter upper", signed=True)
    if not lower < upper:
        raise InvalidInputError("parameter lower must be below upper")
    for bound in (lower, upper):
        units = bound / (resolution or 1)
        if (resolution and units.denominator != 1) or abs(units) > MAX_UNITS:
            raise InvalidInputError(
                f"the bound {bound} must be a multiple of the resolution {resolution} and at most "
                f"{MAX_UNITS} resolution units from 0"
            )
    return lower, upper


def parse_query(params: Mapping[str, object]) -> Query:
    """Validate a job's flat query parameters strictly and build the :class:`Query`.

    Parameters (values as in a job spec; rationals as exact strings):
        kind: ``count``, ``sum``, ``mean``, ``histogram``, ``contingency``, ``quantiles`` or
            ``survival``.
        epsilon: The query's privacy loss, e.g. ``"1/2"``; in ``[1/1000, 10]``.
        min_cell: Cells whose *noisy* count is below it are suppressed; an integer ≥ 1.
        filter: Optional cohort filter, ``"age>=65;sex=M;diagnosis=I50|I21"``.
        column: The value column (sum, mean, numeric histogram, quantiles) or the row
            category column (contingency) or the follow-up time column (survival).
        lower, upper, resolution: Clamping bounds and the unit values are rounded to (sum,
            mean); the bin range (numeric histogram, quantiles); ``lower`` must be 0 and
            ``upper`` the horizon for survival.
        bins: Number of equal-width bins in ``[lower, upper]`` (numeric histogram, quantiles,
            survival time grid).
        categories, categories2: ``"a|b|c"`` category lists (categorical histogram,
            contingency rows and columns); records in no listed category count nowhere.
        column2: The column category column (contingency).
        event: The 0/1 event column (survival).
        quantiles: ``"1/4|1/2|3/4"`` (quantiles).

    Raises:
        InvalidInputError: Naming the parameter to fix.
    """
    unknown = sorted(set(params) - QUERY_PARAMS)
    if unknown:
        raise InvalidInputError(
            f"unknown query parameters {unknown}; known: {sorted(QUERY_PARAMS)}"
        )
    try:
        kind = QueryKind(params.get("kind"))
    except ValueError:
        raise InvalidInputError(
            f"parameter kind must be one of {[k.value for k in QueryKind]}, "
            f"not {params.get('kind')!r}"
        ) from None
    epsilon = _exact(params.get("epsilon"), "parameter epsilon")
    if not MIN_EPSILON <= epsilon <= MAX_EPSILON:
        raise InvalidInputError(f"parameter epsilon must be in [{MIN_EPSILON}, {MAX_EPSILON}]")
    min_cell = _int(params, "min_cell", 1, 1 << 30)
    raw_filter = params.get("filter", "")
    if not isinstance(raw_filter, str):
        raise InvalidInputError("parameter filter must be a string like 'age>=65;sex=M'")
    filters = _parse_filter(raw_filter)
    allowed = {"kind", "epsilon", "min_cell", "filter"}
    fields: dict[str, object] = {}
    if kind in (QueryKind.SUM, QueryKind.MEAN):
        allowed |= {"column", "lower", "upper", "resolution"}
        resolution = _exact(params.get("resolution", "1"), "parameter resolution")
        if resolution <= 0:
            raise InvalidInputError("parameter resolution must be positive")
        lower, upper = _bounds(params, resolution)
        fields.update(column=_name(params, "column"), lower=lower, upper=upper)
        fields["resolution"] = resolution
    elif kind is QueryKind.HISTOGRAM and "categories" in params:
        allowed |= {"column", "categories"}
        fields.update(column=_name(params, "column"), categories=_categories(params, "categories"))
    elif kind in (QueryKind.HISTOGRAM, QueryKind.QUANTILES, QueryKind.SURVIVAL):
        allowed |= {"column", "lower", "upper", "bins"}
        cap = MAX_SURVIVAL_BINS if kind is QueryKind.SURVIVAL else MAX_CELLS
        fields.update(column=_name(params, "column"), bins=_int(params, "bins", 1, cap))
        fields["lower"], fields["upper"] = _bounds(params, None)
        if kind is QueryKind.QUANTILES:
            allowed.add("quantiles")
            listed = str(params.get("quantiles", "")).split("|")
            qs = tuple(_exact(q.strip(), "a quantile") for q in listed)
            if not all(0 < q < 1 for q in qs) or len(set(qs)) != len(qs) or len(qs) > 99:
                raise InvalidInputError(
                    "parameter quantiles must list distinct values in (0, 1): '1/2|9/10'"
                )
            fields["quantiles"] = qs
        if kind is QueryKind.SURVIVAL:
            allowed |= {"event", "column2", "categories2"}
            fields["event"] = _name(params, "event")
            if fields["lower"] != 0:
                raise InvalidInputError("a survival query's time grid starts at lower = 0")
            if ("column2" in params) != ("categories2" in params):
                raise InvalidInputError(
                    "a stratified survival query names both column2 (the stratum column) and "
                    "categories2 (its strata, 'a|b')"
                )
            if "column2" in params:
                fields["column2"] = _name(params, "column2")
                fields["categories2"] = _categories(params, "categories2")
    elif kind is QueryKind.CONTINGENCY:
        allowed |= {"column", "categories", "column2", "categories2"}
        rows, cols = _categories(params, "categories"), _categories(params, "categories2")
        if len(rows) * len(cols) > MAX_CELLS:
            raise InvalidInputError(f"a contingency table may have at most {MAX_CELLS} cells")
        fields.update(column=_name(params, "column"), column2=_name(params, "column2"))
        fields.update(categories=rows, categories2=cols)
    extra = sorted(set(params) - allowed)
    if extra:
        raise InvalidInputError(f"a {kind.value} query does not take {extra}; remove them")
    query = Query(kind, epsilon, min_cell, filters, **fields)  # type: ignore[arg-type]
    most = MAX_SURVIVAL_CELLS if kind is QueryKind.SURVIVAL else MAX_CELLS
    if not 1 <= query.length <= most:
        raise InvalidInputError(
            f"a {kind.value} query releases 1 to {most} cells, this one {query.length}"
        )
    return query


def _selected(query: Query, columns: Mapping[str, Sequence[str]], rows: int) -> list[int]:
    for name in query.columns:
        if name not in columns:
            raise InvalidInputError(f"the query reads column {name!r}, which the data lacks")
        if len(columns[name]) != rows:
            raise ValueError(f"column {name!r} has {len(columns[name])} cells, not {rows}")
    keep = list(range(rows))
    for clause in query.filters:
        cells = columns[clause.column]
        keep = [i for i in keep if clause.matches(cells[i])]
    return keep


def _bin(value: Fraction, query: Query) -> int:
    """The bin of ``value`` after clamping into ``[lower, upper]`` (upper falls in the last bin)."""
    clamped = min(max(value, query.lower), query.upper)
    index = math.floor((clamped - query.lower) * query.bins / (query.upper - query.lower))
    return min(index, query.bins - 1)


def contribution(query: Query, columns: Mapping[str, Sequence[str]], rows: int) -> list[int]:
    """One party's integer vector for ``query``: the query's statistic of its own records.

    The vectors of several parties add up to the vector of their pooled records.

    Args:
        query: The validated query.
        columns: The party's data as logical column name -> text cells (at least the
            query's :attr:`Query.columns`).
        rows: The party's number of records.

    Raises:
        InvalidInputError: If a column is missing or a numeric cell is not a number.
    """
    keep = _selected(query, columns, rows)
    kind = query.kind
    if kind is QueryKind.COUNT:
        return [len(keep)]
    assert query.column is not None
    cells = columns[query.column]
    if kind in (QueryKind.SUM, QueryKind.MEAN):
        total = 0
        for i in keep:
            clamped = min(max(_number(cells[i], query.column), query.lower), query.upper)
            total += round(clamped / query.resolution)  # half to even, exact on Fractions
        return [total] if kind is QueryKind.SUM else [total, len(keep)]
    if kind is QueryKind.CONTINGENCY:
        assert query.column2 is not None
        cells2 = columns[query.column2]
        row_of = {c: r for r, c in enumerate(query.categories)}
        col_of = {c: k for k, c in enumerate(query.categories2)}
        out = [0] * query.length
        for i in keep:
            r, k = row_of.get(cells[i].strip()), col_of.get(cells2[i].strip())
            if r is not None and k is not None:
                out[r * len(col_of) + k] += 1
        return out
    if kind is QueryKind.HISTOGRAM and query.categories:
        index = {c: k for k, c in enumerate(query.categories)}
        out = [0] * query.length
        for i in keep:
            k = index.get(cells[i].strip())
            if k is not None:
                out[k] += 1
        return out
    if kind in (QueryKind.HISTOGRAM, QueryKind.QUANTILES):
        out = [0] * query.bins
        for i in keep:
            out[_bin(_number(cells[i], query.column), query)] += 1
        return out
    assert query.event is not None
    events = columns[query.event]
    width = 2 * query.bins + 1
    stratum_of = {c: k for k, c in enumerate(query.categories2)}
    groups = columns[query.column2] if query.column2 else None
    out = [0] * query.length
    for i in keep:
        stratum = 0 if groups is None else stratum_of.get(groups[i].strip())
        if stratum is None:
            continue
        time = _number(cells[i], query.column)
        flag = events[i].strip()
        if flag not in ("0", "1"):
            raise InvalidInputError(f"event column {query.event!r} holds {flag!r}; use 0 or 1")
        if time > query.upper:  # followed past the horizon: at risk throughout, censored there
            out[stratum * width + 2 * query.bins] += 1
            continue
        # Right-closed bins (start, end]: a time counts at the end of its bin; 0 in the first.
        slot = max(math.ceil(max(time, query.lower) * query.bins / query.upper) - 1, 0)
        out[stratum * width + slot + (0 if flag == "1" else query.bins)] += 1
    return out


def uncounted(query: Query, columns: Mapping[str, Sequence[str]], rows: int) -> int | None:
    """Records that pass the filters but fall in no listed category, so count nowhere.

    A blank category cell is one. A data-quality count for the record's owner alone: it says
    how many of its own records the query could not place. ``None`` for a query that lists no
    categories, where every selected record counts (or :func:`contribution` refuses it).

    >>> q = parse_query({"kind": "histogram", "epsilon": "1", "min_cell": 1, "column": "sex",
    ...                  "categories": "M|F"})
    >>> uncounted(q, {"sex": ["M", "", "F", "x"]}, rows=4)
    2
    """
    keep = _selected(query, columns, rows)
    if query.kind is QueryKind.SURVIVAL and query.column2:
        strata, cells = set(query.categories2), columns[query.column2]
        return sum(1 for i in keep if cells[i].strip() not in strata)
    if query.kind is QueryKind.CONTINGENCY:
        assert query.column is not None and query.column2 is not None
        first, second = set(query.categories), set(query.categories2)
        cells, cells2 = columns[query.column], columns[query.column2]
        return sum(
            1 for i in keep if cells[i].strip() not in first or cells2[i].strip() not in second
        )
    if query.kind is QueryKind.HISTOGRAM and query.categories:
        assert query.column is not None
        listed, cells = set(query.categories), columns[query.column]
        return sum(1 for i in keep if cells[i].strip() not in listed)
    return None


@dataclass(frozen=True)
class Release:
    """The released table: a header and rows of text, integers or ``None`` (suppressed).

    ``figures`` holds what a person reads beside the table (survival: the log-rank test, the
    past-horizon counts, the discretisation), for the result's summary.
    """

    header: tuple[str, ...]
    rows: list[tuple[Cell, ...]]
    suppressed: int = 0
    figures: Mapping[str, str | int | float | None] = field(default_factory=dict)


def format_exact(value: Fraction) -> str:
    """An exact rational as a decimal if it has one (``"12.5"``), else as ``"p/q"``."""
    if value.denominator == 1:
        return str(value.numerator)
    den, twos, fives = value.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    if den != 1:
        return str(value)
    digits = max(twos, fives)
    scaled = value * 10**digits
    sign = "-" if scaled < 0 else ""
    whole, frac = divmod(abs(scaled.numerator), 10**digits)
    return f"{sign}{whole}.{frac:0{digits}d}"


def _label(low: Fraction, high: Fraction) -> str:
    return f"[{format_exact(low)}, {format_exact(high)})"


def _suppress(count: int, query: Query) -> int | None:
    return count if count >= query.min_cell else None


def release(
    query: Query, vector: Sequence[int], noise_draws: npt.NDArray[np.int64] | None = None
) -> Release:
    """The released table from the aggregate (noisy, or exact with noise off) vector.

    Counts below ``min_cell`` are suppressed (``None``); a mean is suppressed with its count.
    This is post-processing: it reads nothing but the vector and the public query.
    ``noise_draws`` (survival only, ``(draws, cells)``) are fresh draws of the release's noise
    from which its bands take the noise's variance; ``None`` with noise off.

    Raises:
        ValueError: If the vector does not have the query's length.
    """
    if len(vector) != query.length:
        raise ValueError(f"the query has {query.length} cells, the vector {len(vector)}")
    v = [int(x) for x in vector]
    kind = query.kind
    if kind is QueryKind.COUNT:
        count = _suppress(v[0], query)
        return Release(("statistic", "value"), [("count", count)], int(count is None))
    if kind is QueryKind.SUM:
        return Release(("statistic", "value"), [("sum", format_exact(v[0] * query.resolution))])
    if kind is QueryKind.MEAN:
        count = _suppress(v[1], query)
        total = v[0] * query.resolution
        mean = None if count is None or count <= 0 else format_exact(round(total / count, 6))
        rows: list[tuple[Cell, ...]] = [
            ("sum", format_exact(total)),
            ("count", count),
            ("mean", mean),
        ]
        return Release(("statistic", "value"), rows, int(count is None))
    if kind is QueryKind.CONTINGENCY:
        width = len(query.categories2)
        cells = [_suppress(x, query) for x in v]
        rows = [
            (query.categories[i // width], query.categories2[i % width], c)
            for i, c in enumerate(cells)
        ]
        return Release((query.column or "", query.column2 or "", "count"), rows, cells.count(None))
    if kind is QueryKind.HISTOGRAM:
        cells = [_suppress(x, query) for x in v]
        labels = list(query.categories) or [
            _label(lo, hi) for lo, hi in zip(query.bin_edges(), query.bin_edges()[1:], strict=False)
        ]
        return Release(("bin", "count"), list(zip(labels, cells, strict=True)), cells.count(None))
    if kind is QueryKind.QUANTILES:
        return Release(("quantile", "value"), _quantile_rows(query, v))
    return _survival(query, v, noise_draws)


def _quantile_rows(query: Query, v: list[int]) -> list[tuple[Cell, ...]]:
    """Quantiles of the CDF of the (noisy) histogram, clamped to non-negative counts.

    The ``q``-quantile is the upper edge of the first bin at which the cumulative count reaches
    ``q`` times the total: exact at the grid's resolution when there is no noise.
    """
    counts = [max(0, x) for x in v]
    total = sum(counts)
    edges = query.bin_edges()
    rows: list[tuple[Cell, ...]] = []
    for q in query.quantiles:
        if total < query.min_cell:
            rows.append((format_exact(q), None))
            continue
        running, value = 0, edges[-1]
        for j, c in enumerate(counts):
            running += c
            if running >= q * total:
                value = edges[j + 1]
                break
        rows.append((format_exact(q), format_exact(value)))
    return rows


#: The columns of a survival release (a stratified one starts with ``stratum``).
SURVIVAL_HEADER = (
    "start",
    "end",
    "at_risk",
    "events",
    "censored",
    "survival",
    "survival_lower",
    "survival_upper",
    "cumulative_hazard",
    "cumulative_hazard_se",
    "binning_bound",
)


def survival_curves(
    query: Query, vector: Sequence[int], noise_draws: npt.NDArray[np.int64] | None = None
) -> list[survival.Curve]:
    """One Kaplan–Meier / Nelson–Aalen curve per stratum (``bund.compute.dp.survival``)."""
    deaths, censored, past = survival.split_counts(vector, query.bins)
    width = 2 * query.bins + 1
    out = []
    for k in range(query.strata):
        draws = None if noise_draws is None else noise_draws[:, k * width : (k + 1) * width]
        out.append(survival.curve(deaths[k], censored[k], int(past[k]), draws))
    return out


def _fixed(x: float) -> str:
    return f"{x:.6f}"


def _survival(query: Query, v: list[int], noise_draws: npt.NDArray[np.int64] | None) -> Release:
    curves = survival_curves(query, v, noise_draws)
    edges = query.bin_edges()
    rows: list[tuple[Cell, ...]] = []
    suppressed = 0
    figures: dict[str, str | int | float | None] = {
        "time_grid": f"{query.bins} bins (a, b] of width {format_exact(edges[1])} up to "
        f"{format_exact(query.upper)}",
        "discretisation": "deaths and censorings count at the end of their bin, a bin's "
        "censorings at risk for its deaths; records followed past the horizon are at risk "
        "throughout and counted in past_horizon, not in the last bin; survival at a bin's end "
        "exceeds the exact Kaplan-Meier by at most binning_bound",
    }
    names = query.categories2 or ("",)
    for name, c in zip(names, curves, strict=True):
        for j in range(query.bins):
            small = int(c.at_risk[j]) < query.min_cell
            suppressed += int(small)
            shown: tuple[Cell, ...] = (
                int(c.at_risk[j]),
                int(c.deaths[j]),
                int(c.censored[j]),
                _fixed(c.survival[j]),
                _fixed(c.lower[j]),
                _fixed(c.upper[j]),
                _fixed(c.cumulative_hazard[j]),
                _fixed(c.cumulative_hazard_se[j]),
                _fixed(c.binning_bound[j]),
            )
            row: tuple[Cell, ...] = (format_exact(edges[j]), format_exact(edges[j + 1]))
            row += tuple(None for _ in shown) if small else shown
            rows.append((name, *row) if query.column2 else row)
        key = f"past_horizon_{name}" if query.column2 else "past_horizon"
        figures[key] = c.past_horizon if c.past_horizon >= query.min_cell else None
        suppressed += int(c.past_horizon < query.min_cell)
    if len(curves) >= 2:
        test = survival.logrank(
            np.stack([c.deaths for c in curves]), np.stack([c.at_risk for c in curves])
        )
        figures.update(
            logrank_statistic=round(test.statistic, 6),
            logrank_df=test.df,
            logrank_p_value=float(f"{test.p_value:.6g}"),
        )
        for name, observed, expected in zip(names, test.observed, test.expected, strict=True):
            figures[f"logrank_observed_{name}"] = round(observed, 6)
            figures[f"logrank_expected_{name}"] = round(expected, 6)
    header = (("stratum",) if query.column2 else ()) + SURVIVAL_HEADER
    return Release(header, rows, suppressed, figures)
