"""Mean ± standard deviation over seeds, the way the benchmark tables print them."""

from __future__ import annotations

import statistics
from typing import Optional, Sequence


def mean_std(values: Sequence[Optional[float]], scale: float = 100.0, digits: int = 1) -> str:
    """``"m ± s"`` of the values that are not None, times ``scale`` (fractions -> %), with the
    sample standard deviation (n - 1); one value alone as ``"m"``; ``"-"`` when there is none."""
    vals = [scale * v for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"
