"""A request as vLLM's inputs: the chat template over the turns, the images resized exactly as the transformers
engine resizes them (Qwen's ``smart_resize``) and handed over as PIL images, and vLLM's sampling parameters."""

from __future__ import annotations

import math
from typing import Any

from wire.errors import ImagesNotSupported, InvalidImage, PromptTooLong

from ..base import ChatTurn, SamplingParams

MAX_RATIO = 200  # Qwen's smart_resize refuses more extreme aspect ratios


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen's resize rule (qwen-vl-utils, which the transformers engine uses): sides divisible by ``factor``,
    pixels within [min_pixels, max_pixels], the aspect ratio kept as closely as possible."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise InvalidImage(f"image aspect ratio {max(height, width) / min(height, width):.0f} is over {MAX_RATIO}")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def chat_prompt(tokenizer: Any, turns: tuple[ChatTurn, ...], *, vision: bool, model: str, image_factor: int,
                min_pixels: int, max_pixels: int, max_prompt_tokens: int) -> tuple[dict[str, Any], int]:
    """The chat template over the turns, images resized as the transformers engine resizes them (Qwen's
    ``smart_resize``). Returns vLLM's prompt and its length in tokens, image tokens included, refused over
    ``max_prompt_tokens`` (prompt_too_long) before any computation."""
    messages: list[dict[str, Any]] = []
    images: list[Any] = []
    image_tokens = 0
    for turn in turns:
        if turn.images and not vision:
            raise ImagesNotSupported(f"{model} is a text-only model: it cannot read images")
        if vision:
            content: list[dict[str, Any]] = [{"type": "image"} for _ in turn.images]
            if turn.text or not content:
                content.append({"type": "text", "text": turn.text})
            messages.append({"role": turn.role, "content": content})
        else:
            messages.append({"role": turn.role, "content": turn.text})
        for image in turn.images:
            width, height = image.size
            h, w = smart_resize(height, width, image_factor, min_pixels, max_pixels)
            if (w, h) != (width, height):
                image = image.resize((w, h))
            images.append(image)
            image_tokens += (h // image_factor) * (w // image_factor)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    length = len(tokenizer(text, add_special_tokens=False)["input_ids"]) - len(images) + image_tokens
    if length > max_prompt_tokens:
        raise PromptTooLong(f"prompt is {length} tokens (images included), over the limit of {max_prompt_tokens}")
    prompt: dict[str, Any] = {"prompt": text}
    if images:
        prompt["multi_modal_data"] = {"image": images}
    return prompt, length


def sampling_params(s: SamplingParams) -> Any:
    """vLLM's ``SamplingParams`` for a request: its seed, stop strings and ``max_tokens``; text streamed as deltas."""
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.sampling_params import RequestOutputKind

    return VllmSamplingParams(
        temperature=s.temperature,
        top_k=s.top_k or 0,
        top_p=s.top_p if s.top_p is not None else 1.0,
        repetition_penalty=s.repetition_penalty if s.repetition_penalty is not None else 1.0,
        seed=s.seed,
        max_tokens=s.max_tokens,
        stop=list(s.stop) or None,
        output_kind=RequestOutputKind.DELTA,
        skip_special_tokens=True,
    )
