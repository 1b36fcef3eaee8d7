"""Incremental detokenization of one row: token ids in, text pieces out, as soon as they are complete.

Each new token's text is the difference between decoding a short window of recent tokens with and without it (the
window starts at the last emitted boundary, so tokenizers whose pieces depend on their neighbours — leading spaces,
byte fallback — decode as they would in the whole text). A piece that ends in an incomplete UTF-8 character
(U+FFFD) is held until the next token completes it. Stop strings are matched on top (``StopMatcher``), so the
pieces never contain one and always add up to the final text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...stops import StopMatcher


class Detokenizer:
    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # tokens up to here have been turned into text
        self.stops = StopMatcher(stop)

    @property
    def stopped(self) -> bool:
        """A stop string appeared: the request is finished, and nothing after it is emitted."""
        return self.stops.stopped

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def push(self, token_id: int) -> str:
        """Add a generated token; return the text that may be emitted now (often empty)."""
        self.ids.append(token_id)
        if self.stopped:
            return ""
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return self.stops.feed(after[len(before):])

    def finish(self) -> str:
        """The rest of the text once the row has ended (held-back characters, text held for a stop string)."""
        if self.stopped:
            return ""
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        tail = self.stops.feed(after[len(before):]) if len(after) > len(before) else ""
        return tail + self.stops.flush()
