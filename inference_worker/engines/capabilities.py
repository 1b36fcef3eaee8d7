"""What the request validator learns from a model's files, computed one way for every engine that holds a model.

No torch: the vLLM engine (its own venv) reads the same facts from the checkpoint's files that the transformers engine
reads from the loaded model and tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Capabilities

# What transformers' ``generate`` samples with when a model's generation config leaves a field unset (its
# ``GenerationConfig._get_default_generation_params``): a request that omits a field gets what ``generate`` would use.
GENERATE_DEFAULTS: dict[str, Any] = {"temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0}
GREEDY: dict[str, Any] = {"temperature": 0.0, "top_k": None, "top_p": None, "repetition_penalty": None}


def sampling_defaults(generation_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The model's own sampling defaults, for the fields a request omits: greedy unless its generation config
    (``generation_config.json``, as a mapping) samples; then its values, with ``generate``'s for those it leaves
    unset (absent or null)."""
    gen = generation_config or {}
    if not gen.get("do_sample", False):
        return dict(GREEDY)
    return {name: gen[name] if gen.get(name) is not None else default for name, default in GENERATE_DEFAULTS.items()}


def max_chars_per_token(tokenizer: Any) -> int:
    """The longest vocabulary entry: a byte-level token's entry has one character per byte, so its length bounds the
    characters any token decodes to (the validator bounds a prompt's tokens by its characters with it)."""
    return max((len(token) for token in tokenizer.get_vocab()), default=1) or 1


def model_capabilities(*, vision: bool, tokenizer: Any, generation_config: Mapping[str, Any] | None) -> Capabilities:
    """The :class:`Capabilities` of a model from its tokenizer and generation config."""
    return Capabilities(vision=vision, max_chars_per_token=max_chars_per_token(tokenizer),
                        sampling_defaults=sampling_defaults(generation_config))
