"""Charts the console draws on the server (matplotlib's Agg backend), embedded as PNG.

The budget chart is the regulator report's (:func:`bund.parties.report.budget_chart_png`);
charts a protocol drew into a result (ROC, KS, training curves, IV) are shown as the node holds
them, once they are checked to be PNG. Here: how long a job spent between the records of its
life.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Final

from bund.parties.console.model import Step

PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
#: The largest result image shown inline; a bigger one is only offered for download.
MAX_INLINE_PNG: Final = 4 << 20


def png_data_url(png: bytes | None) -> str:
    """``png`` as a ``data:`` URL for an ``<img>``; ``""`` for none, or for bytes not a PNG.

    >>> png_data_url(b"<svg onload=alert(1)>")
    ''
    """
    if png is None or not png.startswith(PNG_MAGIC) or len(png) > MAX_INLINE_PNG:
        return ""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def durations_png(steps: Sequence[Step]) -> bytes | None:
    """A bar per step of a job's life at this node: the seconds until each record after the first.

    Returns:
        The PNG, or None when fewer than two records have times that parse.
    """
    bars = [(s.event, s.after_s) for s in steps if s.after_s is not None]
    if not bars:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 0.5 + 0.28 * len(bars)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    labels = [f"{number}. {event}" for number, (event, _) in enumerate(bars, 1)]
    axes.barh(labels, [seconds for _, seconds in bars], color="C0")
    axes.invert_yaxis()
    axes.set_xlabel("seconds since the record before")
    axes.grid(axis="x", alpha=0.3)
    out = io.BytesIO()
    figure.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()
