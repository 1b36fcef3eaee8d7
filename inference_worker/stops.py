"""Stop strings over a stream of text pieces. Pure: no I/O.

Text that could be the start of a stop string is held back until the next piece shows whether it is one, so the
pieces a client receives never contain a stop string and always add up to the final text.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    def __init__(self, stops: Sequence[str] = ()) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add a piece; return the text that is safe to emit now. Sets ``stopped`` once a stop string appears."""
        if self.stopped:
            return ""
        if not self.stops:
            return piece
        text = self._held + piece
        hits = [i for i in (text.find(s) for s in self.stops) if i != -1]
        if hits:
            self.stopped = True
            self._held = ""
            return text[: min(hits)]
        hold = max((self._partial(text, s) for s in self.stops), default=0)
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """The held-back text, once the stream has ended without a stop string."""
        text, self._held = self._held, ""
        return "" if self.stopped else text

    @staticmethod
    def _partial(text: str, stop: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                return k
        return 0
