"""Incremental detokenization: the streamed pieces add up to the whole decode, whatever the tokens."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_worker.engines.transformers.detok import Detokenizer


@pytest.fixture(scope="module")
def tokenizer(demo):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(demo.model_dir))


def stream(tokenizer, ids, stop=()):
    d = Detokenizer(tokenizer, stop)
    pieces = [d.push(i) for i in ids]
    pieces.append(d.finish())
    return [p for p in pieces if p], d


def test_pieces_add_up_on_multilingual_text(tokenizer):
    """Cyrillic, CJK, emoji and code stream piece by piece and add up to the decode of all the tokens."""
    text = "Процесс: 客户 提交 заявку 🧾 → менеджер ✅ проверяет; def f(x): return x**2\n| Шаг | Роль |"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces, _ = stream(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert len(pieces) > 10, "text is streamed as it comes, not at the end"


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_pieces_add_up_for_any_tokens(tokenizer, data):
    """Any sequence of tokens (broken UTF-8 and special tokens included) streams to exactly its whole decode."""
    ids = data.draw(st.lists(st.integers(0, len(tokenizer) - 1), max_size=40))
    pieces, _ = stream(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)


def test_stop_string_is_held_back_and_cut(tokenizer):
    """Text that may start a stop string is held; once it appears, nothing from it on is emitted."""
    ids = tokenizer("one two STOP three", add_special_tokens=False)["input_ids"]
    pieces, d = stream(tokenizer, ids, stop=("STOP",))
    assert "".join(pieces) == "one two " and d.stopped
