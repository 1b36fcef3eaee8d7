"""Scores: chrF, Markdown table rows and their precision/recall/F1, the paired bootstrap; values computed by hand."""

from __future__ import annotations

import pytest

from playground.scoring import DiffInterval, chrf, mean, normalise_cell, paired_bootstrap, row_scores, table_rows

REFERENCE = """The process:

| Step | Activity | Role |
|---|---|---|
| 1 | Submit order | Customer |
| 2 | Check stock | Sales |
| 3 | Ship goods | Warehouse |
| 4 | Send invoice | Accounting |

Start: order received. End: invoice sent.
"""


def test_chrf_by_hand():
    """'abc' against 'abd': orders 1–3 have n-grams (P = R = 2/3, 1/2, 0), so chrF2 = mean P = 7/18."""
    assert chrf("abc", "abd") == pytest.approx(100 * 7 / 18)
    assert chrf("ab", "ab") == 100.0
    assert chrf("a b", "ab") == 100.0  # whitespace is not part of chrF's n-grams
    assert chrf("", "abc") == 0.0


def test_table_rows_skip_header_separator_and_prose():
    """Only body rows count, normalised; text around the table and a second table's rows are read too."""
    assert table_rows(REFERENCE) == [("1", "submit order", "customer"), ("2", "check stock", "sales"),
                                     ("3", "ship goods", "warehouse"), ("4", "send invoice", "accounting")]
    two = "|a|b|\n|:-|-:|\n|x|y|\n\ntext\n\n| c |\n| --- |\n| z |\n"
    assert table_rows(two) == [("x", "y"), ("z",)]
    assert table_rows("no | table here\nat all") == []
    assert table_rows("| a \\| b | c |\n|---|---|\n| 1 \\| 2 | 3 |") == [("1 | 2", "3")]


def test_normalise_cell():
    """Case, emphasis, code ticks and runs of spaces do not make cells differ."""
    assert normalise_cell("  **Check   Stock** ") == "check stock"
    assert normalise_cell("`Sales`") == "sales"


def test_row_scores_by_hand():
    """3 output rows, 2 of them in the 4-row reference: P = 2/3, R = 2/4, F1 = 2·(2/3)(1/2)/(2/3 + 1/2) = 4/7."""
    output = ("| Step | Activity | Role |\n|---|---|---|\n| 1 | **Submit order** | customer |\n"
              "| 2 | Check stock | Sales |\n| 3 | Pack goods | Warehouse |\n")
    scores = row_scores(output, REFERENCE)
    assert scores is not None
    assert (scores.matched, scores.rows, scores.reference_rows) == (2, 3, 4)
    assert (scores.precision, scores.recall) == (pytest.approx(2 / 3), 0.5)
    assert scores.f1 == pytest.approx(4 / 7)


def test_row_scores_edges():
    """No table in the output: all zero; no table in the reference: not applicable; a row matches once."""
    none = row_scores("just words", REFERENCE)
    assert none is not None and (none.precision, none.recall, none.f1, none.rows) == (0.0, 0.0, 0.0, 0)
    assert row_scores(REFERENCE, "a reference without a table") is None
    doubled = "|h|\n|-|\n|x|\n|x|\n"
    once = row_scores(doubled, "|h|\n|-|\n|x|\n")
    assert once is not None and (once.matched, once.precision, once.recall) == (1, 0.5, 1.0)


def test_paired_bootstrap_constant_difference():
    """When every item differs by the same amount, every resample's mean is that amount."""
    interval = paired_bootstrap([1.0, 2.0, 3.0, 4.0], [0.5, 1.5, 2.5, 3.5], resamples=200)
    assert interval == DiffInterval(mean=0.5, low=0.5, high=0.5, n=4, confidence=0.95)


def test_paired_bootstrap_interval_holds_the_mean_and_is_reproducible():
    """Differences 0 and 1 (mean 0.5): the interval lies within [0, 1] around 0.5, and a seed reproduces it."""
    a, b = [1.0, 0.0] * 10, [0.0] * 20
    interval = paired_bootstrap(a, b, seed=7)
    assert interval is not None and interval.mean == 0.5 and interval.n == 20
    assert 0.0 <= interval.low < 0.5 < interval.high <= 1.0
    assert paired_bootstrap(a, b, seed=7) == interval
    assert paired_bootstrap([], []) is None
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [])


def test_mean():
    """The mean of nothing is None."""
    assert mean([1.0, 2.0]) == 1.5 and mean([]) is None
