"""Public survival studies shipped with lifelines, split over three hospitals, as Bund tables.

lifelines is a dev-only dependency and the reference of the survival and Cox tests; Bund itself
never imports it. The splits are deterministic (every third row), so each hospital holds a
third of the patients of one study.

* GBSG2 (German Breast Cancer Study Group 2): 686 patients, recurrence-free survival in days up
  to 2,659 (7.3 years), ``cens`` the event, ``horTh`` hormone therapy (``no``/``yes``),
  ``tgrade`` the tumour grade (``I``/``II``/``III``).
* Rossi (recidivism of released prisoners): 432 people, weeks to arrest up to 52, ``arrest`` the
  event, seven covariates; lifelines' documentation fits its Cox model on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from bund.parties.data import Table

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
#: Rossi's covariates and public ranges that hold every value (none is clipped).
ROSSI_FEATURES = ("fin", "age", "race", "wexp", "mar", "paro", "prio")
ROSSI_RANGES = "fin:0:1;age:17:44;race:0:1;wexp:0:1;mar:0:1;paro:0:1;prio:0:18"


def gbsg2() -> pd.DataFrame:
    """The GBSG2 study as lifelines ships it."""
    from lifelines.datasets import load_gbsg2

    return load_gbsg2()


def rossi() -> pd.DataFrame:
    """The Rossi recidivism study as lifelines ships it."""
    from lifelines.datasets import load_rossi

    return load_rossi()


def split(frame: pd.DataFrame, parties: Sequence[str] = HOSPITALS) -> dict[str, Table]:
    """Every ``len(parties)``-th row to each party, as text tables."""
    return {
        party: Table.from_columns(
            party, {c: [str(v) for v in frame.iloc[k :: len(parties)][c]] for c in frame.columns}
        )
        for k, party in enumerate(parties)
    }
