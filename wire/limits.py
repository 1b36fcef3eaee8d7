"""The worker's default limits, as its ``status`` reports them in ``limits``.

The worker's settings default to these; a client that cannot ask the worker (it is down) falls back on them.
"""

from __future__ import annotations

from typing import Any

MAX_NEW_TOKENS = 2048  # MAX_NEW_TOKENS: the most tokens a request may ask for
DEFAULT_MAX_TOKENS = 512  # DEFAULT_MAX_TOKENS: a request's max_tokens when it gives none
TEMPERATURE_MAX = 5.0  # TEMPERATURE_MAX
REPETITION_PENALTY_MAX = 10.0  # REPETITION_PENALTY_MAX
IMAGE_MAX_BYTES = 10 * 1024 * 1024  # IMAGE_MAX_BYTES: encoded size of one image
SEED_MAX = 2**63 - 1  # a seed is below this (the protocol's bound)


def sampling_ranges(temperature_max: float = TEMPERATURE_MAX,
                    repetition_penalty_max: float = REPETITION_PENALTY_MAX) -> dict[str, list[Any]]:
    """[low, high] of each sampling parameter, as ``status`` reports them. top_p and repetition_penalty must be
    greater than their low end; the others may equal it."""
    return {
        "temperature": [0.0, temperature_max],
        "top_p": [0.0, 1.0],
        "repetition_penalty": [0.0, repetition_penalty_max],
        "top_k": [0, None],
        "seed": [0, SEED_MAX],
    }
