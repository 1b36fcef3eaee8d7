"""OpenAI-compatible chat completions: the request the worker takes, how it becomes a ``generate``, and the replies.

Pure: no I/O. The HTTP front (``inference_worker/http/openai.py``) parses a body with :func:`parse_chat_request`,
turns it into one :class:`wire.protocol.Generate` per choice with :func:`to_generate`, and frames the request
front's events with :func:`completion`, :func:`chunk` and :func:`usage_chunk`.

What is honoured: ``model`` (the base model's id, or an adapter: vLLM's convention), ``messages`` with text and
``image_url`` parts (``data:`` URLs only: the worker fetches nothing), ``max_tokens`` / ``max_completion_tokens``,
``temperature``, ``top_p``, ``seed``, ``stop``, ``n``, ``stream`` and ``stream_options.include_usage``, plus vLLM's
``top_k`` and ``repetition_penalty``, and ``user`` (accepted, unused). Parameters the worker cannot honour
(``logprobs``, ``tools``, penalties other than 0, a JSON ``response_format``, ...) are refused with a 400 that names
them, and so is any field it does not know: nothing is silently ignored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import protocol as p
from .errors import InvalidJson, ProtocolError

_QUOTE = 64


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TextContent(_Model):
    type: Literal["text"]
    text: str


class ImageURL(_Model):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImageContent(_Model):
    type: Literal["image_url"]
    image_url: ImageURL


Content = Annotated[TextContent | ImageContent, Field(discriminator="type")]


class Message(_Model):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | Annotated[list[Content], Field(min_length=1)]
    name: str | None = None


class StreamOptions(_Model):
    include_usage: bool = False


# Parameters OpenAI defines that the worker cannot honour: accepted only at the value that changes nothing.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none", "auto"),
    "function_call": (None, "none", "auto"),
    "parallel_tool_calls": (None, True, False),
    "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "service_tier": (None, "auto", "default"),
    "store": (None, False),
    "reasoning_effort": (None,),
    "metadata": (None, {}),
    "web_search_options": (None,),
}


class ChatCompletionRequest(_Model):
    model: Annotated[str, Field(min_length=1, max_length=1024)]
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None  # vLLM's extension (0: off)
    repetition_penalty: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | None = None  # vLLM's extension
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    stop: str | list[Annotated[str, Field(min_length=1)]] | None = None
    n: Annotated[int, Field(ge=1)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # refused unless neutral (_NEUTRAL): declared so that the error names them as unsupported, not unknown
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any = None
    function_call: Any = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    service_tier: str | None = None
    store: bool | None = None
    reasoning_effort: Any = None
    metadata: dict[str, Any] | None = None
    web_search_options: Any = None

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def parse_chat_request(body: bytes, limits: p.ParseLimits = p.ParseLimits()) -> ChatCompletionRequest:
    """Parse and check a request body, or raise :class:`ProtocolError` naming the field at fault (``param``).

    Bounded like a WebSocket frame: the JSON items are counted before parsing, the messages, content parts and stop
    strings before the model is built (``limits``)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJson("the body is not UTF-8 text") from None
    data = p.load_json_object(text, limits, source="the body", item="the body")
    p.check_generate_sizes(data, limits)
    if p.has_lone_surrogate(data):
        raise ProtocolError("a string holds a lone UTF-16 surrogate (an escape such as \\udc00 without its pair): "
                            "not valid Unicode text")
    try:
        request = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
    for name, neutral in _NEUTRAL.items():
        value = getattr(request, name)
        if value not in neutral:
            raise ProtocolError(f"{name} is not supported by this worker (only {_shown(neutral)})", param=name)
    if request.stream_options is not None and not request.stream:
        raise ProtocolError("stream_options is only allowed with stream: true", param="stream_options")
    if request.max_tokens is not None and request.max_completion_tokens is not None \
            and request.max_tokens != request.max_completion_tokens:
        raise ProtocolError("give max_completion_tokens or max_tokens, not two different values",
                            param="max_completion_tokens")
    for i, message in enumerate(request.messages):
        if message.name is not None:
            raise ProtocolError("name is not supported: the model's chat template has no participant names",
                                param=f"messages[{i}].name")
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if not isinstance(part, ImageContent):
                    continue
                where = f"messages[{i}].content[{j}].image_url"
                if not part.image_url.url.startswith("data:"):
                    raise ProtocolError(
                        "images must be sent inline as data: URLs (data:image/png;base64,...): the worker fetches "
                        "nothing", param=where + ".url")
                if part.image_url.detail not in (None, "auto"):
                    raise ProtocolError("detail is not supported: every image is resized within IMAGE_MIN_PIXELS "
                                        "and IMAGE_MAX_PIXELS (only unset or \"auto\")", param=where + ".detail")
    if request.messages[-1].role == "assistant":
        raise ProtocolError("the last message must not be from the assistant: there is nothing to answer",
                            param="messages")
    return request


def _shown(neutral: tuple[Any, ...]) -> str:
    values = [json.dumps(v) for v in neutral if v is not None]
    return "unset" + (" or " + " or ".join(values) if values else "")


def validation_error(exc: ValidationError) -> ProtocolError:
    """A request body's validation error as one ProtocolError naming the field at fault (``param``)."""
    # A union's branches each add an error: the one that went deepest is the one the client meant.
    err = max(exc.errors(include_url=False), key=lambda e: len(e["loc"]))
    param = _param(err["loc"])
    if err["type"] == "extra_forbidden":
        message = f"unknown parameter {param!r}: this worker does not know it (nothing is ignored silently)"
    else:
        message = f"{param or 'body'}: {err['msg']}"
    more = exc.error_count() - 1
    return ProtocolError(message + (f" (and {more} more)" if more > 0 else ""), param=param or None)


def _param(loc: tuple[int | str, ...]) -> str:
    """``messages[0].content[1].image_url.url`` from pydantic's location, without the names of union branches
    (``str``, ``list[tagged-union[...]]``) and the tag a tagged union repeats after the index."""
    out = ""
    skip_tag = False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        if skip_tag:
            skip_tag = False
            continue
        if part == "str" or "[" in part or part.startswith("function-"):
            skip_tag = part.startswith("list[tagged-union")
            continue
        out += ("." if out else "") + part[:_QUOTE]
    return out


def to_generate(request: ChatCompletionRequest, adapter: str | None, seed: int | None) -> p.Generate:
    """One choice of the request as a ``generate`` (``adapter``: None runs the base model)."""
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        role = "system" if message.role == "developer" else message.role
        if isinstance(message.content, str):
            content: Any = message.content
        else:
            content = [{"type": "text", "text": part.text} if isinstance(part, TextContent)
                       else {"type": "image", "image": part.image_url.url} for part in message.content]
        messages.append({"role": role, "content": content})
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    data: dict[str, Any] = {"type": "generate", "messages": messages, "adapter": adapter}
    for key, value in (("max_tokens", request.max_new_tokens), ("temperature", request.temperature),
                       ("top_p", request.top_p), ("top_k", request.top_k), ("seed", seed),
                       ("repetition_penalty", request.repetition_penalty), ("stop", stop)):
        if value is not None:
            data[key] = value
    try:
        return p.Generate.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


# ---- replies -------------------------------------------------------------------------------------------------------
FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "abort"}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(completion_id: str, created: int, model: str, choices: Sequence[tuple[str, str]],
               prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """A ``chat.completion``: ``choices`` as (content, finish_reason) in index order."""
    return {
        "id": completion_id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": content},
                     "finish_reason": FINISH_REASONS.get(reason, reason), "logprobs": None}
                    for i, (content, reason) in enumerate(choices)],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk(completion_id: str, created: int, model: str, index: int, delta: dict[str, Any],
          finish_reason: str | None = None) -> dict[str, Any]:
    """A ``chat.completion.chunk`` of one choice."""
    return {
        "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": index, "delta": delta, "logprobs": None,
                     "finish_reason": FINISH_REASONS.get(finish_reason, finish_reason) if finish_reason else None}],
    }


def usage_chunk(completion_id: str, created: int, model: str, prompt_tokens: int,
                completion_tokens: int) -> dict[str, Any]:
    """The last chunk when ``stream_options.include_usage`` is set: no choices, the whole request's usage."""
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage(prompt_tokens, completion_tokens)}
