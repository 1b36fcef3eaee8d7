"""Medians and spreads of repeated trials, and paired comparisons of interleaved subject/baseline trials."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Summary:
    """Median and spread (min–max, and the interquartile range) of some samples."""

    median: float
    lo: float
    hi: float
    q1: float
    q3: float
    n: int
    samples: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.lo, "max": self.hi, "q1": self.q1, "q3": self.q3, "n": self.n,
                "samples": self.samples}


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (as numpy's default) of non-empty ``values``."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(values: Sequence[float | None], scale: float = 1.0) -> Summary | None:
    xs = [float(v) * scale for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None
    return Summary(median=statistics.median(xs), lo=min(xs), hi=max(xs), q1=quantile(xs, 0.25),
                   q3=quantile(xs, 0.75), n=len(xs), samples=[round(x, 6) for x in xs])


def paired(subject: Sequence[float | None], baseline: Sequence[float | None],
           op: Callable[[float, float], float]) -> list[float | None]:
    """``op(subject[i], baseline[i])`` for each interleaved pair of trials (None where either is missing)."""
    out: list[float | None] = []
    for s, b in zip(subject, baseline):
        if s is None or b is None or not (math.isfinite(s) and math.isfinite(b)):
            out.append(None)
        else:
            try:
                out.append(op(s, b))
            except ZeroDivisionError:
                out.append(None)
    return out


def ratio(s: float, b: float) -> float:
    return s / b


def delta(s: float, b: float) -> float:
    return s - b
