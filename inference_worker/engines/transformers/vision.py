"""Vision encodings shared between requests: an A/B pair (or any requests) on the same image encode it once.

Keyed by the digest of the preprocessed images and by the adapter applied to the vision tower (None for the base
encoder, which every adapter that leaves the vision tower alone shares). Bounded in bytes (``VISION_CACHE_MAX_BYTES``;
0 turns it off), least recently used out first. Only the scheduler thread uses it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Encoding:
    """What Qwen3-VL's language model takes from its vision tower (``mm_encoder_outputs["image"]``)."""

    pooler_output: tuple[torch.Tensor, ...]  # merged vision tokens, one tensor per image
    deepstack_features: list[tuple[torch.Tensor, ...]]  # per deepstack layer, one tensor per image

    @property
    def nbytes(self) -> int:
        tensors = [*self.pooler_output, *(t for layer in self.deepstack_features for t in layer)]
        return sum(t.numel() * t.element_size() for t in tensors)

    @classmethod
    def of(cls, output: Any) -> Encoding:
        return cls(tuple(output.pooler_output), [tuple(f) for f in output.deepstack_features])


class VisionCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str | None], Encoding] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str | None]) -> Encoding | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return found

    def put(self, key: tuple[str, str | None], encoding: Encoding) -> None:
        size = encoding.nbytes
        if size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.nbytes
        self._entries[key] = encoding
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.nbytes

    def drop_adapter(self, adapter: str) -> None:
        for key in [k for k in self._entries if k[1] == adapter]:
            self.bytes -= self._entries.pop(key).nbytes

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
