"""What the benchmarks' markdown tables share: statistics, units, verdict marks."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (linear interpolation); NaN for no values."""
    return float(np.percentile(values, q)) if len(values) else float("nan")


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if len(values) else float("nan")


def mark(ok: bool) -> str:
    """How a target reads in a report."""
    return "**met**" if ok else "**NOT met**"


def mb(value: float) -> str:
    """Bytes as whole MiB."""
    return f"{value / 2**20:,.0f}"


def ms(value: float) -> str:
    """Seconds as whole milliseconds."""
    return f"{value * 1000:,.0f}"
