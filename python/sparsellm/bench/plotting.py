"""matplotlib for the benchmarks' plots: the file backend, and a message instead of a plot
when matplotlib is not installed (the numbers are written all the same)."""
from __future__ import annotations

from typing import Any


def pyplot() -> Any | None:
    """matplotlib.pyplot on the Agg backend, or None after saying that no plot is written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot written")
        return None
    return plt
