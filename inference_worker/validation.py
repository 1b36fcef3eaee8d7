"""Everything a ``generate`` is checked against before it reaches the engine, in one place, once.

The protocol (``wire/protocol.py``) checks the shape of a message; this module checks it against the operator's limits
(every one from the settings object) and the model's capabilities, and fills in what the request left out (the model's
sampling defaults, ``max_tokens``, a seed). The result is one record, :class:`CheckedRequest`, from which the engine's
request is built; decoding its images is the only blocking part.

    checked = validator.validate(message)         # cheap, on the event loop: raises a ServiceError
    turns = checked.turns()                       # blocking (decodes images): run it in a thread
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from wire import protocol as p
from wire.errors import ImagesNotSupported, ImageTooLarge, PromptTooLong, ProtocolError
from wire.limits import (
    DEFAULT_MAX_TOKENS,
    MAX_NEW_TOKENS,
    REPETITION_PENALTY_MAX,
    SEED_MAX,
    TEMPERATURE_MAX,
    sampling_ranges,
)

from .engines.base import Capabilities, ChatTurn, SamplingParams
from .images import ImageLimits, decode_image


@dataclass(frozen=True)
class RequestLimits:
    """The limits of one request (filled from the settings; ``Settings.request_limits()``)."""

    max_new_tokens: int = MAX_NEW_TOKENS
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    max_prompt_tokens: int = 16384
    max_stop_length: int = 64
    max_images_per_request: int = 4
    temperature_max: float = TEMPERATURE_MAX
    repetition_penalty_max: float = REPETITION_PENALTY_MAX

    def sampling_ranges(self) -> dict[str, list[Any]]:
        """[low, high] of each sampling parameter, as ``status`` reports them (:func:`wire.limits.sampling_ranges`)."""
        return sampling_ranges(self.temperature_max, self.repetition_penalty_max)


@dataclass(frozen=True)
class CheckedRequest:
    """A ``generate`` that passed every check, with its sampling filled in: what the engine request is built from."""

    message: p.Generate
    sampling: SamplingParams
    image_limits: ImageLimits

    def turns(self) -> tuple[ChatTurn, ...]:
        """The chat turns with decoded, bounded images (blocking: run in a thread)."""
        message = self.message
        out = []
        if message.system_prompt is not None:
            out.append(ChatTurn("system", message.system_prompt))
        for m in message.messages:
            images = tuple(decode_image(part.image, self.image_limits).image for part in m.images())
            out.append(ChatTurn(m.role, m.text(), images))
        return tuple(out)


class GenerateValidator:
    def __init__(self, limits: RequestLimits, capabilities: Capabilities, image_limits: ImageLimits,
                 model_name: str) -> None:
        self.limits = limits
        self.capabilities = capabilities
        self.image_limits = image_limits
        self.model_name = model_name

    def validate(self, message: p.Generate) -> CheckedRequest:
        """Limits and capabilities that need no image decoding, then the filled-in sampling. Raises a
        ProtocolError or an InputError."""
        lim = self.limits  # (counts of messages, content parts and stop strings: the parser's ParseLimits)
        if message.stop is not None and any(len(s) > lim.max_stop_length for s in message.stop):
            raise ProtocolError(f"a stop string is longer than {lim.max_stop_length} characters")
        images = len(message.images())
        if images > lim.max_images_per_request:
            raise ImageTooLarge(f"too many images: {images} > {lim.max_images_per_request}")
        if message.temperature is not None and message.temperature > lim.temperature_max:
            raise ProtocolError(f"temperature {message.temperature} is above the maximum {lim.temperature_max}")
        if message.repetition_penalty is not None and message.repetition_penalty > lim.repetition_penalty_max:
            raise ProtocolError(f"repetition_penalty {message.repetition_penalty} is above the maximum "
                                f"{lim.repetition_penalty_max}")
        if images and not self.capabilities.vision:
            raise ImagesNotSupported(f"{self.model_name} is a text-only model: it cannot read images")
        if message.system_prompt is not None and message.messages[0].role == "system":
            raise ProtocolError("give the system prompt either as system_prompt or as a first system message, not both")
        chars = len(message.system_prompt or "") + sum(len(m.text()) for m in message.messages)
        if chars > lim.max_prompt_tokens * self.capabilities.max_chars_per_token:
            # No token decodes to more characters than the longest vocabulary entry: this text cannot fit in
            # MAX_PROMPT_TOKENS whatever the tokenization, and is refused without tokenizing it.
            raise PromptTooLong(f"prompt is {chars} characters, more than {lim.max_prompt_tokens} tokens can hold")
        return CheckedRequest(message, self._sampling(message), self.image_limits)

    def max_tokens(self, message: p.Generate) -> int:
        """The new tokens a request may produce: its own ``max_tokens`` (or the default), at most the cap."""
        lim = self.limits
        return min(message.max_tokens if message.max_tokens is not None else lim.default_max_tokens,
                   lim.max_new_tokens)

    def _sampling(self, message: p.Generate) -> SamplingParams:
        d = self.capabilities.sampling_defaults

        def pick(value: Any, key: str) -> Any:
            return d.get(key) if value is None else value

        temperature = pick(message.temperature, "temperature") or 0.0
        return SamplingParams(
            temperature=float(temperature),
            top_k=pick(message.top_k, "top_k"),
            top_p=pick(message.top_p, "top_p"),
            repetition_penalty=pick(message.repetition_penalty, "repetition_penalty"),
            seed=secrets.randbelow(SEED_MAX) if message.seed is None else message.seed,
            max_tokens=self.max_tokens(message),
            stop=tuple(message.stop or ()),
        )
