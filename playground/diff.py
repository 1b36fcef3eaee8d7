"""Comparing two outputs of an A/B run: where they first diverge, and a word-level diff (difflib). Pure."""

from __future__ import annotations

import difflib
import html
from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Divergence:
    """Where two texts stop agreeing. ``char``/``word`` are ``None`` when the texts are identical."""

    char: int | None  # index of the first character that differs (or the length of the shorter text)
    word: int | None  # index of the first whitespace-separated word that differs
    before: str  # up to ``context`` words (``max_chars`` characters) both share just before the divergence
    a_next: str  # up to ``context`` words (``max_chars`` characters) of A from there ('' when A ends there)
    b_next: str

    @property
    def identical(self) -> bool:
        return self.char is None


def first_divergence(a: str, b: str, context: int = 6, max_chars: int = 80) -> Divergence:
    if a == b:
        return Divergence(char=None, word=None, before="", a_next="", b_next="")
    char = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    wa, wb = a.split(), b.split()
    word = next((i for i, (x, y) in enumerate(zip(wa, wb)) if x != y), min(len(wa), len(wb)))
    if word == len(wa) == len(wb):  # same words, different whitespace
        word = len(a[:char].split())
    return Divergence(
        char=char,
        word=word,
        before=" ".join(wa[max(0, word - context):word])[-max_chars:],
        a_next=" ".join(wa[word:word + context])[:max_chars],
        b_next=" ".join(wb[word:word + context])[:max_chars],
    )


Op = Literal["equal", "insert", "delete", "replace"]


@dataclass(frozen=True)
class DiffOp:
    op: Op
    a: tuple[str, ...]  # A's words in this span (empty for an insert)
    b: tuple[str, ...]  # B's words (empty for a delete)


def word_diff(a: str, b: str) -> list[DiffOp]:
    """A's words turned into B's: equal spans, and what B deletes, inserts or replaces."""
    wa, wb = a.split(), b.split()
    matcher = difflib.SequenceMatcher(None, wa, wb, autojunk=False)
    return [DiffOp(op, tuple(wa[i1:i2]), tuple(wb[j1:j2]))  # type: ignore[arg-type]
            for op, i1, i2, j1, j2 in matcher.get_opcodes()]


def similarity(ops: list[DiffOp]) -> float:
    """difflib's ratio over words: 1.0 identical, 0.0 nothing in common."""
    same = sum(len(o.a) for o in ops if o.op == "equal")
    total = sum(len(o.a) + len(o.b) for o in ops)
    return 1.0 if total == 0 else 2.0 * same / total


def diff_html(ops: list[DiffOp]) -> str:
    """The diff as HTML: A's words struck through in red, B's in green, shared words plain (text is escaped)."""
    parts = []
    for o in ops:
        a, b = html.escape(" ".join(o.a)), html.escape(" ".join(o.b))
        if o.op == "equal":
            parts.append(a)
            continue
        if o.a:
            parts.append(f'<del style="background:#ffe1e1;color:#8a0000">{a}</del>')
        if o.b:
            parts.append(f'<ins style="background:#ddffdd;color:#005a00;text-decoration:none">{b}</ins>')
    return ('<div class="ab-diff" style="white-space:pre-wrap;font-family:monospace;line-height:1.6">'
            + " ".join(parts) + "</div>")


def changes(ops: list[DiffOp]) -> list[dict[str, str]]:
    """The spans that differ: ``{"op", "a", "b"}`` with the words joined by spaces."""
    return [{"op": o.op, "a": " ".join(o.a), "b": " ".join(o.b)} for o in ops if o.op != "equal"]


def compare(a: str, b: str) -> dict[str, Any]:
    """What the history keeps about an A/B pair, JSON-ready (the app renders :func:`diff_html` from the texts)."""
    ops = word_diff(a, b)
    divergence = first_divergence(a, b)
    return {
        "identical": divergence.identical,
        "divergence": asdict(divergence),
        "similarity": round(similarity(ops), 4),
        "words": {"a": len(a.split()), "b": len(b.split())},
        "changes": changes(ops),
    }


def describe_divergence(d: Divergence, a_label: str = "A", b_label: str = "B") -> str:
    """One sentence for people."""
    if d.identical:
        return f"{a_label} and {b_label} are identical."
    if d.char == 0:
        return f"{a_label} and {b_label} differ from the first character."
    chars = f"{d.char} character{'s' if d.char != 1 else ''}"
    words = f"{d.word} word{'s' if d.word != 1 else ''}"
    return (f"{a_label} and {b_label} agree on the first {chars} ({words}) "
            f"and first diverge at word {(d.word or 0) + 1}.")


def inert_markdown(text: str) -> str:
    """Model output made safe to render as Markdown: image syntax is escaped, so the browser never fetches a URL
    the model wrote (``![x](https://…)`` shows as text). Links stay links; Streamlit already escapes raw HTML."""
    return text.replace("![", "!\\[")
