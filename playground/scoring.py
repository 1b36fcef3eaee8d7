"""Scores of an output against a reference, and of A against B over a set. Pure.

- :func:`chrf`: character n-gram F-score (sacrebleu's chrF: orders 1–6, β = 2, whitespace ignored), 0–100.
- :func:`table_rows` / :func:`row_scores`: the body rows of the Markdown tables in a text (the steps the default
  prompt asks for), and their precision, recall and F1 against the reference's rows. A row matches a reference row
  when every cell is equal after normalisation (case, surrounding whitespace, runs of spaces, ``*`` and backticks);
  each reference row matches at most once.
- :func:`paired_bootstrap`: a percentile bootstrap confidence interval of the mean A−B difference over items.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sacrebleu.metrics import CHRF

_CHRF = CHRF()  # chrF2, character order 6, no word n-grams: sacrebleu's defaults


def chrf(hypothesis: str, reference: str) -> float:
    """Sentence-level chrF of ``hypothesis`` against one reference, 0–100."""
    return float(_CHRF.sentence_score(hypothesis, [reference]).score)


# --------------------------------------------------------------------------------------------------------------------
# Markdown table rows

_SEPARATOR = re.compile(r"^\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?$")
_SPACES = re.compile(r"\s+")


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [c.replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)]


def normalise_cell(cell: str) -> str:
    """What a cell says, without the formatting: ``**Sales**`` and `` sales `` are the same cell."""
    return _SPACES.sub(" ", cell.replace("*", "").replace("`", "")).strip().casefold()


def table_rows(text: str) -> list[tuple[str, ...]]:
    """The body rows of every Markdown table in ``text`` (header and separator rows left out), normalised."""
    lines = text.splitlines()
    rows: list[tuple[str, ...]] = []
    i = 0
    while i + 1 < len(lines):
        if "|" in lines[i] and _SEPARATOR.match(lines[i + 1].strip()) and "-" in lines[i + 1]:
            i += 2
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                cells = [normalise_cell(c) for c in _cells(lines[i])]
                while cells and not cells[-1]:
                    cells.pop()
                if cells:
                    rows.append(tuple(cells))
                i += 1
        else:
            i += 1
    return rows


@dataclass(frozen=True)
class RowScores:
    """Table rows of an output against the reference's."""

    precision: float
    recall: float
    f1: float
    matched: int  # rows found in the reference
    rows: int  # rows of the output
    reference_rows: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def row_scores(hypothesis: str, reference: str) -> RowScores | None:
    """Precision, recall and F1 of the output's table rows; None when the reference has no table."""
    ref = Counter(table_rows(reference))
    if not ref:
        return None
    hyp = Counter(table_rows(hypothesis))
    matched = sum((hyp & ref).values())
    n_hyp, n_ref = sum(hyp.values()), sum(ref.values())
    precision = matched / n_hyp if n_hyp else 0.0
    recall = matched / n_ref
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return RowScores(precision, recall, f1, matched, n_hyp, n_ref)


# --------------------------------------------------------------------------------------------------------------------
# A against B over a set


@dataclass(frozen=True)
class DiffInterval:
    """The mean of the per-item differences A − B and its bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    n: int  # items
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, resamples: int = 2000, confidence: float = 0.95,
                     seed: int = 0) -> DiffInterval | None:
    """Resample the items (with replacement, pairs kept together) and take the percentiles of the mean A − B.

    Deterministic for a given seed; None without items. An interval that excludes 0 says the difference is unlikely
    to be an accident of which items were picked (it says nothing about items unlike these).
    """
    if len(a) != len(b):
        raise ValueError(f"paired scores differ in length: {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    n = len(diffs)
    if n == 0:
        return None
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1.0 - confidence) / 2.0
    low = means[max(0, math.floor(tail * resamples))]
    high = means[min(resamples - 1, math.ceil((1.0 - tail) * resamples) - 1)]
    return DiffInterval(mean=sum(diffs) / n, low=low, high=high, n=n, confidence=confidence)


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
