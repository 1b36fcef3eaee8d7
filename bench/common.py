"""What every benchmark path shares: the request, one trial's timings, the test image."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

PROMPT = "Describe this BPMN diagram as a Markdown table of steps and roles."
SHORT_PROMPT = "Describe the process."


class BenchError(RuntimeError):
    """A benchmark could not measure what it should (an error reply, a mismatch it cannot report as a number)."""


@dataclass(frozen=True)
class Request:
    """One greedy generation: the same for the in-process baseline and the worker."""

    text: str
    max_tokens: int
    image_png: bytes | None = None


@dataclass
class Trial:
    """One generation, timed from the moment the caller asks for it.

    ``ttft_piece_s``: to the first non-empty text piece the caller receives (what a user sees; text streamers hold
    a token back until it ends a word, identically in both paths, so compare it only between identical outputs).
    ``ttft_token_s``: to the first generated token, measured where the tokens are produced (the in-process
    streamer's ``put``; the worker's ``done.timings.ttft_ms``, from admission). ``decode_tps_token``: tokens after
    the first ÷ time after the first, measured there too. ``end_s``: to the end of the stream.
    """

    ttft_piece_s: float | None
    ttft_token_s: float | None
    end_s: float
    tokens: int
    prompt_tokens: int
    text: str
    decode_tps_token: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    def decode_tps_piece(self, first_piece_token: int | None) -> float | None:
        """Decode speed as the caller sees it: tokens generated after the first text piece ÷ time from that piece
        to the end of the stream. ``first_piece_token``: how many tokens had been generated when the first piece was
        released (the in-process streamer records it; the worker's identical output has the same one)."""
        k = first_piece_token
        if self.ttft_piece_s is None or k is None or self.tokens - k < 1 or self.end_s <= self.ttft_piece_s:
            return None
        return (self.tokens - k) / (self.end_s - self.ttft_piece_s)


def diagram_png(side: int = 256) -> bytes:
    """A small synthetic flowchart (boxes, arrows, labels) as PNG bytes: the benchmark's image."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (side, side), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    box_w, box_h = side // 4, side // 8
    labels = ["Start", "Check", "Approve", "Ship", "End"]
    for i, label in enumerate(labels):
        x = (i % 2) * side // 2 + side // 8
        y = i * (side // 5) + side // 40
        draw.rectangle((x, y, x + box_w, y + box_h), outline=(20, 20, 20), width=2, fill=(210, 230, 250))
        draw.text((x + 4, y + 4), label, fill=(0, 0, 0))
        if i + 1 < len(labels):
            nx = ((i + 1) % 2) * side // 2 + side // 8
            draw.line((x + box_w // 2, y + box_h, nx + box_w // 2, y + side // 5), fill=(200, 30, 30), width=2)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
