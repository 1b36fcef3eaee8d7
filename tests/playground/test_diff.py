"""A/B comparison: first divergence, word-level diff, similarity, HTML rendering."""

from __future__ import annotations

from playground.diff import (
    DiffOp,
    compare,
    describe_divergence,
    diff_html,
    first_divergence,
    similarity,
    word_diff,
)

A = "the order is checked by sales then shipped"
B = "the order is approved by sales then shipped"


def test_identical_texts_do_not_diverge():
    """Identical texts: no divergence point, described as identical."""
    d = first_divergence(A, A)
    assert d.identical and (d.char, d.word) == (None, None)
    assert describe_divergence(d) == "A and B are identical."


def test_divergence_in_the_middle():
    """The first differing character and word, with the shared words before and each side's continuation."""
    d = first_divergence(A, B)
    assert (d.char, d.word) == (len("the order is "), 3)
    assert d.before == "the order is"
    assert (d.a_next, d.b_next) == ("checked by sales then shipped", "approved by sales then shipped")
    assert describe_divergence(d) == "A and B agree on the first 13 characters (3 words) and first diverge at word 4."


def test_one_text_is_a_prefix_of_the_other():
    """When one output stops early, they diverge where it ends; its continuation is empty."""
    d = first_divergence("one two", "one two three")
    assert (d.char, d.word, d.a_next, d.b_next) == (7, 2, "", "three")


def test_whitespace_only_difference():
    """Same words, different spacing: the divergence is at the character, within the words counted so far."""
    d = first_divergence("a  b", "a b")
    assert (d.char, d.word) == (2, 1)


def test_difference_at_the_first_character():
    """Texts that differ from the start say so."""
    d = first_divergence("x y", "z y")
    assert (d.char, d.word) == (0, 0)
    assert describe_divergence(d, "A (demo-a)", "B (base model)") == \
        "A (demo-a) and B (base model) differ from the first character."


def test_context_is_bounded():
    """The continuation shown is at most six words and 80 characters."""
    long_word = "w" * 200
    d = first_divergence("start " + long_word, "start other")
    assert d.a_next == "w" * 80
    assert first_divergence("a b c d e f g h", "x b c d e f g h").a_next == "a b c d e f"


def test_word_diff_opcodes():
    """A's words turned into B's: equal, replace and insert spans with their words."""
    assert word_diff("a b c d", "a x c d e") == [
        DiffOp("equal", ("a",), ("a",)),
        DiffOp("replace", ("b",), ("x",)),
        DiffOp("equal", ("c", "d"), ("c", "d")),
        DiffOp("insert", (), ("e",)),
    ]


def test_similarity():
    """2 × shared words / all words: 1 for identical, 0 for disjoint, 6/9 here."""
    assert similarity(word_diff("a b", "a b")) == 1.0
    assert similarity(word_diff("a b", "c d")) == 0.0
    assert similarity(word_diff("a b c d", "a x c d e")) == 6 / 9
    assert similarity(word_diff("", "")) == 1.0


def test_diff_html_escapes_and_marks_changes():
    """Model text is escaped; A's replaced words are in <del>, B's in <ins>."""
    html = diff_html(word_diff("<b>x</b> y", "<b>x</b> z"))
    assert "<b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert '">y</del>' in html and '">z</ins>' in html
    assert html.startswith('<div class="ab-diff"')


def test_compare_summary():
    """compare() keeps what the history needs, JSON-ready."""
    summary = compare("a b c d", "a x c d e")
    assert summary == {
        "identical": False,
        "divergence": {"char": 2, "word": 1, "before": "a", "a_next": "b c d", "b_next": "x c d e"},
        "similarity": 0.6667,
        "words": {"a": 4, "b": 5},
        "changes": [{"op": "replace", "a": "b", "b": "x"}, {"op": "insert", "a": "", "b": "e"}],
    }


def test_model_output_cannot_make_the_browser_fetch_images():
    """Markdown image syntax in model output is escaped; plain links and text are untouched."""
    from playground.diff import inert_markdown

    assert inert_markdown("see ![x](https://evil.example/p.png)") == "see !\\[x](https://evil.example/p.png)"
    assert inert_markdown("![a][ref] and [link](https://x)") == "!\\[a][ref] and [link](https://x)"
    assert inert_markdown("| Step | Role |") == "| Step | Role |"
