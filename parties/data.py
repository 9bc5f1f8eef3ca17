"""Dataset sources and the in-memory table a protocol role reads its own data from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from compute.errors import BundError


class DatasetError(BundError):
    """A dataset cannot be read or lacks what the job needs; the message names the fix."""


@dataclass(frozen=True)
class Table:
    """A party's dataset held column-wise as strings, exactly as read from its source.

    Columns are kept as text so identifiers keep their exact form (leading zeros, letters);
    ``numeric`` converts a column when a computation needs numbers.
    """

    name: str
    data: Mapping[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        lengths = {len(v) for v in self.data.values()}
        if len(lengths) > 1:
            raise DatasetError(f"dataset {self.name!r}: columns have different lengths {lengths}")

    @classmethod
    def from_columns(cls, name: str, columns: Mapping[str, Sequence[str]]) -> Table:
        """Build a table from column name -> values."""
        return cls(name, {k: tuple(str(x) for x in v) for k, v in columns.items()})

    @property
    def columns(self) -> tuple[str, ...]:
        """Column names in source order."""
        return tuple(self.data)

    @property
    def num_rows(self) -> int:
        """Number of rows."""
        return len(next(iter(self.data.values()))) if self.data else 0

    def column(self, name: str) -> tuple[str, ...]:
        """The values of column ``name`` as text."""
        try:
            return self.data[name]
        except KeyError:
            raise DatasetError(
                f"dataset {self.name!r} has no column {name!r}; its columns are {list(self.data)}"
            ) from None

    def numeric(self, name: str) -> np.ndarray:
        """Column ``name`` as float64; an empty cell or non-number raises ``DatasetError``."""
        values = self.column(name)
        try:
            return np.array([float(v) for v in values], dtype=np.float64)
        except ValueError as exc:
            raise DatasetError(f"dataset {self.name!r} column {name!r} is not numeric: {exc}") from None
