"""Charts in protocol results: one way to render a matplotlib figure to PNG bytes."""

from __future__ import annotations

import io
from typing import Any


def png(figure: Any) -> bytes:
    """Render a matplotlib ``Figure`` to PNG bytes (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=100)
    return out.getvalue()
