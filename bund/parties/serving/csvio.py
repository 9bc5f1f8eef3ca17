r"""Applicants in, decisions out, as CSV: what ``bund score`` reads and writes.

An applicants file has the applicant's id in its ``id`` column (or the column named) and the
bank's own feature values, by the model's feature names, in the others: exactly what the bank's
part of the model needs. The decisions file has ``id``, ``decision`` and ``probability`` (empty
for ``refer``), in the applicants' order.

>>> applicants = read_applicants("id,loan,term\n913100A,120.5,36\n", "id")
>>> applicants[0].id, dict(applicants[0].features)
('913100A', {'loan': 120.5, 'term': 36.0})
"""

from __future__ import annotations

import csv
import io
import math

from bund.compute.errors import InvalidInputError
from bund.parties.serving.service import Applicant, Scored


def read_applicants(text: str, id_column: str = "id") -> list[Applicant]:
    """The applicants of a CSV text: each row's id and its other columns as numbers.

    Raises:
        InvalidInputError: No such id column, a blank id, or a value that is not a finite number.
    """
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or id_column not in reader.fieldnames:
        raise InvalidInputError(
            f"the applicants file has no column {id_column!r} (its columns: "
            f"{reader.fieldnames or []}); name the id column with --id-column"
        )
    applicants = []
    for line, row in enumerate(reader, start=2):
        company = (row.get(id_column) or "").strip()
        if not company:
            raise InvalidInputError(f"line {line}: the applicant's id is blank")
        features: dict[str, float] = {}
        for name, value in row.items():
            if name == id_column or name is None:
                continue
            try:
                number = float(value or "")
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                raise InvalidInputError(f"line {line}: {name} = {value!r} is not a finite number")
            features[name] = number
        applicants.append(Applicant(company, features))
    return applicants


def decisions_csv(scored: Scored) -> str:
    """The decisions as CSV text: ``id``, ``decision``, ``probability`` (6 decimals)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "decision", "probability"])
    for d in scored.decisions:
        writer.writerow([d.id, d.decision, "" if d.probability is None else f"{d.probability:.6f}"])
    return out.getvalue()
